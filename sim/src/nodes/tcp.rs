//! A TCP model with SACK loss recovery and CUBIC or NewReno congestion control: the
//! loss-based competitor LEDBAT must yield to, behaving like a Linux sender.
//!
//! It moves byte counts, not bytes. A data segment is a 17-byte header (`b'T'`, kind,
//! sequence number u64, length u32, padding) plus zero padding to its length. An ACK
//! is the header with the cumulative acknowledgement, the number of SACK blocks in
//! byte 14, then that many blocks of (start u64, end u64): the wire format is private
//! to this model.
//!
//! - Receiver: acknowledges every segment at once (no delayed ACK) and reports up to
//!   [`MAX_SACK_BLOCKS`] out-of-order ranges per ACK as RFC 2018 says: first the range
//!   holding the segment that triggered the ACK, then the most recently reported ones.
//! - Sender, loss recovery (RFC 6675): a scoreboard of the segments in flight. A
//!   segment is lost when [`DUP_THRESH`] segments above it are SACKed. Recovery starts
//!   with the first lost segment retransmitted at once, then sends by `pipe` (the
//!   RFC 6675 estimate of the bytes in the network) while `cwnd - pipe >= 1 MSS`: lost
//!   segments first, then new data, then holes not yet deemed lost. The window is
//!   reduced once per recovery episode (until the cumulative ACK passes the highest
//!   sequence sent when it began). A retransmission is itself deemed lost when
//!   [`DUP_THRESH`] segments sent after it have arrived, as Linux does, so it is resent
//!   without waiting for the timer.
//! - Sender, retransmission timer (RFC 6298 with Karn's rule and exponential backoff):
//!   RTT samples come only from segments sent once. Like Linux the 200 ms floor
//!   applies to the variance term, `RTO = SRTT + max(4 RTTVAR, 200 ms)`, at most
//!   60 s, and the timer restarts when the first outstanding segment is resent. It is
//!   the last resort: the scoreboard is cleared, every segment in flight counts as
//!   lost, `cwnd` drops to one segment and slow start resends them in order.
//! - Congestion control ([`TcpCc`]): CUBIC (RFC 9438, Linux's default) or NewReno
//!   (RFC 5681), both with an initial window of 10 segments (RFC 6928), slow start by
//!   `cwnd += acked` up to `ssthresh`, and growth only while `cwnd` limits sending.
//!   On loss `ssthresh = β × min(FlightSize, cwnd)`, at least 2 MSS, with β = 0.7
//!   (CUBIC) or 1/2 (NewReno).
//! - The sender sends nothing before its start timer fires: a scenario adds nodes
//!   before their routes, so a window sent at once would be lost.
//!
//! Not modelled: delayed ACKs, timestamps, HyStart, PRR, RACK-TLP, F-RTO and undo of
//! spurious reductions, receive windows.

use core::str::FromStr;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use utp::Instant;

use crate::engine::Node;
use crate::metrics::FlowSample;

const HEADER: usize = 17;
const DATA: u8 = 0;
const ACK: u8 = 1;
/// Bytes of one SACK block on the wire: start and end, u64 each.
const SACK_BLOCK: usize = 16;

/// SACK blocks per ACK (three, as Linux sends with TCP timestamps on).
pub const MAX_SACK_BLOCKS: usize = 3;
/// Segments SACKed above a hole that make it lost (RFC 6675 DupThresh).
pub const DUP_THRESH: usize = 3;
/// Initial window in segments (RFC 6928).
pub const INITIAL_WINDOW: usize = 10;
/// CUBIC's scaling constant C (RFC 9438), in segments per second cubed.
pub const CUBIC_C: f64 = 0.4;
/// CUBIC's multiplicative decrease factor β (RFC 9438).
pub const CUBIC_BETA: f64 = 0.7;

const INITIAL_RTO: Duration = Duration::from_secs(1);
const MIN_RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_secs(60);

/// The congestion controller of a TCP flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcpCc {
    /// CUBIC (RFC 9438), Linux's default: `cwnd` follows a cubic function of the time
    /// since the last reduction, with a Reno-friendly floor; β = 0.7 on loss.
    #[default]
    Cubic,
    /// NewReno-style AIMD (RFC 5681): one segment per RTT, halved on loss.
    NewReno,
}

impl TcpCc {
    /// The name a scenario file uses (`tcp_cc`).
    pub fn name(self) -> &'static str {
        match self {
            TcpCc::Cubic => "cubic",
            TcpCc::NewReno => "newreno",
        }
    }
}

impl FromStr for TcpCc {
    type Err = String;

    fn from_str(s: &str) -> Result<TcpCc, String> {
        match s {
            "cubic" => Ok(TcpCc::Cubic),
            "newreno" => Ok(TcpCc::NewReno),
            other => Err(format!("unknown tcp_cc {other:?} (cubic or newreno)")),
        }
    }
}

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
    /// Congestion control.
    pub cc: TcpCc,
}

impl TcpSpec {
    /// Reads a congestion control name (`cubic` or `newreno`); the error is one line.
    pub fn parse_cc(name: &str) -> Result<TcpCc, String> {
        name.parse()
    }
}

/// One segment in flight, on the sender's scoreboard.
#[derive(Clone, Copy, Debug)]
struct Seg {
    seq: u64,
    len: u64,
    /// The receiver reported it in a SACK block.
    sacked: bool,
    /// Deemed lost (RFC 6675 IsLost, a lost retransmission, or an RTO).
    lost: bool,
    /// A retransmission of it is in flight (counts in `pipe`).
    retx: bool,
    /// Transmissions so far (Karn: RTT samples only from 1).
    sends: u32,
    /// Order of its latest transmission among all the sender's transmissions.
    order: u64,
    /// Time of its latest transmission.
    sent: Instant,
}

