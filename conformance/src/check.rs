//! The passive checker: follows every uTP connection of a capture and reports each
//! place where a BEP 29 rule visible on the wire is broken.
//!
//! It holds at either end of the wire (a capture at the sender or at the receiver):
//! packets lost before the capture point show up as gaps, which are counted, never
//! reported as violations. Rules, named by their checklist item:
//!
//! - `D25`/`D28`: after a SYN with id X, the initiator sends with X + 1 and the
//!   acceptor with X.
//! - `C20`: a STATE does not consume a sequence number: it carries the next one (X1).
//! - `C21`: nothing from a side carries a sequence number beyond its FIN.
//! - `X10`: no ACK acknowledges a packet the other side has not sent.
//! - `B16`: every selective-ACK bit stands for a packet the other side has sent.
//! - `E33`: bytes in flight stay within the receiver's advertised window (plus the
//!   packet being sent).
//! - `A8`: a timestamp difference is "my receive time minus your timestamp" of a packet
//!   the other side really sent, shortly before.
//! - `A7`: a side's timestamps (its µs clock at transmit, wrapping u32) never run
//!   backwards in capture order. Packets that crossed a reordering impairment before
//!   the capture point may be overtaken: [`CheckOptions::reordering`] says by how much
//!   for which senders; within that they are counted in [`Report::reordered`].
//! - `A11`: a side's cumulative ack_nr never goes backwards (wrapping u16). A packet
//!   with a lower ack_nr is fine when its timestamp shows it was sent before the one
//!   that first carried the higher ack_nr (reordered on the way; `A7` bounds how far),
//!   and so is libutp's keep-alive, a STATE with ack_nr − 1 after a silence (X8,
//!   counted in [`Report::keep_alives`]). An ack_nr that `X10` rejects is not taken as
//!   the new highest.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use utp::wire::{DecodeError, Micros, Packet, PacketType, SeqNr};

use crate::trace::{Capture, Datagram};

/// How long libutp's side is silent before its keep-alive (`KEEPALIVE_INTERVAL` is
/// 29 s, counted from the last packet it sent), less room for a capture point that saw
/// that last packet late.
const KEEP_ALIVE_SILENCE: Duration = Duration::from_secs(20);

/// Beyond this much capture time between two packets of a side, their wrapping
/// timestamps (2^31 µs is 35.8 minutes) are not compared.
const STAMPS_COMPARABLE: Duration = Duration::from_secs(30 * 60);

/// What a UDP datagram is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A valid uTP version 1 packet.
    Utp,
    /// libutp's old-format (version 0) RESET, 23 bytes.
    Version0Reset,
    /// Looks like uTP version 1 but does not decode.
    Malformed(DecodeError),
    /// Not uTP (DHT, tracker, ...).
    Other,
}

/// Classifies a UDP payload.
pub fn classify(payload: &[u8]) -> Kind {
    match Packet::decode(payload) {
        Ok(_) => Kind::Utp,
        // libutp's v0 header: conn id u32, tv_sec, tv_usec, reply_micro (u32 each),
        // window u8, ext u8, flags u8 (3 = RESET), seq u16, ack u16.
        Err(_) if payload.len() == 23 && payload[18] == 3 => Kind::Version0Reset,
        // STUN (RFC 5389): its magic cookie; a binding response starts like uTP v1.
        Err(_) if payload.get(4..8) == Some(&[0x21, 0x12, 0xa4, 0x42]) => Kind::Other,
        Err(e)
            if payload
                .first()
                .is_some_and(|b| b & 0x0f == 1 && b >> 4 <= 4) =>
        {
            Kind::Malformed(e)
        }
        Err(_) => Kind::Other,
    }
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Frame number in the capture.
    pub frame: usize,
    /// The checklist item.
    pub rule: &'static str,
    /// What was seen.
    pub message: String,
}

