//! The small datagram-socket interface the driver needs, so the same driver runs on
//! `tokio::net::UdpSocket` and on a simulated socket (turmoil, in tests).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// A UDP-like socket: unconnected datagrams to and from any address.
///
/// The driver awaits [`DatagramSocket::recv_from`] (which must be cancel safe: it is
/// raced against timers and wake-ups), then drains further datagrams with
/// [`DatagramSocket::try_recv_from`]; it sends with [`DatagramSocket::try_send_to`] and
/// falls back to [`DatagramSocket::send_to`] when the send buffer is full.
pub trait DatagramSocket: Send + Sync + 'static {
    /// The local address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Waits for a datagram; returns its length and sender. Must be cancel safe.
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;

    /// Takes a datagram if one is ready, or fails with `WouldBlock`.
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;

    /// Waits until the datagram is sent.
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Sends a datagram if there is room, or fails with `WouldBlock`.
    fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize>;
}

impl DatagramSocket for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }

    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::try_recv_from(self, buf)
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        tokio::net::UdpSocket::send_to(self, buf, target)
    }

    fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::try_send_to(self, buf, target)
    }
}
