//! The discrete-event engine: nodes, links, routes, and virtual time.
//!
//! Time jumps from event to event with microsecond resolution. Events are: a link's
//! serialiser finishing a packet, a packet arriving at the end of a link, a node's
//! timer, a scheduled change of a link, and a metrics sample. Ties are broken by the
//! order in which events were scheduled, so a run is a pure function of its inputs.
//!
//! The sources that always have at most one next event and move it with nearly every
//! packet (each node's timer, each link's serialiser and the head of each link's wire)
//! keep it in a calendar slot (a [`TimerQueue`] entry, moved in place); one-off events
//! (a packet that overtakes on the wire, a duplicate, a link change, a sample) go to
//! the event heap. The next event is the earlier of the two heads.

use core::time::Duration;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};

use utp::proto::TimerQueue;
use utp::Instant;

use crate::link::{Link, LinkConfig, Offer, IP_UDP_OVERHEAD};
use crate::pcap::PcapWriter;

/// Index of a node in the network.
pub type NodeId = usize;
/// Index of a link in the network.
pub type LinkId = usize;

/// A host of the simulation: anything that takes and makes datagrams.
///
/// The engine calls [`Node::handle_datagram`] for each arrival and
/// [`Node::handle_timeout`] when [`Node::poll_timeout`] says so, then drains
/// [`Node::poll_transmit`]. Nodes never read a clock.
pub trait Node {
    /// A datagram for one of this node's addresses arrived.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]);
    /// The earliest time the node has something to do.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// Time has come (at or after the last [`Node::poll_timeout`]).
    fn handle_timeout(&mut self, now: Instant);
    /// The largest datagram this node writes: [`Node::poll_transmit`] gets a buffer at
    /// least this long.
    fn max_datagram(&self) -> usize;
    /// Writes the next datagram into `buf`; returns (source, destination, length).
    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)>;
    /// Reports the node's flows for the metrics.
    fn report(&self, now: Instant, out: &mut Vec<crate::metrics::FlowSample>);
    /// A fatal problem (corrupted data, a failed connection) the run must report.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// A multiply-and-rotate hasher for the engine's small, trusted keys (node addresses
/// and node pairs chosen by the scenario): SipHash showed up in profiles.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A one-off event, in the event heap.
#[derive(Debug)]
enum Ev {
    /// A packet that overtook the wire's order (or a duplicate) arrives.
    Arrive {
        pkt: usize,
    },
    Change(usize),
    Sample,
}

/// When a calendar slot is due and its tie-breaking order (smaller first), packed
/// into one integer (time in the high half) so that comparing two is one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due(u128);

impl Due {
    fn new(at: Instant, order: u64) -> Due {
        Due(u128::from(at.as_micros()) << 64 | u128::from(order))
    }

    fn at(self) -> Instant {
        Instant::from_micros((self.0 >> 64) as u64)
    }
}

/// What a calendar slot stands for.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The node's timer.
    Timer(NodeId),
    /// The link's serialiser finishes the packet in service.
    TxDone(LinkId),
    /// The packet at the head of the link's in-order wire arrives.
    WireHead(LinkId),
}

/// A link's two calendar slots.
#[derive(Clone, Copy, Debug)]
struct LinkSlots {
    tx_done: usize,
    wire_head: usize,
}

/// A change of a link scheduled at a point in time.
#[derive(Clone, Debug)]
pub struct LinkChange {
    /// When.
    pub at: Instant,
    /// Which link.
    pub link: LinkId,
    /// What: a new configuration, and whether the link is down.
    pub config: LinkConfig,
    /// Whether the link is down from then on.
    pub down: bool,
}

/// The bytes of every datagram in flight, in one arena of equal slots: nodes write
/// straight into a slot, so a datagram is never copied in flight, and the slots in use
/// stay close together (the most recently freed is reused first).
#[derive(Debug, Default)]
struct Buffers {
    bytes: Vec<u8>,
    /// Bytes per slot: the largest datagram any node writes, rounded up to a cache
    /// line.
    stride: usize,
    free: Vec<usize>,
}

impl Buffers {
    /// Makes every slot hold at least `size` bytes (moving the slots if they grow).
    fn fit(&mut self, size: usize) {
        let stride = size.div_ceil(64) * 64;
        if stride <= self.stride {
            return;
        }
        let slots = self.bytes.len() / self.stride.max(1);
        let mut bytes = vec![0u8; slots * stride];
        for i in 0..slots {
            bytes[i * stride..i * stride + self.stride]
                .copy_from_slice(&self.bytes[i * self.stride..(i + 1) * self.stride]);
        }
        self.bytes = bytes;
        self.stride = stride;
    }

