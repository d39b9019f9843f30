//! Real libutp on a real UDP socket, in wall-clock time, in a thread of its own.
//!
//! A [`LibutpUdp`] binds a UDP socket and runs one libutp context on it, driven by a
//! [`LibutpPeer`] (the same wrapper the virtual-time tests use, so the callbacks, the
//! 64-byte padding rule and the deferred-ACK rule of checklist section L are kept in one
//! place) with the wall clock as its `now`. libutp is not `Send`: the context lives and
//! dies inside the thread, and the caller talks to it through shared buffers guarded by
//! a mutex, a condition variable for the caller's waits and a wake-up socket for the
//! thread's.
//!
//! The thread's loop, as a libutp application does it: receive every datagram waiting
//! (up to a batch), hand each to `utp_process_udp`; run `utp_check_timeouts` when its
//! 500 ms tick is due; move the caller's queued bytes into `utp_write` and the received
//! bytes out to the caller; issue the deferred ACKs and send what libutp queued, one
//! datagram per system call; sleep in `poll(2)` until a datagram, a wake-up or the next
//! tick.
//!
//! What a caller should know:
//!
//! - Every call takes `&self`; a `LibutpUdp` can be shared between threads (in an
//!   `Arc`). Blocking calls take a timeout and fail with `ErrorKind::TimedOut`.
//! - Writes go to a per-connection buffer of [`LibutpUdpConfig::app_buffer`] bytes;
//!   libutp itself has no send buffer. Received bytes wait in a buffer of the same size;
//!   beyond it they stay in libutp's, whose size shrinks the window it advertises.
//! - A libutp acceptor cannot write until the initiator's first DATA packet arrived
//!   (libutp stays in `CS_SYN_RECV` until then): protocols where the acceptor speaks
//!   first do not work against libutp. Queued bytes wait until it can.
//! - libutp has no abort: [`LibutpUdp::close`] sends a FIN after the queued bytes. To
//!   make libutp forget its connections abruptly (it then answers their packets with a
//!   RESET), drop the `LibutpUdp` and bind a new one on the same address.
//! - The random numbers (connection ids, initial sequence numbers) come from
//!   [`LibutpUdpConfig::seed`]. libutp's fast retransmit is dead for an outgoing
//!   connection whose initial seq_nr lies in the upper half of the 16-bit space
//!   (checklist L bug 1): benchmarks pick a seed with [`seed_for_fast_retransmit`].
//! - The thread's CPU time is [`LibutpUdp::cpu_time`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::thread::JoinHandleExt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use utp::Instant;

use crate::libutp::{LibutpError, LibutpEvent, LibutpPeer, SocketId};

/// Datagrams received in one go before the ACKs and the application get a turn.
const RECV_BATCH: usize = 256;

/// How long [`LibutpUdp::connect`] waits for the thread to make the socket.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of a [`LibutpUdp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibutpUdpConfig {
    /// Seed of libutp's random numbers; `None` takes one from the clock and process id.
    pub seed: Option<u64>,
    /// libutp's receive buffer (`UTP_RCVBUF`): the most it advertises. Default 1 MiB,
    /// libutp's own default.
    pub recv_buffer: u32,
    /// libutp's send buffer (`UTP_SNDBUF`): the most it has in flight. Default 1 MiB,
    /// libutp's own default.
    pub send_buffer: u32,
    /// Kernel socket buffers asked for (`SO_RCVBUF`, `SO_SNDBUF`; capped by
    /// `net.core.rmem_max`). Default 4 MiB.
    pub socket_buffer: usize,
    /// Bytes a connection buffers for the caller in each direction. Default 1 MiB.
    pub app_buffer: usize,
    /// Whether incoming connections are accepted. Default true.
    pub accept_incoming: bool,
}

impl Default for LibutpUdpConfig {
    fn default() -> Self {
        LibutpUdpConfig {
            seed: None,
            recv_buffer: 1 << 20,
            send_buffer: 1 << 20,
            socket_buffer: 4 << 20,
            app_buffer: 1 << 20,
            accept_incoming: true,
        }
    }
}

