//! A node running our uTP endpoint, with a bulk sender and/or a verifying receiver.

use std::net::SocketAddr;

use utp::proto::{ConnectionHandle, Endpoint, Event, StreamError};
use utp::{Config, Instant};

use super::{pattern, PATTERN_LEN};
use crate::engine::Node;
use crate::metrics::FlowSample;

/// Unsent bytes the sending application keeps queued beyond a congestion window.
const UNSENT_MARGIN: usize = 64 * 1024;

/// What a sending application does.
#[derive(Clone, Debug)]
pub struct UtpSendSpec {
    /// The flow's index (for metrics).
    pub flow: usize,
    /// Where to connect.
    pub remote: SocketAddr,
    /// Bytes to send; `None` sends until `stop`.
    pub bytes: Option<u64>,
    /// When to connect.
    pub start: Instant,
    /// When to stop sending (close the connection); `None` for never.
    pub stop: Option<Instant>,
}

impl UtpSendSpec {
    /// When the sending application next has something to do: connect at `start`,
    /// then close at `stop`; nothing once it has shut its stream down.
    pub(crate) fn wake_at(&self, opened: bool, shut: bool) -> Option<Instant> {
        if !opened {
            Some(self.start)
        } else if !shut {
            self.stop
        } else {
            None
        }
    }
}

#[derive(Debug)]
struct Sender {
    spec: UtpSendSpec,
    handle: Option<ConnectionHandle>,
    written: u64,
    shut: bool,
}

#[derive(Debug)]
struct Receiver {
    flow: usize,
    conns: Vec<(ConnectionHandle, u64)>,
    delivered: u64,
    finished: Option<Instant>,
}

/// A host with one uTP endpoint (one address) and its applications.
pub struct UtpNode {
    addr: SocketAddr,
    ep: Endpoint,
    sender: Option<Sender>,
    receiver: Option<Receiver>,
    pattern: &'static [u8],
    failure: Option<String>,
}

impl UtpNode {
    /// A node at `addr`; `seed` seeds its endpoint.
    pub fn new(addr: SocketAddr, config: Config, seed: [u8; 32]) -> Result<UtpNode, String> {
        let ep = Endpoint::new(config, seed).map_err(|e| e.to_string())?;
        Ok(UtpNode {
            addr,
            ep,
            sender: None,
            receiver: None,
            pattern: pattern(),
            failure: None,
        })
    }

    /// Adds a sending application.
    pub fn with_sender(mut self, spec: UtpSendSpec) -> UtpNode {
        self.sender = Some(Sender {
            spec,
            handle: None,
            written: 0,
            shut: false,
        });
        self
    }

    /// Adds a receiving application for flow `flow` (it accepts every connection).
    pub fn with_receiver(mut self, flow: usize) -> UtpNode {
        self.receiver = Some(Receiver {
            flow,
            conns: Vec::new(),
            delivered: 0,
            finished: None,
        });
        self
    }

