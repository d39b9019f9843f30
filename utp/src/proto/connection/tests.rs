//! Per-state packet-trace tests of the connection state machine.
//!
//! Each test drives one [`Endpoint`] with packets crafted by a scripted peer and
//! checks the packets it answers with, field by field. Sections follow the states and
//! mechanisms; comments name the item of `BEP29-CHECKLIST.md` each test checks.

use core::time::Duration;
use std::net::SocketAddr;

use super::*;
use crate::proto::congestion::CongestionConfig;
use crate::proto::{ConnectionHandle, Endpoint, Event};
use crate::wire::{encode, Extension, Header, Micros, Packet, PacketType, SelectiveAck, SeqNr};

/// A decoded packet we sent, owned.
#[derive(Clone, Debug)]
struct Out {
    h: Header,
    sack: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// One endpoint under test and a scripted peer.
struct Script {
    ep: Endpoint,
    now: Instant,
    peer: SocketAddr,
    events: Vec<(ConnectionHandle, Event)>,
    /// The peer's clock, as it stamps packets.
    peer_clock: u32,
}

impl Script {
    fn new(config: Config) -> Script {
        Script {
            ep: Endpoint::new(config, [7; 32]).unwrap(),
            now: Instant::from_micros(5_000_000),
            peer: "192.0.2.9:4000".parse().unwrap(),
            events: Vec::new(),
            peer_clock: 900_000,
        }
    }

    /// A fixed window of 8 packets, so tests do not depend on LEDBAT.
    fn fixed() -> Script {
        Script::new(Config {
            congestion: CongestionConfig::Fixed(8 * 1380),
            ..Config::default()
        })
    }

    fn recv(&mut self, h: Header, exts: &[Extension<'_>], payload: &[u8]) {
        let mut buf = [0u8; 2048];
        let n = encode(&h, exts, payload, &mut buf).unwrap();
        let (now, peer) = (self.now, self.peer);
        self.ep.handle_datagram(now, peer, &buf[..n]);
        self.collect_events();
    }

    fn sent(&mut self) -> Vec<Out> {
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        while let Some(t) = self.ep.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.destination, self.peer);
            assert!(
                t.len <= self.ep.config().max_packet_size,
                "datagram over max_packet_size"
            );
            let p = Packet::decode(&buf[..t.len]).expect("we send valid packets");
            out.push(Out {
                h: p.header,
                sack: p.selective_ack().map(|s| s.bitmask().to_vec()),
                payload: p.payload.to_vec(),
            });
        }
        self.collect_events();
        out
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.ep.poll_event() {
            self.events.push(e);
        }
    }

    fn has_event(&self, h: ConnectionHandle, e: Event) -> bool {
        self.events.contains(&(h, e))
    }

    /// Advances time by `d`, running timers on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.ep.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.ep.handle_timeout(self.now);
            self.collect_events();
        }
        self.now = end;
        self.ep.handle_timeout(end);
        self.collect_events();
    }

    /// Advances by `d` and returns what was sent along the way, with send times.
    fn advance_collect(&mut self, d: Duration) -> Vec<(Instant, Out)> {
        let end = self.now + d;
        let mut all = Vec::new();
        loop {
            for o in self.sent() {
                all.push((self.now, o));
            }
            match self.ep.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.ep.handle_timeout(self.now);
                    self.collect_events();
                }
                _ => break,
            }
        }
        self.now = end;
        all
    }

    fn header(&mut self, ty: PacketType, conn_id: u16, seq: u16, ack: u16) -> Header {
        self.peer_clock = self.peer_clock.wrapping_add(1000);
        Header {
            ty,
            conn_id,
            timestamp: Micros(self.peer_clock),
            timestamp_diff: Micros(0),
            wnd_size: 1 << 20,
            seq_nr: SeqNr(seq),
            ack_nr: SeqNr(ack),
        }
    }

    /// The handle of the first incoming connection reported.
    fn incoming(&self) -> ConnectionHandle {
        self.events
            .iter()
            .find(|(_, e)| *e == Event::Incoming)
            .expect("incoming")
            .0
    }

    fn conn(&self, h: ConnectionHandle) -> &Connection {
        self.ep.connection(h).expect("connection exists")
    }
}

/// An initiator connected to the scripted peer, whose seq_nr starts at `peer_seq`.
/// Returns (handle, our recv id, our first data seq).
fn connected_initiator(s: &mut Script, isn: u16, recv_id: u16, peer_seq: u16) -> ConnectionHandle {
    let (now, peer) = (s.now, s.peer);
    let h = s.ep.connect_with(now, peer, recv_id, SeqNr(isn));
    let syn = s.sent();
    assert_eq!(syn.len(), 1);
    let ack = s.header(PacketType::State, recv_id, peer_seq, isn);
    s.recv(ack, &[], &[]);
    assert!(s.has_event(h, Event::Connected));
    let proof = s.sent();
    assert_eq!(proof.len(), 1, "an ACK proves we saw the acceptor's seq_nr");
    h
}

/// An acceptor connected to the scripted peer (peer conn id `id`, SYN seq `peer_seq`).
/// Returns (handle, our first seq).
fn connected_acceptor(s: &mut Script, id: u16, peer_seq: u16, isn: u16) -> ConnectionHandle {
    s.ep.isn_override = Some(isn);
    let syn = s.header(PacketType::Syn, id, peer_seq, 0);
    s.recv(syn, &[], &[]);
    let answer = s.sent();
    assert_eq!(answer.len(), 1);
    let st = s.header(
        PacketType::State,
        id.wrapping_add(1),
        peer_seq.wrapping_add(1),
        isn.wrapping_sub(1),
    );
    s.recv(st, &[], &[]);
    s.incoming()
}

// ===== SYN sent ==================================================================

// D24, D25, D26, X2, A9: ids, random ISN, the SYN's fields.
/// Covers: D24, D25, D26, X2, A7, A9, A10, L13
#[test]
fn syn_sent_uses_recv_id_and_random_isn() {
    let mut s = Script::fixed();
    let (now, peer) = (s.now, s.peer);
    let h = s.ep.connect(now, peer).unwrap();
    let c = s.conn(h);
    assert_eq!(c.state(), State::SynSent);
    assert_eq!(c.send_id(), c.recv_id().wrapping_add(1));
    let recv_id = c.recv_id();
    let syn = s.sent();
    assert_eq!(syn.len(), 1);
    let syn = &syn[0].h;
    assert_eq!(syn.ty, PacketType::Syn);
    assert_eq!(syn.conn_id, recv_id, "D25: the SYN carries conn_id_recv");
    assert_eq!(syn.timestamp_diff, Micros(0), "A9: no delay sample yet");
    assert_eq!(syn.timestamp, Micros(s.now.wire_micros()), "A7");
    assert_eq!(syn.wnd_size, 1 << 20, "A10: the whole receive buffer");
    // X2: another endpoint with another seed picks another ISN and id.
    let mut other = Endpoint::new(Config::default(), [8; 32]).unwrap();
    let h2 = other.connect(now, peer).unwrap();
    let mut buf = [0u8; 64];
    let t = other.poll_transmit(now, &mut buf).unwrap();
    let syn2 = Packet::decode(&buf[..t.len]).unwrap().header;
    assert!(
        syn2.seq_nr != syn.seq_nr || syn2.conn_id != syn.conn_id,
        "L13: no global state"
    );
    let _ = h2;
    // X2, BEP 29 text: with `random_initial_seq_nr` off (the `bep29_text` profile) the
    // initiator starts at 1, every time.
    for seed in [1u8, 2, 3] {
        let mut text = Endpoint::new(Config::bep29_text(), [seed; 32]).unwrap();
        text.connect(now, peer).unwrap();
        let t = text.poll_transmit(now, &mut buf).unwrap();
        let syn = Packet::decode(&buf[..t.len]).unwrap().header;
        assert_eq!(syn.seq_nr, SeqNr(1), "BEP 29: seq_nr = 1");
    }
}

