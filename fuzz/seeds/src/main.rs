//! Writes the seed corpora of the three fuzz targets from real captures, so that the
//! fuzzers start from traffic seen on the wire (`fuzz/seed-corpus.sh` runs it):
//!
//! ```text
//! seed-corpus OUT_DIR CAPTURE_OR_DIRECTORY...
//! ```
//!
//! Every pcap and pcapng file given, or found in a directory given, is read with the
//! conformance suite's reader (`conformance/src/trace.rs`, compiled in by path: every
//! link type it knows, the format sniffed from the magic bytes). Files that are not
//! captures are skipped; a capture that does not parse is reported and skipped.
//!
//! - `OUT_DIR/decode/`: uTP datagrams, one per file, one per "shape" (type and version
//!   byte, extension chain, payload size in 100-byte steps).
//! - `OUT_DIR/endpoint/`: programs for the `endpoint` target
//!   (`utp/tests/common/hostile.rs`, `endpoint_program`): runs of real datagrams (cut
//!   at 255 bytes, the program's length byte) from the address that sent them, with
//!   the capture's pauses between them.
//! - `OUT_DIR/connection/`: programs for the `connection` target (`connection_program`)
//!   that replay recorded connections: each DATA packet becomes a write of its size on
//!   the side that sent it, each ACK a read on the side that sent it, a resent packet
//!   a loss (the capture lost the first copy, or its ACK), a FIN a shutdown, a RESET a
//!   close, and the capture's pauses time steps. A second variant also forges the
//!   recorded STATE packets (their timestamps, windows and selective ACKs) towards the
//!   other side.
//!
//! Each new seed is run once through the target's function before it is written (a
//! seed that breaks an invariant would be a finding, not a seed: it panics here), and
//! the bytes the connection seeds delivered are counted, to show that they move data.
//! File names are a hash of the contents, so reruns add nothing twice.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use utp::wire::{Extension, Packet, PacketType};

#[allow(dead_code)]
#[path = "../../../conformance/src/trace.rs"]
mod trace;

// The fuzz targets' programs (as in `fuzz/src/lib.rs`), to run each seed once.
#[path = "../../../utp/tests/common/vnet.rs"]
mod vnet;

#[path = "../../../utp/tests/common/hostile.rs"]
mod hostile;

/// Endpoint programs per capture.
const ENDPOINT_SEEDS_PER_CAPTURE: usize = 64;
/// Datagrams per endpoint program.
const ENDPOINT_RUN: usize = 8;
/// Operations per connection program (the target runs at most 2048; fewer keep each
/// execution fast).
const CONNECTION_OPS: usize = 400;
/// Connection programs per capture.
const CONNECTION_SEEDS_PER_CAPTURE: usize = 24;

