//! Real libutp (the reference C++ implementation) as an in-process peer, in virtual time.
//!
//! A [`LibutpPeer`] is one libutp context (`utp_context`): every socket of one UDP
//! address. It is shaped like our [`utp::Endpoint`]: the caller hands it datagrams and
//! time, and takes datagrams, events and the next wake-up time out. Nothing here reads
//! a clock or touches a socket:
//!
//! - libutp's clock and random-number callbacks (`UTP_GET_MILLISECONDS`,
//!   `UTP_GET_MICROSECONDS`, `UTP_GET_RANDOM`) are overridden: libutp sees the caller's
//!   `now` plus [`EPOCH_OFFSET`] (so its clock starts at 1 s or later, which its
//!   arithmetic needs), and a seeded generator, so runs are reproducible;
//! - its `UTP_SENDTO` callback queues datagrams for [`LibutpPeer::poll_transmit`];
//! - received datagrams go to `utp_process_udp` from a buffer with a 64-byte zero tail
//!   (libutp reads one byte past a selective-ACK bitmask, checklist L7) but with the
//!   true length;
//! - the first [`LibutpPeer::poll_transmit`] after a batch of
//!   [`LibutpPeer::handle_datagram`] calls runs `utp_issue_deferred_acks`, as a real
//!   driver does once its socket is drained (libutp sends no ACK for in-order data
//!   until then, checklist L11);
//! - [`LibutpPeer::handle_timeout`] runs `utp_check_timeouts`, which libutp wants every
//!   500 ms: [`LibutpPeer::poll_timeout`] says when the next tick is due.
//!
//! libutp has no send buffer: [`LibutpPeer::write`] takes only what fits in its
//! congestion window now, and [`LibutpEvent::Writable`] says when to try again. Received
//! data is collected per socket until [`LibutpPeer::read`] takes it; the buffered amount
//! is what libutp subtracts from its advertised receive window.
//!
//! # Rules this module keeps (so callers need not)
//!
//! - libutp's callbacks carry no closure pointer: all state lives in a `Shared` block
//!   that the context's userdata points to, reached only through shared references and
//!   a `RefCell` that is never borrowed across a call into libutp (callbacks re-enter).
//! - A panic must not unwind into C++: each callback catches it, and the Rust method
//!   that called into libutp resumes it once libutp has returned.
//! - libutp frees a socket right after `UTP_STATE_DESTROYING`: from then on its handle
//!   only reads the data and statistics left behind.
//! - libutp's assertions are live and abort the process: the wrapper never calls
//!   `utp_close` twice, nor `utp_shutdown` after `utp_close`, nor anything on a freed
//!   socket.
//! - `utp_writev` uses a process-global scratch array: writes from all peers in the
//!   process are serialised by a lock. Everything else of a context stays on the
//!   thread that made it ([`LibutpPeer`] is neither `Send` nor `Sync`).
//!
//! `utp_get_stats` returns nothing in this build (libutp fills it only with `_DEBUG`),
//! so [`LibutpSocketStats`] counts what the callbacks show.
//!
//! `utp_destroy` frees the context but not the sockets still in it (libutp never calls
//! its own `UTP_FreeAll`); dropping a peer with live sockets leaks them, which is
//! harmless in tests.
//!
//! libutp asserts on some crafted input (checklist L bug 8): feed it what a uTP stack
//! sends, not fuzzed datagrams, or the test process aborts.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{c_int, c_void};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use libutp_rs2_sys as sys;
use utp::Instant;

/// libutp's clock is the caller's `now` plus this offset: libutp computes times such as
/// `current_ms - MAX_WINDOW_DECAY` that wrap near zero, so its epoch must be ≥ 1 s.
pub const EPOCH_OFFSET: Duration = Duration::from_secs(1);

/// How often libutp wants `utp_check_timeouts` (its `TIMEOUT_CHECK_INTERVAL`).
pub const TICK: Duration = Duration::from_millis(500);

/// Zero bytes after every datagram handed to libutp (it reads past the end, L7).
const PADDING: usize = 64;

/// Serialises `utp_writev`, which copies the caller's vectors into a `static` array.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// A socket of a [`LibutpPeer`]. Ids are never reused within a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(u32);

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "libutp#{}", self.0)
    }
}

/// An error libutp reported on a socket (`UTP_ON_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LibutpError {
    /// `UTP_ECONNREFUSED`: a RESET answered our SYN.
    Refused,
    /// `UTP_ECONNRESET`: a RESET ended an open connection.
    Reset,
    /// `UTP_ETIMEDOUT`: retransmissions ran out (or a half-open socket expired).
    TimedOut,
    /// A code this wrapper does not know.
    Other(i32),
}