// D29 with X1: the initiator takes ack_nr = seq_nr - 1 from the SYN-ACK; later packets
// use conn_id_send (D25, D30); the SYN consumed one seq_nr.
/// Covers: D25, D26, D29, D30, X1, A11
#[test]
fn syn_ack_sets_ack_nr_to_seq_minus_one() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 100, 0x1234, 5000);
    let (now, _) = (s.now, s.peer);
    s.ep.write(now, h, b"hello").unwrap();
    let out = s.sent();
    assert_eq!(out.len(), 1);
    let d = &out[0];
    assert_eq!(d.h.ty, PacketType::Data);
    assert_eq!(d.h.conn_id, 0x1235, "D30: conn_id_send");
    assert_eq!(d.h.seq_nr, SeqNr(101), "the SYN consumed seq 100");
    assert_eq!(d.h.ack_nr, SeqNr(4999), "X1: ack_nr = SYN-ACK seq_nr - 1");
    assert_eq!(d.payload, b"hello");
}

// Refused: a RESET answering our SYN.
/// Covers: C22, L6
#[test]
fn reset_answering_syn_is_refused() {
    let mut s = Script::fixed();
    let (now, peer) = (s.now, s.peer);
    let h = s.ep.connect_with(now, peer, 77, SeqNr(9));
    s.sent();
    // A blind RESET with the wrong ack_nr changes nothing (L6).
    let bad = s.header(PacketType::Reset, 77, 1, 8);
    s.recv(bad, &[], &[]);
    assert_eq!(s.conn(h).state(), State::SynSent);
    let rst = s.header(PacketType::Reset, 77, 1, 9);
    s.recv(rst, &[], &[]);
    assert!(
        s.has_event(h, Event::Closed(Some(ConnectionError::Refused))),
        "L6: refused is reported"
    );
}

// Connect retries with backoff, then a clear time-out.
/// Covers: C23, G47, G48
#[test]
fn syn_retries_back_off_then_time_out() {
    let mut s = Script::fixed();
    let (now, peer) = (s.now, s.peer);
    let start = now;
    let h = s.ep.connect(now, peer).unwrap();
    let sent = s.advance_collect(Duration::from_secs(60));
    let times: Vec<u64> = sent
        .iter()
        .map(|(t, _)| (*t - start).as_millis() as u64)
        .collect();
    assert_eq!(
        times,
        vec![0, 1000, 3000, 7000],
        "1 s, then doubling (G47, G48)"
    );
    // C23: every resend is the same SYN, with the same connection id.
    let first = sent[0].1.h;
    assert!(sent.iter().all(|(_, o)| o.h.ty == PacketType::Syn
        && o.h.seq_nr == first.seq_nr
        && o.h.conn_id == first.conn_id));
    assert!(s.has_event(h, Event::Closed(Some(ConnectionError::TimedOut))));
    assert!(s.ep.connection(h).is_none(), "released");
}

// L4: connection id 0xFFFF wraps to 0 for the send id.
/// Covers: D24, L4
#[test]
fn connection_id_ffff_wraps() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 1, 0xFFFF, 300);
    assert_eq!(s.conn(h).send_id(), 0);
    let now = s.now;
    s.ep.write(now, h, b"x").unwrap();
    assert_eq!(s.sent()[0].h.conn_id, 0);
    // And an acceptor for a SYN with id 0xFFFF receives on 0.
    let mut s = Script::fixed();
    let h = connected_acceptor(&mut s, 0xFFFF, 10, 20);
    assert_eq!(s.conn(h).recv_id(), 0);
    assert_eq!(s.conn(h).send_id(), 0xFFFF);
}

// ===== SYN received ==============================================================

// D27, D28, X1: the acceptor answers with a STATE carrying its unconsumed seq_nr, and
// stays silent until the initiator proves it got the answer (X10).
/// Covers: D27, D28, D30, X1, X10, L2, A8
#[test]
fn syn_received_answers_once_and_waits_for_proof() {
    let mut s = Script::fixed();
    s.ep.isn_override = Some(40_000);
    let syn = s.header(PacketType::Syn, 0x0100, 777, 0);
    s.recv(syn, &[], &[]);
    let out = s.sent();
    assert_eq!(out.len(), 1);
    let a = &out[0].h;
    assert_eq!(a.ty, PacketType::State);
    assert_eq!(a.conn_id, 0x0100, "D28: conn_id = send_conn_id = SYN's id");
    assert_eq!(a.ack_nr, SeqNr(777), "D27: ack_nr = SYN seq_nr");
    assert_eq!(a.seq_nr, SeqNr(40_000), "X1: unconsumed seq_nr");
    assert_ne!(
        a.timestamp_diff,
        Micros(0),
        "A8: a delay sample from the SYN"
    );
    assert_eq!(s.ep.half_open_count(), 1);
    assert!(
        s.events.iter().all(|(_, e)| *e != Event::Incoming),
        "not accepted before proof"
    );
    // X10: no repeated SYN-ACK on a timer...
    let later = s.advance_collect(Duration::from_millis(2900));
    assert!(later.is_empty(), "no retransmitted SYN-ACK: {later:?}");
    // ...but L2: a resent SYN (our answer was lost) is answered again.
    let syn = s.header(PacketType::Syn, 0x0100, 777, 0);
    s.recv(syn, &[], &[]);
    let again = s.sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].h.seq_nr, SeqNr(40_000));
    // D30: the first DATA acking seq_nr - 1 completes the handshake.
    let data = s.header(PacketType::Data, 0x0101, 778, 39_999);
    s.recv(data, &[], b"first");
    let h = s.incoming();
    assert_eq!(s.conn(h).state(), State::Connected);
    assert_eq!(s.ep.half_open_count(), 0);
    let mut buf = [0u8; 16];
    let now = s.now;
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(5));
    // The acceptor's first DATA reuses the seq_nr its SYN-ACK carried (X1).
    s.ep.write(now, h, b"reply").unwrap();
    let out = s.sent();
    let d = out.iter().find(|o| o.h.ty == PacketType::Data).unwrap();
    assert_eq!(d.h.seq_nr, SeqNr(40_000));
    assert_eq!(d.h.ack_nr, SeqNr(778), "D30: ack_nr = DATA seq_nr");
}

// X10: a packet that does not ack our seq_nr does not complete the handshake.
/// Covers: X10
#[test]
fn syn_received_ignores_unproven_packets() {
    let mut s = Script::fixed();
    s.ep.isn_override = Some(500);
    let syn = s.header(PacketType::Syn, 9, 1, 0);
    s.recv(syn, &[], &[]);
    s.sent();
    let spoof = s.header(PacketType::Data, 10, 2, 1234);
    s.recv(spoof, &[], b"spoofed");
    assert!(s.events.iter().all(|(_, e)| *e != Event::Incoming));
    assert!(
        s.sent().is_empty(),
        "no data or answers to an unvalidated peer"
    );
}

// L3: half-open connections time out.
/// Covers: L3
#[test]
fn half_open_expires() {
    let mut s = Script::fixed();
    let syn = s.header(PacketType::Syn, 9, 1, 0);
    s.recv(syn, &[], &[]);
    s.sent();
    assert_eq!(s.ep.connection_count(), 1);
    s.advance(Duration::from_secs(9));
    assert_eq!(
        s.ep.connection_count(),
        1,
        "room for the initiator's resent proof"
    );
    s.advance(Duration::from_secs(2));
    assert_eq!(s.ep.connection_count(), 0);
    assert_eq!(s.ep.half_open_count(), 0);
    assert_eq!(s.ep.stats().half_open_expired, 1);
}

// Half-open limit: a SYN beyond it evicts the oldest half-open connection (silently:
// no reply goes to the evicted one, so a flood gets nothing extra); a full connection
// table refuses with a RESET.
/// Covers: L3, X10
#[test]
fn half_open_and_connection_limits() {
    let mut s = Script::new(Config {
        max_half_open: 2,
        max_connections: 3,
        ..Config::default()
    });
    for id in [10u16, 20, 30] {
        let syn = s.header(PacketType::Syn, id, 1, 0);
        s.recv(syn, &[], &[]);
    }
    assert_eq!(s.ep.half_open_count(), 2);
    assert_eq!(
        s.ep.connection_count(),
        2,
        "the table stays within the limit"
    );
    let out = s.sent();
    assert_eq!(out.len(), 2, "one SYN-ACK each for the two that remain");
    assert!(out.iter().all(|o| o.h.ty == PacketType::State));
    let mut ids: Vec<u16> = out.iter().map(|o| o.h.conn_id).collect();
    ids.sort();
    assert_eq!(ids, [20, 30], "the oldest (10) was evicted");
    assert_eq!(s.ep.stats().half_open_evicted, 1);
    // The evicted initiator's proof now finds nothing (answered by a RESET).
    let stale = s.header(PacketType::Data, 11, 2, 0);
    s.recv(stale, &[], b"x");
    assert_eq!(s.sent()[0].h.ty, PacketType::Reset);
    // Complete both handshakes, so the half-open slots free; then fill the table.
    for answer in &out {
        let id = answer.h.conn_id + 1;
        let proof = s.header(PacketType::Data, id, 2, answer.h.seq_nr.0.wrapping_sub(1));
        s.recv(proof, &[], b"x");
    }
    assert_eq!(s.ep.half_open_count(), 0);
    let syn = s.header(PacketType::Syn, 40, 1, 0);
    s.recv(syn, &[], &[]);
    assert_eq!(s.ep.connection_count(), 3);
    s.sent();
    let syn = s.header(PacketType::Syn, 50, 7, 0);
    s.recv(syn, &[], &[]);
    let out = s.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].h.ty, PacketType::Reset, "table full: refused");
    assert_eq!(out[0].h.conn_id, 50);
    assert_eq!(out[0].h.ack_nr, SeqNr(7));
}

