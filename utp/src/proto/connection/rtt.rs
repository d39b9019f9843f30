//! Round-trip time estimation and the retransmission timeout (BEP 29 section G).

use core::time::Duration;

/// Smoothed RTT, its variation, and the retransmission timeout with backoff.
#[derive(Clone, Debug)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rtt_var: Duration,
    min_rto: Duration,
    max_rto: Duration,
    base_rto: Duration,
    backoff: u32,
}

impl RttEstimator {
    /// Before any sample the timeout is `initial` (BEP 29 G47: 1000 ms).
    pub fn new(initial: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rtt_var: Duration::ZERO,
            min_rto,
            max_rto,
            base_rto: initial,
            backoff: 0,
        }
    }

    /// Takes a sample from a packet sent exactly once (Karn's rule is the caller's).
    ///
    /// BEP 29 G43: `delta = rtt - packet_rtt; rtt_var += (|delta| - rtt_var) / 4;
    /// rtt += (packet_rtt - rtt) / 8`; G44: `timeout = max(rtt + rtt_var * 4, min)`.
    pub fn on_sample(&mut self, sample: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rtt_var = sample / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(sample);
                self.rtt_var = moving_average(self.rtt_var, delta, 4);
                self.srtt = Some(moving_average(srtt, sample, 8));
            }
        }
        let srtt = self.srtt.unwrap_or_default();
        self.base_rto = (srtt + self.rtt_var * 4)
            .max(self.min_rto)
            .min(self.max_rto);
        self.backoff = 0;
    }

    /// The timer expired: BEP 29 G48, each consecutive timeout doubles the timeout.
    pub fn on_timeout(&mut self) {
        self.backoff = (self.backoff + 1).min(16);
    }

    /// New data was acknowledged: the backoff ends.
    pub fn on_progress(&mut self) {
        self.backoff = 0;
    }

    /// The retransmission timeout in force.
    pub fn rto(&self) -> Duration {
        self.base_rto
            .saturating_mul(1 << self.backoff)
            .min(self.max_rto)
    }

    /// The smoothed RTT, or the initial timeout before any sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The RTT variation.
    pub fn rtt_var(&self) -> Duration {
        self.rtt_var
    }
}

/// `old + (new - old) / k`, exactly, rounded to the nearest nanosecond (halves up).
/// Integer arithmetic: this runs for every RTT sample.
fn moving_average(old: Duration, new: Duration, k: u128) -> Duration {
    let sum = old.as_nanos() * (k - 1) + new.as_nanos();
    let nanos = (sum + k / 2) / k;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn est() -> RttEstimator {
        RttEstimator::new(1000 * MS, 500 * MS, 60_000 * MS)
    }

    // Checklist G43, G44, G47, G48.
    /// Covers: G43, G44, G47, G48
    #[test]
    fn bep29_formulas() {
        let mut e = est();
        assert_eq!(e.rto(), 1000 * MS, "initial timeout");
        e.on_sample(100 * MS);
        assert_eq!(e.srtt(), Some(100 * MS));
        assert_eq!(e.rtt_var(), 50 * MS);
        assert_eq!(e.rto(), 500 * MS, "floored at the minimum");
        e.on_sample(900 * MS);
        // delta = 800: var = 50 + (800 - 50)/4 = 237.5; rtt = 100 + 800/8 = 200.
        assert_eq!(e.srtt().unwrap().as_micros(), 200_000);
        assert_eq!(e.rtt_var().as_micros(), 237_500);
        assert_eq!(e.rto().as_micros(), 200_000 + 4 * 237_500);
        let rto = e.rto();
        e.on_timeout();
        assert_eq!(e.rto(), rto * 2);
        e.on_timeout();
        assert_eq!(e.rto(), rto * 4);
        e.on_progress();
        assert_eq!(e.rto(), rto);
        for _ in 0..40 {
            e.on_timeout();
        }
        assert_eq!(e.rto(), 60_000 * MS, "capped");
    }

    #[test]
    fn averages_round_to_the_nearest_nanosecond() {
        let ns = Duration::from_nanos;
        assert_eq!(moving_average(ns(0), ns(10), 4), ns(3), "2.5 rounds up");
        assert_eq!(moving_average(ns(10), ns(0), 4), ns(8), "7.5 rounds up");
        assert_eq!(moving_average(ns(100), ns(105), 8), ns(101), "100.625");
        let long = Duration::from_secs(3600);
        assert_eq!(moving_average(long, long, 8), long);
    }
}