/// Everything the checker found in a capture.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Valid uTP packets.
    pub utp: usize,
    /// Frames of version-0 RESETs.
    pub version0_resets: Vec<usize>,
    /// Frames that look like uTP but do not decode, with the reason.
    pub malformed: Vec<(usize, DecodeError)>,
    /// Other UDP datagrams.
    pub other: usize,
    /// Frames whose packet did not re-encode to the same bytes.
    pub reencode_mismatches: Vec<usize>,
    /// Connections followed (with a SYN) and fragments (without).
    pub connections: usize,
    /// Sequence numbers missing from the capture (lost before the capture point).
    pub gaps: usize,
    /// Packets with a selective ACK, and the bitmask lengths seen.
    pub sack_lengths: HashMap<usize, usize>,
    /// Packets whose first extension has type 3 or more (libutp drops those).
    pub first_extension_3_or_more: usize,
    /// STATEs after a FIN that carry the FIN's sequence number (libtorrent does this;
    /// tolerated, counted).
    pub state_with_fin_seq: usize,
    /// libutp's keep-alives: STATEs with the side's highest ack_nr minus one, after at
    /// least 20 s in which the capture saw nothing from that side (checklist X8;
    /// tolerated, counted).
    pub keep_alives: usize,
    /// Packets captured after a later-sent packet of the same side (their timestamp is
    /// behind), within what [`CheckOptions::reordering`] allows for their sender.
    pub reordered: usize,
    /// Rules broken.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Violations of one rule.
    pub fn count(&self, rule: &str) -> usize {
        self.violations.iter().filter(|v| v.rule == rule).count()
    }
}

/// What the checker is told about the path from each sender to the capture point.
///
/// The default is a capture with no reordering before it: at the sender, or behind a
/// path that keeps order (loss is fine: it shows as gaps).
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Senders whose packets crossed a reordering impairment before the capture point,
    /// each with the most one of its packets can be overtaken by (the spread of the
    /// impairment's delay), measured in the sender's own timestamps. A packet whose
    /// timestamp is behind that sender's latest by no more than this is counted in
    /// [`Report::reordered`]; further behind, or from a sender not listed, it breaks
    /// `A7`.
    pub reordering: HashMap<SocketAddr, Duration>,
}

#[derive(Debug, Default)]
struct Direction {
    /// The next new sequence number (after the last DATA, FIN or SYN).
    next_seq: Option<SeqNr>,
    fin: Option<SeqNr>,
    /// Unacknowledged payload: (seq, bytes), in order.
    unacked: VecDeque<(SeqNr, usize)>,
    in_flight: usize,
    /// The last window this side advertised (not from its SYN).
    window: Option<u32>,
    /// Recent (capture time, timestamp) of packets from this side.
    stamps: VecDeque<(Duration, u32)>,
    /// Recent new packets from this side: (seq, timestamp when first seen).
    sent: VecDeque<(SeqNr, u32)>,
    /// The latest timestamp from this side in capture order (the reference for `A7`),
    /// and when it was captured.
    latest_stamp: Option<(Micros, Duration)>,
    /// The highest cumulative ack_nr from this side, with the timestamp and capture
    /// time of the first packet that carried it (the reference for `A11`).
    acked: Option<(SeqNr, Micros, Duration)>,
    /// When the capture last saw a packet from this side.
    last_seen: Option<Duration>,
}

#[derive(Debug)]
struct Conn {
    /// Initiator and acceptor addresses and the SYN's id, when the SYN was seen.
    initiator: Option<SocketAddr>,
    syn_id: u16,
    dirs: [Direction; 2],
    addrs: [SocketAddr; 2],
}

impl Conn {
    fn dir_index(&self, from: SocketAddr) -> usize {
        usize::from(self.addrs[0] != from)
    }
}

/// Checks every uTP packet of a capture taken with no reordering before the capture
/// point (see [`check_with`]).
pub fn check(capture: &Capture) -> Report {
    check_with(capture, &CheckOptions::default())
}

/// Checks every uTP packet of a capture, told what lay between each sender and the
/// capture point.
pub fn check_with(capture: &Capture, options: &CheckOptions) -> Report {
    let mut report = Report::default();
    let mut conns: Vec<Conn> = Vec::new();
    // (src, dst, conn_id) → connection index.
    let mut by_id: HashMap<(SocketAddr, SocketAddr, u16), usize> = HashMap::new();
    for d in &capture.datagrams {
        match classify(&d.payload) {
            Kind::Utp => report.utp += 1,
            Kind::Version0Reset => {
                report.version0_resets.push(d.frame);
                continue;
            }
            Kind::Malformed(e) => {
                report.malformed.push((d.frame, e));
                continue;
            }
            Kind::Other => {
                report.other += 1;
                continue;
            }
        }
        let p = Packet::decode(&d.payload).expect("classified as uTP");
        let mut again = vec![0u8; p.encoded_len()];
        if p.encode(&mut again).ok() != Some(d.payload.len()) || again != d.payload {
            report.reencode_mismatches.push(d.frame);
        }
        if let Some(s) = p.selective_ack() {
            *report.sack_lengths.entry(s.bitmask().len()).or_default() += 1;
        }
        if p.first_extension() >= 3 {
            report.first_extension_3_or_more += 1;
        }
        let idx = connection(&mut conns, &mut by_id, d, &p);
        check_packet(&mut report, options, &mut conns[idx], d, &p);
    }
    report.connections = conns.len();
    report
}

