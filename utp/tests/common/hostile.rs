//! Hostile programs: arbitrary bytes read as a sequence of operations against the core,
//! with the invariants that must hold whatever the bytes are.
//!
//! The same functions run under libFuzzer (`fuzz/fuzz_targets/{decode,endpoint,
//! connection}.rs`, which include this file) and as property tests with a fixed budget
//! in `cargo test` (`utp/tests/abuse.rs`). A violated invariant panics.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use utp::proto::ConnectionHandle;
use utp::wire::{self, Extension, Header, Micros, Packet, PacketType, SelectiveAck, SeqNr};
use utp::{Config, Endpoint, Event, Instant};

use super::vnet::Net;

/// A cursor over fuzz input; reads past the end give zeros.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// The next four bytes, big-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` next bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        &self.data[start..end]
    }
}

/// Decoding never panics, and a datagram that decodes re-encodes to the same bytes,
/// both through [`Packet::encode`] and through [`wire::encode`] of its parts.
pub fn decode_roundtrip(data: &[u8]) {
    let Ok(p) = Packet::decode(data) else {
        return;
    };
    let mut out = vec![0u8; p.encoded_len()];
    let n = p.encode(&mut out).expect("re-encodes");
    assert_eq!(&out[..n], data, "Packet::encode is byte exact");
    let exts: Vec<Extension<'_>> = p.extensions().collect();
    let mut out2 = vec![0u8; wire::encoded_len(&exts, p.payload.len())];
    let n2 = wire::encode(&p.header, &exts, p.payload, &mut out2).expect("encodes");
    assert_eq!(&out2[..n2], data, "wire::encode of the parts is byte exact");
    let _ = p.to_string();
    if let Some(s) = p.selective_ack() {
        assert!(s.acked(p.header.ack_nr).count() <= s.len_bits());
    }
}

/// Builds a packet from fuzz input around `base` (a header seen on the wire, or zeros).
fn crafted(inp: &mut Input<'_>, base: Header, conn_ids: &[u16]) -> Vec<u8> {
    let ty = PacketType::from_nibble(inp.u8() % 5).unwrap_or(PacketType::State);
    let conn_id = match inp.u8() % 4 {
        0 => inp.u16(),
        k => {
            let id = conn_ids
                .get(usize::from(inp.u8()) % conn_ids.len().max(1))
                .copied()
                .unwrap_or(base.conn_id);
            id.wrapping_add(u16::from(k)).wrapping_sub(2)
        }
    };
    let rel = |inp: &mut Input<'_>, n: SeqNr| {
        if inp.u8() % 4 == 0 {
            SeqNr(inp.u16())
        } else {
            SeqNr(n.0.wrapping_add(i16::from(inp.u8() as i8) as u16))
        }
    };
    let seq_nr = rel(inp, base.ack_nr.next());
    let ack_nr = rel(inp, base.seq_nr);
    let h = Header {
        ty,
        conn_id,
        timestamp: Micros(inp.u32()),
        timestamp_diff: Micros(inp.u32()),
        wnd_size: inp.u32(),
        seq_nr,
        ack_nr,
    };
    let mut bodies: Vec<(u8, &[u8])> = Vec::new();
    for _ in 0..inp.u8() % 4 {
        let kind = inp.u8() % 5;
        let len = usize::from(inp.u8() % 64);
        bodies.push((kind.max(1), inp.bytes(len)));
    }
    let exts: Vec<Extension<'_>> = bodies
        .iter()
        .filter(|(k, b)| !(*k == wire::SELECTIVE_ACK && b.is_empty()))
        .map(|&(kind, b)| match kind {
            wire::SELECTIVE_ACK => Extension::SelectiveAck(SelectiveAck::new(b)),
            kind => Extension::Unknown { kind, data: b },
        })
        .collect();
    let len = usize::from(inp.u8() % 128);
    let payload = inp.bytes(len);
    let mut out = vec![0u8; wire::encoded_len(&exts, payload.len())];
    match wire::encode(&h, &exts, payload, &mut out) {
        Ok(n) => {
            out.truncate(n);
            out
        }
        Err(_) => Vec::new(),
    }
}

/// The limits the endpoint program runs with (small, so they are reached).
pub fn small_config() -> Config {
    let mut c = Config::default();
    c.max_connections = 8;
    c.max_half_open = 4;
    c.accept_queue = 4;
    c.reset_limit = 16;
    c.max_reorder_packets = 64;
    c.send_buffer_size = 16 * 1024;
    c.recv_buffer_size = 16 * 1024;
    c
}

