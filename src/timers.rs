//! The timer heap: deadline order, then insertion order for equal deadlines
//! (asyncio's heapq does not guarantee the latter; FIFO is the stricter choice).

use crate::handles::{CancelCounter, Handle, TimerHandle};
use pyo3::prelude::*;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

struct Entry {
    // The deadline as an unsigned key with the same order as f64::total_cmp,
    // so each of the heap's many comparisons is two integer compares.
    key: u64,
    seq: u64,
    handle: Py<TimerHandle>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
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

pub struct TimerHeap {
    heap: BinaryHeap<Entry>,
    seq: u64,
    cancelled: CancelCounter,
    // Cancelled timers dropped from the heap so far, for Loop.stats().
    cancelled_dropped: u64,
}

impl TimerHeap {
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

    pub fn push(&mut self, when: f64, handle: Py<TimerHandle>) {
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
            handle,
        });
    }

    fn is_cancelled(py: Python<'_>, h: &Py<TimerHandle>) -> bool {
        let base: &Handle = h.bind(py).as_super().get();
        base.is_cancelled(py)
    }

    /// Drops cancelled entries: from the top always, from the whole heap when
    /// they dominate it. Returns the removed handles so they are freed outside
    /// any borrow of the loop state.
    pub fn prune(&mut self, py: Python<'_>) -> Vec<Py<TimerHandle>> {
        let mut dead = Vec::new();
        let n_cancelled = self.cancelled.load(Ordering::Relaxed);
        if n_cancelled > MIN_CANCELLED_FOR_COMPACTION && n_cancelled * 2 > self.heap.len() {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut keep = Vec::with_capacity(entries.len() - n_cancelled.min(entries.len()));
            for e in entries {
                if Self::is_cancelled(py, &e.handle) {
                    dead.push(e.handle);
                } else {
                    keep.push(e);
                }
            }
            self.heap = BinaryHeap::from(keep);
            self.cancelled_dropped += dead.len() as u64;
            self.cancelled.store(0, Ordering::Relaxed);
        }
        while let Some(top) = self.heap.peek() {
            if !Self::is_cancelled(py, &top.handle) {
                break;
            }
            if let Some(e) = self.heap.pop() {
                dead.push(e.handle);
                self.cancelled_dropped += 1;
                let c = self.cancelled.load(Ordering::Relaxed);
                self.cancelled.store(c.saturating_sub(1), Ordering::Relaxed);
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
        self.cancelled_dropped += 1;
        let c = self.cancelled.load(Ordering::Relaxed);
        self.cancelled.store(c.saturating_sub(1), Ordering::Relaxed);
    }

    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| key_when(e.key))
    }

    /// Pops every timer due at `now`, cancelled ones included (the caller skips them).
    pub fn pop_due(&mut self, now: f64, out: &mut Vec<Py<TimerHandle>>) {
        while let Some(top) = self.heap.peek() {
            if key_when(top.key) > now {
                break;
            }
            if let Some(e) = self.heap.pop() {
                out.push(e.handle);
            }
        }
    }

    pub fn take_all(&mut self) -> Vec<Py<TimerHandle>> {
        self.cancelled.store(0, Ordering::Relaxed);
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.handle)
            .collect()
    }
}

impl TimerHeap {
    pub fn traverse(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for e in self.heap.iter() {
            visit.call(&e.handle)?;
        }
        Ok(())
    }
}
