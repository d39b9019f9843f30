//! The connection's timers: one table, one earliest deadline.

use crate::time::Instant;

/// Every timer a connection can arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// SYN retransmission (SYN sent).
    Syn = 0,
    /// Half-open limit (SYN received).
    Handshake = 1,
    /// Retransmission timeout for unacknowledged packets.
    Retransmit = 2,
    /// A delayed acknowledgement is due.
    DelayedAck = 3,
    /// Send a keep-alive when idle.
    Keepalive = 4,
    /// Give up when the peer has been silent.
    Idle = 5,
    /// Probe a zero receive window.
    ZeroWindow = 6,
    /// End of the linger period after close.
    Linger = 7,
    /// Tail loss probe: no ACK for about two round trips with data in flight.
    Probe = 8,
}

const COUNT: usize = 9;

/// Deadlines indexed by [`Timer`].
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; COUNT],
}

impl TimerTable {
    /// Arms `timer` to fire at `at`, replacing any earlier deadline.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    /// When `timer` fires, if armed.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    /// Whether `timer` is armed.
    pub fn is_set(&self, timer: Timer) -> bool {
        self.deadlines[timer as usize].is_some()
    }

    /// Disarms every timer.
    pub fn stop_all(&mut self) {
        self.deadlines = [None; COUNT];
    }

    /// The earliest deadline of all armed timers.
    pub fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms and returns the first timer whose deadline is at or before `now`.
    pub fn expired(&mut self, now: Instant) -> Option<Timer> {
        const ALL: [Timer; COUNT] = [
            Timer::Syn,
            Timer::Handshake,
            Timer::Retransmit,
            Timer::DelayedAck,
            Timer::Keepalive,
            Timer::Idle,
            Timer::ZeroWindow,
            Timer::Linger,
            Timer::Probe,
        ];
        let t = ALL
            .into_iter()
            .find(|t| self.deadlines[*t as usize].is_some_and(|d| d <= now))?;
        self.deadlines[t as usize] = None;
        Some(t)
    }
}
