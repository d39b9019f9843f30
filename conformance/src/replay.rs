//! Differential replay: one side of a recorded connection is fed into our core, which
//! plays the other side; what ours delivers and acknowledges is compared with what the
//! recorded side did.
//!
//! Of a connection in a capture ([`connections`]), the *peer* is the side whose
//! datagrams are replayed and the *recorded receiver* the side our endpoint replaces
//! ([`Role`] says which one ours plays). The peer's datagrams reach our endpoint at
//! their recorded times (as virtual time), rewritten only where our endpoint's own
//! choices differ from the recorded side's:
//!
//! - as the initiator, ours picks its own connection id and initial sequence number:
//!   the peer's connection ids are mapped to ours (read from our SYN through the public
//!   API, no test hook needed);
//! - ours writes no data, so every `ack_nr` of the peer is set to our last sequence
//!   number, and the peer's selective ACKs (which describe the recorded side's data)
//!   are removed. Every other header field, extension and payload is kept.
//!
//! The recorded receiver's ACKs say which of the peer's packets it received; the
//! peer's packets in the capture give their payload. The report ([`Replay`]) holds the
//! bytes the recorded receiver acknowledged (in order, up to its highest cumulative
//! ACK), the bytes ours delivered, which acknowledged packets ours never acknowledged,
//! and how much later than the recorded receiver ours did. A packet the recorded
//! receiver acknowledged that is missing from the capture (the capture itself lost it)
//! is a *trace gap*: it cannot be replayed, and the comparison stops before it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use utp::proto::ConnectionHandle;
use utp::wire::{encode, Extension, Packet, PacketType, SeqNr};
use utp::{Config, Endpoint, Event, Instant};

use crate::trace::{Capture, Datagram};

/// One connection of a capture that starts with a SYN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedConnection {
    /// The side that sent the SYN.
    pub initiator: SocketAddr,
    /// The other side.
    pub acceptor: SocketAddr,
    /// The SYN's connection id.
    pub syn_id: u16,
    /// Indices into the capture's datagrams of every valid uTP packet of the
    /// connection, in capture order.
    pub datagrams: Vec<usize>,
}

/// The connections of a capture that start with a SYN seen in it, in SYN order.
pub fn connections(capture: &Capture) -> Vec<TracedConnection> {
    let mut out: Vec<TracedConnection> = Vec::new();
    for (i, d) in capture.datagrams.iter().enumerate() {
        let Ok(p) = Packet::decode(&d.payload) else {
            continue;
        };
        let h = &p.header;
        let known = out.iter().position(|c| belongs(c, d, h.ty, h.conn_id));
        match known {
            Some(c) => out[c].datagrams.push(i),
            None if h.ty == PacketType::Syn => out.push(TracedConnection {
                initiator: d.src,
                acceptor: d.dst,
                syn_id: h.conn_id,
                datagrams: vec![i],
            }),
            None => {}
        }
    }
    out
}

fn belongs(c: &TracedConnection, d: &Datagram, ty: PacketType, id: u16) -> bool {
    let reset = ty == PacketType::Reset;
    if d.src == c.initiator && d.dst == c.acceptor {
        if ty == PacketType::Syn {
            id == c.syn_id
        } else {
            id == c.syn_id.wrapping_add(1) || (reset && id == c.syn_id)
        }
    } else if d.src == c.acceptor && d.dst == c.initiator {
        id == c.syn_id || (reset && id == c.syn_id.wrapping_add(1))
    } else {
        false
    }
}

