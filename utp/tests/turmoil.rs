//! The async API under turmoil: deterministic simulated hosts and links, virtual time.
//!
//! Loss model: turmoil's `fail_rate` drops everything in flight on a link, so it is not
//! used. Random per-packet loss comes from a seeded shaper in the sending socket
//! ([`LossySocket`]); reordering comes from turmoil's random per-message latency
//! (between `min_message_latency` and `max_message_latency`). Partitions and held links
//! are turmoil's own.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utp::net::{DatagramSocket, UtpSocket};
use utp::Config;

mod common;
use common::pattern;

/// A turmoil UDP socket that drops each sent datagram with probability `loss`,
/// decided by its own seeded generator.
struct LossySocket {
    inner: turmoil::net::UdpSocket,
    loss: f64,
    rng: Mutex<ChaCha8Rng>,
    dropped: Arc<AtomicU64>,
}

impl LossySocket {
    async fn bind(port: u16, loss: f64, seed: u64, dropped: Arc<AtomicU64>) -> LossySocket {
        let inner =
            turmoil::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
                .await
                .unwrap();
        LossySocket {
            inner,
            loss,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            dropped,
        }
    }

    fn lose(&self) -> bool {
        let draw = self.rng.lock().unwrap().next_u64() as f64 / u64::MAX as f64;
        let lost = draw < self.loss;
        if lost {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }
}

impl DatagramSocket for LossySocket {
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
        let lost = self.lose();
        async move {
            if lost {
                Ok(buf.len())
            } else {
                self.inner.send_to(buf, target).await
            }
        }
    }

    fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        if self.lose() {
            return Ok(buf.len());
        }
        self.inner.try_send_to(buf, target)
    }
}

fn sim(seed: u64, secs: u64) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(secs))
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(Duration::from_millis(40))
        .udp_capacity(4096)
        .build()
}

async fn utp_socket(port: u16, loss: f64, seed: u64, config: Config) -> UtpSocket {
    let sock = LossySocket::bind(port, loss, seed, Arc::new(AtomicU64::new(0))).await;
    UtpSocket::with_socket(sock, config, [seed as u8; 32]).unwrap()
}

fn server_addr() -> SocketAddr {
    SocketAddr::new(turmoil::lookup("server"), 6881)
}

/// Both directions at once under 3 % loss each way and reordering; returns the
/// client's packet count (to compare runs).
fn bidirectional_under_loss(seed: u64) -> u64 {
    let mut sim = sim(seed, 600);
    let up = pattern(1 << 20, 1);
    let down = pattern(768 << 10, 2);
    let (up2, down2) = (up.clone(), down.clone());
    sim.host("server", move || {
        let (up, down) = (up2.clone(), down2.clone());
        async move {
            let socket = utp_socket(6881, 0.03, seed ^ 1, Config::default()).await;
            let (stream, _) = socket.accept().await?;
            let (mut r, mut w) = stream.into_split();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.map(|_| got)
            });
            w.write_all(&down).await?;
            w.shutdown().await?;
            assert!(
                reader.await.unwrap()? == up,
                "server got the client's bytes"
            );
            Ok(())
        }
    });
    let packets = Arc::new(AtomicU64::new(0));
    let p2 = packets.clone();
    sim.client("client", async move {
        let socket = utp_socket(0, 0.03, seed ^ 2, Config::default()).await;
        let stream = socket.connect(server_addr()).await?;
        let (mut r, mut w) = stream.into_split();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.map(|_| (got, r.stats()))
        });
        w.write_all(&up).await?;
        w.shutdown().await?;
        let (got, stats) = reader.await.unwrap()?;
        assert!(got == down, "client got the server's bytes");
        assert!(
            stats.retransmits_dup_ack + stats.retransmits_sack + stats.retransmits_timeout > 0,
            "loss happened"
        );
        p2.store(stats.packets_sent, Ordering::Relaxed);
        Ok(())
    });
    sim.run().unwrap();
    packets.load(Ordering::Relaxed)
}

#[test]
fn transfer_both_ways_under_loss_and_reordering() {
    let a = bidirectional_under_loss(7);
    assert!(a > 0);
    // Same seed, same run: turmoil, our shaper and the endpoints are all seeded.
    assert_eq!(bidirectional_under_loss(7), a);
}

