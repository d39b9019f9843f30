//! The receive side: in-order bytes for the application and a bounded reorder buffer.
//!
//! Everything buffered, in order or not, counts against one capacity, which is the
//! window we advertise; a peer cannot make us hold more.

use std::collections::VecDeque;

/// A packet that arrived ahead of a gap.
#[derive(Debug)]
struct Early {
    fin: bool,
    data: Vec<u8>,
}

/// What [`RecvBuffer::insert`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Insert {
    /// It was the next expected packet: `delivered` packets (it and any buffered
    /// after it) moved to the in-order bytes; `fin` if the FIN was among them.
    InOrder { delivered: u16, fin: bool },
    /// Stored ahead of a gap.
    Early,
    /// Already had it.
    Duplicate,
    /// No room, or beyond the reorder span: dropped.
    Dropped,
}

/// In-order bytes ready to read plus the out-of-order packets.
#[derive(Debug)]
pub(crate) struct RecvBuffer {
    ordered: VecDeque<u8>,
    /// `early[k]` holds the packet `k + 1` after the next expected one.
    early: VecDeque<Option<Early>>,
    early_bytes: usize,
    capacity: usize,
    max_span: usize,
}

impl RecvBuffer {
    /// A buffer holding at most `capacity` bytes and packets at most `max_span` ahead.
    pub fn new(capacity: usize, max_span: usize) -> Self {
        RecvBuffer {
            ordered: VecDeque::new(),
            early: VecDeque::new(),
            early_bytes: 0,
            capacity,
            max_span,
        }
    }

    /// Bytes the peer may still send: our advertised window.
    pub fn window(&self) -> usize {
        self.capacity
            .saturating_sub(self.ordered.len() + self.early_bytes)
    }

    /// Bytes ready for the application.
    pub fn readable(&self) -> usize {
        self.ordered.len()
    }

    /// Whether packets are waiting beyond a gap (a selective ACK is due).
    pub fn has_gap(&self) -> bool {
        !self.early.is_empty()
    }

    /// Offers a packet `ahead` positions after the next expected one (0 = expected).
    /// A duplicate of something delivered must not be offered.
    pub fn insert(&mut self, ahead: usize, fin: bool, data: &[u8]) -> Insert {
        if ahead > self.max_span {
            return Insert::Dropped;
        }
        if ahead > 0 && self.early.get(ahead - 1).is_some_and(Option::is_some) {
            return Insert::Duplicate;
        }
        // The next in-order packet competes only with unread in-order bytes: it is
        // what lets the application drain the buffer, so out-of-order data (which
        // the peer may count as delivered once we SACK it, and so must be kept) can
        // never lock it out. Total memory stays below capacity + one packet.
        let room = if ahead == 0 {
            self.capacity.saturating_sub(self.ordered.len())
        } else {
            self.window()
        };
        if data.len() > room {
            return Insert::Dropped;
        }
        if ahead > 0 {
            if self.early.len() < ahead {
                self.early.resize_with(ahead, || None);
            }
            self.early_bytes += data.len();
            self.early[ahead - 1] = Some(Early {
                fin,
                data: data.to_vec(),
            });
            return Insert::Early;
        }
        self.ordered.extend(data);
        let mut delivered = 1;
        let mut saw_fin = fin;
        if !saw_fin {
            while let Some(Some(_)) = self.early.front() {
                let Some(Some(e)) = self.early.pop_front() else {
                    break;
                };
                self.early_bytes -= e.data.len();
                self.ordered.extend(&e.data);
                delivered += 1;
                if e.fin {
                    saw_fin = true;
                    break;
                }
            }
            if !saw_fin {
                // The slot of the packet just delivered (empty) shifts out.
                self.early.pop_front();
            }
        }
        if saw_fin {
            // Nothing after the FIN counts; forget anything buffered beyond it.
            self.early.clear();
            self.early_bytes = 0;
        }
        Insert::InOrder {
            delivered,
            fin: saw_fin,
        }
    }

    /// Fills `mask` with the selective-ACK bitmap (bit k = packet k + 2 after the last
    /// in-order one) and returns its length in bytes: the reorder span rounded up to a
    /// multiple of 4, as BEP 29 asks, capped by `mask.len()`.
    pub fn selective_ack(&self, mask: &mut [u8]) -> usize {
        // early[0] is the packet 2 after the last in-order one: bit 0.
        let bits = self.early.len();
        let len = bits.div_ceil(32).max(1) * 4;
        let len = len.min(mask.len() / 4 * 4);
        // A byte at a time: this runs for every ACK while packets are missing, over a
        // reorder span of up to a thousand packets.
        let mut slots = self.early.iter();
        for byte in &mut mask[..len] {
            let mut bits = 0u8;
            for bit in 0..8 {
                if slots.next().is_some_and(Option::is_some) {
                    bits |= 1 << bit;
                }
            }
            *byte = bits;
        }
        len
    }

    /// Moves up to `out.len()` in-order bytes to `out`; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.ordered.len());
        let (a, b) = self.ordered.as_slices();
        let from_a = n.min(a.len());
        out[..from_a].copy_from_slice(&a[..from_a]);
        out[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.ordered.drain(..n);
        n
    }

