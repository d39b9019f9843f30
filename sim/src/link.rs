//! One direction of a link: a queue in front of a serialiser, then a wire.
//!
//! A datagram offered to the link meets, in order: the outage switch, the MTU, random
//! loss (independent or bursty Gilbert-Elliott), the queue's admission (drop-tail in
//! bytes or packets, or RED), then waits for the serialiser at `rate_bps`; CoDel may
//! drop it when it reaches the head. After serialisation it propagates for `delay`
//! plus jitter, may be held back (explicit reordering) and may be duplicated.
//!
//! The engine owns the datagrams; the link sees ids and sizes only.

use core::time::Duration;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use utp::Instant;

use crate::rng::SimRng;

/// Bytes of IPv4 and UDP headers, which count against the rate and the MTU.
pub const IP_UDP_OVERHEAD: usize = 28;

/// How the queue is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueLimit {
    /// At most this many bytes waiting (the packet in service included).
    Bytes(u64),
    /// At most this many packets waiting.
    Packets(usize),
}

/// Active queue management.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Aqm {
    /// Drop arrivals that do not fit.
    DropTail,
    /// Random Early Detection (Floyd and Jacobson), on the average backlog in bytes.
    Red {
        /// Below this average backlog nothing is dropped early.
        min_bytes: u64,
        /// Above this average backlog every arrival is dropped.
        max_bytes: u64,
        /// Drop probability reached at `max_bytes`.
        max_p: f64,
        /// Weight of the newest sample in the moving average.
        weight: f64,
    },
    /// CoDel (RFC 8289): drops at the head when the sojourn time stays above `target`
    /// for `interval`.
    Codel {
        /// Acceptable standing queue delay (5 ms in RFC 8289), `target_ms`.
        #[serde(with = "crate::scenario::millis", rename = "target_ms")]
        target: Duration,
        /// Window of observation (100 ms in RFC 8289), `interval_ms`.
        #[serde(with = "crate::scenario::millis", rename = "interval_ms")]
        interval: Duration,
    },
}

