//! The timer heap: deadline order, then insertion order for equal deadlines
//! (asyncio's heapq does not guarantee the latter; FIFO is the stricter choice).
//!
//! Generic over what a timer carries so the ordering and cancellation
//! bookkeeping can be unit-tested without Python (`cargo test`); the loop uses
//! `TimerHeap<Py<TimerHandle>>`.

use crate::handles::{CancelCounter, Handle, TimerHandle};
use pyo3::prelude::*;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

struct Entry<T> {
    // The deadline as an unsigned key with the same order as f64::total_cmp,
    // so each of the heap's many comparisons is two integer compares.
    key: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.key, other.seq).cmp(&(self.key, self.seq))
    }
}

const SIGN: u64 = 1 << 63;

/// f64 -> u64 preserving `total_cmp` order (negative values reversed below
/// the positive ones).
#[inline]
fn order_key(when: f64) -> u64 {
    let b = when.to_bits();
    if b & SIGN != 0 {
        !b
    } else {
        b | SIGN
    }
}

#[inline]
fn key_when(key: u64) -> f64 {
    f64::from_bits(if key & SIGN != 0 { key & !SIGN } else { !key })
}

/// Compaction happens once this many cancelled timers sit in the heap and
/// they make up more than half of it (asyncio uses the same kind of rule).
const MIN_CANCELLED_FOR_COMPACTION: usize = 100;

pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
    // Shared with the handles: cancel() bumps it, so the heap knows when
    // compaction pays off without scanning.
    cancelled: CancelCounter,
    // Cancelled timers dropped from the heap so far, for Loop.stats().
    cancelled_dropped: u64,
}

impl<T> TimerHeap<T> {
    pub fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            seq: 0,
            cancelled: CancelCounter::default(),
            cancelled_dropped: 0,
        }
    }

    pub fn counter(&self) -> CancelCounter {
        self.cancelled.clone()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn push(&mut self, when: f64, item: T) {
        self.seq += 1;
        // NaN would never compare due; asyncio runs such a timer at once, so do we.
        let when = if when.is_nan() {
            f64::NEG_INFINITY
        } else {
            when
        };
        self.heap.push(Entry {
            key: order_key(when),
            seq: self.seq,
            item,
        });
    }

    fn note_dropped(&mut self, n: usize) {
        self.cancelled_dropped += n as u64;
        let c = self.cancelled.load(Ordering::Relaxed);
        self.cancelled.store(c.saturating_sub(n), Ordering::Relaxed);
    }

    /// Drops cancelled entries: from the top always, from the whole heap when
    /// they dominate it. Returns the removed items so they are freed outside
    /// any borrow of the loop state.
    pub fn prune_with(&mut self, is_cancelled: impl Fn(&T) -> bool) -> Vec<T> {
        let mut dead = Vec::new();
        let n_cancelled = self.cancelled.load(Ordering::Relaxed);
        if n_cancelled > MIN_CANCELLED_FOR_COMPACTION && n_cancelled * 2 > self.heap.len() {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut keep = Vec::with_capacity(entries.len() - n_cancelled.min(entries.len()));
            for e in entries {
                if is_cancelled(&e.item) {
                    dead.push(e.item);
                } else {
                    keep.push(e);
                }
            }
            self.heap = BinaryHeap::from(keep);
            self.cancelled_dropped += dead.len() as u64;
            self.cancelled.store(0, Ordering::Relaxed);
        }
        while let Some(top) = self.heap.peek() {
            if !is_cancelled(&top.item) {
                break;
            }
            if let Some(e) = self.heap.pop() {
                dead.push(e.item);
                self.note_dropped(1);
            }
        }
        dead
    }

    /// Cancelled timers seen so far: those already dropped plus those still queued.
    pub fn cancelled_total(&self) -> u64 {
        self.cancelled_dropped + self.cancelled.load(Ordering::Relaxed) as u64
    }

    /// A cancelled timer left the heap by coming due: keep the counts right.
    pub fn note_due_cancelled(&mut self) {
        self.note_dropped(1);
    }

    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| key_when(e.key))
    }

    /// Pops every timer due at `now`, cancelled ones included (the caller skips them).
    pub fn pop_due(&mut self, now: f64, out: &mut Vec<T>) {
        while let Some(top) = self.heap.peek() {
            if key_when(top.key) > now {
                break;
            }
            if let Some(e) = self.heap.pop() {
                out.push(e.item);
            }
        }
    }

    pub fn take_all(&mut self) -> Vec<T> {
        self.cancelled.store(0, Ordering::Relaxed);
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }
}

impl TimerHeap<Py<TimerHandle>> {
    pub fn prune(&mut self, py: Python<'_>) -> Vec<Py<TimerHandle>> {
        self.prune_with(|h| {
            let base: &Handle = h.bind(py).as_super().get();
            base.is_cancelled(py)
        })
    }

