//! An impairing UDP relay on real sockets, for real-time tests over loopback.
//!
//! **This is not part of the deterministic simulator.** It runs on std threads with
//! `std::net::UdpSocket` and the wall clock, so a run is not reproducible: the seed
//! fixes the sequence of random draws of each direction, but which datagram meets which
//! draw depends on the operating system's timing. Use it where real sockets are the
//! point (the tokio driver, libutp over real UDP, the soak); use the simulator
//! ([`crate::engine`], [`crate::link`]) for experiments that must repeat exactly.
//!
//! The relay sits between one client and one server:
//!
//! ```text
//!   client ──▶ relay.addr() [front socket] ──impair──▶ [back socket] ──▶ target
//!   client ◀── [front socket] ◀──impair── [back socket] ◀── target
//! ```
//!
//! The first datagram that reaches the front socket fixes the client's address
//! (later datagrams from other addresses are counted in [`DirectionStats::foreign`]
//! and dropped); the back socket is connected to the target, so only the target's
//! replies come back, and they go to the client.
//!
//! Each direction has its own [`Direction`] impairment: random loss (independent or
//! Gilbert-Elliott bursts, the simulator's [`LossModel`]), duplication, explicit
//! reordering (a datagram held back), and a fixed delay plus uniform jitter. Held
//! datagrams wait in one bounded queue ([`Impairment::queue_limit`]); a datagram that
//! does not fit is dropped and counted.
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::time::Duration;
//! use utp_sim::relay::{Direction, Impairment, Relay};
//!
//! let server = UdpSocket::bind("127.0.0.1:0").unwrap();
//! let lossy = Direction::lossy(0.02).with_delay(Duration::from_millis(10));
//! let relay = Relay::spawn(server.local_addr().unwrap(), Impairment::symmetric(lossy, 7)).unwrap();
//! // The client sends to relay.addr() instead of the server.
//! let client = UdpSocket::bind("127.0.0.1:0").unwrap();
//! client.send_to(b"hello", relay.addr()).unwrap();
//! println!("{:?}", relay.stats());
//! // Dropping the relay stops its threads and closes its sockets.
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::link::LossModel;
use crate::rng::SimRng;

/// How often a receiving thread looks at the stop flag while no datagram arrives.
const POLL: Duration = Duration::from_millis(20);
/// The socket buffer size asked for on both sockets (Linux caps it at `rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
/// The largest datagram the relay reads.
const MAX_DATAGRAM: usize = 65_536;

/// The impairments of one direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Direction {
    /// Random loss (default: none).
    pub loss: LossModel,
    /// Probability that a forwarded datagram is sent twice (default 0).
    pub duplicate: f64,
    /// Probability that a datagram is held back by [`reorder_delay`](Self::reorder_delay)
    /// in addition to its delay, so later ones overtake it (default 0).
    pub reorder: f64,
    /// How long a reordered datagram is held back (default 5 ms).
    pub reorder_delay: Duration,
    /// Fixed one-way delay added to every datagram (default 0).
    pub delay: Duration,
    /// Uniform extra delay in `[0, jitter]` per datagram (default 0). Jitter larger
    /// than the spacing of datagrams reorders them too.
    pub jitter: Duration,
}

impl Default for Direction {
    fn default() -> Direction {
        Direction {
            loss: LossModel::Bernoulli { p: 0.0 },
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

impl Direction {
    /// A perfect direction: every datagram forwarded at once.
    pub fn clean() -> Direction {
        Direction::default()
    }

    /// Independent loss with probability `p`, nothing else.
    pub fn lossy(p: f64) -> Direction {
        Direction {
            loss: LossModel::Bernoulli { p },
            ..Direction::default()
        }
    }

    /// Gilbert-Elliott bursty loss, nothing else (see [`LossModel::GilbertElliott`]).
    pub fn bursty(
        p_good_to_bad: f64,
        p_bad_to_good: f64,
        loss_good: f64,
        loss_bad: f64,
    ) -> Direction {
        Direction {
            loss: LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            },
            ..Direction::default()
        }
    }

    /// This direction with a fixed delay.
    pub fn with_delay(mut self, delay: Duration) -> Direction {
        self.delay = delay;
        self
    }

    /// This direction with uniform jitter in `[0, jitter]`.
    pub fn with_jitter(mut self, jitter: Duration) -> Direction {
        self.jitter = jitter;
        self
    }

    /// This direction with duplication probability `p`.
    pub fn with_duplicate(mut self, p: f64) -> Direction {
        self.duplicate = p;
        self
    }

    /// This direction with reordering probability `p`, each reordered datagram held
    /// back by `by`.
    pub fn with_reorder(mut self, p: f64, by: Duration) -> Direction {
        self.reorder = p;
        self.reorder_delay = by;
        self
    }

    /// Checks that probabilities lie in [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!("{name} must be in [0, 1], got {p}"))
            }
        };
        self.loss.validate()?;
        prob("duplicate", self.duplicate)?;
        prob("reorder", self.reorder)
    }

    fn needs_queue(&self) -> bool {
        self.delay > Duration::ZERO || self.jitter > Duration::ZERO || self.reorder > 0.0
    }
}