impl Seg {
    fn end(&self) -> u64 {
        self.seq + self.len
    }
}

/// Where the sender is in loss recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No known loss.
    Open,
    /// SACK-based fast recovery until the cumulative ACK reaches `recover`.
    Recovery { recover: u64 },
    /// After an RTO, until the cumulative ACK reaches `recover`.
    Loss { recover: u64 },
}

/// CUBIC's state (RFC 9438); windows in segments, times in seconds.
#[derive(Clone, Debug, Default)]
struct Cubic {
    /// The window before the last reduction (after fast convergence).
    w_max: f64,
    /// Time from the epoch until the cubic function reaches `w_max`.
    k: f64,
    /// Start of the current congestion avoidance stage.
    epoch: Option<Instant>,
    /// The Reno-friendly estimate W_est.
    w_est: f64,
    /// The last reduction was an RTO: the next epoch takes K = 0 and W_max = cwnd.
    after_rto: bool,
}

impl Cubic {
    /// K = ∛((W_max − cwnd_epoch) / C) (RFC 9438 eq. 2); 0 above W_max.
    fn k_for(w_max: f64, cwnd_epoch: f64) -> f64 {
        ((w_max - cwnd_epoch).max(0.0) / CUBIC_C).cbrt()
    }

    /// W_cubic(t) = C (t − K)³ + W_max (RFC 9438 eq. 1).
    fn w_cubic(&self, t: f64) -> f64 {
        CUBIC_C * (t - self.k).powi(3) + self.w_max
    }

    /// α_cubic for W_est: 3(1 − β)/(1 + β) below W_max, 1 from there (RFC 9438 4.3).
    fn alpha(&self) -> f64 {
        if self.w_est >= self.w_max {
            1.0
        } else {
            3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)
        }
    }

    /// A congestion event with `cwnd` segments: W_max with fast convergence (4.7).
    fn on_congestion(&mut self, cwnd: f64) {
        self.w_max = if cwnd < self.w_max {
            cwnd * (1.0 + CUBIC_BETA) / 2.0
        } else {
            cwnd
        };
        self.epoch = None;
        self.after_rto = false;
    }

    /// An RTO (4.8): the next congestion avoidance stage starts from its own window.
    fn on_timeout(&mut self) {
        self.epoch = None;
        self.after_rto = true;
    }

    /// Congestion avoidance: `acked` segments were delivered with `cwnd` segments and
    /// smoothed RTT `rtt` seconds; returns the new window in segments.
    fn grow(&mut self, now: Instant, cwnd: f64, acked: f64, rtt: f64) -> f64 {
        let epoch = match self.epoch {
            Some(e) => e,
            None => {
                if self.after_rto || cwnd >= self.w_max {
                    self.w_max = cwnd;
                    self.k = 0.0;
                } else {
                    self.k = Cubic::k_for(self.w_max, cwnd);
                }
                self.after_rto = false;
                self.w_est = cwnd;
                self.epoch = Some(now);
                now
            }
        };
        let t = (now - epoch).as_secs_f64();
        self.w_est += self.alpha() * acked / cwnd;
        if self.w_cubic(t) < self.w_est {
            // Reno-friendly region.
            return self.w_est.max(cwnd);
        }
        let target = self.w_cubic(t + rtt).clamp(cwnd, 1.5 * cwnd);
        cwnd + (target - cwnd) / cwnd * acked
    }
}

/// The congestion controller with its state.
#[derive(Clone, Debug)]
enum Cc {
    Cubic(Cubic),
    NewReno,
}

#[derive(Debug)]
struct TcpSender {
    spec: TcpSpec,
    /// The start timer fired (nothing is sent before: routes may not exist yet).
    started: bool,
    snd_una: u64,
    /// Highest sequence sent plus one (never moves back).
    snd_nxt: u64,
    /// The scoreboard: segments from `snd_una` to `snd_nxt`, in order.
    segs: VecDeque<Seg>,
    /// RFC 6675 pipe: bytes believed in the network.
    pipe: u64,
    cwnd: f64,
    ssthresh: f64,
    cc: Cc,
    phase: Phase,
    /// ACKs that SACKed new data without moving `snd_una`.
    dupacks: u32,
    /// Retransmit the first segment now, whatever `pipe` (RFC 6675 step 4.3).
    rtx_head: bool,
    /// The last attempt to send was stopped by `cwnd` rather than lack of data.
    cwnd_limited: bool,
    /// Transmissions so far (gives each its order).
    sends: u64,
    /// Orders of the three latest-sent segments known delivered, highest first.
    delivered_orders: [u64; DUP_THRESH],
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    rto_deadline: Option<Instant>,
    retransmits: u64,
    rtos: u64,
    recoveries: u64,
    lost_retransmits: u64,
    finished: Option<Instant>,
}

#[derive(Debug)]
struct TcpReceiver {
    flow: usize,
    rcv_nxt: u64,
    /// Out-of-order ranges above `rcv_nxt`: start → end, disjoint, not adjacent.
    ranges: BTreeMap<u64, u64>,
    /// The SACK blocks of the latest ACK, first one first.
    blocks: Vec<(u64, u64)>,
    pending_ack: Option<SocketAddr>,
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
        let cc = match spec.cc {
            TcpCc::Cubic => Cc::Cubic(Cubic::default()),
            TcpCc::NewReno => Cc::NewReno,
        };
        TcpNode {
            addr,
            sender: Some(TcpSender {
                spec,
                started: false,
                snd_una: 0,
                snd_nxt: 0,
                segs: VecDeque::new(),
                pipe: 0,
                cwnd: INITIAL_WINDOW as f64 * mss,
                ssthresh: f64::INFINITY,
                cc,
                phase: Phase::Open,
                dupacks: 0,
                rtx_head: false,
                cwnd_limited: false,
                sends: 0,
                delivered_orders: [0; DUP_THRESH],
                srtt: None,
                rttvar: Duration::ZERO,
                rto: INITIAL_RTO,
                rto_deadline: None,
                retransmits: 0,
                rtos: 0,
                recoveries: 0,
                lost_retransmits: 0,
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
                blocks: Vec::new(),
                pending_ack: None,
            }),
        }
    }
}

