//! `UtpSocket`: one UDP socket carrying every uTP connection made or accepted on it.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::ToSocketAddrs;

use super::datagram::{BatchUdpSocket, DatagramSocket};
use super::driver::{drive, ConnSlot, Shared};
use super::stream::UtpStream;
use super::{closed_error, failure_error};
use crate::proto::{ConnectError, Endpoint};
use crate::Config;

/// Kernel socket buffers we ask for: bursts at high rates overflow the 208 KiB default.
const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket speaking uTP: connect to peers and accept their connections.
///
/// All connections share the one UDP socket and one background task (spawned on the
/// current tokio runtime), which ends once every handle is dropped and every connection
/// has closed. `UtpSocket` is cheap to clone; clones share the socket.
///
/// At most [`Config::max_connections`] connections (default 1024) exist at once: past
/// it, [`UtpSocket::connect`] fails with an error of kind `Other` saying so, and remote
/// peers' connection attempts are refused. Incoming connections wait in a queue of
/// [`Config::accept_queue`] (default 128) until [`UtpSocket::accept`] takes them.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use utp::net::UtpSocket;
///
/// let socket = UtpSocket::bind("127.0.0.1:0").await?;
/// let mut stream = socket.connect("127.0.0.1:6881".parse().unwrap()).await?;
/// stream.write_all(b"hello").await?;
/// stream.shutdown().await?; // FIN, acknowledged
/// let mut reply = Vec::new();
/// stream.read_to_end(&mut reply).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct UtpSocket {
    shared: Arc<Shared>,
}

impl UtpSocket {
    /// Binds a UDP socket at `addr` with the default configuration.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<UtpSocket> {
        UtpSocket::bind_with_config(addr, Config::default()).await
    }

    /// Binds a UDP socket at `addr` with `config`.
    ///
    /// The socket asks for 4 MiB kernel buffers and runs as a [`BatchUdpSocket`]
    /// (segmentation and receive offload, batched system calls where available).
    pub async fn bind_with_config(
        addr: impl ToSocketAddrs,
        config: Config,
    ) -> io::Result<UtpSocket> {
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        let sock_ref = socket2::SockRef::from(&socket);
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = sock_ref.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock_ref.set_send_buffer_size(SOCKET_BUFFER);
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| io::Error::other(format!("no OS randomness: {e}")))?;
        UtpSocket::with_socket(BatchUdpSocket::new(socket), config, seed)
    }

    /// Runs uTP over any [`DatagramSocket`] (a simulated one in tests), with `seed`
    /// for connection ids and initial sequence numbers. For a `tokio::net::UdpSocket` of
    /// your own, wrap it in [`BatchUdpSocket::new`] to get batched I/O; unwrapped, it
    /// moves one datagram per system call.
    pub fn with_socket<S: DatagramSocket>(
        socket: S,
        config: Config,
        seed: [u8; 32],
    ) -> io::Result<UtpSocket> {
        let endpoint = Endpoint::new(config, seed)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let local_addr = socket.local_addr()?;
        let shared = Arc::new(Shared::new(endpoint, local_addr));
        tokio::spawn(drive(shared.clone(), socket));
        Ok(UtpSocket { shared })
    }

    /// The local address of the UDP socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.shared.local_addr)
    }

    /// Opens a connection to `remote` and waits for the handshake.
    ///
    /// Fails with `ConnectionRefused` when the peer answers with a RESET (nobody
    /// accepts there), `TimedOut` when the SYN retries run out (about 15 s with the
    /// defaults), or `Other` when the socket has `max_connections` already.
    pub async fn connect(&self, remote: SocketAddr) -> io::Result<UtpStream> {
        let h = {
            let mut st = self.shared.lock();
            if let Some(e) = failure_error(&st) {
                return Err(e);
            }
            let now = self.shared.now();
            let h = st.ep.connect(now, remote).map_err(|e| match e {
                ConnectError::TooManyConnections => io::Error::other(format!(
                    "too many uTP connections on this socket (max_connections = {})",
                    st.ep.config().max_connections
                )),
                other => io::Error::other(other.to_string()),
            })?;
            st.conns.insert(
                h,
                ConnSlot {
                    handles: 1,
                    ..ConnSlot::default()
                },
            );
            h
        };
        self.shared.notify.notify_one();
        // Built first, so that a cancelled connect still closes the connection.
        let stream = UtpStream::new(self.shared.clone(), h, remote);
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(e) = failure_error(&st) {
                return Poll::Ready(Err(e));
            }
            let Some(slot) = st.conns.get_mut(&h) else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if slot.connected {
                return Poll::Ready(Ok(()));
            }
            if let Some(closed) = slot.closed {
                return Poll::Ready(Err(closed_error(closed)));
            }
            slot.connect = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(stream)
    }

    /// Waits for the next incoming connection that completed its handshake.
    pub async fn accept(&self) -> io::Result<(UtpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next incoming connection; see [`UtpSocket::accept`].
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(UtpStream, SocketAddr)>> {
        let mut st = self.shared.lock();
        if let Some(e) = failure_error(&st) {
            return Poll::Ready(Err(e));
        }
        if let Some((h, remote)) = st.accept_queue.pop_front() {
            if let Some(slot) = st.conns.get_mut(&h) {
                slot.handles += 1;
            }
            drop(st);
            return Poll::Ready(Ok((UtpStream::new(self.shared.clone(), h, remote), remote)));
        }
        st.accept_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The incoming connections as a `Stream` (`futures_core::Stream`).
    pub fn incoming(&self) -> Incoming {
        Incoming {
            socket: self.clone(),
        }
    }

    /// How many connections the socket holds now (lingering ones included).
    pub fn connection_count(&self) -> usize {
        self.shared.lock().ep.connection_count()
    }

    /// The endpoint's counters (datagrams, malformed, resets, refused SYNs...).
    pub fn stats(&self) -> crate::proto::EndpointStats {
        self.shared.lock().ep.stats().clone()
    }
}

impl Clone for UtpSocket {
    fn clone(&self) -> Self {
        self.shared.lock().socket_handles += 1;
        UtpSocket {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for UtpSocket {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.socket_handles -= 1;
        if st.socket_handles == 0 {
            // Nobody can accept any more: refuse new peers, and close the connections
            // that were waiting to be accepted.
            st.ep.set_accept_incoming(false);
            let now = self.shared.now();
            while let Some((h, _)) = st.accept_queue.pop_front() {
                let _ = st.ep.close(now, h);
                if st
                    .conns
                    .get(&h)
                    .is_some_and(|s| s.handles == 0 && s.closed.is_some())
                {
                    st.conns.remove(&h);
                }
            }
        }
        drop(st);
        self.shared.notify.notify_one();
    }
}

/// The incoming connections of a [`UtpSocket`], as a stream of `(UtpStream, peer)`.
#[derive(Debug)]
pub struct Incoming {
    socket: UtpSocket,
}

impl futures_core::Stream for Incoming {
    type Item = io::Result<(UtpStream, SocketAddr)>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.socket.poll_accept(cx).map(Some)
    }
}
