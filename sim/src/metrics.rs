//! Metrics: per-flow and per-link time series, and summaries.

use core::time::Duration;
use std::collections::BTreeMap;

use utp::Instant;

use crate::link::Link;

/// What a node reports about one flow at a sampling instant. A flow's sender and
/// receiver each fill in what they know; the recorder merges them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowSample {
    /// The flow's index in the scenario.
    pub flow: usize,
    /// Bytes delivered in order to the receiving application so far.
    pub delivered: Option<u64>,
    /// Congestion window in bytes.
    pub cwnd: Option<u64>,
    /// Smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// The queuing delay the sender's congestion controller estimates (LEDBAT).
    pub delay_estimate: Option<Duration>,
    /// Packets retransmitted so far.
    pub retransmits: Option<u64>,
    /// Whether the flow's transfer is complete.
    pub finished: Option<Instant>,
}

impl FlowSample {
    /// What a receiving application knows of flow `flow`: bytes delivered so far and
    /// when the transfer completed.
    pub fn receiver(flow: usize, delivered: u64, finished: Option<Instant>) -> FlowSample {
        FlowSample {
            flow,
            delivered: Some(delivered),
            finished,
            ..FlowSample::default()
        }
    }
}

/// One flow at one sampling instant, after merging.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowPoint {
    /// The time.
    pub t: Instant,
    /// Cumulative delivered bytes.
    pub delivered: u64,
    /// Goodput since the previous sample, bits per second.
    pub goodput_bps: f64,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Smoothed RTT.
    pub rtt: Duration,
    /// The sender's queuing-delay estimate.
    pub delay_estimate: Duration,
    /// Cumulative retransmissions.
    pub retransmits: u64,
}

/// One link at one sampling instant.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkPoint {
    /// The time.
    pub t: Instant,
    /// Queuing delay a packet arriving now would see.
    pub queue_delay: Duration,
    /// Bytes waiting.
    pub backlog: u64,
    /// Cumulative bytes sent.
    pub sent_bytes: u64,
    /// Cumulative drops.
    pub drops: u64,
}

/// Collects samples during a run.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    /// Time series per flow index.
    pub flows: BTreeMap<usize, Vec<FlowPoint>>,
    /// Time series per link index.
    pub links: Vec<Vec<LinkPoint>>,
    /// When each flow finished, if it did.
    pub finished: BTreeMap<usize, Instant>,
}

impl Recorder {
    /// Adds one sampling instant.
    pub fn record(&mut self, t: Instant, samples: Vec<FlowSample>, links: &[Link]) {
        let mut merged: BTreeMap<usize, FlowSample> = BTreeMap::new();
        for s in samples {
            let m = merged.entry(s.flow).or_insert_with(|| FlowSample {
                flow: s.flow,
                ..FlowSample::default()
            });
            m.delivered = m.delivered.or(s.delivered);
            m.cwnd = m.cwnd.or(s.cwnd);
            m.rtt = m.rtt.or(s.rtt);
            m.delay_estimate = m.delay_estimate.or(s.delay_estimate);
            m.retransmits = m.retransmits.or(s.retransmits);
            m.finished = m.finished.or(s.finished);
        }
        for (flow, s) in merged {
            if let Some(f) = s.finished {
                self.finished.entry(flow).or_insert(f);
            }
            let series = self.flows.entry(flow).or_default();
            let delivered = s.delivered.unwrap_or(0);
            let goodput_bps = match series.last() {
                Some(prev) if t > prev.t => {
                    delivered.saturating_sub(prev.delivered) as f64 * 8.0
                        / (t - prev.t).as_secs_f64()
                }
                _ => 0.0,
            };
            series.push(FlowPoint {
                t,
                delivered,
                goodput_bps,
                cwnd: s.cwnd.unwrap_or(0),
                rtt: s.rtt.unwrap_or_default(),
                delay_estimate: s.delay_estimate.unwrap_or_default(),
                retransmits: s.retransmits.unwrap_or(0),
            });
        }
        if self.links.len() < links.len() {
            self.links.resize(links.len(), Vec::new());
        }
        for (i, l) in links.iter().enumerate() {
            self.links[i].push(LinkPoint {
                t,
                queue_delay: l.current_queue_delay(t),
                backlog: l.backlog_bytes(),
                sent_bytes: l.stats.sent_bytes,
                drops: l.stats.drops(),
            });
        }
    }

    /// Mean goodput of `flow` between `from` and `to` (bits per second).
    pub fn goodput(&self, flow: usize, from: Instant, to: Instant) -> f64 {
        let Some(series) = self.flows.get(&flow) else {
            return 0.0;
        };
        let at = |t: Instant| {
            series
                .iter()
                .take_while(|p| p.t <= t)
                .last()
                .map_or((t, 0), |p| (p.t, p.delivered))
        };
        let (t0, d0) = at(from);
        let (t1, d1) = at(to);
        if t1 <= t0 {
            return 0.0;
        }
        d1.saturating_sub(d0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
    }

    /// Mean of a link's sampled queuing delay between `from` and `to`.
    pub fn mean_queue_delay(&self, link: usize, from: Instant, to: Instant) -> Duration {
        let pts: Vec<_> = self
            .links
            .get(link)
            .into_iter()
            .flatten()
            .filter(|p| p.t >= from && p.t <= to)
            .collect();
        if pts.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(
            pts.iter().map(|p| p.queue_delay.as_secs_f64()).sum::<f64>() / pts.len() as f64,
        )
    }
}

/// Jain's fairness index of a set of throughputs: 1 when all are equal, 1/n when one
/// flow has everything.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    if sq == 0.0 {
        return 1.0;
    }
    sum * sum / (xs.len() as f64 * sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index() {
        assert!((jain(&[5.0, 5.0, 5.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!((jain(&[3.0, 1.0]) - 0.8).abs() < 1e-12);
    }
}