impl TcpSender {
    fn mss(&self) -> f64 {
        self.spec.mss as f64
    }

    /// The end of the data the application offers now.
    fn limit(&self, now: Instant) -> u64 {
        if self.spec.stop.is_some_and(|t| now >= t) {
            return self.snd_nxt;
        }
        self.spec.bytes.unwrap_or(u64::MAX)
    }

    fn flight(&self) -> u64 {
        self.snd_nxt - self.snd_una
    }

    /// Notes that a segment sent with `order` was delivered.
    fn delivered(&mut self, order: u64) {
        let d = &mut self.delivered_orders;
        if let Some(i) = d.iter().position(|&o| order > o) {
            d.copy_within(i..DUP_THRESH - 1, i + 1);
            d[i] = order;
        }
    }

    fn on_ack(&mut self, now: Instant, ack: u64, blocks: &[(u64, u64)]) {
        let ack = ack.min(self.snd_nxt);
        let prior_una = self.snd_una;
        let mut delivered = 0u64;
        // Latest send time among the newly delivered segments sent once (Karn).
        let mut rtt_from: Option<Instant> = None;
        let mut newly_sacked = false;
        if ack > self.snd_una {
            while let Some(&s) = self.segs.front() {
                if s.seq >= ack {
                    break;
                }
                let acked = if s.end() <= ack {
                    self.segs.pop_front();
                    s.len
                } else {
                    // The receiver acknowledged part of a segment: keep the rest.
                    let f = self.segs.front_mut().expect("front");
                    f.seq = ack;
                    f.len = s.end() - ack;
                    ack - s.seq
                };
                if !s.sacked {
                    delivered += acked;
                    self.delivered(s.order);
                    if s.sends == 1 {
                        rtt_from = rtt_from.max(Some(s.sent));
                    }
                }
            }
            self.snd_una = ack;
            self.dupacks = 0;
            self.rto_deadline = (self.flight() > 0).then(|| now + self.rto);
        }
        for &(start, end) in blocks {
            if end <= self.snd_una || start >= end {
                continue;
            }
            let mut i = self.segs.partition_point(|g| g.seq < start);
            while let Some(&s) = self.segs.get(i) {
                if s.end() > end {
                    break;
                }
                if !s.sacked {
                    self.segs[i].sacked = true;
                    newly_sacked = true;
                    delivered += s.len;
                    self.delivered(s.order);
                    if s.sends == 1 {
                        rtt_from = rtt_from.max(Some(s.sent));
                    }
                }
                i += 1;
            }
        }
        if ack == prior_una && newly_sacked {
            self.dupacks += 1;
        }
        if let Some(sent) = rtt_from {
            self.rtt_sample(now - sent);
        }
        self.mark_lost();
        let was_recovery = matches!(self.phase, Phase::Recovery { .. });
        match self.phase {
            Phase::Recovery { recover } | Phase::Loss { recover } if self.snd_una >= recover => {
                self.phase = Phase::Open;
            }
            _ => {}
        }
        let head_lost = self.segs.front().is_some_and(|s| s.lost);
        if self.phase == Phase::Open && (head_lost || self.dupacks >= DUP_THRESH as u32) {
            self.enter_recovery();
        } else if !was_recovery && delivered > 0 {
            // No growth in fast recovery (nor on the ACK that ends it); slow start
            // goes on after an RTO.
            self.grow(now, delivered);
        }
        self.pipe = self.segs.iter().map(pipe_of).sum();
        if self.spec.bytes.is_some_and(|b| self.snd_una >= b) {
            self.finished.get_or_insert(now);
        }
    }

    /// RFC 6675 IsLost, and lost retransmissions: marks segments lost.
    fn mark_lost(&mut self) {
        let third = self.delivered_orders[DUP_THRESH - 1];
        let mut sacked_above = 0;
        let mut lost_retransmits = 0;
        for s in self.segs.iter_mut().rev() {
            if s.sacked {
                sacked_above += 1;
                continue;
            }
            if sacked_above >= DUP_THRESH {
                s.lost = true;
            }
            if s.retx && s.order < third {
                // Three segments sent after this retransmission arrived: lost again.
                s.retx = false;
                s.lost = true;
                lost_retransmits += 1;
            }
        }
        self.lost_retransmits += lost_retransmits;
    }

    /// Fast recovery begins: one window reduction for the episode.
    fn enter_recovery(&mut self) {
        let mss = self.mss();
        let flight = (self.flight() as f64).min(self.cwnd);
        self.ssthresh = match &mut self.cc {
            Cc::Cubic(c) => {
                c.on_congestion(self.cwnd / mss);
                flight * CUBIC_BETA
            }
            Cc::NewReno => flight / 2.0,
        }
        .max(2.0 * mss);
        self.cwnd = self.ssthresh;
        if let Some(head) = self.segs.front_mut() {
            head.lost = true;
        }
        self.rtx_head = true;
        self.phase = Phase::Recovery {
            recover: self.snd_nxt,
        };
        self.recoveries += 1;
    }

