//! The event loop of one UDP socket, and the state it shares with stream handles.
//!
//! One task per socket owns the socket and runs [`drive`]: it receives datagrams (a
//! bounded batch per wake-up, several per system call where the socket can), runs
//! timers (one sleep at the earliest deadline), sends what the endpoint produces (a
//! bounded batch per wake-up, gathered into runs to one destination that go out in one
//! GSO send where the socket can), and turns endpoint events into wake-ups of the tasks
//! waiting on streams. Its buffers are allocated once, when the task starts. Stream
//! handles operate on the endpoint directly under a short lock and wake the loop through
//! a [`Notify`]; there are no channels and no task per connection.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use tokio::sync::Notify;

use super::batch::SendBatch;
use super::datagram::{DatagramSocket, RecvMeta};
use crate::proto::{ConnectionError, ConnectionHandle, ConnectionStats, Endpoint, Event};
use crate::time::Instant;

/// Datagrams received per wake-up before timers and output get their turn. Receive
/// calls stop once this many came in; one call may pass it (a GRO train holds up to 64).
const RECV_BATCH: usize = 64;
/// Datagrams produced per wake-up before input gets its turn.
const SEND_BATCH: usize = 128;
/// Datagrams received between two explicit yields to the runtime while stream tasks
/// are waiting to run. While the socket stays ready the loop never has to wait, and
/// tokio's cooperative budget lets it run for about 128 socket operations (megabytes
/// on loopback) before the tasks it woke get the thread: with many streams on one
/// socket, readers would see their data in bursts, tens of milliseconds apart.
const YIELD_EVERY: usize = 256;
/// Receive buffers: one receive call fills up to this many (`recvmmsg`).
const RECV_BUFFERS: usize = 16;
/// Bytes per receive buffer: the largest datagram we accept, and more than a GRO train
/// (the kernel keeps those below 64 KiB).
const RECV_BUFFER_BYTES: usize = 65_536;

/// What the stream handles of one connection wait for.
#[derive(Debug, Default)]
pub(crate) struct ConnSlot {
    pub read: Option<Waker>,
    pub write: Option<Waker>,
    pub connect: Option<Waker>,
    pub shutdown: Option<Waker>,
    pub connected: bool,
    pub send_closed: bool,
    /// `Some` once the connection ended: `None` inside for a clean close.
    pub closed: Option<Option<ConnectionError>>,
    /// Live stream handles (0 for an incoming connection not yet accepted).
    pub handles: u32,
    /// The statistics when the connection ended.
    pub final_stats: Option<ConnectionStats>,
}

impl ConnSlot {
    fn wake_all(&mut self) {
        for w in [
            &mut self.read,
            &mut self.write,
            &mut self.connect,
            &mut self.shutdown,
        ] {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }
}

/// Everything behind the lock.
#[derive(Debug)]
pub(crate) struct State {
    pub ep: Endpoint,
    pub conns: HashMap<ConnectionHandle, ConnSlot>,
    pub accept_queue: VecDeque<(ConnectionHandle, SocketAddr)>,
    pub accept_waker: Option<Waker>,
    /// Live `UtpSocket` handles; when none remain, incoming connections are refused.
    pub socket_handles: usize,
    /// Set when the socket failed; every operation reports it.
    pub failure: Option<(io::ErrorKind, String)>,
}

/// State shared by the driver task and every handle.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the driver: new data to send, a connection to open, a handle dropped.
    pub notify: Notify,
    epoch: tokio::time::Instant,
    pub local_addr: SocketAddr,
}

impl Shared {
    pub fn new(ep: Endpoint, local_addr: SocketAddr) -> Shared {
        Shared {
            state: Mutex::new(State {
                ep,
                conns: HashMap::new(),
                accept_queue: VecDeque::new(),
                accept_waker: None,
                socket_handles: 1,
                failure: None,
            }),
            notify: Notify::new(),
            epoch: tokio::time::Instant::now(),
            local_addr,
        }
    }

    /// Locks the state. A panic while locked cannot leave the endpoint half updated in
    /// a way that matters more than the panic itself, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The core's notion of now: microseconds since this socket was created, from
    /// tokio's clock (virtual under turmoil or a paused runtime).
    pub fn now(&self) -> Instant {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        Instant::from_micros(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
    }

    fn to_tokio(&self, t: Instant) -> tokio::time::Instant {
        self.epoch + core::time::Duration::from_micros(t.as_micros())
    }
}

impl State {
    /// Turns endpoint events into wake-ups and bookkeeping; returns whether there
    /// were any (tasks may have been woken).
    fn dispatch_events(&mut self, now: Instant) -> bool {
        let mut woken = false;
        while let Some((h, ev)) = self.ep.poll_event() {
            woken = true;
            if ev == Event::Incoming {
                let room = self.accept_queue.len() < self.ep.config().accept_queue;
                match self.ep.remote(h) {
                    Some(remote) if room && self.socket_handles > 0 => {
                        self.conns.insert(
                            h,
                            ConnSlot {
                                connected: true,
                                ..ConnSlot::default()
                            },
                        );
                        self.accept_queue.push_back((h, remote));
                        if let Some(w) = self.accept_waker.take() {
                            w.wake();
                        }
                    }
                    _ => {
                        let _ = self.ep.abort(now, h);
                    }
                }
                continue;
            }
            let stats = self.ep.connection(h).map(|c| c.stats());
            let Some(slot) = self.conns.get_mut(&h) else {
                continue;
            };
            match ev {
                Event::Connected => {
                    slot.connected = true;
                    if let Some(w) = slot.connect.take() {
                        w.wake();
                    }
                }
                Event::Readable | Event::Finished => {
                    if let Some(w) = slot.read.take() {
                        w.wake();
                    }
                }
                Event::Writable => {
                    if let Some(w) = slot.write.take() {
                        w.wake();
                    }
                }
                Event::SendClosed => {
                    slot.send_closed = true;
                    if let Some(w) = slot.shutdown.take() {
                        w.wake();
                    }
                }
                Event::Closed(e) => {
                    slot.closed = Some(e);
                    slot.final_stats = stats;
                    slot.wake_all();
                    let queued = self.accept_queue.iter().any(|(q, _)| *q == h);
                    if slot.handles == 0 && !queued {
                        self.conns.remove(&h);
                    }
                }
                _ => {}
            }
        }
        woken
    }

