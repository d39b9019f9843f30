//! The endpoint: every connection on one UDP socket.
//!
//! An [`Endpoint`] demultiplexes datagrams by (remote address, connection id), turns
//! SYNs into incoming connections within the configured limits, answers packets for
//! unknown connections with a rate-limited RESET, and schedules output fairly across
//! connections.
//!
//! # Calling order
//!
//! A driver loops:
//!
//! 1. [`Endpoint::handle_datagram`] for each datagram received;
//! 2. [`Endpoint::handle_timeout`] when the time from [`Endpoint::poll_timeout`] has come;
//! 3. application calls: [`Endpoint::connect`], [`Endpoint::write`], [`Endpoint::read`],
//!    [`Endpoint::shutdown`], [`Endpoint::close`], [`Endpoint::abort`];
//! 4. [`Endpoint::poll_transmit`] until it returns `None`, sending each datagram;
//! 5. [`Endpoint::poll_event`] until it returns `None`;
//! 6. [`Endpoint::poll_timeout`] to learn when to wake up next.
//!
//! Every input takes `now`; nothing here reads a clock or touches a socket.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Config, ConfigError};
use super::connection::{Connection, Event, StreamError};
use super::stats::EndpointStats;
use super::timer_queue::TimerQueue;
use crate::time::Instant;
use crate::wire::{self, Header, Micros, Packet, PacketType, SeqNr};

/// Identifies a connection of an [`Endpoint`]. Handles are never reused: a handle of a
/// connection that is gone stays invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle {
    index: u32,
    generation: u32,
}

/// A datagram to send, written by [`Endpoint::poll_transmit`] into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Its length: the first `len` bytes of the buffer.
    pub len: usize,
}

/// Why [`Endpoint::connect`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint holds `max_connections` connections already.
    TooManyConnections,
    /// No free connection id for this remote address (extremely unlikely).
    NoConnectionId,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectError::TooManyConnections => "too many connections on this endpoint",
            ConnectError::NoConnectionId => "no free connection id for this address",
        })
    }
}

impl std::error::Error for ConnectError {}

#[derive(Debug)]
struct Slot {
    conn: Connection,
    remote: SocketAddr,
    generation: u32,
    queued: bool,
    half_open: bool,
    /// The application took this connection's `Closed` event.
    closed_polled: bool,
}

/// How many freed (remote, id) pairs `connect` avoids reusing.
const RECENTLY_FREED: usize = 256;

/// Most RESETs waiting to be sent; beyond it, further ones are suppressed.
const RESET_QUEUE: usize = 64;

/// All connections on one socket.
///
/// # Calling order
///
/// A driver loops: [`Endpoint::handle_datagram`] for each datagram received;
/// [`Endpoint::handle_timeout`] when the time from [`Endpoint::poll_timeout`] has come;
/// application calls ([`Endpoint::connect`], [`Endpoint::write`], [`Endpoint::read`],
/// [`Endpoint::shutdown`], [`Endpoint::close`], [`Endpoint::abort`]);
/// [`Endpoint::poll_transmit`] until `None`, sending each datagram;
/// [`Endpoint::poll_event`] until `None`; then [`Endpoint::poll_timeout`] to learn when
/// to wake up. Every input takes `now`; nothing here reads a clock or touches a socket.
#[derive(Debug)]
pub struct Endpoint {
    config: Arc<Config>,
    rng: ChaCha8Rng,
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    half_open: usize,
    /// Incoming connections in the order their SYNs came (slot, generation); entries
    /// that completed or ended are skipped lazily. Used to evict the oldest half-open
    /// one when the table is full.
    half_open_order: VecDeque<(u32, u32)>,
    /// The latest (remote, recv id) pairs of freed connections. `connect` avoids them:
    /// the peer may still hold its side of such a connection (lingering, or waiting for
    /// its idle timeout), and would ignore a SYN that reuses the ids (D32).
    recently_freed: VecDeque<(SocketAddr, u16)>,
    by_recv_id: HashMap<(SocketAddr, u16), u32>,
    by_send_id: HashMap<(SocketAddr, u16), u32>,
    /// The slot the last DATA or STATE packet went to: a bulk transfer sends most
    /// packets to the same connection, and this spares their hash lookup. Checked
    /// against the slot's own ids before use, so it never needs invalidating.
    last_lookup: Option<u32>,
    transmit_queue: VecDeque<u32>,
    events: VecDeque<(ConnectionHandle, Event)>,
    /// Each connection's earliest deadline, keyed (deadline, slot index) so that ties
    /// run in slot order; a slot leaves it when its connection has no timer armed.
    timers: TimerQueue<(Instant, u32)>,
    resets: VecDeque<(SocketAddr, Header)>,
    /// A finished connection whose `Closed` event was just taken: freed at the next
    /// `poll_event`, so the caller can still read its final state and statistics.
    free_next: Option<u32>,
    reset_tokens: u32,
    reset_period_start: Option<Instant>,
    stats: EndpointStats,
    /// Tests pin the next initial sequence number to cover the whole 16-bit space.
    #[cfg(test)]
    pub(crate) isn_override: Option<u16>,
}