/// Finds or creates the connection a packet belongs to.
fn connection(
    conns: &mut Vec<Conn>,
    by_id: &mut HashMap<(SocketAddr, SocketAddr, u16), usize>,
    d: &Datagram,
    p: &Packet<'_>,
) -> usize {
    let id = p.header.conn_id;
    if p.header.ty == PacketType::Syn {
        if let Some(&i) = by_id.get(&(d.src, d.dst, id)) {
            return i; // a resent SYN
        }
        conns.push(Conn {
            initiator: Some(d.src),
            syn_id: id,
            dirs: Default::default(),
            addrs: [d.src, d.dst],
        });
        let i = conns.len() - 1;
        by_id.insert((d.src, d.dst, id), i);
        by_id.insert((d.src, d.dst, id.wrapping_add(1)), i);
        by_id.insert((d.dst, d.src, id), i);
        return i;
    }
    if let Some(&i) = by_id.get(&(d.src, d.dst, id)) {
        return i;
    }
    // RESETs may name either id of the connection (checklist X11).
    for alt in [id.wrapping_add(1), id.wrapping_sub(1)] {
        if p.header.ty == PacketType::Reset {
            if let Some(&i) = by_id.get(&(d.src, d.dst, alt)) {
                return i;
            }
        }
    }
    // The same two hosts with an id one off: a connection using the wrong id (D25/D28).
    let near = conns.iter().position(|c| {
        c.initiator.is_some()
            && (c.addrs == [d.src, d.dst] || c.addrs == [d.dst, d.src])
            && (id.wrapping_sub(c.syn_id) <= 1 || c.syn_id.wrapping_sub(id) <= 1)
    });
    if let Some(i) = near {
        return i;
    }
    // A connection whose SYN is not in the capture: follow it from here.
    conns.push(Conn {
        initiator: None,
        syn_id: 0,
        dirs: Default::default(),
        addrs: [d.src, d.dst],
    });
    let i = conns.len() - 1;
    by_id.insert((d.src, d.dst, id), i);
    i
}

fn violation(report: &mut Report, frame: usize, rule: &'static str, message: String) {
    report.violations.push(Violation {
        frame,
        rule,
        message,
    });
}