    /// A free slot.
    fn take(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            let slot = self.bytes.len() / self.stride.max(1);
            self.bytes.resize(self.bytes.len() + self.stride, 0);
            slot
        })
    }

    fn give(&mut self, slot: usize) {
        self.free.push(slot);
    }

    /// The first `len` bytes of `slot`.
    fn get(&self, slot: usize, len: usize) -> &[u8] {
        &self.bytes[slot * self.stride..slot * self.stride + len]
    }

    /// All of `slot`, to write a datagram into.
    fn get_mut(&mut self, slot: usize) -> &mut [u8] {
        &mut self.bytes[slot * self.stride..(slot + 1) * self.stride]
    }

    /// Copies the first `len` bytes of slot `from` into slot `to`.
    fn copy(&mut self, from: usize, to: usize, len: usize) {
        self.bytes.copy_within(
            from * self.stride..from * self.stride + len,
            to * self.stride,
        );
    }
}

#[derive(Debug)]
struct Packet {
    /// Its slot in [`Buffers`]; the datagram is the slot's first `len` bytes.
    buf: usize,
    len: usize,
    from: SocketAddr,
    to: SocketAddr,
    /// The node it is addressed to.
    dst: NodeId,
    route: usize,
    hop: usize,
}

/// The whole simulated network.
pub struct Network {
    now: Instant,
    nodes: Vec<Box<dyn Node>>,
    /// Each node's timer slot in `calendar`.
    node_slot: Vec<usize>,
    /// Each node's deadline as it last said. Its calendar slot may be due earlier (a
    /// deadline that moved later is left where it was, and re-checked when it comes
    /// due: a retransmission or delayed-ACK timer moves later with nearly every packet,
    /// and this spares a re-sort each time), never later.
    node_deadline: Vec<Option<Instant>>,
    /// Each link's slots in `calendar`.
    link_slots: Vec<LinkSlots>,
    /// What each calendar slot stands for.
    sources: Vec<Source>,
    /// Each recurring source's next event, by slot (see [`Source`]).
    calendar: TimerQueue<Due>,
    hosts: FastMap<IpAddr, NodeId>,
    /// The links, for inspection.
    pub links: Vec<Link>,
    /// Per link, packets propagating in order of arrival (the common case: no
    /// reordering). Only the head is scheduled (its calendar slot); a packet that would
    /// overtake goes to the heap as an `Arrive` event instead.
    wires: Vec<VecDeque<(Instant, usize)>>,
    routes: Vec<Vec<LinkId>>,
    route_of: FastMap<(NodeId, NodeId), usize>,
    /// Per node, the destination address it last sent to, with that node and the route:
    /// a flow sends nearly every datagram to the same place.
    last_route: Vec<Option<(IpAddr, NodeId, usize)>>,
    events: BinaryHeap<Reverse<(Due, usize)>>,
    event_slots: Vec<Option<Ev>>,
    free_events: Vec<usize>,
    order: u64,
    packets: Vec<Option<Packet>>,
    free_packets: Vec<usize>,
    buffers: Buffers,
    changes: Vec<LinkChange>,
    sample_every: Option<Duration>,
    /// Samples taken so far, by the sampler.
    pub samples: crate::metrics::Recorder,
    pcap: Option<PcapWriter>,
    /// Datagrams that crossed at least one link.
    pub datagrams: u64,
    /// Datagrams addressed to no node.
    pub unroutable: u64,
    /// Whether a node reported a failure (checked after each of its wake-ups).
    failed: bool,
}