/// What the caller can see of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnStatus {
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// The handshake completed (an outgoing connection), or the SYN was accepted.
    pub connected: bool,
    /// The peer's FIN arrived with everything before it (reads end once the buffered
    /// bytes are taken).
    pub eof: bool,
    /// The error libutp reported (reset, refused, timed out).
    pub error: Option<LibutpError>,
    /// [`LibutpUdp::shutdown`] was called.
    pub shutdown: bool,
    /// [`LibutpUdp::close`] was called.
    pub closed: bool,
    /// libutp freed the socket (after a close whose FIN was acknowledged, or an error).
    pub destroyed: bool,
    /// Bytes `utp_write` took.
    pub bytes_written: u64,
    /// Bytes libutp delivered.
    pub bytes_received: u64,
    /// Bytes written by the caller that libutp has not taken yet.
    pub send_buffered: usize,
    /// Bytes received that the caller has not read yet (both buffers).
    pub recv_buffered: usize,
}

/// Counters of the UDP socket and the thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LibutpUdpStats {
    /// Datagrams received and handed to libutp.
    pub datagrams_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Sends that failed (other than "would block", which is retried).
    pub send_errors: u64,
    /// Sends that found the kernel buffer full and waited.
    pub send_would_block: u64,
    /// Iterations of the thread's loop that slept in `poll(2)`.
    pub sleeps: u64,
}

/// libutp on a UDP socket, in a thread of its own. See the module documentation.
///
/// Dropping it stops the thread, destroys the libutp context and closes the socket:
/// its connections vanish without a FIN or a RESET.
pub struct LibutpUdp {
    shared: Arc<Shared>,
    waker: UnixDatagram,
    thread: Option<JoinHandle<()>>,
    local: SocketAddr,
    app_buffer: usize,
}

impl std::fmt::Debug for LibutpUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibutpUdp")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// A request that the thread carries out once the queued bytes are in libutp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    No,
    Asked,
    Done,
}

/// One connection as the caller and the thread share it.
#[derive(Debug)]
struct Conn {
    send: VecDeque<u8>,
    recv: VecDeque<u8>,
    /// Bytes received that are still in libutp's wrapper (the caller's buffer was full).
    upstream: usize,
    shutdown: Request,
    close: Request,
    status: ConnStatus,
}

impl Conn {
    fn new(remote: SocketAddr, connected: bool) -> Conn {
        Conn {
            send: VecDeque::new(),
            recv: VecDeque::new(),
            upstream: 0,
            shutdown: Request::No,
            close: Request::No,
            status: ConnStatus {
                remote: Some(remote),
                connected,
                ..ConnStatus::default()
            },
        }
    }

    fn snapshot(&self) -> ConnStatus {
        let mut s = self.status.clone();
        s.send_buffered = self.send.len();
        s.recv_buffered = self.recv.len() + self.upstream;
        s
    }
}