fn check_packet(
    report: &mut Report,
    options: &CheckOptions,
    c: &mut Conn,
    d: &Datagram,
    p: &Packet<'_>,
) {
    let h = &p.header;
    let me = c.dir_index(d.src);
    let other = 1 - me;
    let frame = d.frame;

    // D25 / D28: connection ids.
    if let Some(init) = c.initiator {
        if h.ty != PacketType::Reset {
            let want = if h.ty == PacketType::Syn {
                c.syn_id
            } else if d.src == init {
                c.syn_id.wrapping_add(1)
            } else {
                c.syn_id
            };
            if h.conn_id != want {
                let rule = if d.src == init { "D25" } else { "D28" };
                violation(
                    report,
                    frame,
                    rule,
                    format!("{:?} with conn_id {} where {want} was due", h.ty, h.conn_id),
                );
            }
        }
    }

    // A8: the timestamp difference refers to a timestamp the other side sent shortly
    // before (0 means "no sample"; 0x7fffffff is uTorrent's uninitialised value).
    if h.timestamp_diff.0 != 0 && h.timestamp_diff.0 != 0x7fff_ffff && h.ty != PacketType::Reset {
        let v = h.timestamp.0.wrapping_sub(h.timestamp_diff.0);
        let slack = Duration::from_millis(100);
        let ok = c.dirs[other].stamps.iter().any(|&(at, ts)| {
            let held = v.wrapping_sub(ts) as i32;
            let elapsed = d.time.saturating_sub(at) + slack;
            held >= -1000 && (held as i64) <= elapsed.as_micros() as i64
        });
        if !c.dirs[other].stamps.is_empty() && !ok {
            violation(
                report,
                frame,
                "A8",
                format!(
                    "timestamp_difference {} matches no recent timestamp of the peer",
                    h.timestamp_diff.0
                ),
            );
        }
    }
    let stamps = &mut c.dirs[me].stamps;
    stamps.push_back((d.time, h.timestamp.0));
    if stamps.len() > 512 {
        stamps.pop_front();
    }
    let silent_for = c.dirs[me]
        .last_seen
        .map_or(Duration::MAX, |at| d.time.saturating_sub(at));
    c.dirs[me].last_seen = Some(d.time);

    // A RESET may come from a socket that is gone (libutp's carry timestamp 0): it
    // takes part in no ordering rule.
    if h.ty == PacketType::Reset {
        return;
    }

    // A7: timestamps do not run backwards, beyond what reordering on the way explains.
    let dir = &mut c.dirs[me];
    match dir.latest_stamp {
        Some((latest, at)) if d.time.saturating_sub(at) < STAMPS_COMPARABLE => {
            let behind = latest.distance(h.timestamp);
            if behind <= 0 {
                dir.latest_stamp = Some((h.timestamp, d.time));
            } else {
                let allowed = options.reordering.get(&d.src).copied();
                if allowed.is_some_and(|a| u128::from(behind as u32) <= a.as_micros()) {
                    report.reordered += 1;
                } else {
                    let allows = allowed.map_or(String::new(), |a| {
                        format!(" (reordering allows {} µs)", a.as_micros())
                    });
                    let (ty, ts) = (h.ty, h.timestamp.0);
                    violation(
                        report,
                        frame,
                        "A7",
                        format!(
                            "{ty:?} timestamp {ts}: {behind} µs behind {}{allows}",
                            latest.0
                        ),
                    );
                    // Judge what follows against this packet: one report per step back.
                    dir.latest_stamp = Some((h.timestamp, d.time));
                }
            }
        }
        _ => dir.latest_stamp = Some((h.timestamp, d.time)),
    }

    // X10: never acknowledge what the other side has not sent.
    if h.ty != PacketType::Syn {
        let mut acks_unsent = false;
        if let Some(next) = c.dirs[other].next_seq {
            if h.ack_nr.is_after(next.prev()) {
                acks_unsent = true;
                violation(
                    report,
                    frame,
                    "X10",
                    format!(
                        "ack_nr {} but the peer's last sequence number is {}",
                        h.ack_nr,
                        next.prev()
                    ),
                );
            }
            // B16: selective-ACK bits only for packets the peer has sent.
            if let Some(s) = p.selective_ack() {
                if let Some(bad) = s.acked(h.ack_nr).find(|seq| !seq.is_before(next)) {
                    violation(
                        report,
                        frame,
                        "B16",
                        format!("selective ACK of {bad}, never sent (next is {next})"),
                    );
                }
            }
        }
        if !acks_unsent {
            check_ack_order(report, &mut c.dirs[me], d, h, silent_for);
        }
        // The ACK releases the other side's packets up to ack_nr.
        let od = &mut c.dirs[other];
        while od
            .unacked
            .front()
            .is_some_and(|(seq, _)| !seq.is_after(h.ack_nr))
        {
            let (_, len) = od.unacked.pop_front().expect("front");
            od.in_flight -= len;
        }
        c.dirs[me].window = Some(h.wnd_size);
    }

    let dir = &mut c.dirs[me];
    match h.ty {
        PacketType::Syn => dir.next_seq = Some(h.seq_nr.next()),
        PacketType::State => match dir.next_seq {
            // The acceptor's answer to the SYN sets its sequence (checklist X1).
            None => dir.next_seq = Some(h.seq_nr),
            Some(next) if h.seq_nr.is_after(next) => {
                // Packets of this side were lost before the capture point.
                report.gaps += usize::from(h.seq_nr - next);
                dir.next_seq = Some(h.seq_nr);
            }
            Some(next) if h.seq_nr != next => {
                // Behind: fine if it was sent before the packet that took that number
                // (reordered on the way), which its timestamp shows.
                let sent_later = dir
                    .sent
                    .iter()
                    .find(|(seq, _)| *seq == h.seq_nr)
                    .is_none_or(|&(_, ts)| ts.wrapping_sub(h.timestamp.0) as i32 >= 0);
                if dir.fin == Some(h.seq_nr) {
                    report.state_with_fin_seq += 1;
                } else if !sent_later {
                    violation(
                        report,
                        frame,
                        "C20",
                        format!("STATE with seq_nr {} where the next is {next}", h.seq_nr),
                    );
                }
            }
            Some(_) => {}
        },
        PacketType::Data | PacketType::Fin => {
            let next = dir.next_seq.unwrap_or(h.seq_nr);
            if let Some(fin) = dir.fin {
                if h.seq_nr.is_after(fin) {
                    violation(
                        report,
                        frame,
                        "C21",
                        format!("{:?} {} after FIN {fin}", h.ty, h.seq_nr),
                    );
                }
            }
            if !h.seq_nr.is_before(next) {
                // New: anything skipped was lost before the capture point.
                report.gaps += usize::from(h.seq_nr - next);
                dir.next_seq = Some(h.seq_nr.next());
                dir.sent.push_back((h.seq_nr, h.timestamp.0));
                if dir.sent.len() > 4096 {
                    dir.sent.pop_front();
                }
                if h.ty == PacketType::Fin {
                    dir.fin = Some(h.seq_nr);
                }
                // E33: within the peer's advertised window.
                dir.unacked.push_back((h.seq_nr, p.payload.len()));
                dir.in_flight += p.payload.len();
                if let Some(w) = c.dirs[other].window {
                    let dir = &c.dirs[me];
                    if dir.in_flight > w as usize + p.payload.len() {
                        violation(
                            report,
                            frame,
                            "E33",
                            format!("{} bytes in flight, peer window {w}", dir.in_flight),
                        );
                    }
                }
            }
        }
        PacketType::Reset => {}
    }
}

