//! A virtual network of sans-IO endpoints in virtual time, with room for an attacker.
//!
//! Endpoints sit at addresses; datagrams between them take `latency`. Anything can be
//! injected from any address (spoofing), and what endpoints send to addresses where no
//! endpoint lives is kept per address, so tests can compare bytes sent to an address
//! with bytes received from it (amplification). Time jumps to the next delivery or
//! timer: minutes of protocol time cost milliseconds. Nothing here sleeps or reads a
//! clock.
//!
//! This file is also compiled into the fuzz targets (`fuzz/src/lib.rs`), so it depends
//! on nothing but `utp` and std.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use utp::proto::ConnectionHandle;
use utp::{Config, Endpoint, Event, Instant};

/// Per-address byte and datagram counts, as seen by the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams and bytes that arrived *from* this address (injected or sent).
    pub datagrams_from: u64,
    /// See `datagrams_from`.
    pub bytes_from: u64,
    /// Datagrams and bytes that endpoints sent *to* this address.
    pub datagrams_to: u64,
    /// See `datagrams_to`.
    pub bytes_to: u64,
}

/// One endpoint on the network.
pub struct Node {
    /// Its address.
    pub addr: SocketAddr,
    /// The endpoint.
    pub ep: Endpoint,
    /// Every event it produced, in order.
    pub events: Vec<(ConnectionHandle, Event)>,
}

type Wire = BinaryHeap<Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>>;

/// Endpoints, the wire between them, and a clock.
pub struct Net {
    /// The current virtual time.
    pub now: Instant,
    /// One-way delay between any two endpoints.
    pub latency: Duration,
    /// The endpoints.
    pub nodes: Vec<Node>,
    wire: Wire,
    order: u64,
    /// Traffic per address (endpoints' and others').
    pub traffic: HashMap<SocketAddr, Traffic>,
    /// Datagrams sent to addresses where no endpoint lives, newest last, at most
    /// `keep_unrouted` of them (the counts in `traffic` are complete).
    pub unrouted: Vec<(SocketAddr, Vec<u8>)>,
    /// How many unrouted datagrams to keep for inspection.
    pub keep_unrouted: usize,
    /// When set, datagrams between endpoints are dropped on the way (a cut cable).
    pub cut: bool,
    /// A hostile middle: sees each datagram between endpoints (from, to, bytes), may
    /// rewrite it, and returns whether to deliver it.
    pub tamper: Option<Box<Tamper>>,
    /// When set, every datagram between endpoints is kept in `trace` (after `tamper`).
    pub record: bool,
    /// See `record`: (time, from, to, bytes).
    pub trace: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
}

/// The signature of [`Net::tamper`].
pub type Tamper = dyn FnMut(SocketAddr, SocketAddr, &mut Vec<u8>) -> bool;

impl Net {
    /// An empty network; time starts at 1 s so that wire timestamps are not trivial.
    pub fn new() -> Net {
        Net {
            now: Instant::from_micros(1_000_000),
            latency: Duration::from_millis(10),
            nodes: Vec::new(),
            wire: BinaryHeap::new(),
            order: 0,
            traffic: HashMap::new(),
            unrouted: Vec::new(),
            keep_unrouted: 10_000,
            cut: false,
            tamper: None,
            record: false,
            trace: Vec::new(),
        }
    }

    /// Adds an endpoint at `addr`; returns its index.
    pub fn add(&mut self, addr: &str, config: Config, seed: u8) -> usize {
        let addr: SocketAddr = addr.parse().expect("a socket address");
        let ep = Endpoint::new(config, [seed; 32]).expect("a valid config");
        self.nodes.push(Node {
            addr,
            ep,
            events: Vec::new(),
        });
        self.nodes.len() - 1
    }

    /// The endpoint at index `i`.
    pub fn ep(&mut self, i: usize) -> &mut Endpoint {
        &mut self.nodes[i].ep
    }

    /// The address of endpoint `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Traffic counted for `addr`.
    pub fn traffic(&self, addr: SocketAddr) -> Traffic {
        self.traffic.get(&addr).copied().unwrap_or_default()
    }

    /// Opens a connection from endpoint `from` to endpoint `to`.
    pub fn connect(&mut self, from: usize, to: usize) -> ConnectionHandle {
        let (now, addr) = (self.now, self.addr(to));
        self.nodes[from].ep.connect(now, addr).expect("connect")
    }

    /// Hands `data` to endpoint `to` at once, as if it came from `from` (any address).
    pub fn inject(&mut self, from: SocketAddr, to: usize, data: &[u8]) {
        let t = self.traffic.entry(from).or_default();
        t.datagrams_from += 1;
        t.bytes_from += data.len() as u64;
        let now = self.now;
        self.nodes[to].ep.handle_datagram(now, from, data);
        self.flush();
    }

