//! Batched UDP I/O over real loopback: `BatchUdpSocket` (GSO, GRO, `recvmmsg` through
//! quinn-udp on Linux) on its own, and under the driver, checked byte for byte.
//!
//! Where the kernel offers no offload (`max_send_segments() == 1`, `max_recv_segments()
//! == 1`) the same tests run the fallback and only the assertions about trains are
//! skipped.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utp::net::{BatchUdpSocket, DatagramSocket, RecvMeta, UtpSocket};
use utp::Config;

mod common;
use common::pattern;

async fn batch_socket() -> BatchUdpSocket {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    BatchUdpSocket::new(s)
}

/// Receives until `count` datagrams came in; returns them and the largest number of
/// datagrams one buffer held.
async fn receive(sock: &BatchUdpSocket, count: usize) -> (Vec<(SocketAddr, Vec<u8>)>, usize) {
    let mut space = vec![0u8; 8 << 16];
    let mut bufs: Vec<IoSliceMut<'_>> = space.chunks_mut(1 << 16).map(IoSliceMut::new).collect();
    let mut meta = vec![RecvMeta::default(); bufs.len()];
    let mut got = Vec::new();
    let mut widest = 0;
    while got.len() < count {
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            sock.recv_batch(&mut bufs, &mut meta),
        )
        .await
        .expect("datagrams lost on loopback")
        .unwrap();
        assert!(n >= 1);
        for (buf, m) in bufs.iter().zip(&meta[..n]) {
            widest = widest.max(m.count());
            got.extend(m.datagrams(buf).map(|d| (m.from, d.to_vec())));
        }
    }
    (got, widest)
}

#[tokio::test]
async fn segments_arrive_as_the_datagrams_sent() {
    let (a, b) = (batch_socket().await, batch_socket().await);
    let to = b.local_addr().unwrap();
    let from = a.local_addr().unwrap();
    // 100 datagrams of 1000 bytes and a last one of 300, each with its own content: more
    // than one GSO send takes (64 segments, 64 KiB), so the socket makes several.
    let data = pattern(100 * 1000 + 300, 7);
    // A new socket is not known to be writable until the reactor has seen it.
    a.get_ref().writable().await.unwrap();
    let sent = a.try_send_segments(&data, 1000, to).unwrap();
    assert_eq!(sent, 101, "the send buffer holds 100 KB");
    let (got, widest) = receive(&b, 101).await;
    assert_eq!(got.len(), 101);
    for (i, (src, d)) in got.iter().enumerate() {
        assert_eq!(*src, from);
        let want = &data[i * 1000..((i + 1) * 1000).min(data.len())];
        assert_eq!(d.as_slice(), want, "datagram {i}");
    }
    if cfg!(target_os = "linux") && a.max_send_segments() > 1 && b.max_recv_segments() > 1 {
        // Loopback hands a GSO train to a GRO socket whole.
        assert!(widest > 1, "expected a GRO train");
    }
}

#[tokio::test]
async fn single_datagram_receives_split_a_train() {
    let (a, b) = (batch_socket().await, batch_socket().await);
    let to = b.local_addr().unwrap();
    let data = pattern(5 * 200 + 50, 3);
    let mut off = 0;
    while off < data.len() {
        a.get_ref().writable().await.unwrap();
        let n = a.try_send_segments(&data[off..], 200, to).unwrap();
        off = (off + n * 200).min(data.len());
    }
    a.try_send_to(b"tail", to).unwrap();
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while got.len() < 7 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got.push(buf[..n].to_vec());
        // Mix in the non-waiting receive too.
        if let Ok((n, _)) = b.try_recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    let mut want: Vec<Vec<u8>> = data.chunks(200).map(<[u8]>::to_vec).collect();
    want.push(b"tail".to_vec());
    assert_eq!(got, want);
}

/// A `BatchUdpSocket` that counts what the driver does with it.
struct Counting {
    inner: BatchUdpSocket,
    /// Send calls that carried more than one datagram, and the most in one call.
    multi_sends: Arc<AtomicUsize>,
    widest_send: Arc<AtomicUsize>,
    /// Receive buffers that held more than one datagram.
    trains: Arc<AtomicUsize>,
}

