//! One uTP connection: the BEP 29 state machine with reliability and congestion control.
//!
//! A [`Connection`] is owned by an [`super::Endpoint`], which feeds it the packets
//! addressed to it and asks it for packets to send. Applications reach it through the
//! endpoint's `write`, `read`, `shutdown`, `close` and `abort`, and read its state and
//! statistics through [`super::Endpoint::connection`].
//!
//! States (see [`State`]): an initiator starts in `SynSent`, an acceptor in
//! `SynReceived`; both reach `Connected`. Closing our direction sends a FIN, which
//! consumes a sequence number (deployed practice, checklist X3) and moves to `FinSent`;
//! once both FINs are through, the connection lingers for about two retransmission
//! timeouts to acknowledge a retransmitted FIN (libutp bug L5) and then is `Closed`.

mod recv_buffer;
mod rtt;
mod send_buffer;
mod timer;

use core::fmt;
use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;

use super::config::Config;
use super::congestion::{AckEvent, CongestionController};
use super::stats::ConnectionStats;
use crate::time::Instant;
use crate::wire::{self, Extension, Header, Micros, Packet, PacketType, SelectiveAck, SeqNr};
use recv_buffer::{Insert, RecvBuffer};
use rtt::RttEstimator;
use send_buffer::{SendBuffer, MAX_IN_FLIGHT};
use timer::{Timer, TimerTable};

/// The smallest payload `adaptive_packet_size` shrinks packets to: with the 20-byte
/// header, BEP 29's smallest packet of 150 bytes.
const SMALLEST_PAYLOAD: usize = 130;

/// The shortest linger after a close. A peer whose last ACK from us was lost resends
/// after its RTO (libutp: at least 1 s, on a 500 ms tick) and backs off, at +1, +3 and
/// +7 s: 8 s waits through three lost resends, and each resend that does arrive
/// doubles the stay.
const MIN_LINGER: Duration = Duration::from_secs(8);

/// Longest selective-ACK bitmask we send: an extension body holds at most 255 bytes,
/// and BEP 29 asks for a multiple of 4.
const MAX_SACK_BYTES: usize = 252;

/// The life stages of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// We sent a SYN and wait for the peer's STATE (initiator).
    SynSent,
    /// We answered a SYN and wait for the initiator to prove it got our answer.
    SynReceived,
    /// Open in both directions (the peer may have finished its direction).
    Connected,
    /// We closed our direction: our FIN is queued or sent, not yet acknowledged.
    FinSent,
    /// Our FIN was acknowledged; the peer may still send.
    HalfClosed,
    /// Both directions are finished; we keep acknowledging a retransmitted FIN.
    Linger,
    /// Terminal: see [`Connection::error`] for why.
    Closed,
}

/// Why a connection ended abnormally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer answered our SYN with a RESET: nobody accepts connections there.
    Refused,
    /// The peer reset an established connection.
    Reset,
    /// The peer did not answer: SYN retries, retransmissions or idle time ran out.
    TimedOut,
    /// We aborted the connection locally.
    Aborted,
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionError::Refused => "connection refused by the peer",
            ConnectionError::Reset => "connection reset by the peer",
            ConnectionError::TimedOut => "connection timed out",
            ConnectionError::Aborted => "connection aborted locally",
        })
    }
}

impl std::error::Error for ConnectionError {}

/// Why a read or write on a connection did not move data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// Nothing can move now; an [`Event::Readable`] or [`Event::Writable`] follows
    /// when it can.
    WouldBlock,
    /// Our sending direction was shut down.
    SendClosed,
    /// The connection ended with this error.
    Failed(ConnectionError),
    /// The connection is closed (cleanly).
    Closed,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::WouldBlock => f.write_str("operation would block"),
            StreamError::SendClosed => f.write_str("sending direction already shut down"),
            StreamError::Failed(e) => fmt::Display::fmt(e, f),
            StreamError::Closed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for StreamError {}

/// What a connection tells its owner; taken with [`super::Endpoint::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An outgoing connection completed its handshake.
    Connected,
    /// An incoming connection completed its handshake and waits to be accepted.
    Incoming,
    /// Data can be read (sent once until a read drains the buffer).
    Readable,
    /// Send-buffer space is free again after a write was refused or short.
    Writable,
    /// The peer finished its direction: after the buffered data, reads return EOF.
    Finished,
    /// Our FIN was acknowledged: everything we wrote was delivered.
    SendClosed,
    /// The connection ended; `None` for a clean close. Data received and not yet read
    /// stays readable: the connection is released once a read reports the end (EOF or
    /// the error) or the application calls `close` or `abort`.
    Closed(Option<ConnectionError>),
}

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Initiator,
    Acceptor,
}

/// Progress of our FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FinState {
    Open,
    /// Requested: the FIN goes out after the queued data.
    Queued,
    Sent(SeqNr),
    Acked,
}

/// Why a packet waits to be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResendCause {
    Timeout,
    DupAck,
    Sack,
    Probe,
}

/// One uTP connection, owned by an [`super::Endpoint`].
///
/// Its life: `SynSent` (initiator) or `SynReceived` (acceptor), `Connected`, then
/// `FinSent`/`HalfClosed` as our direction closes, `Linger` once both are done, and
/// `Closed`. Read it through [`super::Endpoint::connection`]; change it through the
/// endpoint's `write`, `read`, `shutdown`, `close` and `abort`.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    role: Role,
    state: State,
    error: Option<ConnectionError>,
    recv_id: u16,
    send_id: u16,

    // Handshake.
    syn_seq: SeqNr,
    syn_attempts: u32,
    syn_due: bool,
    syn_ack_due: bool,
    peer_syn_seq: SeqNr,

    // Sending.
    send: SendBuffer,
    resend_pending: usize,
    /// Packets waiting to be resent, in sequence order (oldest first), and why.
    resend_causes: VecDeque<(SeqNr, ResendCause)>,
    bytes_in_flight: usize,
    peer_window: usize,
    mss: usize,
    cc: Box<dyn CongestionController>,
    rtt: RttEstimator,
    dup_acks: u32,
    /// Packets before it are settled for loss detection (see `detect_losses`).
    loss_cursor: SeqNr,
    consecutive_timeouts: u32,
    fin: FinState,
    probe_due: bool,
    reset_due: bool,

    // Receiving.
    ack_nr: SeqNr,
    recv: RecvBuffer,
    peer_finished: bool,
    app_closed: bool,
    /// How long the current linger lasts; doubles with every round of resends from
    /// the peer, as its retransmission timer backs off.
    linger_period: Duration,
    /// How many times a resend from the peer extended the linger (bounded by
    /// `max_retransmits`, so a peer cannot hold a closed connection forever).
    linger_extensions: u32,
    /// When the linger was last extended: resends that arrive together (one round of
    /// the peer's timer, or duplicates) extend it once.
    linger_extended_at: Option<Instant>,
    /// A tail loss probe is due (its timer fired with data in flight).
    tail_probe_due: bool,
    /// A tail loss probe went out and no ACK made progress since.
    tail_probe_sent: bool,
    /// Closed with received data the application has not read: the connection is
    /// kept until a read reports the end (or the application closes it).
    hold_for_reader: bool,
    reply_micro: u32,
    ack_due: bool,
    sack_due: bool,
    /// A STATE with the next seq_nr is due after a resent FIN (see
    /// `on_retransmit_timeout`); unlike `ack_due`, the FIN itself does not clear it.
    fin_state_probe_due: bool,
    unacked_packets: u32,
    advertised_window: usize,

    timers: TimerTable,
    last_recv: Instant,
    last_sent: Instant,
    events: VecDeque<Event>,
    readable_signalled: bool,
    writable_wanted: bool,
    stats: ConnectionStats,
}

