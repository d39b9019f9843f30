//! A virtual-time network in memory that joins our [`utp::Endpoint`] and a
//! [`LibutpPeer`].
//!
//! Time jumps straight to the next event: a delivery, our endpoint's timer, or
//! libutp's 500 ms tick. Each direction has a one-way latency and an optional seeded
//! [`Impairment`] (loss, duplication, jitter that reorders); every random choice comes
//! from the seed, so a run is reproducible. Every datagram can be recorded in a
//! [`Capture`] for the passive checker ([`crate::check`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use utp::proto::{ConnectionError, ConnectionHandle};
use utp::wire::Packet;
use utp::{Config, Endpoint, Event, Instant};

use crate::libutp::{LibutpEvent, LibutpPeer};
use crate::trace::{Capture, Datagram};

/// One step of SplitMix64: `(output, next state)`. Small, seeded and deterministic.
pub fn splitmix64(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31), next)
}

/// A seeded generator for the network's random choices.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        let (v, next) = splitmix64(self.0);
        self.0 = next;
        v
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Uniform in `0..=max`.
    fn upto(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// What happens to datagrams in one direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice (each copy has its own jitter).
    pub duplicate: f64,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram; larger than the
    /// spacing of datagrams, it reorders them.
    pub jitter: Duration,
}

impl Impairment {
    /// No impairment.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        jitter: Duration::ZERO,
    };
}

/// Which side of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Our protocol core.
    Ours,
    /// libutp.
    Libutp,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    deliver_at: Instant,
    order: u64,
    to: Side,
    data: Vec<u8>,
}

/// Counters of what the network did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStats {
    /// Datagrams our endpoint sent.
    pub sent_by_ours: u64,
    /// Datagrams libutp sent.
    pub sent_by_libutp: u64,
    /// Datagrams dropped by impairment (or a cut).
    pub dropped: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Datagrams delivered to our endpoint.
    pub delivered_to_ours: u64,
    /// Datagrams delivered to libutp.
    pub delivered_to_libutp: u64,
}

/// Decides per datagram whether to drop it: `(destination side, bytes) -> drop?`.
type Filter = Box<dyn FnMut(Side, &[u8]) -> bool>;

/// Our endpoint and a libutp peer joined by a virtual wire, with a clock.
pub struct Net {
    /// The current virtual time.
    pub now: Instant,
    /// Our protocol core.
    pub ours: Endpoint,
    /// Its address.
    pub ours_addr: SocketAddr,
    /// The libutp peer.
    pub libutp: LibutpPeer,
    /// Its address.
    pub libutp_addr: SocketAddr,
    /// One-way propagation delay, both directions.
    pub latency: Duration,
    /// Impairment of datagrams from us to libutp.
    pub to_libutp: Impairment,
    /// Impairment of datagrams from libutp to us.
    pub to_ours: Impairment,
    /// Set to drop every datagram (a cut cable).
    pub cut: bool,
    /// Every event of our endpoint, in order, with its time.
    pub our_events: Vec<(Instant, ConnectionHandle, Event)>,
    /// Every event of the libutp peer, in order, with its time.
    pub libutp_events: Vec<(Instant, LibutpEvent)>,
    /// How each of our connections ended, by handle.
    our_closed: HashMap<ConnectionHandle, Option<ConnectionError>>,
    /// Every datagram sent, when recording (see [`Net::record`]).
    trace: Option<Vec<(Instant, Side, Vec<u8>)>>,
    stats: NetStats,
    filter: Option<Filter>,
    wire: BinaryHeap<Reverse<InFlight>>,
    wakeups: BinaryHeap<Reverse<Instant>>,
    order: u64,
    rng: Rng,
    start: Instant,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("now", &self.now)
            .field("in_flight", &self.wire.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Our endpoint with `config` at 10.0.0.1:6881 and libutp at 10.0.0.2:6882, 10 ms
    /// apart, no impairment. `seed` seeds both sides and the network.
    pub fn new(config: Config, seed: u64) -> Net {
        let mut rng = Rng(seed);
        let mut ep_seed = [0u8; 32];
        for chunk in ep_seed.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let ours_addr: SocketAddr = "10.0.0.1:6881".parse().expect("address");
        let libutp_addr: SocketAddr = "10.0.0.2:6882".parse().expect("address");
        // Away from zero so wire timestamps are not trivially small.
        let start = Instant::from_micros(2_000_000 + rng.upto(1 << 32));
        Net {
            now: start,
            ours: Endpoint::new(config, ep_seed).expect("valid configuration"),
            ours_addr,
            libutp: LibutpPeer::new(libutp_addr, rng.next_u64()),
            libutp_addr,
            latency: Duration::from_millis(10),
            to_libutp: Impairment::NONE,
            to_ours: Impairment::NONE,
            cut: false,
            our_events: Vec::new(),
            libutp_events: Vec::new(),
            our_closed: HashMap::new(),
            trace: None,
            stats: NetStats::default(),
            filter: None,
            wire: BinaryHeap::new(),
            wakeups: BinaryHeap::new(),
            order: 0,
            rng,
            start,
        }
    }

    /// Drops every datagram for which `drop(destination, bytes)` returns true (before
    /// the random impairment), for tests that lose one chosen packet.
    pub fn set_filter(&mut self, drop: impl FnMut(Side, &[u8]) -> bool + 'static) {
        self.filter = Some(Box::new(drop));
    }

    /// Removes the filter of [`Net::set_filter`].
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Starts recording every datagram sent from now on.
    pub fn record(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The datagrams recorded so far, as a capture for [`crate::check::check`]
    /// (times from the start of the network).
    pub fn capture(&self) -> Capture {
        let datagrams = self
            .trace
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, (t, side, data))| {
                let (src, dst) = match side {
                    Side::Ours => (self.ours_addr, self.libutp_addr),
                    Side::Libutp => (self.libutp_addr, self.ours_addr),
                };
                Datagram {
                    frame: i + 1,
                    time: *t - self.start,
                    src,
                    dst,
                    payload: data.clone(),
                }
            })
            .collect();
        Capture {
            format: "vnet",
            link_types: Vec::new(),
            datagrams,
            skipped: 0,
            truncated: 0,
        }
    }

