//! Helpers shared by the benchmarks: a connected pair of endpoints in memory.

use std::net::SocketAddr;

use utp::proto::{ConnectionHandle, Endpoint, Event};
use utp::{Config, Instant};

/// Two endpoints with an established connection, driven by hand.
pub struct Pair {
    /// The sender.
    pub a: Endpoint,
    /// The receiver.
    pub b: Endpoint,
    /// A's address.
    pub a_addr: SocketAddr,
    /// B's address.
    pub b_addr: SocketAddr,
    /// A's handle of the connection.
    pub ha: ConnectionHandle,
    /// B's handle of the connection.
    pub hb: ConnectionHandle,
    /// The current time.
    pub now: Instant,
}

impl Pair {
    /// Connects A to B, exchanging the handshake datagrams in memory.
    pub fn connected(config: Config) -> Pair {
        let mut a = Endpoint::new(config.clone(), [1; 32]).expect("config");
        let mut b = Endpoint::new(config, [2; 32]).expect("config");
        let a_addr: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let b_addr: SocketAddr = "10.0.0.2:2".parse().expect("addr");
        let now = Instant::from_millis(1000);
        let ha = a.connect(now, b_addr).expect("connect");
        let mut buf = vec![0u8; 2048];
        let mut hb = None;
        for _ in 0..4 {
            while let Some(t) = a.poll_transmit(now, &mut buf) {
                b.handle_datagram(now, a_addr, &buf[..t.len]);
            }
            while let Some(t) = b.poll_transmit(now, &mut buf) {
                a.handle_datagram(now, b_addr, &buf[..t.len]);
            }
            while let Some((h, e)) = b.poll_event() {
                if e == Event::Incoming {
                    hb = Some(h);
                }
            }
            while a.poll_event().is_some() {}
        }
        Pair {
            a,
            b,
            a_addr,
            b_addr,
            ha,
            hb: hb.expect("handshake completed"),
            now,
        }
    }

    /// Makes A send up to `n` full data packets; returns them as datagrams.
    pub fn data_packets(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mss = self.a.config().max_payload();
        let chunk = vec![7u8; mss * n];
        let mut written = 0;
        while written < chunk.len() {
            match self.a.write(self.now, self.ha, &chunk[written..]) {
                Ok(k) => written += k,
                Err(_) => break,
            }
        }
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; 2048];
        while let Some(t) = self.a.poll_transmit(self.now, &mut buf) {
            out.push(buf[..t.len].to_vec());
            if out.len() == n {
                break;
            }
        }
        out
    }
}