impl LibutpError {
    fn from_code(code: c_int) -> Self {
        match u32::try_from(code) {
            Ok(sys::UTP_ECONNREFUSED) => LibutpError::Refused,
            Ok(sys::UTP_ECONNRESET) => LibutpError::Reset,
            Ok(sys::UTP_ETIMEDOUT) => LibutpError::TimedOut,
            _ => LibutpError::Other(code),
        }
    }
}

impl fmt::Display for LibutpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LibutpError::Refused => f.write_str("connection refused"),
            LibutpError::Reset => f.write_str("connection reset"),
            LibutpError::TimedOut => f.write_str("connection timed out"),
            LibutpError::Other(c) => write!(f, "libutp error code {c}"),
        }
    }
}

/// What happened to a socket, in the order libutp reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LibutpEvent {
    /// An outgoing connection received its SYN-ACK (`UTP_ON_CONNECT`).
    Connected(SocketId),
    /// A SYN created this socket (`UTP_ON_ACCEPT`). libutp accepts at once: the socket
    /// can write only after the initiator's first DATA packet arrives.
    Accepted {
        /// The new socket.
        socket: SocketId,
        /// The initiator's address.
        from: SocketAddr,
    },
    /// Data arrived in an empty receive buffer (`UTP_ON_READ`); read it with
    /// [`LibutpPeer::read`].
    Readable(SocketId),
    /// The socket can take more data (`UTP_STATE_WRITABLE`).
    Writable(SocketId),
    /// The peer's FIN arrived with everything before it (`UTP_STATE_EOF`).
    Eof(SocketId),
    /// libutp reported an error; the socket stays until [`LibutpPeer::close`].
    Error(SocketId, LibutpError),
    /// libutp freed the socket (`UTP_STATE_DESTROYING`); its id stays readable.
    Destroyed(SocketId),
}

impl LibutpEvent {
    /// The socket the event is about.
    pub fn socket(&self) -> SocketId {
        match *self {
            LibutpEvent::Connected(s)
            | LibutpEvent::Readable(s)
            | LibutpEvent::Writable(s)
            | LibutpEvent::Eof(s)
            | LibutpEvent::Error(s, _)
            | LibutpEvent::Destroyed(s) => s,
            LibutpEvent::Accepted { socket, .. } => socket,
        }
    }
}

/// What the callbacks showed about one socket, plus libutp's delay estimates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LibutpSocketStats {
    /// Payload bytes libutp delivered in order (`UTP_ON_READ`).
    pub bytes_received: u64,
    /// Payload bytes `utp_write` accepted.
    pub bytes_written: u64,
    /// Received bytes not yet taken by [`LibutpPeer::read`].
    pub bytes_buffered: usize,
    /// Delay samples libutp reported (`UTP_ON_DELAY_SAMPLE`).
    pub delay_samples: u64,
    /// The latest of them: libutp's queuing-delay estimate in ms.
    pub last_delay_sample_ms: i32,
    /// libutp's own one-way delay estimate, µs (`utp_get_delays`, while the socket lives).
    pub our_delay_us: u32,
    /// The peer's delay estimate as libutp sees it, µs (`utp_get_delays`).
    pub their_delay_us: u32,
    /// Whether the socket completed its handshake (connect side) or was accepted.
    pub connected: bool,
    /// Whether the peer's FIN arrived with everything before it.
    pub eof: bool,
    /// The error libutp reported, if any.
    pub error: Option<LibutpError>,
    /// Whether [`LibutpPeer::close`] was called.
    pub closed: bool,
    /// Whether libutp freed the socket.
    pub destroyed: bool,
}

/// One socket's bookkeeping.
struct Sock {
    /// The libutp socket; null once libutp freed it.
    ptr: *mut sys::utp_socket,
    remote: SocketAddr,
    recv: VecDeque<u8>,
    shut_write: bool,
    stats: LibutpSocketStats,
}

/// Everything the callbacks touch.
struct State {
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<LibutpEvent>,
    /// By our own id. A peer holds a handful: a B-tree finds one in a few comparisons,
    /// where SipHash cost a tenth of a simulation with a libutp node.
    sockets: BTreeMap<u32, Sock>,
    next_id: u32,
    accept_incoming: bool,
}

