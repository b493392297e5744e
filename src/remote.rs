//! Cross-thread submission: `call_soon_threadsafe` from any thread hands its
//! handle over (or, holding the GIL, appends it to the ready queue) and wakes
//! the parked loop through the waker of the runtime's `block_on`, which
//! unparks tokio's driver. No polling anywhere.

use crate::handles::Handle;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::Waker;

pub struct Remote {
    queue: Mutex<Vec<Py<Handle>>>,
    /// Work arrived from another thread, or a wake-up was asked for: the
    /// loop must not park before its next look at the queues.
    pending: AtomicBool,
    // True while the loop thread is (about to be) blocked in the runtime.
    pub sleeping: AtomicBool,
    /// The parked loop's waker, registered by `Wait` before it checks `pending`.
    waker: Mutex<Option<Waker>>,
}

impl Remote {
    pub fn new() -> Self {
        Remote {
            queue: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    pub fn push(&self, handle: Py<Handle>) {
        // A poisoned lock only means another thread panicked mid-push; the Vec is still sound.
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push(handle);
        drop(q);
        self.pending.store(true, Ordering::SeqCst);
        self.wake_now();
    }

    /// Wakes the loop if it is sleeping. Paired with `CoreLoop::block`, which
    /// sets `sleeping` before it releases the GIL (our callers hold it), so a
    /// sleeping loop is seen here; `pending` is set before the waker is read
    /// and `Wait` registers its waker before reading `pending`, so either this
    /// finds the waker or the loop finds `pending`.
    ///
    /// The first call per sleep takes `sleeping` down and wakes; the calls
    /// after it (a producer thread keeps the GIL for up to a switch interval)
    /// cost one atomic read.
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.pending.store(true, Ordering::SeqCst);
            self.wake_now();
        }
    }

    /// asyncio's `_write_to_self`: the next wait returns at once, whether or
    /// not the loop sleeps now.
    pub fn force_wake(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.wake_now();
    }

    fn wake_now(&self) {
        let slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = slot.as_ref() {
            w.wake_by_ref();
        }
    }

    /// Called by the parked loop (from its future's poll) before it checks `pending`.
    pub fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// Forgets the waker (it keeps the runtime's driver alive): at close().
    pub fn forget_waker(&self) {
        let old = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
    }

    #[inline]
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    pub fn drain(&self, out: &mut Vec<Py<Handle>>) {
        // Plain load first: the common case (nothing from other threads) stays a
        // cheap read instead of a locked read-modify-write every iteration.
        if !self.pending.load(Ordering::Relaxed) || !self.pending.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        out.append(&mut q);
    }
}
