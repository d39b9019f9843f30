//! The sans-IO protocol core.
//!
//! - [`Endpoint`]: all connections of one UDP socket; the only type a driver talks to.
//! - [`Connection`]: one connection's state machine (read through the endpoint).
//! - [`congestion`]: the congestion-control trait, LEDBAT and a fixed-window double.
//! - [`Config`]: every tunable, with documented defaults and libutp/libtorrent profiles.
//! - [`TimerQueue`]: one deadline per connection (or any other slot), earliest first.
//!
//! Nothing here reads a clock, touches a socket or uses global randomness: time comes
//! in as `now`, datagrams come in through [`Endpoint::handle_datagram`] and go out
//! through [`Endpoint::poll_transmit`].

mod config;
pub mod congestion;
mod connection;
mod endpoint;
mod stats;
mod timer_queue;

#[cfg(test)]
pub(crate) mod harness;
#[cfg(test)]
mod pair_tests;

pub use config::{Config, ConfigError};
pub use connection::{Connection, ConnectionError, Event, State, StreamError};
pub use endpoint::{ConnectError, ConnectionHandle, Endpoint, Transmit};
pub use stats::{ConnectionStats, EndpointStats};
pub use timer_queue::TimerQueue;