    fn fail(&mut self, e: &io::Error) {
        self.failure = Some((e.kind(), e.to_string()));
        for slot in self.conns.values_mut() {
            slot.wake_all();
        }
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
    }
}

/// Runs the socket until every handle is gone and every connection has finished.
pub(crate) async fn drive<S: DatagramSocket>(shared: Arc<Shared>, socket: S) {
    // Every buffer is allocated here, once: nothing per datagram.
    let room = shared.lock().ep.config().max_packet_size;
    let mut out = SendBatch::new(room, SEND_BATCH);
    let mut recv_space = vec![0u8; RECV_BUFFERS * RECV_BUFFER_BYTES];
    let mut bufs: Vec<IoSliceMut<'_>> = recv_space
        .chunks_mut(RECV_BUFFER_BYTES)
        .map(IoSliceMut::new)
        .collect();
    let mut meta = vec![RecvMeta::default(); RECV_BUFFERS];
    let mut since_yield = 0usize;
    let mut woken = false;
    loop {
        // Timers, output and events, under one short lock; the clock is read once.
        let mut blocked = false;
        let deadline = {
            let mut st = shared.lock();
            let now = shared.now();
            st.ep.handle_timeout(now);
            // What a full send buffer held back goes first.
            if out.flush(&socket) {
                let max_segments = socket.max_send_segments();
                let mut produced = 0;
                while produced < SEND_BATCH {
                    if out.is_full() && !out.flush(&socket) {
                        blocked = true;
                        break;
                    }
                    let Some(t) = st.ep.poll_transmit(now, out.space()) else {
                        break;
                    };
                    produced += 1;
                    out.push(t.destination, t.len, max_segments);
                }
                blocked = blocked || !out.flush(&socket);
                if produced == SEND_BATCH {
                    // More may be waiting: come back after a look at the input.
                    shared.notify.notify_one();
                }
            } else {
                blocked = true;
            }
            woken |= st.dispatch_events(now);
            let finished =
                Arc::strong_count(&shared) == 1 && st.ep.connection_count() == 0 && out.is_empty();
            if finished || st.failure.is_some() {
                return;
            }
            st.ep.poll_timeout().map(|t| shared.to_tokio(t))
        };
        if blocked {
            // The kernel buffer is full: wait for room for one datagram, then try the
            // rest. A datagram that cannot be sent is lost like any other.
            if let Some((datagram, to)) = out.first_waiting() {
                let _ = socket.send_to(datagram, to).await;
            }
            out.skip_first();
            continue;
        }
        if woken && since_yield >= YIELD_EVERY {
            // Here, after the output went out: a reader that sees the end of its
            // stream may let the runtime stop, and the ACK of the peer's FIN must
            // already be on its way by then.
            since_yield = 0;
            woken = false;
            tokio::task::yield_now().await;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = socket.recv_batch(&mut bufs, &mut meta) => {
                // Everything received now goes in under one lock and one clock read.
                let mut st = shared.lock();
                let now = shared.now();
                let mut received = 0;
                match r {
                    Ok(n) => received += feed(&mut st.ep, now, &bufs, &meta[..n]),
                    Err(e) if is_transient(&e) => {}
                    Err(e) => {
                        st.fail(&e);
                        return;
                    }
                }
                let mut calls = 1;
                while received < RECV_BATCH && calls < RECV_BATCH {
                    calls += 1;
                    let k = RECV_BUFFERS.min(RECV_BATCH - received);
                    match socket.try_recv_batch(&mut bufs[..k], &mut meta[..k]) {
                        Ok(n) => received += feed(&mut st.ep, now, &bufs, &meta[..n]),
                        Err(e) if is_transient(&e) => continue,
                        Err(_) => break,
                    }
                }
                since_yield += received;
            }
            _ = shared.notify.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Hands every datagram in the filled buffers to the endpoint (a buffer holding a GRO
/// train is cut at its stride); returns how many there were.
fn feed(ep: &mut Endpoint, now: Instant, bufs: &[IoSliceMut<'_>], meta: &[RecvMeta]) -> usize {
    let mut n = 0;
    for (buf, m) in bufs.iter().zip(meta) {
        for datagram in m.datagrams(buf) {
            ep.handle_datagram(now, m.from, datagram);
            n += 1;
        }
    }
    n
}

/// Errors a UDP socket reports that do not mean it is broken (ICMP feedback).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
