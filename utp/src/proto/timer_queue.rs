//! Many recurring deadlines, one per slot, earliest first.
//!
//! A connection's retransmission timer moves with nearly every ACK. Queued as entries
//! in an ordinary heap, every move leaves a stale entry behind to be skipped or
//! compacted later. Here each slot (a connection of the [`Endpoint`], or any other
//! source of events) has at most one key: moving its deadline moves that key in place,
//! so nothing goes stale. With few slots (up to [`LINEAR_SLOTS`]) the keys sit in a
//! plain array and the earliest is found by a scan when it moves; with more, in an
//! indexed binary heap. The simulator's engine schedules its nodes and links the same
//! way (a lone flow has six slots, where the scan is three times cheaper than the heap).
//!
//! [`Endpoint`]: super::Endpoint

/// Up to this many slots, the keys are scanned instead of kept in a heap (at most 32:
/// a bit each in a `u32`).
pub const LINEAR_SLOTS: usize = 12;

/// At most one key per slot (`0, 1, 2, ...`), the smallest first. Keys that compare
/// equal come out in no particular order: make them unique (a tuple ending in the slot
/// or a sequence number) where the order of ties matters.
#[derive(Clone, Debug)]
pub struct TimerQueue<K> {
    repr: Repr<K>,
}

#[derive(Clone, Debug)]
enum Repr<K> {
    Linear(Linear<K>),
    Heap(Heap<K>),
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            repr: Repr::Linear(Linear {
                keys: Vec::new(),
                pending: 0,
                earliest: None,
            }),
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
        match &self.repr {
            Repr::Linear(l) => l.earliest.map(|s| (l.keys[s], s)),
            Repr::Heap(h) => h.heap.first().copied(),
        }
    }

    /// The key of `slot`, if it is pending.
    pub fn get(&self, slot: usize) -> Option<K> {
        match &self.repr {
            Repr::Linear(l) => l.get(slot),
            Repr::Heap(h) => h.get(slot),
        }
    }

    /// How many slots are pending.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Linear(l) => l.pending.count_ones() as usize,
            Repr::Heap(h) => h.heap.len(),
        }
    }

    /// Whether no slot is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes `slot` pending with `key`, replacing its key if it had one.
    #[inline]
    pub fn set(&mut self, slot: usize, key: K) {
        match &mut self.repr {
            Repr::Linear(l) if slot < LINEAR_SLOTS => l.set(slot, key),
            _ => self.set_in_heap(slot, key),
        }
    }

    /// [`TimerQueue::set`] past the scanned slots: turns the array into a heap first.
    #[inline(never)]
    fn set_in_heap(&mut self, slot: usize, key: K) {
        if let Repr::Linear(l) = &self.repr {
            let mut h = Heap {
                heap: Vec::new(),
                pos: Vec::new(),
            };
            for s in 0..l.keys.len() {
                if let Some(k) = l.get(s) {
                    h.set(s, k);
                }
            }
            self.repr = Repr::Heap(h);
        }
        if let Repr::Heap(h) = &mut self.repr {
            h.set(slot, key);
        }
    }

    /// Makes `slot` not pending (nothing happens if it was not).
    pub fn remove(&mut self, slot: usize) {
        match &mut self.repr {
            Repr::Linear(l) => l.remove(slot),
            Repr::Heap(h) => h.remove(slot),
        }
    }
}

/// Keys in slot order, a bit per pending slot, and which is the smallest.
#[derive(Clone, Debug)]
struct Linear<K> {
    /// Slot `s`'s key where bit `s` of `pending` is set; anything elsewhere.
    keys: Vec<K>,
    pending: u32,
    earliest: Option<usize>,
}

impl<K: Ord + Copy> Linear<K> {
    fn get(&self, slot: usize) -> Option<K> {
        (slot < self.keys.len() && self.pending & (1 << slot) != 0).then(|| self.keys[slot])
    }

    #[inline]
    fn set(&mut self, slot: usize, key: K) {
        if slot >= self.keys.len() {
            self.keys.resize(slot + 1, key);
        }
        let old = std::mem::replace(&mut self.keys[slot], key);
        self.pending |= 1 << slot;
        match self.earliest {
            // The earliest moved later: another may be earlier now. (The earliest
            // slot is pending, so `old` is its key.)
            Some(e) if e == slot => {
                if key > old {
                    self.rescan();
                }
            }
            Some(e) if self.keys[e] <= key => {}
            _ => self.earliest = Some(slot),
        }
    }

    fn remove(&mut self, slot: usize) {
        if self.get(slot).is_some() {
            self.pending &= !(1 << slot);
            if self.earliest == Some(slot) {
                self.rescan();
            }
        }
    }

    fn rescan(&mut self) {
        let mut rest = self.pending;
        if rest == 0 {
            self.earliest = None;
            return;
        }
        let mut best = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        while rest != 0 {
            let s = rest.trailing_zeros() as usize;
            if self.keys[s] < self.keys[best] {
                best = s;
            }
            rest &= rest - 1;
        }
        self.earliest = Some(best);
    }
}

/// An indexed binary min-heap of (key, slot).
#[derive(Clone, Debug)]
struct Heap<K> {
    heap: Vec<(K, usize)>,
    /// Per slot, its index in `heap`, or `ABSENT`.
    pos: Vec<usize>,
}

const ABSENT: usize = usize::MAX;

impl<K: Ord + Copy> Heap<K> {
    fn get(&self, slot: usize) -> Option<K> {
        let i = *self.pos.get(slot)?;
        (i != ABSENT).then(|| self.heap[i].0)
    }

    fn set(&mut self, slot: usize, key: K) {
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

    fn remove(&mut self, slot: usize) {
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
    /// smallest pending key, and each slot's key is the one last set. With few slots
    /// (scanned), exactly as many as scanning allows, and more (the queue turns into a
    /// heap part-way, when the first slot past the limit is set).
    #[test]
    fn agrees_with_a_linear_scan_under_random_moves() {
        for slots in [1, 6, LINEAR_SLOTS, LINEAR_SLOTS + 1, 40] {
            let mut rng = ChaCha8Rng::seed_from_u64(slots as u64);
            let mut q = TimerQueue::new();
            let mut model: Vec<Option<u64>> = vec![None; slots];
            for step in 0..20_000 {
                // The high slots only join after a while, so the switch to a heap
                // happens with keys already pending.
                let reach = if step < 5000 {
                    slots.min(LINEAR_SLOTS)
                } else {
                    slots
                };
                let slot = (rng.next_u32() % reach as u32) as usize;
                if rng.next_u32() % 4 == 0 {
                    q.remove(slot);
                    model[slot] = None;
                } else {
                    // Few distinct keys, so that ties are common (the slot in the key
                    // makes the smallest one unique).
                    let key = u64::from(rng.next_u32() % 50);
                    q.set(slot, (key, slot));
                    model[slot] = Some(key);
                }
                let expect = model
                    .iter()
                    .enumerate()
                    .filter_map(|(s, k)| k.map(|k| ((k, s), s)))
                    .min();
                assert_eq!(q.peek(), expect, "{slots} slots, step {step}");
                assert_eq!(q.get(slot).map(|(k, _)| k), model[slot]);
                assert_eq!(q.len(), model.iter().flatten().count());
            }
            for s in 0..slots {
                q.remove(s);
            }
            assert!(q.is_empty());
            assert_eq!(q.peek(), None);
            assert_eq!(q.get(1000), None, "a slot never set is not pending");
            q.remove(1000);
        }
    }
}
