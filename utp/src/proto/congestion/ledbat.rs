//! LEDBAT, "Low Extra Delay Background Transport" (RFC 6817), as BEP 29 applies it.
//!
//! LEDBAT keeps the queue it builds at the bottleneck near a target delay: it measures
//! the one-way delay of its packets, takes the smallest delay ever seen (the *base
//! delay*) as the delay of an empty queue, and treats anything above it as *queuing
//! delay*. Below the target the window grows, above it the window shrinks, in
//! proportion to the distance from the target. The window is counted in bytes.
//!
//! # Delay arithmetic
//!
//! A delay sample ([`AckEvent::delay_sample`]) is the peer's receive clock minus our
//! send clock, modulo 2³². The two clocks are unrelated, so a sample's absolute value
//! means nothing and may sit anywhere in the `u32` range, including across the wrap
//! from `u32::MAX` to 0. Samples are therefore only ever compared in the wrapping
//! sense: `a` is below `b` iff `b.wrapping_sub(a)`, read as an `i32`, is positive, and
//! the queuing delay is `(current − base)` read as an `i32`, floored at zero.
//!
//! # Base delay and clock drift
//!
//! As RFC 6817 describes, the base delay is the minimum over a history of
//! [`LedbatConfig::base_history`] buckets, each holding the minimum seen during
//! [`LedbatConfig::base_bucket`] (one minute). The two clocks drift apart:
//!
//! - If the peer's clock runs *slow* relative to ours, samples creep *down*: a lower
//!   sample replaces the base at once, so the base follows immediately.
//! - If the peer's clock runs *fast*, samples creep *up*, and the old minimum would
//!   make the drift look like a growing queue. Each bucket is dropped once the whole
//!   history has passed since it closed (or when more than `base_history` buckets
//!   exist), so a base that is too low ages out after `base_history` buckets (minutes).
//!   A drift of 10 ms per 325 s (which libutp's authors consider possible) thus
//!   inflates the estimated queuing delay by at most about 20 ms with ten minutes of
//!   history, well below the 100 ms target.
//!
//! # Robustness
//!
//! The delay samples come from the peer and may be garbage. A sample further from the
//! current base than [`LedbatConfig::delay_reset_threshold`] cannot be a queuing
//! delay: it restarts the history rather than letting one crafted value become a base
//! that would make every later sample look like a huge queue. As libutp does, the
//! queuing delay is also capped by the round-trip time of the acknowledged packet,
//! which the one-way delay cannot exceed. All arithmetic saturates and floating-point
//! results that are not finite are discarded, so no input (not even a nonsensical
//! configuration) makes the controller panic or leave `[0, max_window]`; with a sane
//! configuration the window never drops below one MSS.

use core::time::Duration;
use std::collections::VecDeque;

use super::{AckEvent, CongestionController};
use crate::time::{duration_micros, Instant};

/// The parameters of [`Ledbat`], each documented with where its value comes from.
///
/// [`LedbatConfig::default`] is [`LedbatConfig::rfc6817`] with BEP 29's growth of at
/// most 3000 bytes per RTT (see "Growth" below); [`LedbatConfig::libutp`] and
/// [`LedbatConfig::libtorrent`] reproduce those implementations' choices. Change
/// individual fields on one of these to tune:
///
/// ```
/// use std::time::Duration;
/// use utp::proto::congestion::{CongestionConfig, LedbatConfig};
///
/// let mut cfg = LedbatConfig::libutp();
/// cfg.target = Duration::from_millis(50);
/// let mut config = utp::Config::default();
/// config.congestion = CongestionConfig::Ledbat(cfg);
/// assert!(config.validate().is_ok());
/// ```
///
/// # Slow start
///
/// Slow start is on by default although RFC 6817's pseudocode has none: with GAIN 1
/// the window grows by about one MSS per round trip, so a 100 Mbit/s × 50 ms path
/// (a bandwidth-delay product of about 450 packets) would take about 450 RTTs, some
/// 22 seconds, to fill. libutp and libtorrent both start with a TCP-like slow start
/// (the window doubles every round trip) that ends as the queuing delay nears the
/// target, so a flow reaches the target delay within a few RTTs. The delay-based exit
/// keeps slow start from overshooting the queue by much; it also ends on the first loss
/// or timeout.
///
/// # Growth
///
/// RFC 6817 caps GAIN at 1: below the target the window grows at most one MSS per
/// RTT. BEP 29, which defines uTP, grows it by `MAX_CWND_INCREASE_BYTES_PER_RTT`
/// scaled by the distance to the target, and every deployed uTP (libutp, libtorrent)
/// uses 3000 bytes per RTT, about two packets. The default follows BEP 29 and the
/// field: under random loss the window recovers twice as fast (measured in the
/// benchmark grid: 1.48 times libutp's goodput at 1 % loss and 50 ms RTT, against 1.04
/// with GAIN 1), while the delay response, and with it yielding to TCP, is unchanged
/// (the simulator's evidence tests). [`LedbatConfig::rfc6817`] keeps the RFC's cap.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LedbatConfig {
    /// TARGET, the queuing delay LEDBAT aims for. RFC 6817: "TARGET MUST be 100
    /// milliseconds or less"; BEP 29: `CCONTROL_TARGET` is 100 ms. Default 100 ms.
    pub target: Duration,
    /// GAIN for increases: how fast the window grows below the target. RFC 6817:
    /// "GAIN MUST be set to 1 or less". With `max_increase_per_rtt` set, growth at zero
    /// queuing delay is `gain × max_increase_per_rtt` bytes per RTT; otherwise it is
    /// `gain × MSS`. Default 1.0.
    pub gain: f64,
    /// GAIN for decreases, when the queuing delay is above the target. RFC 6817 allows
    /// the gain for decrease to be larger than the gain for increase, so that LEDBAT
    /// yields faster. Default 1.0.
    pub decrease_gain: f64,
    /// Growth of the window per round trip at zero queuing delay, in bytes, as
    /// libutp (`MAX_CWND_INCREASE_BYTES_PER_RTT`, 3000), libtorrent (`utp_gain_factor`,
    /// 3000) and BEP 29 (`MAX_CWND_INCREASE_PACKETS_PER_RTT` in
    /// `scaled_gain = MAX_CWND_INCREASE_PACKETS_PER_RTT * delay_factor * window_factor`)
    /// express it. When set, it replaces the MSS in RFC 6817's formula and is also a hard
    /// cap: no ACK grows the window by more than `cap × bytes_acked / cwnd`, so the
    /// window grows at most this much per RTT outside slow start, whatever `gain` is.
    /// `None`: RFC 6817's formula alone (at most `gain × MSS` per RTT). Default `None`.
    pub max_increase_per_rtt: Option<usize>,
    /// BASE_HISTORY, the number of buckets of base-delay history. RFC 6817:
    /// "BASE_HISTORY SHOULD be 10" (minutes). Values below 1 count as 1. Default 10.
    pub base_history: usize,
    /// How long one bucket of base-delay history lasts. RFC 6817 keeps one minimum per
    /// minute. Default 60 s.
    pub base_bucket: Duration,
    /// CURRENT_FILTER, how many recent delay samples the current delay is the minimum
    /// of. RFC 6817: the filter should use at least 4 samples per RTT and no
    /// sample older than one RTT; samples older than one smoothed RTT are dropped here,
    /// keeping at least the newest. Values below 1 count as 1. Default 4.
    pub current_filter: usize,
    /// INIT_CWND, the initial window in MSS units. RFC 6817: "INIT_CWND and MIN_CWND
    /// SHOULD both be 2". Default 2.
    pub init_window_packets: usize,
    /// MIN_CWND, the smallest window in MSS units after a decrease. RFC 6817: MIN_CWND
    /// SHOULD be 2. A timeout still sets the window to one MSS (RFC 6817:
    /// `cwnd = 1 * MSS`) until the next ACK. Default 2.
    pub min_window_packets: usize,
    /// An absolute floor of the window in bytes, applied together with
    /// `min_window_packets` (the larger wins). libutp's `MIN_WINDOW_SIZE` is 10 bytes
    /// (it paces sub-packet windows). Default 0.
    pub min_window_bytes: usize,
    /// The largest window, in bytes. The send buffer bounds the flight size anyway; this
    /// keeps the window from growing without bound when the path never pushes back.
    /// Default 4 MiB.
    pub max_window: usize,
    /// ALLOWED_INCREASE, in MSS units: the window may grow only up to the flight size
    /// (reported with each ACK) plus this many MSS, so it grows only while it is
    /// actually used. RFC 6817: "ALLOWED_INCREASE SHOULD be 1, and it MUST be
    /// greater than 0". Default 1.0.
    pub allowed_increase_packets: f64,
    /// Whether a connection starts in slow start: see the type's documentation for why
    /// this is on by default. Default true.
    pub slow_start: bool,
    /// Slow start ends when the queuing delay exceeds this fraction of the target.
    /// libutp: `our_delay > target * 0.9`. Default 0.9.
    pub slow_start_exit_fraction: f64,
    /// Factor the window is multiplied by when slow start ends because of delay. The
    /// delay samples lag one round trip, during which slow start doubled the window, so
    /// leaving it as it is overshoots the target by about as much again (measured in
    /// the simulator: a 10 Mbit/s, 50 ms path peaked at 158 ms of queue for a 100 ms
    /// target and took 30 s to drain at GAIN 1). 0.5 undoes the last doubling, as
    /// TCP's `ssthresh = cwnd / 2` does. libutp and libtorrent keep the window (1.0).
    /// Default 0.5.
    pub slow_start_exit_reduction: f64,
    /// Factor the window is multiplied by on loss, at most once per round trip.
    /// BEP 29: "max_window *= 0.5"; RFC 6817 halves at most once per RTT.
    /// Values are clamped to [0, 1]. Default 0.5.
    pub loss_reduction: f64,
    /// Loss with almost no queue of ours at the bottleneck is taken as random (a
    /// wireless or otherwise lossy link), not as congestion, and reduces the window by
    /// [`LedbatConfig::random_loss_reduction`] only. "Almost no queue" is TCP Veno's
    /// test (Fu and Liew, 2003; Linux `tcp_veno`): the packets this flow keeps queued,
    /// `cwnd × queuing_delay / RTT`, number fewer than this. A queue that overflows
    /// holds at least this many of our packets, so congestion still halves the window;
    /// LEDBAT's delay response is unaffected. 0 disables the test (every loss is
    /// congestion, as in RFC 6817, libutp and libtorrent). Default 3 (Veno's β).
    pub random_loss_backlog_packets: f64,
    /// Factor the window is multiplied by on a loss judged random (see
    /// [`LedbatConfig::random_loss_backlog_packets`]), at most once per round trip.
    /// Clamped to [0, 1]. Default 0.8 (Veno's 4/5).
    pub random_loss_reduction: f64,
    /// How often a loss may reduce the window at most: `None` for once per smoothed
    /// RTT (RFC 6817), or a fixed interval. libutp (`MAX_WINDOW_DECAY`) and libtorrent
    /// (`utp_cwnd_reduce_timer`) use 100 ms whatever the RTT, which on a 10 ms path is
    /// one reduction per ten round trips (checklist X14). Default `None`.
    pub loss_reduction_interval: Option<Duration>,
    /// A delay sample further than this from the base delay (in the wrapping sense)
    /// cannot be queuing (no queue holds a minute of traffic, and 60 s is also the
    /// largest retransmission timeout): it restarts the delay history, so that a garbage
    /// or crafted timestamp cannot wedge the controller. Not from RFC 6817, which
    /// assumes sane samples. Default 60 s.
    pub delay_reset_threshold: Duration,
}