impl Endpoint {
    /// An endpoint with this configuration. `seed` seeds the generator of connection
    /// ids and initial sequence numbers: drivers pass fresh OS randomness, simulators
    /// a fixed seed for reproducible runs.
    pub fn new(config: Config, seed: [u8; 32]) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Endpoint {
            reset_tokens: config.reset_limit,
            config: Arc::new(config),
            rng: ChaCha8Rng::from_seed(seed),
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            live: 0,
            half_open: 0,
            half_open_order: VecDeque::new(),
            recently_freed: VecDeque::new(),
            by_recv_id: HashMap::new(),
            by_send_id: HashMap::new(),
            last_lookup: None,
            transmit_queue: VecDeque::new(),
            events: VecDeque::new(),
            timers: TimerQueue::new(),
            resets: VecDeque::new(),
            free_next: None,
            reset_period_start: None,
            stats: EndpointStats::default(),
            #[cfg(test)]
            isn_override: None,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts or stops accepting incoming connections ([`Config::accept_incoming`]).
    /// Connections that exist are not affected.
    pub fn set_accept_incoming(&mut self, accept: bool) {
        Arc::make_mut(&mut self.config).accept_incoming = accept;
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// How many connections the endpoint holds (all states, lingering ones included).
    pub fn connection_count(&self) -> usize {
        self.live
    }

    /// How many incoming connections are half open.
    pub fn half_open_count(&self) -> usize {
        self.half_open
    }

    /// The connection behind `handle`, if it still exists.
    pub fn connection(&self, handle: ConnectionHandle) -> Option<&Connection> {
        self.slot(handle).map(|s| &s.conn)
    }

    /// The remote address of `handle`'s connection.
    pub fn remote(&self, handle: ConnectionHandle) -> Option<SocketAddr> {
        self.slot(handle).map(|s| s.remote)
    }

    /// Opens a connection to `remote`; its SYN goes out with the next
    /// [`Endpoint::poll_transmit`], and [`Event::Connected`] (or `Closed` with
    /// `Refused` or `TimedOut`) follows. Data may be written at once; it is sent when
    /// the connection is established.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectError> {
        if self.live >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        // Checklist L4: ids are u16 arithmetic, and both of ours must be free. Random
        // ids first; when the peer's id space is crowded (tens of thousands of
        // connections with one address, most of them lingering), a scan from a random
        // start finds a free pair if there is one.
        let usable = |ep: &Self, recv_id: u16| {
            let send_id = recv_id.wrapping_add(1);
            let recent = ep.recently_freed.iter().any(|&(r, id)| {
                r == remote && (id == recv_id || id == send_id || id == recv_id.wrapping_sub(1))
            });
            !ep.id_in_use(remote, recv_id) && !ep.id_in_use(remote, send_id) && !recent
        };
        let mut ids = None;
        for _ in 0..64 {
            let recv_id = self.rng.next_u32() as u16;
            if usable(self, recv_id) {
                ids = Some(recv_id);
                break;
            }
        }
        if ids.is_none() {
            let start = self.rng.next_u32() as u16;
            ids = (0..=u16::MAX)
                .map(|k| start.wrapping_add(k))
                .find(|&recv_id| usable(self, recv_id));
        }
        let recv_id = ids.ok_or(ConnectError::NoConnectionId)?;
        let isn = if self.config.random_initial_seq_nr {
            self.next_isn()
        } else {
            SeqNr(1)
        };
        let conn = Connection::connect(self.config.clone(), now, recv_id, isn);
        Ok(self.insert(remote, conn))
    }

    /// Opens a connection with chosen ids, for tests that cover the whole id space.
    #[cfg(test)]
    pub(crate) fn connect_with(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        recv_id: u16,
        isn: SeqNr,
    ) -> ConnectionHandle {
        let conn = Connection::connect(self.config.clone(), now, recv_id, isn);
        self.insert(remote, conn)
    }

    fn next_isn(&mut self) -> SeqNr {
        #[cfg(test)]
        if let Some(isn) = self.isn_override {
            return SeqNr(isn);
        }
        SeqNr(self.rng.next_u32() as u16)
    }

    /// Processes one received datagram. Malformed datagrams are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams_received += 1;
        let Ok(pkt) = Packet::decode(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        let id = pkt.header.conn_id;
        match pkt.header.ty {
            PacketType::Syn => self.handle_syn(now, from, &pkt),
            PacketType::Reset => {
                // Checklist X11: a RESET may name our receive id or our send id.
                let idx = self
                    .by_recv_id
                    .get(&(from, id))
                    .or_else(|| self.by_send_id.get(&(from, id)))
                    .copied();
                match idx {
                    Some(idx) => self.with_conn(idx, |c| c.handle_packet(now, &pkt)),
                    // Never answer a RESET.
                    None => self.stats.unknown_connection += 1,
                }
            }
            _ => match self.lookup_recv_id(from, id) {
                Some(idx) => self.with_conn(idx, |c| c.handle_packet(now, &pkt)),
                None => {
                    self.stats.unknown_connection += 1;
                    self.queue_reset(now, from, &pkt.header);
                }
            },
        }
    }

    /// The connection with the peer `from` whose receive id is `id`.
    fn lookup_recv_id(&mut self, from: SocketAddr, id: u16) -> Option<u32> {
        if let Some(idx) = self.last_lookup {
            let hit = self
                .slots
                .get(idx as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.remote == from && s.conn.recv_id() == id);
            if hit {
                return Some(idx);
            }
        }
        let idx = self.by_recv_id.get(&(from, id)).copied();
        self.last_lookup = idx.or(self.last_lookup);
        idx
    }

    fn handle_syn(&mut self, now: Instant, from: SocketAddr, syn: &Packet<'_>) {
        let id = syn.header.conn_id;
        let recv_id = id.wrapping_add(1);
        // A new SYN reusing the ids of a connection of ours with the same peer that is
        // over (lingering, nothing left to read) or a half-open one from an older SYN:
        // the peer has forgotten that connection and starts a new one. Make room.
        for key in [recv_id, id] {
            let old = self
                .by_recv_id
                .get(&(from, key))
                .or_else(|| self.by_send_id.get(&(from, key)))
                .copied();
            if let Some(idx) = old {
                let mut replaceable = self.slots[idx as usize]
                    .as_ref()
                    .is_some_and(|s| s.conn.replaceable_by(syn));
                if !replaceable {
                    // The connection may only wait for ACKs the peer, who moved on,
                    // will never send: it then ends (reporting how) and makes room.
                    replaceable = self.slots[idx as usize]
                        .as_mut()
                        .is_some_and(|s| s.conn.supersede_by(now, syn));
                    if replaceable {
                        // Hands its Closed event to the application before the slot goes.
                        self.update(idx, false);
                    }
                }
                if replaceable {
                    self.stats.connections_replaced += 1;
                    let was_half_open = self.slots[idx as usize]
                        .as_ref()
                        .is_some_and(|s| s.half_open);
                    if was_half_open {
                        self.half_open -= 1;
                    }
                    self.free_slot(idx);
                }
            }
        }
        if let Some(&idx) = self.by_recv_id.get(&(from, recv_id)) {
            // A resent SYN of a connection we know (or an id collision, D32, which the
            // connection ignores because the SYN's seq_nr differs).
            self.with_conn(idx, |c| c.handle_packet(now, syn));
            return;
        }
        let collision = self.id_in_use(from, id) || self.id_in_use(from, recv_id);
        if collision {
            // D32: a colliding SYN is ignored, so that attempt fails.
            self.stats.syns_rejected += 1;
            return;
        }
        if self.half_open >= self.config.max_half_open && !self.evict_oldest_half_open() {
            self.stats.syns_rejected += 1;
            return;
        }
        if !self.config.accept_incoming || self.live >= self.config.max_connections {
            // Refused: the connector learns at once (checklist L6).
            self.stats.syns_rejected += 1;
            self.queue_reset(now, from, &syn.header);
            return;
        }
        let isn = self.next_isn();
        let conn = Connection::accept(self.config.clone(), now, syn, isn);
        let h = self.insert(from, conn);
        self.half_open_order.push_back((h.index, h.generation));
        if self.half_open_order.len() > 2 * self.config.max_half_open + 16 {
            let slots = &self.slots;
            self.half_open_order.retain(|&(i, g)| {
                slots[i as usize]
                    .as_ref()
                    .is_some_and(|s| s.generation == g && s.half_open)
            });
        }
    }

    /// Makes room in a full half-open table by dropping the oldest half-open
    /// connection, silently (it was never reported to the application). Under a SYN
    /// flood every half-open entry then lives `max_half_open / flood rate`, so a real
    /// client whose round trip is shorter still completes its handshake, where
    /// dropping new SYNs would lock it out for as long as the flood lasts. Returns
    /// whether one was evicted.
    fn evict_oldest_half_open(&mut self) -> bool {
        while let Some((idx, generation)) = self.half_open_order.pop_front() {
            let live = self.slots[idx as usize]
                .as_ref()
                .is_some_and(|s| s.generation == generation && s.half_open);
            if live {
                self.half_open -= 1;
                self.stats.half_open_evicted += 1;
                self.free_slot(idx);
                return true;
            }
        }
        false
    }

    /// Queues a RESET answering `to`'s packet, within the rate limit (checklist X10).
    /// It is never larger than the packet it answers, so it cannot amplify.
    fn queue_reset(&mut self, now: Instant, to: SocketAddr, h: &Header) {
        if !self.config.reset_unknown || h.ty == PacketType::Reset {
            return;
        }
        let period_over = self
            .reset_period_start
            .is_none_or(|start| now - start >= self.config.reset_interval);
        if period_over {
            self.reset_period_start = Some(now);
            self.reset_tokens = self.config.reset_limit;
        }
        if self.reset_tokens == 0 || self.resets.len() >= RESET_QUEUE {
            self.stats.resets_suppressed += 1;
            return;
        }
        self.reset_tokens -= 1;
        let reset = Header {
            ty: PacketType::Reset,
            conn_id: h.conn_id,
            timestamp: Micros(now.wire_micros()),
            timestamp_diff: Micros(0),
            wnd_size: 0,
            seq_nr: SeqNr(self.rng.next_u32() as u16),
            ack_nr: h.seq_nr,
        };
        self.resets.push_back((to, reset));
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(((deadline, idx), _)) = self.timers.peek() {
            if deadline > now {
                break;
            }
            // Off the queue while it runs: `update` puts the next deadline back.
            self.timers.remove(idx as usize);
            self.with_conn(idx, |c| c.handle_timeout(now));
        }
    }

    /// The earliest time at which [`Endpoint::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|((deadline, _), _)| deadline)
    }