impl Connection {
    /// A new outgoing connection: the SYN is due at once.
    ///
    /// BEP 29 D24-D26: `conn_id_recv = rand()`, `conn_id_send = conn_id_recv + 1`, the SYN
    /// carries `conn_id_recv`; the initial `seq_nr` is random (checklist X2).
    pub(crate) fn connect(config: Arc<Config>, now: Instant, recv_id: u16, isn: SeqNr) -> Self {
        let mut c = Connection::new(
            config,
            now,
            Role::Initiator,
            recv_id,
            recv_id.wrapping_add(1),
            isn.next(),
        );
        c.state = State::SynSent;
        c.syn_seq = isn;
        c.syn_due = true;
        c.timers.set(Timer::Syn, now + c.config.initial_timeout);
        c
    }

    /// A new incoming connection for a SYN: our STATE answer is due at once.
    ///
    /// BEP 29 D27-D28: `recv_id = syn.conn_id + 1`, `send_id = syn.conn_id`,
    /// `seq_nr = rand()`, `ack_nr = syn.seq_nr`. Following libutp and libtorrent
    /// (checklist X1), the answer carries our *unconsumed* `seq_nr`.
    pub(crate) fn accept(config: Arc<Config>, now: Instant, syn: &Packet<'_>, isn: SeqNr) -> Self {
        let conn_id = syn.header.conn_id;
        // BEP 29 text (X1, opt-in): the answer consumes `isn`; data starts after it.
        let first_seq = if config.syn_ack_consumes_seq_nr {
            isn.next()
        } else {
            isn
        };
        let mut c = Connection::new(
            config,
            now,
            Role::Acceptor,
            conn_id.wrapping_add(1),
            conn_id,
            first_seq,
        );
        c.state = State::SynReceived;
        c.peer_syn_seq = syn.header.seq_nr;
        c.ack_nr = syn.header.seq_nr;
        c.syn_ack_due = true;
        c.take_timestamp(now, &syn.header);
        c.timers
            .set(Timer::Handshake, now + c.config.handshake_timeout);
        c
    }

    fn new(
        config: Arc<Config>,
        now: Instant,
        role: Role,
        recv_id: u16,
        send_id: u16,
        first_seq: SeqNr,
    ) -> Self {
        let mss = config.max_payload();
        let cc = config.congestion.build(now, mss);
        Connection {
            role,
            state: State::SynSent,
            error: None,
            recv_id,
            send_id,
            syn_seq: SeqNr(0),
            syn_attempts: 0,
            syn_due: false,
            syn_ack_due: false,
            peer_syn_seq: SeqNr(0),
            send: SendBuffer::new(config.send_buffer_size, first_seq),
            resend_pending: 0,
            resend_causes: VecDeque::new(),
            bytes_in_flight: 0,
            peer_window: mss,
            mss,
            cc,
            rtt: RttEstimator::new(
                config.initial_timeout,
                config.min_timeout,
                config.max_timeout,
            ),
            dup_acks: 0,
            loss_cursor: first_seq,
            consecutive_timeouts: 0,
            fin: FinState::Open,
            probe_due: false,
            reset_due: false,
            ack_nr: SeqNr(0),
            recv: RecvBuffer::new(
                config.recv_buffer_size,
                usize::from(config.max_reorder_packets),
            ),
            peer_finished: false,
            linger_period: Duration::ZERO,
            linger_extensions: 0,
            linger_extended_at: None,
            app_closed: false,
            tail_probe_due: false,
            tail_probe_sent: false,
            hold_for_reader: false,
            reply_micro: 0,
            ack_due: false,
            sack_due: false,
            fin_state_probe_due: false,
            unacked_packets: 0,
            advertised_window: config.recv_buffer_size,
            timers: TimerTable::default(),
            last_recv: now,
            last_sent: now,
            events: VecDeque::new(),
            readable_signalled: false,
            writable_wanted: false,
            stats: ConnectionStats::default(),
            config,
        }
    }

    // ----- Queries ---------------------------------------------------------------

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the connection ended, if it ended abnormally.
    pub fn error(&self) -> Option<ConnectionError> {
        self.error
    }

    /// Whether we opened this connection (sent the SYN).
    pub fn is_initiator(&self) -> bool {
        self.role == Role::Initiator
    }

    /// Whether the connection has completed its handshake.
    pub fn is_established(&self) -> bool {
        !matches!(self.state, State::SynSent | State::SynReceived) && self.error.is_none()
    }

    /// Whether the peer finished its direction and every byte before its FIN arrived.
    pub fn is_peer_finished(&self) -> bool {
        self.peer_finished
    }

    /// The connection id we receive on.
    pub fn recv_id(&self) -> u16 {
        self.recv_id
    }

    /// The connection id we send with.
    pub fn send_id(&self) -> u16 {
        self.send_id
    }

    /// Bytes ready to read.
    pub fn readable_bytes(&self) -> usize {
        self.recv.readable()
    }

    /// Bytes that can be written now without being refused.
    pub fn writable_bytes(&self) -> usize {
        if self.fin != FinState::Open || self.state == State::Closed {
            0
        } else {
            self.send.free()
        }
    }

    /// Bytes written but not yet sent in any packet. A bulk sender that keeps a
    /// congestion window's worth of them queued is never application-limited, and
    /// its data is still in cache when it is packetised.
    pub fn unsent_bytes(&self) -> usize {
        self.send.unsent()
    }

    /// Whether everything written has been acknowledged.
    pub fn is_flushed(&self) -> bool {
        self.send.is_empty()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.clone();
        s.rtt = self.rtt.srtt().unwrap_or_default();
        s.rtt_var = self.rtt.rtt_var();
        s.rto = self.rtt.rto();
        s.congestion_window = self.cc.window() as u64;
        s.bytes_in_flight = self.bytes_in_flight as u64;
        s.peer_window = self.peer_window as u64;
        s.queuing_delay = self.cc.queuing_delay().unwrap_or_default();
        s
    }

    /// The congestion controller, for inspection (window, delay estimates).
    pub fn congestion(&self) -> &dyn CongestionController {
        self.cc.as_ref()
    }

