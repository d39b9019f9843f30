//! A TCP NewReno model (RFC 5681 / RFC 6582 / RFC 6298): the loss-based flow that
//! LEDBAT must yield to.
//!
//! It moves byte counts, not bytes: a data segment is a 17-byte header
//! (`b'T'`, kind, sequence number u64, length u32, padding) plus zero padding to its
//! length; an ACK is the header with the cumulative acknowledgement. The receiver
//! acknowledges every segment at once and keeps out-of-order ranges. The sender does
//! slow start, congestion avoidance, fast retransmit and NewReno fast recovery with
//! partial ACKs, and an RTO with Karn's rule and backoff.

use core::time::Duration;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use utp::Instant;

use crate::engine::Node;
use crate::metrics::FlowSample;

const HEADER: usize = 17;
const DATA: u8 = 0;
const ACK: u8 = 1;

/// A TCP flow's sending side.
#[derive(Clone, Debug)]
pub struct TcpSpec {
    /// The flow's index.
    pub flow: usize,
    /// The receiver.
    pub remote: SocketAddr,
    /// Bytes to send; `None` until `stop`.
    pub bytes: Option<u64>,
    /// Start time.
    pub start: Instant,
    /// Stop time.
    pub stop: Option<Instant>,
    /// Segment payload size.
    pub mss: usize,
}

#[derive(Debug)]
struct TcpSender {
    spec: TcpSpec,
    snd_una: u64,
    snd_nxt: u64,
    cwnd: f64,
    ssthresh: f64,
    dupacks: u32,
    recover: Option<u64>,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    rto_deadline: Option<Instant>,
    /// The segment being timed (Karn): start sequence and send time.
    timing: Option<(u64, Instant)>,
    /// Highest sequence ever sent (to tell retransmissions).
    high_water: u64,
    retransmits: u64,
    retransmit_now: bool,
    finished: Option<Instant>,
}

#[derive(Debug)]
struct TcpReceiver {
    flow: usize,
    rcv_nxt: u64,
    ranges: BTreeMap<u64, u64>,
    pending_ack: Option<(SocketAddr, u64)>,
}

/// A host running one side of a TCP flow.
#[derive(Debug)]
pub struct TcpNode {
    addr: SocketAddr,
    sender: Option<TcpSender>,
    receiver: Option<TcpReceiver>,
}

impl TcpNode {
    /// A sending host.
    pub fn sender(addr: SocketAddr, spec: TcpSpec) -> TcpNode {
        let mss = spec.mss as f64;
        TcpNode {
            addr,
            sender: Some(TcpSender {
                spec,
                snd_una: 0,
                snd_nxt: 0,
                cwnd: 10.0 * mss, // RFC 6928 initial window
                ssthresh: f64::INFINITY,
                dupacks: 0,
                recover: None,
                srtt: None,
                rttvar: Duration::ZERO,
                rto: Duration::from_secs(1),
                rto_deadline: None,
                timing: None,
                high_water: 0,
                retransmits: 0,
                retransmit_now: false,
                finished: None,
            }),
            receiver: None,
        }
    }

    /// A receiving host for flow `flow`.
    pub fn receiver(addr: SocketAddr, flow: usize) -> TcpNode {
        TcpNode {
            addr,
            sender: None,
            receiver: Some(TcpReceiver {
                flow,
                rcv_nxt: 0,
                ranges: BTreeMap::new(),
                pending_ack: None,
            }),
        }
    }
}

impl TcpSender {
    fn mss(&self) -> f64 {
        self.spec.mss as f64
    }

    fn limit(&self, now: Instant) -> u64 {
        if self.spec.stop.is_some_and(|t| now >= t) {
            return self.snd_nxt.min(self.high_water);
        }
        self.spec.bytes.unwrap_or(u64::MAX)
    }

    fn flight(&self) -> u64 {
        self.snd_nxt - self.snd_una
    }

    fn on_ack(&mut self, now: Instant, ack: u64) {
        if ack > self.snd_una {
            let acked = ack - self.snd_una;
            if let Some((seq, sent)) = self.timing {
                if ack > seq {
                    self.rtt_sample(now - sent);
                    self.timing = None;
                }
            }
            self.snd_una = ack;
            if self.snd_nxt < ack {
                self.snd_nxt = ack;
            }
            self.dupacks = 0;
            match self.recover {
                Some(r) if ack < r => {
                    // Partial ACK (RFC 6582): retransmit the next hole, deflate.
                    self.retransmit_now = true;
                    self.cwnd = (self.cwnd - acked as f64 + self.mss()).max(self.mss());
                }
                Some(_) => {
                    self.recover = None;
                    self.cwnd = self.ssthresh;
                }
                None if self.cwnd < self.ssthresh => self.cwnd += acked as f64,
                None => self.cwnd += self.mss() * acked as f64 / self.cwnd,
            }
            self.rto_deadline = (self.flight() > 0).then(|| now + self.rto);
            if self.spec.bytes.is_some_and(|b| ack >= b) {
                self.finished.get_or_insert(now);
            }
        } else if ack == self.snd_una && self.flight() > 0 {
            self.dupacks += 1;
            if self.dupacks == 3 && self.recover.is_none() {
                self.ssthresh = (self.flight() as f64 / 2.0).max(2.0 * self.mss());
                self.cwnd = self.ssthresh + 3.0 * self.mss();
                self.recover = Some(self.snd_nxt);
                self.retransmit_now = true;
            } else if self.dupacks > 3 {
                self.cwnd += self.mss();
            }
        }
    }

