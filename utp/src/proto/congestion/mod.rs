//! Congestion control behind a trait, chosen by configuration.
//!
//! The connection reports what happens on the path through the `on_*` hooks and asks
//! [`CongestionController::window`] how many bytes it may keep in flight. Controllers:
//!
//! - [`Ledbat`]: LEDBAT (RFC 6817) as BEP 29 applies it, with every parameter in
//!   [`LedbatConfig`] and profiles that reproduce libutp's and libtorrent's choices.
//! - [`FixedWindow`]: a constant window, a test double so protocol tests do not depend
//!   on LEDBAT's dynamics.

mod fixed;
mod ledbat;

use core::fmt;
use core::time::Duration;

use crate::time::Instant;

pub use fixed::FixedWindow;
pub use ledbat::{Ledbat, LedbatConfig};

/// What an acknowledgement told the connection; passed to [`CongestionController::on_ack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckEvent {
    /// Payload bytes newly acknowledged by this packet (cumulatively or selectively).
    pub bytes_acked: usize,
    /// Payload bytes in flight *before* this acknowledgement was applied.
    pub flight_size: usize,
    /// One-way delay sample in microseconds: the peer's `timestamp_difference` field,
    /// i.e. (peer's receive clock − our send clock) mod 2³². Only differences between
    /// samples are meaningful because the two clocks are unrelated. `None` when the
    /// peer sent 0 (no sample yet).
    pub delay_sample: Option<u32>,
    /// A round-trip time sample from a packet sent exactly once (Karn's rule), if any.
    pub rtt_sample: Option<Duration>,
    /// The smoothed round-trip time after this acknowledgement.
    pub smoothed_rtt: Duration,
    /// The current maximum payload per packet (MSS), in bytes.
    pub mss: usize,
}

/// A congestion controller: decides the congestion window, in bytes.
///
/// Hooks are called by the connection in this order of causality: [`on_sent`] for every
/// data packet transmitted (new or retransmitted), [`on_ack`] for every packet from the
/// peer that acknowledged new data, [`on_loss`] when a packet is declared lost by
/// duplicate or selective ACKs, [`on_timeout`] when the retransmission timer fires.
/// [`window`] may be called at any time.
///
/// [`on_sent`]: CongestionController::on_sent
/// [`on_ack`]: CongestionController::on_ack
/// [`on_loss`]: CongestionController::on_loss
/// [`on_timeout`]: CongestionController::on_timeout
/// [`window`]: CongestionController::window
pub trait CongestionController: fmt::Debug + Send {
    /// A data packet of `bytes` payload bytes was sent with `flight_size` bytes already
    /// in flight (before it).
    fn on_sent(&mut self, now: Instant, bytes: usize, flight_size: usize);

    /// Data was newly acknowledged.
    fn on_ack(&mut self, now: Instant, ack: &AckEvent);

    /// A packet was declared lost (fast retransmit). Implementations reduce the window
    /// at most once per round trip (`smoothed_rtt`), as RFC 6817 asks.
    fn on_loss(&mut self, now: Instant, smoothed_rtt: Duration, mss: usize);

    /// The retransmission timer expired: nothing was acknowledged for a whole timeout.
    fn on_timeout(&mut self, now: Instant, mss: usize);

    /// The congestion window: how many payload bytes may be in flight.
    fn window(&self) -> usize;

    /// The queuing delay this controller currently estimates, if it estimates one.
    fn queuing_delay(&self) -> Option<Duration> {
        None
    }

    /// The base (minimum) one-way delay this controller currently believes, in
    /// microseconds of the peer-relative clock, if it tracks one.
    fn base_delay(&self) -> Option<u32> {
        None
    }

    /// Whether the controller is in slow start.
    fn in_slow_start(&self) -> bool {
        false
    }
}

/// Which congestion controller a connection uses; part of [`crate::Config`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum CongestionConfig {
    /// LEDBAT with the given parameters.
    Ledbat(LedbatConfig),
    /// A fixed window of this many bytes (for tests and experiments).
    Fixed(usize),
}

impl Default for CongestionConfig {
    fn default() -> Self {
        CongestionConfig::Ledbat(LedbatConfig::default())
    }
}

impl CongestionConfig {
    /// Builds the controller this configuration describes, for a path whose packets
    /// carry at most `mss` payload bytes.
    pub fn build(&self, now: Instant, mss: usize) -> Box<dyn CongestionController> {
        match self {
            CongestionConfig::Ledbat(cfg) => Box::new(Ledbat::new(cfg.clone(), now, mss)),
            CongestionConfig::Fixed(window) => Box::new(FixedWindow::new(*window)),
        }
    }
}