    /// Moves everything the endpoints want to send onto the wire (or into `unrouted`),
    /// and collects their events.
    pub fn flush(&mut self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let now = self.now;
                while let Some(t) = self.nodes[i].ep.poll_transmit(now, &mut buf) {
                    moved = true;
                    let from = self.nodes[i].addr;
                    let mut data = buf[..t.len].to_vec();
                    let tr = self.traffic.entry(t.destination).or_default();
                    tr.datagrams_to += 1;
                    tr.bytes_to += t.len as u64;
                    if self.nodes.iter().any(|n| n.addr == t.destination) {
                        let tr = self.traffic.entry(from).or_default();
                        tr.datagrams_from += 1;
                        tr.bytes_from += t.len as u64;
                        let deliver = match self.tamper.as_mut() {
                            Some(f) => f(from, t.destination, &mut data),
                            None => true,
                        };
                        if self.record {
                            self.trace.push((now, from, t.destination, data.clone()));
                        }
                        if !self.cut && deliver {
                            self.order += 1;
                            self.wire.push(Reverse((
                                now + self.latency,
                                self.order,
                                from,
                                t.destination,
                                data,
                            )));
                        }
                    } else if self.unrouted.len() < self.keep_unrouted {
                        self.unrouted.push((t.destination, data));
                    }
                }
                let node = &mut self.nodes[i];
                while let Some(ev) = node.ep.poll_event() {
                    node.events.push(ev);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// The next time something happens: a delivery or an endpoint's timer.
    pub fn next_event(&mut self) -> Option<Instant> {
        let wire = self.wire.peek().map(|Reverse((at, ..))| *at);
        let timers = self.nodes.iter_mut().filter_map(|n| n.ep.poll_timeout());
        wire.into_iter().chain(timers).min()
    }

    /// Advances to `until`, delivering datagrams and running timers on the way.
    pub fn run_until(&mut self, until: Instant) {
        self.flush();
        while let Some(at) = self.next_event().filter(|&at| at <= until) {
            self.now = self.now.max(at);
            self.step_now();
        }
        self.now = self.now.max(until);
        self.step_now();
    }

    /// Advances by `d`.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Advances until `done` holds (checked after each step) or `limit` passes; returns
    /// whether `done` held.
    pub fn run_while_not(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Net) -> bool,
    ) -> bool {
        let until = self.now + limit;
        self.flush();
        loop {
            if done(self) {
                return true;
            }
            match self.next_event().filter(|&at| at <= until) {
                Some(at) => {
                    self.now = self.now.max(at);
                    self.step_now();
                }
                None => {
                    self.now = until;
                    self.step_now();
                    return done(self);
                }
            }
        }
    }

    /// Delivers what is due and runs due timers at the current time.
    fn step_now(&mut self) {
        let now = self.now;
        while let Some(Reverse((at, ..))) = self.wire.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, from, to, data))) = self.wire.pop() else {
                break;
            };
            if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == to) {
                n.ep.handle_datagram(now, from, &data);
            }
        }
        for n in &mut self.nodes {
            if n.ep.poll_timeout().is_some_and(|t| t <= now) {
                n.ep.handle_timeout(now);
            }
        }
        self.flush();
    }

    /// Whether endpoint `i` has seen `ev` on `h`.
    pub fn saw(&self, i: usize, h: ConnectionHandle, ev: Event) -> bool {
        self.nodes[i].events.contains(&(h, ev))
    }

    /// The first connection endpoint `i` reported as `Incoming`.
    pub fn incoming(&self, i: usize) -> Option<ConnectionHandle> {
        self.nodes[i]
            .events
            .iter()
            .find(|(_, e)| *e == Event::Incoming)
            .map(|(h, _)| *h)
    }

    /// How endpoint `i`'s connection `h` closed, if it did.
    pub fn closed(
        &self,
        i: usize,
        h: ConnectionHandle,
    ) -> Option<Option<utp::proto::ConnectionError>> {
        self.nodes[i].events.iter().find_map(|(hh, e)| match e {
            Event::Closed(why) if *hh == h => Some(*why),
            _ => None,
        })
    }

    /// Reads everything endpoint `i` has for `h` into `out`; returns whether EOF was seen.
    pub fn read_all(&mut self, i: usize, h: ConnectionHandle, out: &mut Vec<u8>) -> bool {
        let mut buf = vec![0u8; 65_536];
        loop {
            let now = self.now;
            match self.nodes[i].ep.read(now, h, &mut buf) {
                Ok(0) => return true,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    }

    /// Writes as much of `data[*sent..]` as endpoint `i` takes on `h`.
    pub fn write_some(&mut self, i: usize, h: ConnectionHandle, data: &[u8], sent: &mut usize) {
        while *sent < data.len() {
            let now = self.now;
            match self.nodes[i].ep.write(now, h, &data[*sent..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => *sent += n,
            }
        }
        self.flush();
    }

    /// Connects endpoint `a` to endpoint `b` and completes the handshake; returns the
    /// two handles (initiator's, acceptor's).
    pub fn establish(&mut self, a: usize, b: usize) -> (ConnectionHandle, ConnectionHandle) {
        let seen = self.nodes[b].events.len();
        let ha = self.connect(a, b);
        let new_incoming = |n: &Net| {
            n.nodes[b].events[seen..]
                .iter()
                .find(|(_, e)| *e == Event::Incoming)
                .map(|(h, _)| *h)
        };
        let ok = self.run_while_not(Duration::from_secs(30), |n| {
            n.saw(a, ha, Event::Connected) && new_incoming(n).is_some()
        });
        assert!(ok, "handshake did not complete");
        let hb = new_incoming(self).expect("incoming");
        (ha, hb)
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}