// A peer that starts a new connection with the ids of one that is over on our side
// (lingering, nothing left to read) gets it: the old one is replaced, where D32 would
// ignore the SYN and the peer's connect would time out.
/// Covers: D32
#[test]
fn syn_reusing_the_ids_of_a_finished_connection_replaces_it() {
    let mut s = Script::fixed();
    let h = connected_acceptor(&mut s, 9, 1, 100);
    let now = s.now;
    s.ep.close(now, h).unwrap();
    let fin = s.sent();
    assert_eq!(fin.last().unwrap().h.ty, PacketType::Fin);
    // The peer acknowledges our FIN and sends its own: we linger.
    let ack = s.header(PacketType::State, 10, 2, 100);
    s.recv(ack, &[], &[]);
    let peer_fin = s.header(PacketType::Fin, 10, 2, 100);
    s.recv(peer_fin, &[], &[]);
    s.sent();
    assert_eq!(s.conn(h).state(), State::Linger);
    // A new SYN with the same id and another seq_nr: answered.
    let syn = s.header(PacketType::Syn, 9, 700, 0);
    s.recv(syn, &[], &[]);
    let out = s.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].h.ty, PacketType::State);
    assert_eq!(out[0].h.ack_nr, SeqNr(700));
    assert_eq!(s.ep.stats().connections_replaced, 1);
    assert!(s.ep.connection(h).is_none(), "the old connection is gone");
}

// D32: a SYN whose ids collide with an existing connection is ignored.
/// Covers: D32, L4
#[test]
fn colliding_syn_is_ignored() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 1, 500, 300);
    // The peer's SYN id 500 would make our recv id 501, which is our send id.
    let syn = s.header(PacketType::Syn, 500, 9, 0);
    s.recv(syn, &[], &[]);
    assert!(s.sent().is_empty());
    assert_eq!(s.ep.connection_count(), 1);
    assert_eq!(s.ep.stats().syns_rejected, 1);
    assert_eq!(s.conn(h).state(), State::Connected);
}

// D32 in the soak: the peer finished, we sent our FIN, and every ACK of the peer was
// lost until it stopped lingering and forgot the connection. Its next connection picks
// the same id: that SYN (another seq_nr) must open a new connection, not vanish into
// the old one, which ends (cleanly if only our FIN was unacknowledged, with `Reset` if
// data was). Before our FIN is out, the same SYN is ignored (D32).
/// Covers: D32, X3
#[test]
fn syn_with_the_ids_of_a_connection_the_peer_forgot_replaces_it() {
    for data_unacked in [false, true] {
        let mut s = Script::fixed();
        let h = connected_acceptor(&mut s, 77, 100, 5000);
        let fin = s.header(PacketType::Fin, 78, 101, 4999);
        s.recv(fin, &[], &[]);
        assert!(s.has_event(h, Event::Finished));
        let now = s.now;
        let mut buf = [0u8; 8];
        assert_eq!(s.ep.read(now, h, &mut buf), Ok(0));
        // Still sending: a new SYN with the same id is a collision and is ignored.
        s.ep.write(now, h, b"abc").unwrap();
        let sent = s.sent();
        assert!(sent.iter().any(|o| o.h.ty == PacketType::Data));
        let early = s.header(PacketType::Syn, 77, 900, 0);
        s.recv(early, &[], &[]);
        assert!(
            s.sent().is_empty(),
            "ignored while our data is still going out"
        );
        assert!(!s
            .events
            .iter()
            .any(|(hh, e)| *hh == h && matches!(e, Event::Closed(_))));
        if !data_unacked {
            let ack = s.header(PacketType::State, 78, 102, 5000);
            s.recv(ack, &[], &[]);
        }
        let now = s.now;
        s.ep.shutdown(now, h).unwrap();
        assert!(s.sent().iter().any(|o| o.h.ty == PacketType::Fin));
        // The peer has forgotten us and connects again with the same id.
        s.ep.isn_override = Some(7000);
        let syn = s.header(PacketType::Syn, 77, 900, 0);
        s.recv(syn, &[], &[]);
        let out = s.sent();
        assert!(
            out.iter()
                .any(|o| o.h.ty == PacketType::State && o.h.ack_nr == SeqNr(900)),
            "the new SYN is answered: {out:?}"
        );
        let want = if data_unacked {
            Event::Closed(Some(ConnectionError::Reset))
        } else {
            Event::Closed(None)
        };
        assert!(s.has_event(h, want), "{:?}", s.events);
        assert_eq!(s.ep.stats().connections_replaced, 1);
    }
}

// D32, L4 across the wrap: our connection has recv id 0xFFFF and send id 0x0000. A
// SYN with id 0xFFFF (which would give a connection recv id 0x0000, send id 0xFFFF) and
// one with id 0xFFFE (recv id 0xFFFF) both collide and are ignored; id 0x0001 (recv id
// 0x0002, send id 0x0001) does not and is accepted.
/// Covers: D32, L4
#[test]
fn colliding_syn_across_the_id_wrap_is_ignored() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 1, 0xFFFF, 300);
    assert_eq!(s.conn(h).recv_id(), 0xFFFF);
    for id in [0xFFFFu16, 0xFFFE] {
        let syn = s.header(PacketType::Syn, id, 9, 0);
        s.recv(syn, &[], &[]);
        assert!(s.sent().is_empty(), "SYN id {id:#x} collides");
    }
    assert_eq!(s.ep.connection_count(), 1);
    let syn = s.header(PacketType::Syn, 0x0001, 9, 0);
    s.recv(syn, &[], &[]);
    let out = s.sent();
    assert_eq!(out.len(), 1, "a SYN next to the wrap that does not collide");
    assert_eq!(out[0].h.conn_id, 0x0001);
    assert_eq!(s.ep.connection_count(), 2);
    assert_eq!(s.conn(h).state(), State::Connected);
}

// I51, I52 through the connection: each ACK's timestamp_difference is a delay sample;
// base_delay is their minimum over the history (two one-minute buckets: the BEP's two
// minutes) and the queuing delay is the current sample minus the base.
/// Covers: I51, I52
#[test]
fn ack_delay_samples_set_base_and_queuing_delay() {
    use crate::proto::congestion::LedbatConfig;
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Ledbat(LedbatConfig {
            base_history: 2,
            base_bucket: Duration::from_secs(60),
            ..LedbatConfig::default()
        }),
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 10, 1, 100);
    let mut seq = 10u16;
    let mut sample = |s: &mut Script, tsd: u32| {
        let now = s.now;
        s.ep.write(now, h, &[7u8; 1380]).unwrap();
        assert_eq!(s.sent().len(), 1);
        seq = seq.wrapping_add(1);
        // A 50 ms round trip: the queuing delay is capped at the RTT (libutp).
        s.advance(Duration::from_millis(50));
        let mut ack = s.header(PacketType::State, 1, 100, seq);
        ack.timestamp_diff = Micros(tsd);
        s.recv(ack, &[], &[]);
        let c = s.conn(h);
        (c.congestion().base_delay(), c.stats().queuing_delay)
    };
    assert_eq!(sample(&mut s, 50_000), (Some(50_000), Duration::ZERO));
    assert_eq!(sample(&mut s, 40_000), (Some(40_000), Duration::ZERO));
    // Let the low samples leave the current-delay filter (older than one RTT).
    s.advance(Duration::from_millis(200));
    assert_eq!(
        sample(&mut s, 65_000),
        (Some(40_000), Duration::from_millis(25)),
        "our_delay = sample - base_delay"
    );
    // Samples of 70 ms every 10 s: the 40 ms minimum stays while its bucket is in the
    // history and is gone once two newer buckets have filled.
    let mut bases = Vec::new();
    for _ in 0..18 {
        s.advance(Duration::from_secs(10));
        bases.push(sample(&mut s, 70_000).0);
    }
    assert_eq!(bases[0], Some(40_000), "within the history");
    assert_eq!(
        bases[17],
        Some(70_000),
        "the old minimum has expired: {bases:?}"
    );
    assert_eq!(s.conn(h).stats().queuing_delay, Duration::ZERO);
    assert_eq!(s.conn(h).stats().delay_samples, 21);
}