/// One endpoint fed arbitrary datagrams from arbitrary addresses, application calls and
/// time jumps. Invariants: no panic; the connection table and the half-open table stay
/// within their limits; every datagram sent decodes and fits `max_packet_size`; an
/// address we never connected to and that never completed a handshake never gets more
/// bytes than it sent (no amplification); `handle_timeout(now)` leaves no timer due at
/// `now` (no busy loop); buffers stay within their configured sizes.
pub fn endpoint_program(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = small_config();
    let mut ep = Endpoint::new(cfg.clone(), [inp.u8(); 32]).expect("valid");
    let mut now = Instant::from_micros(1_000_000);
    let addrs: Vec<SocketAddr> = (1..=8u8)
        .map(|i| SocketAddr::from(([192, 0, 2, i], 1000 + u16::from(i))))
        .collect();
    let mut validated: HashSet<SocketAddr> = HashSet::new();
    let mut from_bytes: HashMap<SocketAddr, u64> = HashMap::new();
    let mut to_bytes: HashMap<SocketAddr, u64> = HashMap::new();
    let mut sent: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut handles: Vec<ConnectionHandle> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    for _ in 0..4096 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % 8;
        let mut datagram: Option<(SocketAddr, Vec<u8>)> = None;
        match op {
            0 | 1 => {
                let from = addrs[usize::from(inp.u8()) % addrs.len()];
                let len = usize::from(inp.u8());
                datagram = Some((from, inp.bytes(len).to_vec()));
            }
            2 => {
                let from = addrs[usize::from(inp.u8()) % addrs.len()];
                let ids: Vec<u16> = handles
                    .iter()
                    .filter_map(|h| ep.connection(*h))
                    .flat_map(|c| [c.recv_id(), c.send_id()])
                    .collect();
                let base = zero_header();
                datagram = Some((from, crafted(&mut inp, base, &ids)));
            }
            3 => {
                // Answer something we sent, as its destination would (or would not).
                if !sent.is_empty() {
                    let (to, d) = sent[usize::from(inp.u8()) % sent.len()].clone();
                    if let Ok(p) = Packet::decode(&d) {
                        let h = p.header;
                        let reply_base = Header {
                            seq_nr: h.ack_nr,
                            ack_nr: h.seq_nr,
                            ..h
                        };
                        let ids = [h.conn_id.wrapping_add(1), h.conn_id];
                        datagram = Some((to, crafted(&mut inp, reply_base, &ids)));
                    }
                }
            }
            4 => {
                let ms = u64::from(inp.u16()) * if inp.u8() % 4 == 0 { 100 } else { 1 };
                now += Duration::from_millis(ms);
                ep.handle_timeout(now);
            }
            5 => {
                let to = addrs[usize::from(inp.u8()) % addrs.len()];
                if let Ok(h) = ep.connect(now, to) {
                    validated.insert(to);
                    handles.push(h);
                }
            }
            6 => {
                if !handles.is_empty() {
                    let h = handles[usize::from(inp.u8()) % handles.len()];
                    match inp.u8() % 5 {
                        0 | 1 => {
                            let n = usize::from(inp.u16());
                            let _ = ep.write(now, h, &vec![0x5A; n]);
                        }
                        2 => {
                            let n = usize::from(inp.u16()).min(buf.len());
                            let _ = ep.read(now, h, &mut buf[..n]);
                        }
                        3 => {
                            let _ = ep.shutdown(now, h);
                        }
                        _ => {
                            if inp.u8() % 2 == 0 {
                                let _ = ep.close(now, h);
                            } else {
                                let _ = ep.abort(now, h);
                            }
                        }
                    }
                }
            }
            _ => {
                if let Some(t) = ep.poll_timeout() {
                    now = now.max(t);
                    ep.handle_timeout(now);
                }
            }
        }
        if let Some((from, d)) = datagram {
            *from_bytes.entry(from).or_default() += d.len() as u64;
            ep.handle_datagram(now, from, &d);
        }
        // Timers due now run now; afterwards none may still be due.
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        while let Some(t) = ep.poll_transmit(now, &mut buf) {
            assert!(t.len <= cfg.max_packet_size, "datagram of {} bytes", t.len);
            assert!(
                Packet::decode(&buf[..t.len]).is_ok(),
                "we send valid packets"
            );
            *to_bytes.entry(t.destination).or_default() += t.len as u64;
            if sent.len() >= 32 {
                sent.remove(0);
            }
            sent.push((t.destination, buf[..t.len].to_vec()));
        }
        while let Some((h, ev)) = ep.poll_event() {
            if ev == Event::Incoming {
                if let Some(r) = ep.remote(h) {
                    validated.insert(r);
                }
                handles.push(h);
            }
        }
        if let Some(t) = ep.poll_timeout() {
            assert!(t > now, "a timer is still due after handle_timeout");
        }
        assert!(ep.connection_count() <= cfg.max_connections);
        assert!(ep.half_open_count() <= cfg.max_half_open);
        for h in &handles {
            if let Some(c) = ep.connection(*h) {
                assert!(c.readable_bytes() <= cfg.recv_buffer_size);
                assert!(c.writable_bytes() <= cfg.send_buffer_size);
                assert!(c.stats().bytes_in_flight as usize <= cfg.send_buffer_size);
            }
        }
        for (addr, to) in &to_bytes {
            if !validated.contains(addr) {
                let from = from_bytes.get(addr).copied().unwrap_or(0);
                assert!(*to <= from, "{to} bytes sent to {addr}, which sent {from}");
            }
        }
        handles.retain(|h| ep.connection(*h).is_some());
    }
}