    fn rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                self.rttvar = self.rttvar.mul_f64(0.75) + s.abs_diff(r).mul_f64(0.25);
                self.srtt = Some(s.mul_f64(0.875) + r.mul_f64(0.125));
            }
        }
        self.rto =
            (self.srtt.unwrap_or_default() + self.rttvar * 4).max(Duration::from_millis(200));
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.flight() == 0 {
            self.rto_deadline = None;
            return;
        }
        self.ssthresh = (self.flight() as f64 / 2.0).max(2.0 * self.mss());
        self.cwnd = self.mss();
        self.snd_nxt = self.snd_una; // go back N
        self.recover = None;
        self.dupacks = 0;
        self.timing = None;
        self.rto = (self.rto * 2).min(Duration::from_secs(60));
        self.rto_deadline = Some(now + self.rto);
    }

    /// The next segment to send: (sequence, length).
    fn next_segment(&mut self, now: Instant) -> Option<(u64, usize)> {
        if now < self.spec.start {
            return None;
        }
        if self.retransmit_now {
            self.retransmit_now = false;
            let len = (self.limit(now).max(self.high_water) - self.snd_una)
                .min(self.spec.mss as u64) as usize;
            if len > 0 {
                self.retransmits += 1;
                return Some((self.snd_una, len));
            }
        }
        let limit = self.limit(now);
        if self.snd_nxt >= limit || (self.flight() as f64) + self.mss() > self.cwnd.max(self.mss())
        {
            return None;
        }
        let seq = self.snd_nxt;
        let len = (limit - seq).min(self.spec.mss as u64) as usize;
        self.snd_nxt += len as u64;
        if seq < self.high_water {
            self.retransmits += 1;
        } else {
            if self.timing.is_none() {
                self.timing = Some((seq, now));
            }
            self.high_water = self.snd_nxt;
        }
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto);
        }
        Some((seq, len))
    }
}

fn header(kind: u8, seq: u64, len: u32, buf: &mut [u8]) {
    buf[0] = b'T';
    buf[1] = kind;
    buf[2..10].copy_from_slice(&seq.to_be_bytes());
    buf[10..14].copy_from_slice(&len.to_be_bytes());
    buf[14..HEADER].fill(0);
}

impl Node for TcpNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        if data.len() < HEADER || data[0] != b'T' {
            return;
        }
        let seq = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
        let len = u64::from(u32::from_be_bytes(
            data[10..14].try_into().expect("4 bytes"),
        ));
        match data[1] {
            DATA => {
                if let Some(r) = &mut self.receiver {
                    let end = seq + len;
                    if end > r.rcv_nxt {
                        let e = r.ranges.entry(seq.max(r.rcv_nxt)).or_insert(end);
                        *e = (*e).max(end);
                        while let Some((&s, &e)) = r.ranges.first_key_value() {
                            if s > r.rcv_nxt {
                                break;
                            }
                            r.ranges.pop_first();
                            r.rcv_nxt = r.rcv_nxt.max(e);
                        }
                    }
                    r.pending_ack = Some((from, r.rcv_nxt));
                }
            }
            ACK => {
                if let Some(s) = &mut self.sender {
                    s.on_ack(now, seq);
                }
            }
            _ => {}
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let s = self.sender.as_ref()?;
        let start = (s.snd_nxt == 0 && s.high_water == 0).then_some(s.spec.start);
        [
            start,
            s.rto_deadline,
            s.spec.stop.filter(|_| s.finished.is_none()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(s) = &mut self.sender {
            if s.rto_deadline.is_some_and(|d| d <= now) {
                s.on_timeout(now);
            }
            if s.spec.stop.is_some_and(|t| now >= t) {
                s.finished.get_or_insert(now);
            }
        }
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        if let Some(r) = &mut self.receiver {
            // The engine drains output after every arrival: one ACK per segment.
            if let Some((to, ack)) = r.pending_ack.take() {
                header(ACK, ack, 0, buf);
                return Some((self.addr, to, HEADER));
            }
        }
        let s = self.sender.as_mut()?;
        let (seq, len) = s.next_segment(now)?;
        let total = HEADER + len;
        header(DATA, seq, len as u32, buf);
        buf[HEADER..total].fill(0);
        Some((self.addr, s.spec.remote, total))
    }

    fn report(&self, _now: Instant, out: &mut Vec<FlowSample>) {
        if let Some(s) = &self.sender {
            out.push(FlowSample {
                flow: s.spec.flow,
                cwnd: Some(s.cwnd as u64),
                rtt: s.srtt,
                retransmits: Some(s.retransmits),
                finished: s.finished.filter(|_| s.spec.bytes.is_some()),
                ..FlowSample::default()
            });
        }
        if let Some(r) = &self.receiver {
            out.push(FlowSample {
                flow: r.flow,
                delivered: Some(r.rcv_nxt),
                ..FlowSample::default()
            });
        }
    }
}