/// How packets are lost at random.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LossModel {
    /// Each packet independently with probability `p`.
    Bernoulli {
        /// Loss probability.
        p: f64,
    },
    /// Two-state bursty loss: in the good state packets are lost with `loss_good`, in
    /// the bad state with `loss_bad`; the state changes before each packet.
    GilbertElliott {
        /// Probability of moving from good to bad.
        p_good_to_bad: f64,
        /// Probability of moving from bad to good.
        p_bad_to_good: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl LossModel {
    /// Checks that every probability lies in [0, 1]; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!(
                    "loss.{name} must be a probability between 0 and 1, got {p}"
                ))
            }
        };
        match *self {
            LossModel::Bernoulli { p } => prob("p", p),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                prob("p_good_to_bad", p_good_to_bad)?;
                prob("p_bad_to_good", p_bad_to_good)?;
                prob("loss_good", loss_good)?;
                prob("loss_bad", loss_bad)
            }
        }
    }

    /// Draws whether the next packet is lost; `bad` is the Gilbert-Elliott state the
    /// caller keeps (unused by the Bernoulli model).
    pub fn draw(&self, bad: &mut bool, rng: &mut SimRng) -> bool {
        match *self {
            LossModel::Bernoulli { p } => rng.chance(p),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let flip = if *bad { p_bad_to_good } else { p_good_to_bad };
                if rng.chance(flip) {
                    *bad = !*bad;
                }
                rng.chance(if *bad { loss_bad } else { loss_good })
            }
        }
    }

    /// The long-run loss rate of the model.
    pub fn mean(&self) -> f64 {
        match *self {
            LossModel::Bernoulli { p } => p,
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let total = p_good_to_bad + p_bad_to_good;
                if total <= 0.0 {
                    return loss_good;
                }
                let bad = p_good_to_bad / total;
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// The parameters of one direction of a link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// Serialisation rate in bits per second; 0 means unlimited (no queue).
    pub rate_bps: u64,
    /// Propagation delay (`delay_ms` in scenario files).
    #[serde(with = "crate::scenario::millis", rename = "delay_ms")]
    pub delay: Duration,
    /// Extra delay per packet, uniform in `0..=jitter` (`jitter_ms`).
    #[serde(with = "crate::scenario::millis", rename = "jitter_ms")]
    pub jitter: Duration,
    /// Whether jitter may reorder packets; when false a packet never overtakes the one
    /// before it.
    pub jitter_reorders: bool,
    /// The queue bound.
    pub queue: QueueLimit,
    /// Queue management.
    pub aqm: Aqm,
    /// Random loss.
    pub loss: LossModel,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_delay` (overtaken by later ones).
    pub reorder: f64,
    /// How long a reordered packet is held back (`reorder_delay_ms`).
    #[serde(with = "crate::scenario::millis", rename = "reorder_delay_ms")]
    pub reorder_delay: Duration,
    /// Largest IP datagram (UDP payload plus 28 bytes); larger ones are dropped. 0 = none.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            rate_bps: 10_000_000,
            delay: Duration::from_millis(25),
            jitter: Duration::ZERO,
            jitter_reorders: false,
            queue: QueueLimit::Bytes(250_000),
            aqm: Aqm::DropTail,
            loss: LossModel::Bernoulli { p: 0.0 },
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            mtu: 0,
        }
    }
}

impl LinkConfig {
    /// A link with no rate limit and no impairment: only `delay`.
    pub fn wire(delay: Duration) -> LinkConfig {
        LinkConfig {
            rate_bps: 0,
            delay,
            ..LinkConfig::default()
        }
    }

    /// Checks the values; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be a probability between 0 and 1, got {p}"
                ))
            }
        };
        prob("duplicate", self.duplicate)?;
        prob("reorder", self.reorder)?;
        self.loss.validate()?;
        if let Aqm::Red {
            min_bytes,
            max_bytes,
            max_p,
            weight,
        } = self.aqm
        {
            if min_bytes >= max_bytes {
                return Err("red.min_bytes must be below red.max_bytes".into());
            }
            prob("red.max_p", max_p)?;
            prob("red.weight", weight)?;
        }
        if self.mtu != 0 && self.mtu < 68 {
            return Err(format!(
                "mtu must be 0 (none) or at least 68, got {}",
                self.mtu
            ));
        }
        Ok(())
    }
}

/// Why a link dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// The link was down.
    Outage,
    /// Larger than the MTU.
    Mtu,
    /// Random loss.
    Random,
    /// The queue was full (or RED decided).
    Queue,
    /// CoDel dropped it at the head of the queue.
    Codel,
}

/// What happened to an offered packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Dropped.
    Dropped(Drop),
    /// Waiting in the queue; if the serialiser was idle it started on this packet and
    /// finishes at `Some(t)`: the engine schedules [`Link::tx_done`] then.
    Queued(Option<Instant>),
    /// The link has no rate limit: the packet is on the wire at once.
    Immediate,
}

#[derive(Clone, Copy, Debug)]
struct Queued {
    id: u64,
    size: usize,
    arrived: Instant,
}

/// Counters and gauges of one link direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkStats {
    /// Packets offered.
    pub offered: u64,
    /// Packets that left the serialiser (or went straight on the wire).
    pub sent: u64,
    /// Bytes (IP datagram sizes) that left the serialiser.
    pub sent_bytes: u64,
    /// Drops by cause: outage, MTU, random, queue, CoDel.
    pub drops_outage: u64,
    /// See `drops_outage`.
    pub drops_mtu: u64,
    /// See `drops_outage`.
    pub drops_random: u64,
    /// See `drops_outage`.
    pub drops_queue: u64,
    /// See `drops_outage`.
    pub drops_codel: u64,
    /// Duplicates made.
    pub duplicated: u64,
    /// Packets held back for reordering.
    pub reordered: u64,
    /// Sum of queuing delays (arrival to start of serialisation) of sent packets.
    pub queue_delay_total: Duration,
    /// Largest queuing delay.
    pub queue_delay_max: Duration,
    /// Time the serialiser was busy.
    pub busy_time: Duration,
}

impl LinkStats {
    /// Mean queuing delay of sent packets.
    pub fn mean_queue_delay(&self) -> Duration {
        if self.sent == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(self.queue_delay_total.as_secs_f64() / self.sent as f64)
        }
    }

    /// All drops.
    pub fn drops(&self) -> u64 {
        self.drops_outage + self.drops_mtu + self.drops_random + self.drops_queue + self.drops_codel
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct CodelState {
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Instant,
    count: u32,
}

/// One direction of a link with its state.
#[derive(Debug)]
pub struct Link {
    /// The parameters in force (changes over time replace them).
    pub config: LinkConfig,
    /// Whether the link is down (everything offered is dropped).
    pub down: bool,
    /// Counters.
    pub stats: LinkStats,
    queue: VecDeque<Queued>,
    queued_bytes: u64,
    in_service: Option<(Queued, Instant)>,
    ge_bad: bool,
    red_avg: f64,
    codel: CodelState,
    last_arrival: Instant,
    rng: SimRng,
}

impl Link {
    /// An idle link.
    pub fn new(config: LinkConfig, rng: SimRng) -> Link {
        Link {
            config,
            down: false,
            stats: LinkStats::default(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_service: None,
            ge_bad: false,
            red_avg: 0.0,
            codel: CodelState::default(),
            last_arrival: Instant::ZERO,
            rng,
        }
    }

    /// Time to serialise `size` bytes (an IP datagram).
    fn serialisation(&self, size: usize) -> Duration {
        if self.config.rate_bps == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(
            ((size as u64) * 8).saturating_mul(1_000_000_000) / self.config.rate_bps,
        )
    }

    /// Bytes waiting, the packet in service included.
    pub fn backlog_bytes(&self) -> u64 {
        self.queued_bytes + self.in_service.map_or(0, |(q, _)| q.size as u64)
    }

    /// The queuing delay a packet arriving now would see.
    pub fn current_queue_delay(&self, now: Instant) -> Duration {
        if self.config.rate_bps == 0 {
            return Duration::ZERO;
        }
        let rest = self
            .in_service
            .map_or(Duration::ZERO, |(_, done)| done - now);
        rest + self.serialisation(self.queued_bytes as usize)
    }

    fn random_loss(&mut self) -> bool {
        self.config.loss.draw(&mut self.ge_bad, &mut self.rng)
    }

    fn drop(&mut self, why: Drop) -> Offer {
        let s = &mut self.stats;
        match why {
            Drop::Outage => s.drops_outage += 1,
            Drop::Mtu => s.drops_mtu += 1,
            Drop::Random => s.drops_random += 1,
            Drop::Queue => s.drops_queue += 1,
            Drop::Codel => s.drops_codel += 1,
        }
        Offer::Dropped(why)
    }

    /// Offers the IP datagram `id` of `size` bytes at `now`.
    pub fn offer(&mut self, now: Instant, id: u64, size: usize) -> Offer {
        self.stats.offered += 1;
        if self.down {
            return self.drop(Drop::Outage);
        }
        if self.config.mtu != 0 && size > self.config.mtu {
            return self.drop(Drop::Mtu);
        }
        if self.random_loss() {
            return self.drop(Drop::Random);
        }
        if self.config.rate_bps == 0 {
            self.stats.sent += 1;
            self.stats.sent_bytes += size as u64;
            return Offer::Immediate;
        }
        let backlog = self.backlog_bytes();
        let fits = match self.config.queue {
            QueueLimit::Bytes(limit) => backlog + size as u64 <= limit || self.in_service.is_none(),
            QueueLimit::Packets(limit) => self.queue.len() < limit || self.in_service.is_none(),
        };
        if !fits {
            return self.drop(Drop::Queue);
        }
        if let Aqm::Red {
            min_bytes,
            max_bytes,
            max_p,
            weight,
        } = self.config.aqm
        {
            self.red_avg = (1.0 - weight) * self.red_avg + weight * backlog as f64;
            let avg = self.red_avg;
            if avg >= max_bytes as f64 {
                return self.drop(Drop::Queue);
            }
            if avg > min_bytes as f64 {
                let p = max_p * (avg - min_bytes as f64) / (max_bytes - min_bytes) as f64;
                if self.rng.chance(p) {
                    return self.drop(Drop::Queue);
                }
            }
        }
        let q = Queued {
            id,
            size,
            arrived: now,
        };
        if self.in_service.is_none() {
            let done = now + self.serialisation(size);
            self.start(q, now, done);
            return Offer::Queued(Some(done));
        }
        self.queue.push_back(q);
        self.queued_bytes += size as u64;
        Offer::Queued(None)
    }

    fn start(&mut self, q: Queued, now: Instant, done: Instant) {
        let waited = now - q.arrived;
        self.stats.queue_delay_total += waited;
        self.stats.queue_delay_max = self.stats.queue_delay_max.max(waited);
        self.stats.busy_time += done - now;
        self.in_service = Some((q, done));
    }

    /// The serialiser finished at `now`: returns the id of the packet that left and,
    /// if another one started, when it finishes.
    pub fn tx_done(&mut self, now: Instant) -> (Option<u64>, Option<Instant>) {
        let left = self.in_service.take().map(|(q, _)| {
            self.stats.sent += 1;
            self.stats.sent_bytes += q.size as u64;
            q.id
        });
        while let Some(q) = self.queue.pop_front() {
            self.queued_bytes -= q.size as u64;
            if self.codel_drops(now, &q) {
                self.drop(Drop::Codel);
                continue;
            }
            let done = now + self.serialisation(q.size);
            self.start(q, now, done);
            return (left, Some(done));
        }
        self.codel.first_above = None;
        self.codel.dropping = false;
        (left, None)
    }

    /// RFC 8289's decision for the packet at the head, whose sojourn time is known now.
    fn codel_drops(&mut self, now: Instant, q: &Queued) -> bool {
        let Aqm::Codel { target, interval } = self.config.aqm else {
            return false;
        };
        let sojourn = now - q.arrived;
        let c = &mut self.codel;
        let ok_to_drop = if sojourn < target || self.queued_bytes < 1500 {
            c.first_above = None;
            false
        } else {
            match c.first_above {
                None => {
                    c.first_above = Some(now + interval);
                    false
                }
                Some(t) => now >= t,
            }
        };
        let control_law =
            |t: Instant, count: u32| t + interval.div_f64((count.max(1) as f64).sqrt());
        if c.dropping {
            if !ok_to_drop {
                c.dropping = false;
                return false;
            }
            if now >= c.drop_next {
                c.count += 1;
                c.drop_next = control_law(c.drop_next, c.count);
                return true;
            }
            false
        } else if ok_to_drop {
            c.dropping = true;
            c.count = if c.count > 2 && now - c.drop_next < interval * 16 {
                c.count - 2
            } else {
                1
            };
            c.drop_next = control_law(now, c.count);
            true
        } else {
            false
        }
    }

    /// When the packet that left the serialiser at `now` arrives at the far end: one
    /// time, or two for a duplicate. Applies delay, jitter and reordering.
    pub fn propagate(&mut self, now: Instant) -> [Option<Instant>; 2] {
        let c = &self.config;
        let mut at = now + c.delay;
        if !c.jitter.is_zero() {
            at += Duration::from_nanos(self.rng.below(c.jitter.as_nanos() as u64 + 1));
            if !c.jitter_reorders {
                at = at.max(self.last_arrival);
            }
        }
        if self.rng.chance(c.reorder) {
            self.stats.reordered += 1;
            at += c.reorder_delay;
        } else {
            self.last_arrival = self.last_arrival.max(at);
        }
        let dup = self.rng.chance(c.duplicate).then(|| {
            self.stats.duplicated += 1;
            at
        });
        [Some(at), dup]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(1000 + ms)
    }

    #[test]
    fn serialises_at_the_rate_and_drops_tail() {
        let cfg = LinkConfig {
            rate_bps: 8_000_000,
            queue: QueueLimit::Bytes(3000),
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(1));
        // 1000 bytes = 1 ms at 8 Mbit/s.
        assert_eq!(l.offer(t(0), 1, 1000), Offer::Queued(Some(t(1))));
        assert_eq!(l.offer(t(0), 2, 1000), Offer::Queued(None));
        assert_eq!(l.offer(t(0), 3, 1000), Offer::Queued(None));
        assert_eq!(l.offer(t(0), 4, 1000), Offer::Dropped(Drop::Queue));
        assert_eq!(l.current_queue_delay(t(0)), Duration::from_millis(3));
        assert_eq!(l.tx_done(t(1)), (Some(1), Some(t(2))));
        assert_eq!(l.tx_done(t(2)), (Some(2), Some(t(3))));
        assert_eq!(l.tx_done(t(3)), (Some(3), None));
        assert_eq!(l.stats.queue_delay_max, Duration::from_millis(2));
        assert_eq!(l.propagate(t(3)), [Some(t(28)), None]);
    }

    #[test]
    fn packet_limit_mtu_and_outage() {
        let cfg = LinkConfig {
            queue: QueueLimit::Packets(1),
            mtu: 1500,
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(1));
        assert!(matches!(l.offer(t(0), 1, 1000), Offer::Queued(Some(_))));
        assert_eq!(l.offer(t(0), 2, 1000), Offer::Queued(None));
        assert_eq!(l.offer(t(0), 3, 1000), Offer::Dropped(Drop::Queue));
        assert_eq!(l.offer(t(0), 4, 1501), Offer::Dropped(Drop::Mtu));
        l.down = true;
        assert_eq!(l.offer(t(0), 5, 100), Offer::Dropped(Drop::Outage));
    }

    #[test]
    fn loss_models_hit_their_mean() {
        for model in [
            LossModel::Bernoulli { p: 0.05 },
            LossModel::GilbertElliott {
                p_good_to_bad: 0.01,
                p_bad_to_good: 0.3,
                loss_good: 0.001,
                loss_bad: 0.5,
            },
        ] {
            let cfg = LinkConfig {
                rate_bps: 0,
                loss: model,
                ..LinkConfig::default()
            };
            let mut l = Link::new(cfg, SimRng::new(3));
            let n = 200_000;
            let lost = (0..n)
                .filter(|&i| matches!(l.offer(t(0), i, 100), Offer::Dropped(_)))
                .count();
            let rate = lost as f64 / n as f64;
            assert!(
                (rate - model.mean()).abs() < model.mean() * 0.1,
                "{model:?}: {rate}"
            );
        }
    }

    #[test]
    fn gilbert_elliott_losses_come_in_bursts() {
        let model = LossModel::GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.2,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let cfg = LinkConfig {
            rate_bps: 0,
            loss: model,
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(4));
        let lost: Vec<bool> = (0..100_000)
            .map(|i| matches!(l.offer(t(0), i, 100), Offer::Dropped(_)))
            .collect();
        let runs = lost.windows(2).filter(|w| w[0] && !w[1]).count();
        let total = lost.iter().filter(|&&x| x).count();
        // Mean burst length 1 / p_bad_to_good = 5.
        let mean_burst = total as f64 / runs as f64;
        assert!((4.0..6.0).contains(&mean_burst), "{mean_burst}");
    }

    #[test]
    fn jitter_without_reordering_keeps_order_and_reorder_holds_back() {
        let cfg = LinkConfig {
            rate_bps: 0,
            jitter: Duration::from_millis(20),
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(5));
        let mut last = Instant::ZERO;
        for i in 0..1000 {
            let [Some(at), _] = l.propagate(t(i / 10)) else {
                panic!()
            };
            assert!(at >= last, "no overtaking");
            last = at;
        }
        let cfg = LinkConfig {
            rate_bps: 0,
            reorder: 1.0,
            reorder_delay: Duration::from_millis(7),
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(5));
        assert_eq!(l.propagate(t(0))[0], Some(t(32)));
        let cfg = LinkConfig {
            rate_bps: 0,
            duplicate: 1.0,
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(5));
        assert_eq!(l.propagate(t(0)), [Some(t(25)), Some(t(25))]);
    }

    /// Offers 20 Mbit/s of 1500-byte packets to a 10 Mbit/s link for `secs`;
    /// returns the link and when the first CoDel drop happened.
    fn overload(aqm: Aqm, secs: u64) -> (Link, Option<Instant>) {
        let cfg = LinkConfig {
            rate_bps: 10_000_000,
            queue: QueueLimit::Bytes(10_000_000),
            aqm,
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(6));
        let mut next_done: Option<Instant> = None;
        let mut first_drop = None;
        for (id, us) in (0..secs * 1_000_000).step_by(600).enumerate() {
            let now = Instant::from_micros(1_000_000 + us);
            while let Some(d) = next_done.filter(|d| *d <= now) {
                next_done = l.tx_done(d).1;
                if l.stats.drops_codel > 0 && first_drop.is_none() {
                    first_drop = Some(d);
                }
            }
            if let Offer::Queued(Some(d)) = l.offer(now, id as u64, 1500) {
                next_done = Some(d);
            }
        }
        (l, first_drop)
    }

    #[test]
    fn codel_drops_only_after_an_interval_and_shortens_the_queue() {
        let codel = Aqm::Codel {
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
        };
        let (c, first) = overload(codel, 4);
        let (tail, _) = overload(Aqm::DropTail, 4);
        assert_eq!(tail.stats.drops_codel, 0);
        assert!(c.stats.drops_codel > 50, "{:?}", c.stats);
        // The queue passes 5 ms after about 10 ms of overload; the first drop waits a
        // whole interval after that.
        let first = first.expect("codel dropped");
        assert!(
            first >= Instant::from_millis(1100),
            "first drop at {first:?}"
        );
        assert!(
            c.stats.queue_delay_max < tail.stats.queue_delay_max,
            "{:?} vs {:?}",
            c.stats,
            tail.stats
        );
        // Below the rate nothing is dropped.
        let cfg = LinkConfig {
            rate_bps: 10_000_000,
            aqm: codel,
            ..LinkConfig::default()
        };
        let mut l = Link::new(cfg, SimRng::new(7));
        let mut next_done: Option<Instant> = None;
        for (id, us) in (0..2_000_000u64).step_by(2000).enumerate() {
            let now = Instant::from_micros(1_000_000 + us);
            while let Some(d) = next_done.filter(|d| *d <= now) {
                next_done = l.tx_done(d).1;
            }
            if let Offer::Queued(Some(d)) = l.offer(now, id as u64, 1500) {
                next_done = Some(d);
            }
        }
        assert_eq!(l.stats.drops_codel, 0);
    }
}