fn zero_header() -> Header {
    Header {
        ty: PacketType::State,
        conn_id: 0,
        timestamp: Micros(0),
        timestamp_diff: Micros(0),
        wnd_size: 0,
        seq_nr: SeqNr(0),
        ack_nr: SeqNr(0),
    }
}

/// The byte at `offset` of side `side`'s stream.
fn stream_byte(side: usize, offset: usize) -> u8 {
    let x = (offset as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(side as u64 * 0xD1B5_4A32_D192_ED03);
    (x >> 56) as u8 ^ (offset >> 8) as u8
}

/// A connected pair (client 0, server 1) driven by arbitrary operations: writes, reads,
/// shutdowns and closes on either side, time jumps, loss, and crafted packets from the
/// peer's address (any type and fields except DATA on the right connection id, which an
/// in-window forger could use to rewrite the stream). Invariants: no panic; every byte
/// read is the byte the other side wrote at that offset; buffers stay within their
/// sizes; each endpoint holds its connection plus at most `max_half_open` that crafted
/// SYNs opened. When only loss, time and
/// application operations were used, the streams complete once the network heals,
/// unless a side closed or the connection timed out. Returns the bytes each side read.
pub fn connection_program(data: &[u8]) -> [usize; 2] {
    let mut inp = Input::new(data);
    let mut cfg = Config::default();
    cfg.send_buffer_size = 32 * 1024;
    cfg.recv_buffer_size = 32 * 1024;
    cfg.max_reorder_packets = 64;
    let mut net = Net::new();
    net.add("10.0.0.1:5000", cfg.clone(), inp.u8());
    net.add("10.0.0.2:6881", cfg.clone(), inp.u8());
    net.record = true;
    let drop_next = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let d = drop_next.clone();
    net.tamper = Some(Box::new(move |_, _, _| {
        let k = d.get();
        if k > 0 {
            d.set(k - 1);
            false
        } else {
            true
        }
    }));
    let (ha, hb) = net.establish(0, 1);
    let handles = [ha, hb];
    let mut written = [0usize; 2];
    let mut read = [0usize; 2];
    let mut eof = [false; 2];
    let mut shut = [false; 2];
    let mut closed_by_app = [false; 2];
    let mut forged = false;
    let mut buf = vec![0u8; 65_536];
    for _ in 0..2048 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % 8;
        let side = usize::from(inp.u8() % 2);
        let h = handles[side];
        match op {
            0 | 1 => {
                let n = usize::from(inp.u8()) * 64;
                let chunk: Vec<u8> = (written[side]..written[side] + n)
                    .map(|o| stream_byte(side, o))
                    .collect();
                let now = net.now;
                if let Ok(k) = net.ep(side).write(now, h, &chunk) {
                    written[side] += k;
                }
            }
            2 => {
                let n = usize::from(inp.u16()).clamp(1, buf.len());
                read_check(&mut net, side, h, &mut buf[..n], &mut read, &mut eof);
            }
            3 => {
                let ms = u64::from(inp.u16()) * if inp.u8() % 8 == 0 { 100 } else { 1 };
                net.run_for(Duration::from_millis(ms));
            }
            4 => {
                if let Some(t) = net.next_event() {
                    net.run_until(t);
                }
            }
            5 => {
                let other = 1 - side;
                let base = net
                    .trace
                    .iter()
                    .rev()
                    .filter(|(_, f, _, _)| *f == net.addr(other))
                    .find_map(|(_, _, _, d)| Packet::decode(d).ok().map(|p| p.header))
                    .unwrap_or_else(zero_header);
                let recv_id = net.ep(side).connection(h).map(|c| c.recv_id());
                let ids: Vec<u16> = recv_id.into_iter().collect();
                let p = crafted(&mut inp, base, &ids);
                let in_stream = Packet::decode(&p).is_ok_and(|q| {
                    Some(q.header.conn_id) == recv_id
                        && (q.header.ty == PacketType::Data
                            || (q.header.ty == PacketType::Fin && !q.payload.is_empty()))
                });
                if !p.is_empty() && !in_stream {
                    forged = true;
                    let from = net.addr(other);
                    net.inject(from, side, &p);
                }
            }
            6 => {
                let now = net.now;
                if inp.u8() % 3 == 0 {
                    let _ = net.ep(side).close(now, h);
                    closed_by_app[side] = true;
                } else {
                    let _ = net.ep(side).shutdown(now, h);
                    shut[side] = true;
                }
            }
            _ => drop_next.set(u32::from(inp.u8() % 16)),
        }
        net.flush();
        for (i, h) in handles.iter().enumerate() {
            // Ours, plus half-open ones that crafted SYNs opened.
            assert!(net.ep(i).connection_count() <= 1 + cfg.max_half_open);
            if let Some(c) = net.ep(i).connection(*h) {
                assert!(c.readable_bytes() <= cfg.recv_buffer_size);
                assert!(c.stats().bytes_in_flight as usize <= cfg.send_buffer_size);
            }
        }
        if net.trace.len() > 256 {
            net.trace.drain(..200);
        }
    }
    // Heal the network and let it settle, reading as data arrives.
    drop_next.set(0);
    let mut left = 2000;
    while left > 0 {
        left -= 1;
        for (side, &h) in handles.iter().enumerate() {
            read_check(&mut net, side, h, &mut buf, &mut read, &mut eof);
        }
        let settled = (0..2).all(|side| {
            let other = 1 - side;
            (read[side] == written[other] && (eof[side] || !shut[other]))
                || net.closed(side, handles[side]).is_some()
        });
        if settled {
            break;
        }
        match net.next_event() {
            Some(t) if t <= net.now + Duration::from_secs(600) => net.run_until(t),
            _ => break,
        }
    }
    let failed = (0..2).any(|i| matches!(net.closed(i, handles[i]), Some(Some(_))));
    if forged || failed {
        return read;
    }
    for side in 0..2 {
        let other = 1 - side;
        if !closed_by_app[side] && !closed_by_app[other] {
            assert_eq!(
                read[side], written[other],
                "side {side} read {} of the {} bytes written to it",
                read[side], written[other]
            );
            if shut[other] {
                // A connection freed after its `Closed` event reads no EOF any more;
                // `Finished` said it all.
                let finished = net.saw(side, handles[side], Event::Finished);
                let state = net.ep(side).connection(handles[side]).map(|c| c.state());
                assert!(
                    eof[side] || finished,
                    "side {side} did not see the end of the stream: events {:?}, {state:?} at {:?}",
                    net.nodes[side].events,
                    net.now
                );
            }
        }
    }
    read
}

/// Reads what `side` has and checks it against the other side's stream.
fn read_check(
    net: &mut Net,
    side: usize,
    h: ConnectionHandle,
    buf: &mut [u8],
    read: &mut [usize; 2],
    eof: &mut [bool; 2],
) {
    loop {
        let now = net.now;
        match net.ep(side).read(now, h, buf) {
            Ok(0) => {
                eof[side] = true;
                return;
            }
            Ok(n) => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let want = stream_byte(1 - side, read[side] + i);
                    assert_eq!(b, want, "byte {} read by side {side}", read[side] + i);
                }
                read[side] += n;
            }
            Err(_) => return,
        }
    }
}
