//! The datagram-socket interface the driver needs, so the same driver runs on
//! `tokio::net::UdpSocket`, on [`BatchUdpSocket`] (the same with segmentation offload and
//! batched system calls) and on a simulated socket (turmoil, in tests).

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};

use tokio::io::Interest;

use super::batch::MAX_SEGMENTS_BYTES;

/// What one receive buffer holds after [`DatagramSocket::recv_batch`] or
/// [`DatagramSocket::try_recv_batch`]: `len` bytes from `from`, one datagram or several
/// of the same size back to back.
///
/// With receive offload (Linux UDP GRO) the kernel hands over a train of datagrams from
/// one sender in one buffer: each is `stride` bytes long, except the last, which may be
/// shorter. [`RecvMeta::datagrams`] cuts a buffer back into its datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received into the buffer.
    pub len: usize,
    /// The sender of every datagram in the buffer.
    pub from: SocketAddr,
    /// The size of each datagram in the buffer (the last may be shorter); `len` when the
    /// buffer holds one datagram.
    pub stride: usize,
}

impl RecvMeta {
    /// One datagram of `len` bytes from `from`.
    pub fn single(len: usize, from: SocketAddr) -> RecvMeta {
        RecvMeta {
            len,
            from,
            stride: len,
        }
    }

    /// The datagrams in `buf`, the buffer this entry describes: `len` bytes cut every
    /// `stride` bytes. An empty datagram comes out as one empty slice.
    pub fn datagrams<'b>(&self, buf: &'b [u8]) -> Datagrams<'b> {
        let len = self.len.min(buf.len());
        Datagrams {
            rest: &buf[..len],
            stride: if self.stride == 0 { len } else { self.stride },
            empty_pending: len == 0,
        }
    }

    /// How many datagrams the buffer holds.
    pub fn count(&self) -> usize {
        if self.len == 0 || self.stride == 0 {
            1
        } else {
            self.len.div_ceil(self.stride)
        }
    }
}

impl Default for RecvMeta {
    /// An empty entry (to fill an array of them before a receive).
    fn default() -> RecvMeta {
        RecvMeta::single(0, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    }
}

/// The datagrams in one receive buffer; see [`RecvMeta::datagrams`].
#[derive(Clone, Debug)]
pub struct Datagrams<'b> {
    rest: &'b [u8],
    stride: usize,
    empty_pending: bool,
}

impl<'b> Iterator for Datagrams<'b> {
    type Item = &'b [u8];

    fn next(&mut self) -> Option<&'b [u8]> {
        if self.empty_pending {
            self.empty_pending = false;
            return Some(&[]);
        }
        if self.rest.is_empty() {
            return None;
        }
        let (d, rest) = self.rest.split_at(self.stride.min(self.rest.len()));
        self.rest = rest;
        Some(d)
    }
}