/// The impairments of both directions, the seed, and the queue bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    /// Client to server.
    pub to_server: Direction,
    /// Server to client.
    pub to_client: Direction,
    /// Seeds the two directions' ChaCha generators.
    pub seed: u64,
    /// At most this many datagrams wait in the delay queue (both directions together);
    /// more are dropped and counted in [`DirectionStats::overflow`]. Default 100 000.
    pub queue_limit: usize,
}

impl Default for Impairment {
    fn default() -> Impairment {
        Impairment {
            to_server: Direction::default(),
            to_client: Direction::default(),
            seed: 0,
            queue_limit: 100_000,
        }
    }
}

impl Impairment {
    /// No impairment at all: a plain forwarder.
    pub fn none() -> Impairment {
        Impairment::default()
    }

    /// The same impairment in both directions (with independent random draws).
    pub fn symmetric(direction: Direction, seed: u64) -> Impairment {
        Impairment {
            to_server: direction,
            to_client: direction,
            seed,
            ..Impairment::default()
        }
    }

    /// Checks both directions.
    pub fn validate(&self) -> Result<(), String> {
        self.to_server
            .validate()
            .map_err(|e| format!("to_server: {e}"))?;
        self.to_client
            .validate()
            .map_err(|e| format!("to_client: {e}"))
    }
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams received by the relay for this direction.
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Bytes sent on (duplicates included).
    pub forwarded_bytes: u64,
    /// Datagrams dropped by the loss model.
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Datagrams held back for reordering.
    pub reordered: u64,
    /// Datagrams dropped because the delay queue was full.
    pub overflow: u64,
    /// Datagrams from an address that is not the client (front) and were dropped.
    pub foreign: u64,
    /// Sends that failed (for example no socket at the destination).
    pub send_errors: u64,
}

/// A snapshot of the relay's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client to server.
    pub to_server: DirectionStats,
    /// Server to client.
    pub to_client: DirectionStats,
}

impl RelayStats {
    /// Datagrams dropped on purpose in both directions (loss and overflow).
    pub fn dropped(&self) -> u64 {
        self.to_server.dropped
            + self.to_server.overflow
            + self.to_client.dropped
            + self.to_client.overflow
    }
}

/// A running relay. Dropping it stops its threads and closes its sockets.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay to `target` on an ephemeral loopback port of the target's address
    /// family (127.0.0.1 or ::1). Send to [`addr`](Self::addr) instead of `target`.
    pub fn spawn(target: SocketAddr, impairment: Impairment) -> io::Result<Relay> {
        let ip = match target {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Relay::spawn_on(SocketAddr::new(ip, 0), target, impairment)
    }

    /// Starts a relay to `target` whose front socket binds `front` (port 0 for an
    /// ephemeral port). The back socket binds the same IP on an ephemeral port.
    pub fn spawn_on(
        front: SocketAddr,
        target: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Relay> {
        impairment
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let front_sock = bind(front)?;
        let back_sock = bind(SocketAddr::new(front.ip(), 0))?;
        back_sock.connect(target)?;
        let addr = front_sock.local_addr()?;
        let mut rng = SimRng::new(impairment.seed);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            impairment: Mutex::new(impairment),
            client: OnceLock::new(),
            front: front_sock,
            back: back_sock,
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            seq: AtomicU64::new(0),
            stats: [Counters::default(), Counters::default()],
        });
        let mut threads = Vec::with_capacity(3);
        for dir in [Dir::ToServer, Dir::ToClient] {
            let s = Arc::clone(&shared);
            let r = rng.fork(dir as u64);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("relay-{}", dir.name()))
                    .spawn(move || receive_loop(&s, dir, r))?,
            );
        }
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("relay-delay".into())
                .spawn(move || delay_loop(&s))?,
        );
        Ok(Relay {
            addr,
            shared,
            threads,
        })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client's address, once its first datagram arrived.
    pub fn client(&self) -> Option<SocketAddr> {
        self.shared.client.get().copied()
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            to_server: self.shared.stats[Dir::ToServer as usize].snapshot(),
            to_client: self.shared.stats[Dir::ToClient as usize].snapshot(),
        }
    }

    /// Replaces the impairments from the next datagram on (datagrams already held keep
    /// their send times). The seed and the random generators are not changed.
    pub fn set_impairment(&self, impairment: Impairment) -> io::Result<()> {
        impairment
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        *lock(&self.shared.impairment) = impairment;
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            // Take the lock so the delay thread is either waiting (and gets the
            // notification) or will see the flag before it waits.
            let _q = lock(&self.shared.queue);
            self.shared.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    ToServer = 0,
    ToClient = 1,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::ToServer => "to-server",
            Dir::ToClient => "to-client",
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    overflow: AtomicU64,
    foreign: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirectionStats {
            received: g(&self.received),
            forwarded: g(&self.forwarded),
            forwarded_bytes: g(&self.forwarded_bytes),
            dropped: g(&self.dropped),
            duplicated: g(&self.duplicated),
            reordered: g(&self.reordered),
            overflow: g(&self.overflow),
            foreign: g(&self.foreign),
            send_errors: g(&self.send_errors),
        }
    }
}