    /// The recorded datagrams: time, sender, bytes.
    pub fn trace(&self) -> &[(Instant, Side, Vec<u8>)] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// The recorded datagrams, one line each: time since the start, direction, and the
    /// decoded header (for failure messages and reports).
    pub fn describe_trace(&self) -> String {
        let mut out = String::new();
        for (t, side, data) in self.trace() {
            let dir = match side {
                Side::Ours => "ours -> libutp",
                Side::Libutp => "libutp -> ours",
            };
            let what = match Packet::decode(data) {
                Ok(p) => {
                    let h = &p.header;
                    let sack = p
                        .selective_ack()
                        .map(|s| {
                            let bits: Vec<String> =
                                s.acked(h.ack_nr).map(|q| q.0.to_string()).collect();
                            format!(" sack[{}]", bits.join(","))
                        })
                        .unwrap_or_default();
                    format!(
                        "{:?} id={} seq={} ack={} wnd={} tdiff={} len={}{}",
                        h.ty,
                        h.conn_id,
                        h.seq_nr.0,
                        h.ack_nr.0,
                        h.wnd_size,
                        h.timestamp_diff.0,
                        p.payload.len(),
                        sack
                    )
                }
                Err(e) => format!("undecodable ({e:?}) {} bytes", data.len()),
            };
            let since = *t - self.start;
            out.push_str(&format!("{:>10.6} {dir} {what}\n", since.as_secs_f64()));
        }
        out
    }

    /// What the network did so far.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Datagrams on the wire now.
    pub fn in_flight(&self) -> usize {
        self.wire.len()
    }

    /// Moves every datagram both sides want to send onto the wire, and collects their
    /// events.
    pub fn flush(&mut self) {
        let now = self.now;
        let mut buf = vec![0u8; 65_536];
        while let Some(t) = self.ours.poll_transmit(now, &mut buf) {
            assert_eq!(t.destination, self.libutp_addr, "ours sent elsewhere");
            self.stats.sent_by_ours += 1;
            let data = buf[..t.len].to_vec();
            self.put_on_wire(Side::Libutp, data);
        }
        while let Some((h, ev)) = self.ours.poll_event() {
            if let Event::Closed(e) = ev {
                self.our_closed.insert(h, e);
            }
            self.our_events.push((now, h, ev));
        }
        while let Some((dst, data)) = self.libutp.poll_transmit() {
            assert_eq!(dst, self.ours_addr, "libutp sent elsewhere");
            self.stats.sent_by_libutp += 1;
            self.put_on_wire(Side::Ours, data);
        }
        while let Some(ev) = self.libutp.poll_event() {
            self.libutp_events.push((now, ev));
        }
    }