// H49 with `adaptive_packet_size` (the BEP text): a new packet carries an eighth of the
// window, 130 to 1380 bytes of payload; without it every packet is full size.
/// Covers: H49
#[test]
fn adaptive_packet_size_follows_the_window() {
    for (window, adaptive, want) in [
        (800, true, 130),
        (1_200, true, 150),
        (8_000, true, 1_000),
        (100_000, true, 1_380),
        (8_000, false, 1_380),
    ] {
        let mut s = Script::new(Config {
            congestion: CongestionConfig::Fixed(window),
            adaptive_packet_size: adaptive,
            ..Config::default()
        });
        let h = connected_initiator(&mut s, 10, 1, 100);
        let now = s.now;
        s.ep.write(now, h, &[1u8; 20 * 1380]).unwrap();
        let out = s.sent();
        assert!(!out.is_empty());
        assert!(
            out.iter().all(|o| o.payload.len() == want),
            "window {window}, adaptive {adaptive}: {:?}",
            out.iter().map(|o| o.payload.len()).collect::<Vec<_>>()
        );
    }
}

// G42 with Karn's rule: one ACK that covers packets sent at different times gives one
// RTT sample, from the most recent of them. Here the ACKs of four packets sent 400 ms
// earlier were lost; counting them as 410 ms round trips would pull the smoothed RTT
// (and the RTO) up, so far that a peer's linger could run out before our next resend.
/// Covers: G42
#[test]
fn one_ack_gives_one_rtt_sample_from_its_newest_packet() {
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Fixed(8 * 1380),
        tail_loss_probe: false,
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 10, 1, 100);
    let before = s.conn(h).stats().rtt;
    let now = s.now;
    s.ep.write(now, h, &[1u8; 4 * 1380]).unwrap();
    assert_eq!(s.sent().len(), 4);
    s.advance(Duration::from_millis(400));
    let now = s.now;
    s.ep.write(now, h, &[2u8; 4 * 1380]).unwrap();
    assert_eq!(s.sent().len(), 4);
    s.advance(Duration::from_millis(10));
    let ack = s.header(PacketType::State, 1, 100, 18);
    s.recv(ack, &[], &[]);
    let rtt = s.conn(h).stats().rtt;
    assert!(
        rtt <= before.max(Duration::from_millis(10)),
        "smoothed RTT {rtt:?} (was {before:?}): only the 10 ms sample counts"
    );
}

// ===== Connected: sending ==========================================================

// C19, C20, E33, E36: data packets carry payload, STATEs do not consume a seq_nr, the
// window caps packets in flight, and a resend repeats seq_nr and payload exactly.
/// Covers: C19, C20, E33, E36, A11
#[test]
fn window_limits_flight_and_resends_are_identical() {
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Fixed(3 * 1380),
        tail_loss_probe: false,
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    assert_eq!(s.ep.write(now, h, &data), Ok(10_000));
    let out = s.sent();
    assert_eq!(out.len(), 3, "E33: three full packets fit the window");
    assert!(out
        .iter()
        .all(|o| o.h.ty == PacketType::Data && o.payload.len() == 1380));
    assert_eq!(out[0].h.seq_nr, SeqNr(11));
    // The RTO fires: everything in flight is resent, identical (the fixed window
    // does not shrink; LEDBAT's does, see `timeout_lets_one_packet_out`).
    let resent = s.advance_collect(Duration::from_millis(1000));
    assert_eq!(resent.len(), 3);
    for (i, (_, r)) in resent.iter().enumerate() {
        assert_eq!(r.h.seq_nr, out[i].h.seq_nr);
        assert_eq!(r.payload, out[i].payload, "E36: never repackaged");
    }
    assert_eq!(s.conn(h).stats().retransmits_timeout, 3);
    // A STATE does not consume a seq_nr: after acking everything, the next data is 14.
    let ack = s.header(PacketType::State, 1, 100, 13);
    s.recv(ack, &[], &[]);
    let next = s.sent();
    assert_eq!(next[0].h.seq_nr, SeqNr(14));
}

// Tail loss probe (RFC 8985): the last packets of a burst are lost, so no duplicate
// ACK comes; after about two RTTs the newest packet is resent once, and the selective
// ACK it draws starts fast retransmit of the hole, long before the 500 ms RTO.
#[test]
fn tail_loss_probe_repairs_a_lost_tail_before_the_timeout() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    // An RTT sample of 10 ms.
    let now = s.now;
    s.ep.write(now, h, &[1u8; 1380]).unwrap();
    assert_eq!(s.sent().len(), 1);
    s.advance(Duration::from_millis(10));
    let ack = s.header(PacketType::State, 1, 100, 11);
    s.recv(ack, &[], &[]);
    // Four packets; 12 and 13 arrive, 14 and 15 are lost.
    let now = s.now;
    s.ep.write(now, h, &[2u8; 4 * 1380]).unwrap();
    let out = s.sent();
    assert_eq!(out.len(), 4);
    s.advance(Duration::from_millis(10));
    let ack = s.header(PacketType::State, 1, 100, 13);
    s.recv(ack, &[], &[]);
    assert!(s.sent().is_empty());
    // About 2 × SRTT + delayed ACK later, the probe: the newest packet, 15.
    let probe = s.advance_collect(Duration::from_millis(100));
    assert_eq!(probe.len(), 1, "one probe");
    assert_eq!(probe[0].1.h.seq_nr, SeqNr(15));
    assert!(
        probe[0].0 - now < Duration::from_millis(80),
        "well before the RTO"
    );
    assert_eq!(s.conn(h).stats().retransmits_probe, 1);
    // The peer got 15: its ACK selectively acknowledges it, and 14, the hole, is
    // resent long before the RTO (without the probe no ACK would ever come until it).
    let mut sack = [0u8; 4];
    sack[0] = 0b1; // ack_nr 13 + 2 = 15
    let ack = s.header(PacketType::State, 1, 100, 13);
    s.recv(
        ack,
        &[Extension::SelectiveAck(SelectiveAck::new(&sack))],
        &[],
    );
    let resent = s.advance_collect(Duration::from_millis(200));
    assert!(
        resent
            .iter()
            .any(|(t, o)| o.h.seq_nr == SeqNr(14) && *t - now < Duration::from_millis(400)),
        "14 resent before the RTO: {resent:?}"
    );
    assert_eq!(s.conn(h).stats().timeouts, 0);
}

