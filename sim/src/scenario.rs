//! A bulk-transfer scenario: one uTP flow over a bottleneck link, in virtual time.

use core::fmt;
use core::time::Duration;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use utp::proto::{ConnectionStats, Endpoint, Event, StreamError};
use utp::{Config, Instant};

use crate::link::{Fate, Link, LinkConfig};

/// One flow of `bytes` from A to B over `forward`, ACKs back over `reverse`.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Seed of every random choice; the same seed gives the same run.
    pub seed: u64,
    /// Bytes to move from A to B.
    pub bytes: usize,
    /// The A→B direction.
    pub forward: LinkConfig,
    /// The B→A direction.
    pub reverse: LinkConfig,
    /// The uTP configuration of both endpoints.
    pub config: Config,
    /// Virtual time after which the run is declared stalled.
    pub time_limit: Duration,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 1,
            bytes: 8 << 20,
            forward: LinkConfig {
                loss: 0.001,
                ..LinkConfig::default()
            },
            reverse: LinkConfig::default(),
            config: Config::default(),
            time_limit: Duration::from_secs(600),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed used.
    pub seed: u64,
    /// Bytes delivered to B (verified byte for byte).
    pub bytes: usize,
    /// Virtual time from connect to the last byte read.
    pub duration: Duration,
    /// Goodput in bits per second.
    pub goodput_bps: f64,
    /// Goodput as a fraction of the bottleneck rate.
    pub utilisation: f64,
    /// The forward link after the run.
    pub forward: Link,
    /// The sender's connection statistics at the end.
    pub sender: ConnectionStats,
    /// Datagrams that crossed a link (both directions).
    pub datagrams: u64,
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// The configuration was refused.
    Config(String),
    /// Nothing finished within the time limit.
    Stalled(String),
    /// Data arrived wrong (a bug in the protocol).
    Corrupted(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Config(m) => write!(f, "bad scenario: {m}"),
            SimError::Stalled(m) => write!(f, "stalled: {m}"),
            SimError::Corrupted(m) => write!(f, "data corrupted: {m}"),
        }
    }
}

impl std::error::Error for SimError {}

/// The byte at `offset` of the test stream: cheap to check on arrival.
fn stream_byte(offset: usize) -> u8 {
    (offset as u8).wrapping_mul(31) ^ (offset >> 11) as u8
}

struct Delivery {
    at: Instant,
    order: u64,
    to_b: bool,
    data: Vec<u8>,
}

