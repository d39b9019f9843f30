//! `UtpStream`: one uTP connection as a tokio byte stream.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::driver::Shared;
use super::{closed_error, failure_error, stream_error};
use crate::proto::{ConnectionHandle, ConnectionStats, StreamError};

/// One connection's handle on the shared state; the connection closes gracefully when
/// the last handle (stream or half) is dropped.
#[derive(Debug)]
struct Core {
    shared: Arc<Shared>,
    handle: ConnectionHandle,
    remote: SocketAddr,
}

impl Core {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        if let Some(e) = failure_error(&st) {
            return Poll::Ready(Err(e));
        }
        let now = self.shared.now();
        let result = st.ep.read(now, self.handle, buf.initialize_unfilled());
        match result {
            Ok(n) => {
                buf.advance(n);
                drop(st);
                if n > 0 {
                    // Reading may reopen the receive window: a window update may be due.
                    self.shared.notify.notify_one();
                }
                Poll::Ready(Ok(()))
            }
            Err(StreamError::WouldBlock) => {
                if let Some(slot) = st.conns.get_mut(&self.handle) {
                    slot.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(StreamError::Closed) | Err(StreamError::SendClosed) => {
                match st.conns.get(&self.handle).and_then(|s| s.closed) {
                    Some(Some(e)) => Poll::Ready(Err(closed_error(Some(e)))),
                    _ => Poll::Ready(Ok(())), // end of stream
                }
            }
            Err(e) => Poll::Ready(Err(stream_error(e))),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        if let Some(e) = failure_error(&st) {
            return Poll::Ready(Err(e));
        }
        let now = self.shared.now();
        match st.ep.write(now, self.handle, data) {
            Ok(n) => {
                drop(st);
                self.shared.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(StreamError::WouldBlock) => {
                if let Some(slot) = st.conns.get_mut(&self.handle) {
                    slot.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(StreamError::Closed) => {
                let closed = st.conns.get(&self.handle).and_then(|s| s.closed).flatten();
                Poll::Ready(Err(match closed {
                    Some(e) => closed_error(Some(e)),
                    None => io::Error::new(io::ErrorKind::BrokenPipe, "uTP connection closed"),
                }))
            }
            Err(e) => Poll::Ready(Err(stream_error(e))),
        }
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        if let Some(e) = failure_error(&st) {
            return Poll::Ready(Err(e));
        }
        let now = self.shared.now();
        let _ = st.ep.shutdown(now, self.handle);
        let Some(slot) = st.conns.get_mut(&self.handle) else {
            return Poll::Ready(Ok(()));
        };
        if slot.send_closed {
            return Poll::Ready(Ok(()));
        }
        if let Some(closed) = slot.closed {
            return Poll::Ready(match closed {
                None => Ok(()),
                Some(e) => Err(closed_error(Some(e))),
            });
        }
        slot.shutdown = Some(cx.waker().clone());
        drop(st);
        self.shared.notify.notify_one();
        Poll::Pending
    }

    /// Half-closes at once without waiting (used when a write half is dropped).
    fn shutdown_now(&self) {
        let mut st = self.shared.lock();
        let now = self.shared.now();
        let _ = st.ep.shutdown(now, self.handle);
        drop(st);
        self.shared.notify.notify_one();
    }

    fn abort(&self) {
        let mut st = self.shared.lock();
        let now = self.shared.now();
        let _ = st.ep.abort(now, self.handle);
        drop(st);
        self.shared.notify.notify_one();
    }

    fn stats(&self) -> ConnectionStats {
        let st = self.shared.lock();
        st.ep
            .connection(self.handle)
            .map(|c| c.stats())
            .or_else(|| {
                st.conns
                    .get(&self.handle)
                    .and_then(|s| s.final_stats.clone())
            })
            .unwrap_or_default()
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let now = self.shared.now();
        let remove = match st.conns.get_mut(&self.handle) {
            Some(slot) => {
                slot.handles = slot.handles.saturating_sub(1);
                slot.handles == 0
            }
            None => false,
        };
        if remove {
            let closed = st
                .conns
                .get(&self.handle)
                .is_some_and(|s| s.closed.is_some());
            if closed {
                st.conns.remove(&self.handle);
            }
            // Graceful close in the background: queued data and a FIN still go out.
            // On a connection already over, it gives up any unread data, which would
            // otherwise keep the connection for a reader that no longer exists.
            let _ = st.ep.close(now, self.handle);
        }
        drop(st);
        self.shared.notify.notify_one();
    }
}

/// A uTP connection: a reliable, ordered byte stream (`AsyncRead` + `AsyncWrite`).
///
/// - Writes are buffered up to [`crate::Config::send_buffer_size`] and packetised by
///   the window and the packet size; small writes in the same tick are coalesced. A
///   full buffer makes writes wait (backpressure).
/// - `shutdown()` sends a FIN after the queued data and completes when the peer has
///   acknowledged it (or fails with `TimedOut` when the retries run out). Reading
///   goes on until the peer's FIN: then reads return 0 (EOF).
/// - [`UtpStream::abort`] sends a RESET and returns at once.
/// - Dropping the stream closes it gracefully in the background.
/// - Errors: `ConnectionReset` (the peer reset), `ConnectionRefused`, `TimedOut`
///   (the peer stopped answering), `BrokenPipe` (write after shutdown).
#[derive(Debug)]
pub struct UtpStream {
    core: Arc<Core>,
}

impl UtpStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        handle: ConnectionHandle,
        remote: SocketAddr,
    ) -> UtpStream {
        UtpStream {
            core: Arc::new(Core {
                shared,
                handle,
                remote,
            }),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.core.remote)
    }

    /// The local address (the UDP socket's).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.core.shared.local_addr)
    }

    /// A snapshot of the connection's statistics (kept after it closed).
    pub fn stats(&self) -> ConnectionStats {
        self.core.stats()
    }

    /// Ends the connection at once: a RESET tells the peer; buffered data is dropped.
    pub fn abort(self) {
        self.core.abort();
    }

    /// Splits into a read half and a write half that can move to different tasks.
    /// Dropping the write half shuts the sending direction down.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        (
            OwnedReadHalf {
                core: self.core.clone(),
            },
            OwnedWriteHalf { core: self.core },
        )
    }