// G46: after a timeout LEDBAT's window is one packet: one packet goes out.
/// Covers: G46, I54
#[test]
fn timeout_lets_one_packet_out() {
    let mut s = Script::new(Config {
        // The retransmission timer alone (the tail loss probe has its own test).
        tail_loss_probe: false,
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    s.ep.write(now, h, &[1u8; 20_000]).unwrap();
    let out = s.sent();
    assert_eq!(out.len(), 2, "LEDBAT's initial window: two packets");
    let resent = s.advance_collect(Duration::from_millis(1000));
    assert_eq!(resent.len(), 1, "one packet after the timeout");
    assert_eq!(resent[0].1.h.seq_nr, SeqNr(11));
    assert_eq!(s.conn(h).stats().congestion_window, 1380);
}

// G46 with retransmission order: a packet lost again after a timeout is still resent
// before the later ones (found by libutp interop:
// `a_packet_lost_again_after_a_timeout_is_resent_first`).
#[test]
fn resends_go_oldest_first_after_repeated_timeouts() {
    let mut s = Script::new(Config {
        // The retransmission timer alone (the tail loss probe has its own test).
        tail_loss_probe: false,
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    s.ep.write(now, h, &[7u8; 4 * 1380]).unwrap();
    assert_eq!(s.sent().len(), 2, "LEDBAT's initial window: two packets");
    // First timeout: seq 11 is resent, and lost again.
    let first = s.advance_collect(Duration::from_millis(1000));
    assert_eq!(first.len(), 1, "one packet after the timeout");
    assert_eq!(first[0].1.h.seq_nr, SeqNr(11));
    // Second timeout: 11 must come first again, before 12 still queued.
    let second = s.advance_collect(Duration::from_millis(2000));
    assert!(!second.is_empty());
    assert_eq!(second[0].1.h.seq_nr, SeqNr(11), "the oldest hole first");
    assert!(s
        .conn(h)
        .resend_causes
        .iter()
        .zip(s.conn(h).resend_causes.iter().skip(1))
        .all(|(a, b)| a.0.is_before(b.0)));
}

// E34, G46, L10: a window smaller than one packet still lets one packet out when
// nothing is in flight.
/// Covers: E34, G46, L10
#[test]
fn tiny_window_never_stalls() {
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Fixed(10),
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    s.ep.write(now, h, &[1u8; 5000]).unwrap();
    let out = s.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload.len(), 1380);
    let ack = s.header(PacketType::State, 1, 100, 11);
    s.recv(ack, &[], &[]);
    assert_eq!(
        s.sent().len(),
        1,
        "the next one goes when the first is acked"
    );
}

// Coalescing: many small writes in one tick become full packets.
#[test]
fn small_writes_coalesce() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    for _ in 0..2000 {
        s.ep.write(now, h, b"0123456789").unwrap();
    }
    let out = s.sent();
    let sizes: Vec<usize> = out.iter().map(|o| o.payload.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 8 * 1380, "window of 8 packets");
    assert!(sizes.iter().all(|&n| n == 1380), "{sizes:?}");
}

// F38, X8: three duplicate ACKs resend the next packet; a duplicate ACK with nothing in
// flight is not counted. L1: across the whole 16-bit ISN space.
/// Covers: F38, X8, L1, L9
#[test]
fn three_dup_acks_fast_retransmit_for_every_isn() {
    let mut isns: Vec<u16> = (0..=u16::MAX).step_by(251).collect();
    isns.extend([0, 1, 2, 0x7FFF, 0x8000, 0xFFFD, 0xFFFE, 0xFFFF]);
    for isn in isns {
        let mut s = Script::fixed();
        let h = connected_initiator(&mut s, isn, 10, 100);
        let first = isn.wrapping_add(1);
        // Keep-alive style duplicate with nothing in flight: not a dup ACK (X8).
        let ka = s.header(PacketType::State, 10, 100, isn);
        s.recv(ka, &[], &[]);
        assert_eq!(s.conn(h).stats().dup_acks_received, 0);
        let now = s.now;
        s.ep.write(now, h, &[7u8; 1380 * 6]).unwrap();
        assert_eq!(s.sent().len(), 6);
        // The first packet is lost; the peer acks the one before it three times.
        for _ in 0..3 {
            let dup = s.header(PacketType::State, 10, 100, isn);
            s.recv(dup, &[], &[]);
        }
        let out = s.sent();
        assert_eq!(out.len(), 1, "isn {isn}: one fast retransmit");
        assert_eq!(out[0].h.seq_nr, SeqNr(first), "isn {isn}");
        assert_eq!(s.conn(h).stats().retransmits_dup_ack, 1);
    }
}

// F37, F39, B18: selective ACK of three later packets resends the hole; bits beyond the
// send window are ignored. L9: a bitmask longer than 32 bits is used.
/// Covers: F37, F39, B15, B18, L9
#[test]
fn sack_triggers_retransmit_and_long_masks_work() {
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Fixed(64 * 1380),
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 1000, 10, 100);
    let now = s.now;
    s.ep.write(now, h, &vec![3u8; 1380 * 50]).unwrap();
    assert_eq!(s.sent().len(), 50);
    // Packets 1001..=1050 sent. The peer got 1001, lost 1002, and has 1003..=1050:
    // ack_nr = 1001, bit k stands for 1003 + k. 8 bytes = 64 bits, beyond 48 unsent.
    let mut mask = [0u8; 8];
    for k in 0..64 {
        mask[k / 8] |= 1 << (k % 8);
    }
    let ack = s.header(PacketType::State, 10, 100, 1001);
    s.recv(
        ack,
        &[Extension::SelectiveAck(SelectiveAck::new(&mask))],
        &[],
    );
    let out = s.sent();
    assert_eq!(out.len(), 1, "only the hole is resent: {out:?}");
    assert_eq!(out[0].h.seq_nr, SeqNr(1002));
    let st = s.conn(h).stats();
    assert_eq!(st.retransmits_sack, 1);
    assert_eq!(st.sacks_received, 1);
    assert_eq!(
        st.bytes_in_flight, 1380,
        "only the resent packet is in flight"
    );
}

// X10: an ACK of data never sent is dropped, and so is one far behind.
/// Covers: X10, E35
#[test]
fn ack_outside_window_is_dropped() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 1000, 10, 100);
    let now = s.now;
    s.ep.write(now, h, &[1u8; 1380 * 2]).unwrap();
    s.sent();
    let ahead = s.header(PacketType::State, 10, 100, 1010);
    s.recv(ahead, &[], &[]);
    let behind = s.header(PacketType::State, 10, 100, 900);
    s.recv(behind, &[], &[]);
    let st = s.conn(h).stats();
    assert_eq!(st.packets_dropped, 2);
    assert_eq!(st.bytes_in_flight, 2760, "nothing was acknowledged");
}

// G41, G42: RTT samples come only from packets sent once (Karn).
/// Covers: G41, G42
#[test]
fn karn_rule() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 1, 10, 100);
    let now = s.now;
    s.ep.write(now, h, b"a").unwrap();
    s.sent();
    s.advance(Duration::from_millis(300));
    let ack = s.header(PacketType::State, 10, 100, 2);
    s.recv(ack, &[], &[]);
    let rtt = s.conn(h).stats().rtt;
    assert!(rtt > Duration::ZERO);
    let now = s.now;
    s.ep.write(now, h, b"b").unwrap();
    s.sent();
    // Lost; the timer resends (RTO 500 ms); then the ACK arrives: no sample.
    s.advance_collect(Duration::from_millis(700));
    assert_eq!(s.conn(h).stats().retransmits_timeout, 1);
    s.advance(Duration::from_millis(100));
    let ack = s.header(PacketType::State, 10, 100, 3);
    s.recv(ack, &[], &[]);
    assert_eq!(s.conn(h).stats().rtt, rtt, "no sample from a resent packet");
}

// G45, G47, G48, give-up limit: consecutive timeouts double and end in TimedOut.
/// Covers: G44, G45, G48, L9, X4
#[test]
fn retransmission_timeouts_back_off_and_give_up() {
    let mut s = Script::new(Config {
        max_retransmits: 3,
        congestion: CongestionConfig::Fixed(20_000),
        tail_loss_probe: false,
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 1, 10, 100);
    let now = s.now;
    let start = now;
    s.ep.write(now, h, b"lost forever").unwrap();
    let sent = s.advance_collect(Duration::from_secs(120));
    let data: Vec<u64> = sent
        .iter()
        .filter(|(_, o)| o.h.ty == PacketType::Data)
        .map(|(t, _)| (*t - start).as_millis() as u64)
        .collect();
    // The first RTO comes from the handshake's RTT sample (0 ms here): 500 ms floor.
    assert_eq!(data, vec![0, 500, 1500, 3500]);
    assert!(s.has_event(h, Event::Closed(Some(ConnectionError::TimedOut))));
}

// ===== Connected: receiving ========================================================

// Delayed ACK: one full packet waits at most `delayed_ack`; a second one is acked at
// once (L11: without any application call).
/// Covers: A10, A11, B17, L11
#[test]
fn delayed_ack_and_every_second_packet() {
    let mut s = Script::fixed();
    let h = connected_acceptor(&mut s, 10, 100, 5000);
    let d1 = s.header(PacketType::Data, 11, 101, 4999);
    s.recv(d1, &[], &[1u8; 1380]);
    let t0 = s.now;
    assert!(s.sent().is_empty(), "delayed");
    let acks = s.advance_collect(Duration::from_millis(25));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].1.h.ty, PacketType::State);
    assert_eq!(acks[0].1.h.ack_nr, SeqNr(101));
    assert!(
        acks[0].1.sack.is_none(),
        "B17: no selective ACK without a gap"
    );
    assert_eq!(
        acks[0].1.h.wnd_size,
        (1 << 20) - 1380,
        "A10: window shrinks with unread data"
    );
    assert_eq!(acks[0].0 - t0, Duration::from_millis(20));
    for seq in [102, 103] {
        let d = s.header(PacketType::Data, 11, seq, 4999);
        s.recv(d, &[], &[1u8; 1380]);
    }
    let out = s.sent();
    assert_eq!(out.len(), 1, "every second packet is acked at once");
    assert_eq!(out[0].h.ack_nr, SeqNr(103));
    let _ = h;
}