/// The block the context's userdata points to. Only ever used through `&Shared`.
struct Shared {
    /// libutp's clock, µs (the caller's `now` + [`EPOCH_OFFSET`]); never goes back.
    clock_us: Cell<u64>,
    /// SplitMix64 state of libutp's random numbers.
    rng: Cell<u64>,
    /// Values the next random draws return before the generator is used again.
    forced: RefCell<VecDeque<u64>>,
    /// A callback's panic, resumed once libutp returns.
    panic: Cell<Option<Box<dyn Any + Send>>>,
    state: RefCell<State>,
}

impl Shared {
    fn next_random(&self) -> u64 {
        if let Some(v) = self.forced.borrow_mut().pop_front() {
            return v;
        }
        let (value, next) = crate::vnet::splitmix64(self.rng.get());
        self.rng.set(next);
        value
    }

    fn socket_of(args: &sys::utp_callback_arguments) -> Option<u32> {
        if args.socket.is_null() {
            return None;
        }
        // SAFETY: libutp passes a live socket; `utp_get_userdata` only reads a field.
        let data = unsafe { sys::utp_get_userdata(args.socket) };
        let id = data as usize;
        (id != 0).then_some(id as u32)
    }
}

/// One libutp context, driven by the caller in virtual time.
///
/// Calling order, as for [`utp::Endpoint`]: [`LibutpPeer::handle_datagram`] for each
/// datagram that arrives; [`LibutpPeer::handle_timeout`] when [`LibutpPeer::poll_timeout`]
/// says; application calls; [`LibutpPeer::poll_transmit`] until `None`;
/// [`LibutpPeer::poll_event`] until `None`. Every call that takes `now` moves libutp's
/// clock (it never goes back).
pub struct LibutpPeer {
    ctx: *mut sys::utp_context,
    shared: Rc<Shared>,
    local: SocketAddr,
    /// libutp's `last_check` (ms of its clock), mirrored to know when it ticks next.
    last_check_ms: Option<u64>,
    /// Datagrams were processed since the deferred ACKs were last issued.
    acks_pending: bool,
    /// The datagram being handed to libutp, with its zero tail (reused).
    scratch: Vec<u8>,
}

impl fmt::Debug for LibutpPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LibutpPeer")
            .field("local", &self.local)
            .field("live_sockets", &self.live_sockets())
            .finish_non_exhaustive()
    }
}

impl LibutpPeer {
    /// A libutp context on `local_addr` (the address datagrams to it carry), its random
    /// numbers (connection ids, initial sequence numbers) drawn from `seed`. Incoming
    /// connections are accepted.
    pub fn new(local_addr: SocketAddr, seed: u64) -> Self {
        let shared = Rc::new(Shared {
            clock_us: Cell::new(duration_us(EPOCH_OFFSET)),
            rng: Cell::new(seed),
            forced: RefCell::new(VecDeque::new()),
            panic: Cell::new(None),
            state: RefCell::new(State {
                outbox: VecDeque::new(),
                events: VecDeque::new(),
                sockets: BTreeMap::new(),
                next_id: 1,
                accept_incoming: true,
            }),
        });
        // SAFETY: version 2 is the only one libutp knows; it returns a fresh context.
        let ctx = unsafe { sys::utp_init(2) };
        assert!(!ctx.is_null(), "utp_init failed");
        // SAFETY: `ctx` is live. The userdata points into the `Rc` this peer owns, which
        // outlives the context (`Drop` destroys the context first); it is only ever
        // turned back into a shared reference.
        unsafe {
            sys::utp_context_set_userdata(ctx, Rc::as_ptr(&shared) as *mut c_void);
            for name in [
                sys::UTP_ON_FIREWALL,
                sys::UTP_ON_ACCEPT,
                sys::UTP_ON_CONNECT,
                sys::UTP_ON_ERROR,
                sys::UTP_ON_READ,
                sys::UTP_ON_STATE_CHANGE,
                sys::UTP_GET_READ_BUFFER_SIZE,
                sys::UTP_ON_DELAY_SAMPLE,
                sys::UTP_GET_MILLISECONDS,
                sys::UTP_GET_MICROSECONDS,
                sys::UTP_GET_RANDOM,
                sys::UTP_SENDTO,
            ] {
                sys::utp_set_callback(ctx, name as c_int, Some(callback));
            }
        }
        LibutpPeer {
            ctx,
            shared,
            local: local_addr,
            last_check_ms: None,
            acks_pending: false,
            scratch: Vec::new(),
        }
    }

    /// The address this peer was made with.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether SYNs are accepted (`UTP_ON_FIREWALL` answers "allow"). Default true.
    pub fn set_accept_incoming(&mut self, accept: bool) {
        self.shared.state.borrow_mut().accept_incoming = accept;
    }

