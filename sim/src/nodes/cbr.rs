//! Constant-rate UDP: a sender of fixed-size datagrams at a fixed rate, and its sink.

use core::time::Duration;
use std::net::SocketAddr;

use utp::Instant;

use crate::engine::Node;
use crate::metrics::FlowSample;

/// A constant-rate flow.
#[derive(Clone, Debug)]
pub struct CbrSpec {
    /// The flow's index.
    pub flow: usize,
    /// The sink.
    pub remote: SocketAddr,
    /// Rate in bits per second (of UDP payload).
    pub rate_bps: u64,
    /// Datagram payload size.
    pub size: usize,
    /// Start time.
    pub start: Instant,
    /// Stop time.
    pub stop: Option<Instant>,
}

/// A constant-rate sender, or a sink that counts what arrives.
#[derive(Debug)]
pub struct CbrNode {
    addr: SocketAddr,
    spec: Option<CbrSpec>,
    next: Option<Instant>,
    due: bool,
    sink_flow: Option<usize>,
    received: u64,
}

impl CbrNode {
    /// A sender.
    pub fn sender(addr: SocketAddr, spec: CbrSpec) -> CbrNode {
        let start = spec.start;
        CbrNode {
            addr,
            spec: Some(spec),
            next: Some(start),
            due: false,
            sink_flow: None,
            received: 0,
        }
    }

    /// A sink for flow `flow`.
    pub fn sink(addr: SocketAddr, flow: usize) -> CbrNode {
        CbrNode {
            addr,
            spec: None,
            next: None,
            due: false,
            sink_flow: Some(flow),
            received: 0,
        }
    }
}

impl Node for CbrNode {
    fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        self.received += data.len() as u64;
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.next
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(spec) = &self.spec else { return };
        if self.next.is_some_and(|n| n <= now) {
            if spec.stop.is_some_and(|t| now >= t) {
                self.next = None;
                return;
            }
            self.due = true;
            let gap = Duration::from_nanos(
                (spec.size as u64 * 8).saturating_mul(1_000_000_000) / spec.rate_bps.max(1),
            );
            self.next = Some(now + gap);
        }
    }

    fn max_datagram(&self) -> usize {
        self.spec.as_ref().map_or(0, |s| s.size)
    }

    fn poll_transmit(
        &mut self,
        _now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        let spec = self.spec.as_ref()?;
        if !std::mem::take(&mut self.due) {
            return None;
        }
        buf[..spec.size].fill(0xCB);
        Some((self.addr, spec.remote, spec.size))
    }

    fn report(&self, _now: Instant, out: &mut Vec<FlowSample>) {
        if let Some(flow) = self.sink_flow {
            out.push(FlowSample::receiver(flow, self.received, None));
        }
    }
}