    /// The earliest time at which one of the connection's timers fires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether an event waits for [`Connection::poll_event`].
    #[cfg(debug_assertions)]
    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Whether the owner may forget this connection: closed and done lingering.
    pub(crate) fn is_released(&self) -> bool {
        // Received data the application has not read (and has not given up on with
        // `close`) keeps the connection, so no byte is lost however late it reads.
        self.state == State::Closed && !self.reset_due && !self.hold_for_reader
    }

    /// Whether a new SYN from the same peer with the same ids may replace this
    /// connection: it is over on our side with nothing left for the application to
    /// read, or it is half open from a different SYN (the peer started again).
    pub(crate) fn replaceable_by(&self, syn: &Packet<'_>) -> bool {
        match self.state {
            State::Linger | State::Closed => {
                self.app_closed || (self.recv.readable() == 0 && !self.hold_for_reader)
            }
            State::SynReceived => syn.header.seq_nr != self.peer_syn_seq,
            _ => false,
        }
    }

    /// A new SYN from the same peer with the same ids and another seq_nr, while this
    /// connection only waits for the peer to acknowledge our last packets: the peer
    /// has finished (its FIN arrived), nothing is left for the application to read,
    /// and the peer has evidently forgotten the connection (it lingered and let go
    /// while every ACK it sent us was lost). Ends the connection so the SYN can open a
    /// new one; returns whether it did. The end is clean when only our FIN was
    /// unacknowledged (as with a RESET after our FIN, X3), `Reset` when data was.
    /// Without it, the old connection would swallow the SYN and every resend of it:
    /// the peer's connect would time out (seen in the soak, with thousands of
    /// connections between two addresses reusing ids).
    pub(crate) fn supersede_by(&mut self, now: Instant, syn: &Packet<'_>) -> bool {
        // Only once our FIN is out: a spoofed SYN (which needs only the 16-bit id)
        // can then end nothing but the wait for the last ACKs, never a transfer.
        let waiting_for_acks = self.state == State::FinSent;
        let nothing_to_read = self.app_closed || self.recv.readable() == 0;
        if !(waiting_for_acks
            && self.peer_finished
            && nothing_to_read
            && syn.header.seq_nr != self.peer_syn_seq)
        {
            return false;
        }
        let error = (!self.all_but_fin_acked()).then_some(ConnectionError::Reset);
        self.terminate(now, error, false);
        true
    }

    /// Whether our FIN is out and everything before it acknowledged: only the FIN
    /// itself may still wait for its ACK.
    fn all_but_fin_acked(&self) -> bool {
        match self.fin {
            FinState::Acked => true,
            FinState::Sent(seq) => self.send.oldest_seq() == seq,
            _ => false,
        }
    }

    /// Whether the connection is an incoming one still half open.
    pub(crate) fn is_half_open(&self) -> bool {
        self.state == State::SynReceived
    }

    // ----- Application operations --------------------------------------------------

    /// Queues `data` for sending; returns how many bytes were taken (possibly fewer
    /// than offered when the send buffer is full; `WouldBlock` when none fit).
    pub(crate) fn write(&mut self, now: Instant, data: &[u8]) -> Result<usize, StreamError> {
        if let Some(e) = self.error {
            return Err(StreamError::Failed(e));
        }
        if self.state == State::Closed {
            return Err(StreamError::Closed);
        }
        if self.fin != FinState::Open {
            return Err(StreamError::SendClosed);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let n = self.send.write(data);
        if n < data.len() {
            self.writable_wanted = true;
        }
        if self.is_established() {
            self.update_send_timers(now);
        }
        if n == 0 {
            return Err(StreamError::WouldBlock);
        }
        Ok(n)
    }

    /// Moves received bytes into `buf`. `Ok(0)` means end of stream (the peer's FIN
    /// and everything before it were read); `WouldBlock` means wait for `Readable`.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.take_received(|r| r.read(buf))
    }

    /// Like [`Connection::read`], but hands `f` the next contiguous received bytes (at
    /// most `max`) in place instead of copying them out.
    pub(crate) fn read_with(
        &mut self,
        max: usize,
        f: impl FnOnce(&[u8]),
    ) -> Result<usize, StreamError> {
        if max == 0 {
            return Ok(0);
        }
        self.take_received(|r| r.read_with(max, f))
    }

    /// Consumes in-order bytes with `take` (which returns how many); the rest of a read:
    /// end of stream, errors, and whether the window reopened.
    fn take_received(
        &mut self,
        take: impl FnOnce(&mut RecvBuffer) -> usize,
    ) -> Result<usize, StreamError> {
        let n = take(&mut self.recv);
        if n > 0 {
            self.readable_signalled = false;
            // Tell a sender that saw a (nearly) closed window that it opened again.
            if self.advertised_window < self.mss && self.recv.window() >= self.mss {
                self.ack_due = true;
            }
            return Ok(n);
        }
        if self.peer_finished {
            self.hold_for_reader = false;
            return Ok(0);
        }
        match (self.error, self.state) {
            (Some(e), _) => {
                self.hold_for_reader = false;
                Err(StreamError::Failed(e))
            }
            (None, State::Closed | State::Linger) => {
                self.hold_for_reader = false;
                Ok(0)
            }
            _ => {
                self.readable_signalled = false;
                Err(StreamError::WouldBlock)
            }
        }
    }

    /// Closes our sending direction: a FIN follows the queued data. Reading goes on.
    pub(crate) fn shutdown(&mut self) {
        if self.fin == FinState::Open && self.state != State::Closed {
            self.fin = FinState::Queued;
            if self.state == State::Connected {
                self.state = State::FinSent;
            }
        }
    }

    /// Closes both directions: like [`Connection::shutdown`], and further incoming
    /// data is acknowledged and discarded. The connection ends once our FIN is
    /// acknowledged, without waiting for the peer's.
    pub(crate) fn close(&mut self, now: Instant) {
        self.app_closed = true;
        self.recv.discard();
        self.hold_for_reader = false;
        // While connecting, the FIN waits in the queue behind any data written so far;
        // both go out once the handshake completes.
        self.shutdown();
        self.check_close(now);
    }

    /// Abandons the connection at once; a RESET tells the peer.
    pub(crate) fn abort(&mut self, now: Instant) {
        self.recv.discard();
        self.hold_for_reader = false;
        if self.state == State::Closed {
            return;
        }
        let tell_peer = self.state != State::SynSent || self.syn_attempts > 0 || !self.syn_due;
        self.terminate(now, Some(ConnectionError::Aborted), tell_peer);
    }

    // ----- Network input ----------------------------------------------------------