    /// `delivered` new bytes arrived outside fast recovery: slow start or avoidance.
    fn grow(&mut self, now: Instant, delivered: u64) {
        if !self.cwnd_limited {
            return;
        }
        let mss = self.mss();
        let mut acked = delivered as f64;
        if self.cwnd < self.ssthresh {
            let step = acked.min(self.ssthresh - self.cwnd);
            self.cwnd += step;
            acked -= step;
            if acked <= 0.0 {
                return;
            }
        }
        self.cwnd = match &mut self.cc {
            Cc::NewReno => self.cwnd + mss * acked / self.cwnd,
            Cc::Cubic(c) => {
                let rtt = self.srtt.unwrap_or_default().as_secs_f64();
                c.grow(now, self.cwnd / mss, acked / mss, rtt) * mss
            }
        };
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
        self.rto = (self.srtt.unwrap_or_default() + (self.rttvar * 4).max(MIN_RTO)).min(MAX_RTO);
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.segs.is_empty() {
            self.rto_deadline = None;
            return;
        }
        self.rtos += 1;
        let mss = self.mss();
        if self.phase == Phase::Open {
            // One reduction per episode: none if recovery or an RTO already reduced.
            let flight = (self.flight() as f64).min(self.cwnd);
            self.ssthresh = match self.cc {
                Cc::Cubic(_) => flight * CUBIC_BETA,
                Cc::NewReno => flight / 2.0,
            }
            .max(2.0 * mss);
        }
        if let Cc::Cubic(c) = &mut self.cc {
            c.on_timeout();
        }
        self.cwnd = mss;
        for s in &mut self.segs {
            s.sacked = false;
            s.lost = true;
            s.retx = false;
        }
        self.delivered_orders = [0; DUP_THRESH];
        self.pipe = 0;
        self.dupacks = 0;
        self.rtx_head = false;
        self.phase = Phase::Loss {
            recover: self.snd_nxt,
        };
        self.rto = (self.rto * 2).min(MAX_RTO);
        self.rto_deadline = Some(now + self.rto);
    }

    /// Sends segment `i` of the scoreboard again.
    fn retransmit(&mut self, now: Instant, i: usize) -> (u64, usize) {
        self.sends += 1;
        let s = &mut self.segs[i];
        s.retx = true;
        s.sends += 1;
        s.order = self.sends;
        s.sent = now;
        self.pipe += s.len;
        self.retransmits += 1;
        if i == 0 {
            self.rto_deadline = Some(now + self.rto);
        }
        (s.seq, s.len as usize)
    }

    /// The next segment to send: (sequence, length).
    fn next_segment(&mut self, now: Instant) -> Option<(u64, usize)> {
        if !self.started {
            return None;
        }
        if std::mem::take(&mut self.rtx_head)
            && self.segs.front().is_some_and(|s| !s.sacked && !s.retx)
        {
            return Some(self.retransmit(now, 0));
        }
        if self.pipe as f64 + self.mss() > self.cwnd {
            self.cwnd_limited = true;
            return None;
        }
        // NextSeg rule 1: the first lost segment not yet resent.
        if let Some(i) = self
            .segs
            .iter()
            .position(|s| s.lost && !s.retx && !s.sacked)
        {
            return Some(self.retransmit(now, i));
        }
        // Rule 2: new data.
        let limit = self.limit(now);
        if self.snd_nxt < limit {
            let seq = self.snd_nxt;
            let len = (limit - seq).min(self.spec.mss as u64);
            self.sends += 1;
            self.segs.push_back(Seg {
                seq,
                len,
                sacked: false,
                lost: false,
                retx: false,
                sends: 1,
                order: self.sends,
                sent: now,
            });
            self.snd_nxt += len;
            self.pipe += len;
            self.cwnd_limited = false;
            self.rto_deadline.get_or_insert(now + self.rto);
            return Some((seq, len as usize));
        }
        // Rule 3 (in recovery): a hole below SACKed data not yet deemed lost.
        if matches!(self.phase, Phase::Recovery { .. }) {
            if let Some(top) = self.segs.iter().rposition(|s| s.sacked) {
                if let Some(i) = self.segs.range(..top).position(|s| !s.sacked && !s.retx) {
                    return Some(self.retransmit(now, i));
                }
            }
        }
        self.cwnd_limited = false;
        None
    }
}

/// A segment's share of RFC 6675 pipe.
fn pipe_of(s: &Seg) -> u64 {
    if s.sacked {
        return 0;
    }
    let mut n = 0;
    if !s.lost {
        n += s.len;
    }
    if s.retx {
        n += s.len;
    }
    n
}

impl TcpReceiver {
    /// A data segment `[seq, seq + len)` arrived; the next ACK is due.
    fn on_data(&mut self, from: SocketAddr, seq: u64, len: u64) {
        let end = seq + len;
        let mut first = None;
        if end > self.rcv_nxt && len > 0 {
            let (s, e) = insert_range(&mut self.ranges, seq.max(self.rcv_nxt), end);
            if s <= self.rcv_nxt {
                self.ranges.remove(&s);
                self.rcv_nxt = e;
            } else {
                first = Some((s, e));
            }
        }
        // RFC 2018: the block with the new segment, then the latest reported ones.
        let mut blocks: Vec<(u64, u64)> = first.into_iter().collect();
        for &(bs, _) in &self.blocks {
            if blocks.len() == MAX_SACK_BLOCKS {
                break;
            }
            if let Some((&rs, &re)) = self.ranges.range(..=bs).next_back() {
                if re > bs && !blocks.contains(&(rs, re)) {
                    blocks.push((rs, re));
                }
            }
        }
        self.blocks = blocks;
        self.pending_ack = Some(from);
    }
}

/// Adds `[start, end)` to disjoint `ranges`, merging; returns the range now holding it.
fn insert_range(ranges: &mut BTreeMap<u64, u64>, start: u64, end: u64) -> (u64, u64) {
    let (mut s, mut e) = (start, end);
    if let Some((&ps, &pe)) = ranges.range(..=s).next_back() {
        if pe >= s {
            s = ps;
            e = e.max(pe);
            ranges.remove(&ps);
        }
    }
    while let Some((&ns, &ne)) = ranges.range(s..).next() {
        if ns > e {
            break;
        }
        e = e.max(ne);
        ranges.remove(&ns);
    }
    ranges.insert(s, e);
    (s, e)
}