fn bump(a: &AtomicU64, by: u64) {
    a.fetch_add(by, Ordering::Relaxed);
}

/// A datagram waiting in the delay queue: ordered by due time, then arrival.
type Held = Reverse<(Instant, u64, Dir, Vec<u8>)>;

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    impairment: Mutex<Impairment>,
    client: OnceLock<SocketAddr>,
    front: UdpSocket,
    back: UdpSocket,
    queue: Mutex<BinaryHeap<Held>>,
    wake: Condvar,
    seq: AtomicU64,
    stats: [Counters; 2],
}

impl Shared {
    fn send(&self, dir: Dir, data: &[u8]) {
        let c = &self.stats[dir as usize];
        let r = match dir {
            Dir::ToServer => self.back.send(data),
            Dir::ToClient => match self.client.get() {
                Some(&to) => self.front.send_to(data, to),
                None => Err(io::ErrorKind::NotConnected.into()),
            },
        };
        match r {
            Ok(_) => {
                bump(&c.forwarded, 1);
                bump(&c.forwarded_bytes, data.len() as u64);
            }
            Err(_) => bump(&c.send_errors, 1),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps these at rmem_max / wmem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&addr.into())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(POLL))?;
    Ok(s)
}

fn receive_loop(s: &Shared, dir: Dir, mut rng: SimRng) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ge_bad = false;
    let c = &s.stats[dir as usize];
    while !s.stop.load(Ordering::Relaxed) {
        let n = match dir {
            Dir::ToServer => match s.front.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let client = *s.client.get_or_init(|| from);
                    if client != from {
                        bump(&c.foreign, 1);
                        continue;
                    }
                    n
                }
                Err(_) => continue,
            },
            // Timeouts, and ICMP "port unreachable" reported on the connected socket.
            Dir::ToClient => match s.back.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        bump(&c.received, 1);
        let (d, limit) = {
            let imp = lock(&s.impairment);
            let d = match dir {
                Dir::ToServer => imp.to_server,
                Dir::ToClient => imp.to_client,
            };
            (d, imp.queue_limit)
        };
        if d.loss.draw(&mut ge_bad, &mut rng) {
            bump(&c.dropped, 1);
            continue;
        }
        let copies = if rng.chance(d.duplicate) { 2 } else { 1 };
        if copies == 2 {
            bump(&c.duplicated, 1);
        }
        let held_back = rng.chance(d.reorder);
        if !d.needs_queue() {
            for _ in 0..copies {
                s.send(dir, &buf[..n]);
            }
            continue;
        }
        let now = Instant::now();
        let mut q = lock(&s.queue);
        for _ in 0..copies {
            let mut wait = d.delay;
            if d.jitter > Duration::ZERO {
                let us = d.jitter.as_micros().min(u64::MAX as u128) as u64;
                wait += Duration::from_micros(rng.below(us.saturating_add(1)));
            }
            if held_back {
                wait += d.reorder_delay;
            }
            if q.len() >= limit {
                bump(&c.overflow, 1);
                continue;
            }
            let seq = s.seq.fetch_add(1, Ordering::Relaxed);
            q.push(Reverse((now + wait, seq, dir, buf[..n].to_vec())));
        }
        if held_back {
            bump(&c.reordered, 1);
        }
        drop(q);
        s.wake.notify_one();
    }
}

