//! The tokio driver: [`UtpSocket`] and [`UtpStream`].
//!
//! One UDP socket carries every connection made or accepted on it; one background task
//! per socket runs the sans-IO [`crate::proto::Endpoint`]. The driver is generic over
//! [`DatagramSocket`], so the same code runs on `tokio::net::UdpSocket` and on a
//! simulated socket in deterministic tests. [`UtpSocket::bind`] wraps its UDP socket in a
//! [`BatchUdpSocket`]: on Linux a run of datagrams to one peer leaves in one system call
//! (GSO) and a train of datagrams arrives in one (GRO, `recvmmsg`), with a fallback to one
//! datagram per call where the kernel lacks that.
//!
//! libutp's interface is callback-driven: `on_read` fires as bytes arrive, and the
//! application pushes data with `utp_write`. Here the same roles are `AsyncRead` and
//! `AsyncWrite` on a [`UtpStream`]. libutp's examples (`utp_file`, `ucat`) move a file
//! from one socket to another; in Rust, on loopback:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use utp::net::UtpSocket;
//!
//! let receiver = UtpSocket::bind("127.0.0.1:0").await?;
//! let sender = UtpSocket::bind("127.0.0.1:0").await?;
//! let file: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
//!
//! let addr = receiver.local_addr()?;
//! let receiving = tokio::spawn(async move {
//!     let (mut stream, _peer) = receiver.accept().await?;
//!     let mut got = Vec::new();
//!     stream.read_to_end(&mut got).await?; // until the sender's FIN
//!     std::io::Result::Ok(got)
//! });
//!
//! let mut stream = sender.connect(addr).await?;
//! stream.write_all(&file).await?;
//! stream.shutdown().await?; // FIN; done when the receiver acknowledged everything
//! assert_eq!(receiving.await.unwrap()?, file);
//! # Ok(())
//! # }
//! ```

mod batch;
mod datagram;
mod driver;
mod socket;
mod stream;

use std::io;

pub use datagram::{BatchUdpSocket, DatagramSocket, Datagrams, RecvMeta};
pub use socket::{Incoming, UtpSocket};
pub use stream::{OwnedReadHalf, OwnedWriteHalf, ReadHalf, UtpStream, WriteHalf};

use crate::proto::{ConnectionError, StreamError};
use driver::State;

/// The `io::Error` for a connection that ended (`None`: cleanly).
fn closed_error(closed: Option<ConnectionError>) -> io::Error {
    match closed {
        None => io::Error::new(io::ErrorKind::NotConnected, "uTP connection closed"),
        Some(e) => {
            let kind = match e {
                ConnectionError::Refused => io::ErrorKind::ConnectionRefused,
                ConnectionError::Reset => io::ErrorKind::ConnectionReset,
                ConnectionError::TimedOut => io::ErrorKind::TimedOut,
                _ => io::ErrorKind::ConnectionAborted,
            };
            io::Error::new(kind, e)
        }
    }
}

fn stream_error(e: StreamError) -> io::Error {
    match e {
        StreamError::WouldBlock => io::ErrorKind::WouldBlock.into(),
        StreamError::SendClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown")
        }
        StreamError::Failed(e) => closed_error(Some(e)),
        _ => closed_error(None),
    }
}

/// The error every operation reports once the UDP socket failed.
fn failure_error(st: &State) -> Option<io::Error> {
    st.failure
        .as_ref()
        .map(|(kind, msg)| io::Error::new(*kind, format!("uTP socket failed: {msg}")))
}