impl Network {
    /// An empty network at time `start`.
    pub fn new(start: Instant) -> Network {
        Network {
            now: start,
            nodes: Vec::new(),
            node_slot: Vec::new(),
            node_deadline: Vec::new(),
            link_slots: Vec::new(),
            sources: Vec::new(),
            calendar: TimerQueue::new(),
            hosts: FastMap::default(),
            links: Vec::new(),
            wires: Vec::new(),
            routes: Vec::new(),
            route_of: FastMap::default(),
            last_route: Vec::new(),
            events: BinaryHeap::new(),
            event_slots: Vec::new(),
            free_events: Vec::new(),
            order: 0,
            packets: Vec::new(),
            free_packets: Vec::new(),
            buffers: Buffers::default(),
            changes: Vec::new(),
            sample_every: None,
            samples: crate::metrics::Recorder::default(),
            pcap: None,
            datagrams: 0,
            unroutable: 0,
            failed: false,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a node reachable at `ip`; returns its id.
    pub fn add_node(&mut self, ip: IpAddr, node: Box<dyn Node>) -> NodeId {
        let id = self.nodes.len();
        self.buffers.fit(node.max_datagram());
        self.nodes.push(node);
        self.last_route.fill(None);
        self.last_route.push(None);
        let slot = self.add_source(Source::Timer(id));
        self.node_slot.push(slot);
        self.node_deadline.push(None);
        self.hosts.insert(ip, id);
        self.wake(id);
        id
    }

    /// Adds a link; returns its id.
    pub fn add_link(&mut self, link: Link) -> LinkId {
        let id = self.links.len();
        self.links.push(link);
        self.wires.push(VecDeque::new());
        let slots = LinkSlots {
            tx_done: self.add_source(Source::TxDone(id)),
            wire_head: self.add_source(Source::WireHead(id)),
        };
        self.link_slots.push(slots);
        id
    }

    fn add_source(&mut self, source: Source) -> usize {
        let slot = self.sources.len();
        self.sources.push(source);
        slot
    }

    /// Packets from `from` to `to` cross `links`, in order.
    pub fn add_route(&mut self, from: NodeId, to: NodeId, links: Vec<LinkId>) {
        self.routes.push(links);
        self.route_of.insert((from, to), self.routes.len() - 1);
        self.last_route.fill(None);
    }

    /// Schedules a change of a link.
    pub fn schedule_change(&mut self, change: LinkChange) {
        let at = change.at;
        self.changes.push(change);
        self.push(at, Ev::Change(self.changes.len() - 1));
    }

    /// Records metrics every `every`, from now on.
    pub fn sample_every(&mut self, every: Duration) {
        self.sample_every = Some(every);
        self.push(self.now, Ev::Sample);
    }

    /// Records every datagram into a pcap file image (see [`Network::take_pcap`]).
    pub fn capture(&mut self) {
        self.pcap = Some(PcapWriter::new());
    }

    /// The pcap bytes captured so far.
    pub fn take_pcap(&mut self) -> Option<Vec<u8>> {
        self.pcap.take().map(PcapWriter::finish)
    }

    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &dyn Node {
        self.nodes[id].as_ref()
    }

    /// The first failure any node reports.
    pub fn failure(&self) -> Option<String> {
        self.nodes.iter().find_map(|n| n.failure())
    }

    /// Whether any node reported a failure: [`Network::failure`] without its cost, to
    /// check after every event.
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.order += 1;
        let slot = match self.free_events.pop() {
            Some(i) => {
                self.event_slots[i] = Some(ev);
                i
            }
            None => {
                self.event_slots.push(Some(ev));
                self.event_slots.len() - 1
            }
        };
        self.events.push(Reverse((Due::new(at, self.order), slot)));
    }

    /// Makes calendar `slot` due at `at`, ordered after everything scheduled so far.
    fn schedule(&mut self, slot: usize, at: Instant) {
        self.order += 1;
        self.calendar.set(slot, Due::new(at, self.order));
    }

    /// When the next event is due, and whether it is the event heap's (else the
    /// calendar's).
    fn next_due(&self) -> Option<(Instant, bool)> {
        let heap = self.events.peek().map(|Reverse((due, _))| *due);
        let cal = self.calendar.peek().map(|(due, _)| due);
        match (heap, cal) {
            (Some(h), Some(c)) if h < c => Some((h.at(), true)),
            (_, Some(c)) => Some((c.at(), false)),
            (Some(h), None) => Some((h.at(), true)),
            (None, None) => None,
        }
    }

    /// Carries out the next event, due at `at`, from the heap or the calendar.
    fn step(&mut self, at: Instant, from_heap: bool) {
        self.now = self.now.max(at);
        if from_heap {
            let Some(Reverse((_, slot))) = self.events.pop() else {
                return;
            };
            let ev = self.event_slots[slot].take().expect("event slot");
            self.free_events.push(slot);
            self.dispatch(ev);
        } else if let Some((_, slot)) = self.calendar.peek() {
            // The slot stays in place while it fires: its source re-schedules or
            // clears it, one re-sort instead of two.
            self.fire(slot);
        }
    }

    /// Runs until `end` or until nothing is left to happen; returns whether events remain.
    pub fn run_until(&mut self, end: Instant) -> bool {
        while let Some((at, from_heap)) = self.next_due() {
            if at > end {
                self.now = end;
                return true;
            }
            self.step(at, from_heap);
        }
        false
    }

    /// Runs until `done` holds (checked after each event), `end` passes, or nothing is
    /// left; returns whether `done` held.
    pub fn run_while(&mut self, end: Instant, mut done: impl FnMut(&Network) -> bool) -> bool {
        while let Some((at, from_heap)) = self.next_due() {
            if at > end {
                self.now = end;
                return done(self);
            }
            self.step(at, from_heap);
            if done(self) {
                return true;
            }
        }
        done(self)
    }

    /// Calendar `slot` came due: carries out its source's event, which re-schedules
    /// or clears the slot.
    fn fire(&mut self, slot: usize) {
        let now = self.now;
        match self.sources[slot] {
            Source::TxDone(l) => {
                let (left, next) = self.links[l].tx_done(now);
                match next {
                    Some(next) => self.schedule(slot, next),
                    None => self.calendar.remove(slot),
                }
                if let Some(pkt) = left {
                    self.propagate(l, pkt as usize);
                }
            }
            Source::WireHead(l) => {
                let head = self.wires[l].pop_front();
                match self.wires[l].front() {
                    Some(&(next, _)) => self.schedule(slot, next),
                    None => self.calendar.remove(slot),
                }
                if let Some((_, pkt)) = head {
                    self.arrive(pkt);
                }
            }
            Source::Timer(n) => match self.node_deadline[n] {
                // The deadline moved later since the slot was set: only the slot moves.
                Some(d) if d > now => self.schedule(slot, d),
                None => self.calendar.remove(slot),
                // It has passed: wake moves the slot to the next one (or clears it).
                Some(_) => {
                    self.nodes[n].handle_timeout(now);
                    self.wake(n);
                }
            },
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Arrive { pkt } => self.arrive(pkt),
            Ev::Change(i) => {
                let c = self.changes[i].clone();
                let link = &mut self.links[c.link];
                link.config = c.config;
                link.down = c.down;
            }
            Ev::Sample => {
                let mut flows = Vec::new();
                for n in &self.nodes {
                    n.report(now, &mut flows);
                }
                self.samples.record(now, flows, &self.links);
                if let Some(every) = self.sample_every {
                    self.push(now + every, Ev::Sample);
                }
            }
        }
    }

    /// Sends everything node `n` has to send and re-arms its timer.
    fn wake(&mut self, n: NodeId) {
        let now = self.now;
        loop {
            let buf = self.buffers.take();
            match self.nodes[n].poll_transmit(now, self.buffers.get_mut(buf)) {
                Some((from, to, len)) => self.send(n, from, to, buf, len),
                None => {
                    self.buffers.give(buf);
                    break;
                }
            }
        }
        self.failed = self.failed || self.nodes[n].failure().is_some();
        let slot = self.node_slot[n];
        let deadline = self.nodes[n].poll_timeout().map(|d| d.max(now));
        self.node_deadline[n] = deadline;
        match (deadline, self.calendar.get(slot)) {
            // Due no later than the deadline (an unchanged one keeps its place among
            // ties): the slot stays, and fire() checks the deadline when it comes due.
            (Some(d), Some(due)) if due.at() <= d => {}
            (Some(d), _) => self.schedule(slot, d),
            // Nothing to do: the slot, if set, fires once and is removed then.
            (None, _) => {}
        }
    }

    /// Node `n` wrote a datagram: the first `len` bytes of slot `buf`.
    fn send(&mut self, n: NodeId, from: SocketAddr, to: SocketAddr, buf: usize, len: usize) {
        if let Some(p) = &mut self.pcap {
            p.record(self.now, from, to, self.buffers.get(buf, len));
        }
        let routed = match self.last_route[n] {
            Some((ip, dst, route)) if ip == to.ip() => Some((dst, route)),
            _ => {
                let routed = self
                    .hosts
                    .get(&to.ip())
                    .and_then(|&dst| Some((dst, *self.route_of.get(&(n, dst))?)));
                if let Some((dst, route)) = routed {
                    self.last_route[n] = Some((to.ip(), dst, route));
                }
                routed
            }
        };
        let Some((dst, route)) = routed else {
            self.unroutable += 1;
            self.buffers.give(buf);
            return;
        };
        self.datagrams += 1;
        let id = self.alloc_packet(Packet {
            buf,
            len,
            from,
            to,
            dst,
            route,
            hop: 0,
        });
        self.enter_link(id);
    }

    fn alloc_packet(&mut self, p: Packet) -> usize {
        match self.free_packets.pop() {
            Some(i) => {
                self.packets[i] = Some(p);
                i
            }
            None => {
                self.packets.push(Some(p));
                self.packets.len() - 1
            }
        }
    }

    fn free_packet(&mut self, id: usize) {
        if let Some(p) = self.packets[id].take() {
            self.buffers.give(p.buf);
            self.free_packets.push(id);
        }
    }

    /// Offers packet `id` to the link of its current hop.
    fn enter_link(&mut self, id: usize) {
        let (route, hop, size) = {
            let p = self.packets[id].as_ref().expect("live packet");
            (p.route, p.hop, p.len + IP_UDP_OVERHEAD)
        };
        let Some(&l) = self.routes[route].get(hop) else {
            return self.deliver(id);
        };
        match self.links[l].offer(self.now, id as u64, size) {
            Offer::Dropped(_) => self.free_packet(id),
            Offer::Queued(Some(done)) => self.schedule(self.link_slots[l].tx_done, done),
            Offer::Queued(None) => {}
            Offer::Immediate => self.propagate(l, id),
        }
    }

    /// Packet `id` left link `l`'s serialiser: schedule its arrival (and a duplicate's).
    fn propagate(&mut self, l: LinkId, id: usize) {
        let [first, dup] = self.links[l].propagate(self.now);
        if let Some(at) = dup {
            let copy = {
                let buf = self.buffers.take();
                let p = self.packets[id].as_ref().expect("live packet");
                self.buffers.copy(p.buf, buf, p.len);
                Packet {
                    buf,
                    len: p.len,
                    from: p.from,
                    to: p.to,
                    dst: p.dst,
                    route: p.route,
                    hop: p.hop,
                }
            };
            let cid = self.alloc_packet(copy);
            self.push(at, Ev::Arrive { pkt: cid });
        }
        if let Some(at) = first {
            let wire = &mut self.wires[l];
            match wire.back() {
                None => {
                    wire.push_back((at, id));
                    self.schedule(self.link_slots[l].wire_head, at);
                }
                Some(&(last, _)) if at >= last => wire.push_back((at, id)),
                Some(_) => self.push(at, Ev::Arrive { pkt: id }),
            }
        }
    }

    /// Packet `id` reached the end of its current link.
    fn arrive(&mut self, id: usize) {
        if let Some(p) = self.packets[id].as_mut() {
            p.hop += 1;
        }
        self.enter_link(id);
    }

    fn deliver(&mut self, id: usize) {
        let Some(p) = self.packets[id].take() else {
            return;
        };
        self.free_packets.push(id);
        let n = p.dst;
        let data = self.buffers.get(p.buf, p.len);
        self.nodes[n].handle_datagram(self.now, p.from, p.to, data);
        self.wake(n);
        self.buffers.give(p.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots hold what was written into them; the most recently freed is reused
    /// first; a node with larger datagrams added later widens every slot, keeping
    /// the bytes of those in use.
    #[test]
    fn buffers_keep_their_bytes_when_slots_widen() {
        let mut b = Buffers::default();
        b.fit(100);
        assert_eq!(b.stride, 128, "a whole number of cache lines");
        let (x, y) = (b.take(), b.take());
        b.get_mut(x)[..3].copy_from_slice(b"abc");
        b.get_mut(y)[..3].copy_from_slice(b"xyz");
        b.fit(1400);
        assert_eq!(b.stride, 1408);
        assert_eq!(b.get_mut(x).len(), 1408);
        assert_eq!((b.get(x, 3), b.get(y, 3)), (&b"abc"[..], &b"xyz"[..]));
        b.fit(64);
        assert_eq!(b.stride, 1408, "never narrower");
        let z = b.take();
        b.copy(y, z, 3);
        assert_eq!(b.get(z, 3), b"xyz");
        b.give(x);
        assert_eq!(b.take(), x, "the most recently freed first");
    }
}