    /// Processes a packet addressed to this connection.
    pub(crate) fn handle_packet(&mut self, now: Instant, pkt: &Packet<'_>) {
        let h = &pkt.header;
        let state = self.state;
        match state {
            State::Closed => return,
            State::SynSent => return self.handle_syn_sent(now, pkt),
            State::SynReceived if !self.handle_syn_received(now, pkt) => return,
            State::Linger => {
                self.stats.packets_received += 1;
                if matches!(h.ty, PacketType::Fin | PacketType::Data) {
                    // After close() we linger before the peer's FIN may have come: take
                    // its data (discarded) and FIN so that ack_nr covers them, and
                    // acknowledge again a FIN whose ACK the peer missed (libutp bug L5).
                    if !self.peer_finished {
                        self.handle_data(now, pkt);
                    } else if self.linger_extensions < self.config.max_retransmits
                        && self
                            .linger_extended_at
                            .is_none_or(|at| now - at >= self.config.min_timeout)
                    {
                        // The peer missed our last ACK and resent its data or FIN after
                        // a backed-off timeout: stay for its next resend too (TCP's
                        // TIME_WAIT restarts the same way), or one more lost ACK turns
                        // its clean close into a RESET.
                        self.linger_period = self
                            .linger_period
                            .saturating_mul(2)
                            .min(self.config.max_timeout.max(MIN_LINGER));
                        self.timers.set(Timer::Linger, now + self.linger_period);
                        self.linger_extensions += 1;
                        self.linger_extended_at = Some(now);
                    }
                    self.ack_due = true;
                }
                return;
            }
            _ => {}
        }
        if h.ty == PacketType::Syn {
            // A late duplicate of the SYN that opened this connection: nothing to do.
            return;
        }
        if h.ty == PacketType::Reset {
            return self.handle_reset(now, h.ack_nr);
        }
        // Checklist X10: drop packets whose ack_nr acknowledges data never sent or
        // lies further behind than the packets in flight allow.
        if !self.ack_in_window(h.ack_nr, 3) {
            self.stats.packets_dropped += 1;
            return;
        }
        self.stats.packets_received += 1;
        self.last_recv = now;
        self.timers.set(Timer::Idle, now + self.config.idle_timeout);
        self.take_timestamp(now, h);
        self.peer_window = h.wnd_size as usize;
        self.handle_ack(now, pkt);
        match h.ty {
            PacketType::Data | PacketType::Fin => self.handle_data(now, pkt),
            _ => {}
        }
        self.update_send_timers(now);
        self.check_close(now);
    }

    fn handle_syn_sent(&mut self, now: Instant, pkt: &Packet<'_>) {
        let h = &pkt.header;
        match h.ty {
            // BEP 29 D29 with checklist X1: the answer to our SYN is a STATE acking it,
            // carrying the acceptor's next seq_nr, so our ack_nr is seq_nr - 1.
            PacketType::State if h.ack_nr == self.syn_seq => {
                self.stats.packets_received += 1;
                self.state = if self.fin == FinState::Open {
                    State::Connected
                } else {
                    State::FinSent
                };
                // X1: the deployed SYN-ACK does not consume its seq_nr; the BEP text's
                // does.
                self.ack_nr = if self.config.syn_ack_consumes_seq_nr {
                    h.seq_nr
                } else {
                    h.seq_nr.prev()
                };
                self.peer_window = h.wnd_size as usize;
                self.take_timestamp(now, h);
                self.last_recv = now;
                self.timers.stop(Timer::Syn);
                self.timers.set(Timer::Idle, now + self.config.idle_timeout);
                if let Some(sent) = self.syn_sent_at() {
                    if self.syn_attempts == 0 {
                        self.rtt.on_sample(now - sent);
                    }
                }
                // Prove to the acceptor that we saw its seq_nr (checklist X10), even
                // when we have nothing to send.
                self.ack_due = true;
                self.events.push_back(Event::Connected);
                self.update_send_timers(now);
            }
            PacketType::Reset if h.ack_nr == self.syn_seq => {
                self.terminate(now, Some(ConnectionError::Refused), false);
            }
            _ => self.stats.packets_dropped += 1,
        }
    }

    fn syn_sent_at(&self) -> Option<Instant> {
        Some(self.last_sent)
    }

    /// Returns whether the packet should go on to normal processing.
    fn handle_syn_received(&mut self, now: Instant, pkt: &Packet<'_>) -> bool {
        let h = &pkt.header;
        let our_isn = self.send.next_seq();
        match h.ty {
            PacketType::Syn => {
                // libutp bug L2: the initiator did not get our answer and resent its SYN.
                if h.seq_nr == self.peer_syn_seq {
                    self.syn_ack_due = true;
                }
                false
            }
            PacketType::Reset => {
                if h.ack_nr == our_isn || h.ack_nr == our_isn.prev() {
                    self.terminate(now, None, false);
                }
                false
            }
            // The initiator proves it received our answer by acknowledging our seq_nr - 1
            // (deployed convention) or our seq_nr (BEP 29 text, D29).
            _ if h.ack_nr == our_isn.prev() || h.ack_nr == our_isn => {
                self.state = if self.fin == FinState::Open {
                    State::Connected
                } else {
                    State::FinSent
                };
                self.timers.stop(Timer::Handshake);
                self.events.push_back(Event::Incoming);
                true
            }
            _ => {
                self.stats.packets_dropped += 1;
                false
            }
        }
    }

    /// BEP 29 A8: `reply_micro` = our receive time − the packet's send time, mod 2³².
    fn take_timestamp(&mut self, now: Instant, h: &Header) {
        let diff = now.wire_micros().wrapping_sub(h.timestamp.0);
        // A9 asks for 0 before any sample; a real difference of 0 is sent as 1.
        self.reply_micro = diff.max(1);
    }

    /// Whether `ack_nr` lies in our send window: not beyond the last packet sent, and
    /// at most the packets in flight plus `slack` behind it.
    fn ack_in_window(&self, ack_nr: SeqNr, slack: usize) -> bool {
        let last_sent = self.send.next_seq().prev();
        let behind = usize::from(last_sent - ack_nr);
        !ack_nr.is_after(last_sent) && behind <= self.send.packets_len() + slack
    }

    fn handle_reset(&mut self, now: Instant, ack_nr: SeqNr) {
        // Checklist L6 / X11: accept a RESET only if it answers something we sent
        // (libutp puts the seq_nr of the packet it answers in ack_nr; our STATEs carry
        // the next, unconsumed seq_nr).
        if !(ack_nr == self.send.next_seq() || self.ack_in_window(ack_nr, 3)) {
            self.stats.packets_dropped += 1;
            return;
        }
        self.stats.packets_received += 1;
        // Checklist X3: a RESET after our FIN, with all our data delivered, ends the
        // close, provided we are not still missing the peer's data (or no longer want it).
        if self.all_but_fin_acked() && (self.peer_finished || self.app_closed) {
            self.fin = FinState::Acked;
            self.terminate(now, None, false);
        } else {
            self.terminate(now, Some(ConnectionError::Reset), false);
        }
    }