impl Default for LedbatConfig {
    fn default() -> Self {
        LedbatConfig {
            max_increase_per_rtt: Some(3000),
            ..LedbatConfig::rfc6817()
        }
    }
}

impl LedbatConfig {
    /// RFC 6817's recommended parameters, plus a delay-bounded slow start (see the type's
    /// documentation) and BEP 29's halving on loss. The default is this with BEP 29's
    /// growth of 3000 bytes per RTT.
    pub fn rfc6817() -> Self {
        LedbatConfig {
            target: Duration::from_millis(100),
            gain: 1.0,
            decrease_gain: 1.0,
            max_increase_per_rtt: None,
            base_history: 10,
            base_bucket: Duration::from_secs(60),
            current_filter: 4,
            init_window_packets: 2,
            min_window_packets: 2,
            min_window_bytes: 0,
            max_window: 4 << 20,
            allowed_increase_packets: 1.0,
            slow_start: true,
            slow_start_exit_fraction: 0.9,
            slow_start_exit_reduction: 0.5,
            loss_reduction: 0.5,
            random_loss_backlog_packets: 3.0,
            random_loss_reduction: 0.8,
            loss_reduction_interval: None,
            delay_reset_threshold: Duration::from_secs(60),
        }
    }

    /// libutp's choices (utp_internal.cpp).
    pub fn libutp() -> Self {
        LedbatConfig {
            // CCONTROL_TARGET: 100 ms.
            target: Duration::from_millis(100),
            // MAX_CWND_INCREASE_BYTES_PER_RTT: 3000 bytes per RTT at zero delay.
            max_increase_per_rtt: Some(3000),
            // DELAY_BASE_HISTORY: 13 one-minute buckets ("reset delay_base every 13
            // minutes" to bound the effect of clock skew).
            base_history: 13,
            // CUR_DELAY_SIZE: the current delay is the minimum of the last 3 samples.
            current_filter: 3,
            // MIN_WINDOW_SIZE is 10 bytes and libutp paces sub-packet windows; this
            // crate sends whole packets, so the floor is one packet.
            min_window_packets: 1,
            min_window_bytes: 10,
            // Slow start ends at `our_delay > target * 0.9`.
            slow_start: true,
            slow_start_exit_fraction: 0.9,
            slow_start_exit_reduction: 1.0,
            // maybe_decay_win: `max_window * 0.5`, whatever the queue, at most once per
            // MAX_WINDOW_DECAY (100 ms).
            loss_reduction: 0.5,
            random_loss_backlog_packets: 0.0,
            loss_reduction_interval: Some(Duration::from_millis(100)),
            ..LedbatConfig::rfc6817()
        }
    }