// B16, B17: out-of-order data is acked at once with a selective ACK; none without a gap.
/// Covers: B15, B16, B17
#[test]
fn out_of_order_data_gets_selective_ack() {
    let mut s = Script::fixed();
    let h = connected_acceptor(&mut s, 10, 100, 5000);
    // Expected 101; 103 and 140 arrive.
    for seq in [103u16, 140] {
        let d = s.header(PacketType::Data, 11, seq, 4999);
        s.recv(d, &[], b"x");
    }
    let out = s.sent();
    assert!(!out.is_empty());
    let last = out.last().unwrap();
    assert_eq!(last.h.ack_nr, SeqNr(100));
    let mask = last.sack.as_ref().expect("a selective ACK");
    assert_eq!(mask.len() % 4, 0, "a multiple of 4 bytes");
    assert_eq!(mask.len(), 8, "sized to the reorder span (40 packets)");
    let sack = SelectiveAck::new(mask);
    let acked: Vec<u16> = sack.acked(SeqNr(100)).map(|n| n.0).collect();
    assert_eq!(acked, vec![103, 140]);
    // Filling the gaps: 101 then 102 deliver 101..=103 in order; 140 still waits.
    for seq in [101u16, 102] {
        let d = s.header(PacketType::Data, 11, seq, 4999);
        s.recv(d, &[], b"y");
    }
    let mut buf = [0u8; 16];
    let now = s.now;
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(3));
    assert_eq!(&buf[..3], b"yyx");
    let out = s.sent();
    assert_eq!(out.last().unwrap().h.ack_nr, SeqNr(103));
    assert!(out.last().unwrap().sack.is_some(), "140 still beyond a gap");
}

// Duplicate data is acked again at once (our ACK was lost).
/// Covers: A11
#[test]
fn duplicate_data_is_reacked() {
    let mut s = Script::fixed();
    let h = connected_acceptor(&mut s, 10, 100, 5000);
    let d = s.header(PacketType::Data, 11, 101, 4999);
    s.recv(d, &[], b"abc");
    s.recv(d, &[], b"abc");
    let out = s.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].h.ack_nr, SeqNr(101));
    assert_eq!(s.conn(h).stats().duplicate_packets_received, 1);
    assert_eq!(s.conn(h).readable_bytes(), 3, "delivered once");
}

// Receive buffer bound: data beyond the window is dropped, and reading reopens it.
/// Covers: A10
#[test]
fn receive_buffer_is_bounded_and_window_update_follows_read() {
    let mut s = Script::new(Config {
        recv_buffer_size: 4000,
        congestion: CongestionConfig::Fixed(20_000),
        ..Config::default()
    });
    let h = connected_acceptor(&mut s, 10, 100, 5000);
    for seq in 101u16..=104 {
        let d = s.header(PacketType::Data, 11, seq, 4999);
        s.recv(d, &[], &[9u8; 1380]);
    }
    assert_eq!(
        s.conn(h).readable_bytes(),
        2760,
        "the third packet did not fit"
    );
    let out = s.sent();
    let last = out.last().unwrap();
    assert_eq!(last.h.ack_nr, SeqNr(102));
    assert_eq!(last.h.wnd_size, 4000 - 2760);
    let mut buf = [0u8; 4000];
    let now = s.now;
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(2760));
    let update = s.sent();
    assert_eq!(update.len(), 1, "a window update after the window reopened");
    assert_eq!(update[0].h.wnd_size, 4000);
}

// X13: uTorrent's INT_MAX timestamp difference is not a delay sample; A8: ours is.
/// Covers: A8, X13
#[test]
fn timestamp_difference_handling() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 1, 10, 100);
    let now = s.now;
    s.ep.write(now, h, b"ab").unwrap();
    s.sent();
    let mut ack = s.header(PacketType::State, 10, 100, 2);
    ack.timestamp_diff = Micros(0x7fff_ffff);
    s.recv(ack, &[], &[]);
    assert_eq!(s.conn(h).stats().delay_samples, 0);
    // A8: our timestamp_difference is the time we received the peer's last packet
    // minus that packet's timestamp (mod 2^32), however long ago it arrived.
    let expected = s.now.wire_micros().wrapping_sub(s.peer_clock);
    s.ep.write(now, h, b"cd").unwrap();
    s.advance(Duration::from_millis(3));
    let out = s.sent();
    assert_eq!(out[0].h.timestamp_diff, Micros(expected));
    // The difference wraps: a peer clock ahead of ours gives a large u32, not a panic.
    let mut ahead = s.header(PacketType::State, 10, 100, 3);
    ahead.timestamp = Micros(s.now.wire_micros().wrapping_add(5_000));
    s.recv(ahead, &[], &[]);
    let now = s.now;
    s.ep.write(now, h, b"ef").unwrap();
    s.advance(Duration::from_millis(3));
    let out = s.sent();
    assert_eq!(out[0].h.timestamp_diff, Micros(0u32.wrapping_sub(5_000)));
}

// ===== Closing =====================================================================

// C21, X3: the FIN consumes a seq_nr; data before it that arrives after it is still
// delivered before EOF.
/// Covers: C21, X3
#[test]
fn fin_waits_for_missing_data() {
    let mut s = Script::fixed();
    let h = connected_acceptor(&mut s, 10, 100, 5000);
    let fin = s.header(PacketType::Fin, 11, 103, 4999);
    s.recv(fin, &[], &[]);
    let d102 = s.header(PacketType::Data, 11, 102, 4999);
    s.recv(d102, &[], b"2");
    assert!(!s.conn(h).is_peer_finished());
    let d101 = s.header(PacketType::Data, 11, 101, 4999);
    s.recv(d101, &[], b"1");
    assert!(s.conn(h).is_peer_finished());
    assert!(s.has_event(h, Event::Finished));
    let mut buf = [0u8; 8];
    let now = s.now;
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(2));
    assert_eq!(&buf[..2], b"12");
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(0), "EOF");
    let out = s.sent();
    assert_eq!(out.last().unwrap().h.ack_nr, SeqNr(103), "the FIN is acked");
    // A packet beyond the FIN is ignored.
    let after = s.header(PacketType::Data, 11, 104, 4999);
    s.recv(after, &[], b"late");
    assert_eq!(s.conn(h).readable_bytes(), 0);
}

// Half-close, our FIN, linger, and L5: a retransmitted FIN is acked again while lingering.
/// Covers: L5, X3
#[test]
fn close_handshake_and_linger() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    s.ep.write(now, h, b"bye").unwrap();
    s.ep.shutdown(now, h).unwrap();
    assert_eq!(s.ep.write(now, h, b"more"), Err(StreamError::SendClosed));
    let out = s.sent();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].h.ty, out[0].h.seq_nr),
        (PacketType::Data, SeqNr(11))
    );
    assert_eq!((out[1].h.ty, out[1].h.seq_nr), (PacketType::Fin, SeqNr(12)));
    assert_eq!(s.conn(h).state(), State::FinSent);
    let ack = s.header(PacketType::State, 1, 100, 12);
    s.recv(ack, &[], &[]);
    assert!(s.has_event(h, Event::SendClosed));
    assert_eq!(s.conn(h).state(), State::HalfClosed);
    // The peer still sends, then its FIN.
    let d = s.header(PacketType::Data, 1, 100, 12);
    s.recv(d, &[], b"late data");
    let fin = s.header(PacketType::Fin, 1, 101, 12);
    s.recv(fin, &[], &[]);
    assert_eq!(s.conn(h).state(), State::Linger);
    assert!(s.has_event(h, Event::Closed(None)));
    let acks = s.sent();
    assert_eq!(acks.last().unwrap().h.ack_nr, SeqNr(101));
    // The peer lost our ACK and resends its FIN: we ack it again.
    s.advance(Duration::from_millis(500));
    s.recv(fin, &[], &[]);
    let again = s.sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].h.ack_nr, SeqNr(101));
    // The linger (8 s, doubled to 16 s by the resend) runs out.
    s.advance(Duration::from_secs(17));
    // The peer's late data was never read: the connection waits for the reader.
    assert!(s.ep.connection(h).is_some(), "held while data is unread");
    let now = s.now;
    let mut buf = [0u8; 32];
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(9));
    assert_eq!(&buf[..9], b"late data");
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(0), "then EOF");
    s.advance(Duration::from_millis(1));
    assert!(
        s.ep.connection(h).is_none(),
        "released once read to the end"
    );
}