    /// Processes the acknowledgement part of a packet: cumulative `ack_nr`, selective
    /// ACK, duplicate-ACK counting, loss detection, RTT and congestion updates.
    fn handle_ack(&mut self, now: Instant, pkt: &Packet<'_>) {
        let h = &pkt.header;
        let flight_before = self.bytes_in_flight;
        let oldest = self.send.oldest_seq();
        let mut newly_acked = 0usize;
        let mut rtt_sample = None;
        let mut cumulative_progress = false;

        // Cumulative: everything up to and including ack_nr (BEP 29 G41).
        if !h.ack_nr.is_before(oldest) {
            let count = usize::from(h.ack_nr - oldest) + 1;
            for i in 0..count {
                let seq = oldest + i as u16;
                if let Some(n) = self.mark_acked(now, seq, &mut rtt_sample) {
                    newly_acked += n;
                }
            }
            cumulative_progress = true;
        } else if h.ack_nr == oldest.prev() && h.ty == PacketType::State && self.bytes_in_flight > 0
        {
            // Checklist F38, X8: a duplicate ACK counts only while data is in flight.
            self.dup_acks += 1;
            self.stats.dup_acks_received += 1;
        }

        let sack = pkt.selective_ack();
        if let Some(sack) = sack {
            self.stats.sacks_received += 1;
            let next = self.send.next_seq();
            // A byte of the bitmask at a time, against what is already known to be
            // acknowledged: only new bits cost anything.
            for (i, &byte) in sack.bitmask().iter().enumerate() {
                let first = h.ack_nr + 2 + (i * 8) as u16;
                // B18: bits outside the send window are ignored.
                if i * 8 >= MAX_IN_FLIGHT || !first.is_before(next) {
                    break;
                }
                let new = byte & !self.send.acked_byte(first);
                for k in 0..8u16 {
                    if new & (1 << k) != 0 && (first + k).is_before(next) {
                        if let Some(n) = self.mark_acked(now, first + k, &mut rtt_sample) {
                            newly_acked += n;
                        }
                    }
                }
            }
        }

        if let Some(sample) = rtt_sample {
            self.rtt.on_sample(sample);
        }
        if cumulative_progress {
            self.dup_acks = 0;
        }
        // A selective ACK only speaks of packets below ack_nr + 2 + its bits.
        let sack_end = sack.map(|s| h.ack_nr + 2 + s.len_bits().min(u16::MAX as usize / 2) as u16);
        let lost = self.detect_losses(sack_end);
        if lost {
            let srtt = self.rtt.srtt().unwrap_or(self.config.initial_timeout);
            self.cc.on_loss(now, srtt, self.mss);
        }

        let released = self.send.release_acked();
        if newly_acked > 0 || released > 0 {
            self.consecutive_timeouts = 0;
            self.rtt.on_progress();
            self.tail_probe_sent = false;
            if self.send.packets_len() > 0 {
                self.timers.set(Timer::Retransmit, now + self.rtt.rto());
            } else {
                self.timers.stop(Timer::Retransmit);
            }
            self.arm_tail_probe(now);
        }
        if newly_acked > 0 {
            let delay_sample = match h.timestamp_diff.0 {
                // A9: 0 means "no sample"; X13: uTorrent's uninitialised INT_MAX too.
                0 | 0x7fff_ffff => None,
                d => Some(d),
            };
            if let Some(d) = delay_sample {
                self.stats.delay_samples += 1;
                self.stats.last_delay_sample = d;
            }
            let ack = AckEvent {
                bytes_acked: newly_acked,
                flight_size: flight_before,
                delay_sample,
                rtt_sample,
                smoothed_rtt: self.rtt.srtt().unwrap_or(self.config.initial_timeout),
                mss: self.mss,
            };
            self.cc.on_ack(now, &ack);
        }
        if self.writable_wanted && self.send.free() > 0 && self.fin == FinState::Open {
            self.writable_wanted = false;
            self.events.push_back(Event::Writable);
        }
        if let FinState::Sent(seq) = self.fin {
            // Only a cumulative ACK proves everything before the FIN arrived; a FIN seen
            // in a selective ACK still has holes before it.
            if self.send.get(seq).is_none() {
                self.fin = FinState::Acked;
                self.events.push_back(Event::SendClosed);
                if self.state == State::FinSent {
                    self.state = State::HalfClosed;
                }
            }
        }
    }

    /// Marks `seq` acknowledged; returns its payload length if it was not already.
    fn mark_acked(
        &mut self,
        now: Instant,
        seq: SeqNr,
        rtt_sample: &mut Option<Duration>,
    ) -> Option<usize> {
        let p = self.send.get_mut(seq)?;
        if p.acked || p.transmissions == 0 {
            return None;
        }
        p.acked = true;
        let len = usize::from(p.len);
        let was_waiting = std::mem::take(&mut p.need_resend);
        let once_sent_at = (p.transmissions == 1).then_some(p.last_sent);
        self.send.note_acked(seq);
        if was_waiting {
            self.resend_pending -= 1;
        } else {
            self.bytes_in_flight -= len;
        }
        // Karn's rule (G42): only packets sent exactly once give an RTT sample. Of the
        // packets one ACK covers, only the most recently sent counts: the ACK was
        // drawn by it. An older packet waited behind a hole (its ACK came only when a
        // resend filled it) and would take the resend's timeout for a round trip,
        // inflating the RTO until a peer's linger runs out before our next resend.
        if let Some(sent) = once_sent_at {
            let sample = now - sent;
            if rtt_sample.is_none_or(|best| sample < best) {
                *rtt_sample = Some(sample);
            }
        }
        Some(len)
    }

    /// BEP 29 F37-F39: three duplicate ACKs, or three packets selectively acknowledged
    /// after an unacknowledged one, declare it lost. Each packet is fast-resent at most
    /// once; if the resend is lost too, the retransmission timer recovers it.
    ///
    /// `sack_end` is the first sequence number beyond the selective ACK just received:
    /// only packets before it are scanned, so an ACK costs at most its bitmask's span,
    /// never the whole window.
    fn detect_losses(&mut self, sack_end: Option<SeqNr>) -> bool {
        let mut lost = false;
        if self.dup_acks >= 3 {
            let oldest = self.send.oldest_seq();
            if self.try_mark_lost(oldest, ResendCause::DupAck) {
                lost = true;
            }
            self.dup_acks = 0;
        }
        if let Some(end) = sack_end {
            // The packets acknowledged above a packet only get fewer as it rises, so
            // the lost ones are exactly the eligible packets below the third-highest
            // acknowledged one. That one is found from the top of the span (at once in
            // steady state); candidates are scanned from a cursor that only moves past
            // packets that are settled (acknowledged, or already fast-resent), so every
            // packet is looked at about once, however long the bitmask.
            let oldest = self.send.oldest_seq();
            let span = usize::from(end - oldest).min(self.send.packets_len());
            let threshold = self
                .send
                .iter_first(span)
                .rev()
                .filter(|(_, p)| p.acked)
                .nth(2)
                .map(|(seq, _)| seq);
            if let Some(threshold) = threshold {
                let mut cursor = if self.loss_cursor.is_before(oldest) {
                    oldest
                } else {
                    self.loss_cursor
                };
                let mut settled = true;
                while cursor.is_before(threshold) {
                    let Some(&p) = self.send.get(cursor) else {
                        break;
                    };
                    let eligible =
                        !p.acked && p.transmissions > 0 && !p.need_resend && !p.fast_resent;
                    if eligible && self.try_mark_lost(cursor, ResendCause::Sack) {
                        lost = true;
                    } else if !p.acked && !p.fast_resent {
                        // Waiting for a resend after a timeout: look again next time.
                        settled = false;
                    }
                    if settled {
                        self.loss_cursor = cursor.next();
                    }
                    cursor = cursor.next();
                }
            }
        }
        lost
    }