    /// libtorrent's choices (utp_stream.cpp and its session settings).
    pub fn libtorrent() -> Self {
        LedbatConfig {
            // utp_target_delay: 100 ms.
            target: Duration::from_millis(100),
            // utp_gain_factor: 3000 bytes per RTT at zero delay.
            max_increase_per_rtt: Some(3000),
            // timestamp_history keeps 20 one-minute buckets.
            base_history: 20,
            // num_delay_hist: the current delay is the minimum of the last 3 samples.
            current_filter: 3,
            // Loss and timeouts never take cwnd below one MTU.
            min_window_packets: 1,
            // Slow start ends once the delay reaches the target (`delay >= target`).
            slow_start: true,
            slow_start_exit_fraction: 1.0,
            slow_start_exit_reduction: 1.0,
            // utp_loss_multiplier: 50 (%), whatever the queue, at most once per
            // utp_cwnd_reduce_timer (100 ms).
            loss_reduction: 0.5,
            random_loss_backlog_packets: 0.0,
            loss_reduction_interval: Some(Duration::from_millis(100)),
            ..LedbatConfig::rfc6817()
        }
    }
}

/// `b - a` in the wrapping sense of 32-bit timestamps: positive when `b` is after `a`.
fn wrapping_diff(b: u32, a: u32) -> i32 {
    b.wrapping_sub(a) as i32
}

/// Whether `a` is below `b` in the wrapping sense.
fn wrapping_lt(a: u32, b: u32) -> bool {
    wrapping_diff(b, a) > 0
}

/// The minimum delay seen during one bucket of base-delay history.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// When the first sample of this bucket arrived.
    start: Instant,
    /// The lowest sample of this bucket, in the wrapping sense.
    min: u32,
}

/// RFC 6817's base-delay history: per-bucket minima and their overall minimum.
#[derive(Clone, Debug, Default)]
struct BaseHistory {
    /// Oldest first; never longer than the configured history.
    buckets: VecDeque<Bucket>,
    /// The minimum over `buckets`, `None` while empty.
    base: Option<u32>,
}

impl BaseHistory {
    fn clear(&mut self) {
        self.buckets.clear();
        self.base = None;
    }

    /// Records `sample` at `now`, rotating and expiring buckets.
    fn add(&mut self, now: Instant, sample: u32, bucket_len: Duration, history: usize) {
        let history = history.max(1);
        match self.buckets.back_mut() {
            Some(bucket) if now.saturating_duration_since(bucket.start) < bucket_len => {
                if wrapping_lt(sample, bucket.min) {
                    bucket.min = sample;
                }
            }
            _ => self.buckets.push_back(Bucket {
                start: now,
                min: sample,
            }),
        }
        // A bucket expires when more than `history` newer ones exist, or when all of its
        // samples (it ended when the next one started) are older than the whole history.
        let span = bucket_len.saturating_mul(u32::try_from(history).unwrap_or(u32::MAX));
        while self.buckets.len() > 1 {
            let expired =
                self.buckets.len() > history || self.buckets[1].start.saturating_add(span) <= now;
            if !expired {
                break;
            }
            self.buckets.pop_front();
        }
        // Compare relative to the newest sample, so that the minimum is well defined even
        // if the buckets spread over more than half the timestamp space.
        self.base = self
            .buckets
            .iter()
            .map(|b| b.min)
            .min_by_key(|&m| wrapping_diff(m, sample));
    }
}

/// LEDBAT congestion control (RFC 6817) with a byte-counted window.
///
/// On every ACK carrying a delay sample the window changes by (RFC 6817)
///
/// ```text
/// off_target = (TARGET - queuing_delay) / TARGET          (at most 1)
/// cwnd += GAIN * off_target * bytes_acked * MSS / cwnd
/// ```
///
/// with the growth limited to the flight size plus `ALLOWED_INCREASE × MSS` and the
/// result kept within `[MIN_CWND × MSS, max_window]`. See [`LedbatConfig`] for every
/// parameter, slow start and the libutp/libtorrent variants.
#[derive(Clone, Debug)]
pub struct Ledbat {
    config: LedbatConfig,
    /// The latest MSS the connection reported; at least 1.
    mss: usize,
    /// The congestion window in bytes; always finite and within the configured bounds.
    cwnd: f64,
    slow_start: bool,
    /// Slow start ends when the window reaches this (TCP's ssthresh): the window after
    /// the last loss reduction, or half the window before the last timeout.
    ssthresh: f64,
    history: BaseHistory,
    /// CURRENT_FILTER: recent samples with their arrival time, oldest first.
    current: VecDeque<(Instant, u32)>,
    /// The latest queuing delay estimate, in microseconds.
    queuing_delay: Option<u64>,
    /// When the window was last reduced for a loss or timeout.
    last_reduction: Option<Instant>,
}

impl Ledbat {
    /// A controller for a path whose packets carry at most `mss` payload bytes, starting
    /// with `init_window_packets × mss` bytes of window (within the configured bounds).
    pub fn new(config: LedbatConfig, _now: Instant, mss: usize) -> Self {
        let mut ledbat = Ledbat {
            slow_start: config.slow_start,
            config,
            mss: mss.max(1),
            cwnd: 0.0,
            ssthresh: f64::INFINITY,
            history: BaseHistory::default(),
            current: VecDeque::new(),
            queuing_delay: None,
            last_reduction: None,
        };
        let init = ledbat.config.init_window_packets.saturating_mul(ledbat.mss) as f64;
        ledbat.cwnd = ledbat.clamp_window(init);
        ledbat
    }

    /// The parameters this controller runs with.
    pub fn config(&self) -> &LedbatConfig {
        &self.config
    }

    /// The smallest window after a decrease: MIN_CWND × MSS or the byte floor, whichever
    /// is larger, but never above `max_window`.
    fn min_window(&self) -> f64 {
        let packets = self.config.min_window_packets.saturating_mul(self.mss);
        packets
            .max(self.config.min_window_bytes)
            .min(self.config.max_window) as f64
    }

    /// `cwnd` brought within `[min_window, max_window]` (a NaN becomes the minimum).
    fn clamp_window(&self, cwnd: f64) -> f64 {
        cwnd.max(self.min_window())
            .min(self.config.max_window as f64)
    }

    /// Feeds one delay sample into the base history and the current-delay filter.
    fn record_delay(&mut self, now: Instant, sample: u32, smoothed_rtt: Duration) {
        if let Some(base) = self.history.base {
            let distance = u64::from(wrapping_diff(sample, base).unsigned_abs());
            if distance > duration_micros(self.config.delay_reset_threshold) {
                // Not a queuing delay: a clock step or garbage. Start over from here.
                self.history.clear();
                self.current.clear();
            }
        }
        self.history.add(
            now,
            sample,
            self.config.base_bucket,
            self.config.base_history,
        );

        self.current.push_back((now, sample));
        let keep = self.config.current_filter.max(1);
        while self.current.len() > keep {
            self.current.pop_front();
        }
        // "never older than one RTT"; a zero smoothed RTT means none is known yet.
        if !smoothed_rtt.is_zero() {
            while self.current.len() > 1
                && now.saturating_duration_since(self.current[0].0) > smoothed_rtt
            {
                self.current.pop_front();
            }
        }
    }

    /// Veno's test: fewer than `random_loss_backlog_packets` of our packets queued.
    /// Without a delay estimate yet, a loss counts as congestion.
    fn loss_looks_random(&self, smoothed_rtt: Duration) -> bool {
        let beta = self.config.random_loss_backlog_packets;
        let (Some(queuing), true) = (self.queuing_delay, beta > 0.0) else {
            return false;
        };
        let rtt = duration_micros(smoothed_rtt).max(queuing).max(1) as f64;
        let backlog = self.cwnd / self.mss as f64 * queuing as f64 / rtt;
        backlog < beta
    }

