//! Test harness: two endpoints joined by an in-memory network in virtual time.
//!
//! Time jumps straight to the next event (a delivery or a timer), so seconds of
//! protocol time cost microseconds. Datagrams pass through an [`Impairment`] that may
//! drop, duplicate or delay each one; tests can also inspect and edit the queue.

use core::time::Duration;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Config, ConnectionError, ConnectionHandle, Endpoint, Event, StreamError};
use crate::time::Instant;

/// Which endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What happens to datagrams on the way, per direction.
#[derive(Clone, Debug, Default)]
pub(crate) struct Impairment {
    /// Probability of dropping a datagram.
    pub loss: f64,
    /// Probability of delivering a datagram twice.
    pub duplicate: f64,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram (reorders).
    pub jitter: Duration,
}

/// A datagram on the wire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct InFlight {
    pub deliver_at: Instant,
    pub order: u64,
    pub to: Side,
    pub data: Vec<u8>,
}

impl PartialOrd for Side {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Side {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Two endpoints, a wire between them, and a clock.
pub(crate) struct Pair {
    pub now: Instant,
    pub a: Endpoint,
    pub b: Endpoint,
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
    /// One-way propagation delay.
    pub latency: Duration,
    /// Impairment of datagrams from A to B and from B to A.
    pub a_to_b: Impairment,
    /// See `a_to_b`.
    pub b_to_a: Impairment,
    pub wire: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    rng: ChaCha8Rng,
    /// Every datagram sent, with its time and direction, when `record` is set.
    pub trace: Vec<(Instant, Side, Vec<u8>)>,
    pub record: bool,
    /// Events seen, per side.
    pub events: Vec<(Side, ConnectionHandle, Event)>,
    /// Set to stop delivering datagrams (a cut cable); they are dropped.
    pub cut: bool,
}

impl Pair {
    /// Two endpoints with these configurations; `seed` drives every random choice.
    pub fn new(config_a: Config, config_b: Config, seed: u64) -> Pair {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s1 = [0u8; 32];
        let mut s2 = [0u8; 32];
        rng.fill_bytes(&mut s1);
        rng.fill_bytes(&mut s2);
        Pair {
            // Start away from zero so wire timestamps are not trivially small.
            now: Instant::from_micros(1_000_000 + (rng.next_u32() as u64)),
            a: Endpoint::new(config_a, s1).expect("valid config"),
            b: Endpoint::new(config_b, s2).expect("valid config"),
            a_addr: "10.0.0.1:6881".parse().expect("addr"),
            b_addr: "10.0.0.2:6882".parse().expect("addr"),
            latency: Duration::from_millis(10),
            a_to_b: Impairment::default(),
            b_to_a: Impairment::default(),
            wire: BinaryHeap::new(),
            order: 0,
            rng,
            trace: Vec::new(),
            record: false,
            events: Vec::new(),
            cut: false,
        }
    }

    /// The same default configuration on both sides.
    pub fn default_pair(seed: u64) -> Pair {
        Pair::new(Config::default(), Config::default(), seed)
    }

    pub fn endpoint(&mut self, side: Side) -> &mut Endpoint {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    pub fn addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::A => self.a_addr,
            Side::B => self.b_addr,
        }
    }

    /// A connects to B.
    pub fn connect(&mut self) -> ConnectionHandle {
        let (now, b) = (self.now, self.b_addr);
        self.a.connect(now, b).expect("connect")
    }

    /// Moves every datagram the endpoints want to send onto the wire.
    pub fn flush(&mut self) {
        let mut buf = vec![0u8; 65_536];
        for side in [Side::A, Side::B] {
            loop {
                let now = self.now;
                let Some(t) = self.endpoint(side).poll_transmit(now, &mut buf) else {
                    break;
                };
                let data = buf[..t.len].to_vec();
                let to = if t.destination == self.a_addr {
                    Side::A
                } else {
                    Side::B
                };
                assert_eq!(to, side.other(), "sent to the wrong address");
                if self.record {
                    self.trace.push((now, side, data.clone()));
                }
                self.put_on_wire(to, data);
            }
            while let Some((h, ev)) = self.endpoint(side).poll_event() {
                self.events.push((side, h, ev));
            }
        }
    }