// Close while connecting: the data written so far and the FIN wait for the handshake
// (found by libutp interop: `close_while_connecting_still_delivers_queued_data`).
#[test]
fn close_while_connecting_sends_data_and_fin_after_the_handshake() {
    let mut s = Script::fixed();
    let (now, peer) = (s.now, s.peer);
    let h = s.ep.connect_with(now, peer, 1, SeqNr(10));
    s.ep.write(now, h, b"queued").unwrap();
    s.ep.close(now, h).unwrap();
    let syn = s.sent();
    assert_eq!(syn.len(), 1);
    assert_eq!(syn[0].h.ty, PacketType::Syn);
    assert!(
        !s.has_event(h, Event::Closed(None)),
        "not closed before connecting"
    );
    let ack = s.header(PacketType::State, 1, 100, 10);
    s.recv(ack, &[], &[]);
    let out = s.sent();
    let kinds: Vec<_> = out.iter().map(|o| (o.h.ty, o.h.seq_nr)).collect();
    assert_eq!(
        kinds,
        [(PacketType::Data, SeqNr(11)), (PacketType::Fin, SeqNr(12))]
    );
    assert_eq!(out[0].payload, b"queued");
    let ack = s.header(PacketType::State, 1, 100, 12);
    s.recv(ack, &[], &[]);
    assert!(s.has_event(h, Event::Closed(None)));
}

// X3, L-section: a RESET after our FIN, with everything acknowledged, is a clean close.
/// Covers: X3
#[test]
fn reset_after_fin_is_clean_close() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    s.ep.close(now, h).unwrap();
    let out = s.sent();
    assert_eq!(out[0].h.ty, PacketType::Fin);
    let rst = s.header(PacketType::Reset, 1, 555, 11);
    s.recv(rst, &[], &[]);
    assert!(s.has_event(h, Event::Closed(None)));
}

// C22, L6: a RESET ends an established connection, but only with a plausible ack_nr.
/// Covers: C22, L6, X11
#[test]
fn reset_is_validated() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let blind = s.header(PacketType::Reset, 1, 555, 40_000);
    s.recv(blind, &[], &[]);
    assert_eq!(s.conn(h).state(), State::Connected);
    // X11: the RESET may carry our send id instead of our recv id.
    let rst = s.header(PacketType::Reset, 2, 555, 11);
    s.recv(rst, &[], &[]);
    assert!(s.has_event(h, Event::Closed(Some(ConnectionError::Reset))));
}

// X3 against libutp, which destroys its socket once its own FIN is acked and then
// answers one packet per seq_nr with a RESET: when only our FIN is outstanding after the
// peer's FIN, each retransmission timeout resends the FIN *and* sends a STATE with the
// next seq_nr, a packet libutp has not answered yet; the RESET to it (acking FIN + 1)
// ends the close cleanly.
/// Covers: X3, X11
#[test]
fn fin_to_a_vanished_libutp_peer_also_asks_with_a_state() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let fin = s.header(PacketType::Fin, 1, 100, 10);
    s.recv(fin, &[], &[]);
    assert!(s.has_event(h, Event::Finished));
    let now = s.now;
    s.ep.shutdown(now, h).unwrap();
    let out = s.sent();
    assert!(out
        .iter()
        .any(|o| o.h.ty == PacketType::Fin && o.h.seq_nr == SeqNr(11)));
    // The peer is gone: nothing answers. The RTO fires.
    let resent = s.advance_collect(Duration::from_millis(1100));
    let kinds: Vec<_> = resent.iter().map(|(_, o)| (o.h.ty, o.h.seq_nr)).collect();
    assert!(kinds.contains(&(PacketType::Fin, SeqNr(11))), "{kinds:?}");
    assert!(kinds.contains(&(PacketType::State, SeqNr(12))), "{kinds:?}");
    // libutp's RESET to the STATE names our send id and acks seq_nr 12.
    let mut rst = s.header(PacketType::Reset, 2, 5555, 12);
    rst.wnd_size = 0;
    s.recv(rst, &[], &[]);
    assert!(s.has_event(h, Event::Closed(None)), "{:?}", s.events);
}

// Abort sends a RESET at once.
/// Covers: C22
#[test]
fn abort_sends_reset() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    s.ep.abort(now, h).unwrap();
    let out = s.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].h.ty, PacketType::Reset);
    assert_eq!(out[0].h.conn_id, 2);
    assert!(s.has_event(h, Event::Closed(Some(ConnectionError::Aborted))));
    assert!(s.ep.connection(h).is_none());
}

// ===== Timers ======================================================================

// Keep-alive (X8) and idle timeout (L12).
/// Covers: X8, L12
#[test]
fn keepalive_and_idle_timeout() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let sent = s.advance_collect(Duration::from_secs(59));
    let states: Vec<_> = sent
        .iter()
        .filter(|(_, o)| o.h.ty == PacketType::State)
        .collect();
    assert_eq!(states.len(), 2, "a keep-alive every 29 s");
    assert!(!s.has_event(h, Event::Closed(Some(ConnectionError::TimedOut))));
    s.advance(Duration::from_secs(2));
    assert!(
        s.has_event(h, Event::Closed(Some(ConnectionError::TimedOut))),
        "idle for 60 s"
    );
}

// X8 the other way: the BEP text has no keep-alive, and `bep29_text()` sends none.
/// Covers: X8
#[test]
fn no_keepalive_in_the_bep29_text_profile() {
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Fixed(8 * 1380),
        idle_timeout: Duration::from_secs(300),
        ..Config::bep29_text()
    });
    connected_initiator_bep_text(&mut s, 10, 1, 100);
    let sent = s.advance_collect(Duration::from_secs(120));
    assert!(sent.is_empty(), "nothing at all while idle: {sent:?}");
}

/// An initiator connected under the BEP text's numbering (X1): the acceptor's STATE
/// consumed `peer_seq`, so we acknowledge `peer_seq` itself.
fn connected_initiator_bep_text(
    s: &mut Script,
    isn: u16,
    recv_id: u16,
    peer_seq: u16,
) -> ConnectionHandle {
    let (now, peer) = (s.now, s.peer);
    let h = s.ep.connect_with(now, peer, recv_id, SeqNr(isn));
    assert_eq!(s.sent().len(), 1);
    let ack = s.header(PacketType::State, recv_id, peer_seq, isn);
    s.recv(ack, &[], &[]);
    assert!(s.has_event(h, Event::Connected));
    let proof = s.sent();
    assert_eq!(proof.len(), 1);
    assert_eq!(
        proof[0].h.ack_nr,
        SeqNr(peer_seq),
        "X1, BEP text: ack_nr = seq_nr"
    );
    h
}

