//! A node running the real libutp (the reference C++ implementation) in virtual time.
//!
//! The node wraps [`LibutpPeer`] from the conformance crate, which overrides libutp's
//! clock and random callbacks, pads every datagram it hands to libutp, issues the
//! deferred ACKs after each delivery and ticks `utp_check_timeouts` every 500 ms of
//! virtual time (checklist section L). Its applications mirror [`super::UtpNode`]'s: a
//! bulk sender of the test pattern and a receiver that accepts every connection and
//! checks every byte, so a flow can run ours→ours, libutp→libutp, or either against
//! the other on the same links.
//!
//! libutp exposes neither its congestion window nor its retransmission count in a
//! release build, so the node derives them from the datagrams it sends and receives:
//! the window is reported as the bytes in flight (sent DATA above the peer's
//! cumulative ACK), and a retransmission is a DATA packet whose `seq_nr` was sent
//! before. The delay estimate is libutp's own (`UTP_ON_DELAY_SAMPLE`).
//!
//! All libutp contexts of one simulation live on the thread that runs it (libutp has
//! process-global statics); sweeps run each simulation on its own thread.

use core::time::Duration;
use std::collections::VecDeque;
use std::net::SocketAddr;

use utp::wire::{Packet, PacketType, SeqNr};
use utp::Instant;
use utp_conformance::libutp::{LibutpEvent, LibutpPeer, SocketId};

use super::{pattern, PATTERN_LEN};
use crate::engine::Node;
use crate::metrics::FlowSample;
use crate::nodes::utp_node::matches_pattern;
use crate::nodes::UtpSendSpec;

#[derive(Debug)]
struct Sender {
    spec: UtpSendSpec,
    socket: Option<SocketId>,
    connected: bool,
    written: u64,
    shut: bool,
    /// Highest DATA seq_nr sent (None before the first).
    highest_sent: Option<SeqNr>,
    /// Payload bytes of each DATA packet sent and not yet acknowledged.
    unacked: Unacked,
    in_flight: u64,
    retransmits: u64,
}

#[derive(Debug)]
struct Receiver {
    flow: usize,
    conns: Vec<(SocketId, u64, bool)>,
    delivered: u64,
    finished: Option<Instant>,
}

/// Room for any datagram libutp writes (its packets stay below 1.5 KB; a larger one
/// would be reported as a failure, not truncated).
const LIBUTP_MAX_DATAGRAM: usize = 2048;

/// The payload size of every DATA packet libutp sent and the peer has not yet
/// acknowledged, by seq_nr: a window from the oldest, so an ACK costs what it
/// acknowledges, not a pass over everything in flight (which took a sixth of a
/// simulation's time at 10 Mbit/s).
#[derive(Debug, Default)]
struct Unacked {
    /// The seq_nr of `lens[0]`.
    base: SeqNr,
    /// `None`: acknowledged selectively (or never sent).
    lens: VecDeque<Option<usize>>,
}

impl Unacked {
    /// Records packet `seq`; returns whether it was not already waiting.
    fn insert(&mut self, seq: SeqNr, len: usize) -> bool {
        if self.lens.is_empty() {
            self.base = seq;
        }
        let at = usize::from(seq.0.wrapping_sub(self.base.0));
        if at >= 1 << 15 {
            // Before the window: acknowledged already.
            return false;
        }
        if at >= self.lens.len() {
            self.lens.resize(at + 1, None);
        }
        self.lens[at].replace(len).is_none()
    }

    /// Forgets every packet up to and including `ack`; returns their bytes.
    fn ack_through(&mut self, ack: SeqNr) -> u64 {
        let mut acked = 0;
        while !self.lens.is_empty() && !self.base.is_after(ack) {
            acked += self.lens.pop_front().flatten().unwrap_or(0) as u64;
            self.base = SeqNr(self.base.0.wrapping_add(1));
        }
        acked
    }

    /// Forgets packet `seq` (selectively acknowledged); returns its bytes.
    fn remove(&mut self, seq: SeqNr) -> u64 {
        let at = usize::from(seq.0.wrapping_sub(self.base.0));
        self.lens.get_mut(at).and_then(Option::take).unwrap_or(0) as u64
    }
}