/// The side our endpoint plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Ours takes the acceptor's place; the initiator's datagrams are replayed.
    Acceptor,
    /// Ours takes the initiator's place (it connects at the SYN's time); the
    /// acceptor's datagrams are replayed.
    Initiator,
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// The peer's datagrams fed to ours.
    pub fed: usize,
    /// The packets ours sent.
    pub our_packets: usize,
    /// The peer's data packets in the capture (distinct sequence numbers).
    pub peer_data_packets: usize,
    /// Packets of the peer that the recorded receiver acknowledged (cumulatively or
    /// selectively), FIN included.
    pub recorded_acked: usize,
    /// The peer's stream as far as the recorded receiver acknowledged it cumulatively
    /// (up to the first trace gap).
    pub expected: Vec<u8>,
    /// The peer's whole stream as the capture holds it (up to the first sequence number
    /// missing from the capture).
    pub captured: Vec<u8>,
    /// What ours delivered to its application.
    pub delivered: Vec<u8>,
    /// Sequence numbers the recorded receiver acknowledged that the capture lacks.
    pub trace_gaps: Vec<SeqNr>,
    /// Sequence numbers the recorded receiver acknowledged that ours never did (below
    /// the first trace gap).
    pub not_acked_by_ours: Vec<SeqNr>,
    /// The largest delay of ours' first acknowledgement of a packet after the recorded
    /// receiver's first one (zero when ours was never later).
    pub max_ack_lag: Duration,
    /// The packet of that largest delay.
    pub max_ack_lag_seq: Option<SeqNr>,
    /// Whether ours saw the peer's FIN with everything before it (end of stream).
    pub finished: bool,
    /// Whether the recorded receiver acknowledged the peer's FIN.
    pub recorded_acked_fin: bool,
    /// Whether the connection was established on ours (Connected or Incoming).
    pub established: bool,
    /// How our connection ended, if it did (`Closed` event): `None` for clean.
    pub closed: Option<Option<utp::proto::ConnectionError>>,
}

impl Replay {
    /// What differs between ours and the recorded receiver, in words; empty when ours
    /// delivered and acknowledged everything the recorded receiver did, at most
    /// `slack` later.
    pub fn problems(&self, slack: Duration) -> Vec<String> {
        let mut out = Vec::new();
        if !self.established && self.recorded_acked > 0 {
            out.push("ours never established the connection".to_string());
        }
        if !self.delivered.starts_with(&self.expected) {
            let at = self
                .delivered
                .iter()
                .zip(&self.expected)
                .position(|(a, b)| a != b)
                .unwrap_or(self.delivered.len().min(self.expected.len()));
            out.push(format!(
                "ours delivered {} bytes, the recorded receiver acknowledged {}; first \
                 difference at byte {at}",
                self.delivered.len(),
                self.expected.len()
            ));
        }
        if !self.captured.starts_with(&self.delivered) {
            out.push("ours delivered bytes the peer never sent".to_string());
        }
        if !self.not_acked_by_ours.is_empty() {
            out.push(format!(
                "{} packets acknowledged by the recorded receiver never acknowledged by \
                 ours (first {:?})",
                self.not_acked_by_ours.len(),
                self.not_acked_by_ours.first()
            ));
        }
        if self.max_ack_lag > slack {
            out.push(format!(
                "ours acknowledged {:?} {:?} after the recorded receiver",
                self.max_ack_lag_seq, self.max_ack_lag
            ));
        }
        if self.recorded_acked_fin && self.trace_gaps.is_empty() && !self.finished {
            out.push("the recorded receiver acknowledged the FIN; ours saw no end".into());
        }
        out
    }
}

/// The configuration ours replays with: the default, with idle and handshake timeouts
/// long enough for the pauses of real applications in the captures.
pub fn replay_config() -> Config {
    let mut c = Config::default();
    c.idle_timeout = Duration::from_secs(3600);
    c.handshake_timeout = Duration::from_secs(3600);
    c.keepalive_interval = None;
    c
}

/// Where virtual time starts for a replay.
const START: Instant = Instant::from_millis(10_000);

