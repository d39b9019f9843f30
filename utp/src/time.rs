//! Time as the protocol core sees it: an [`Instant`] handed in by the caller.
//!
//! The core never reads a clock. Drivers convert their own clock (tokio, turmoil,
//! the simulator's virtual clock) into an [`Instant`], which is a count of
//! microseconds since an arbitrary epoch chosen by the driver. This makes every run of
//! the core reproducible and lets the simulator run far faster than real time.
//!
//! The uTP wire timestamp (a wrapping `u32` of microseconds) is derived from an
//! [`Instant`] in exactly one place: [`Instant::wire_micros`].

use core::fmt;
use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A point in time, in microseconds since a driver-chosen epoch.
///
/// Arithmetic saturates instead of panicking, so a hostile or buggy time source cannot
/// crash the core.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The epoch itself (time zero).
    pub const ZERO: Instant = Instant { micros: 0 };

    /// The time `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Instant { micros }
    }

    /// The time `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Instant {
            micros: millis.saturating_mul(1000),
        }
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// The uTP wire timestamp for this instant: microseconds modulo 2³².
    pub const fn wire_micros(self) -> u32 {
        self.micros as u32
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant {
            micros: self.micros.saturating_add(duration_micros(d)),
        }
    }
}

/// A duration in whole microseconds, saturating at `u64::MAX`.
pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}s",
            self.micros / 1_000_000,
            self.micros % 1_000_000
        )
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let far = Instant::from_micros(u64::MAX - 1);
        assert_eq!((far + Duration::from_secs(10)).as_micros(), u64::MAX);
        assert_eq!(Instant::ZERO - far, Duration::ZERO);
        assert_eq!(far - Instant::ZERO, Duration::from_micros(u64::MAX - 1));
    }

    #[test]
    fn wire_timestamp_wraps() {
        let t = Instant::from_micros((1u64 << 32) + 5);
        assert_eq!(t.wire_micros(), 5);
    }
}
