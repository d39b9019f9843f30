//! Wrapping number types: 16-bit sequence numbers and 32-bit microsecond timestamps.
//!
//! Raw integers are never compared: `seq_nr` wraps after 65 535 packets and the µs
//! clock after about 71 minutes, so "before" and "after" only make sense as the
//! signed distance between two values (serial number arithmetic, RFC 1982).

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// A uTP sequence or acknowledgement number (`seq_nr`, `ack_nr`): a `u16` that wraps.
///
/// Ordering is circular: `a` is before `b` when `b - a`, taken as a signed 16-bit
/// distance, is positive. Use [`SeqNr::distance`], [`SeqNr::is_before`] and
/// [`SeqNr::is_after`]; there is deliberately no `Ord`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNr(pub u16);

impl SeqNr {
    /// The signed distance from `other` to `self` (`self - other` as `i16`).
    pub const fn distance(self, other: SeqNr) -> i16 {
        self.0.wrapping_sub(other.0) as i16
    }

    /// Whether `self` comes strictly before `other` in circular order.
    pub const fn is_before(self, other: SeqNr) -> bool {
        self.distance(other) < 0
    }

    /// Whether `self` comes strictly after `other` in circular order.
    pub const fn is_after(self, other: SeqNr) -> bool {
        self.distance(other) > 0
    }

    /// The next sequence number.
    pub const fn next(self) -> SeqNr {
        SeqNr(self.0.wrapping_add(1))
    }

    /// The previous sequence number.
    pub const fn prev(self) -> SeqNr {
        SeqNr(self.0.wrapping_sub(1))
    }
}

impl Add<u16> for SeqNr {
    type Output = SeqNr;
    fn add(self, n: u16) -> SeqNr {
        SeqNr(self.0.wrapping_add(n))
    }
}

impl AddAssign<u16> for SeqNr {
    fn add_assign(&mut self, n: u16) {
        self.0 = self.0.wrapping_add(n);
    }
}

impl Sub<u16> for SeqNr {
    type Output = SeqNr;
    fn sub(self, n: u16) -> SeqNr {
        SeqNr(self.0.wrapping_sub(n))
    }
}

impl Sub<SeqNr> for SeqNr {
    /// The forward (unsigned, wrapping) distance from the right operand to the left.
    type Output = u16;
    fn sub(self, other: SeqNr) -> u16 {
        self.0.wrapping_sub(other.0)
    }
}

impl fmt::Debug for SeqNr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for SeqNr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A uTP wire timestamp or timestamp difference: microseconds modulo 2³².
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Micros(pub u32);

impl Micros {
    /// `self - earlier` modulo 2³²: the elapsed microseconds when `earlier` really was
    /// earlier (by less than about 71 minutes).
    pub const fn wrapping_since(self, earlier: Micros) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }

    /// The signed distance from `other` to `self`, for values known to be close.
    pub const fn distance(self, other: Micros) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
}

impl fmt::Debug for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}µs", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Covers: A11
    #[test]
    fn whole_sequence_space_orders_circularly() {
        // For every starting point of the 16-bit space, the next 32 767 numbers are
        // after it and the previous 32 768 before it.
        for a in 0..=u16::MAX {
            let a = SeqNr(a);
            assert!(a.next().is_after(a), "{a:?}");
            assert!(a.prev().is_before(a), "{a:?}");
            assert!((a + 32_767).is_after(a));
            assert!((a + 32_768).is_before(a), "half way wraps to before");
            assert_eq!((a + 1000) - a, 1000);
            assert_eq!((a + 1000).distance(a), 1000);
            assert_eq!(a.distance(a + 1000), -1000);
            assert_eq!(a.next().prev(), a);
            assert!(!a.is_after(a) && !a.is_before(a));
        }
    }

    #[test]
    fn wraps_at_the_top() {
        assert_eq!(SeqNr(u16::MAX).next(), SeqNr(0));
        assert_eq!(SeqNr(0).prev(), SeqNr(u16::MAX));
        assert!(SeqNr(2).is_after(SeqNr(65_530)));
        assert_eq!(SeqNr(2) - SeqNr(65_530), 8);
    }

    /// Covers: A8
    #[test]
    fn micros_wrap() {
        assert_eq!(Micros(5).wrapping_since(Micros(u32::MAX - 4)), 10);
        assert_eq!(Micros(5).distance(Micros(u32::MAX - 4)), 10);
        assert_eq!(Micros(u32::MAX - 4).distance(Micros(5)), -10);
    }
}