impl Counting {
    fn new(inner: BatchUdpSocket) -> Counting {
        Counting {
            inner,
            multi_sends: Arc::default(),
            widest_send: Arc::default(),
            trains: Arc::default(),
        }
    }

    fn count_trains(&self, meta: &[RecvMeta]) {
        let trains = meta.iter().filter(|m| m.count() > 1).count();
        self.trains.fetch_add(trains, Ordering::Relaxed);
    }
}

impl DatagramSocket for Counting {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        self.inner.recv_from(buf)
    }
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner.try_recv_from(buf)
    }
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        self.inner.send_to(buf, target)
    }
    fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        self.inner.try_send_to(buf, target)
    }
    async fn recv_batch<'a>(
        &'a self,
        bufs: &'a mut [IoSliceMut<'_>],
        meta: &'a mut [RecvMeta],
    ) -> io::Result<usize> {
        let n = self.inner.recv_batch(bufs, meta).await?;
        self.count_trains(&meta[..n]);
        Ok(n)
    }
    fn try_recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let n = self.inner.try_recv_batch(bufs, meta)?;
        self.count_trains(&meta[..n]);
        Ok(n)
    }
    fn max_send_segments(&self) -> usize {
        self.inner.max_send_segments()
    }
    fn try_send_segments(
        &self,
        buf: &[u8],
        segment_size: usize,
        target: SocketAddr,
    ) -> io::Result<usize> {
        let n = self.inner.try_send_segments(buf, segment_size, target)?;
        if n > 1 {
            self.multi_sends.fetch_add(1, Ordering::Relaxed);
        }
        self.widest_send.fetch_max(n, Ordering::Relaxed);
        Ok(n)
    }
}

/// 16 MiB one way and 4 MiB back at once, through the driver on batched sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_uses_gso_and_gro_and_arrives_intact() {
    let server = Counting::new(batch_socket().await);
    let client = Counting::new(batch_socket().await);
    let gso = client.max_send_segments() > 1;
    let gro = server.inner.max_recv_segments() > 1;
    let (multi, widest, trains) = (
        client.multi_sends.clone(),
        client.widest_send.clone(),
        server.trains.clone(),
    );
    let addr = server.local_addr().unwrap();
    let server = UtpSocket::with_socket(server, Config::default(), [1; 32]).unwrap();
    let client = UtpSocket::with_socket(client, Config::default(), [2; 32]).unwrap();

    let up = pattern(16 << 20, 11);
    let down = pattern(4 << 20, 12);
    let (up2, down2) = (up.clone(), down.clone());
    let srv = tokio::spawn(async move {
        let (stream, _) = server.accept().await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&down2).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        got
    });
    let stream = client.connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    });
    w.write_all(&up2).await.unwrap();
    w.shutdown().await.unwrap();
    let got_down = reader.await.unwrap();
    let got_up = srv.await.unwrap();
    assert!(got_up == up, "upload corrupted");
    assert!(got_down == down, "download corrupted");

    if gso {
        assert!(multi.load(Ordering::Relaxed) > 0, "no GSO send");
        assert!(widest.load(Ordering::Relaxed) > 8, "GSO runs too short");
    } else {
        assert_eq!(widest.load(Ordering::Relaxed), 1);
    }
    if cfg!(target_os = "linux") && gso && gro {
        assert!(trains.load(Ordering::Relaxed) > 0, "no GRO train received");
    }
}

/// A batched socket and a plain one (no offload, one datagram per call) talk to each
/// other: the kernel cuts GSO trains for a receiver without GRO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_plain_sockets_interoperate() {
    let plain = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket2::SockRef::from(&plain)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let plain = UtpSocket::with_socket(plain, Config::default(), [3; 32]).unwrap();
    let batched = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();

    let up = pattern(6 << 20, 21);
    let down = pattern(3 << 20, 22);
    let (up2, down2) = (up.clone(), down.clone());
    let srv = tokio::spawn(async move {
        let (mut stream, _) = plain.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        stream.write_all(&down2).await.unwrap();
        stream.shutdown().await.unwrap();
        got
    });
    let mut stream = batched.connect(addr).await.unwrap();
    stream.write_all(&up2).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got_down = Vec::new();
    stream.read_to_end(&mut got_down).await.unwrap();
    assert!(srv.await.unwrap() == up, "upload corrupted");
    assert!(got_down == down, "download corrupted");
}
