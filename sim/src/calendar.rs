//! The engine's recurring event sources, each with at most one pending time.
//!
//! A node's timer, a link's serialiser and a link's wire head each have at most one
//! next event, and that time moves with nearly every packet. Queued as ordinary events,
//! every move would leave a stale entry behind (a retransmission timer re-armed on every
//! ACK left about a thousand of them in the event heap). Here each source has one slot
//! in an indexed binary heap: moving its time re-sorts that entry in place, so the heap
//! never holds more entries than there are sources.

use utp::Instant;

/// When a slot is due and its tie-breaking order (smaller first).
pub(crate) type Due = (Instant, u64);

/// An indexed min-heap of `(time, order)` per slot `0..len`.
#[derive(Debug, Default)]
pub(crate) struct Calendar {
    /// Heap of (due, slot).
    heap: Vec<(Due, usize)>,
    /// Per slot, its index in `heap`, or `ABSENT`.
    pos: Vec<usize>,
}

const ABSENT: usize = usize::MAX;

impl Calendar {
    /// Adds a slot with nothing pending; returns its number.
    pub fn add_slot(&mut self) -> usize {
        self.pos.push(ABSENT);
        self.pos.len() - 1
    }

    /// The earliest pending slot and when it is due.
    pub fn peek(&self) -> Option<(Due, usize)> {
        self.heap.first().copied()
    }

    /// When `slot` is due, if it is pending.
    pub fn due(&self, slot: usize) -> Option<Due> {
        let i = self.pos[slot];
        (i != ABSENT).then(|| self.heap[i].0)
    }

    /// Makes `slot` due at `due` (pending or not before).
    pub fn set(&mut self, slot: usize, due: Due) {
        let i = self.pos[slot];
        if i == ABSENT {
            self.heap.push((due, slot));
            let last = self.heap.len() - 1;
            self.pos[slot] = last;
            self.sift_up(last);
        } else {
            let old = self.heap[i].0;
            self.heap[i].0 = due;
            if due < old {
                self.sift_up(i);
            } else {
                self.sift_down(i);
            }
        }
    }

    /// Makes `slot` not pending.
    pub fn clear(&mut self, slot: usize) {
        let i = self.pos[slot];
        if i == ABSENT {
            return;
        }
        self.pos[slot] = ABSENT;
        let last = self.heap.pop().expect("a pending slot is in the heap");
        if i < self.heap.len() {
            self.heap[i] = last;
            self.pos[last.1] = i;
            // The moved entry may belong either above or below.
            self.sift_up(i);
            self.sift_down(self.pos[last.1]);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1] = a;
        self.pos[self.heap[b].1] = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].0 >= self.heap[parent].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.heap[l].0 < self.heap[least].0 {
                least = l;
            }
            if r < self.heap.len() && self.heap[r].0 < self.heap[least].0 {
                least = r;
            }
            if least == i {
                break;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SimRng;

    /// Random sets and clears against a plain list: the calendar always yields the
    /// earliest pending slot, and each slot's due time is the one last set.
    #[test]
    fn agrees_with_a_linear_scan_under_random_moves() {
        let mut rng = SimRng::new(42);
        let mut cal = Calendar::default();
        let slots = 17;
        let mut model: Vec<Option<Due>> = vec![None; slots];
        for _ in 0..slots {
            cal.add_slot();
        }
        for order in 0..20_000u64 {
            let slot = rng.below(slots as u64) as usize;
            if rng.chance(0.25) {
                cal.clear(slot);
                model[slot] = None;
            } else {
                let due = (Instant::from_micros(rng.below(1000)), order);
                cal.set(slot, due);
                model[slot] = Some(due);
            }
            let expect = model
                .iter()
                .enumerate()
                .filter_map(|(s, d)| d.map(|d| (d, s)))
                .min();
            assert_eq!(cal.peek(), expect);
            assert_eq!(cal.due(slot), model[slot]);
        }
    }
}