fn header(kind: u8, seq: u64, len: u32, buf: &mut [u8]) {
    buf[0] = b'T';
    buf[1] = kind;
    buf[2..10].copy_from_slice(&seq.to_be_bytes());
    buf[10..14].copy_from_slice(&len.to_be_bytes());
    buf[14..HEADER].fill(0);
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Node for TcpNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        if data.len() < HEADER || data[0] != b'T' {
            return;
        }
        let seq = read_u64(&data[2..10]);
        let len = u64::from(u32::from_be_bytes(
            data[10..14].try_into().expect("4 bytes"),
        ));
        match data[1] {
            DATA => {
                if let Some(r) = &mut self.receiver {
                    r.on_data(from, seq, len);
                }
            }
            ACK => {
                if let Some(s) = &mut self.sender {
                    let n = usize::from(data[14])
                        .min(MAX_SACK_BLOCKS)
                        .min((data.len() - HEADER) / SACK_BLOCK);
                    let mut blocks = [(0u64, 0u64); MAX_SACK_BLOCKS];
                    for (i, b) in blocks.iter_mut().enumerate().take(n) {
                        let at = HEADER + i * SACK_BLOCK;
                        *b = (read_u64(&data[at..]), read_u64(&data[at + 8..]));
                    }
                    s.on_ack(now, seq, &blocks[..n]);
                }
            }
            _ => {}
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let s = self.sender.as_ref()?;
        let start = (!s.started).then_some(s.spec.start);
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
            if !s.started && now >= s.spec.start {
                s.started = true;
                if s.spec.bytes == Some(0) {
                    s.finished.get_or_insert(now);
                }
            }
            if s.rto_deadline.is_some_and(|d| d <= now) {
                s.on_timeout(now);
            }
            if s.spec.stop.is_some_and(|t| now >= t) {
                s.finished.get_or_insert(now);
            }
        }
    }

    fn max_datagram(&self) -> usize {
        let data = self.sender.as_ref().map_or(0, |s| HEADER + s.spec.mss);
        data.max(HEADER + MAX_SACK_BLOCKS * SACK_BLOCK)
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        if let Some(r) = &mut self.receiver {
            // The engine drains output after every arrival: one ACK per segment.
            if let Some(to) = r.pending_ack.take() {
                header(ACK, r.rcv_nxt, 0, buf);
                buf[14] = r.blocks.len() as u8;
                for (i, &(s, e)) in r.blocks.iter().enumerate() {
                    let at = HEADER + i * SACK_BLOCK;
                    buf[at..at + 8].copy_from_slice(&s.to_be_bytes());
                    buf[at + 8..at + 16].copy_from_slice(&e.to_be_bytes());
                }
                return Some((self.addr, to, HEADER + r.blocks.len() * SACK_BLOCK));
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
            out.push(FlowSample::receiver(r.flow, r.rcv_nxt, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::link::LossModel;
    use crate::scenario::{self, FlowKind, FlowSpec, Scenario};

    const MSS: usize = 1380;
    const RATE_BPS: u64 = 10_000_000;
    const DELAY: Duration = Duration::from_millis(25);
    const T0: Instant = Instant::from_millis(1_000);

    fn addr(net: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, net, 0, 1)), 6881)
    }

    fn spec(bytes: u64, cc: TcpCc) -> TcpSpec {
        TcpSpec {
            flow: 0,
            remote: addr(1),
            bytes: Some(bytes),
            start: T0,
            stop: None,
            mss: MSS,
            cc,
        }
    }

    /// A datagram on the test wire: (arrival, order, for the receiver, bytes).
    type InFlight = (Instant, u64, bool, Vec<u8>);

    /// A sender and a receiver joined by a 10 Mbit/s, 25 ms link with an unbounded
    /// queue, and a 25 ms return path; `drop(segment index, nth transmission)` says
    /// which data segments the link loses.
    struct Wire {
        now: Instant,
        sender: TcpNode,
        receiver: TcpNode,
        flying: BinaryHeap<Reverse<InFlight>>,
        order: u64,
        busy_until: Instant,
        sends: HashMap<u64, u32>,
        drop: Box<dyn FnMut(u64, u32) -> bool>,
        /// Before each event: (cwnd, flight, recoveries) of the sender.
        trace: Vec<(f64, u64, u64)>,
    }

    impl Wire {
        fn new(spec: TcpSpec, drop: impl FnMut(u64, u32) -> bool + 'static) -> Wire {
            Wire {
                now: Instant::ZERO,
                sender: TcpNode::sender(addr(0), spec),
                receiver: TcpNode::receiver(addr(1), 0),
                flying: BinaryHeap::new(),
                order: 0,
                busy_until: Instant::ZERO,
                sends: HashMap::new(),
                drop: Box::new(drop),
                trace: Vec::new(),
            }
        }

        fn s(&self) -> &TcpSender {
            self.sender.sender.as_ref().expect("sender")
        }

        fn r(&self) -> &TcpReceiver {
            self.receiver.receiver.as_ref().expect("receiver")
        }

        fn push(&mut self, at: Instant, to_receiver: bool, data: Vec<u8>) {
            self.order += 1;
            self.flying
                .push(Reverse((at, self.order, to_receiver, data)));
        }

        fn flush(&mut self) {
            let mut buf = vec![0u8; 65_536];
            while let Some((_, _, n)) = self.sender.poll_transmit(self.now, &mut buf) {
                let seq = read_u64(&buf[2..10]);
                let nth = self.sends.entry(seq).or_insert(0);
                *nth += 1;
                let nth = *nth;
                if (self.drop)(seq / MSS as u64, nth) {
                    continue;
                }
                let bits = (n + 28) as u64 * 8;
                let ser = Duration::from_nanos(bits * 1_000_000_000 / RATE_BPS);
                self.busy_until = self.busy_until.max(self.now) + ser;
                self.push(self.busy_until + DELAY, true, buf[..n].to_vec());
            }
            while let Some((_, _, n)) = self.receiver.poll_transmit(self.now, &mut buf) {
                self.push(self.now + DELAY, false, buf[..n].to_vec());
            }
        }

        /// Runs until nothing is left to do or `end`.
        fn run(&mut self, end: Instant) {
            self.flush();
            loop {
                let arrival = self.flying.peek().map(|r| r.0 .0);
                let timer = self.sender.poll_timeout();
                let Some(t) = [arrival, timer].into_iter().flatten().min() else {
                    break;
                };
                if t > end {
                    break;
                }
                self.now = self.now.max(t);
                let s = self.s();
                self.trace
                    .push((s.cwnd, s.snd_nxt - s.snd_una, s.recoveries));
                if arrival == Some(t) {
                    let Reverse((_, _, to_receiver, data)) = self.flying.pop().expect("peeked");
                    let (node, from, to) = if to_receiver {
                        (&mut self.receiver, addr(0), addr(1))
                    } else {
                        (&mut self.sender, addr(1), addr(0))
                    };
                    node.handle_datagram(self.now, from, to, &data);
                } else {
                    self.sender.handle_timeout(self.now);
                }
                self.flush();
            }
        }
    }

    /// RFC 9438 eq. 1 and 2 with C = 0.4, β = 0.7: after a loss at W_max = 100
    /// segments, cwnd_epoch = 70, K = ∛(30 / 0.4) = ∛75 = 4.2172 s, and
    /// W(0) = 70, W(1) = 86.68, W(2) = 95.64, W(K) = 100, W(5) = 100.19, W(10) = 177.35.
    #[test]
    fn cubic_window_function_matches_rfc9438() {
        let k = Cubic::k_for(100.0, 100.0 * CUBIC_BETA);
        assert!((k - 4.217_163).abs() < 1e-5, "K = {k}");
        let c = Cubic {
            w_max: 100.0,
            k,
            ..Cubic::default()
        };
        for (t, w) in [
            (0.0, 70.0),
            (1.0, 86.680_76),
            (2.0, 95.640_34),
            (k, 100.0),
            (5.0, 100.191_90),
            (10.0, 177.354_00),
        ] {
            assert!((c.w_cubic(t) - w).abs() < 1e-4, "W({t}) = {}", c.w_cubic(t));
        }
        // W_max = 1000 segments: K = ∛(300 / 0.4) = 9.0856 s.
        assert!((Cubic::k_for(1000.0, 700.0) - 9.085_603).abs() < 1e-5);
        // Above W_max there is no plateau to reach.
        assert_eq!(Cubic::k_for(100.0, 120.0), 0.0);
        // α_cubic = 3 (1 − β) / (1 + β) = 0.5294 below W_max, 1 from there on.
        let mut c = Cubic {
            w_max: 100.0,
            w_est: 70.0,
            ..Cubic::default()
        };
        assert!((c.alpha() - 0.529_412).abs() < 1e-6);
        c.w_est = 100.0;
        assert_eq!(c.alpha(), 1.0);
    }

    /// Fast convergence (RFC 9438 4.7): a loss below the previous W_max lowers it to
    /// cwnd (1 + β) / 2; a loss above sets it to cwnd. An RTO starts the next epoch
    /// with K = 0 and W_max = cwnd (4.8).
    #[test]
    fn cubic_fast_convergence_and_timeout() {
        let mut c = Cubic {
            w_max: 100.0,
            ..Cubic::default()
        };
        c.on_congestion(80.0);
        assert!((c.w_max - 68.0).abs() < 1e-9);
        c.on_congestion(120.0);
        assert_eq!(c.w_max, 120.0);
        // The next epoch starts at cwnd = 84 segments: K = ∛(36 / 0.4) = ∛90.
        let w = c.grow(T0, 84.0, 1.0, 0.1);
        assert!((c.k - 90f64.cbrt()).abs() < 1e-9, "K = {}", c.k);
        assert!(w >= 84.0);
        c.on_timeout();
        c.grow(T0 + Duration::from_secs(9), 20.0, 1.0, 0.1);
        assert_eq!((c.k, c.w_max), (0.0, 20.0));
    }

    /// Driven by one ACK per segment with a 100 ms RTT, CUBIC's window after a loss at
    /// W_max = 100 follows W(t + RTT): back near W_max at t = K, well above at 2K,
    /// and never more than two segments below W(t) or W_est (Reno-friendly region).
    #[test]
    fn cubic_growth_follows_the_window_function() {
        let mut c = Cubic {
            w_max: 100.0,
            ..Cubic::default()
        };
        let rtt = 0.1;
        let mut cwnd = 70.0;
        let mut now = T0;
        let k = Cubic::k_for(100.0, 70.0);
        let mut at_k = None;
        while (now - T0).as_secs_f64() < 2.0 * k {
            // One RTT: one ACK per segment of the window.
            let n = cwnd as usize;
            for _ in 0..n {
                cwnd = c.grow(now, cwnd, 1.0, rtt);
                let t = (now - T0).as_secs_f64();
                let floor = c.w_cubic(t).max(c.w_est) - 2.0;
                assert!(
                    cwnd >= floor,
                    "t {t}: cwnd {cwnd}, W(t) and W_est - 2: {floor}"
                );
            }
            now += Duration::from_secs_f64(rtt);
            if at_k.is_none() && (now - T0).as_secs_f64() >= k {
                at_k = Some(cwnd);
            }
        }
        let at_k = at_k.expect("reached K");
        assert!((97.0..=103.0).contains(&at_k), "cwnd at K: {at_k}");
        let expect = c.w_cubic(2.0 * k);
        assert!(
            (cwnd - expect).abs() / expect < 0.05,
            "cwnd at 2K {cwnd}, W(2K) {expect}"
        );
    }

    /// Small windows and short RTTs are the Reno-friendly region (RFC 9438 4.3):
    /// W_est grows by α = 0.53 segments per RTT up to W_max, then by 1, and cwnd
    /// follows it rather than the slower W_cubic(t).
    #[test]
    fn cubic_reno_friendly_region() {
        let mut c = Cubic {
            w_max: 10.0,
            ..Cubic::default()
        };
        let rtt = 0.01;
        let mut cwnd = 7.0;
        let mut now = T0;
        for _ in 0..100 {
            let n = cwnd as usize;
            for _ in 0..n {
                cwnd = c.grow(now, cwnd, 1.0, rtt);
            }
            now += Duration::from_secs_f64(rtt);
        }
        assert_eq!(cwnd, c.w_est);
        assert!(c.w_cubic(1.0) < 10.0);
        // About 6 RTTs at α = 0.53 to reach W_max = 10, then ~94 at α = 1.
        assert!((100.0..=106.0).contains(&cwnd), "cwnd {cwnd}");
    }

    /// RFC 2018: the first block holds the segment that triggered the ACK, then the
    /// most recently reported blocks; at most three.
    #[test]
    fn receiver_reports_sack_blocks_most_recent_first() {
        let l = MSS as u64;
        let mut r = TcpReceiver {
            flow: 0,
            rcv_nxt: 0,
            ranges: BTreeMap::new(),
            blocks: Vec::new(),
            pending_ack: None,
        };
        for i in [0, 1, 3, 5, 7, 9] {
            r.on_data(addr(0), i * l, l);
        }
        assert_eq!(r.rcv_nxt, 2 * l);
        assert_eq!(r.blocks, [(9 * l, 10 * l), (7 * l, 8 * l), (5 * l, 6 * l)]);
        // Segment 4 joins [3, 4) and [5, 6).
        r.on_data(addr(0), 4 * l, l);
        assert_eq!(r.blocks, [(3 * l, 6 * l), (9 * l, 10 * l), (7 * l, 8 * l)]);
        // Segment 2 fills the hole: [3, 6) is delivered and no longer reported.
        r.on_data(addr(0), 2 * l, l);
        assert_eq!(r.rcv_nxt, 6 * l);
        assert_eq!(r.blocks, [(9 * l, 10 * l), (7 * l, 8 * l)]);
        // A duplicate changes nothing but is acknowledged.
        r.pending_ack = None;
        r.on_data(addr(0), 0, l);
        assert_eq!(r.blocks, [(9 * l, 10 * l), (7 * l, 8 * l)]);
        assert!(r.pending_ack.is_some());
        // The ACK on the wire: header, count, blocks.
        let mut node = TcpNode {
            addr: addr(1),
            sender: None,
            receiver: Some(r),
        };
        let mut buf = [0u8; 256];
        let (_, to, n) = node.poll_transmit(T0, &mut buf).expect("an ACK");
        assert_eq!((to, n), (addr(0), HEADER + 2 * SACK_BLOCK));
        assert_eq!((buf[1], read_u64(&buf[2..]), buf[14]), (ACK, 6 * l, 2));
        assert_eq!(read_u64(&buf[HEADER..]), 9 * l);
        assert_eq!(read_u64(&buf[HEADER + 8..]), 10 * l);
    }

    /// Five segments lost in one window (slow start's second round): SACK recovery
    /// resends exactly those, in one recovery episode with one window reduction
    /// (β = 0.7 for CUBIC, 1/2 for NewReno), without an RTO; everything arrives.
    #[test]
    fn several_losses_in_one_window_recover_without_rto() {
        for (cc, beta) in [(TcpCc::Cubic, CUBIC_BETA), (TcpCc::NewReno, 0.5)] {
            let bytes = 400 * MSS as u64;
            let lost = [12, 14, 15, 17, 20];
            let mut w = Wire::new(spec(bytes, cc), move |seg, nth| {
                nth == 1 && lost.contains(&seg)
            });
            w.run(T0 + Duration::from_secs(30));
            let s = w.s();
            assert_eq!(w.r().rcv_nxt, bytes, "{cc:?}: everything delivered");
            assert!(s.finished.is_some(), "{cc:?}");
            assert_eq!(s.rtos, 0, "{cc:?}: no RTO");
            assert_eq!(s.recoveries, 1, "{cc:?}: one recovery episode");
            assert_eq!(s.retransmits, 5, "{cc:?}: only the lost segments resent");
            // The reduction: ssthresh = β × FlightSize when recovery began.
            let i = w.trace.iter().position(|t| t.2 == 1).expect("recovery");
            let (cwnd, flight, _) = w.trace[i - 1];
            let expect = beta * (flight as f64).min(cwnd);
            assert!((s.ssthresh - expect).abs() < 1e-6, "{cc:?}: {}", s.ssthresh);
            assert!(s.cwnd > s.ssthresh, "{cc:?}: grew again after recovery");
        }
    }

    /// The retransmission of a lost segment is lost too: it is detected when three
    /// segments sent after it arrive, and resent without waiting for the RTO.
    #[test]
    fn lost_retransmission_is_resent_without_rto() {
        let bytes = 400 * MSS as u64;
        let mut w = Wire::new(spec(bytes, TcpCc::Cubic), |seg, nth| {
            (seg == 12 && nth <= 2) || (seg == 15 && nth == 1)
        });
        w.run(T0 + Duration::from_secs(30));
        let s = w.s();
        assert_eq!(w.r().rcv_nxt, bytes);
        assert_eq!(s.rtos, 0);
        assert_eq!(s.recoveries, 1);
        assert_eq!(s.lost_retransmits, 1);
        assert_eq!(s.retransmits, 3);
    }

    /// With the last two segments lost nothing is SACKed above them: the RTO is the
    /// last resort, and the transfer still completes.
    #[test]
    fn tail_loss_falls_back_to_rto() {
        let bytes = 100 * MSS as u64;
        let mut w = Wire::new(spec(bytes, TcpCc::Cubic), |seg, nth| nth == 1 && seg >= 98);
        w.run(T0 + Duration::from_secs(30));
        let s = w.s();
        assert_eq!(w.r().rcv_nxt, bytes);
        assert_eq!(s.rtos, 1);
        assert_eq!(s.retransmits, 2);
        assert_eq!(s.recoveries, 0);
    }

    /// RFC 6298: the first RTO is 1 s and doubles on each expiry (1 + 2 + 4 s), and
    /// Karn's rule takes no RTT sample from a retransmitted segment.
    #[test]
    fn rto_backs_off_and_karn_ignores_retransmissions() {
        let mut w = Wire::new(spec(MSS as u64, TcpCc::Cubic), |_, nth| nth <= 3);
        w.run(T0 + Duration::from_secs(30));
        let s = w.s();
        assert_eq!(w.r().rcv_nxt, MSS as u64);
        assert_eq!(s.rtos, 3);
        let done = (s.finished.expect("finished") - T0).as_secs_f64();
        // 7 s of timeouts, then one round trip (50 ms plus serialisation).
        assert!((7.05..7.06).contains(&done), "finished after {done} s");
        assert_eq!(s.srtt, None, "no sample from a retransmitted segment");
        assert_eq!(s.rto, Duration::from_secs(8), "backed-off RTO kept");
    }

    /// Nothing leaves before the start timer fires: in a scenario the routes do not
    /// exist yet when nodes are added (the old model lost its initial window to that
    /// and waited for a 1 s RTO).
    #[test]
    fn nothing_is_sent_before_the_start_timer() {
        let mut node = TcpNode::sender(addr(0), spec(10 * MSS as u64, TcpCc::Cubic));
        let mut buf = [0u8; 2048];
        assert!(node.poll_transmit(T0, &mut buf).is_none());
        assert_eq!(node.poll_timeout(), Some(T0));
        node.handle_timeout(T0);
        let mut n = 0;
        while node.poll_transmit(T0, &mut buf).is_some() {
            n += 1;
        }
        assert_eq!(n, INITIAL_WINDOW, "the initial window goes out at once");
    }

    fn tcp_scenario(cc: &str, bytes: Option<u64>) -> Scenario {
        let mut s = Scenario {
            duration_s: 30.0,
            flows: vec![FlowSpec {
                kind: FlowKind::Tcp,
                bytes,
                tcp_cc: cc.into(),
                ..FlowSpec::default()
            }],
            ..Scenario::default()
        };
        s.name = format!("tcp-{cc}");
        s
    }

    /// 2 % random loss: every byte is delivered, and the same seed gives the same run
    /// (another seed a different one).
    #[test]
    fn lossy_transfer_completes_and_is_deterministic() {
        for cc in ["cubic", "newreno"] {
            let bytes = 3_000_000;
            let mut s = tcp_scenario(cc, Some(bytes));
            s.duration_s = 120.0;
            s.forward.loss = LossModel::Bernoulli { p: 0.02 };
            let a = scenario::run(&s, false).expect("runs");
            let b = scenario::run(&s, false).expect("runs");
            assert_eq!(a.flows[0].delivered, bytes, "{cc}");
            assert!(a.flows[0].finished.is_some(), "{cc}");
            assert!(a.flows[0].retransmits >= 30, "{cc}: losses were repaired");
            assert_eq!(
                a.recorder.flows, b.recorder.flows,
                "{cc}: same seed, same run"
            );
            assert_eq!(a.flows[0].finished, b.flows[0].finished);
            s.seed = 2;
            let c = scenario::run(&s, false).expect("runs");
            assert_ne!(a.recorder.flows, c.recorder.flows, "{cc}: the seed matters");
        }
    }

    /// A lone CUBIC flow on the default 10 Mbit/s, 50 ms, 250 kB drop-tail bottleneck:
    /// no RTO (cwnd never falls back to one segment, nor below the initial window), and
    /// goodput above 9 Mbit/s of the 9.68 Mbit/s the payload share allows.
    #[test]
    fn lone_cubic_flow_fills_the_bottleneck_without_rto() {
        let r = scenario::run(&tcp_scenario("cubic", None), false).expect("runs");
        assert!(r.flows[0].goodput_bps > 9e6, "{}", r.flows[0].goodput_bps);
        let min_cwnd = r.recorder.flows[&0].iter().map(|p| p.cwnd).min();
        assert!(
            min_cwnd >= Some((INITIAL_WINDOW * MSS) as u64),
            "{min_cwnd:?}"
        );
        assert!(
            r.links[scenario::FORWARD].drops_queue > 0,
            "it did fill the queue"
        );
    }

    #[test]
    fn congestion_control_names() {
        assert_eq!("cubic".parse(), Ok(TcpCc::Cubic));
        assert_eq!(TcpSpec::parse_cc("newreno"), Ok(TcpCc::NewReno));
        assert_eq!(TcpCc::default().name(), "cubic");
        assert_eq!(FlowSpec::default().tcp_cc, "cubic");
        let text = "[[flows]]\nkind = \"tcp\"\ntcp_cc = \"bbr\"\n";
        let e = Scenario::from_toml(text).expect_err("unknown tcp_cc");
        assert_eq!(e, "flows[0]: unknown tcp_cc \"bbr\" (cubic or newreno)");
        let ok = Scenario::from_toml("[[flows]]\nkind = \"tcp\"\ntcp_cc = \"newreno\"\n");
        assert_eq!(ok.map(|s| s.flows[0].tcp_cc.clone()), Ok("newreno".into()));
    }
}