#[derive(Debug, Default)]
struct AppState {
    conns: HashMap<SocketId, Conn>,
    accept_queue: VecDeque<(SocketId, SocketAddr)>,
    connects: VecDeque<(u64, SocketAddr)>,
    replies: HashMap<u64, SocketId>,
    next_token: u64,
    stop: bool,
    /// Why the thread ended (it failed, or was stopped).
    failure: Option<String>,
    stats: LibutpUdpStats,
    final_cpu: Option<Duration>,
    /// Grows whenever the thread changed something the caller can see.
    generation: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<AppState>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LibutpUdp {
    /// Binds `addr` with the default configuration and starts the thread.
    pub fn bind(addr: SocketAddr) -> io::Result<LibutpUdp> {
        LibutpUdp::bind_with_config(addr, LibutpUdpConfig::default())
    }

    /// Binds `addr` with `config` and starts the thread.
    pub fn bind_with_config(addr: SocketAddr, config: LibutpUdpConfig) -> io::Result<LibutpUdp> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        {
            let s = socket2::SockRef::from(&socket);
            // Best effort: the kernel caps both at net.core.{r,w}mem_max.
            let _ = s.set_recv_buffer_size(config.socket_buffer);
            let _ = s.set_send_buffer_size(config.socket_buffer);
        }
        let local = socket.local_addr()?;
        let (wake_tx, wake_rx) = UnixDatagram::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let seed = config.seed.unwrap_or_else(clock_seed);
        let app_buffer = config.app_buffer.max(1);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("libutp {local}"))
                .spawn(move || run(shared, socket, wake_rx, config, seed, local))?
        };
        Ok(LibutpUdp {
            shared,
            waker: wake_tx,
            thread: Some(thread),
            local,
            app_buffer,
        })
    }

    /// The local address of the UDP socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Opens a connection to `remote` (libutp sends its SYN at once) and returns its id
    /// without waiting for the handshake: see [`LibutpUdp::wait_connected`]. Bytes
    /// written before the handshake completes wait in the buffer.
    pub fn connect(&self, remote: SocketAddr) -> io::Result<SocketId> {
        let token = {
            let mut st = self.shared.lock();
            check_failure(&st)?;
            let token = st.next_token;
            st.next_token += 1;
            st.connects.push_back((token, remote));
            token
        };
        self.wake();
        let deadline = deadline(COMMAND_TIMEOUT);
        let mut st = self.shared.lock();
        loop {
            if let Some(id) = st.replies.remove(&token) {
                return Ok(id);
            }
            check_failure(&st)?;
            st = self.wait(st, deadline)?;
        }
    }

    /// Waits until the connection `id` completed its handshake; fails with the error
    /// libutp reported (refused, timed out) or `TimedOut` after `timeout`.
    pub fn wait_connected(&self, id: SocketId, timeout: Duration) -> io::Result<()> {
        let deadline = deadline(timeout);
        let mut st = self.shared.lock();
        loop {
            check_failure(&st)?;
            let c = conn(&mut st, id)?;
            if let Some(e) = c.status.error {
                return Err(io_error(e));
            }
            if c.status.connected {
                return Ok(());
            }
            if c.status.destroyed {
                return Err(io::ErrorKind::NotConnected.into());
            }
            st = self.wait(st, deadline)?;
        }
    }

    /// The next incoming connection, or `None` if there is none now.
    pub fn try_accept(&self) -> Option<(SocketId, SocketAddr)> {
        self.shared.lock().accept_queue.pop_front()
    }

    /// Waits up to `timeout` for the next incoming connection (libutp accepts a SYN at
    /// once, before the initiator's first DATA packet).
    pub fn accept(&self, timeout: Duration) -> io::Result<(SocketId, SocketAddr)> {
        let deadline = deadline(timeout);
        let mut st = self.shared.lock();
        loop {
            if let Some(a) = st.accept_queue.pop_front() {
                return Ok(a);
            }
            check_failure(&st)?;
            st = self.wait(st, deadline)?;
        }
    }

    /// Queues as much of `data` as the connection's buffer has room for; returns how
    /// much (0 when it is full). Fails once the connection failed, was shut down or
    /// closed by us, or libutp freed it.
    pub fn try_write(&self, id: SocketId, data: &[u8]) -> io::Result<usize> {
        let mut st = self.shared.lock();
        let (n, wake) = self.try_write_locked(&mut st, id, data)?;
        drop(st);
        if wake {
            self.wake();
        }
        Ok(n)
    }

    fn try_write_locked(
        &self,
        st: &mut AppState,
        id: SocketId,
        data: &[u8],
    ) -> io::Result<(usize, bool)> {
        check_failure(st)?;
        let app_buffer = self.app_buffer;
        let c = conn(st, id)?;
        if let Some(e) = c.status.error {
            return Err(io_error(e));
        }
        if c.status.closed || c.status.shutdown {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown or close",
            ));
        }
        if c.status.destroyed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let n = app_buffer.saturating_sub(c.send.len()).min(data.len());
        // The thread retries a non-empty buffer whenever libutp may take more; it
        // needs a wake-up only when the buffer was empty.
        let wake = n > 0 && c.send.is_empty();
        c.send.extend(&data[..n]);
        Ok((n, wake))
    }

    /// Queues all of `data`, waiting for room; fails with `TimedOut` after `timeout`.
    pub fn write_all(&self, id: SocketId, mut data: &[u8], timeout: Duration) -> io::Result<()> {
        let deadline = deadline(timeout);
        let mut st = self.shared.lock();
        while !data.is_empty() {
            let (n, wake) = self.try_write_locked(&mut st, id, data)?;
            data = &data[n..];
            if wake {
                self.wake();
            }
            if !data.is_empty() && n == 0 {
                st = self.wait(st, deadline)?;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` until every queued byte of `id` is in libutp's hands.
    pub fn flush(&self, id: SocketId, timeout: Duration) -> io::Result<()> {
        self.wait_for(id, timeout, |s| {
            s.send_buffered == 0 || s.error.is_some() || s.destroyed
        })
        .map(|_| ())
    }

    /// Moves received bytes into `buf`, waiting up to `timeout` for some. Returns 0 at
    /// the end of the stream (the peer's FIN), the error libutp reported once the bytes
    /// before it are read, `NotConnected` for a connection closed by us or freed
    /// without a FIN, and `TimedOut` if nothing came.
    pub fn read(&self, id: SocketId, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let deadline = deadline(timeout);
        let mut st = self.shared.lock();
        loop {
            match self.try_read_locked(&mut st, id, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            st = self.wait(st, deadline)?;
        }
    }

    /// Like [`LibutpUdp::read`] without waiting: `WouldBlock` when nothing is there yet.
    /// Wait for news with [`LibutpUdp::wait_change`].
    pub fn try_read(&self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.shared.lock();
        self.try_read_locked(&mut st, id, buf)
    }

    fn try_read_locked(
        &self,
        st: &mut AppState,
        id: SocketId,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let failure = check_failure(st);
        let c = conn(st, id)?;
        if !c.recv.is_empty() {
            let n = buf.len().min(c.recv.len());
            let (front, back) = c.recv.as_slices();
            let k = n.min(front.len());
            buf[..k].copy_from_slice(&front[..k]);
            buf[k..n].copy_from_slice(&back[..n - k]);
            c.recv.drain(..n);
            if c.upstream > 0 {
                // The thread stopped moving bytes for want of room: there is room now.
                self.wake();
            }
            return Ok(n);
        }
        if c.upstream == 0 {
            if c.status.eof {
                return Ok(0);
            }
            if let Some(e) = c.status.error {
                return Err(io_error(e));
            }
            if c.status.destroyed || c.status.closed {
                return Err(io::ErrorKind::NotConnected.into());
            }
        }
        failure?;
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// A counter that grows whenever the thread changes something a caller waits for:
    /// a connection changed state, bytes arrived in an empty receive buffer, or a send
    /// buffer emptied or fell below half.
    pub fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// Waits up to `timeout` until [`LibutpUdp::generation`] differs from `seen`;
    /// returns the generation then. With `try_read` and `try_write`, this lets one
    /// thread serve many connections without missing a change.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = deadline(timeout);
        let mut st = self.shared.lock();
        while st.generation == seen && st.failure.is_none() {
            match self.wait(st, deadline) {
                Ok(g) => st = g,
                Err(_) => return self.shared.lock().generation,
            }
        }
        st.generation
    }

    /// Reads until the end of the stream (or an error), waiting up to `timeout` in all.
    pub fn read_to_end(&self, id: SocketId, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = deadline(timeout);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.read(id, &mut buf, left)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Half-closes: once the queued bytes are in libutp, `utp_shutdown(SHUT_WR)` sends a
    /// FIN after them. Reading goes on.
    pub fn shutdown(&self, id: SocketId) -> io::Result<()> {
        {
            let mut st = self.shared.lock();
            check_failure(&st)?;
            let c = conn(&mut st, id)?;
            if c.shutdown == Request::No {
                c.shutdown = Request::Asked;
                c.status.shutdown = true;
            }
        }
        self.wake();
        Ok(())
    }

    /// Closes: once the queued bytes are in libutp, `utp_close` sends a FIN after them;
    /// libutp discards further incoming data and frees the socket when its FIN is
    /// acknowledged. Idempotent.
    pub fn close(&self, id: SocketId) -> io::Result<()> {
        {
            let mut st = self.shared.lock();
            check_failure(&st)?;
            let c = conn(&mut st, id)?;
            if c.close == Request::No {
                c.close = Request::Asked;
                c.status.closed = true;
            }
        }
        self.wake();
        Ok(())
    }

    /// The status of connection `id`.
    pub fn status(&self, id: SocketId) -> Option<ConnStatus> {
        self.shared.lock().conns.get(&id).map(Conn::snapshot)
    }

    /// Waits up to `timeout` until `done` holds for the status of `id`; returns that
    /// status, or `TimedOut`. The status is looked at again on each change that
    /// [`LibutpUdp::generation`] counts (the byte counters alone wake nobody).
    pub fn wait_for(
        &self,
        id: SocketId,
        timeout: Duration,
        mut done: impl FnMut(&ConnStatus) -> bool,
    ) -> io::Result<ConnStatus> {
        let deadline = deadline(timeout);
        let mut st = self.shared.lock();
        loop {
            let failure = check_failure(&st);
            let s = conn(&mut st, id)?.snapshot();
            if done(&s) {
                return Ok(s);
            }
            failure?;
            st = self.wait(st, deadline)?;
        }
    }

    /// Connections libutp has not freed.
    pub fn live_connections(&self) -> usize {
        let st = self.shared.lock();
        st.conns.values().filter(|c| !c.status.destroyed).count()
    }

    /// The socket's and the thread's counters.
    pub fn stats(&self) -> LibutpUdpStats {
        self.shared.lock().stats.clone()
    }

    /// CPU time the libutp thread has used (user and system).
    pub fn cpu_time(&self) -> Duration {
        if let Some(t) = self.shared.lock().final_cpu {
            return t;
        }
        self.thread
            .as_ref()
            .and_then(|h| thread_cpu_time(h.as_pthread_t()))
            .unwrap_or_default()
    }

    /// Wakes the thread from `poll(2)`. A full wake-up socket already holds a wake-up.
    fn wake(&self) {
        let _ = self.waker.send(&[1]);
    }

    /// Waits for the thread to change something, until `deadline`.
    fn wait<'a>(
        &'a self,
        st: MutexGuard<'a, AppState>,
        deadline: std::time::Instant,
    ) -> io::Result<MutexGuard<'a, AppState>> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "libutp: timed out waiting",
            ));
        }
        let (st, _) = self
            .shared
            .changed
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner());
        Ok(st)
    }
}

impl Drop for LibutpUdp {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A seed that gives libutp's first outgoing connection on a fresh context an initial
/// seq_nr in the lower half of the 16-bit space, where its fast retransmit works
/// (checklist L bug 1: `fast_resend_seq_nr` starts at 1, not at the initial seq_nr).
/// Tries `start`, `start + 1`, ... in a throw-away virtual-time context.
pub fn seed_for_fast_retransmit(start: u64) -> u64 {
    let here: SocketAddr = ([127, 0, 0, 1], 1).into();
    let there: SocketAddr = ([127, 0, 0, 1], 2).into();
    for seed in start..start.saturating_add(1000) {
        let mut peer = LibutpPeer::new(here, seed);
        peer.connect(Instant::from_millis(1), there);
        let Some((_, syn)) = peer.poll_transmit() else {
            continue;
        };
        let Some(seq) = syn.get(16..18).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            continue;
        };
        // libutp updates the cursor when `ack_nr + 1` is ahead of 1 (wrapping).
        if (1..0x8000).contains(&seq) {
            return seed;
        }
    }
    start
}

fn deadline(timeout: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(86_400))
}

fn conn(st: &mut AppState, id: SocketId) -> io::Result<&mut Conn> {
    st.conns
        .get_mut(&id)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no connection {id}")))
}

fn check_failure(st: &AppState) -> io::Result<()> {
    match &st.failure {
        Some(msg) => Err(io::Error::other(format!("libutp thread ended: {msg}"))),
        None => Ok(()),
    }
}

/// The `io::Error` for an error libutp reported.
pub fn io_error(e: LibutpError) -> io::Error {
    let kind = match e {
        LibutpError::Refused => io::ErrorKind::ConnectionRefused,
        LibutpError::Reset => io::ErrorKind::ConnectionReset,
        LibutpError::TimedOut => io::ErrorKind::TimedOut,
        LibutpError::Other(_) => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("libutp: {e}"))
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    crate::vnet::splitmix64(nanos ^ (u64::from(std::process::id()) << 32)).0
}

/// The CPU time of a live thread (`pthread_getcpuclockid`).
fn thread_cpu_time(thread: libc::pthread_t) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `thread` is the id of a thread that has not been joined (its
    // `JoinHandle` is alive); the output is valid for a write.
    if unsafe { libc::pthread_getcpuclockid(thread, &mut clock) } != 0 {
        return None;
    }
    clock_time(clock)
}

/// The CPU time of the calling thread.
fn own_cpu_time() -> Option<Duration> {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for a write; a bad clock id makes the call fail.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    ))
}

/// The thread's body: runs the driver, then records why it ended.
fn run(
    shared: Arc<Shared>,
    socket: UdpSocket,
    waker: UnixDatagram,
    config: LibutpUdpConfig,
    seed: u64,
    local: SocketAddr,
) {
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut peer = LibutpPeer::new(local, seed);
        peer.set_recv_buffer(config.recv_buffer);
        peer.set_send_buffer(config.send_buffer);
        peer.set_accept_incoming(config.accept_incoming);
        let mut driver = Driver {
            shared: shared.clone(),
            socket,
            waker,
            peer,
            start: std::time::Instant::now(),
            rbuf: vec![0; 64 << 10],
            scratch: vec![0; 64 << 10],
            unsent: VecDeque::new(),
            app_buffer: config.app_buffer.max(1),
            stats: LibutpUdpStats::default(),
        };
        driver.run()
    }));
    let cpu = own_cpu_time();
    let mut st = shared.lock();
    let why = match result {
        Ok(Ok(())) => "stopped".to_string(),
        Ok(Err(e)) => format!("socket error: {e}"),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            format!("panicked: {msg}")
        }
    };
    st.failure.get_or_insert(why);
    st.final_cpu = cpu;
    st.generation += 1;
    drop(st);
    shared.changed.notify_all();
}

/// What the thread owns.
struct Driver {
    shared: Arc<Shared>,
    socket: UdpSocket,
    waker: UnixDatagram,
    peer: LibutpPeer,
    start: std::time::Instant,
    /// Receive buffer for one datagram.
    rbuf: Vec<u8>,
    /// Bytes on their way from libutp's wrapper to the caller's buffer.
    scratch: Vec<u8>,
    /// Datagrams the kernel had no room for yet, in order.
    unsent: VecDeque<(SocketAddr, Vec<u8>)>,
    app_buffer: usize,
    stats: LibutpUdpStats,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            let received = self.receive()?;
            let now = self.now();
            if self.peer.poll_timeout(now) <= now {
                self.peer.handle_timeout(now);
            }
            let Some(progress) = self.sync() else {
                return Ok(());
            };
            self.transmit()?;
            if received == 0 && !progress {
                self.sleep();
            }
        }
    }

    /// Hands up to a batch of waiting datagrams to libutp; returns how many.
    fn receive(&mut self) -> io::Result<usize> {
        let mut n = 0;
        while n < RECV_BATCH {
            match self.socket.recv_from(&mut self.rbuf) {
                Ok((len, from)) => {
                    n += 1;
                    if len > 0 {
                        let now = self.now();
                        self.peer.handle_datagram(now, from, &self.rbuf[..len]);
                        self.stats.datagrams_received += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors reported on the socket, and signals: not fatal.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Sends what libutp queued (issuing its deferred ACKs first), in order.
    fn transmit(&mut self) -> io::Result<()> {
        while let Some((to, d)) = self.unsent.front() {
            match self.socket.send_to(d, *to) {
                Ok(_) => self.stats.datagrams_sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => self.stats.send_errors += 1,
            }
            self.unsent.pop_front();
        }
        while let Some((to, d)) = self.peer.poll_transmit() {
            if !self.unsent.is_empty() {
                self.unsent.push_back((to, d));
                continue;
            }
            match self.socket.send_to(&d, to) {
                Ok(_) => self.stats.datagrams_sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.send_would_block += 1;
                    self.unsent.push_back((to, d));
                }
                Err(_) => self.stats.send_errors += 1,
            }
        }
        Ok(())
    }

    /// Exchanges everything with the caller: requests, events, bytes each way. Returns
    /// whether anything moved, or `None` when asked to stop.
    fn sync(&mut self) -> Option<bool> {
        let now = self.now();
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if st.stop {
            return None;
        }
        let mut changed = false;
        let mut progress = false;
        while let Some((token, remote)) = st.connects.pop_front() {
            let id = self.peer.connect(now, remote);
            st.conns.insert(id, Conn::new(remote, false));
            st.replies.insert(token, id);
            changed = true;
            progress = true;
        }
        changed |= self.take_events(&mut st);
        let Driver {
            peer,
            scratch,
            app_buffer,
            ..
        } = self;
        for (&id, c) in st.conns.iter_mut() {
            if c.status.destroyed {
                if !c.send.is_empty() {
                    c.send.clear();
                    changed = true;
                }
            } else {
                let before = c.send.len();
                while !c.send.is_empty() {
                    let (front, _) = c.send.as_slices();
                    let n = peer.write(now, id, front);
                    if n == 0 {
                        break;
                    }
                    c.send.drain(..n);
                    c.status.bytes_written += n as u64;
                    progress = true;
                }
                // Writers wait for room: tell them when the buffer is empty or fell
                // below half (not at every packet, which would wake them per ACK).
                let low = *app_buffer / 2;
                if before > 0 && (c.send.is_empty() || (before >= low && c.send.len() < low)) {
                    changed = true;
                }
                if c.send.is_empty() || c.status.error.is_some() {
                    if c.shutdown == Request::Asked {
                        c.shutdown = Request::Done;
                        peer.shutdown(now, id);
                        progress = true;
                    }
                    if c.close == Request::Asked {
                        c.close = Request::Done;
                        peer.close(now, id);
                        progress = true;
                    }
                }
            }
            // Received bytes, as far as the caller's buffer has room.
            let before = c.recv.len();
            while c.recv.len() < *app_buffer {
                let room = (*app_buffer - c.recv.len()).min(scratch.len());
                let n = peer.read(now, id, &mut scratch[..room]);
                if n == 0 {
                    break;
                }
                c.recv.extend(&scratch[..n]);
                c.status.bytes_received += n as u64;
            }
            if c.recv.len() != before {
                progress = true;
                // Readers wait only on an empty buffer.
                if before == 0 {
                    changed = true;
                }
            }
            let upstream = peer.readable_bytes(id);
            if upstream != c.upstream {
                c.upstream = upstream;
                changed = true;
            }
        }
        changed |= self.take_events(&mut st);
        st.stats = self.stats.clone();
        if changed {
            st.generation += 1;
        }
        drop(st);
        if changed {
            shared.changed.notify_all();
        }
        Some(progress)
    }

    /// Applies libutp's events to the shared state; returns whether any came.
    fn take_events(&mut self, st: &mut AppState) -> bool {
        let mut any = false;
        while let Some(ev) = self.peer.poll_event() {
            any = true;
            match ev {
                LibutpEvent::Accepted { socket, from } => {
                    st.conns.insert(socket, Conn::new(from, true));
                    st.accept_queue.push_back((socket, from));
                }
                LibutpEvent::Connected(id) => {
                    if let Some(c) = st.conns.get_mut(&id) {
                        c.status.connected = true;
                    }
                }
                LibutpEvent::Eof(id) => {
                    if let Some(c) = st.conns.get_mut(&id) {
                        c.status.eof = true;
                    }
                }
                LibutpEvent::Error(id, e) => {
                    if let Some(c) = st.conns.get_mut(&id) {
                        c.status.error.get_or_insert(e);
                    }
                }
                LibutpEvent::Destroyed(id) => {
                    if let Some(c) = st.conns.get_mut(&id) {
                        c.status.destroyed = true;
                    }
                }
                LibutpEvent::Readable(_) | LibutpEvent::Writable(_) => {}
            }
        }
        any
    }

    /// Sleeps until a datagram arrives, the caller wakes us, the kernel has room for
    /// an unsent datagram, or libutp's next tick is due.
    fn sleep(&mut self) {
        let now = self.now();
        let next = self.peer.poll_timeout(now);
        let wait = next.saturating_duration_since(now);
        let ms = c_int_ms(wait);
        let mut events = libc::POLLIN;
        if !self.unsent.is_empty() {
            events |= libc::POLLOUT;
        }
        let mut fds = [
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.waker.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        self.stats.sleeps += 1;
        // SAFETY: `fds` is an array of two initialised `pollfd`s with open descriptors,
        // valid for reads and writes during the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc > 0 && fds[1].revents != 0 {
            let mut b = [0u8; 64];
            while self.waker.recv(&mut b).is_ok() {}
        }
    }
}

/// `d` in whole milliseconds for `poll(2)`, rounded up, at most 500 ms (libutp's tick).
fn c_int_ms(d: Duration) -> libc::c_int {
    let ms = d.as_micros().div_ceil(1000).min(500);
    libc::c_int::try_from(ms).unwrap_or(500)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn two_libutp_threads_move_bytes_over_loopback() {
        let a = LibutpUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = LibutpUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
        let ca = a.connect(b.local_addr()).unwrap();
        a.wait_connected(ca, T).unwrap();
        a.write_all(ca, &data, T).unwrap();
        let (cb, from) = b.accept(T).unwrap();
        assert_eq!(from, a.local_addr());
        a.close(ca).unwrap();
        let got = b.read_to_end(cb, T).unwrap();
        assert!(got == data, "got {} of {} bytes", got.len(), data.len());
        b.close(cb).unwrap();
        a.wait_for(ca, T, |s| s.destroyed).unwrap();
        assert!(a.cpu_time() > Duration::ZERO);
        assert!(a.stats().datagrams_sent > 2000);
    }

    #[test]
    fn fast_retransmit_seed_gives_a_low_initial_seq_nr() {
        let seed = seed_for_fast_retransmit(7);
        let mut peer = LibutpPeer::new(([127, 0, 0, 1], 1).into(), seed);
        peer.connect(Instant::from_millis(1), ([127, 0, 0, 1], 2).into());
        let (_, syn) = peer.poll_transmit().unwrap();
        let seq = u16::from_be_bytes([syn[16], syn[17]]);
        assert!((1..0x8000).contains(&seq), "seq_nr {seq}");
    }
}