    /// Sets libutp's receive buffer (`UTP_RCVBUF`, default 1 MiB) for sockets made
    /// from now on; it bounds the window libutp advertises.
    pub fn set_recv_buffer(&mut self, bytes: u32) {
        self.set_option(sys::UTP_RCVBUF, bytes);
    }

    /// Sets libutp's send buffer (`UTP_SNDBUF`, default 1 MiB) for sockets made from
    /// now on; it bounds libutp's congestion window.
    pub fn set_send_buffer(&mut self, bytes: u32) {
        self.set_option(sys::UTP_SNDBUF, bytes);
    }

    fn set_option(&mut self, opt: u32, bytes: u32) {
        let val = c_int::try_from(bytes.max(1)).unwrap_or(c_int::MAX);
        // SAFETY: `ctx` is live; the option is one libutp knows, the value ≥ 1.
        unsafe { sys::utp_context_set_option(self.ctx, opt as c_int, val) };
    }

    /// Opens a connection to `remote`: libutp sends its SYN at once.
    /// [`LibutpEvent::Connected`] or [`LibutpEvent::Error`] follows.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> SocketId {
        self.set_clock(now);
        let id = {
            let mut st = self.shared.state.borrow_mut();
            let id = st.next_id;
            st.next_id += 1;
            id
        };
        // SAFETY: `ctx` is live; a new socket is returned.
        let ptr = unsafe { sys::utp_create_socket(self.ctx) };
        assert!(!ptr.is_null(), "utp_create_socket failed");
        // SAFETY: `ptr` is the socket just made; the userdata is our id, never a pointer.
        unsafe { sys::utp_set_userdata(ptr, id as usize as *mut c_void) };
        self.shared.state.borrow_mut().sockets.insert(
            id,
            Sock {
                ptr,
                remote,
                recv: VecDeque::new(),
                shut_write: false,
                stats: LibutpSocketStats::default(),
            },
        );
        let (sa, len) = to_sockaddr(remote);
        // SAFETY: `ptr` is a new, uninitialised socket (utp_connect's precondition);
        // `sa` holds a valid address of `len` bytes and outlives the call. The call
        // re-enters our callbacks, which is why no borrow is held here.
        let rc = unsafe { sys::utp_connect(ptr, (&raw const sa).cast(), len) };
        self.resume_panic();
        assert_eq!(rc, 0, "utp_connect failed");
        SocketId(id)
    }

    /// Like [`LibutpPeer::connect`], with libutp's initial seq_nr chosen instead of
    /// drawn. libutp's fast retransmit works only for about half of all initial seq_nrs
    /// (checklist L bug 1); benchmarks pin one for which it works, such as 0x4000, so
    /// their figures do not swing with the seed. (libutp draws the connection id, then
    /// the seq_nr; the id is drawn as usual.)
    pub fn connect_with_seq_nr(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        seq_nr: u16,
    ) -> SocketId {
        let id = self.shared.next_random();
        {
            let mut forced = self.shared.forced.borrow_mut();
            forced.push_back(id);
            forced.push_back(u64::from(seq_nr));
        }
        let socket = self.connect(now, remote);
        self.shared.forced.borrow_mut().clear();
        socket
    }

    /// Processes one datagram from `from`. Returns whether libutp took it for uTP.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        self.set_clock(now);
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(data);
        buf.resize(data.len() + PADDING, 0);
        let (sa, len) = to_sockaddr(from);
        // SAFETY: `ctx` is live; `buf` holds `data.len()` bytes plus a zeroed tail that
        // libutp's over-read may touch; `sa` is a valid address of `len` bytes.
        let rc = unsafe {
            sys::utp_process_udp(
                self.ctx,
                buf.as_ptr(),
                data.len(),
                (&raw const sa).cast(),
                len,
            )
        };
        self.acks_pending = true;
        self.resume_panic();
        rc == 1
    }

    /// Runs libutp's timers (`utp_check_timeouts`). libutp does its work at most once
    /// per [`TICK`]; calls in between are cheap no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_clock(now);
        let ms = self.shared.clock_us.get() / 1000;
        // libutp's own rule (last_check starts at 0; our clock starts at ≥ 1 s).
        if ms - self.last_check_ms.unwrap_or(0) >= TICK.as_millis() as u64 {
            self.last_check_ms = Some(ms);
        }
        // SAFETY: `ctx` is live. Sockets freed inside report DESTROYING first, and our
        // callback forgets their pointers.
        unsafe { sys::utp_check_timeouts(self.ctx) };
        self.resume_panic();
    }

    /// When [`LibutpPeer::handle_timeout`] has work next: libutp's next 500 ms tick, or
    /// `now` if it is overdue.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let next = match self.last_check_ms {
            None => return now,
            Some(ms) => (ms + TICK.as_millis() as u64) * 1000,
        };
        let next = Instant::from_micros(next.saturating_sub(duration_us(EPOCH_OFFSET)));
        next.max(now)
    }

    /// The next datagram libutp sent, with its destination. The first call after
    /// datagrams were handled issues libutp's deferred ACKs (`utp_issue_deferred_acks`).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        if self.acks_pending {
            self.acks_pending = false;
            // SAFETY: `ctx` is live; the clock is that of the latest datagram.
            unsafe { sys::utp_issue_deferred_acks(self.ctx) };
            self.resume_panic();
        }
        self.shared.state.borrow_mut().outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LibutpEvent> {
        self.shared.state.borrow_mut().events.pop_front()
    }

    /// Writes as much of `data` as libutp's window takes now (libutp has no send
    /// buffer: it packetises and sends at once). Returns the bytes taken; 0 when the
    /// socket is not connected, is full, was shut down or is gone. Try again after
    /// [`LibutpEvent::Writable`].
    pub fn write(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let Some(ptr) = self.usable(socket, true) else {
            return 0;
        };
        self.set_clock(now);
        let n = {
            let _guard = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: `ptr` is live (not freed, not closed) and connected or not, which
            // utp_write checks itself; it only reads `data.len()` bytes of `data` (the
            // `*mut` in its signature is never written through).
            unsafe { sys::utp_write(ptr, data.as_ptr() as *mut c_void, data.len()) }
        };
        self.resume_panic();
        let n = usize::try_from(n).unwrap_or(0);
        if let Some(s) = self.shared.state.borrow_mut().sockets.get_mut(&socket.0) {
            s.stats.bytes_written += n as u64;
        }
        n
    }

    /// Moves received bytes into `buf`; returns how many. When bytes were taken, libutp
    /// learns (`utp_read_drained`) and may announce the larger window.
    pub fn read(&mut self, now: Instant, socket: SocketId, buf: &mut [u8]) -> usize {
        let n = {
            let mut st = self.shared.state.borrow_mut();
            let Some(s) = st.sockets.get_mut(&socket.0) else {
                return 0;
            };
            let n = buf.len().min(s.recv.len());
            let (front, back) = s.recv.as_slices();
            let k = n.min(front.len());
            buf[..k].copy_from_slice(&front[..k]);
            buf[k..n].copy_from_slice(&back[..n - k]);
            s.recv.drain(..n);
            n
        };
        if n > 0 {
            self.drained(now, socket);
        }
        n
    }

    /// Takes every received byte of `socket` (see [`LibutpPeer::read`]).
    pub fn read_all(&mut self, now: Instant, socket: SocketId) -> Vec<u8> {
        let data: Vec<u8> = {
            let mut st = self.shared.state.borrow_mut();
            match st.sockets.get_mut(&socket.0) {
                Some(s) => s.recv.drain(..).collect(),
                None => return Vec::new(),
            }
        };
        if !data.is_empty() {
            self.drained(now, socket);
        }
        data
    }

    fn drained(&mut self, now: Instant, socket: SocketId) {
        if let Some(ptr) = self.usable(socket, false) {
            self.set_clock(now);
            // SAFETY: `ptr` is live and was initialised (connect or accept).
            unsafe { sys::utp_read_drained(ptr) };
            self.resume_panic();
            // A window that opened from a small one is announced by a deferred ACK
            // (libutp's `schedule_ack`): the next poll_transmit issues it. Without that
            // it waited for the next datagram, and a sender that the small window had
            // stopped sent none: both sides stalled until libutp's zero-window probe,
            // seconds later (1 run in about 40 of a 3 MB transfer over loopback).
            self.acks_pending = true;
        }
    }

    /// Closes the sending direction (`utp_shutdown(SHUT_WR)`): a FIN follows the data
    /// already written; reading goes on. Does nothing on a closed or freed socket.
    pub fn shutdown(&mut self, now: Instant, socket: SocketId) {
        let Some(ptr) = self.usable(socket, false) else {
            return;
        };
        if let Some(s) = self.shared.state.borrow_mut().sockets.get_mut(&socket.0) {
            if s.shut_write {
                return;
            }
            s.shut_write = true;
        }
        self.set_clock(now);
        // SAFETY: `ptr` is live and not closed (so not in CS_DESTROY, which asserts).
        unsafe { sys::utp_shutdown(ptr, sys::SHUT_WR as c_int) };
        self.resume_panic();
    }

    /// Closes the socket (`utp_close`): libutp sends a FIN after the data written,
    /// discards further incoming data, and frees the socket once the FIN is
    /// acknowledged (or at its next tick if it had failed or was not connected).
    /// Idempotent.
    ///
    /// libutp bug: a RESET that arrives after `close` of a socket that had failed (or
    /// was still connecting) puts it back from "destroy" to "reset", and libutp never
    /// frees it. Close a failed socket once no more packets of its connection are on
    /// the way.
    pub fn close(&mut self, now: Instant, socket: SocketId) {
        let Some(ptr) = self.usable(socket, false) else {
            return;
        };
        if let Some(s) = self.shared.state.borrow_mut().sockets.get_mut(&socket.0) {
            s.stats.closed = true;
        }
        self.set_clock(now);
        // SAFETY: `ptr` is live and `utp_close` was not called on it before (the
        // `closed` flag above), so libutp's state assertion holds.
        unsafe { sys::utp_close(ptr) };
        self.resume_panic();
    }

    /// Received bytes waiting to be read.
    pub fn readable_bytes(&self, socket: SocketId) -> usize {
        let st = self.shared.state.borrow();
        st.sockets.get(&socket.0).map_or(0, |s| s.recv.len())
    }

    /// The remote address of `socket`.
    pub fn remote(&self, socket: SocketId) -> Option<SocketAddr> {
        let st = self.shared.state.borrow();
        st.sockets.get(&socket.0).map(|s| s.remote)
    }

    /// The statistics of `socket` (also after libutp freed it).
    pub fn stats(&self, socket: SocketId) -> Option<LibutpSocketStats> {
        let (ptr, mut stats) = {
            let st = self.shared.state.borrow();
            let s = st.sockets.get(&socket.0)?;
            let mut stats = s.stats.clone();
            stats.bytes_buffered = s.recv.len();
            (s.ptr, stats)
        };
        if !ptr.is_null() {
            let (mut ours, mut theirs, mut age) = (0u32, 0u32, 0u32);
            // SAFETY: `ptr` is live (freed sockets have a null pointer); the three
            // outputs are valid for writes. No callback is made.
            let rc = unsafe { sys::utp_get_delays(ptr, &mut ours, &mut theirs, &mut age) };
            if rc == 0 {
                stats.our_delay_us = ours;
                stats.their_delay_us = theirs;
            }
        }
        Some(stats)
    }

    /// Sockets libutp has not freed.
    pub fn live_sockets(&self) -> usize {
        let st = self.shared.state.borrow();
        st.sockets.values().filter(|s| !s.ptr.is_null()).count()
    }

    /// Every socket id this peer has made or accepted, in order.
    pub fn sockets(&self) -> Vec<SocketId> {
        let st = self.shared.state.borrow();
        let mut ids: Vec<SocketId> = st.sockets.keys().map(|&k| SocketId(k)).collect();
        ids.sort();
        ids
    }

    /// The live pointer of `socket`, unless it is gone or (when `writing`, or for
    /// close/shutdown) already closed by us.
    fn usable(&self, socket: SocketId, writing: bool) -> Option<*mut sys::utp_socket> {
        let st = self.shared.state.borrow();
        let s = st.sockets.get(&socket.0)?;
        if s.ptr.is_null() || s.stats.closed || (writing && s.shut_write) {
            return None;
        }
        Some(s.ptr)
    }

    fn set_clock(&self, now: Instant) {
        let t = now.as_micros().saturating_add(duration_us(EPOCH_OFFSET));
        if t > self.shared.clock_us.get() {
            self.shared.clock_us.set(t);
        }
    }

    fn resume_panic(&self) {
        if let Some(payload) = self.shared.panic.take() {
            panic::resume_unwind(payload);
        }
    }
}