    pub fn traverse(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for e in self.heap.iter() {
            crate::handles::traverse_loop_owned(&e.item, visit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A test timer: an id and a cancel flag the test flips (as Handle.cancel() would,
    /// together with the shared counter).
    #[derive(Clone)]
    struct T {
        id: u32,
        cancelled: Rc<Cell<bool>>,
    }

    fn timer(id: u32) -> T {
        T {
            id,
            cancelled: Rc::new(Cell::new(false)),
        }
    }

    fn cancel(heap: &TimerHeap<T>, t: &T) {
        t.cancelled.set(true);
        heap.counter().fetch_add(1, Ordering::Relaxed);
    }

    fn due_ids(heap: &mut TimerHeap<T>, now: f64) -> Vec<u32> {
        let mut out = Vec::new();
        heap.pop_due(now, &mut out);
        out.iter()
            .filter(|t| !t.cancelled.get())
            .map(|t| t.id)
            .collect()
    }

    #[test]
    fn order_keys_sort_like_total_cmp_and_round_trip() {
        let mut vals = vec![
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1.0,
            1.5,
            1e9,
            3600.000001,
            f64::MAX,
            f64::INFINITY,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            // xorshift: a spread of finite values of both signs
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                vals.push(v);
            }
        }
        for a in &vals {
            assert_eq!(key_when(order_key(*a)).to_bits(), a.to_bits());
            for b in vals.iter().take(40) {
                assert_eq!(
                    order_key(*a).cmp(&order_key(*b)),
                    a.total_cmp(b),
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn deadline_order_then_insertion_order() {
        let mut h = TimerHeap::new();
        for (id, when) in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 1.0), (5, 1.0), (6, 0.5)] {
            h.push(when, timer(id));
        }
        assert_eq!(h.next_deadline(), Some(0.5));
        assert_eq!(due_ids(&mut h, 1.0), vec![6, 2, 4, 5]);
        assert_eq!(h.len(), 2);
        assert_eq!(due_ids(&mut h, 2.5), vec![3]);
        assert_eq!(due_ids(&mut h, 2.9999), Vec::<u32>::new());
        assert_eq!(due_ids(&mut h, 3.0), vec![1]);
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn colliding_deadlines_keep_fifo_over_many_timers() {
        let mut h = TimerHeap::new();
        for id in 0..10_000u32 {
            h.push(f64::from(id % 7), timer(id));
        }
        let got = due_ids(&mut h, 100.0);
        let mut want: Vec<u32> = (0..10_000).collect();
        want.sort_by_key(|id| (id % 7, *id));
        assert_eq!(got, want);
    }

    #[test]
    fn nan_and_infinite_deadlines() {
        let mut h = TimerHeap::new();
        h.push(f64::INFINITY, timer(1));
        h.push(f64::NAN, timer(2));
        h.push(f64::NEG_INFINITY, timer(3));
        h.push(0.0, timer(4));
        // NaN counts as -inf: due at once (as asyncio runs it), in insertion order
        assert_eq!(due_ids(&mut h, f64::MIN), vec![2, 3]);
        assert_eq!(due_ids(&mut h, 1e300), vec![4]);
        assert_eq!(h.len(), 1, "an infinite deadline never comes due");
    }

    #[test]
    fn cancelled_top_entries_are_pruned_and_counted() {
        let mut h = TimerHeap::new();
        let ts: Vec<T> = (0..5).map(timer).collect();
        for (i, t) in ts.iter().enumerate() {
            h.push(i as f64, t.clone());
        }
        cancel(&h, &ts[0]);
        cancel(&h, &ts[1]);
        cancel(&h, &ts[3]); // not at the top: stays until it comes due or compaction
        assert_eq!(h.cancelled_total(), 3);
        let dead = h.prune_with(|t| t.cancelled.get());
        assert_eq!(dead.iter().map(|t| t.id).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.next_deadline(), Some(2.0));
        assert_eq!(h.cancelled_total(), 3);
        // The loop skips a cancelled timer that comes due and reports it.
        let mut out = Vec::new();
        h.pop_due(3.0, &mut out);
        for t in &out {
            if t.cancelled.get() {
                h.note_due_cancelled();
            }
        }
        assert_eq!(out.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(h.cancelled_total(), 3);
        assert_eq!(h.counter().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn many_cancelled_timers_do_not_pin_memory() {
        // 200,000 far-future timers, all but 10 cancelled: compaction frees them
        // although none is at the top.
        let mut h = TimerHeap::new();
        h.push(0.5, timer(u32::MAX)); // a live timer on top blocks top-pruning
        let mut kept = Vec::new();
        for id in 0..200_000u32 {
            let t = timer(id);
            h.push(3600.0 + f64::from(id), t.clone());
            if id % 20_000 == 0 {
                kept.push(t);
            } else {
                cancel(&h, &t);
            }
        }
        let dead = h.prune_with(|t| t.cancelled.get());
        assert_eq!(dead.len(), 200_000 - kept.len());
        assert_eq!(h.len(), 1 + kept.len());
        assert_eq!(h.cancelled_total(), dead.len() as u64);
        let mut ids = due_ids(&mut h, f64::INFINITY);
        ids.sort_unstable();
        let mut want: Vec<u32> = kept.iter().map(|t| t.id).collect();
        want.push(u32::MAX);
        want.sort_unstable();
        assert_eq!(ids, want);
    }

    #[test]
    fn few_cancelled_timers_do_not_trigger_a_full_scan() {
        let mut h = TimerHeap::new();
        h.push(0.0, timer(0));
        let scanned = Cell::new(0usize);
        let ts: Vec<T> = (1..=150).map(timer).collect();
        for t in &ts {
            h.push(10.0, t.clone());
        }
        for t in ts.iter().take(50) {
            cancel(&h, t);
        }
        // 50 cancelled of 151: below half, so only the (live) top is looked at.
        let dead = h.prune_with(|t| {
            scanned.set(scanned.get() + 1);
            t.cancelled.get()
        });
        assert!(dead.is_empty());
        assert_eq!(scanned.get(), 1);
    }

    #[test]
    fn take_all_empties_and_resets_the_counter() {
        let mut h = TimerHeap::new();
        let ts: Vec<T> = (0..4).map(timer).collect();
        for t in &ts {
            h.push(1.0, t.clone());
        }
        cancel(&h, &ts[2]);
        let all = h.take_all();
        assert_eq!(all.len(), 4);
        assert_eq!(h.len(), 0);
        assert_eq!(h.counter().load(Ordering::Relaxed), 0);
        assert_eq!(h.next_deadline(), None);
    }
}