/// A11: the cumulative ack_nr of a side does not go backwards, except for a packet sent
/// before the one that raised it (reordered on the way) and libutp's keep-alive (X8).
fn check_ack_order(
    report: &mut Report,
    dir: &mut Direction,
    d: &Datagram,
    h: &utp::wire::Header,
    silent_for: Duration,
) {
    let Some((highest, stamp, at)) = dir.acked else {
        dir.acked = Some((h.ack_nr, h.timestamp, d.time));
        return;
    };
    if h.ack_nr.is_after(highest) {
        dir.acked = Some((h.ack_nr, h.timestamp, d.time));
        return;
    }
    if h.ack_nr == highest {
        return;
    }
    let sent_before =
        d.time.saturating_sub(at) < STAMPS_COMPARABLE && stamp.distance(h.timestamp) >= 0;
    if sent_before {
        return; // reordered; A7 judges by how much
    }
    let keep_alive =
        h.ty == PacketType::State && h.ack_nr == highest.prev() && silent_for >= KEEP_ALIVE_SILENCE;
    if keep_alive {
        report.keep_alives += 1;
        return;
    }
    violation(
        report,
        d.frame,
        "A11",
        format!(
            "{:?} with ack_nr {} after this side acknowledged {highest}",
            h.ty, h.ack_nr
        ),
    );
    // Judge what follows against this packet: one report per step back.
    dir.acked = Some((h.ack_nr, h.timestamp, d.time));
}

#[cfg(test)]
mod tests {
    use utp::wire::{encode, Extension, Header, SelectiveAck};

    use super::*;

    /// A scripted connection: A (initiator, id 100) and B, seq numbers from 10 and 500.
    struct Script {
        cap: Capture,
        t: u64,
    }

    const A: &str = "10.0.0.1:1000";
    const B: &str = "10.0.0.2:2000";

    impl Script {
        fn new() -> Script {
            Script::starting(10, 500)
        }

        /// A's SYN with seq_nr `a`, B's answer with seq_nr `b`.
        fn starting(a: u16, b: u16) -> Script {
            let mut s = Script {
                cap: Capture::default(),
                t: 0,
            };
            s.pkt(A, PacketType::Syn, 100, a, 0, 0, 1 << 20, &[], &[]);
            s.pkt(B, PacketType::State, 100, b, a, 0, 1 << 20, &[], &[]);
            s
        }

        /// Lets capture time pass.
        fn wait(&mut self, d: Duration) {
            self.t += d.as_micros() as u64;
        }

        /// Sets the timestamp of the last packet (bytes 4..8, checklist A6).
        fn stamp(&mut self, ts: u32) {
            let d = self.cap.datagrams.last_mut().expect("a packet");
            d.payload[4..8].copy_from_slice(&ts.to_be_bytes());
        }

        fn report_with(&self, reordering: &[(&str, Duration)]) -> Report {
            let options = CheckOptions {
                reordering: reordering
                    .iter()
                    .map(|&(a, d)| (a.parse().unwrap(), d))
                    .collect(),
            };
            check_with(&self.cap, &options)
        }

