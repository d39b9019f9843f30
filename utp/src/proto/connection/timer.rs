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

/// Deadlines indexed by [`Timer`], in microseconds, with a bit per armed timer and
/// the earliest deadline.
///
/// An unarmed timer holds `u64::MAX`, so the earliest deadline is a plain minimum over
/// the array; it is kept up to date as timers move (asked after every packet, it
/// changes less often), and the bits tell an unarmed timer from one armed at the end
/// of time.
#[derive(Clone, Debug)]
pub(crate) struct TimerTable {
    deadlines: [u64; COUNT],
    armed: u16,
    earliest: u64,
}

impl Default for TimerTable {
    fn default() -> Self {
        TimerTable {
            deadlines: [u64::MAX; COUNT],
            armed: 0,
            earliest: u64::MAX,
        }
    }
}

impl TimerTable {
    /// Arms `timer` to fire at `at`, replacing any earlier deadline.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.replace(timer, at.as_micros());
        self.armed |= 1 << timer as u16;
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.replace(timer, u64::MAX);
        self.armed &= !(1 << timer as u16);
    }

    /// Gives `timer` the deadline `at` and keeps `earliest` right.
    fn replace(&mut self, timer: Timer, at: u64) {
        let old = std::mem::replace(&mut self.deadlines[timer as usize], at);
        if at <= self.earliest {
            self.earliest = at;
        } else if old == self.earliest {
            // The earliest moved later (or went): look again.
            self.earliest = self.deadlines.iter().copied().fold(u64::MAX, u64::min);
        }
    }

    /// When `timer` fires, if armed.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.is_set(timer)
            .then(|| Instant::from_micros(self.deadlines[timer as usize]))
    }

    /// Whether `timer` is armed.
    pub fn is_set(&self, timer: Timer) -> bool {
        self.armed & (1 << timer as u16) != 0
    }

    /// Disarms every timer.
    pub fn stop_all(&mut self) {
        *self = TimerTable::default();
    }

    /// The earliest deadline of all armed timers.
    pub fn next(&self) -> Option<Instant> {
        debug_assert_eq!(
            self.earliest,
            self.deadlines.iter().copied().fold(u64::MAX, u64::min)
        );
        (self.armed != 0).then_some(Instant::from_micros(self.earliest))
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
        let now = now.as_micros();
        let t = ALL
            .into_iter()
            .find(|&t| self.is_set(t) && self.deadlines[t as usize] <= now)?;
        self.stop(t);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_armed_deadline_and_expiry_in_timer_order() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Idle, Instant::from_micros(900));
        t.set(Timer::Retransmit, Instant::from_micros(500));
        t.set(Timer::DelayedAck, Instant::from_micros(500));
        assert_eq!(t.next(), Some(Instant::from_micros(500)));
        assert_eq!(t.expired(Instant::from_micros(499)), None);
        assert_eq!(
            t.expired(Instant::from_micros(600)),
            Some(Timer::Retransmit)
        );
        assert_eq!(
            t.expired(Instant::from_micros(600)),
            Some(Timer::DelayedAck)
        );
        assert_eq!(t.expired(Instant::from_micros(600)), None);
        assert_eq!(t.next(), Some(Instant::from_micros(900)));
        t.stop(Timer::Idle);
        assert_eq!(t.next(), None);
        // A deadline at the end of time is still armed.
        t.set(Timer::Linger, Instant::from_micros(u64::MAX));
        assert!(t.is_set(Timer::Linger));
        assert_eq!(t.next(), Some(Instant::from_micros(u64::MAX)));
        assert_eq!(
            t.deadline(Timer::Linger),
            Some(Instant::from_micros(u64::MAX))
        );
        t.stop_all();
        assert_eq!((t.next(), t.is_set(Timer::Linger)), (None, false));
    }
}