/// One uTP datagram of a capture.
struct Datagram {
    time: Duration,
    src: SocketAddr,
    dst: SocketAddr,
    bytes: Vec<u8>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, inputs)) = args.split_first() else {
        eprintln!("usage: seed-corpus OUT_DIR CAPTURE_OR_DIRECTORY...");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    let mut files = Vec::new();
    for input in inputs {
        let p = PathBuf::from(input);
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = match fs::read_dir(&p) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    eprintln!("seed-corpus: cannot list {}: {e}", p.display());
                    continue;
                }
            };
            entries.sort();
            files.extend(entries.into_iter().filter(|f| is_capture(f)));
        } else if is_capture(&p) {
            files.push(p);
        } else {
            eprintln!("seed-corpus: {} is not a pcap or pcapng file", p.display());
        }
    }
    for kind in ["decode", "endpoint", "connection"] {
        if let Err(e) = fs::create_dir_all(out.join(kind)) {
            eprintln!(
                "seed-corpus: cannot create {}: {e}",
                out.join(kind).display()
            );
            return ExitCode::FAILURE;
        }
    }
    let mut w = Writer {
        out,
        written: HashMap::new(),
    };
    let mut shapes = HashSet::new();
    let (mut read, mut formats) = (0, HashMap::<&str, usize>::new());
    let mut delivered = 0u64;
    for file in &files {
        let mut cap = match trace::read(file) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("seed-corpus: skipped: {e}");
                continue;
            }
        };
        read += 1;
        *formats.entry(cap.format).or_default() += 1;
        let datagrams: Vec<Datagram> = std::mem::take(&mut cap.datagrams)
            .into_iter()
            .filter(|d| Packet::decode(&d.payload).is_ok())
            .map(|d| Datagram {
                time: d.time,
                src: d.src,
                dst: d.dst,
                bytes: d.payload,
            })
            .collect();
        let (mut decode, mut endpoint, mut connection) = (0, 0, 0);
        for d in &datagrams {
            if shapes.insert(shape(&d.bytes)) {
                hostile::decode_roundtrip(&d.bytes);
                decode += w.write("decode", &d.bytes);
            }
        }
        for program in endpoint_programs(&datagrams) {
            if w.is_new("endpoint", &program) {
                hostile::endpoint_program(&program);
                endpoint += w.write("endpoint", &program);
            }
        }
        for program in connection_programs(&datagrams) {
            if w.is_new("connection", &program) {
                let read = hostile::connection_program(&program);
                delivered += (read[0] + read[1]) as u64;
                connection += w.write("connection", &program);
            }
        }
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "  {name}: {} {}, {} uTP datagrams: {decode} decode, {endpoint} endpoint, \
{connection} connection seeds",
            cap.format,
            cap.link_types.join("/"),
            datagrams.len()
        );
    }
    let n = |k: &str| w.written.get(k).copied().unwrap_or(0);
    let mut formats: Vec<String> = formats.iter().map(|(f, k)| format!("{k} {f}")).collect();
    formats.sort();
    println!(
        "seed-corpus: new seeds: {} decode ({} shapes seen), {} endpoint, {} connection \
(run once, they delivered {delivered} bytes) from {read} captures ({})",
        n("decode"),
        shapes.len(),
        n("endpoint"),
        n("connection"),
        formats.join(", ")
    );
    if read == 0 {
        eprintln!("seed-corpus: no capture read; the targets start from the dictionary alone");
    }
    ExitCode::SUCCESS
}

/// Whether the file starts with a pcap or pcapng magic number.
fn is_capture(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    let ok = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok();
    ok && matches!(
        magic,
        [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x0a, 0x0d, 0x0d, 0x0a]
    )
}

struct Writer {
    out: PathBuf,
    written: HashMap<&'static str, usize>,
}

impl Writer {
    fn path(&self, kind: &str, blob: &[u8]) -> PathBuf {
        self.out.join(kind).join(format!("{:016x}", fnv1a(blob)))
    }

    /// Whether `blob` is not in the corpus yet.
    fn is_new(&self, kind: &str, blob: &[u8]) -> bool {
        !self.path(kind, blob).exists()
    }