        /// Adds a packet from `from`; timestamps are the capture time in µs, and
        /// `tsd` is taken as given.
        #[allow(clippy::too_many_arguments)]
        fn pkt(
            &mut self,
            from: &str,
            ty: PacketType,
            id: u16,
            seq: u16,
            ack: u16,
            tsd: u32,
            wnd: u32,
            exts: &[Extension<'_>],
            payload: &[u8],
        ) {
            self.t += 1000;
            let h = Header {
                ty,
                conn_id: id,
                timestamp: Micros(self.t as u32),
                timestamp_diff: Micros(tsd),
                wnd_size: wnd,
                seq_nr: SeqNr(seq),
                ack_nr: SeqNr(ack),
            };
            let mut buf = vec![0u8; 2048];
            let n = encode(&h, exts, payload, &mut buf).unwrap();
            let (src, dst) = if from == A { (A, B) } else { (B, A) };
            self.cap.datagrams.push(Datagram {
                frame: self.cap.datagrams.len() + 1,
                time: Duration::from_micros(self.t),
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                payload: buf[..n].to_vec(),
            });
        }

        fn rules(&self) -> Vec<&'static str> {
            check(&self.cap).violations.iter().map(|v| v.rule).collect()
        }
    }

    #[test]
    fn a_clean_exchange_passes() {
        let mut s = Script::new();
        s.pkt(
            A,
            PacketType::Data,
            101,
            11,
            499,
            1000,
            1 << 20,
            &[],
            b"hello",
        );
        s.pkt(B, PacketType::State, 100, 500, 11, 1000, 1 << 20, &[], &[]);
        s.pkt(
            B,
            PacketType::Data,
            100,
            500,
            11,
            1000,
            1 << 20,
            &[],
            b"world",
        );
        s.pkt(A, PacketType::Fin, 101, 12, 500, 1000, 1 << 20, &[], &[]);
        s.pkt(B, PacketType::State, 100, 501, 12, 1000, 1 << 20, &[], &[]);
        assert_eq!(s.rules(), Vec::<&str>::new());
        let r = check(&s.cap);
        assert_eq!((r.utp, r.connections, r.gaps), (7, 1, 0));
    }