    /// FILTER(current_delays) − MIN(base_delays), in microseconds, floored at zero.
    fn filtered_queuing_delay(&self) -> Option<u64> {
        let base = self.history.base?;
        self.current
            .iter()
            .map(|&(_, sample)| u64::from(wrapping_diff(sample, base).max(0).unsigned_abs()))
            .min()
    }

    /// LEDBAT's change of the window for `acked` bytes at `queuing_delay` µs.
    fn ledbat_delta(&self, queuing_delay: u64, acked: f64) -> f64 {
        let target = duration_micros(self.config.target).max(1) as f64;
        // At most 1 because the queuing delay is never negative. Not clamped below, as
        // in RFC 6817, libutp and libtorrent: the minimum window bounds the decrease.
        let off_target = (target - queuing_delay as f64) / target;
        let mss = self.mss as f64;
        let cwnd = self.cwnd.max(1.0);
        let delta = if off_target >= 0.0 {
            match self.config.max_increase_per_rtt {
                None => self.config.gain * off_target * acked * mss / cwnd,
                Some(cap) => {
                    // BEP 29 / libutp: scaled_gain = cap * delay_factor * window_factor.
                    let share = cap as f64 * acked / cwnd;
                    (self.config.gain * off_target * share).min(share)
                }
            }
        } else {
            self.config.decrease_gain * off_target * acked * mss / cwnd
        };
        if delta.is_finite() {
            delta
        } else {
            0.0
        }
    }
}

impl CongestionController for Ledbat {
    /// Nothing to do: the flight size LEDBAT needs arrives with every ACK.
    fn on_sent(&mut self, _now: Instant, _bytes: usize, _flight_size: usize) {}

    fn on_ack(&mut self, now: Instant, ack: &AckEvent) {
        self.mss = ack.mss.max(1);
        let acked = ack.bytes_acked as f64;
        let old = self.cwnd;

        // Without a delay sample LEDBAT has nothing to go on: only slow start grows.
        let mut ledbat_cwnd = old;
        if let Some(sample) = ack.delay_sample {
            self.record_delay(now, sample, ack.smoothed_rtt);
            let mut queuing_delay = self.filtered_queuing_delay().unwrap_or(0);
            // libutp: "the delay can never be greater than the rtt".
            if let Some(rtt) = ack.rtt_sample {
                queuing_delay = queuing_delay.min(duration_micros(rtt));
            }
            self.queuing_delay = Some(queuing_delay);

            let target = duration_micros(self.config.target) as f64;
            if self.slow_start
                && queuing_delay as f64 > self.config.slow_start_exit_fraction * target
            {
                self.slow_start = false;
                let reduction = self.config.slow_start_exit_reduction;
                if reduction.is_finite() {
                    self.cwnd = self.clamp_window(old * reduction.clamp(0.0, 1.0));
                    return;
                }
            }
            ledbat_cwnd = old + self.ledbat_delta(queuing_delay, acked);
        }

        let slow_starting = self.slow_start;
        let mut cwnd = if slow_starting {
            // Slow start: cwnd += bytes_acked doubles the window every round trip; like
            // libutp, never less than LEDBAT's own proposal, and it ends at ssthresh.
            let ss = old + acked;
            if ss >= self.ssthresh {
                self.slow_start = false;
            }
            ss.min(self.ssthresh.max(old)).max(ledbat_cwnd)
        } else {
            ledbat_cwnd
        };
        if cwnd > old {
            // RFC 6817: max_allowed_cwnd = flightsize + ALLOWED_INCREASE * MSS. It only
            // limits growth here: it never shrinks a window the sender is not using.
            // In slow start the ACK's own bytes are the allowance instead, when larger
            // (as Linux's `tcp_is_cwnd_limited` lets slow start grow to twice the
            // flight): a full window acknowledged two packets at a time by delayed ACKs
            // would otherwise grow by one MSS per ACK, 1.5 times per round trip.
            let mut increase = self.config.allowed_increase_packets * self.mss as f64;
            if slow_starting {
                increase = increase.max(acked);
            }
            let allowed = ack.flight_size as f64 + increase;
            cwnd = cwnd.min(allowed.max(old));
        }
        // RFC 6817: cwnd = max(cwnd, MIN_CWND * MSS) on every ACK.
        self.cwnd = self.clamp_window(cwnd);
    }

    fn on_loss(&mut self, now: Instant, smoothed_rtt: Duration, mss: usize) {
        self.mss = mss.max(1);
        self.slow_start = false;
        // RFC 6817: reduce at most once per RTT (or per the configured interval, X14).
        let interval = self.config.loss_reduction_interval.unwrap_or(smoothed_rtt);
        if let Some(last) = self.last_reduction {
            if now.saturating_duration_since(last) < interval || now < last {
                return;
            }
        }
        let factor = if self.loss_looks_random(smoothed_rtt) {
            self.config.random_loss_reduction
        } else {
            self.config.loss_reduction
        };
        let factor = if factor.is_nan() {
            0.5
        } else {
            factor.clamp(0.0, 1.0)
        };
        // Never below the minimum window, but a loss never raises the window either
        // (it may sit below the minimum right after a timeout).
        let reduced = (self.cwnd * factor).max(self.min_window());
        self.cwnd = reduced.min(self.cwnd);
        self.ssthresh = self.cwnd;
        self.last_reduction = Some(now);
    }

    fn on_timeout(&mut self, now: Instant, mss: usize) {
        self.mss = mss.max(1);
        // RFC 6817: "cwnd = 1 * MSS" on a retransmission timeout. Then, as TCP
        // (RFC 5681: ssthresh = max(FlightSize / 2, 2 * SMSS)) and libutp do, slow start
        // back up to half the window the timeout found, still ending early if the delay
        // nears the target. Without it a lone timeout under random loss costs one round
        // trip per packet of window to recover at GAIN 1.
        let factor = if self.config.loss_reduction.is_nan() {
            0.5
        } else {
            self.config.loss_reduction.clamp(0.0, 1.0)
        };
        // A repeated timeout finds the window at one MSS: ssthresh is then held, as
        // RFC 5681 asks for a segment the timer already retransmitted.
        if self.cwnd > self.mss as f64 {
            self.ssthresh = (self.cwnd * factor).max(2.0 * self.mss as f64);
        }
        self.cwnd = (self.mss as f64).min(self.config.max_window as f64);
        self.slow_start = self.config.slow_start;
        self.last_reduction = Some(now);
    }

    fn window(&self) -> usize {
        // The `min` guards against rounding of windows beyond 2⁵³ bytes.
        (self.cwnd as usize).min(self.config.max_window)
    }

    fn queuing_delay(&self) -> Option<Duration> {
        self.queuing_delay.map(Duration::from_micros)
    }

    fn base_delay(&self) -> Option<u32> {
        self.history.base
    }