    /// Writes the next datagram to send into `buf`, which must hold at least
    /// `max_packet_size` bytes. Connections take turns, one packet each.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((to, h)) = self.resets.pop_front() {
            self.stats.resets_sent += 1;
            self.stats.datagrams_sent += 1;
            let len = wire::encode(&h, &[], &[], buf).ok()?;
            return Some(Transmit {
                destination: to,
                len,
            });
        }
        while let Some(idx) = self.transmit_queue.pop_front() {
            let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
                continue;
            };
            slot.queued = false;
            let remote = slot.remote;
            // A connection with nothing to send changed nothing the endpoint tracks:
            // only one that sent is brought up to date (and back in the queue, as it
            // may have more: one packet per turn).
            if let Some(len) = slot.conn.poll_transmit(now, buf) {
                self.update(idx, true);
                self.stats.datagrams_sent += 1;
                return Some(Transmit {
                    destination: remote,
                    len,
                });
            }
            #[cfg(debug_assertions)]
            self.assert_up_to_date(idx);
        }
        None
    }

    /// The next event of any connection.
    ///
    /// After [`Event::Closed`], the connection stays readable through
    /// [`Endpoint::connection`] until the next call of this method; a finished
    /// connection is freed only once its `Closed` event has been taken.
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        if let Some(idx) = self.free_next.take() {
            self.free_slot(idx);
        }
        let (h, ev) = self.events.pop_front()?;
        if let Event::Closed(_) = ev {
            if let Some(slot) = self
                .slots
                .get_mut(h.index as usize)
                .and_then(Option::as_mut)
            {
                if slot.generation == h.generation {
                    slot.closed_polled = true;
                    if slot.conn.is_released() {
                        self.free_next = Some(h.index);
                    }
                }
            }
        }
        Some((h, ev))
    }

    /// Queues data on a connection; see [`Connection`] for the semantics.
    /// Returns how many bytes were taken; `WouldBlock` when the send buffer is full.
    pub fn write(
        &mut self,
        now: Instant,
        h: ConnectionHandle,
        data: &[u8],
    ) -> Result<usize, StreamError> {
        self.app_op(h, |c| c.write(now, data))
    }

    /// Reads received data. `Ok(0)` is end of stream; `WouldBlock` means wait for
    /// [`Event::Readable`].
    pub fn read(
        &mut self,
        _now: Instant,
        h: ConnectionHandle,
        buf: &mut [u8],
    ) -> Result<usize, StreamError> {
        self.read_op(h, |c| c.read(buf))
    }

    /// Reads received data in place: hands `f` the next contiguous bytes (at most
    /// `max`) without copying them, and consumes them. Returns how many, like
    /// [`Endpoint::read`]: `Ok(0)` is end of stream, `WouldBlock` means wait for
    /// [`Event::Readable`]. Data that wraps around the receive buffer takes two calls.
    pub fn read_with(
        &mut self,
        _now: Instant,
        h: ConnectionHandle,
        max: usize,
        f: impl FnOnce(&[u8]),
    ) -> Result<usize, StreamError> {
        self.read_op(h, |c| c.read_with(max, f))
    }

    /// Runs a read on `h`'s connection. A read that finds nothing changes nothing the
    /// endpoint tracks (no event, no timer, nothing to send): it skips the bookkeeping,
    /// which a reader polling after every datagram would otherwise pay twice per packet.
    /// One that returns data may only have made an ACK due (the window reopened): the
    /// connection is queued to send, nothing else (debug builds check it). End of
    /// stream and errors get the whole bookkeeping.
    fn read_op(
        &mut self,
        h: ConnectionHandle,
        op: impl FnOnce(&mut Connection) -> Result<usize, StreamError>,
    ) -> Result<usize, StreamError> {
        let Some(slot) = self.slot_mut(h) else {
            return Err(StreamError::Closed);
        };
        let result = op(&mut slot.conn);
        match result {
            Err(StreamError::WouldBlock) => {}
            Ok(n) if n > 0 => {
                if !slot.queued {
                    slot.queued = true;
                    self.transmit_queue.push_back(h.index);
                }
                #[cfg(debug_assertions)]
                self.assert_up_to_date(h.index);
            }
            _ => self.update(h.index, true),
        }
        result
    }

    /// Closes the sending direction (half-close): a FIN follows the queued data.
    pub fn shutdown(&mut self, _now: Instant, h: ConnectionHandle) -> Result<(), StreamError> {
        self.app_op(h, |c| {
            c.shutdown();
            Ok(())
        })
    }

    /// Closes the connection gracefully: queued data and a FIN are delivered, incoming
    /// data is discarded, and the connection goes once our FIN is acknowledged.
    pub fn close(&mut self, now: Instant, h: ConnectionHandle) -> Result<(), StreamError> {
        self.app_op(h, |c| {
            c.close(now);
            Ok(())
        })
    }

    /// Ends the connection at once and sends the peer a RESET.
    pub fn abort(&mut self, now: Instant, h: ConnectionHandle) -> Result<(), StreamError> {
        self.app_op(h, |c| {
            c.abort(now);
            Ok(())
        })
    }

    fn app_op<T>(
        &mut self,
        h: ConnectionHandle,
        op: impl FnOnce(&mut Connection) -> Result<T, StreamError>,
    ) -> Result<T, StreamError> {
        if self.slot(h).is_none() {
            return Err(StreamError::Closed);
        }
        let mut result = Err(StreamError::Closed);
        self.with_conn(h.index, |c| result = op(c));
        result
    }

    // ----- Bookkeeping ---------------------------------------------------------------

    fn slot(&self, h: ConnectionHandle) -> Option<&Slot> {
        self.slots
            .get(h.index as usize)
            .and_then(Option::as_ref)
            .filter(|s| s.generation == h.generation)
    }

    fn slot_mut(&mut self, h: ConnectionHandle) -> Option<&mut Slot> {
        self.slots
            .get_mut(h.index as usize)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == h.generation)
    }

    fn id_in_use(&self, remote: SocketAddr, id: u16) -> bool {
        self.by_recv_id.contains_key(&(remote, id)) || self.by_send_id.contains_key(&(remote, id))
    }

    fn insert(&mut self, remote: SocketAddr, conn: Connection) -> ConnectionHandle {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.generations[index as usize];
        self.by_recv_id.insert((remote, conn.recv_id()), index);
        self.by_send_id.insert((remote, conn.send_id()), index);
        self.slots[index as usize] = Some(Slot {
            conn,
            remote,
            generation,
            queued: false,
            half_open: false,
            closed_polled: false,
        });
        self.live += 1;
        self.update(index, true);
        ConnectionHandle { index, generation }
    }

    /// Runs `f` on connection `idx`, then updates queues, timers and events.
    fn with_conn(&mut self, idx: u32, f: impl FnOnce(&mut Connection)) {
        if let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) {
            f(&mut slot.conn);
            self.update(idx, true);
        }
    }

    /// After anything happened to connection `idx`: collect its events, queue it for
    /// output (when `may_send`), re-arm its timer, and release it when it is finished.
    fn update(&mut self, idx: u32, may_send: bool) {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let handle = ConnectionHandle {
            index: idx,
            generation: slot.generation,
        };
        while let Some(ev) = slot.conn.poll_event() {
            if ev == Event::Incoming {
                self.stats.connections_accepted += 1;
            }
            self.events.push_back((handle, ev));
        }
        let half_open = slot.conn.is_half_open();
        if half_open != slot.half_open {
            slot.half_open = half_open;
            if half_open {
                self.half_open += 1;
            } else {
                self.half_open -= 1;
                if slot.conn.error().is_some() {
                    self.stats.half_open_expired += 1;
                }
            }
        }
        if slot.conn.is_released() {
            self.timers.remove(idx as usize);
            if slot.closed_polled && self.free_next != Some(idx) {
                self.free_slot(idx);
            }
            return;
        }
        if may_send && !slot.queued {
            slot.queued = true;
            self.transmit_queue.push_back(idx);
        }
        let deadline = slot.conn.poll_timeout().map(|d| (d, idx));
        if deadline != self.timers.get(idx as usize) {
            match deadline {
                Some(d) => self.timers.set(idx as usize, d),
                None => self.timers.remove(idx as usize),
            }
        }
    }

    /// Checks that connection `idx` holds nothing [`Endpoint::update`] would act on.
    #[cfg(debug_assertions)]
    fn assert_up_to_date(&self, idx: u32) {
        let Some(slot) = self.slots[idx as usize].as_ref() else {
            return;
        };
        assert!(!slot.conn.has_events(), "an event waits to be collected");
        assert_eq!(slot.conn.is_half_open(), slot.half_open, "half-open count");
        if !slot.conn.is_released() {
            let deadline = slot.conn.poll_timeout().map(|d| (d, idx));
            assert_eq!(deadline, self.timers.get(idx as usize), "timer queue");
        }
    }

    /// Forgets a finished connection; its handle becomes invalid.
    fn free_slot(&mut self, idx: u32) {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.by_recv_id.remove(&(slot.remote, slot.conn.recv_id()));
        self.by_send_id.remove(&(slot.remote, slot.conn.send_id()));
        self.timers.remove(idx as usize);
        if self.recently_freed.len() >= RECENTLY_FREED {
            self.recently_freed.pop_front();
        }
        self.recently_freed
            .push_back((slot.remote, slot.conn.recv_id()));
        self.generations[idx as usize] = slot.generation.wrapping_add(1);
        self.free.push(idx);
        self.live -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With tens of thousands of connections to one peer (a busy client, most of them
    /// lingering), random ids mostly collide: `connect` still finds a free pair while
    /// one exists, and reports `NoConnectionId` only when none is left. (Random tries
    /// alone gave up at about three quarters of the id space.)
    #[test]
    fn connect_finds_the_last_free_ids_of_a_crowded_peer() {
        let cfg = Config {
            max_connections: 40_000,
            ..Config::default()
        };
        let mut ep = Endpoint::new(cfg, [3; 32]).expect("valid config");
        let remote: SocketAddr = "10.0.0.2:6881".parse().expect("address");
        let now = Instant::from_micros(0);
        let mut opened = 0u32;
        let err = loop {
            match ep.connect(now, remote) {
                Ok(_) => opened += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, ConnectError::NoConnectionId);
        for id in 0..=u16::MAX {
            assert!(
                ep.id_in_use(remote, id) || ep.id_in_use(remote, id.wrapping_add(1)),
                "ids {id:#x} and the next were both free after {opened} connections"
            );
        }
        // Random pairs jam at about 86 % of the ring: well past where tries gave up.
        assert!(opened > 26_000, "only {opened} connections");
        let other: SocketAddr = "10.0.0.3:6881".parse().expect("address");
        assert!(
            ep.connect(now, other).is_ok(),
            "another peer has its own ids"
        );
    }
}