/// A host with one libutp context (one address) and its applications.
pub struct LibutpNode {
    addr: SocketAddr,
    peer: LibutpPeer,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    pattern: &'static [u8],
    read_buf: Vec<u8>,
    pinned_seq_nr: Option<u16>,
    now: Instant,
    failure: Option<String>,
}

impl LibutpNode {
    /// A node at `addr`; `seed` seeds libutp's random numbers (connection ids and
    /// initial sequence numbers, so also whether its fast retransmit works, checklist
    /// L bug 1).
    pub fn new(addr: SocketAddr, seed: u64) -> LibutpNode {
        LibutpNode {
            addr,
            peer: LibutpPeer::new(addr, seed),
            sender: None,
            receiver: None,
            pattern: pattern(),
            read_buf: vec![0u8; 1 << 16],
            pinned_seq_nr: None,
            now: Instant::from_micros(0),
            failure: None,
        }
    }

    /// Adds a sending application.
    pub fn with_sender(mut self, spec: UtpSendSpec) -> LibutpNode {
        self.sender = Some(Sender {
            spec,
            socket: None,
            connected: false,
            written: 0,
            shut: false,
            highest_sent: None,
            unacked: Unacked::default(),
            in_flight: 0,
            retransmits: 0,
        });
        self
    }

    /// Adds a receiving application for flow `flow` (it accepts every connection).
    pub fn with_receiver(mut self, flow: usize) -> LibutpNode {
        self.receiver = Some(Receiver {
            flow,
            conns: Vec::new(),
            delivered: 0,
            finished: None,
        });
        self
    }

    /// Pins the initial seq_nr of the sender's connection instead of drawing it (see
    /// `LibutpPeer::connect_with_seq_nr`: with 0x4000, libutp's fast retransmit works).
    pub fn with_initial_seq_nr(mut self, seq_nr: Option<u16>) -> LibutpNode {
        self.pinned_seq_nr = seq_nr;
        self
    }

    /// The libutp peer, for inspection.
    pub fn peer(&self) -> &LibutpPeer {
        &self.peer
    }

    fn pump(&mut self, now: Instant) {
        self.now = now;
        while let Some(ev) = self.peer.poll_event() {
            match ev {
                LibutpEvent::Accepted { socket, .. } => {
                    if let Some(r) = &mut self.receiver {
                        r.conns.push((socket, 0, false));
                    }
                }
                LibutpEvent::Connected(_) => {
                    if let Some(s) = &mut self.sender {
                        s.connected = true;
                    }
                }
                LibutpEvent::Eof(socket) => {
                    if let Some(r) = &mut self.receiver {
                        if let Some(c) = r.conns.iter_mut().find(|c| c.0 == socket) {
                            c.2 = true;
                        }
                    }
                }
                LibutpEvent::Error(socket, e) => {
                    let stopping = self
                        .sender
                        .as_ref()
                        .is_some_and(|s| s.spec.stop.is_some_and(|t| now >= t));
                    if !stopping && self.failure.is_none() {
                        self.failure = Some(format!("{} libutp {socket} failed: {e}", self.addr));
                    }
                    self.peer.close(now, socket);
                }
                _ => {}
            }
        }
        if let Some(s) = &mut self.sender {
            if s.socket.is_none() && now >= s.spec.start {
                s.socket = Some(match self.pinned_seq_nr {
                    Some(seq) => self.peer.connect_with_seq_nr(now, s.spec.remote, seq),
                    None => self.peer.connect(now, s.spec.remote),
                });
            }
            if let (Some(sock), true) = (s.socket, s.connected) {
                let stop = s.spec.stop.is_some_and(|t| now >= t);
                let total = s.spec.bytes.unwrap_or(u64::MAX);
                while !stop && s.written < total {
                    let off = (s.written % PATTERN_LEN as u64) as usize;
                    let n = ((total - s.written).min((PATTERN_LEN - off) as u64)) as usize;
                    let k = self.peer.write(now, sock, &self.pattern[off..off + n]);
                    if k == 0 {
                        break;
                    }
                    s.written += k as u64;
                }
                if !s.shut && (s.written == total || stop) {
                    s.shut = true;
                    if stop {
                        self.peer.close(now, sock);
                    } else {
                        self.peer.shutdown(now, sock);
                    }
                }
            }
        }
        if let Some(r) = &mut self.receiver {
            for (socket, offset, eof) in r.conns.iter_mut() {
                loop {
                    let n = self.peer.read(now, *socket, &mut self.read_buf);
                    if n == 0 {
                        break;
                    }
                    if !matches_pattern(self.pattern, *offset, &self.read_buf[..n])
                        && self.failure.is_none()
                    {
                        self.failure = Some(format!(
                            "flow {}: libutp received corrupted data near byte {}",
                            r.flow, offset
                        ));
                    }
                    *offset += n as u64;
                    r.delivered += n as u64;
                }
                if *eof && r.finished.is_none() {
                    r.finished = Some(now);
                    self.peer.close(now, *socket);
                }
            }
        }
    }