    fn put_on_wire(&mut self, to: Side, data: Vec<u8>) {
        if self.cut {
            return;
        }
        let imp = match to {
            Side::B => self.a_to_b.clone(),
            Side::A => self.b_to_a.clone(),
        };
        if imp.loss > 0.0 && self.chance(imp.loss) {
            return;
        }
        let copies = if imp.duplicate > 0.0 && self.chance(imp.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if imp.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(self.rng.next_u64() % (imp.jitter.as_micros() as u64 + 1))
            };
            self.order += 1;
            self.wire.push(Reverse(InFlight {
                deliver_at: self.now + self.latency + jitter,
                order: self.order,
                to,
                data: data.clone(),
            }));
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    /// The time of the next thing that happens, if anything is left to happen.
    pub fn next_event(&mut self) -> Option<Instant> {
        let wire = self.wire.peek().map(|Reverse(d)| d.deliver_at);
        [wire, self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Advances to the next event and processes everything due then. Returns false
    /// when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.flush();
        let Some(t) = self.next_event() else {
            return false;
        };
        self.now = self.now.max(t);
        let now = self.now;
        while self
            .wire
            .peek()
            .is_some_and(|Reverse(d)| d.deliver_at <= now)
        {
            let Reverse(d) = self.wire.pop().expect("peeked");
            let from = self.addr(d.to.other());
            self.endpoint(d.to).handle_datagram(now, from, &d.data);
        }
        self.a.handle_timeout(now);
        self.b.handle_timeout(now);
        self.flush();
        true
    }

    /// Steps until `done` holds or `limit` of virtual time passes; panics on timeout
    /// with `what` (a livelock or stall is a test failure, never a hang).
    pub fn run_until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&mut Pair) -> bool,
    ) {
        let end = self.now + limit;
        let mut steps = 0u64;
        while !done(self) {
            steps += 1;
            assert!(steps < 50_000_000, "livelock while waiting for {what}");
            if !self.step() || self.now > end {
                panic!(
                    "{what} did not happen within {limit:?} (now {:?})",
                    self.now
                );
            }
        }
    }

    /// Steps until nothing is left to happen or `limit` passes.
    pub fn run_idle(&mut self, limit: Duration) {
        let end = self.now + limit;
        while self.now <= end && self.step() {}
    }

    /// The first handle of an event of this kind on `side`.
    pub fn find_event(&self, side: Side, want: Event) -> Option<ConnectionHandle> {
        self.events
            .iter()
            .find(|(s, _, e)| *s == side && *e == want)
            .map(|(_, h, _)| *h)
    }

    /// How many events of this kind `side` has seen.
    pub fn count_events(&self, side: Side, want: Event) -> usize {
        self.events
            .iter()
            .filter(|(s, _, e)| *s == side && *e == want)
            .count()
    }

    /// Connects A to B and runs until both see the connection; returns (A's, B's).
    pub fn establish(&mut self) -> (ConnectionHandle, ConnectionHandle) {
        let ha = self.connect();
        self.run_until(Duration::from_secs(30), "handshake", |p| {
            p.find_event(Side::A, Event::Connected).is_some()
                && p.find_event(Side::B, Event::Incoming).is_some()
        });
        (
            ha,
            self.find_event(Side::B, Event::Incoming).expect("incoming"),
        )
    }
}

/// An application on one side: writes a byte string, reads everything, then closes.
#[derive(Debug, Default)]
pub(crate) struct App {
    pub to_send: Vec<u8>,
    pub sent: usize,
    pub received: Vec<u8>,
    pub eof: bool,
    pub shut: bool,
    pub error: Option<StreamError>,
    /// Largest write call, to vary write sizes.
    pub write_chunk: usize,
    /// Reads in place ([`Endpoint::read_with`]) at most this many bytes at a time,
    /// instead of copying out with [`Endpoint::read`].
    pub read_in_place: Option<usize>,
}

impl App {
    pub fn new(data: Vec<u8>, write_chunk: usize) -> App {
        App {
            to_send: data,
            write_chunk: write_chunk.max(1),
            ..App::default()
        }
    }

