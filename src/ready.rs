//! The ready queue: FIFO, and asyncio's batch rule — one loop iteration runs
//! exactly the callbacks that were ready when it began; whatever they schedule
//! waits for the next iteration (so I/O and timers are never starved).
//!
//! Generic so `cargo test` can pin the rule without Python; the loop uses
//! `ReadyQueue<Py<Handle>>`.

use std::collections::VecDeque;

pub struct ReadyQueue<T> {
    queue: VecDeque<T>,
    // Callbacks of the current batch not yet handed out.
    batch_left: usize,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<T> ReadyQueue<T> {
    pub fn with_capacity(n: usize) -> Self {
        ReadyQueue {
            queue: VecDeque::with_capacity(n),
            batch_left: 0,
        }
    }

    pub fn push_back(&mut self, item: T) {
        self.queue.push_back(item);
    }

    pub fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        self.queue.extend(items);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter()
    }

    /// Everything still queued, in order (the loop releases them one by one).
    pub fn into_items(self) -> impl Iterator<Item = T> {
        self.queue.into_iter()
    }

    /// Starts an iteration's batch: everything queued now, nothing queued later.
    /// Returns the batch size.
    pub fn start_batch(&mut self) -> usize {
        self.batch_left = self.queue.len();
        self.batch_left
    }

    /// The next callback of the current batch, or None once the batch is done
    /// (even if callbacks queued during the batch are waiting).
    pub fn next_in_batch(&mut self) -> Option<T> {
        if self.batch_left == 0 {
            return None;
        }
        self.batch_left -= 1;
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_batch(
        q: &mut ReadyQueue<u32>,
        mut on_run: impl FnMut(u32, &mut ReadyQueue<u32>),
    ) -> Vec<u32> {
        let mut ran = Vec::new();
        q.start_batch();
        while let Some(x) = q.next_in_batch() {
            ran.push(x);
            on_run(x, q);
        }
        ran
    }

    #[test]
    fn fifo_order() {
        let mut q = ReadyQueue::with_capacity(4);
        q.extend(0..10);
        q.push_back(10);
        assert_eq!(q.len(), 11);
        assert_eq!(run_batch(&mut q, |_, _| {}), (0..=10).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    #[test]
    fn callbacks_scheduled_during_a_batch_run_in_the_next() {
        let mut q = ReadyQueue::default();
        q.extend([1, 2, 3]);
        // each callback schedules a follow-up (like a self-rescheduling call_soon chain)
        let first = run_batch(&mut q, |x, q| q.push_back(x * 10));
        assert_eq!(first, vec![1, 2, 3]);
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![10, 20, 30]);
        let second = run_batch(&mut q, |x, q| {
            if x < 100 {
                q.push_back(x * 10)
            }
        });
        assert_eq!(second, vec![10, 20, 30]);
        assert_eq!(run_batch(&mut q, |_, _| {}), vec![100, 200, 300]);
        assert_eq!(run_batch(&mut q, |_, _| {}), Vec::<u32>::new());
    }

    #[test]
    fn an_aborted_batch_leaves_the_rest_queued_for_the_next() {
        // A callback raising SystemExit ends the iteration early: the rest stay
        // queued in order, and the next batch starts from them.
        let mut q = ReadyQueue::default();
        q.extend([1, 2, 3, 4]);
        q.start_batch();
        assert_eq!(q.next_in_batch(), Some(1));
        q.push_back(5);
        let next = run_batch(&mut q, |_, _| {});
        assert_eq!(next, vec![2, 3, 4, 5]);
    }

    #[test]
    fn a_batch_never_overruns_into_new_work_under_churn() {
        // Many iterations with wrap-around of the ring buffer: each batch is
        // exactly what was queued at its start, in order.
        let mut q = ReadyQueue::with_capacity(2);
        let mut next_id = 0u32;
        let mut expected: VecDeque<u32> = VecDeque::new();
        for round in 0..2_000u32 {
            for _ in 0..(round % 13) {
                q.push_back(next_id);
                expected.push_back(next_id);
                next_id += 1;
            }
            let n = q.len();
            let want: Vec<u32> = expected.drain(..n).collect();
            let mut added = Vec::new();
            let got = run_batch(&mut q, |x, q| {
                if x % 3 == 0 {
                    q.push_back(1_000_000 + x);
                    added.push(1_000_000 + x);
                }
            });
            assert_eq!(got, want, "round {round}");
            expected.extend(added);
        }
    }
}