    fn in_slow_start(&self) -> bool {
        self.slow_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MSS: usize = 1000;
    const RTT: Duration = Duration::from_millis(50);
    /// The peer's clock is unrelated to ours: samples sit at an arbitrary offset.
    const BASE: u32 = 0x8765_4321;

    fn us(d: Duration) -> u32 {
        u32::try_from(d.as_micros()).unwrap()
    }

    /// A window-limited sender on a path with a fixed RTT, driving one controller.
    struct Sim {
        cc: Ledbat,
        now: Instant,
        mss: usize,
    }

    impl Sim {
        /// A fresh controller that has seen no delay sample yet.
        fn unprimed(config: LedbatConfig, mss: usize) -> Sim {
            let now = Instant::from_millis(1_000);
            Sim {
                cc: Ledbat::new(config, now, mss),
                now,
                mss,
            }
        }

        /// A fresh controller whose base delay is [`BASE`].
        fn new(config: LedbatConfig, mss: usize) -> Sim {
            let mut sim = Sim::unprimed(config, mss);
            // Establish the base delay without acknowledging anything.
            sim.ack(0, 0, Some(BASE), RTT);
            sim
        }

        fn ack(&mut self, bytes: usize, flight: usize, sample: Option<u32>, rtt: Duration) {
            let ack = AckEvent {
                bytes_acked: bytes,
                flight_size: flight,
                delay_sample: sample,
                rtt_sample: Some(rtt),
                smoothed_rtt: RTT,
                mss: self.mss,
            };
            self.cc.on_ack(self.now, &ack);
        }

        /// One round trip: the whole window is acknowledged one MSS at a time, spread
        /// over the RTT, each ACK carrying a sample `queuing` above the base delay.
        /// Returns the window at the end of the round.
        fn round(&mut self, queuing: Duration) -> usize {
            let packets = (self.cc.window() / self.mss).max(1);
            let step = RTT / u32::try_from(packets).unwrap();
            for _ in 0..packets {
                self.now += step;
                let flight = self.cc.window();
                self.ack(
                    self.mss,
                    flight,
                    Some(BASE.wrapping_add(us(queuing))),
                    RTT + queuing,
                );
            }
            self.cc.window()
        }
    }

    fn no_slow_start(mut config: LedbatConfig) -> LedbatConfig {
        config.slow_start = false;
        config
    }

    /// Covers: I50, X5, X6, X7
    #[test]
    fn profiles() {
        // The default is RFC 6817's parameters with BEP 29's growth of 3000 bytes per
        // RTT, as libutp and libtorrent grow.
        assert_eq!(
            LedbatConfig::default(),
            LedbatConfig {
                max_increase_per_rtt: Some(3000),
                ..LedbatConfig::rfc6817()
            }
        );
        let rfc = LedbatConfig::rfc6817();
        assert_eq!(rfc.target, Duration::from_millis(100));
        assert_eq!((rfc.gain, rfc.max_increase_per_rtt), (1.0, None));
        assert_eq!((rfc.base_history, rfc.current_filter), (10, 4));
        let libutp = LedbatConfig::libutp();
        assert_eq!(libutp.max_increase_per_rtt, Some(3000));
        assert_eq!(libutp.base_history, 13);
        let libtorrent = LedbatConfig::libtorrent();
        assert_eq!(libtorrent.max_increase_per_rtt, Some(3000));
        assert_eq!(libtorrent.base_history, 20);
        assert_eq!(libtorrent.min_window_packets, 1);
        let cc = Ledbat::new(LedbatConfig::libutp(), Instant::ZERO, 1400);
        assert_eq!(cc.config(), &LedbatConfig::libutp());
        assert_eq!(cc.window(), 2800);
        assert!(cc.in_slow_start());
        assert_eq!(cc.queuing_delay(), None);
        assert_eq!(cc.base_delay(), None);
    }

    #[test]
    fn slow_start_doubles_per_rtt_with_delayed_acks_and_only_while_the_window_is_used() {
        let mut sim = Sim::new(LedbatConfig::default(), MSS);
        let sample = Some(BASE);
        // A full window acknowledged two packets per ACK (delayed ACKs), as a window-
        // limited sender sees it: the flight before each ACK is the whole window.
        for _ in 0..5 {
            let start = sim.cc.window();
            for _ in 0..start / (2 * MSS) {
                sim.now += RTT / 32;
                let flight = sim.cc.window();
                sim.ack(2 * MSS, flight, sample, RTT);
            }
            assert!(sim.cc.in_slow_start());
            assert_eq!(sim.cc.window(), 2 * start, "doubles per round trip");
        }
        // An application-limited sender (four packets in flight) grows no further than
        // the flight plus what the ACK acknowledged.
        let window = sim.cc.window();
        for _ in 0..10 {
            sim.ack(2 * MSS, 4 * MSS, sample, RTT);
        }
        assert_eq!(sim.cc.window(), window, "an unused window does not grow");
    }

    /// Covers: I52, I53, I55
    #[test]
    fn scripted_trace_grows_below_target_shrinks_above_and_holds_at_target() {
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        assert_eq!(sim.cc.window(), 2 * MSS);

        // Well below the target: slow start doubles the window every round trip.
        let mut window = sim.cc.window();
        for _ in 0..5 {
            let next = sim.round(Duration::from_millis(10));
            assert!(sim.cc.in_slow_start());
            assert_eq!(next, 2 * window, "slow start doubles per RTT");
            window = next;
        }
        assert_eq!(window, 64 * MSS);

        // Above the target: slow start ends and the window shrinks every round trip, by
        // about off_target × MSS = 0.5 MSS.
        sim.round(Duration::from_millis(150));
        assert!(!sim.cc.in_slow_start());
        let mut window = sim.cc.window();
        for _ in 0..5 {
            let next = sim.round(Duration::from_millis(150));
            assert!(next < window, "{next} < {window}");
            let shrink = window - next;
            assert!((450..=550).contains(&shrink), "shrank by {shrink}");
            window = next;
        }
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::from_millis(150)));

        // Exactly at the target: flat.
        sim.round(Duration::from_millis(100));
        let window = sim.cc.window();
        for _ in 0..5 {
            assert_eq!(sim.round(Duration::from_millis(100)), window);
        }