impl Drop for LibutpPeer {
    fn drop(&mut self) {
        // SAFETY: `ctx` is live and never used again; the context is gone before the
        // `Rc` its userdata points into (fields drop after this body).
        unsafe { sys::utp_destroy(self.ctx) };
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The one callback for every type libutp calls.
///
/// # Safety
///
/// Called by libutp only, with a valid `args` whose context's userdata is the `Shared`
/// of a live [`LibutpPeer`].
unsafe extern "C" fn callback(args: *mut sys::utp_callback_arguments) -> u64 {
    // SAFETY: libutp passes a pointer to arguments on its stack, valid for this call.
    let args = unsafe { &*args };
    // SAFETY: the userdata is `Rc::as_ptr` of the peer's `Shared`, alive while the
    // context is (see `LibutpPeer::new` and `Drop`); only shared references are made.
    let shared = unsafe { &*(sys::utp_context_get_userdata(args.context) as *const Shared) };
    match panic::catch_unwind(AssertUnwindSafe(|| dispatch(shared, args))) {
        Ok(v) => v,
        Err(payload) => {
            // Keep the first panic; the Rust caller resumes it when libutp returns.
            let first = shared.panic.take();
            shared.panic.set(Some(first.unwrap_or(payload)));
            0
        }
    }
}

fn dispatch(shared: &Shared, args: &sys::utp_callback_arguments) -> u64 {
    let ty = u32::try_from(args.callback_type).unwrap_or(u32::MAX);
    match ty {
        sys::UTP_GET_MILLISECONDS => shared.clock_us.get() / 1000,
        sys::UTP_GET_MICROSECONDS => shared.clock_us.get(),
        sys::UTP_GET_RANDOM => shared.next_random() & 0xffff_ffff,
        sys::UTP_GET_READ_BUFFER_SIZE => {
            let Some(id) = Shared::socket_of(args) else {
                return 0;
            };
            let st = shared.state.borrow();
            st.sockets.get(&id).map_or(0, |s| s.recv.len() as u64)
        }
        sys::UTP_SENDTO => {
            // SAFETY: for UTP_SENDTO, `buf` holds `len` bytes and `address` is the
            // destination (the union's active member), `address_len` bytes long.
            let (data, to) = unsafe {
                let data = std::slice::from_raw_parts(args.buf, args.len).to_vec();
                let to =
                    from_sockaddr(args.unnamed_field1.address, args.unnamed_field2.address_len);
                (data, to)
            };
            let to = to.expect("libutp sent to an address of an unknown family");
            shared.state.borrow_mut().outbox.push_back((to, data));
            0
        }
        sys::UTP_ON_FIREWALL => {
            // "true means block".
            u64::from(!shared.state.borrow().accept_incoming)
        }
        sys::UTP_ON_ACCEPT => {
            // SAFETY: for UTP_ON_ACCEPT, `address` (active member) is the initiator's
            // address, `address_len` bytes long.
            let from = unsafe {
                from_sockaddr(args.unnamed_field1.address, args.unnamed_field2.address_len)
            }
            .expect("SYN from an address of an unknown family");
            let id = {
                let mut st = shared.state.borrow_mut();
                let id = st.next_id;
                st.next_id += 1;
                st.sockets.insert(
                    id,
                    Sock {
                        ptr: args.socket,
                        remote: from,
                        recv: VecDeque::new(),
                        shut_write: false,
                        stats: LibutpSocketStats {
                            connected: true,
                            ..LibutpSocketStats::default()
                        },
                    },
                );
                st.events.push_back(LibutpEvent::Accepted {
                    socket: SocketId(id),
                    from,
                });
                id
            };
            // SAFETY: `args.socket` is the live socket just accepted; the userdata is
            // our id. `utp_set_userdata` only writes a field (no callback).
            unsafe { sys::utp_set_userdata(args.socket, id as usize as *mut c_void) };
            0
        }
        sys::UTP_ON_CONNECT => {
            with_socket(shared, args, |s, id, events| {
                s.stats.connected = true;
                events.push_back(LibutpEvent::Connected(id));
            });
            0
        }
        sys::UTP_ON_ERROR => {
            // SAFETY: for UTP_ON_ERROR, `error_code` is the union's active member.
            let err = LibutpError::from_code(unsafe { args.unnamed_field1.error_code });
            with_socket(shared, args, |s, id, events| {
                s.stats.error = Some(err);
                events.push_back(LibutpEvent::Error(id, err));
            });
            0
        }
        sys::UTP_ON_READ => {
            // SAFETY: for UTP_ON_READ, `buf` holds `len` bytes of payload.
            let data = unsafe { std::slice::from_raw_parts(args.buf, args.len) };
            with_socket(shared, args, |s, id, events| {
                if s.recv.is_empty() && !data.is_empty() {
                    events.push_back(LibutpEvent::Readable(id));
                }
                s.recv.extend(data.iter().copied());
                s.stats.bytes_received += data.len() as u64;
            });
            0
        }
        sys::UTP_ON_DELAY_SAMPLE => {
            // SAFETY: for UTP_ON_DELAY_SAMPLE, `sample_ms` is the active member.
            let sample = unsafe { args.unnamed_field1.sample_ms };
            with_socket(shared, args, |s, _, _| {
                s.stats.delay_samples += 1;
                s.stats.last_delay_sample_ms = sample;
            });
            0
        }
        sys::UTP_ON_STATE_CHANGE => {
            // SAFETY: for UTP_ON_STATE_CHANGE, `state` is the active member.
            let state = u32::try_from(unsafe { args.unnamed_field1.state }).unwrap_or(0);
            with_socket(shared, args, |s, id, events| match state {
                sys::UTP_STATE_CONNECT => {
                    s.stats.connected = true;
                    events.push_back(LibutpEvent::Connected(id));
                }
                sys::UTP_STATE_WRITABLE => events.push_back(LibutpEvent::Writable(id)),
                sys::UTP_STATE_EOF => {
                    s.stats.eof = true;
                    events.push_back(LibutpEvent::Eof(id));
                }
                sys::UTP_STATE_DESTROYING => {
                    // libutp frees the socket right after this returns.
                    s.ptr = std::ptr::null_mut();
                    s.stats.destroyed = true;
                    events.push_back(LibutpEvent::Destroyed(id));
                }
                _ => {}
            });
            0
        }
        _ => 0,
    }
}

/// Runs `f` on the socket a callback is about, if it is one of ours.
fn with_socket(
    shared: &Shared,
    args: &sys::utp_callback_arguments,
    f: impl FnOnce(&mut Sock, SocketId, &mut VecDeque<LibutpEvent>),
) {
    let Some(id) = Shared::socket_of(args) else {
        return;
    };
    let mut st = shared.state.borrow_mut();
    let State {
        sockets, events, ..
    } = &mut *st;
    if let Some(s) = sockets.get_mut(&id) {
        f(s, SocketId(id), events);
    }
}

/// `addr` as a C socket address and its length.
fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, sys::socklen_t) {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage` (plain integers).
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in6`.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as sys::socklen_t)
}