/// A UDP-like socket: unconnected datagrams to and from any address.
///
/// Five methods move one datagram at a time; they are all a socket must provide. The
/// batch methods ([`DatagramSocket::recv_batch`], [`DatagramSocket::try_recv_batch`],
/// [`DatagramSocket::try_send_segments`], [`DatagramSocket::max_send_segments`]) have
/// default implementations on top of them; a socket overrides them when it can do
/// better, as [`BatchUdpSocket`] does with Linux UDP GSO and GRO (one system call for up
/// to 64 datagrams to one destination, and for a train of datagrams from one sender) and
/// `recvmmsg`.
///
/// The driver waits with [`DatagramSocket::recv_batch`] (which must be cancel safe: it is
/// raced against timers and wake-ups), then drains further datagrams with
/// [`DatagramSocket::try_recv_batch`]; it sends with [`DatagramSocket::try_send_segments`]
/// and, when the send buffer is full, waits in [`DatagramSocket::send_to`] with one
/// datagram before trying the rest again.
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

    /// Waits for at least one datagram, then takes what else is ready, filling
    /// `bufs[i]` and `meta[i]` for `i < n`; returns `n` (0 only when `bufs` or `meta` is
    /// empty). A buffer may hold several datagrams; see [`RecvMeta`]. Must be cancel
    /// safe.
    ///
    /// Each buffer should hold 64 KiB: a datagram longer than its buffer is truncated,
    /// and a train of datagrams received with offload is always shorter than 64 KiB.
    ///
    /// The default waits in [`DatagramSocket::recv_from`] for the first buffer, then
    /// fills the others with [`DatagramSocket::try_recv_batch`].
    fn recv_batch<'a>(
        &'a self,
        bufs: &'a mut [IoSliceMut<'_>],
        meta: &'a mut [RecvMeta],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        async move {
            let (Some((first, rest)), Some((first_meta, rest_meta))) =
                (bufs.split_first_mut(), meta.split_first_mut())
            else {
                return Ok(0);
            };
            let (len, from) = self.recv_from(first).await?;
            *first_meta = RecvMeta::single(len, from);
            Ok(1 + self.try_recv_batch(rest, rest_meta).unwrap_or(0))
        }
    }

    /// Takes the datagrams that are ready, without waiting: fills `bufs[i]` and `meta[i]`
    /// for `i < n` and returns `n`, or fails with `WouldBlock` (or another error) when
    /// nothing was received. Buffers as for [`DatagramSocket::recv_batch`].
    ///
    /// The default calls [`DatagramSocket::try_recv_from`] once per buffer, and stops at
    /// the first error after a datagram.
    fn try_recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let mut n = 0;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()) {
            match self.try_recv_from(buf) {
                Ok((len, from)) => {
                    *m = RecvMeta::single(len, from);
                    n += 1;
                }
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(n)
    }

    /// How many datagrams one [`DatagramSocket::try_send_segments`] call can hand to the
    /// kernel at once (the GSO segment limit); 1 when every datagram takes its own call.
    /// It may drop to 1 while the socket runs, when the kernel refuses offload.
    ///
    /// The default is 1.
    fn max_send_segments(&self) -> usize {
        1
    }

    /// Sends several datagrams to `target` without waiting: `buf` cut every
    /// `segment_size` bytes (at least 1), the last datagram possibly shorter (an empty
    /// `buf` is one empty datagram).
    ///
    /// Returns how many leading datagrams were sent: all of them, or fewer when the send
    /// buffer filled up part way (send the rest later). Fails when the first datagram was
    /// not sent: with `WouldBlock` when there is no room, or with the error that makes
    /// it unsendable. Any number and length of datagrams may be passed; beyond
    /// [`DatagramSocket::max_send_segments`] datagrams or 65,507 bytes (the most one UDP
    /// send carries) an implementation makes several calls.
    ///
    /// The default calls [`DatagramSocket::try_send_to`] once per datagram.
    fn try_send_segments(
        &self,
        buf: &[u8],
        segment_size: usize,
        target: SocketAddr,
    ) -> io::Result<usize> {
        send_one_by_one(buf, segment_size, |d| self.try_send_to(d, target))
    }
}