    /// Borrows a read half and a write half, usable concurrently.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (
            ReadHalf { core: &self.core },
            WriteHalf { core: &self.core },
        )
    }

    /// Waits until the peer acknowledged our FIN; see `AsyncWriteExt::shutdown`.
    pub async fn close(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.core.poll_shutdown(cx)).await
    }
}

impl AsyncRead for UtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.core.poll_read(cx, buf)
    }
}

impl AsyncWrite for UtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.core.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is already in the protocol's hands, as with a TCP socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.core.poll_shutdown(cx)
    }
}

/// The read half of a [`UtpStream`], from [`UtpStream::into_split`].
#[derive(Debug)]
pub struct OwnedReadHalf {
    core: Arc<Core>,
}

/// The write half of a [`UtpStream`], from [`UtpStream::into_split`]. Dropping it
/// shuts the sending direction down (a FIN follows the queued data).
#[derive(Debug)]
pub struct OwnedWriteHalf {
    core: Arc<Core>,
}

/// A borrowed read half, from [`UtpStream::split`].
#[derive(Debug)]
pub struct ReadHalf<'a> {
    core: &'a Core,
}

/// A borrowed write half, from [`UtpStream::split`].
#[derive(Debug)]
pub struct WriteHalf<'a> {
    core: &'a Core,
}

impl OwnedReadHalf {
    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.core.remote)
    }

    /// A snapshot of the connection's statistics (kept after it closed).
    pub fn stats(&self) -> ConnectionStats {
        self.core.stats()
    }
}

impl OwnedWriteHalf {
    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.core.remote)
    }

    /// A snapshot of the connection's statistics (kept after it closed).
    pub fn stats(&self) -> ConnectionStats {
        self.core.stats()
    }
}

impl Drop for OwnedWriteHalf {
    fn drop(&mut self) {
        self.core.shutdown_now();
    }
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.core.poll_read(cx, buf)
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.core.poll_read(cx, buf)
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.core.poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.core.poll_shutdown(cx)
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.core.poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.core.poll_shutdown(cx)
    }
}
