//! uTP, the uTorrent Transport Protocol (BEP 29), with LEDBAT congestion control.
//!
//! The crate is built in layers:
//!
//! - [`wire`]: the packet format: zero-copy decoding that never panics, exact encoding.
//! - [`proto`]: the sans-IO protocol core: an [`Endpoint`] that demultiplexes datagrams
//!   into [`Connection`]s, each a deterministic state machine with reliability and
//!   congestion control. It reads no clock and owns no socket: callers pass `now` and
//!   datagrams in, and take datagrams, timeouts and events out.
//! - [`time`]: the [`Instant`] type that drivers hand to the core.
//! - [`net`] (feature `tokio`, on by default): `UtpSocket` and `UtpStream`, the async
//!   API over one UDP socket.
//!
//! A driver feeds the core datagrams and time, and sends what it produces:
//!
//! ```
//! use utp::{Config, Endpoint, Instant};
//!
//! let mut ep = Endpoint::new(Config::default(), [42; 32]).unwrap();
//! let now = Instant::from_millis(1);
//! let conn = ep.connect(now, "192.0.2.1:6881".parse().unwrap()).unwrap();
//! ep.write(now, conn, b"hello").unwrap(); // buffered until the handshake completes
//! let mut buf = [0u8; 1500];
//! let syn = ep.poll_transmit(now, &mut buf).unwrap();
//! assert_eq!(syn.destination.port(), 6881);
//! assert_eq!(buf[0], 0x41); // ST_SYN, version 1
//! assert!(ep.poll_transmit(now, &mut buf).is_none());
//! assert!(ep.poll_timeout().is_some()); // the SYN retransmission timer
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "tokio")]
pub mod net;
pub mod proto;
pub mod time;
pub mod wire;

pub use proto::{Config, Connection, ConnectionHandle, Endpoint, Event};
pub use time::Instant;