impl PartialEq for Delivery {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delivery {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Runs the scenario to completion.
pub fn run(s: &Scenario) -> Result<Report, SimError> {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut seed_a = [0u8; 32];
    let mut seed_b = [0u8; 32];
    rng.fill_bytes(&mut seed_a);
    rng.fill_bytes(&mut seed_b);
    let mut a =
        Endpoint::new(s.config.clone(), seed_a).map_err(|e| SimError::Config(e.to_string()))?;
    let mut b =
        Endpoint::new(s.config.clone(), seed_b).map_err(|e| SimError::Config(e.to_string()))?;
    let a_addr: SocketAddr = "10.0.0.1:6881".parse().expect("literal");
    let b_addr: SocketAddr = "10.0.0.2:6881".parse().expect("literal");
    let mut fwd = Link::new(s.forward.clone());
    let mut rev = Link::new(s.reverse.clone());
    let start = Instant::from_millis(1000);
    let mut now = start;
    let end = start + s.time_limit;
    let mut wire: BinaryHeap<Reverse<Delivery>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut datagrams = 0u64;
    let mut buf = vec![0u8; 65_536];
    let mut read_buf = vec![0u8; 65_536];
    let mut chunk = vec![0u8; 65_536];

    let ha = a
        .connect(now, b_addr)
        .map_err(|e| SimError::Config(e.to_string()))?;
    let mut hb = None;
    let mut written = 0usize;
    let (mut chunk_off, mut chunk_len) = (0usize, 0usize);
    let mut received = 0usize;
    let mut finished_at = None;

    loop {
        // Application on A: write the stream, then shut down.
        while written < s.bytes {
            if chunk_off == chunk_len {
                chunk_len = (s.bytes - written).min(chunk.len());
                chunk_off = 0;
                for (i, b) in chunk[..chunk_len].iter_mut().enumerate() {
                    *b = stream_byte(written + i);
                }
            }
            match a.write(now, ha, &chunk[chunk_off..chunk_len]) {
                Ok(k) => {
                    written += k;
                    chunk_off += k;
                }
                Err(StreamError::WouldBlock) => break,
                Err(e) => return Err(SimError::Stalled(format!("sender: {e}"))),
            }
            if written == s.bytes {
                let _ = a.shutdown(now, ha);
            }
        }
        if s.bytes == 0 && written == 0 {
            let _ = a.shutdown(now, ha);
        }
        // Application on B: read and verify.
        if let Some(h) = hb {
            loop {
                match b.read(now, h, &mut read_buf) {
                    Ok(0) => {
                        finished_at.get_or_insert(now);
                        break;
                    }
                    Ok(n) => {
                        for (i, &byte) in read_buf[..n].iter().enumerate() {
                            if byte != stream_byte(received + i) {
                                return Err(SimError::Corrupted(format!(
                                    "byte {} differs",
                                    received + i
                                )));
                            }
                        }
                        received += n;
                    }
                    Err(StreamError::WouldBlock) => break,
                    Err(e) => return Err(SimError::Stalled(format!("receiver: {e}"))),
                }
            }
        }
        if let (Some(_), Some(h)) = (finished_at, hb) {
            if b.connection(h).is_none_or(|c| c.is_peer_finished()) {
                break;
            }
        }
        // Output of both endpoints onto the links.
        for (ep, link, to_b) in [(&mut a, &mut fwd, true), (&mut b, &mut rev, false)] {
            while let Some(t) = ep.poll_transmit(now, &mut buf) {
                let coin = rng.next_u64() as f64 / (u64::MAX as f64 + 1.0);
                if let Fate::Deliver { at, .. } = link.offer(now, t.len, coin) {
                    order += 1;
                    datagrams += 1;
                    wire.push(Reverse(Delivery {
                        at,
                        order,
                        to_b,
                        data: buf[..t.len].to_vec(),
                    }));
                }
            }
        }
        while let Some((h, ev)) = b.poll_event() {
            if ev == Event::Incoming {
                hb = Some(h);
            }
        }
        while let Some((_, ev)) = a.poll_event() {
            if let Event::Closed(Some(e)) = ev {
                return Err(SimError::Stalled(format!("sender connection failed: {e}")));
            }
        }
        // Advance virtual time to the next event.
        let next = [
            wire.peek().map(|Reverse(d)| d.at),
            a.poll_timeout(),
            b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return Err(SimError::Stalled(format!(
                "nothing left to happen after {received} bytes"
            )));
        };
        now = now.max(next);
        if now > end {
            return Err(SimError::Stalled(format!(
                "{received} of {} bytes after {:?}",
                s.bytes, s.time_limit
            )));
        }
        while wire.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(d) = wire.pop().expect("peeked");
            if d.to_b {
                b.handle_datagram(now, a_addr, &d.data);
            } else {
                a.handle_datagram(now, b_addr, &d.data);
            }
        }
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    let duration = finished_at.unwrap_or(now) - start;
    let goodput_bps = received as f64 * 8.0 / duration.as_secs_f64().max(1e-9);
    Ok(Report {
        seed: s.seed,
        bytes: received,
        duration,
        goodput_bps,
        utilisation: goodput_bps / s.forward.rate_bps as f64,
        sender: a.connection(ha).map(|c| c.stats()).unwrap_or_default(),
        forward: fwd,
        datagrams,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.forward.config;
        let st = &self.sender;
        writeln!(f, "seed                 {}", self.seed)?;
        writeln!(
            f,
            "bottleneck           {:.1} Mbit/s, {} ms one-way, queue {} KB, loss {:.2} %",
            l.rate_bps as f64 / 1e6,
            l.delay.as_millis(),
            l.queue_bytes / 1000,
            l.loss * 100.0
        )?;
        writeln!(
            f,
            "delivered            {} bytes in {:.3} s (virtual), verified",
            self.bytes,
            self.duration.as_secs_f64()
        )?;
        writeln!(
            f,
            "goodput              {:.2} Mbit/s ({:.1} % of the bottleneck)",
            self.goodput_bps / 1e6,
            self.utilisation * 100.0
        )?;
        writeln!(
            f,
            "queuing delay        mean {:.1} ms, max {:.1} ms (at the bottleneck)",
            self.forward.mean_queuing_delay().as_secs_f64() * 1e3,
            self.forward.queued_max.as_secs_f64() * 1e3
        )?;
        writeln!(
            f,
            "link drops           {} random, {} queue overflow",
            self.forward.lost, self.forward.queue_drops
        )?;
        writeln!(
            f,
            "retransmits          {} dup-ack, {} sack, {} timeout ({} timeouts)",
            st.retransmits_dup_ack, st.retransmits_sack, st.retransmits_timeout, st.timeouts
        )?;
        writeln!(
            f,
            "rtt / rto            {:.1} ms / {:.0} ms",
            st.rtt.as_secs_f64() * 1e3,
            st.rto.as_secs_f64() * 1e3
        )?;
        write!(f, "datagrams simulated  {}", self.datagrams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_run() {
        let s = Scenario {
            bytes: 300_000,
            forward: LinkConfig {
                loss: 0.02,
                ..LinkConfig::default()
            },
            ..Scenario::default()
        };
        let r1 = run(&s).unwrap();
        let r2 = run(&s).unwrap();
        assert_eq!(r1.duration, r2.duration);
        assert_eq!(r1.datagrams, r2.datagrams);
        assert_eq!(r1.bytes, 300_000);
    }
}