// X1 both ways: with the BEP text's numbering (`Config::bep29_text`) the SYN-ACK
// consumes a seq_nr, as initiator and as acceptor; the default follows libutp.
/// Covers: X1, D29
#[test]
fn bep29_text_syn_ack_numbering_both_roles() {
    // Initiator: the acceptor's first DATA comes right after its SYN-ACK's seq_nr.
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Fixed(8 * 1380),
        ..Config::bep29_text()
    });
    let h = connected_initiator_bep_text(&mut s, 10, 1, 100);
    let d = s.header(PacketType::Data, 1, 101, 10);
    s.recv(d, &[], b"first");
    let now = s.now;
    let mut buf = [0u8; 16];
    assert_eq!(s.ep.read(now, h, &mut buf), Ok(5), "in order at once");
    assert_eq!(&buf[..5], b"first");

    // Acceptor: our SYN-ACK carries the seq_nr it consumes; data starts after it.
    let mut s = Script::new(Config {
        congestion: CongestionConfig::Fixed(8 * 1380),
        ..Config::bep29_text()
    });
    s.ep.isn_override = Some(500);
    let syn = s.header(PacketType::Syn, 7, 40, 0);
    s.recv(syn, &[], &[]);
    let answer = s.sent();
    assert_eq!(answer.len(), 1);
    assert_eq!(
        (answer[0].h.ty, answer[0].h.seq_nr),
        (PacketType::State, SeqNr(500))
    );
    // The initiator (BEP text) acknowledges 500 with its first DATA.
    let d = s.header(PacketType::Data, 8, 41, 500);
    s.recv(d, &[], b"hi");
    let h = s.incoming();
    let now = s.now;
    s.ep.write(now, h, b"reply").unwrap();
    let out = s.sent();
    let data: Vec<_> = out.iter().filter(|o| o.h.ty == PacketType::Data).collect();
    assert_eq!(data[0].h.seq_nr, SeqNr(501), "the SYN-ACK consumed 500");

    // The default (libutp's numbering) answers with the unconsumed seq_nr and sends
    // its first DATA under that same number.
    let mut s = Script::fixed();
    s.ep.isn_override = Some(500);
    s.recv(syn, &[], &[]);
    assert_eq!(s.sent()[0].h.seq_nr, SeqNr(500));
    let d = s.header(PacketType::Data, 8, 41, 499);
    s.recv(d, &[], b"hi");
    let h = s.incoming();
    let now = s.now;
    s.ep.write(now, h, b"reply").unwrap();
    let out = s.sent();
    let data: Vec<_> = out.iter().filter(|o| o.h.ty == PacketType::Data).collect();
    assert_eq!(data[0].h.seq_nr, SeqNr(500));
}

// X12: a zero window stops sending; a probe goes out after a timeout, and a peer that
// keeps answering with a closed window is not given up on.
/// Covers: X12, E33
#[test]
fn zero_window_probing() {
    let mut s = Script::new(Config {
        max_retransmits: 2,
        max_timeout: Duration::from_secs(10),
        congestion: CongestionConfig::Fixed(20_000),
        ..Config::default()
    });
    let h = connected_initiator(&mut s, 10, 1, 100);
    let mut closed = s.header(PacketType::State, 1, 100, 10);
    closed.wnd_size = 0;
    s.recv(closed, &[], &[]);
    let now = s.now;
    s.ep.write(now, h, &[5u8; 3000]).unwrap();
    assert!(s.sent().is_empty(), "nothing fits a zero window");
    // The peer answers every probe at once with its still-closed window. Probes back
    // off like retransmissions (up to max_timeout); far more of them than
    // max_retransmits prove they do not count towards giving up.
    let mut probes = 0;
    for _ in 0..1200 {
        let out = s.advance_collect(Duration::from_millis(100));
        for (_, o) in out.iter().filter(|(_, o)| o.h.ty == PacketType::Data) {
            probes += 1;
            assert!(o.payload.len() <= 1380);
            let mut reply = s.header(PacketType::State, 1, 100, 10);
            reply.wnd_size = 0;
            s.recv(reply, &[], &[]);
        }
    }
    assert!(probes >= 8, "probes went out: {probes}");
    assert!(s.conn(h).error().is_none(), "still alive");
    // The window opens: everything flows.
    let open = s.header(PacketType::State, 1, 100, 10);
    s.recv(open, &[], &[]);
    let out = s.advance_collect(Duration::from_secs(3));
    assert!(out.iter().any(|(_, o)| o.h.ty == PacketType::Data));
}

// With `reset_unknown` off (libtorrent's choice, X10), stray packets get no answer at
// all; they are still counted.
/// Covers: X10
#[test]
fn stray_packets_unanswered_without_reset_unknown() {
    let mut s = Script::new(Config {
        reset_unknown: false,
        ..Config::default()
    });
    for i in 0..10u16 {
        let d = s.header(PacketType::Data, 1000 + i, 5, 6);
        s.recv(d, &[], b"?");
        let f = s.header(PacketType::Fin, 2000 + i, 5, 6);
        s.recv(f, &[], &[]);
    }
    assert!(s.sent().is_empty(), "no RESET, no answer");
    let st = s.ep.stats();
    assert_eq!(st.unknown_connection, 20);
    assert_eq!(st.resets_sent, 0);
    assert_eq!(s.ep.connection_count(), 0);
    // A SYN is still answered: only strays are silenced.
    let syn = s.header(PacketType::Syn, 3000, 77, 0);
    s.recv(syn, &[], &[]);
    assert_eq!(s.sent().len(), 1);
}

// Stray packets for unknown connections get a RESET, rate limited; RESETs never do.
/// Covers: X10, L8
#[test]
fn stray_packets_and_reset_rate_limit() {
    let mut s = Script::new(Config {
        reset_limit: 3,
        ..Config::default()
    });
    for i in 0..10u16 {
        let d = s.header(PacketType::Data, 1000 + i, 5, 6);
        s.recv(d, &[], b"?");
    }
    let rst = s.header(PacketType::Reset, 1, 5, 6);
    s.recv(rst, &[], &[]);
    let out = s.sent();
    assert_eq!(out.len(), 3);
    assert!(out
        .iter()
        .all(|o| o.h.ty == PacketType::Reset && o.payload.is_empty()));
    assert_eq!(out[0].h.conn_id, 1000);
    assert_eq!(out[0].h.ack_nr, SeqNr(5));
    assert_eq!(s.ep.stats().resets_suppressed, 7);
    // Malformed datagrams are counted and dropped.
    let (now, peer) = (s.now, s.peer);
    s.ep.handle_datagram(now, peer, &[0x41, 3, 0, 0]);
    assert_eq!(s.ep.stats().malformed, 1);
}

// L14: a loss early in the connection is recovered without shrinking the packets (libutp
// takes it for an MTU limit and drops from 1402 to 988 bytes).
/// Covers: L14
#[test]
fn early_loss_does_not_shrink_packets() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    let now = s.now;
    s.ep.write(now, h, &[4u8; 1380 * 8]).unwrap();
    let first = s.sent();
    assert_eq!(first.len(), 8);
    // The very first data packet (11) is lost: three duplicate ACKs of 10.
    for _ in 0..3 {
        let dup = s.header(PacketType::State, 1, 100, 10);
        s.recv(dup, &[], &[]);
    }
    let resent = s.sent();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].payload.len(), 1380, "resent at full size");
    let ack = s.header(PacketType::State, 1, 100, 18);
    s.recv(ack, &[], &[]);
    let now = s.now;
    s.ep.write(now, h, &[5u8; 1380 * 4]).unwrap();
    let later = s.sent();
    assert_eq!(later.len(), 4);
    assert!(
        later.iter().all(|o| o.payload.len() == 1380),
        "full-size packets after the loss"
    );
}

// The application can see how much it has written that is not yet in any packet: a
// bulk sender keeps a window of it queued (the simulator's does) instead of filling
// the whole send buffer. A retransmission does not count: it was sent once.
#[test]
fn unsent_bytes_counts_what_no_packet_carried_yet() {
    let mut s = Script::fixed();
    let h = connected_initiator(&mut s, 10, 1, 100);
    assert_eq!(s.conn(h).unsent_bytes(), 0);
    let now = s.now;
    assert_eq!(s.ep.write(now, h, &[1u8; 20_000]), Ok(20_000));
    assert_eq!(s.conn(h).unsent_bytes(), 20_000);
    assert_eq!(s.sent().len(), 8, "a window of 8 packets");
    assert_eq!(s.conn(h).unsent_bytes(), 20_000 - 8 * 1380);
    // Packet 11 is lost (three duplicate ACKs of 10): its resend takes nothing new.
    for _ in 0..3 {
        let dup = s.header(PacketType::State, 1, 100, 10);
        s.recv(dup, &[], &[]);
    }
    assert_eq!(s.sent().len(), 1);
    assert_eq!(s.conn(h).unsent_bytes(), 20_000 - 8 * 1380);
    // Everything acknowledged: the window moves on, the rest goes out.
    let ack = s.header(PacketType::State, 1, 100, 18);
    s.recv(ack, &[], &[]);
    let rest = s.sent();
    assert_eq!(
        rest.iter().map(|o| o.payload.len()).sum::<usize>(),
        20_000 - 8 * 1380
    );
    assert_eq!(s.conn(h).unsent_bytes(), 0);
}