    #[test]
    fn every_rule_can_fail() {
        let mut s = Script::new();
        s.pkt(A, PacketType::Data, 100, 11, 499, 0, 1 << 20, &[], b"x"); // D25: wrong id
        s.pkt(B, PacketType::State, 101, 500, 11, 0, 1 << 20, &[], &[]); // D28
        s.pkt(B, PacketType::State, 100, 500, 40, 0, 1 << 20, &[], &[]); // X10: unsent
        let mask = [0xff, 0, 0, 0];
        s.pkt(
            B,
            PacketType::State,
            100,
            500,
            11,
            0,
            1 << 20,
            &[Extension::SelectiveAck(SelectiveAck::new(&mask))],
            &[],
        ); // B16
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"y");
        s.pkt(A, PacketType::State, 101, 11, 499, 0, 1 << 20, &[], &[]); // C20: behind, sent later
        s.pkt(A, PacketType::Fin, 101, 13, 499, 0, 1 << 20, &[], &[]);
        s.pkt(A, PacketType::Data, 101, 14, 499, 0, 1 << 20, &[], b"z"); // C21
        s.pkt(
            B,
            PacketType::State,
            100,
            500,
            11,
            123_456_789,
            10,
            &[],
            &[],
        ); // A8, window 10
        s.pkt(B, PacketType::Data, 100, 500, 14, 0, 10, &[], &[0; 100]);
        s.pkt(B, PacketType::Data, 100, 501, 14, 0, 10, &[], &[0; 100]); // E33: A's window is 1 MiB...
        let rules = s.rules();
        for rule in ["D25", "D28", "X10", "B16", "C20", "C21", "A8"] {
            assert!(rules.contains(&rule), "{rule} not detected: {rules:?}");
        }
        // E33: A sends 300 bytes into B's window of 10.
        let mut s = Script::new();
        s.pkt(B, PacketType::State, 100, 500, 10, 0, 10, &[], &[]);
        s.pkt(
            A,
            PacketType::Data,
            101,
            11,
            499,
            0,
            1 << 20,
            &[],
            &[0; 100],
        );
        s.pkt(
            A,
            PacketType::Data,
            101,
            12,
            499,
            0,
            1 << 20,
            &[],
            &[0; 100],
        );
        assert_eq!(s.rules(), vec!["E33"]);
    }

    /// A STATE from B acknowledging `ack`.
    fn ack(s: &mut Script, ack: u16) {
        s.pkt(B, PacketType::State, 100, 500, ack, 0, 1 << 20, &[], &[]);
    }

    /// A sends DATA 11 and 12 and B acknowledges both.
    fn two_acked() -> Script {
        let mut s = Script::new();
        s.pkt(A, PacketType::Data, 101, 11, 499, 0, 1 << 20, &[], b"a");
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"b");
        ack(&mut s, 11);
        ack(&mut s, 12);
        s
    }

    /// A11: a side's cumulative ack_nr going backwards is a violation, on a STATE or a
    /// DATA; a packet sent before the one that raised it (its timestamp shows it) is
    /// reordering, not a violation.
    /// Covers: A11
    #[test]
    fn ack_nr_never_goes_backwards() {
        assert_eq!(two_acked().rules(), Vec::<&str>::new());

        let mut s = two_acked();
        ack(&mut s, 11);
        assert_eq!(s.rules(), vec!["A11"]);
        let r = check(&s.cap);
        assert_eq!((r.violations[0].frame, r.keep_alives), (7, 0));
        assert!(r.violations[0].message.contains("ack_nr 11 after"), "{r:?}");

        let mut s = two_acked();
        s.pkt(B, PacketType::Data, 100, 500, 10, 0, 1 << 20, &[], b"x");
        assert_eq!(s.rules(), vec!["A11"]);

        // One report per step back: what follows is judged against the new value.
        let mut s = two_acked();
        ack(&mut s, 11);
        ack(&mut s, 11);
        ack(&mut s, 12);
        assert_eq!(s.rules(), vec!["A11"]);

        // Captured after the ACK of 12 but sent before it: reordered on the way. The
        // checker must be told (A7), and then it is no A11 either.
        let mut s = two_acked();
        let t = s.t as u32;
        ack(&mut s, 11);
        s.stamp(t - 300);
        assert_eq!(s.rules(), vec!["A7"]);
        let r = s.report_with(&[(B, Duration::from_millis(1))]);
        assert_eq!((r.violations.clone(), r.reordered), (vec![], 1));

        // An ack_nr that X10 rejects does not become the reference.
        let mut s = two_acked();
        ack(&mut s, 40);
        ack(&mut s, 12);
        assert_eq!(s.rules(), vec!["X10"]);
    }

    /// A11 in wrapping u16 arithmetic: 65535 to 0 is forward, 0 to 65535 backwards.
    /// Covers: A11
    #[test]
    fn ack_nr_order_wraps() {
        let mut s = Script::starting(65533, 500);
        for seq in [65534, 65535, 0, 1] {
            s.pkt(A, PacketType::Data, 101, seq, 499, 0, 1 << 20, &[], b"d");
            ack(&mut s, seq);
        }
        assert_eq!(s.rules(), Vec::<&str>::new());
        ack(&mut s, 65535);
        assert_eq!(s.rules(), vec!["A11"]);
    }

    /// libutp's keep-alive (X8): a STATE with ack_nr − 1 after 29 s of silence is
    /// tolerated and counted; the same without the silence, one further back, or on a
    /// DATA is a violation.
    /// Covers: X8, A11
    #[test]
    fn keep_alive_with_ack_nr_minus_one_is_tolerated() {
        let mut s = two_acked();
        s.wait(Duration::from_secs(29));
        ack(&mut s, 11);
        ack(&mut s, 12);
        s.wait(Duration::from_secs(29));
        ack(&mut s, 11);
        let r = check(&s.cap);
        assert_eq!((r.violations, r.keep_alives), (vec![], 2));

        let mut s = two_acked();
        s.wait(Duration::from_secs(1));
        ack(&mut s, 11);
        assert_eq!(s.rules(), vec!["A11"]);

        let mut s = two_acked();
        s.wait(Duration::from_secs(29));
        ack(&mut s, 10);
        assert_eq!(s.rules(), vec!["A11"]);

        let mut s = two_acked();
        s.wait(Duration::from_secs(29));
        s.pkt(B, PacketType::Data, 100, 500, 11, 0, 1 << 20, &[], b"x");
        assert_eq!(s.rules(), vec!["A11"]);

        // Silence of that side: A talking in between does not count.
        let mut s = two_acked();
        s.wait(Duration::from_secs(29));
        ack(&mut s, 12);
        ack(&mut s, 11);
        assert_eq!(s.rules(), vec!["A11"]);
    }

    /// A7: a side's timestamps never run backwards in capture order (wrapping u32 µs),
    /// except by as much as a reordering declared for that sender allows.
    /// Covers: A7
    #[test]
    fn timestamps_never_run_backwards() {
        let mut s = Script::new();
        s.pkt(A, PacketType::Data, 101, 11, 499, 0, 1 << 20, &[], b"a");
        let t = s.t as u32;
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"b");
        s.stamp(t - 1);
        assert_eq!(s.rules(), vec!["A7"]);
        let r = check(&s.cap);
        assert_eq!(r.violations[0].frame, 4);
        assert!(r.violations[0].message.contains("1 µs behind"), "{r:?}");

        // Equal is not backwards; the same step back is reported once.
        let mut s = Script::new();
        s.wait(Duration::from_millis(10));
        s.pkt(A, PacketType::Data, 101, 11, 499, 0, 1 << 20, &[], b"a");
        let t = s.t as u32;
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"b");
        s.stamp(t);
        s.pkt(A, PacketType::Data, 101, 13, 499, 0, 1 << 20, &[], b"c");
        s.stamp(t - 5000);
        s.pkt(A, PacketType::Data, 101, 14, 499, 0, 1 << 20, &[], b"d");
        s.stamp(t - 4000);
        assert_eq!(s.rules(), vec!["A7"]);

        // Wrapping: u32::MAX - 99 to 100 is 200 µs forward (A's SYN, the first
        // packet, is from just before).
        let mut s = Script::new();
        s.cap.datagrams[0].payload[4..8].copy_from_slice(&(u32::MAX - 199).to_be_bytes());
        s.pkt(A, PacketType::Data, 101, 11, 499, 0, 1 << 20, &[], b"a");
        s.stamp(u32::MAX - 99);
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"b");
        s.stamp(100);
        assert_eq!(s.rules(), Vec::<&str>::new());
        s.pkt(A, PacketType::Data, 101, 13, 499, 0, 1 << 20, &[], b"c");
        s.stamp(u32::MAX);
        assert_eq!(s.rules(), vec!["A7"]);

        // A reordering of 2 ms declared for A: 1.5 ms behind is counted, 3 ms is not
        // allowed, and B, not declared, may not run backwards at all.
        let mut s = Script::new();
        s.pkt(A, PacketType::Data, 101, 11, 499, 0, 1 << 20, &[], b"a");
        s.wait(Duration::from_millis(10));
        let t = s.t as u32;
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"b");
        s.pkt(A, PacketType::Data, 101, 13, 499, 0, 1 << 20, &[], b"c");
        s.stamp(t - 500);
        s.pkt(A, PacketType::Data, 101, 14, 499, 0, 1 << 20, &[], b"d");
        s.stamp(t - 3000);
        let r = s.report_with(&[(A, Duration::from_millis(2))]);
        assert_eq!(r.reordered, 1);
        assert_eq!(r.violations.len(), 1, "{r:?}");
        assert_eq!((r.violations[0].rule, r.violations[0].frame), ("A7", 6));
        assert!(r.violations[0].message.contains("allows 2000 µs"));
        let t = s.t as u32;
        ack(&mut s, 14);
        ack(&mut s, 14);
        s.stamp(t - 1);
        let r = s.report_with(&[(A, Duration::from_millis(2))]);
        assert_eq!(
            r.violations.last().map(|v| (v.rule, v.frame)),
            Some(("A7", 8))
        );

        // A RESET (libutp's carry timestamp 0) is not judged; a long silence makes the
        // wrapping timestamps incomparable.
        let mut s = Script::new();
        s.pkt(A, PacketType::Data, 101, 11, 499, 0, 1 << 20, &[], b"a");
        s.pkt(A, PacketType::Reset, 101, 12, 499, 0, 0, &[], &[]);
        s.stamp(0);
        let t = s.t as u32;
        s.wait(Duration::from_secs(40 * 60));
        s.pkt(A, PacketType::Data, 101, 12, 499, 0, 1 << 20, &[], b"b");
        s.stamp(t.wrapping_sub(1_000_000));
        assert_eq!(s.rules(), Vec::<&str>::new());
    }

    #[test]
    fn classifies_non_utp_and_version0_resets() {
        let mut v0 = [0u8; 23];
        v0[18] = 3;
        assert_eq!(classify(&v0), Kind::Version0Reset);
        assert_eq!(
            classify(b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"),
            Kind::Other
        );
        let mut stun = [0u8; 40];
        stun[0] = 0x01;
        stun[1] = 0x01;
        stun[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        stun[1] = 0x01;
        assert_eq!(classify(&stun), Kind::Other);
        let mut bad = [0u8; 22];
        bad[0] = 0x21;
        bad[1] = 1; // a selective ACK that is not there
        assert!(matches!(classify(&bad), Kind::Malformed(_)));
    }
}