/// The address libutp handed to a callback.
///
/// # Safety
///
/// `sa` is null or points to a socket address of at least `len` bytes.
unsafe fn from_sockaddr(sa: *const libc::sockaddr, len: sys::socklen_t) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    let len = len as usize;
    // SAFETY: the caller vouches for `sa`; every socket address starts with its family.
    let family = c_int::from(unsafe { (*sa).sa_family });
    match family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: an AF_INET address of sufficient length is a `sockaddr_in`.
            let sin = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: an AF_INET6 address of sufficient length is a `sockaddr_in6`.
            let sin6 = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for addr in ["10.0.0.1:6881", "[2001:db8::7]:51413", "127.0.0.1:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (sa, len) = to_sockaddr(addr);
            // SAFETY: `sa` is a valid address of `len` bytes.
            let back = unsafe { from_sockaddr((&raw const sa).cast(), len) };
            assert_eq!(back, Some(addr));
        }
    }

    #[test]
    fn two_libutp_peers_talk() {
        // libutp against itself, to check the wrapper before it meets our core.
        let a_addr: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b_addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        let mut a = LibutpPeer::new(a_addr, 1);
        let mut b = LibutpPeer::new(b_addr, 2);
        let mut now = Instant::from_millis(5);
        let sa = a.connect(now, b_addr);
        let mut sb = None;
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        for _ in 0..20_000 {
            now += Duration::from_millis(1);
            a.handle_timeout(now);
            b.handle_timeout(now);
            while let Some(ev) = a.poll_event() {
                if let LibutpEvent::Eof(_) = ev {
                    panic!("unexpected EOF on the sender");
                }
            }
            while let Some(ev) = b.poll_event() {
                if let LibutpEvent::Accepted { socket, from } = ev {
                    assert_eq!(from, a_addr);
                    sb = Some(socket);
                }
            }
            if sent < payload.len() {
                sent += a.write(now, sa, &payload[sent..]);
            }
            if let Some(s) = sb {
                got.extend(b.read_all(now, s));
            }
            // 1 ms links both ways: deliver what was sent in this step at the next.
            let to_b: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
            let to_a: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
            for (dst, d) in to_b {
                assert_eq!(dst, b_addr);
                b.handle_datagram(now, a_addr, &d);
            }
            for (dst, d) in to_a {
                assert_eq!(dst, a_addr);
                a.handle_datagram(now, b_addr, &d);
            }
            if got.len() == payload.len() {
                break;
            }
        }
        assert!(
            got == payload,
            "got {} of {} bytes",
            got.len(),
            payload.len()
        );
        let stats = b.stats(sb.unwrap()).unwrap();
        assert_eq!(stats.bytes_received, payload.len() as u64);
        assert_eq!(a.stats(sa).unwrap().bytes_written, payload.len() as u64);
    }
}