fn delay_loop(s: &Shared) {
    let mut q = lock(&s.queue);
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let due = q.peek().map(|Reverse((at, ..))| *at);
        match due {
            Some(at) if at <= now => {
                let Some(Reverse((_, _, dir, data))) = q.pop() else {
                    continue;
                };
                drop(q);
                s.send(dir, &data);
                q = lock(&s.queue);
            }
            Some(at) => {
                q = s
                    .wake
                    .wait_timeout(q, at - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            None => {
                q = s.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> UdpSocket {
        // Large buffers: only the relay should ever drop a datagram in these tests.
        let s = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn client() -> UdpSocket {
        server()
    }

    /// Receives until `n` datagrams arrived or `quiet` passes without one.
    fn drain(s: &UdpSocket, n: usize, quiet: Duration) -> Vec<Vec<u8>> {
        s.set_read_timeout(Some(quiet)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < n {
            match s.recv(&mut buf) {
                Ok(k) => got.push(buf[..k].to_vec()),
                Err(_) => break,
            }
        }
        got
    }

    /// The counters once `done` holds for them (the relay counts a datagram just after
    /// sending it, so a receiver can be ahead of the counters for a moment).
    fn stats_when(relay: &Relay, done: impl Fn(&RelayStats) -> bool) -> RelayStats {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let st = relay.stats();
            if done(&st) || Instant::now() > until {
                return st;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn seqs(got: &[Vec<u8>]) -> Vec<u32> {
        got.iter()
            .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn forwards_both_ways_and_learns_the_client() {
        let srv = server();
        let relay = Relay::spawn(srv.local_addr().unwrap(), Impairment::none()).unwrap();
        let cli = client();
        cli.send_to(b"ping", relay.addr()).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = srv.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_ne!(from, cli.local_addr().unwrap(), "the relay is in between");
        assert_eq!(relay.client(), Some(cli.local_addr().unwrap()));
        srv.send_to(b"pong", from).unwrap();
        let (n, back) = cli.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(back, relay.addr());
        let st = stats_when(&relay, |s| s.to_client.forwarded == 1);
        assert_eq!(st.to_server.forwarded, 1);
        assert_eq!(st.to_client.forwarded, 1);
        assert_eq!(st.to_server.forwarded_bytes, 4);
        assert_eq!(st.dropped(), 0);
    }

    #[test]
    fn datagrams_from_a_second_client_are_dropped() {
        let srv = server();
        let relay = Relay::spawn(srv.local_addr().unwrap(), Impairment::none()).unwrap();
        let a = client();
        a.send_to(b"a", relay.addr()).unwrap();
        let mut buf = [0u8; 8];
        srv.recv_from(&mut buf).unwrap();
        let b = client();
        b.send_to(b"b", relay.addr()).unwrap();
        a.send_to(b"c", relay.addr()).unwrap();
        let (n, _) = srv.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"c");
        assert_eq!(relay.stats().to_server.foreign, 1);
    }

    #[test]
    fn loss_rate_is_close_to_the_configured_one() {
        let srv = server();
        let imp = Impairment {
            to_server: Direction::lossy(0.3),
            seed: 11,
            ..Impairment::none()
        };
        let relay = Relay::spawn(srv.local_addr().unwrap(), imp).unwrap();
        let cli = client();
        let total = 2000u32;
        // In bursts of 50, each taken in by the relay before the next, so the kernel's
        // socket buffers never overflow (a loaded CI machine dropped one otherwise).
        for i in 0..total {
            cli.send_to(&i.to_be_bytes(), relay.addr()).unwrap();
            if (i + 1) % 50 == 0 {
                stats_when(&relay, |s| s.to_server.received >= u64::from(i + 1));
            }
        }
        let st = stats_when(&relay, |s| s.to_server.received == u64::from(total)).to_server;
        let got = drain(&srv, total as usize, Duration::from_millis(300));
        assert_eq!(st.received, u64::from(total));
        assert_eq!(st.dropped + st.forwarded, u64::from(total));
        assert_eq!(got.len() as u64, st.forwarded);
        let rate = st.dropped as f64 / f64::from(total);
        assert!((0.25..0.35).contains(&rate), "loss rate {rate}");
        // Without delay nothing is reordered.
        assert!(seqs(&got).windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn bursty_loss_comes_in_runs() {
        let srv = server();
        let imp = Impairment {
            to_server: Direction::bursty(0.05, 0.2, 0.0, 1.0),
            seed: 3,
            ..Impairment::none()
        };
        let relay = Relay::spawn(srv.local_addr().unwrap(), imp).unwrap();
        let cli = client();
        let total = 2000u32;
        for i in 0..total {
            cli.send_to(&i.to_be_bytes(), relay.addr()).unwrap();
        }
        let got = seqs(&drain(&srv, total as usize, Duration::from_millis(300)));
        let lost = total as usize - got.len();
        let gaps = got.windows(2).filter(|w| w[1] != w[0] + 1).count();
        // Mean burst length is 1 / 0.2 = 5: far fewer gaps than lost datagrams.
        assert!(lost > 100, "lost {lost}");
        assert!(gaps * 2 < lost, "{gaps} gaps for {lost} lost");
    }

    #[test]
    fn delay_duplication_and_reordering() {
        let srv = server();
        let d = Direction::clean()
            .with_delay(Duration::from_millis(30))
            .with_duplicate(0.5)
            .with_reorder(0.3, Duration::from_millis(20));
        let imp = Impairment {
            to_server: d,
            seed: 5,
            ..Impairment::none()
        };
        let relay = Relay::spawn(srv.local_addr().unwrap(), imp).unwrap();
        let cli = client();
        let start = Instant::now();
        cli.send_to(&0u32.to_be_bytes(), relay.addr()).unwrap();
        let mut first = Vec::new();
        first.extend(drain(&srv, 1, Duration::from_secs(5)));
        assert!(start.elapsed() >= Duration::from_millis(30));
        let total = 200u32;
        for i in 1..total {
            cli.send_to(&i.to_be_bytes(), relay.addr()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        first.extend(drain(&srv, usize::MAX, Duration::from_millis(300)));
        let got = seqs(&first);
        let st = stats_when(&relay, |s| s.to_server.forwarded == got.len() as u64).to_server;
        assert_eq!(st.received, u64::from(total));
        assert!(st.duplicated > 50, "{st:?}");
        assert!(st.reordered > 30, "{st:?}");
        assert_eq!(st.forwarded, u64::from(total) + st.duplicated);
        assert_eq!(got.len() as u64, st.forwarded);
        assert!(got.windows(2).any(|w| w[1] < w[0]), "some reordering");
        let mut uniq = got.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(
            uniq,
            (0..total).collect::<Vec<_>>(),
            "every datagram arrived"
        );
    }

    #[test]
    fn queue_limit_bounds_held_datagrams() {
        let srv = server();
        let imp = Impairment {
            to_server: Direction::clean().with_delay(Duration::from_millis(200)),
            queue_limit: 10,
            ..Impairment::none()
        };
        let relay = Relay::spawn(srv.local_addr().unwrap(), imp).unwrap();
        let cli = client();
        for i in 0..50u32 {
            cli.send_to(&i.to_be_bytes(), relay.addr()).unwrap();
        }
        let got = drain(&srv, 50, Duration::from_secs(1));
        let st = relay.stats().to_server;
        assert_eq!(st.received, 50);
        assert_eq!(st.overflow, 40);
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn set_impairment_applies_to_later_datagrams_and_drop_stops_the_threads() {
        let srv = server();
        let relay = Relay::spawn(srv.local_addr().unwrap(), Impairment::none()).unwrap();
        let cli = client();
        cli.send_to(b"1", relay.addr()).unwrap();
        assert_eq!(drain(&srv, 1, Duration::from_secs(5)).len(), 1);
        relay
            .set_impairment(Impairment::symmetric(Direction::lossy(1.0), 0))
            .unwrap();
        cli.send_to(b"2", relay.addr()).unwrap();
        assert!(drain(&srv, 1, Duration::from_millis(200)).is_empty());
        assert_eq!(relay.stats().to_server.dropped, 1);
        assert!(relay
            .set_impairment(Impairment::symmetric(Direction::lossy(2.0), 0))
            .is_err());
        let addr = relay.addr();
        let start = Instant::now();
        drop(relay);
        assert!(start.elapsed() < Duration::from_secs(2));
        // The front port is free again.
        UdpSocket::bind(addr).unwrap();
    }

    #[test]
    fn invalid_impairment_is_rejected() {
        let imp = Impairment::symmetric(Direction::clean().with_duplicate(-0.1), 0);
        let err = Relay::spawn("127.0.0.1:9".parse().unwrap(), imp).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