/// Replays `conn` of `capture` with ours in `role`.
pub fn replay(
    capture: &Capture,
    conn: &TracedConnection,
    role: Role,
    config: Config,
) -> Result<Replay, String> {
    let dgs: Vec<&Datagram> = conn
        .datagrams
        .iter()
        .map(|&i| &capture.datagrams[i])
        .collect();
    let first = dgs.first().ok_or("an empty connection")?;
    let (peer, recorded) = match role {
        Role::Acceptor => (conn.initiator, conn.acceptor),
        Role::Initiator => (conn.acceptor, conn.initiator),
    };
    let peer_pkts: Vec<(&Datagram, Packet<'_>)> = dgs
        .iter()
        .filter(|d| d.src == peer)
        .filter_map(|d| Packet::decode(&d.payload).ok().map(|p| (*d, p)))
        .collect();
    let recorded_pkts: Vec<(&Datagram, Packet<'_>)> = dgs
        .iter()
        .filter(|d| d.src == recorded)
        .filter_map(|d| Packet::decode(&d.payload).ok().map(|p| (*d, p)))
        .collect();

    // The peer's sequence numbers: `base` is the last one before its data.
    let base = match role {
        Role::Acceptor => peer_pkts
            .iter()
            .find(|(_, p)| p.header.ty == PacketType::Syn)
            .map(|(_, p)| p.header.seq_nr),
        Role::Initiator => peer_pkts
            .iter()
            .find(|(_, p)| p.header.ty == PacketType::State)
            .map(|(_, p)| p.header.seq_nr - 1),
    }
    .ok_or("the peer's first packet (SYN or SYN-ACK) is not in the capture")?;
    let off = |s: SeqNr| -> i32 { i32::from((s - base) as i16) };

    // The peer's stream as captured: offset → payload; and its FIN.
    let mut stream: BTreeMap<i32, &[u8]> = BTreeMap::new();
    let mut fin: Option<i32> = None;
    for (_, p) in &peer_pkts {
        if matches!(p.header.ty, PacketType::Data | PacketType::Fin) {
            let o = off(p.header.seq_nr);
            if o >= 1 {
                stream.entry(o).or_insert(p.payload);
            }
            if p.header.ty == PacketType::Fin {
                fin.get_or_insert(o);
            }
        }
    }

    // What the recorded receiver acknowledged, and when it first did.
    let t0 = first.time;
    let mut recorded_first_ack: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut recorded_cum = 0i32;
    for (d, p) in &recorded_pkts {
        if matches!(p.header.ty, PacketType::Syn | PacketType::Reset) {
            continue;
        }
        let at = d.time.saturating_sub(t0);
        let cum = off(p.header.ack_nr);
        if cum > recorded_cum {
            for o in recorded_cum + 1..=cum {
                recorded_first_ack.entry(o).or_insert(at);
            }
            recorded_cum = cum;
        }
        if let Some(s) = p.selective_ack() {
            for seq in s.acked(p.header.ack_nr) {
                let o = off(seq);
                if o >= 1 {
                    recorded_first_ack.entry(o).or_insert(at);
                }
            }
        }
    }

    let mut rep = Replay {
        peer_data_packets: stream.len(),
        recorded_acked: recorded_first_ack.len(),
        recorded_acked_fin: fin.is_some_and(|f| recorded_first_ack.contains_key(&f)),
        ..Replay::default()
    };
    rep.trace_gaps = recorded_first_ack
        .keys()
        .filter(|o| !stream.contains_key(o))
        .map(|&o| base + o as u16)
        .collect();
    let first_gap = recorded_first_ack
        .keys()
        .copied()
        .find(|o| !stream.contains_key(o))
        .unwrap_or(i32::MAX);
    for o in 1..=recorded_cum.min(first_gap - 1) {
        if Some(o) != fin || !stream[&o].is_empty() {
            rep.expected.extend_from_slice(stream[&o]);
        }
    }
    let mut o = 1;
    while let Some(payload) = stream.get(&o) {
        rep.captured.extend_from_slice(payload);
        o += 1;
    }

    // Run ours.
    let mut ep = Endpoint::new(config, [0x5e; 32]).map_err(|e| e.to_string())?;
    let mut now = START;
    let mut handle: Option<ConnectionHandle> = None;
    // Our ids: recv id, and the sequence number every translated ack_nr names.
    let mut our_recv_id: Option<u16> = None;
    let mut our_last_seq: Option<SeqNr> = None;
    let mut our_first_ack: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut our_cum = 0i32;
    let mut buf = vec![0u8; 65_536];
    let mut run = Run {
        ep: &mut ep,
        handle: &mut handle,
        rep: &mut rep,
        our_first_ack: &mut our_first_ack,
        our_cum: &mut our_cum,
        our_recv_id: &mut our_recv_id,
        our_last_seq: &mut our_last_seq,
        base,
        role,
        syn_id: conn.syn_id,
        buf: &mut buf,
    };
    if role == Role::Initiator {
        let h = run
            .ep
            .connect(now, peer)
            .map_err(|e| format!("connect: {e}"))?;
        *run.handle = Some(h);
        *run.our_recv_id = run.ep.connection(h).map(|c| c.recv_id());
        run.flush(now, now - START);
    }
    for (d, p) in &peer_pkts {
        let at = START + d.time.saturating_sub(t0);
        run.advance(&mut now, at);
        let Some(bytes) = run.translate(p) else {
            continue;
        };
        run.ep.handle_datagram(now, peer, &bytes);
        run.rep.fed += 1;
        run.flush(now, now - START);
    }
    // Let delayed ACKs and the like go out.
    let end = now + Duration::from_secs(1);
    run.advance(&mut now, end);

    // Compare the acknowledgements.
    for (&o, &rec_at) in recorded_first_ack.iter().filter(|(o, _)| **o < first_gap) {
        match our_first_ack.get(&o) {
            None => rep.not_acked_by_ours.push(base + o as u16),
            Some(&ours_at) => {
                let lag = ours_at.saturating_sub(rec_at);
                if lag > rep.max_ack_lag {
                    rep.max_ack_lag = lag;
                    rep.max_ack_lag_seq = Some(base + o as u16);
                }
            }
        }
    }
    Ok(rep)
}

/// The state of one replay run, so that its steps can be methods.
struct Run<'a> {
    ep: &'a mut Endpoint,
    handle: &'a mut Option<ConnectionHandle>,
    rep: &'a mut Replay,
    our_first_ack: &'a mut BTreeMap<i32, Duration>,
    our_cum: &'a mut i32,
    our_recv_id: &'a mut Option<u16>,
    our_last_seq: &'a mut Option<SeqNr>,
    base: SeqNr,
    role: Role,
    syn_id: u16,
    buf: &'a mut Vec<u8>,
}

impl Run<'_> {
    /// Runs our timers up to `to`.
    fn advance(&mut self, now: &mut Instant, to: Instant) {
        while let Some(t) = self.ep.poll_timeout() {
            if t > to {
                break;
            }
            *now = (*now).max(t);
            self.ep.handle_timeout(*now);
            self.flush(*now, *now - START);
        }
        *now = (*now).max(to);
    }

    /// Takes what ours sends, its events, and what it delivers.
    fn flush(&mut self, now: Instant, at: Duration) {
        while let Some(t) = self.ep.poll_transmit(now, self.buf) {
            self.rep.our_packets += 1;
            let Ok(p) = Packet::decode(&self.buf[..t.len]) else {
                continue;
            };
            let h = &p.header;
            match h.ty {
                PacketType::Syn => *self.our_last_seq = Some(h.seq_nr),
                PacketType::State if self.our_last_seq.is_none() => {
                    // Our SYN-ACK: its seq_nr is unconsumed (checklist X1).
                    *self.our_last_seq = Some(h.seq_nr - 1);
                }
                _ => {}
            }
            if matches!(h.ty, PacketType::Syn | PacketType::Reset) {
                continue;
            }
            let off = |s: SeqNr| i32::from((s - self.base) as i16);
            let cum = off(h.ack_nr);
            if cum > *self.our_cum {
                for o in *self.our_cum + 1..=cum {
                    self.our_first_ack.entry(o).or_insert(at);
                }
                *self.our_cum = cum;
            }
            if let Some(s) = p.selective_ack() {
                for seq in s.acked(h.ack_nr) {
                    if off(seq) >= 1 {
                        self.our_first_ack.entry(off(seq)).or_insert(at);
                    }
                }
            }
        }
        while let Some((h, e)) = self.ep.poll_event() {
            match e {
                Event::Incoming | Event::Connected => {
                    self.rep.established = true;
                    self.handle.get_or_insert(h);
                }
                Event::Finished => self.rep.finished = true,
                Event::Closed(err) => self.rep.closed = Some(err),
                _ => {}
            }
        }
        if let Some(h) = *self.handle {
            let mut chunk = [0u8; 16_384];
            while let Ok(n) = self.ep.read(now, h, &mut chunk) {
                if n == 0 {
                    break;
                }
                self.rep.delivered.extend_from_slice(&chunk[..n]);
            }
        }
    }

    /// The peer's packet as our endpoint must see it (see the module documentation);
    /// `None` while it cannot be translated yet.
    fn translate(&self, p: &Packet<'_>) -> Option<Vec<u8>> {
        let mut h = p.header;
        if h.ty != PacketType::Syn {
            h.ack_nr = (*self.our_last_seq)?;
        }
        if self.role == Role::Initiator {
            // The acceptor sends on the SYN's id; a RESET may name the other id (X11).
            let ours = (*self.our_recv_id)?;
            h.conn_id = if h.conn_id == self.syn_id.wrapping_add(1) {
                ours.wrapping_add(1)
            } else {
                ours
            };
        }
        let exts: Vec<Extension<'_>> = p
            .extensions()
            .filter(|e| !matches!(e, Extension::SelectiveAck(_)))
            .collect();
        let mut out = vec![0u8; 65_536];
        let n = encode(&h, &exts, p.payload, &mut out).ok()?;
        out.truncate(n);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_a_scripted_exchange_both_ways() {
        // Two of our endpoints make a small exchange; the capture of it is replayed with
        // ours in either role.
        let a_addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b_addr: SocketAddr = "10.0.0.2:2".parse().unwrap();
        let mut a = Endpoint::new(Config::default(), [1; 32]).unwrap();
        let mut b = Endpoint::new(Config::default(), [2; 32]).unwrap();
        let mut now = Instant::from_millis(1000);
        let h = a.connect(now, b_addr).unwrap();
        a.write(now, h, &[7u8; 5000]).unwrap();
        a.shutdown(now, h).unwrap();
        let mut cap = Capture::default();
        let mut buf = vec![0u8; 2000];
        let mut hb = None;
        for _ in 0..200 {
            let mut moved = false;
            while let Some(t) = a.poll_transmit(now, &mut buf) {
                cap.datagrams.push(Datagram {
                    frame: cap.datagrams.len() + 1,
                    time: now - Instant::from_millis(0),
                    src: a_addr,
                    dst: b_addr,
                    payload: buf[..t.len].to_vec(),
                });
                b.handle_datagram(now, a_addr, &buf[..t.len]);
                moved = true;
            }
            while let Some(t) = b.poll_transmit(now, &mut buf) {
                cap.datagrams.push(Datagram {
                    frame: cap.datagrams.len() + 1,
                    time: now - Instant::from_millis(0),
                    src: b_addr,
                    dst: a_addr,
                    payload: buf[..t.len].to_vec(),
                });
                a.handle_datagram(now, b_addr, &buf[..t.len]);
                moved = true;
            }
            while let Some((hh, e)) = b.poll_event() {
                if e == Event::Incoming {
                    hb = Some(hh);
                }
            }
            while a.poll_event().is_some() {}
            if let Some(hb) = hb {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = b.read(now, hb, &mut chunk) {
                    if n == 0 {
                        break;
                    }
                }
            }
            if !moved {
                now += Duration::from_millis(5);
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
        }
        let conns = connections(&cap);
        assert_eq!(conns.len(), 1);
        let r = replay(&cap, &conns[0], Role::Acceptor, replay_config()).unwrap();
        assert_eq!(r.expected, vec![7u8; 5000]);
        assert_eq!(r.delivered, r.expected);
        assert!(r.problems(Duration::from_millis(25)).is_empty(), "{r:?}");
        assert!(r.finished && r.recorded_acked_fin);
        let r = replay(&cap, &conns[0], Role::Initiator, replay_config()).unwrap();
        assert!(r.established);
        assert!(r.expected.is_empty(), "the acceptor sent nothing");
        assert!(r.problems(Duration::from_millis(25)).is_empty(), "{r:?}");
    }
}