#[test]
fn many_streams_under_loss() {
    let mut sim = sim(11, 600);
    const N: usize = 40;
    sim.host("server", || async {
        let socket = utp_socket(6881, 0.02, 21, Config::default()).await;
        let mut tasks = Vec::new();
        for _ in 0..N {
            let (mut s, _) = socket.accept().await?;
            tasks.push(tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await?;
                s.write_all(&buf).await?;
                s.shutdown().await
            }));
        }
        for t in tasks {
            t.await.unwrap()?;
        }
        Ok(())
    });
    sim.client("client", async {
        let socket = utp_socket(0, 0.02, 22, Config::default()).await;
        let mut tasks = Vec::new();
        for i in 0..N {
            let socket = socket.clone();
            tasks.push(tokio::spawn(async move {
                let msg = pattern(10_000 + 997 * i, i as u64);
                let mut s = socket.connect(server_addr()).await?;
                s.write_all(&msg).await?;
                s.shutdown().await?;
                let mut back = Vec::new();
                s.read_to_end(&mut back).await?;
                assert!(back == msg, "stream {i}");
                io::Result::Ok(())
            }));
        }
        for t in tasks {
            t.await.unwrap()?;
        }
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn half_close_and_abort() {
    let mut sim = sim(12, 120);
    sim.host("server", || async {
        let socket = utp_socket(6881, 0.0, 31, Config::default()).await;
        // First connection: answer after the client's FIN.
        let (mut s, _) = socket.accept().await?;
        let mut req = Vec::new();
        s.read_to_end(&mut req).await?;
        s.write_all(&req).await?;
        s.shutdown().await?;
        // Second connection: the client aborts; we see a reset.
        let (mut s, _) = socket.accept().await?;
        let mut buf = [0u8; 100];
        let err = loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("an abort is not a clean end"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        Ok(())
    });
    sim.client("client", async {
        let socket = utp_socket(0, 0.0, 32, Config::default()).await;
        let mut s = socket.connect(server_addr()).await?;
        s.write_all(b"half").await?;
        s.shutdown().await?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).await?;
        assert_eq!(back, b"half");
        let mut s = socket.connect(server_addr()).await?;
        s.write_all(b"bye").await?;
        tokio::time::sleep(Duration::from_millis(200)).await; // virtual time
        s.abort();
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    });
    sim.run().unwrap();
}

/// A partition in the middle of a transfer: the sender gives up with `TimedOut`, in
/// virtual time, instead of hanging.
#[test]
fn partition_times_out() {
    let mut sim = sim(13, 600);
    let exchanged = Arc::new(AtomicBool::new(false));
    let ex2 = exchanged.clone();
    sim.host("server", || async {
        let socket = utp_socket(6881, 0.0, 41, Config::default()).await;
        let (mut s, _) = socket.accept().await?;
        let mut buf = vec![0u8; 1 << 16];
        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        Ok(())
    });
    sim.client("client", async move {
        let socket = utp_socket(0, 0.0, 42, Config::default()).await;
        let mut s = socket.connect(server_addr()).await?;
        s.write_all(&pattern(100_000, 5)).await?;
        ex2.store(true, Ordering::SeqCst);
        let start = tokio::time::Instant::now();
        let err = loop {
            if let Err(e) = s.write_all(&pattern(64 << 10, 6)).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        // Six doubling timeouts from 0.5 s: about a minute, never forever.
        assert!(
            waited < Duration::from_secs(200),
            "gave up after {waited:?}"
        );
        Ok(())
    });
    while !exchanged.load(Ordering::SeqCst) {
        sim.step().unwrap();
    }
    sim.partition("client", "server");
    sim.run().unwrap();
}

/// A held link (all messages queued, then released) in the middle of a transfer
/// delays it but loses nothing and does not end the connection.
#[test]
fn held_link_loses_nothing() {
    let mut sim = sim(14, 600);
    let started = Arc::new(AtomicBool::new(false));
    let st2 = started.clone();
    let data = pattern(2_000_000, 8);
    let d2 = data.clone();
    sim.host("server", move || {
        let (data, started) = (d2.clone(), st2.clone());
        async move {
            let socket = utp_socket(6881, 0.0, 51, Config::default()).await;
            let (mut s, _) = socket.accept().await?;
            let mut got = vec![0u8; 100_000];
            s.read_exact(&mut got).await?;
            started.store(true, Ordering::SeqCst);
            s.read_to_end(&mut got).await?;
            assert!(got == data);
            Ok(())
        }
    });
    let client_stats = Arc::new(Mutex::new(None));
    let cs2 = client_stats.clone();
    sim.client("client", async move {
        let socket = utp_socket(0, 0.0, 52, Config::default()).await;
        let mut s = socket.connect(server_addr()).await?;
        s.write_all(&data).await?;
        s.shutdown().await?;
        *cs2.lock().unwrap() = Some(s.stats());
        Ok(())
    });
    while !started.load(Ordering::SeqCst) {
        sim.step().unwrap();
    }
    sim.hold("client", "server");
    for _ in 0..3000 {
        sim.step().unwrap(); // 3 s of virtual time with the link held
    }
    sim.release("client", "server");
    sim.run().unwrap();
    let stats = client_stats.lock().unwrap().clone().unwrap();
    assert!(stats.timeouts >= 1, "the hold was felt: {stats:?}");
}

#[test]
fn connect_to_a_host_without_listener() {
    let mut sim = sim(15, 120);
    sim.host("server", || async {
        // A host with a uTP socket that accepts nothing: refused.
        let mut cfg = Config::default();
        cfg.accept_incoming = false;
        let _socket = utp_socket(6881, 0.0, 61, cfg).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    });
    sim.host("silent", || async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    });
    sim.client("client", async {
        let socket = utp_socket(0, 0.0, 62, Config::default()).await;
        let err = socket.connect(server_addr()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let silent = SocketAddr::new(turmoil::lookup("silent"), 6881);
        let start = tokio::time::Instant::now();
        let err = socket.connect(silent).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // SYN at 0, 1, 3 and 7 s, given up at 15 s (initial timeout doubling).
        let waited = start.elapsed();
        assert!(
            (Duration::from_secs(14)..Duration::from_secs(17)).contains(&waited),
            "{waited:?}"
        );
        Ok(())
    });
    sim.run().unwrap();
}
