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

/// A queue of bits that loses bits at the front (as the packets of `early` are
/// delivered) and reads out eight at a time.
#[derive(Debug, Default)]
struct Bits {
    words: VecDeque<u64>,
    /// Bit 0 of the queue is bit `first` of `words[0]`.
    first: usize,
}

impl Bits {
    /// Sets bit `i`, growing the queue with clear bits as needed.
    fn set(&mut self, i: usize) {
        let at = self.first + i;
        while self.words.len() <= at / 64 {
            self.words.push_back(0);
        }
        self.words[at / 64] |= 1 << (at % 64);
    }

    /// Drops bit 0; the others move down by one.
    fn pop_front(&mut self) {
        if let Some(w) = self.words.front_mut() {
            *w &= !(1 << self.first);
        }
        self.first += 1;
        if self.first == 64 {
            self.words.pop_front();
            self.first = 0;
        }
    }

    fn clear(&mut self) {
        self.words.clear();
        self.first = 0;
    }

    /// Bits `8 * j .. 8 * j + 8` (bit `8 * j` lowest); bits never set read as clear.
    fn byte(&self, j: usize) -> u8 {
        let at = self.first + 8 * j;
        let (w, off) = (at / 64, at % 64);
        let lo = self.words.get(w).map_or(0, |&x| x >> off);
        let hi = match self.words.get(w + 1) {
            Some(&x) if off > 56 => x << (64 - off),
            _ => 0,
        };
        (lo | hi) as u8
    }
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
    /// Bit `k` set when `early[k]` holds a packet: the selective ACK, ready to copy.
    present: Bits,
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
            present: Bits::default(),
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
            self.present.set(ahead - 1);
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
                self.present.pop_front();
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
                if self.early.pop_front().is_some() {
                    self.present.pop_front();
                }
            }
        }
        if saw_fin {
            // Nothing after the FIN counts; forget anything buffered beyond it.
            self.early.clear();
            self.present.clear();
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
        // Copied from the bitmap kept beside the packets, a byte at a time: this runs
        // for every ACK while packets are missing, over up to 2016 of them.
        for (j, byte) in mask[..len].iter_mut().enumerate() {
            *byte = self.present.byte(j);
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

    /// The bitmap kept beside the early packets always gives the mask that scanning
    /// them would: random arrivals ahead of gaps, in-order arrivals that deliver runs,
    /// reads, and FINs that end it all, with spans across several 64-bit words.
    #[test]
    fn selective_ack_matches_a_scan_of_the_early_packets() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
        let mut r = RecvBuffer::new(1 << 30, 2000);
        let mut out = vec![0u8; 1 << 16];
        for step in 0..30_000 {
            let roll = rng.next_u32() % 100;
            let ahead = if roll < 70 {
                1 + (rng.next_u32() % 700) as usize
            } else {
                0
            };
            let fin = roll == 99;
            r.insert(ahead, fin, &[step as u8; 3]);
            if fin {
                r = RecvBuffer::new(1 << 30, 2000);
            }
            while r.read(&mut out) > 0 {}
            let mut got = [0u8; MAX_MASK];
            let mut want = [0u8; MAX_MASK];
            let len = r.selective_ack(&mut got);
            for (k, slot) in r.early.iter().enumerate().take(len * 8) {
                if slot.is_some() {
                    want[k / 8] |= 1 << (k % 8);
                }
            }
            assert_eq!(got[..len], want[..len], "step {step}");
        }
    }

    /// The longest mask a packet carries in these tests.
    const MAX_MASK: usize = 252;

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
        // A stream through the ring that never runs empty (an empty ring starts over
        // at its front): its bytes wrap around the end, and a read then hands over
        // only the part before the end.
        let mut sent = b"abcdef".to_vec();
        let mut short_reads = 0;
        for i in 0..200u8 {
            let chunk = [i, i.wrapping_add(1), i.wrapping_add(2)];
            assert!(matches!(r.insert(0, false, &chunk), Insert::InOrder { .. }));
            sent.extend_from_slice(&chunk);
            while r.readable() > 2 {
                let before = r.readable();
                let n = r.read_with(usize::MAX, |d| seen.extend_from_slice(d));
                if n < before {
                    short_reads += 1;
                }
            }
        }
        while r.read_with(usize::MAX, |d| seen.extend_from_slice(d)) > 0 {}
        assert_eq!(seen, sent);
        assert!(
            short_reads > 0,
            "the ring wrapped and a read stopped at its end"
        );
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