    fn try_mark_lost(&mut self, seq: SeqNr, cause: ResendCause) -> bool {
        let Some(p) = self.send.get_mut(seq) else {
            return false;
        };
        if p.acked || p.need_resend || p.fast_resent || p.transmissions == 0 {
            return false;
        }
        p.need_resend = true;
        p.fast_resent = true;
        self.bytes_in_flight -= usize::from(p.len);
        self.resend_pending += 1;
        // Keep the queue in sequence order (oldest first); losses are found mostly in
        // order, so this scans little.
        let at = self
            .resend_causes
            .iter()
            .rposition(|&(s, _)| s.is_before(seq))
            .map_or(0, |i| i + 1);
        self.resend_causes.insert(at, (seq, cause));
        true
    }

    /// Processes the payload of a DATA or FIN packet.
    fn handle_data(&mut self, now: Instant, pkt: &Packet<'_>) {
        let h = &pkt.header;
        let fin = h.ty == PacketType::Fin;
        let expected = self.ack_nr.next();
        if self.peer_finished || h.seq_nr.is_before(expected) {
            // Already delivered: the peer missed our ACK.
            self.stats.duplicate_packets_received += 1;
            self.ack_due = true;
            return;
        }
        let ahead = usize::from(h.seq_nr - expected);
        let payload = if self.app_closed {
            &[][..]
        } else {
            pkt.payload
        };
        match self.recv.insert(ahead, fin, payload) {
            Insert::InOrder { delivered, fin } => {
                self.ack_nr += delivered;
                self.stats.bytes_received += pkt.payload.len() as u64;
                if self.app_closed {
                    self.recv.discard();
                } else if self.recv.readable() > 0 && !self.readable_signalled {
                    self.readable_signalled = true;
                    self.events.push_back(Event::Readable);
                }
                if fin {
                    // C21: the FIN is delivered only after everything before it.
                    self.peer_finished = true;
                    self.events.push_back(Event::Finished);
                    self.ack_due = true;
                }
                self.unacked_packets += u32::from(delivered);
                if self.recv.has_gap() || delivered > 1 {
                    self.sack_due = self.recv.has_gap();
                    self.ack_due = true;
                } else if self.unacked_packets >= 2 || pkt.payload.len() < self.mss {
                    // Every second packet is acknowledged at once; so is a short one,
                    // which usually ends a burst (nothing more will come to pair it).
                    self.ack_due = true;
                } else if !self.timers.is_set(Timer::DelayedAck) {
                    self.timers
                        .set(Timer::DelayedAck, now + self.config.delayed_ack);
                }
            }
            Insert::Early => {
                // B17: out-of-order data is answered at once with a selective ACK.
                self.sack_due = true;
                self.ack_due = true;
            }
            Insert::Duplicate => {
                self.stats.duplicate_packets_received += 1;
                self.sack_due = true;
                self.ack_due = true;
            }
            Insert::Dropped => {
                self.stats.packets_dropped += 1;
                self.ack_due = true;
            }
        }
    }

    // ----- Timers -----------------------------------------------------------------