    /// Follows the sender's DATA and the ACKs it gets, for the derived statistics.
    fn observe_sent(&mut self, data: &[u8]) {
        let Some(s) = &mut self.sender else { return };
        let Ok(p) = Packet::decode(data) else { return };
        if !matches!(p.header.ty, PacketType::Data | PacketType::Fin) {
            return;
        }
        let seq = p.header.seq_nr;
        if s.highest_sent.is_some_and(|h| !seq.is_after(h)) {
            s.retransmits += 1;
        } else {
            s.highest_sent = Some(seq);
        }
        if s.unacked.insert(seq, p.payload.len()) {
            s.in_flight += p.payload.len() as u64;
        }
    }

    fn observe_received(&mut self, data: &[u8]) {
        let Some(s) = &mut self.sender else { return };
        let Ok(p) = Packet::decode(data) else { return };
        if s.unacked.lens.is_empty() {
            return;
        }
        let ack = p.header.ack_nr;
        let mut acked = s.unacked.ack_through(ack);
        if let Some(sack) = p.selective_ack() {
            for seq in sack.acked(ack) {
                acked += s.unacked.remove(seq);
            }
        }
        s.in_flight = s.in_flight.saturating_sub(acked);
    }
}

impl Node for LibutpNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        self.observe_received(data);
        self.peer.handle_datagram(now, from, data);
        self.pump(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let tick = self.peer.poll_timeout(self.now);
        let app = self
            .sender
            .as_ref()
            .and_then(|s| s.spec.wake_at(s.socket.is_some(), s.shut));
        [Some(tick), app].into_iter().flatten().min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.peer.handle_timeout(now);
        self.pump(now);
    }

    fn max_datagram(&self) -> usize {
        LIBUTP_MAX_DATAGRAM
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        self.now = now;
        let (to, data) = self.peer.poll_transmit()?;
        if data.len() > buf.len() {
            // Cannot happen with libutp's packet sizes (at most 1402 bytes of payload).
            self.failure
                .get_or_insert_with(|| format!("libutp sent a {}-byte datagram", data.len()));
            return None;
        }
        self.observe_sent(&data);
        buf[..data.len()].copy_from_slice(&data);
        Some((self.addr, to, data.len()))
    }

    fn report(&self, _now: Instant, out: &mut Vec<FlowSample>) {
        if let Some(s) = &self.sender {
            let stats = s.socket.and_then(|sock| self.peer.stats(sock));
            out.push(FlowSample {
                flow: s.spec.flow,
                cwnd: Some(s.in_flight),
                rtt: None,
                delay_estimate: stats
                    .map(|st| Duration::from_millis(st.last_delay_sample_ms.max(0) as u64)),
                retransmits: Some(s.retransmits),
                ..FlowSample::default()
            });
        }
        if let Some(r) = &self.receiver {
            out.push(FlowSample::receiver(r.flow, r.delivered, r.finished));
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }
}