    /// Writes `blob` unless it is there already; returns 1 if it wrote it.
    fn write(&mut self, kind: &'static str, blob: &[u8]) -> usize {
        let path = self.path(kind, blob);
        if path.exists() {
            return 0;
        }
        match fs::write(&path, blob) {
            Ok(()) => {
                *self.written.entry(kind).or_default() += 1;
                1
            }
            Err(e) => {
                eprintln!("seed-corpus: cannot write {}: {e}", path.display());
                0
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the decoder sees of a datagram that decodes: type and version byte, the
/// extension chain (kinds and lengths), and the payload size in 100-byte steps.
fn shape(d: &[u8]) -> (u8, Vec<(u8, usize)>, usize) {
    let Ok(p) = Packet::decode(d) else {
        return (0, Vec::new(), 0);
    };
    let exts = p.extensions().map(|e| (e.kind(), e.body_len())).collect();
    (d[0], exts, p.payload.len().min(1500) / 100)
}

/// Milliseconds between two capture times, for a time step.
fn gap_ms(from: Duration, to: Duration) -> u64 {
    to.saturating_sub(from).as_millis() as u64
}

/// Endpoint programs: op 0 (a datagram: address index, length, bytes), op 4 (time:
/// milliseconds as u16, then a factor byte: 1 means ×1, 0 means ×100).
fn endpoint_programs(datagrams: &[Datagram]) -> Vec<Vec<u8>> {
    let mut programs = Vec::new();
    let mut addrs: HashMap<SocketAddr, u8> = HashMap::new();
    for run in datagrams.chunks(ENDPOINT_RUN) {
        if programs.len() == ENDPOINT_SEEDS_PER_CAPTURE {
            break;
        }
        // The first byte seeds the endpoint's ids.
        let mut p = vec![programs.len() as u8];
        let mut prev = run[0].time;
        for d in run {
            time_step(&mut p, 4, gap_ms(prev, d.time));
            prev = d.time;
            let next = addrs.len() as u8;
            let addr = *addrs.entry(d.src).or_insert(next) % 8;
            let len = d.bytes.len().min(255);
            p.extend_from_slice(&[0, addr, len as u8]);
            p.extend_from_slice(&d.bytes[..len]);
        }
        p.extend_from_slice(&[4, 0, 50, 1]);
        programs.push(p);
    }
    programs
}

/// A time step of `ms`: `[op, hi, lo, factor]` for the endpoint program (op 4; factor
/// byte % 4 == 0 means ×100), `[op, side, hi, lo, factor]` for the connection program
/// (op 3; factor byte % 8 == 0 means ×100). Nothing below a millisecond.
fn time_step(p: &mut Vec<u8>, op: u8, ms: u64) {
    if ms == 0 {
        return;
    }
    let (units, factor) = if ms <= u64::from(u16::MAX) {
        (ms, 1)
    } else {
        ((ms / 100).min(u64::from(u16::MAX)), 0)
    };
    let [hi, lo] = (units as u16).to_be_bytes();
    if op == 3 {
        p.extend_from_slice(&[3, 0, hi, lo, factor]);
    } else {
        p.extend_from_slice(&[op, hi, lo, factor]);
    }
}

/// The packets of one recorded connection, from its SYN: (time, side, datagram);
/// side 0 is the initiator (the target's client), 1 the acceptor.
type Connection<'a> = Vec<(Duration, usize, &'a [u8])>;

/// The connections of a capture that start with a SYN, in capture order. A SYN with
/// `conn_id` c from A to B opens (A→B, c+1), (B→A, c); the SYN itself is left out (the
/// target does the handshake).
fn connections(datagrams: &[Datagram]) -> Vec<Connection<'_>> {
    let mut conns: Vec<Connection<'_>> = Vec::new();
    let mut index: HashMap<(SocketAddr, SocketAddr, u16), (usize, usize)> = HashMap::new();
    for d in datagrams {
        let Ok(p) = Packet::decode(&d.bytes) else {
            continue;
        };
        let h = p.header;
        if h.ty == PacketType::Syn {
            if !index.contains_key(&(d.src, d.dst, h.conn_id.wrapping_add(1))) {
                let n = conns.len();
                conns.push(Vec::new());
                index.insert((d.src, d.dst, h.conn_id.wrapping_add(1)), (n, 0));
                index.insert((d.dst, d.src, h.conn_id), (n, 1));
            }
            continue;
        }
        if let Some(&(n, side)) = index.get(&(d.src, d.dst, h.conn_id)) {
            conns[n].push((d.time, side, &d.bytes));
        }
    }
    conns.retain(|c| !c.is_empty());
    conns
}

/// One connection program operation, before encoding.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    Wait(u64),
    Write(usize, u32),
    Read(usize),
    Drop,
    Shutdown(usize),
    Close(usize),
    /// A recorded STATE, forged towards the other side of the one that sent it.
    Forge(usize, Vec<u8>),
}

/// The operations that replay a recorded connection.
fn replay(conn: &Connection<'_>, forge: bool) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::new();
    let mut seen: [HashSet<u16>; 2] = [HashSet::new(), HashSet::new()];
    let mut fin = [false; 2];
    let mut prev = conn[0].0;
    for &(time, side, bytes) in conn {
        let Ok(p) = Packet::decode(bytes) else {
            continue;
        };
        let ms = gap_ms(prev, time);
        prev = time;
        if ms > 0 {
            ops.push(Op::Wait(ms));
        }
        let h = p.header;
        match h.ty {
            PacketType::Data => {
                if seen[side].insert(h.seq_nr.0) {
                    let n = p.payload.len() as u32;
                    // Back-to-back packets of one side are one write.
                    match ops.last_mut() {
                        Some(Op::Write(s, k)) if *s == side && *k + n <= 255 * 64 => *k += n,
                        _ => ops.push(Op::Write(side, n)),
                    }
                } else {
                    ops.push(Op::Drop);
                }
            }
            PacketType::Fin => {
                if fin[side] {
                    ops.push(Op::Drop);
                } else {
                    fin[side] = true;
                    ops.push(Op::Shutdown(side));
                }
            }
            PacketType::State => {
                if ops.last() != Some(&Op::Read(side)) {
                    ops.push(Op::Read(side));
                }
                if forge {
                    ops.push(Op::Forge(1 - side, forged_state(&p)));
                }
            }
            PacketType::Reset => ops.push(Op::Close(side)),
            PacketType::Syn => {}
        }
    }
    ops
}

/// The `crafted` fields of `hostile.rs` for a recorded STATE: type, the receiving
/// side's own id (selector 2, index 0), seq_nr and ack_nr as the target's base packet
/// has them (selector 1, offset 0), the recorded timestamps and window, its
/// extensions (bodies up to 63 bytes), no payload.
fn forged_state(p: &Packet<'_>) -> Vec<u8> {
    let h = p.header;
    let mut b = vec![PacketType::State as u8, 2, 0, 1, 0, 1, 0];
    b.extend_from_slice(&h.timestamp.0.to_be_bytes());
    b.extend_from_slice(&h.timestamp_diff.0.to_be_bytes());
    b.extend_from_slice(&h.wnd_size.to_be_bytes());
    let exts: Vec<(u8, &[u8])> = p
        .extensions()
        .filter_map(|e| match e {
            Extension::SelectiveAck(s) => Some((1, s.bitmask())),
            Extension::ExtensionBits(d) => Some((2, d)),
            Extension::Unknown { kind, data } => Some((kind, data)),
            Extension::CloseReason { .. } => None,
        })
        .take(3)
        .collect();
    b.push(exts.len() as u8);
    for (kind, body) in exts {
        let body = &body[..body.len().min(63)];
        b.extend_from_slice(&[kind, body.len() as u8]);
        b.extend_from_slice(body);
    }
    b.push(0);
    b
}

/// Encodes operations as a connection program (`connection_program`): two seed
/// bytes, then per operation its code and side byte and its arguments.
fn encode(seed: u16, ops: &[Op]) -> Vec<u8> {
    let mut p = seed.to_be_bytes().to_vec();
    for op in ops {
        match op {
            Op::Wait(ms) => time_step(&mut p, 3, *ms),
            Op::Write(side, n) => p.extend_from_slice(&[0, *side as u8, n.div_ceil(64) as u8]),
            Op::Read(side) => p.extend_from_slice(&[2, *side as u8, 0xff, 0xff]),
            Op::Drop => p.extend_from_slice(&[7, 0, 1]),
            // Op 6 closes when the next byte % 3 == 0, else shuts down.
            Op::Shutdown(side) => p.extend_from_slice(&[6, *side as u8, 1]),
            Op::Close(side) => p.extend_from_slice(&[6, *side as u8, 0]),
            Op::Forge(side, fields) => {
                p.extend_from_slice(&[5, *side as u8]);
                p.extend_from_slice(fields);
            }
        }
    }
    p
}

/// Connection programs: per recorded connection, the window of operations from its
/// start, the one around its first loss and the one at its end, plain and (every
/// other connection) with the STATE packets forged.
fn connection_programs(datagrams: &[Datagram]) -> Vec<Vec<u8>> {
    let mut programs = Vec::new();
    for (i, conn) in connections(datagrams).iter().enumerate() {
        for forge in [false, true] {
            if forge && i % 2 == 1 {
                continue;
            }
            let ops = replay(conn, forge);
            if ops.is_empty() {
                continue;
            }
            let last_start = ops.len().saturating_sub(CONNECTION_OPS);
            let loss = ops.iter().position(|o| *o == Op::Drop).unwrap_or(0);
            let mut starts = vec![
                0,
                loss.saturating_sub(CONNECTION_OPS / 4).min(last_start),
                last_start,
            ];
            starts.dedup();
            for s in starts {
                let window = &ops[s..(s + CONNECTION_OPS).min(ops.len())];
                programs.push(encode((i as u16).wrapping_mul(0x9e37), window));
            }
        }
        if programs.len() >= CONNECTION_SEEDS_PER_CAPTURE {
            break;
        }
    }
    programs.truncate(CONNECTION_SEEDS_PER_CAPTURE);
    programs
}