    /// Writes what fits, reads what is there, shuts down when everything is written.
    pub fn pump(&mut self, ep: &mut Endpoint, now: Instant, h: ConnectionHandle) {
        while self.sent < self.to_send.len() {
            let end = (self.sent + self.write_chunk).min(self.to_send.len());
            match ep.write(now, h, &self.to_send[self.sent..end]) {
                Ok(n) => self.sent += n,
                Err(StreamError::WouldBlock) => break,
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        if self.sent == self.to_send.len() && !self.shut {
            self.shut = true;
            let _ = ep.shutdown(now, h);
        }
        let mut buf = [0u8; 4096];
        while !self.eof {
            let read = match self.read_in_place {
                Some(max) => {
                    let received = &mut self.received;
                    ep.read_with(now, h, max, |data| received.extend_from_slice(data))
                }
                None => ep.read(now, h, &mut buf).inspect(|&n| {
                    self.received.extend_from_slice(&buf[..n]);
                }),
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(StreamError::WouldBlock) => break,
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
    }
}

/// How each side's connection ended after [`transfer`]: `None` is a clean close.
pub(crate) type CloseOutcome = (Option<ConnectionError>, Option<ConnectionError>);

/// Runs a bidirectional transfer on an established pair until both sides have read
/// EOF and both connections are closed, or `limit` passes (then panics, as it does
/// on a stream error before EOF). Returns how each side's connection ended: after
/// both EOFs a side may still see its close end in an error, when every ACK of its
/// last packets was lost and the peer stopped lingering (the two-generals residue);
/// [`transfer_clean`] forbids that.
pub(crate) fn transfer(
    p: &mut Pair,
    ha: ConnectionHandle,
    hb: ConnectionHandle,
    app_a: &mut App,
    app_b: &mut App,
    limit: Duration,
) -> CloseOutcome {
    let end = p.now + limit;
    loop {
        let now = p.now;
        app_a.pump(&mut p.a, now, ha);
        app_b.pump(&mut p.b, now, hb);
        let closed = |p: &Pair, side, h| {
            p.events.iter().find_map(|(s, hh, e)| match e {
                Event::Closed(err) if *s == side && *hh == h => Some(*err),
                _ => None,
            })
        };
        if app_a.eof && app_b.eof {
            if let (Some(a), Some(b)) = (closed(p, Side::A, ha), closed(p, Side::B, hb)) {
                return (a, b);
            }
        }
        if app_a.error.is_some() || app_b.error.is_some() {
            panic!("stream error: a={:?} b={:?}", app_a.error, app_b.error);
        }
        if !p.step() || p.now > end {
            panic!(
                "transfer stalled at {:?}: a sent {}/{} got {} eof {}; b sent {}/{} got {} eof {}; a {:?}; b {:?}",
                p.now,
                app_a.sent,
                app_a.to_send.len(),
                app_a.received.len(),
                app_a.eof,
                app_b.sent,
                app_b.to_send.len(),
                app_b.received.len(),
                app_b.eof,
                p.a.connection(ha).map(|c| (c.state(), c.stats())),
                p.b.connection(hb).map(|c| (c.state(), c.stats())),
            );
        }
    }
}

/// [`transfer`], and both connections must close cleanly.
pub(crate) fn transfer_clean(
    p: &mut Pair,
    ha: ConnectionHandle,
    hb: ConnectionHandle,
    app_a: &mut App,
    app_b: &mut App,
    limit: Duration,
) {
    let outcome = transfer(p, ha, hb, app_a, app_b, limit);
    assert_eq!(outcome, (None, None), "both sides close cleanly");
}