/// Sends `buf` cut every `segment_size` bytes with `send`, one datagram per call, with
/// the result convention of [`DatagramSocket::try_send_segments`].
fn send_one_by_one(
    buf: &[u8],
    segment_size: usize,
    mut send: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    if buf.is_empty() {
        return send(buf).map(|_| 1);
    }
    let mut sent = 0;
    for d in buf.chunks(segment_size.max(1)) {
        match send(d) {
            Ok(_) => sent += 1,
            Err(e) if sent == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(sent)
}

/// One datagram at a time, with the default batch methods. [`BatchUdpSocket`] wraps a
/// tokio socket for offload and batched system calls.
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

/// Receive buffers per system call in [`BatchUdpSocket`] (quinn-udp's limit).
const QUINN_BATCH: usize = quinn_udp::BATCH_SIZE;

/// A tokio UDP socket with batched I/O through `quinn-udp`: on Linux, UDP generic
/// segmentation offload (GSO: up to 64 equal-sized datagrams to one destination in one
/// `sendmsg`), generic receive offload (GRO: a train of datagrams from one sender in one
/// buffer) and `recvmmsg` (several buffers per system call); elsewhere what `quinn-udp`
/// supports there.
///
/// Where offload is missing it falls back by itself: [`DatagramSocket::max_send_segments`]
/// is then 1 and the driver sends one datagram per call; if the kernel refuses a GSO
/// send (old kernels, devices without checksum offload), offload is turned off for the
/// socket and the datagrams go out one by one. If `quinn-udp` cannot set the socket up
/// at all, every method uses the plain tokio socket.
///
/// [`crate::net::UtpSocket::bind`] uses it. Setting the socket up (in
/// [`BatchUdpSocket::new`]) turns on UDP GRO and, on Linux, `IP_PMTUDISC_PROBE`: datagrams
/// are sent with don't-fragment, so a `max_packet_size` above the interface MTU fails to
/// send instead of being fragmented.
///
/// The single-datagram methods stay correct with GRO: a train received by
/// [`DatagramSocket::recv_from`] or [`DatagramSocket::try_recv_from`] is kept and handed
/// out one datagram per call.
#[derive(Debug)]
pub struct BatchUdpSocket {
    io: tokio::net::UdpSocket,
    /// `None` when `quinn-udp` could not set the socket up: plain tokio I/O.
    state: Option<quinn_udp::UdpSocketState>,
    /// A train received by a single-datagram receive, handed out one datagram per call.
    held: Mutex<Held>,
}

/// The rest of a received train of datagrams.
#[derive(Debug, Default)]
struct Held {
    /// Allocated on first use (only single-datagram receives need it).
    buf: Vec<u8>,
    from: Option<SocketAddr>,
    stride: usize,
    start: usize,
    end: usize,
}

impl Held {
    /// Copies the next held datagram into `out` (truncated to fit, as UDP does).
    fn take(&mut self, out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let from = self.from?;
        // 0 for an empty datagram, which is handed out once like any other.
        let len = self.stride.min(self.end - self.start);
        let n = len.min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += len;
        if self.start >= self.end {
            self.from = None;
        }
        Some((n, from))
    }
}

impl BatchUdpSocket {
    /// Sets `socket` up for offload and batched system calls (see the type's
    /// documentation); falls back to plain I/O when that fails.
    pub fn new(socket: tokio::net::UdpSocket) -> BatchUdpSocket {
        let state = quinn_udp::UdpSocketState::new((&socket).into()).ok();
        BatchUdpSocket {
            io: socket,
            state,
            held: Mutex::new(Held::default()),
        }
    }

    /// The tokio socket inside.
    pub fn get_ref(&self) -> &tokio::net::UdpSocket {
        &self.io
    }

    /// Whether offload and batched system calls are in use (`quinn-udp` set the socket
    /// up); [`DatagramSocket::max_send_segments`] tells whether GSO is available.
    pub fn is_batched(&self) -> bool {
        self.state.is_some()
    }

    /// How many datagrams one receive buffer may hold (64 with GRO, otherwise 1).
    pub fn max_recv_segments(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.gro_segments())
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One `recvmmsg` (or what the platform has) into `bufs`; `WouldBlock` when nothing
    /// is ready. Must run inside tokio's `try_io`/`async_io`.
    fn recv_raw(
        &self,
        state: &quinn_udp::UdpSocketState,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let k = bufs.len().min(meta.len()).min(QUINN_BATCH);
        if k == 0 {
            return Ok(0);
        }
        let mut raw = [quinn_udp::RecvMeta::default(); QUINN_BATCH];
        let n = state.recv((&self.io).into(), &mut bufs[..k], &mut raw[..k])?;
        for (m, r) in meta.iter_mut().zip(&raw[..n]) {
            *m = RecvMeta {
                len: r.len,
                from: r.addr,
                stride: if r.stride == 0 { r.len } else { r.stride },
            };
        }
        Ok(n)
    }

    /// Receives one buffer into the held train; `WouldBlock` when nothing is ready.
    fn fill_held(&self, state: &quinn_udp::UdpSocketState) -> io::Result<()> {
        let mut held = self.held();
        if held.from.is_some() {
            // Another task filled it meanwhile: take that first.
            return Ok(());
        }
        if held.buf.is_empty() {
            held.buf = vec![0; 1 << 16];
        }
        let mut meta = [RecvMeta::default()];
        let n = self.recv_raw(state, &mut [IoSliceMut::new(&mut held.buf)], &mut meta)?;
        if n == 1 {
            held.from = Some(meta[0].from);
            held.stride = meta[0].stride;
            held.start = 0;
            held.end = meta[0].len;
        }
        Ok(())
    }

    /// The next held datagram, if any.
    fn take_held(&self, out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        self.held().take(out)
    }
}

impl DatagramSocket for BatchUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    async fn recv_from<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let Some(state) = &self.state else {
            return self.io.recv_from(buf).await;
        };
        loop {
            if let Some(r) = self.take_held(buf) {
                return Ok(r);
            }
            self.io
                .async_io(Interest::READABLE, || self.fill_held(state))
                .await?;
        }
    }

    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let Some(state) = &self.state else {
            return self.io.try_recv_from(buf);
        };
        if let Some(r) = self.take_held(buf) {
            return Ok(r);
        }
        self.io
            .try_io(Interest::READABLE, || self.fill_held(state))?;
        self.take_held(buf)
            .ok_or_else(|| io::ErrorKind::WouldBlock.into())
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        self.io.send_to(buf, target)
    }

    fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        self.io.try_send_to(buf, target)
    }

    async fn recv_batch<'a>(
        &'a self,
        bufs: &'a mut [IoSliceMut<'_>],
        meta: &'a mut [RecvMeta],
    ) -> io::Result<usize> {
        let Some(state) = &self.state else {
            let (Some((first, rest)), Some((first_meta, rest_meta))) =
                (bufs.split_first_mut(), meta.split_first_mut())
            else {
                return Ok(0);
            };
            let (len, from) = self.io.recv_from(first).await?;
            *first_meta = RecvMeta::single(len, from);
            return Ok(1 + self.try_recv_batch(rest, rest_meta).unwrap_or(0));
        };
        if bufs.is_empty() || meta.is_empty() {
            return Ok(0);
        }
        if let Some(n) = self.take_held_batch(bufs, meta) {
            return Ok(n);
        }
        self.io
            .async_io(Interest::READABLE, || self.recv_raw(state, bufs, meta))
            .await
    }

    fn try_recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let Some(state) = &self.state else {
            let mut n = 0;
            for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()) {
                match self.io.try_recv_from(buf) {
                    Ok((len, from)) => {
                        *m = RecvMeta::single(len, from);
                        n += 1;
                    }
                    Err(e) if n == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            return Ok(n);
        };
        if bufs.is_empty() || meta.is_empty() {
            return Ok(0);
        }
        if let Some(n) = self.take_held_batch(bufs, meta) {
            return Ok(n);
        }
        self.io
            .try_io(Interest::READABLE, || self.recv_raw(state, bufs, meta))
    }

    fn max_send_segments(&self) -> usize {
        self.state
            .as_ref()
            .map_or(1, |s| s.max_gso_segments().max(1))
    }

    fn try_send_segments(
        &self,
        buf: &[u8],
        segment_size: usize,
        target: SocketAddr,
    ) -> io::Result<usize> {
        let Some(state) = &self.state else {
            return send_one_by_one(buf, segment_size, |d| self.io.try_send_to(d, target));
        };
        if buf.is_empty() {
            return self.io.try_send_to(buf, target).map(|_| 1);
        }
        let segment_size = segment_size.max(1);
        let mut sent = 0;
        let mut off = 0;
        while off < buf.len() {
            // Within the segment limit (which may just have dropped to 1) and 64 KiB.
            let per_call = state
                .max_gso_segments()
                .min(MAX_SEGMENTS_BYTES / segment_size)
                .max(1);
            let end = buf.len().min(off + per_call * segment_size);
            let part = &buf[off..end];
            let n = part.len().div_ceil(segment_size);
            let result = if n > 1 {
                let transmit = quinn_udp::Transmit {
                    destination: target,
                    ecn: None,
                    contents: part,
                    segment_size: Some(segment_size),
                    src_ip: None,
                };
                self.io.try_io(Interest::WRITABLE, || {
                    state.try_send((&self.io).into(), &transmit)
                })
            } else {
                self.io.try_send_to(part, target).map(|_| ())
            };
            match result {
                Ok(()) => {
                    sent += n;
                    off = end;
                }
                // The kernel refused GSO and quinn-udp turned it off for this socket:
                // the same datagrams again, one by one.
                Err(e)
                    if n > 1
                        && state.max_gso_segments() == 1
                        && e.kind() != io::ErrorKind::WouldBlock => {}
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }
}

impl BatchUdpSocket {
    /// Hands a train held by a single-datagram receive to a batch receive, one datagram
    /// per buffer, so that nothing is lost when both kinds of receive are mixed.
    fn take_held_batch(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Option<usize> {
        let mut n = 0;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((len, from)) = self.take_held(buf) else {
                break;
            };
            *m = RecvMeta::single(len, from);
            n += 1;
        }
        (n > 0).then_some(n)
    }
}