        // No queue at all: linear growth of about one MSS per round trip (GAIN 1).
        let mut window = sim.cc.window();
        for _ in 0..5 {
            let next = sim.round(Duration::ZERO);
            let growth = next - window;
            assert!((900..=1000).contains(&growth), "grew by {growth}");
            window = next;
        }
    }

    /// Covers: I50
    #[test]
    fn slow_start_exits_above_nine_tenths_of_target() {
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        for _ in 0..4 {
            sim.round(Duration::from_millis(89));
            assert!(sim.cc.in_slow_start(), "89 ms is below 0.9 × 100 ms");
        }
        sim.round(Duration::from_millis(91));
        assert!(!sim.cc.in_slow_start(), "91 ms is above 0.9 × 100 ms");
        // Once out, it stays out even when the queue drains.
        sim.round(Duration::ZERO);
        assert!(!sim.cc.in_slow_start());

        // libtorrent only leaves at the target itself.
        let mut sim = Sim::new(LedbatConfig::libtorrent(), MSS);
        sim.round(Duration::from_millis(95));
        assert!(sim.cc.in_slow_start());
        sim.round(Duration::from_millis(101));
        assert!(!sim.cc.in_slow_start());

        // The first loss ends it too.
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        sim.round(Duration::ZERO);
        assert!(sim.cc.in_slow_start());
        sim.cc.on_loss(sim.now, RTT, MSS);
        assert!(!sim.cc.in_slow_start());

        // And a disabled slow start never starts.
        let mut sim = Sim::new(no_slow_start(LedbatConfig::rfc6817()), MSS);
        assert!(!sim.cc.in_slow_start());
        let before = sim.cc.window();
        assert!(sim.round(Duration::ZERO) < 2 * before);
    }

    /// Covers: F40, X14, I54
    #[test]
    fn loss_halves_at_most_once_per_rtt_and_never_below_min_window() {
        let config = LedbatConfig {
            init_window_packets: 64,
            ..LedbatConfig::rfc6817()
        };
        let mut cc = Ledbat::new(config, Instant::ZERO, MSS);
        let mut now = Instant::from_millis(10_000);
        assert_eq!(cc.window(), 64_000);

        cc.on_loss(now, RTT, MSS);
        assert_eq!(cc.window(), 32_000);
        now += RTT / 2;
        cc.on_loss(now, RTT, MSS);
        assert_eq!(cc.window(), 32_000, "second loss within one RTT is ignored");
        now += RTT / 2;
        cc.on_loss(now, RTT, MSS);
        assert_eq!(cc.window(), 16_000, "a loss one RTT later halves again");

        for _ in 0..20 {
            now += RTT;
            cc.on_loss(now, RTT, MSS);
            assert!(cc.window() >= 2 * MSS);
        }
        assert_eq!(cc.window(), 2 * MSS);

        // Right after a timeout the window is one MSS; a loss must not raise it.
        now += RTT;
        cc.on_timeout(now, MSS);
        now += RTT;
        cc.on_loss(now, RTT, MSS);
        assert_eq!(cc.window(), MSS);
    }

    /// Veno's test: a loss with fewer than three of our packets queued is random and
    /// costs a fifth of the window; with a queue it is congestion and halves it.
    #[test]
    fn random_loss_costs_less_than_congestion_loss() {
        let config = LedbatConfig {
            init_window_packets: 20,
            slow_start: false,
            ..LedbatConfig::rfc6817()
        };
        // 20 packets, 1 ms of queue in a 50 ms RTT: 0.4 packets of ours queued.
        let mut sim = Sim::new(config.clone(), MSS);
        sim.ack(MSS, 20 * MSS, Some(BASE + 1_000), RTT);
        let w = sim.cc.cwnd;
        sim.cc.on_loss(sim.now, RTT, MSS);
        assert!((sim.cc.cwnd - 0.8 * w).abs() < 1.0, "random: × 0.8");
        // 20 packets, 30 ms of queue: 12 packets of ours queued.
        let mut sim = Sim::new(config.clone(), MSS);
        for _ in 0..5 {
            sim.ack(MSS, 20 * MSS, Some(BASE + 30_000), RTT);
        }
        let w = sim.cc.cwnd;
        sim.cc.on_loss(sim.now, RTT, MSS);
        assert!((sim.cc.cwnd - 0.5 * w).abs() < 1.0, "congestion: × 0.5");
        // Disabled (libutp, libtorrent, or 0): always halves.
        let mut sim = Sim::new(
            LedbatConfig {
                random_loss_backlog_packets: 0.0,
                ..config
            },
            MSS,
        );
        sim.ack(MSS, 20 * MSS, Some(BASE + 1_000), RTT);
        let w = sim.cc.cwnd;
        sim.cc.on_loss(sim.now, RTT, MSS);
        assert!((sim.cc.cwnd - 0.5 * w).abs() < 1.0);
    }

    /// X14: RFC 6817 reduces at most once per RTT; libutp and libtorrent at most once
    /// per 100 ms, whatever the RTT. Both are offered; the profiles choose.
    /// Covers: X14
    #[test]
    fn loss_reduction_interval_per_rtt_or_fixed() {
        let rtt = Duration::from_millis(10);
        let start = Instant::from_millis(10_000);
        let losses = |config: LedbatConfig| {
            let mut cc = Ledbat::new(
                LedbatConfig {
                    init_window_packets: 4000,
                    ..config
                },
                Instant::ZERO,
                MSS,
            );
            // A loss every 10 ms (one RTT) for 100 ms.
            let mut reductions = 0;
            for k in 0..10 {
                let before = cc.window();
                cc.on_loss(start + rtt * k, rtt, MSS);
                reductions += usize::from(cc.window() < before);
            }
            reductions
        };
        assert_eq!(losses(LedbatConfig::rfc6817()), 10, "once per 10 ms RTT");
        assert_eq!(losses(LedbatConfig::libutp()), 1, "once per 100 ms");
        assert_eq!(losses(LedbatConfig::libtorrent()), 1, "once per 100 ms");
    }

    /// Covers: G46, X5
    #[test]
    fn timeout_sets_window_to_one_mss() {
        let mut sim = Sim::new(LedbatConfig::rfc6817(), 1400);
        for _ in 0..4 {
            sim.round(Duration::ZERO);
        }
        let before = sim.cc.window();
        assert!(before > 10 * 1400);
        sim.cc.on_timeout(sim.now, 1400);
        assert_eq!(sim.cc.window(), 1400);
        // As in TCP and libutp, slow start takes the window back to half of what the
        // timeout found (ssthresh), then LEDBAT's linear growth goes on.
        assert!(sim.cc.in_slow_start());
        sim.now += RTT;
        sim.ack(1400, 1400, Some(BASE), RTT);
        assert_eq!(sim.cc.window(), 2800, "doubling from one MSS");
        for _ in 0..10 {
            sim.round(Duration::ZERO);
        }
        assert!(!sim.cc.in_slow_start(), "left at ssthresh");
        let w = sim.cc.window();
        assert!(
            w >= before / 2 && w < before / 2 + 12 * 1400,
            "window {w}: about half of {before} plus linear growth"
        );
        // A timeout repeated before any ACK keeps ssthresh (RFC 5681).
        let mut cc = Ledbat::new(LedbatConfig::rfc6817(), Instant::ZERO, 1400);
        cc.cwnd = 40.0 * 1400.0;
        cc.on_timeout(Instant::from_millis(1), 1400);
        cc.on_timeout(Instant::from_millis(2000), 1400);
        assert_eq!(cc.ssthresh, 20.0 * 1400.0);

        let mut cc = Ledbat::new(LedbatConfig::libtorrent(), Instant::ZERO, 1400);
        cc.on_timeout(Instant::from_millis(1), 1400);
        assert_eq!(cc.window(), 1400);
    }

    /// Covers: I51
    #[test]
    fn lower_base_delay_takes_effect_at_once() {
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        assert_eq!(sim.cc.base_delay(), Some(BASE));
        sim.now += RTT;
        sim.ack(MSS, 2 * MSS, Some(BASE - 5_000), RTT);
        assert_eq!(sim.cc.base_delay(), Some(BASE - 5_000));
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::ZERO));

        // A peer clock running slow relative to ours: samples creep down and the base
        // follows each step immediately, so no queue is ever imagined.
        for i in 1..100u32 {
            sim.now += Duration::from_secs(1);
            let sample = BASE - 5_000 - 10 * i;
            sim.ack(MSS, 2 * MSS, Some(sample), RTT);
            assert_eq!(sim.cc.base_delay(), Some(sample));
            assert_eq!(sim.cc.queuing_delay(), Some(Duration::ZERO));
        }
    }

    /// Covers: I51, X6
    #[test]
    fn higher_base_delay_only_after_history_elapses() {
        for (config, minutes) in [
            (LedbatConfig::rfc6817(), 10u64),
            (LedbatConfig::libutp(), 13),
            (
                LedbatConfig {
                    base_history: 3,
                    ..LedbatConfig::rfc6817()
                },
                3,
            ),
        ] {
            let start = Instant::from_millis(1_000);
            let mut cc = Ledbat::new(config, start, MSS);
            let ack = |cc: &mut Ledbat, now: Instant, sample: u32| {
                let ack = AckEvent {
                    bytes_acked: MSS,
                    flight_size: 2 * MSS,
                    delay_sample: Some(sample),
                    rtt_sample: None,
                    smoothed_rtt: RTT,
                    mss: MSS,
                };
                cc.on_ack(now, &ack);
            };
            ack(&mut cc, start, 10_000);
            // The peer's clock runs fast relative to ours: the path's delay now reads
            // 2 ms higher. The old minimum holds until the history has rotated past it.
            let mut t = 10;
            while t < minutes * 60 {
                ack(&mut cc, start + Duration::from_secs(t), 12_000);
                assert_eq!(cc.base_delay(), Some(10_000), "at {t} s");
                assert_eq!(cc.queuing_delay(), Some(Duration::from_millis(2)));
                t += 10;
            }
            ack(&mut cc, start + Duration::from_secs(t), 12_000);
            assert_eq!(cc.base_delay(), Some(12_000), "at {t} s");
            assert_eq!(cc.queuing_delay(), Some(Duration::ZERO));
        }
    }

    /// Covers: I52
    #[test]
    fn queuing_delay_is_computed_across_the_timestamp_wrap() {
        let mut sim = Sim::unprimed(LedbatConfig::rfc6817(), MSS);
        sim.ack(0, 0, Some(0xFFFF_FF00), RTT);
        sim.now += RTT * 2; // the first samples leave the current-delay filter
        sim.ack(MSS, 2 * MSS, Some(0x0000_0100), RTT);
        assert_eq!(sim.cc.base_delay(), Some(0xFFFF_FF00));
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::from_micros(512)));

        // The other way round: a sample just below the wrap is lower than one above it.
        let mut sim = Sim::unprimed(LedbatConfig::rfc6817(), MSS);
        sim.ack(0, 0, Some(0x0000_0100), RTT);
        sim.now += RTT * 2;
        sim.ack(MSS, 2 * MSS, Some(0xFFFF_FF00), RTT);
        assert_eq!(sim.cc.base_delay(), Some(0xFFFF_FF00));
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::ZERO));
        sim.now += RTT * 2;
        sim.ack(MSS, 2 * MSS, Some(0x0000_0100), RTT);
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::from_micros(512)));
    }

    /// Covers: I52
    #[test]
    fn current_delay_is_min_of_recent_samples() {
        let mut sim = Sim::new(no_slow_start(LedbatConfig::rfc6817()), MSS);
        // One outlier does not register while lower samples remain in the filter.
        sim.now += Duration::from_millis(1);
        sim.ack(MSS, 2 * MSS, Some(BASE + 20_000), Duration::from_secs(1));
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::ZERO));
        // Four consecutive high samples push the base sample out of the filter.
        for _ in 0..3 {
            sim.now += Duration::from_millis(1);
            sim.ack(MSS, 2 * MSS, Some(BASE + 20_000), Duration::from_secs(1));
        }
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::from_millis(20)));
        // Samples older than one smoothed RTT leave the filter even if fewer than four.
        sim.now += Duration::from_millis(1);
        sim.ack(MSS, 2 * MSS, Some(BASE + 1_000), Duration::from_secs(1));
        sim.now += RTT * 2;
        sim.ack(MSS, 2 * MSS, Some(BASE + 30_000), Duration::from_secs(1));
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::from_millis(30)));
    }

    /// Covers: I52, L8
    #[test]
    fn queuing_delay_never_exceeds_the_rtt() {
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        sim.now += RTT * 2;
        sim.ack(
            MSS,
            2 * MSS,
            Some(BASE + 40_000_000),
            Duration::from_millis(30),
        );
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::from_millis(30)));
    }

    /// Covers: L8, X13
    #[test]
    fn absurd_sample_restarts_history_instead_of_wedging() {
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        for _ in 0..3 {
            sim.round(Duration::ZERO);
        }
        // Just over half the timestamp space away: in the wrapping sense it is *below*
        // the base, and taken as the new base it would make every honest sample look
        // like a 35-minute queue for the next ten minutes.
        let crafted = BASE.wrapping_add(0x8000_0100);
        sim.now += RTT;
        let flight = sim.cc.window();
        sim.ack(MSS, flight, Some(crafted), Duration::from_secs(3_000));
        assert_eq!(sim.cc.base_delay(), Some(crafted));
        // The next honest sample is as absurd relative to that, and restarts again.
        sim.now += RTT;
        sim.ack(MSS, flight, Some(BASE + 2_000), Duration::from_secs(3_000));
        assert_eq!(sim.cc.base_delay(), Some(BASE + 2_000));
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::ZERO));
        let before = sim.cc.window();
        assert!(sim.round(Duration::ZERO) > before, "still growing");

        // Within the threshold a sample is an ordinary (if large) queuing delay.
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        sim.now += RTT * 2;
        sim.ack(
            MSS,
            2 * MSS,
            Some(BASE + 50_000_000),
            Duration::from_secs(100),
        );
        assert_eq!(sim.cc.base_delay(), Some(BASE));
        assert_eq!(sim.cc.queuing_delay(), Some(Duration::from_secs(50)));
        sim.now += RTT * 2;
        sim.ack(
            MSS,
            2 * MSS,
            Some(BASE + 70_000_000),
            Duration::from_secs(100),
        );
        assert_eq!(sim.cc.base_delay(), Some(BASE + 70_000_000));
    }

    #[test]
    fn no_delay_sample_means_only_slow_start_growth() {
        let mut sim = Sim::new(LedbatConfig::rfc6817(), MSS);
        let before = sim.cc.window();
        sim.now += RTT;
        sim.ack(MSS, before, None, RTT);
        assert_eq!(
            sim.cc.window(),
            before + MSS,
            "slow start grows without samples"
        );

        let mut sim = Sim::new(no_slow_start(LedbatConfig::rfc6817()), MSS);
        for _ in 0..3 {
            sim.round(Duration::ZERO);
        }
        let before = sim.cc.window();
        for _ in 0..100 {
            sim.now += RTT;
            sim.ack(MSS, before, None, RTT);
        }
        assert_eq!(sim.cc.window(), before);
    }

    /// Covers: I53
    #[test]
    fn allowed_increase_stops_growth_of_application_limited_flow() {
        for config in [
            LedbatConfig::rfc6817(),
            no_slow_start(LedbatConfig::rfc6817()),
            LedbatConfig::libutp(),
        ] {
            let mut sim = Sim::new(config.clone(), MSS);
            for _ in 0..10_000 {
                sim.now += Duration::from_millis(5);
                sim.ack(MSS, 3 * MSS, Some(BASE), RTT);
            }
            // At most flight size + ALLOWED_INCREASE × MSS.
            assert!(sim.cc.window() <= 4 * MSS, "{}", sim.cc.window());

            // The same acknowledgements with the window in use do grow it.
            let mut sim = Sim::new(config, MSS);
            for _ in 0..10_000 {
                sim.now += Duration::from_millis(5);
                let flight = sim.cc.window();
                sim.ack(MSS, flight, Some(BASE), RTT);
            }
            assert!(sim.cc.window() > 20 * MSS, "{}", sim.cc.window());
        }
    }

    /// Covers: X7, I53
    #[test]
    fn max_increase_per_rtt_caps_growth_in_libutp_profile() {
        const MSS: usize = 1400;
        let growth_per_rtt = |config: LedbatConfig| {
            let mut config = no_slow_start(config);
            config.init_window_packets = 100;
            let mut sim = Sim::new(config, MSS);
            let mut window = sim.cc.window();
            let mut growths = Vec::new();
            for _ in 0..10 {
                let next = sim.round(Duration::ZERO);
                growths.push(next - window);
                window = next;
            }
            growths
        };
        for growth in growth_per_rtt(LedbatConfig::libutp()) {
            assert!(
                (2_800..=3_000).contains(&growth),
                "libutp grew {growth} B/RTT"
            );
        }
        // A gain above 1 (which RFC 6817 forbids) still cannot exceed the cap.
        let mut greedy = LedbatConfig::libutp();
        greedy.gain = 10.0;
        for growth in growth_per_rtt(greedy) {
            assert!(
                (2_800..=3_000).contains(&growth),
                "greedy grew {growth} B/RTT"
            );
        }
        // RFC 6817 without the cap: GAIN × MSS per RTT.
        for growth in growth_per_rtt(LedbatConfig::rfc6817()) {
            assert!(
                (1_300..=1_400).contains(&growth),
                "rfc6817 grew {growth} B/RTT"
            );
        }
    }

    /// Covers: I54
    #[test]
    fn window_stays_within_max_window() {
        let config = LedbatConfig {
            max_window: 10 * MSS,
            ..LedbatConfig::rfc6817()
        };
        let mut sim = Sim::new(config, MSS);
        for _ in 0..50 {
            sim.round(Duration::ZERO);
            assert!(sim.cc.window() <= 10 * MSS);
        }
        assert_eq!(sim.cc.window(), 10 * MSS);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Sent(usize, usize),
        Ack {
            bytes: usize,
            flight: usize,
            delay: Option<u32>,
            rtt: Option<u64>,
            srtt: u64,
        },
        Loss(u64),
        Timeout,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        const BYTES: std::ops::RangeInclusive<usize> = 0..=10 << 20;
        prop_oneof![
            1 => (BYTES, BYTES).prop_map(|(b, f)| Op::Sent(b, f)),
            4 => (BYTES, BYTES, any::<Option<u32>>(), any::<Option<u64>>(), any::<u64>()).prop_map(
                |(bytes, flight, delay, rtt, srtt)| Op::Ack { bytes, flight, delay, rtt, srtt }
            ),
            // Small delays around a base, so that the interesting paths are taken too.
            4 => (BYTES, BYTES, 0u32..200_000, 0u64..2_000_000).prop_map(
                |(bytes, flight, d, rtt)| Op::Ack {
                    bytes,
                    flight,
                    delay: Some(0xFFFF_0000u32.wrapping_add(d)),
                    rtt: Some(rtt),
                    srtt: 50_000,
                }
            ),
            1 => any::<u64>().prop_map(Op::Loss),
            1 => (0u64..200_000).prop_map(Op::Loss),
            1 => Just(Op::Timeout),
            1 => any::<u64>().prop_map(Op::Advance),
            3 => (0u64..120_000_000).prop_map(Op::Advance),
        ]
    }

    fn apply(cc: &mut Ledbat, now: &mut Instant, op: &Op, mss: usize) {
        match *op {
            Op::Sent(bytes, flight) => cc.on_sent(*now, bytes, flight),
            Op::Ack {
                bytes,
                flight,
                delay,
                rtt,
                srtt,
            } => cc.on_ack(
                *now,
                &AckEvent {
                    bytes_acked: bytes,
                    flight_size: flight,
                    delay_sample: delay,
                    rtt_sample: rtt.map(Duration::from_micros),
                    smoothed_rtt: Duration::from_micros(srtt),
                    mss,
                },
            ),
            Op::Loss(srtt) => cc.on_loss(*now, Duration::from_micros(srtt), mss),
            Op::Timeout => cc.on_timeout(*now, mss),
            Op::Advance(micros) => *now += Duration::from_micros(micros),
        }
    }

    fn profile() -> impl Strategy<Value = LedbatConfig> {
        prop_oneof![
            Just(LedbatConfig::rfc6817()),
            Just(LedbatConfig::libutp()),
            Just(LedbatConfig::libtorrent()),
            Just(no_slow_start(LedbatConfig::rfc6817())),
            (1usize..=64 << 20).prop_map(|max_window| LedbatConfig {
                max_window,
                ..LedbatConfig::rfc6817()
            }),
        ]
    }

    /// Any configuration at all, including NaN, infinite and negative gains.
    fn hostile_config() -> impl Strategy<Value = LedbatConfig> {
        let duration = || any::<u64>().prop_map(Duration::from_micros);
        (
            (
                duration(),
                any::<f64>(),
                any::<f64>(),
                any::<Option<usize>>(),
            ),
            (any::<usize>(), duration(), any::<usize>(), any::<usize>()),
            (any::<usize>(), any::<usize>(), any::<usize>(), any::<f64>()),
            (any::<bool>(), any::<f64>(), any::<f64>(), duration()),
            (any::<f64>(), any::<f64>(), proptest::option::of(duration())),
        )
            .prop_map(|(a, b, c, d, e)| LedbatConfig {
                target: a.0,
                gain: a.1,
                decrease_gain: a.2,
                max_increase_per_rtt: a.3,
                base_history: b.0 % 64,
                base_bucket: b.1,
                current_filter: b.2 % 64,
                init_window_packets: b.3,
                min_window_packets: c.0,
                min_window_bytes: c.1,
                max_window: c.2,
                allowed_increase_packets: c.3,
                slow_start: d.0,
                slow_start_exit_fraction: d.1,
                slow_start_exit_reduction: d.2,
                loss_reduction: d.2,
                random_loss_backlog_packets: e.0,
                random_loss_reduction: e.1,
                loss_reduction_interval: e.2,
                delay_reset_threshold: d.3,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2048,
            // Keep test runs from writing regression files into the source tree.
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Covers: I54, L10
        #[test]
        fn random_events_keep_window_in_bounds(
            config in profile(),
            mss in 1usize..=65_507,
            start in any::<u64>(),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut now = Instant::from_micros(start);
            let mut cc = Ledbat::new(config.clone(), now, mss);
            let max = config.max_window;
            // The floor is MIN_CWND × MSS, except right after a timeout (1 MSS).
            let min = mss.min(max);
            prop_assert!((min..=max).contains(&cc.window()));
            for op in &ops {
                apply(&mut cc, &mut now, op, mss);
                let window = cc.window();
                prop_assert!((min..=max).contains(&window), "window {} after {:?}", window, op);
                prop_assert!(cc.cwnd.is_finite());
            }
        }

        /// Covers: L8
        #[test]
        fn hostile_configs_and_changing_mss_never_panic(
            config in hostile_config(),
            start in any::<u64>(),
            ops in prop::collection::vec((op(), any::<usize>()), 1..100),
        ) {
            let mut now = Instant::from_micros(start);
            let mut cc = Ledbat::new(config.clone(), now, ops[0].1);
            for (op, mss) in &ops {
                apply(&mut cc, &mut now, op, *mss);
                prop_assert!(cc.cwnd.is_finite());
                prop_assert!(cc.window() <= config.max_window);
            }
        }
    }
}