    /// Handles every timer due at `now`. Calling it again with the same `now` does
    /// nothing more.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.timers.expired(now) {
            match t {
                Timer::Syn => {
                    self.syn_attempts += 1;
                    if self.syn_attempts > self.config.syn_retries {
                        self.terminate(now, Some(ConnectionError::TimedOut), false);
                        return;
                    }
                    self.syn_due = true;
                    let wait = self
                        .config
                        .initial_timeout
                        .saturating_mul(1 << self.syn_attempts.min(16));
                    self.timers
                        .set(Timer::Syn, now + wait.min(self.config.max_timeout));
                }
                Timer::Handshake => {
                    self.terminate(now, Some(ConnectionError::TimedOut), false);
                    return;
                }
                Timer::Retransmit => self.on_retransmit_timeout(now),
                Timer::Probe => {
                    self.tail_probe_due = !self.tail_probe_sent && self.bytes_in_flight > 0;
                }
                Timer::DelayedAck => self.ack_due = true,
                Timer::Keepalive => {
                    if self.is_established() && self.state != State::Linger {
                        self.ack_due = true;
                    }
                }
                Timer::Idle => {
                    self.terminate(now, Some(ConnectionError::TimedOut), false);
                    return;
                }
                Timer::ZeroWindow => self.probe_due = true,
                Timer::Linger => {
                    self.state = State::Closed;
                    self.hold_for_reader = !self.app_closed && self.recv.readable() > 0;
                    self.timers.stop_all();
                    return;
                }
            }
        }
    }

    /// BEP 29 G45-G48: nothing acknowledged for a whole timeout.
    fn on_retransmit_timeout(&mut self, now: Instant) {
        if self.send.packets_len() == 0 {
            return;
        }
        // A peer that keeps answering with a closed window is alive (X12): that is
        // zero-window probing, not loss, and does not count towards giving up.
        let persisting = now - self.last_recv <= self.rtt.rto() && self.peer_window < self.mss;
        if !persisting {
            self.consecutive_timeouts += 1;
            if self.consecutive_timeouts > self.config.max_retransmits {
                self.terminate(now, Some(ConnectionError::TimedOut), false);
                return;
            }
        }
        self.stats.timeouts += 1;
        self.rtt.on_timeout();
        self.cc.on_timeout(now, self.mss);
        // Everything in flight is presumed lost: resend from the oldest, as the window
        // allows (G46: one packet goes out at once).
        let mut marked = Vec::new();
        for (seq, p) in self.send.iter_mut() {
            if !p.acked && p.transmissions > 0 && !p.need_resend {
                p.need_resend = true;
                marked.push(seq);
            }
            p.fast_resent = false;
        }
        self.resend_pending += marked.len();
        // Both lists are in sequence order; merge them so the oldest hole goes first
        // even when it was lost again after an earlier resend.
        let queued = std::mem::take(&mut self.resend_causes);
        let mut queued = queued.into_iter().peekable();
        let mut marked = marked.into_iter().peekable();
        loop {
            let next = match (queued.peek(), marked.peek()) {
                (Some(&(q, _)), Some(&m)) if m.is_before(q) => {
                    marked.next().map(|m| (m, ResendCause::Timeout))
                }
                (Some(_), _) => queued.next(),
                (None, Some(_)) => marked.next().map(|m| (m, ResendCause::Timeout)),
                (None, None) => break,
            };
            self.resend_causes.extend(next);
        }
        self.bytes_in_flight = 0;
        self.dup_acks = 0;
        // Fast retransmit may take every packet into account again.
        self.loss_cursor = self.send.oldest_seq();
        self.timers.set(Timer::Retransmit, now + self.rtt.rto());
        // Only our FIN is unacknowledged and the peer has finished too. libutp destroys
        // its socket as soon as its own FIN is acknowledged, so our FIN may reach a
        // socket that is gone; libutp answers a packet for an unknown connection with one
        // RESET per seq_nr and no more for that seq_nr until it has been quiet for 10 s.
        // If that RESET was lost, resent FINs get no answer. A STATE with the next
        // seq_nr asks anew (its RESET acks our FIN and ends the close, X3); a live peer
        // takes it as a plain ACK.
        if self.peer_finished && matches!(self.fin, FinState::Sent(_)) && self.all_but_fin_acked() {
            self.fin_state_probe_due = true;
        }
    }

    /// Re-arms the timers that depend on what is waiting to be sent.
    fn update_send_timers(&mut self, now: Instant) {
        if self.send.packets_len() > 0 {
            if !self.timers.is_set(Timer::Retransmit) {
                self.timers.set(Timer::Retransmit, now + self.rtt.rto());
            }
        } else {
            self.timers.stop(Timer::Retransmit);
        }
        let blocked_by_peer = self.bytes_in_flight == 0
            && (self.send.unsent() > 0 || self.resend_pending > 0)
            && self.peer_window < self.send.unsent().min(self.mss).max(1);
        if blocked_by_peer {
            if !self.timers.is_set(Timer::ZeroWindow) {
                self.timers.set(Timer::ZeroWindow, now + self.rtt.rto());
            }
        } else {
            self.timers.stop(Timer::ZeroWindow);
            self.probe_due = false;
        }
    }

    // ----- Output -----------------------------------------------------------------

    /// Writes the next packet to send into `buf` (at least `max_packet_size` long)
    /// and returns its length, or `None` when nothing is due now.
    ///
    /// Order: handshake packets, a RESET after abort, an ACK carrying a selective ACK,
    /// retransmissions, new data, the FIN, and a plain ACK if one is still due.
    ///
    /// `None` changes nothing the endpoint tracks (events, timers, the state), so the
    /// endpoint skips its bookkeeping then; debug builds check it.
    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let n = self.next_packet(now, buf)?;
        self.stats.packets_sent += 1;
        self.last_sent = now;
        if let Some(k) = self.config.keepalive_interval {
            if self.is_established() {
                self.timers.set(Timer::Keepalive, now + k);
            }
        }
        Some(n)
    }

    fn next_packet(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.reset_due {
            self.reset_due = false;
            let seq = self.send.next_seq();
            return Some(self.emit_control(now, PacketType::Reset, seq, buf));
        }
        match self.state {
            State::Closed => return None,
            State::SynSent => {
                if !self.syn_due {
                    return None;
                }
                self.syn_due = false;
                let h = Header {
                    ty: PacketType::Syn,
                    conn_id: self.recv_id,
                    timestamp: Micros(now.wire_micros()),
                    timestamp_diff: Micros(0),
                    wnd_size: self.recv.window() as u32,
                    seq_nr: self.syn_seq,
                    ack_nr: SeqNr(0),
                };
                return wire::encode(&h, &[], &[], buf).ok();
            }
            State::SynReceived => {
                if !self.syn_ack_due {
                    return None;
                }
                // D28 with X1: a STATE carrying our unconsumed seq_nr (or, with the
                // BEP text's numbering, the one it consumed).
                self.syn_ack_due = false;
                let seq = if self.config.syn_ack_consumes_seq_nr {
                    self.send.next_seq().prev()
                } else {
                    self.send.next_seq()
                };
                return Some(self.emit_control(now, PacketType::State, seq, buf));
            }
            State::Linger => {
                return self.ack_due.then(|| {
                    let seq = self.send.next_seq();
                    self.emit_control(now, PacketType::State, seq, buf)
                });
            }
            _ => {}
        }
        if self.sack_due && self.ack_due {
            let seq = self.send.next_seq();
            return Some(self.emit_control(now, PacketType::State, seq, buf));
        }
        if let Some(n) = self.next_tail_probe(now, buf) {
            return Some(n);
        }
        if let Some(n) = self.next_resend(now, buf) {
            return Some(n);
        }
        if self.fin_state_probe_due {
            self.fin_state_probe_due = false;
            let seq = self.send.next_seq();
            return Some(self.emit_control(now, PacketType::State, seq, buf));
        }
        if let Some(n) = self.next_new_data(now, buf) {
            return Some(n);
        }
        if self.fin == FinState::Queued && self.send.unsent() == 0 && self.resend_pending == 0 {
            let seq = self.send.push_packet(0, true, now);
            self.fin = FinState::Sent(seq);
            return Some(self.emit_data(now, seq, None, buf));
        }
        if self.ack_due {
            let seq = self.send.next_seq();
            return Some(self.emit_control(now, PacketType::State, seq, buf));
        }
        None
    }

    /// The oldest packet waiting to be resent, if the window allows it.
    fn next_resend(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.resend_pending == 0 {
            return None;
        }
        while let Some(&(seq, cause)) = self.resend_causes.front() {
            let Some(p) = self.send.get(seq) else {
                self.resend_causes.pop_front();
                continue;
            };
            if !p.need_resend {
                self.resend_causes.pop_front();
                continue;
            }
            if !self.window_allows(usize::from(p.len), true) {
                return None;
            }
            self.resend_causes.pop_front();
            return Some(self.emit_data(now, seq, Some(cause), buf));
        }
        None
    }

    /// A new packet of unsent data, if the windows allow it.
    fn next_new_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let unsent = self.send.unsent();
        if unsent == 0 || self.resend_pending > 0 {
            return None;
        }
        // Never more than half the sequence space in flight, so numbers stay unambiguous.
        if self.send.packets_len() >= MAX_IN_FLIGHT {
            return None;
        }
        let peer_room = self.peer_window.saturating_sub(self.bytes_in_flight);
        let mut len = unsent.min(self.packet_payload());
        if self.probe_due {
            // X12: a closed window is probed with one packet, after a timeout.
            self.probe_due = false;
        } else {
            len = len.min(peer_room);
            if len == 0 || !self.window_allows(len, false) {
                return None;
            }
        }
        let seq = self.send.push_packet(len, false, now);
        Some(self.emit_data(now, seq, None, buf))
    }

    /// The payload size of the next new DATA packet: the MSS, or with
    /// `adaptive_packet_size` an eighth of the congestion window (H49), at least 130
    /// bytes (a 150-byte packet).
    fn packet_payload(&self) -> usize {
        if !self.config.adaptive_packet_size {
            return self.mss;
        }
        (self.cc.window() / 8).clamp(SMALLEST_PAYLOAD.min(self.mss), self.mss)
    }

    /// Whether a packet of `len` bytes fits the congestion window. E33: in flight plus
    /// the packet must fit; E34 / G46: when nothing is in flight, one packet may go
    /// even if the window is smaller, so a tiny window never stalls the connection.
    fn window_allows(&self, len: usize, resend: bool) -> bool {
        if self.bytes_in_flight == 0 {
            return true;
        }
        let window = self.cc.window();
        let limit = if resend {
            window
        } else {
            window.min(self.peer_window)
        };
        self.bytes_in_flight + len <= limit
    }

    /// Sends (or resends) the DATA or FIN packet `seq`.
    fn emit_data(
        &mut self,
        now: Instant,
        seq: SeqNr,
        cause: Option<ResendCause>,
        buf: &mut [u8],
    ) -> usize {
        let flight = self.bytes_in_flight;
        let Some(p) = self.send.get_mut(seq) else {
            return 0;
        };
        let first = p.transmissions == 0;
        p.transmissions += 1;
        p.last_sent = now;
        if p.need_resend {
            p.need_resend = false;
            self.resend_pending -= 1;
        }
        let p = *p;
        let len = usize::from(p.len);
        self.bytes_in_flight += len;
        match cause {
            Some(ResendCause::Timeout) => self.stats.retransmits_timeout += 1,
            Some(ResendCause::DupAck) => self.stats.retransmits_dup_ack += 1,
            Some(ResendCause::Sack) => self.stats.retransmits_sack += 1,
            Some(ResendCause::Probe) => self.stats.retransmits_probe += 1,
            None if first => self.stats.bytes_sent += len as u64,
            None => {}
        }
        self.cc.on_sent(now, len, flight);
        let ty = if p.fin {
            PacketType::Fin
        } else {
            PacketType::Data
        };
        let h = self.header(now, ty, seq);
        let hlen = wire::encode(&h, &[], &[], buf).unwrap_or(0);
        self.send.copy_payload(&p, &mut buf[hlen..hlen + len]);
        self.on_ack_sent();
        if !self.timers.is_set(Timer::Retransmit) {
            self.timers.set(Timer::Retransmit, now + self.rtt.rto());
        }
        self.timers.stop(Timer::ZeroWindow);
        self.arm_tail_probe(now);
        hlen + len
    }

    /// Arms the tail loss probe (RFC 8985 section 7): if no ACK arrives within two
    /// smoothed RTTs plus our peer's ACK delay, the newest packet in flight is resent
    /// once. A loss at the tail of a burst draws no duplicate ACKs; the probe's ACK
    /// carries a selective ACK that starts fast retransmit, instead of waiting for the
    /// retransmission timeout (at least 500 ms, and 1 s in libutp).
    fn arm_tail_probe(&mut self, now: Instant) {
        let Some(srtt) = self.rtt.srtt() else {
            return;
        };
        if !self.config.tail_loss_probe || self.tail_probe_sent || self.bytes_in_flight == 0 {
            self.timers.stop(Timer::Probe);
            return;
        }
        let at = now + srtt * 2 + self.config.delayed_ack;
        let before_rto = self
            .timers
            .deadline(Timer::Retransmit)
            .is_none_or(|rto| at < rto);
        if before_rto {
            self.timers.set(Timer::Probe, at);
        } else {
            self.timers.stop(Timer::Probe);
        }
    }

    /// The tail loss probe: resends the newest packet still in flight.
    fn next_tail_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if !self.tail_probe_due {
            return None;
        }
        self.tail_probe_due = false;
        let oldest = self.send.oldest_seq();
        let mut seq = self.send.next_seq();
        while seq != oldest {
            seq = seq.prev();
            let Some(p) = self.send.get(seq) else {
                continue;
            };
            if p.acked || p.need_resend || p.transmissions == 0 {
                continue;
            }
            // It leaves the flight and enters it again with this transmission.
            self.bytes_in_flight = self.bytes_in_flight.saturating_sub(usize::from(p.len));
            self.tail_probe_sent = true;
            return Some(self.emit_data(now, seq, Some(ResendCause::Probe), buf));
        }
        None
    }

    /// Sends a STATE or RESET; a STATE carries a selective ACK when packets wait
    /// beyond a gap (B17).
    fn emit_control(&mut self, now: Instant, ty: PacketType, seq: SeqNr, buf: &mut [u8]) -> usize {
        let h = self.header(now, ty, seq);
        let sack = ty == PacketType::State && self.recv.has_gap() && !self.peer_finished;
        if !sack {
            self.on_ack_sent();
            return wire::encode(&h, &[], &[], buf).unwrap_or(0);
        }
        let mut mask = [0u8; MAX_SACK_BYTES];
        let room = self
            .config
            .max_packet_size
            .saturating_sub(wire::HEADER_LEN + 2);
        let sack_len = self
            .recv
            .selective_ack(&mut mask[..room.min(MAX_SACK_BYTES)]);
        let n = if sack_len > 0 {
            self.stats.sacks_sent += 1;
            let ext = [Extension::SelectiveAck(SelectiveAck::new(
                &mask[..sack_len],
            ))];
            wire::encode(&h, &ext, &[], buf)
        } else {
            wire::encode(&h, &[], &[], buf)
        };
        self.on_ack_sent();
        n.unwrap_or(0)
    }

    fn header(&mut self, now: Instant, ty: PacketType, seq: SeqNr) -> Header {
        let wnd = self.recv.window();
        self.advertised_window = wnd;
        Header {
            ty,
            conn_id: self.send_id,
            timestamp: Micros(now.wire_micros()),
            timestamp_diff: Micros(self.reply_micro),
            wnd_size: u32::try_from(wnd).unwrap_or(u32::MAX),
            seq_nr: seq,
            ack_nr: self.ack_nr,
        }
    }

    /// Every packet we send carries our cumulative ACK.
    fn on_ack_sent(&mut self) {
        self.ack_due = false;
        self.sack_due = false;
        self.unacked_packets = 0;
        self.timers.stop(Timer::DelayedAck);
    }

    // ----- Closing ----------------------------------------------------------------

    /// Moves to `Linger` once both directions are finished (or ours is and the
    /// application closed the connection).
    fn check_close(&mut self, now: Instant) {
        if matches!(self.state, State::Closed | State::Linger) || self.fin != FinState::Acked {
            return;
        }
        if self.peer_finished || self.app_closed {
            self.state = State::Linger;
            self.events.push_back(Event::Closed(None));
            self.timers.stop_all();
            self.linger_period = self
                .rtt
                .rto()
                .saturating_mul(self.config.linger_rtos)
                .max(MIN_LINGER);
            self.timers.set(Timer::Linger, now + self.linger_period);
        }
    }

    fn terminate(&mut self, _now: Instant, error: Option<ConnectionError>, tell_peer: bool) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.error = error;
        self.reset_due = tell_peer;
        self.hold_for_reader = !self.app_closed && self.recv.readable() > 0;
        self.timers.stop_all();
        self.events.push_back(Event::Closed(error));
    }
}

#[cfg(test)]
mod tests;