    /// The endpoint, for inspection.
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    fn pump(&mut self, now: Instant) {
        while let Some((h, ev)) = self.ep.poll_event() {
            match ev {
                Event::Incoming => {
                    if let Some(r) = &mut self.receiver {
                        r.conns.push((h, 0));
                    }
                }
                Event::Closed(Some(e)) => {
                    let stopping = self
                        .sender
                        .as_ref()
                        .is_some_and(|s| s.spec.stop.is_some_and(|t| now >= t));
                    if !stopping && self.failure.is_none() {
                        self.failure = Some(format!("{} connection ended: {e}", self.addr));
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = &mut self.sender {
            if s.handle.is_none() && now >= s.spec.start {
                match self.ep.connect(now, s.spec.remote) {
                    Ok(h) => s.handle = Some(h),
                    Err(e) => self.failure = Some(format!("connect failed: {e}")),
                }
            }
            if let Some(h) = s.handle {
                let stop = s.spec.stop.is_some_and(|t| now >= t);
                let total = s.spec.bytes.unwrap_or(u64::MAX);
                // Keeps a congestion window and a margin of unsent data queued: the
                // connection can never send more than a window before the next pump
                // (after every datagram and timer), so it is never
                // application-limited, and what it sends was written recently (still
                // in cache) rather than up to a send buffer (1 MiB) earlier.
                let (mut unsent, want) = self.ep.connection(h).map_or((0, 0), |c| {
                    (c.unsent_bytes(), c.congestion().window() + UNSENT_MARGIN)
                });
                while !stop && s.written < total && unsent < want {
                    let off = (s.written % PATTERN_LEN as u64) as usize;
                    let n = (total - s.written)
                        .min((PATTERN_LEN - off) as u64)
                        .min((want - unsent) as u64) as usize;
                    match self.ep.write(now, h, &self.pattern[off..off + n]) {
                        Ok(k) => {
                            s.written += k as u64;
                            unsent += k;
                            if k < n {
                                // A short write: the send buffer is full.
                                break;
                            }
                        }
                        Err(StreamError::WouldBlock) => break,
                        Err(_) => break,
                    }
                }
                if !s.shut && (s.written == total || stop) {
                    s.shut = true;
                    let _ = if stop {
                        self.ep.close(now, h)
                    } else {
                        self.ep.shutdown(now, h)
                    };
                }
            }
        }
        if let Some(r) = &mut self.receiver {
            for (h, offset) in r.conns.iter_mut() {
                loop {
                    // Checked in place, where the endpoint holds the bytes.
                    let mut intact = true;
                    let pattern = self.pattern;
                    let at = *offset;
                    let read = self.ep.read_with(now, *h, usize::MAX, |data| {
                        intact = matches_pattern(pattern, at, data);
                    });
                    match read {
                        Ok(0) => {
                            r.finished.get_or_insert(now);
                            break;
                        }
                        Ok(n) => {
                            if !intact && self.failure.is_none() {
                                self.failure = Some(format!(
                                    "flow {}: data corrupted near byte {}",
                                    r.flow, offset
                                ));
                            }
                            *offset += n as u64;
                            r.delivered += n as u64;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

/// Whether `data` equals the test stream from `offset` on.
pub(crate) fn matches_pattern(pattern: &[u8], offset: u64, mut data: &[u8]) -> bool {
    let mut off = (offset % PATTERN_LEN as u64) as usize;
    while !data.is_empty() {
        let n = data.len().min(PATTERN_LEN - off);
        if data[..n] != pattern[off..off + n] {
            return false;
        }
        data = &data[n..];
        off = 0;
    }
    true
}

impl Node for UtpNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        self.ep.handle_datagram(now, from, data);
        self.pump(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let ep = self.ep.poll_timeout();
        let app = self
            .sender
            .as_ref()
            .and_then(|s| s.spec.wake_at(s.handle.is_some(), s.shut));
        match (ep, app) {
            (Some(e), Some(a)) => Some(e.min(a)),
            (e, a) => e.or(a),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.pump(now);
    }

    fn max_datagram(&self) -> usize {
        self.ep.config().max_packet_size
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        let t = self.ep.poll_transmit(now, buf)?;
        Some((self.addr, t.destination, t.len))
    }

    fn report(&self, _now: Instant, out: &mut Vec<FlowSample>) {
        if let Some(s) = &self.sender {
            let conn = s.handle.and_then(|h| self.ep.connection(h));
            let st = conn.map(|c| c.stats()).unwrap_or_default();
            out.push(FlowSample {
                flow: s.spec.flow,
                cwnd: Some(conn.map_or(0, |c| c.congestion().window() as u64)),
                rtt: Some(st.rtt),
                delay_estimate: conn.and_then(|c| c.congestion().queuing_delay()),
                retransmits: Some(
                    st.retransmits_dup_ack + st.retransmits_sack + st.retransmits_timeout,
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_check_detects_shifts_and_wraps() {
        let p = pattern();
        let stream: Vec<u8> = (0..200_000).map(|i| p[i % PATTERN_LEN]).collect();
        assert!(matches_pattern(p, 60_000, &stream[60_000..130_000]));
        assert!(!matches_pattern(p, 60_001, &stream[60_000..61_000]));
        let mut bad = stream[1000..3000].to_vec();
        bad[1500] ^= 1;
        assert!(!matches_pattern(p, 1000, &bad));
    }
}
