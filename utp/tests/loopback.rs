//! The async API over real UDP on loopback.
//!
//! Nothing here sleeps: each test waits on the protocol itself. Tests that wait for a
//! time-out use short timeouts in their configuration so they finish in about a second.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utp::net::UtpSocket;
use utp::Config;

mod common;
use common::pattern;

fn fast_timeouts() -> Config {
    let mut c = Config::default();
    c.initial_timeout = Duration::from_millis(200);
    c.min_timeout = Duration::from_millis(100);
    c.max_retransmits = 2;
    c.syn_retries = 2;
    c.idle_timeout = Duration::from_secs(5);
    c
}

async fn pair() -> (UtpSocket, UtpSocket, SocketAddr) {
    let server = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    (server, client, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_each_way_and_both_at_once() {
    let (server, client, addr) = pair().await;
    let up = pattern(8 << 20, 1);
    let down = pattern(6 << 20, 2);
    let (up2, down2) = (up.clone(), down.clone());
    let srv = tokio::spawn(async move {
        let (stream, _) = server.accept().await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        });
        w.write_all(&down2).await.unwrap();
        w.shutdown().await.unwrap();
        assert!(
            reader.await.unwrap() == up2,
            "server received the client's bytes"
        );
    });
    let stream = client.connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    });
    w.write_all(&up).await.unwrap();
    w.shutdown().await.unwrap();
    assert!(
        reader.await.unwrap() == down,
        "client received the server's bytes"
    );
    srv.await.unwrap();
}

#[tokio::test]
async fn hundreds_of_streams_on_one_socket() {
    let (server, client, addr) = pair().await;
    const N: usize = 200;
    let srv = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..N {
            let (mut s, _) = server.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                // Echo one message back, then close.
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let msg = pattern(20_000 + i * 13, i as u64);
            let mut s = client.connect(addr).await.unwrap();
            s.write_all(&msg).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert!(back == msg, "stream {i} echoed");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    srv.await.unwrap();
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    let (server, client, addr) = pair().await;
    let srv = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap(); // EOF: the client half-closed
        assert_eq!(req, b"request");
        // Still allowed to answer after the peer's FIN.
        s.write_all(b"response after your FIN").await.unwrap();
        s.shutdown().await.unwrap();
    });
    let mut s = client.connect(addr).await.unwrap();
    s.write_all(b"request").await.unwrap();
    s.shutdown().await.unwrap();
    assert!(
        s.write_all(b"more").await.is_err(),
        "no writes after shutdown"
    );
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    assert_eq!(resp, b"response after your FIN");
    srv.await.unwrap();
}

#[tokio::test]
async fn abort_resets_the_peer() {
    let (server, client, addr) = pair().await;
    let srv = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("a reset is not a clean end of stream"),
                Ok(_) => continue,
                Err(e) => return e.kind(),
            }
        }
    });
    let mut s = client.connect(addr).await.unwrap();
    s.write_all(b"some data").await.unwrap();
    // Make sure the server accepted before aborting.
    tokio::task::yield_now().await;
    let stats = s.stats();
    assert_eq!(stats.timeouts, 0);
    s.abort();
    assert_eq!(srv.await.unwrap(), std::io::ErrorKind::ConnectionReset);
}

/// A UDP relay on loopback between one client and `server`, which can be cut.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if cut2.load(Ordering::Relaxed) {
                    continue;
                }
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                let _ = sock.send_to(&buf[..n], to).await;
            }
        });
        Relay { addr, cut }
    }
}

#[tokio::test]
async fn vanished_peer_times_out() {
    let server = UtpSocket::bind_with_config("127.0.0.1:0", fast_timeouts())
        .await
        .unwrap();
    let client = UtpSocket::bind_with_config("127.0.0.1:0", fast_timeouts())
        .await
        .unwrap();
    let relay = Relay::start(server.local_addr().unwrap()).await;
    let srv = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong").await.unwrap();
        // Then nothing: the relay is cut and the server is never heard from again.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let mut s = client.connect(relay.addr).await.unwrap();
    s.write_all(b"ping!").await.unwrap();
    let mut pong = [0u8; 4];
    s.read_exact(&mut pong).await.unwrap();
    relay.cut.store(true, Ordering::Relaxed);
    s.write_all(&pattern(100_000, 3)).await.unwrap();
    let mut rest = Vec::new();
    let err = s.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(s.stats().timeouts >= 2);
    srv.abort();
}

#[tokio::test]
async fn connect_where_nobody_listens() {
    let client = UtpSocket::bind_with_config("127.0.0.1:0", fast_timeouts())
        .await
        .unwrap();
    // A closed UDP port: nothing answers.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = client.connect(port).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    // A uTP socket that accepts nothing answers with a RESET: refused.
    let mut cfg = Config::default();
    cfg.accept_incoming = false;
    let closed = UtpSocket::bind_with_config("127.0.0.1:0", cfg)
        .await
        .unwrap();
    let err = client
        .connect(closed.local_addr().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn tiny_writes_are_coalesced() {
    let (server, client, addr) = pair().await;
    let srv = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got.len()
    });
    let mut s = client.connect(addr).await.unwrap();
    let before = client.stats().datagrams_sent;
    // 10 000 one-byte writes in one tick: the driver runs only when we yield.
    for i in 0..10_000u32 {
        s.write_all(&[i as u8]).await.unwrap();
    }
    s.shutdown().await.unwrap();
    assert_eq!(srv.await.unwrap(), 10_000);
    let datagrams = client.stats().datagrams_sent - before;
    // 10 000 bytes fit in 8 full packets; with the FIN and a few ACKs, well under 30.
    assert!(
        datagrams < 30,
        "{datagrams} datagrams for 10 000 one-byte writes"
    );
}

#[tokio::test]
async fn ipv6_loopback() {
    let Ok(server) = UtpSocket::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback on this machine: skipped");
        return;
    };
    let client = UtpSocket::bind("[::1]:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (mut s, peer) = server.accept().await.unwrap();
        assert!(peer.is_ipv6());
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut s = client.connect(addr).await.unwrap();
    let msg = pattern(300_000, 9);
    s.write_all(&msg).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(srv.await.unwrap() == msg);
}
