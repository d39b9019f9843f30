//! Many recurring deadlines, one per slot, earliest first.
//!
//! A connection's retransmission timer moves with nearly every ACK. Queued as entries
//! in an ordinary heap, every move leaves a stale entry behind to be skipped or
//! compacted later. Here each slot (a connection of the [`Endpoint`], or any other
//! source of events) has at most one entry in an indexed binary heap: moving its
//! deadline re-sorts that entry in place, so the heap never holds more entries than
//! there are slots and nothing goes stale. The simulator's engine schedules its nodes
//! and links the same way.
//!
//! [`Endpoint`]: super::Endpoint

/// An indexed min-heap: at most one key per slot (`0, 1, 2, ...`), the smallest first.
/// Keys that compare equal come out by slot number when the key is a tuple ending in
/// something unique; otherwise in no particular order.
#[derive(Clone, Debug)]
pub struct TimerQueue<K> {
    /// Heap of (key, slot).
    heap: Vec<(K, usize)>,
    /// Per slot, its index in `heap`, or `ABSENT`.
    pos: Vec<usize>,
}

const ABSENT: usize = usize::MAX;

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: Vec::new(),
            pos: Vec::new(),
        }
    }
}

impl<K: Ord + Copy> TimerQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// The smallest key and its slot; `None` when no slot is pending.
    pub fn peek(&self) -> Option<(K, usize)> {
        self.heap.first().copied()
    }

    /// The key of `slot`, if it is pending.
    pub fn get(&self, slot: usize) -> Option<K> {
        let i = *self.pos.get(slot)?;
        (i != ABSENT).then(|| self.heap[i].0)
    }

    /// How many slots are pending.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no slot is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Makes `slot` pending with `key`, replacing its key if it had one.
    pub fn set(&mut self, slot: usize, key: K) {
        if slot >= self.pos.len() {
            self.pos.resize(slot + 1, ABSENT);
        }
        let i = self.pos[slot];
        if i == ABSENT {
            self.heap.push((key, slot));
            let last = self.heap.len() - 1;
            self.pos[slot] = last;
            self.sift_up(last);
        } else {
            let old = self.heap[i].0;
            self.heap[i].0 = key;
            if key < old {
                self.sift_up(i);
            } else {
                self.sift_down(i);
            }
        }
    }

    /// Makes `slot` not pending (nothing happens if it was not).
    pub fn remove(&mut self, slot: usize) {
        let Some(&i) = self.pos.get(slot) else {
            return;
        };
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

    /// Moves the entry at `i` up to its place: ancestors larger than it move down
    /// into the hole it leaves, and it is written once, where it stops.
    fn sift_up(&mut self, mut i: usize) {
        let entry = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            let above = self.heap[parent];
            if entry.0 >= above.0 {
                break;
            }
            self.heap[i] = above;
            self.pos[above.1] = i;
            i = parent;
        }
        self.heap[i] = entry;
        self.pos[entry.1] = i;
    }

    /// Moves the entry at `i` down to its place, the smaller child moving up into the
    /// hole at each level.
    fn sift_down(&mut self, mut i: usize) {
        let entry = self.heap[i];
        let len = self.heap.len();
        loop {
            let left = 2 * i + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.heap[right].0 < self.heap[left].0 {
                right
            } else {
                left
            };
            let below = self.heap[child];
            if below.0 >= entry.0 {
                break;
            }
            self.heap[i] = below;
            self.pos[below.1] = i;
            i = child;
        }
        self.heap[i] = entry;
        self.pos[entry.1] = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random sets and removals against a plain list: the queue always yields the
    /// smallest pending key (ties by slot), and each slot's key is the one last set.
    #[test]
    fn agrees_with_a_linear_scan_under_random_moves() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let mut q = TimerQueue::new();
        let slots = 17;
        let mut model: Vec<Option<u64>> = vec![None; slots];
        for _ in 0..20_000 {
            let slot = (rng.next_u32() % slots as u32) as usize;
            if rng.next_u32() % 4 == 0 {
                q.remove(slot);
                model[slot] = None;
            } else {
                // Few distinct keys, so that ties are common.
                let key = u64::from(rng.next_u32() % 50);
                q.set(slot, (key, slot));
                model[slot] = Some(key);
            }
            let expect = model
                .iter()
                .enumerate()
                .filter_map(|(s, k)| k.map(|k| ((k, s), s)))
                .min();
            assert_eq!(q.peek(), expect);
            assert_eq!(q.get(slot).map(|(k, _)| k), model[slot]);
            assert_eq!(q.len(), model.iter().flatten().count());
        }
        for s in 0..slots {
            q.remove(s);
        }
        assert!(q.is_empty());
        assert_eq!(q.get(1000), None, "a slot never set is not pending");
        q.remove(1000);
    }
}
