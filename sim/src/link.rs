//! A one-way bottleneck link: serialisation at a fixed rate, a drop-tail queue in
//! bytes, propagation delay and independent random loss.

use core::time::Duration;

use utp::Instant;

/// The parameters of one direction of a link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Bottleneck rate in bits per second.
    pub rate_bps: u64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Drop-tail queue capacity in bytes (waiting to be serialised).
    pub queue_bytes: u64,
    /// Probability that a datagram is lost, independently of the others.
    pub loss: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            rate_bps: 10_000_000,
            delay: Duration::from_millis(25),
            queue_bytes: 250_000,
            loss: 0.0,
        }
    }
}

/// What happened to a datagram offered to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered at this time, after this long in the queue.
    Deliver {
        /// Arrival time at the far end.
        at: Instant,
        /// Time spent waiting in the queue.
        queued: Duration,
    },
    /// Dropped by random loss.
    Lost,
    /// Dropped because the queue was full.
    QueueFull,
}

/// One direction of a link with its queue state and counters.
#[derive(Clone, Debug)]
pub struct Link {
    /// The parameters.
    pub config: LinkConfig,
    busy_until: Instant,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Bytes delivered.
    pub delivered_bytes: u64,
    /// Datagrams lost at random.
    pub lost: u64,
    /// Datagrams dropped by the full queue.
    pub queue_drops: u64,
    /// Sum of queuing delays of delivered datagrams, for the mean.
    pub queued_total: Duration,
    /// Largest queuing delay seen.
    pub queued_max: Duration,
}

impl Link {
    /// An idle link.
    pub fn new(config: LinkConfig) -> Link {
        Link {
            config,
            busy_until: Instant::ZERO,
            delivered: 0,
            delivered_bytes: 0,
            lost: 0,
            queue_drops: 0,
            queued_total: Duration::ZERO,
            queued_max: Duration::ZERO,
        }
    }

    fn serialisation(&self, bytes: usize) -> Duration {
        // IP and UDP headers count against the bottleneck too.
        let wire_bits = (bytes as u64 + 28) * 8;
        Duration::from_nanos(wire_bits.saturating_mul(1_000_000_000) / self.config.rate_bps.max(1))
    }

    /// Offers a datagram of `bytes` at `now`; `coin` is a uniform draw in [0, 1) from
    /// the simulation's seeded generator.
    pub fn offer(&mut self, now: Instant, bytes: usize, coin: f64) -> Fate {
        if coin < self.config.loss {
            self.lost += 1;
            return Fate::Lost;
        }
        let start = self.busy_until.max(now);
        let queued = start - now;
        let backlog_bytes = queued.as_secs_f64() * self.config.rate_bps as f64 / 8.0;
        if backlog_bytes + bytes as f64 > self.config.queue_bytes as f64 && !queued.is_zero() {
            self.queue_drops += 1;
            return Fate::QueueFull;
        }
        let done = start + self.serialisation(bytes);
        self.busy_until = done;
        self.delivered += 1;
        self.delivered_bytes += bytes as u64;
        self.queued_total += queued;
        self.queued_max = self.queued_max.max(queued);
        Fate::Deliver {
            at: done + self.config.delay,
            queued,
        }
    }

    /// Mean queuing delay of delivered datagrams.
    pub fn mean_queuing_delay(&self) -> Duration {
        if self.delivered == 0 {
            Duration::ZERO
        } else {
            self.queued_total / self.delivered as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_at_the_rate_and_drops_tail() {
        let mut l = Link::new(LinkConfig {
            rate_bps: 8_000_000,
            delay: Duration::from_millis(10),
            queue_bytes: 3000,
            loss: 0.0,
        });
        let t0 = Instant::from_millis(1000);
        // 972 + 28 = 1000 bytes = 1 ms at 8 Mbit/s.
        assert_eq!(
            l.offer(t0, 972, 0.5),
            Fate::Deliver {
                at: t0 + Duration::from_millis(11),
                queued: Duration::ZERO
            }
        );
        assert_eq!(
            l.offer(t0, 972, 0.5),
            Fate::Deliver {
                at: t0 + Duration::from_millis(12),
                queued: Duration::from_millis(1)
            }
        );
        // 2000 bytes wait; a third fits the 3000-byte queue, a fourth does not.
        assert!(matches!(l.offer(t0, 972, 0.5), Fate::Deliver { .. }));
        assert_eq!(l.offer(t0, 972, 0.5), Fate::QueueFull);
        assert_eq!(l.lost, 0);
        assert_eq!(l.queue_drops, 1);
        let mut lossy = Link::new(LinkConfig {
            loss: 0.1,
            ..LinkConfig::default()
        });
        assert_eq!(lossy.offer(t0, 100, 0.05), Fate::Lost);
    }
}