    /// Hands `f` the next contiguous in-order bytes, at most `max`, without copying
    /// them, and consumes them; returns how many. A buffer that wraps around takes two
    /// calls to drain.
    pub fn read_with(&mut self, max: usize, f: impl FnOnce(&[u8])) -> usize {
        let (a, _) = self.ordered.as_slices();
        let n = a.len().min(max);
        if n > 0 {
            f(&a[..n]);
            self.ordered.drain(..n);
        }
        n
    }

    /// Throws away every in-order byte (the application will never read them).
    pub fn discard(&mut self) {
        self.ordered.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorders_and_reports_gaps() {
        let mut r = RecvBuffer::new(100, 8);
        assert_eq!(r.insert(2, false, b"cc"), Insert::Early);
        assert_eq!(r.insert(2, false, b"cc"), Insert::Duplicate);
        assert_eq!(r.insert(1, false, b"bb"), Insert::Early);
        let mut mask = [0u8; 8];
        assert_eq!(r.selective_ack(&mut mask), 4);
        // early[0] = ahead 1 = bit 0; early[1] = ahead 2 = bit 1.
        assert_eq!(mask[0], 0b11);
        assert_eq!(r.window(), 96);
        assert_eq!(
            r.insert(0, false, b"aa"),
            Insert::InOrder {
                delivered: 3,
                fin: false
            }
        );
        assert!(!r.has_gap());
        let mut out = [0u8; 10];
        assert_eq!(r.read(&mut out), 6);
        assert_eq!(&out[..6], b"aabbcc");
        assert_eq!(r.window(), 100);
    }

    #[test]
    fn reads_in_place_up_to_max_and_across_the_wrap() {
        let mut r = RecvBuffer::new(8, 4);
        assert_eq!(
            r.insert(0, false, b"abcdef"),
            Insert::InOrder {
                delivered: 1,
                fin: false
            }
        );
        let mut seen = Vec::new();
        assert_eq!(r.read_with(4, |d| seen.extend_from_slice(d)), 4);
        assert_eq!(seen, b"abcd");
        assert_eq!(r.window(), 6);
        // The ring now wraps: its bytes come in two contiguous pieces.
        assert_eq!(
            r.insert(0, false, b"ghijkl"),
            Insert::InOrder {
                delivered: 1,
                fin: false
            }
        );
        while r.read_with(usize::MAX, |d| seen.extend_from_slice(d)) > 0 {}
        assert_eq!(seen, b"abcdefghijkl");
        assert_eq!(r.readable(), 0);
        let mut called = false;
        assert_eq!(r.read_with(10, |_| called = true), 0);
        assert!(!called, "nothing to hand over: f is not called");
    }

    #[test]
    fn bounded_by_capacity_and_span() {
        let mut r = RecvBuffer::new(4, 2);
        assert_eq!(r.insert(3, false, b"x"), Insert::Dropped, "beyond the span");
        assert_eq!(
            r.insert(0, false, b"abcde"),
            Insert::Dropped,
            "beyond the window"
        );
        assert_eq!(
            r.insert(0, false, b"abcd"),
            Insert::InOrder {
                delivered: 1,
                fin: false
            }
        );
        assert_eq!(r.window(), 0);
        assert_eq!(r.insert(0, false, b"e"), Insert::Dropped);
    }

    #[test]
    fn out_of_order_data_never_locks_out_the_next_packet() {
        let mut r = RecvBuffer::new(6, 8);
        assert_eq!(r.insert(1, false, b"bbb"), Insert::Early);
        assert_eq!(r.insert(2, false, b"ccc"), Insert::Early);
        assert_eq!(r.window(), 0);
        assert_eq!(r.insert(3, false, b"d"), Insert::Dropped, "window full");
        assert_eq!(
            r.insert(0, false, b"aaa"),
            Insert::InOrder {
                delivered: 3,
                fin: false
            },
            "the hole's packet is taken although early data fills the window"
        );
        let mut out = [0u8; 16];
        assert_eq!(r.read(&mut out), 9);
        assert_eq!(&out[..9], b"aaabbbccc");
        // Unread in-order bytes still limit it: that is flow control.
        assert_eq!(
            r.insert(0, false, b"123456"),
            Insert::InOrder {
                delivered: 1,
                fin: false
            }
        );
        assert_eq!(r.insert(0, false, b"7"), Insert::Dropped);
    }

    #[test]
    fn fin_ends_delivery() {
        let mut r = RecvBuffer::new(100, 8);
        assert_eq!(r.insert(1, true, b""), Insert::Early);
        assert_eq!(r.insert(3, false, b"zz"), Insert::Early);
        assert_eq!(
            r.insert(0, false, b"a"),
            Insert::InOrder {
                delivered: 2,
                fin: true
            }
        );
        assert_eq!(r.window(), 99, "data beyond the FIN is forgotten");
    }

    #[test]
    fn long_gaps_make_long_masks() {
        let mut r = RecvBuffer::new(10_000, 1000);
        r.insert(100, false, b"x");
        let mut mask = [0u8; 128];
        assert_eq!(r.selective_ack(&mut mask), 16);
        assert_eq!(mask[99 / 8], 1 << (99 % 8));
    }
}