    fn put_on_wire(&mut self, to: Side, data: Vec<u8>) {
        if let Some(trace) = self.trace.as_mut() {
            let from = match to {
                Side::Ours => Side::Libutp,
                Side::Libutp => Side::Ours,
            };
            trace.push((self.now, from, data.clone()));
        }
        let imp = match to {
            Side::Libutp => self.to_libutp.clone(),
            Side::Ours => self.to_ours.clone(),
        };
        let filtered = self.filter.as_mut().is_some_and(|f| f(to, &data));
        if self.cut || filtered || self.rng.chance(imp.loss) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(imp.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = Duration::from_micros(self.rng.upto(duration_us(imp.jitter)));
            self.order += 1;
            self.wire.push(Reverse(InFlight {
                deliver_at: self.now + self.latency + jitter,
                order: self.order,
                to,
                data: data.clone(),
            }));
        }
    }

    /// Makes [`Net::step`] stop at `t` (if it is in the future), for applications that
    /// act at given times (a reader that reads every 50 ms).
    pub fn wake_at(&mut self, t: Instant) {
        if t > self.now {
            self.wakeups.push(Reverse(t));
        }
    }

    /// The time of the next event (delivery, timer or wake-up).
    pub fn next_event(&mut self) -> Instant {
        while self.wakeups.peek().is_some_and(|Reverse(t)| *t <= self.now) {
            self.wakeups.pop();
        }
        let wire = self.wire.peek().map(|Reverse(d)| d.deliver_at);
        let ours = self.ours.poll_timeout();
        let libutp = self.libutp.poll_timeout(self.now);
        let wake = self.wakeups.peek().map(|Reverse(t)| *t);
        [wire, ours, wake, Some(libutp)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(libutp)
    }

    /// Advances to the next event and processes everything due then: deliveries
    /// (each side's batch, then libutp's deferred ACKs), then both sides' timers.
    /// Applications act between steps (see [`Net::run_until`]).
    pub fn step(&mut self) {
        self.flush();
        let t = self.next_event();
        self.now = self.now.max(t);
        let now = self.now;
        while self
            .wire
            .peek()
            .is_some_and(|Reverse(d)| d.deliver_at <= now)
        {
            let Reverse(d) = self.wire.pop().expect("peeked");
            match d.to {
                Side::Ours => {
                    self.stats.delivered_to_ours += 1;
                    self.ours.handle_datagram(now, self.libutp_addr, &d.data);
                }
                Side::Libutp => {
                    self.stats.delivered_to_libutp += 1;
                    self.libutp.handle_datagram(now, self.ours_addr, &d.data);
                }
            }
        }
        self.ours.handle_timeout(now);
        self.libutp.handle_timeout(now);
        self.flush();
    }

    /// Steps until `done` holds; panics with `what` if `limit` of virtual time passes
    /// first (a stall is a test failure, never a hang).
    pub fn run_until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&mut Net) -> bool,
    ) {
        let end = self.now + limit;
        while !done(self) {
            assert!(
                self.now <= end,
                "{what} did not happen within {limit:?} (now {:?}, {:?})",
                self.now,
                self.stats
            );
            self.step();
        }
    }

    /// Steps for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Whether our endpoint reported `want` for `h`.
    pub fn ours_saw(&self, h: ConnectionHandle, want: &Event) -> bool {
        self.our_events
            .iter()
            .any(|(_, hh, e)| *hh == h && e == want)
    }

    /// How our connection `h` ended: `None` while it has not, `Some(None)` for a clean
    /// close, `Some(Some(e))` for an error.
    pub fn our_close(&self, h: ConnectionHandle) -> Option<Option<ConnectionError>> {
        self.our_closed.get(&h).copied()
    }

    /// Whether libutp reported `want`.
    pub fn libutp_saw(&self, want: &LibutpEvent) -> bool {
        self.libutp_events.iter().any(|(_, e)| e == want)
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
