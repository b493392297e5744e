//! Cross-thread submission: `call_soon_threadsafe` from any thread hands its
//! handle over here and wakes the loop through tokio's `Notify`, which unparks
//! the runtime's driver. No polling anywhere.

use crate::handles::Handle;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Remote {
    queue: Mutex<Vec<Py<Handle>>>,
    pending: AtomicBool,
    // True while the loop thread is (about to be) blocked in the runtime.
    pub sleeping: AtomicBool,
    pub notify: Notify,
}

impl Remote {
    pub fn new() -> Self {
        Remote {
            queue: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    pub fn push(&self, handle: Py<Handle>) {
        // A poisoned lock only means another thread panicked mid-push; the Vec is still sound.
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push(handle);
        drop(q);
        self.pending.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Wakes the loop if it is sleeping. Paired with `Loop::block`, which sets
    /// `sleeping` before re-checking `pending` (SeqCst on both sides), so either
    /// the loop sees the work or we see it sleeping; `Notify` keeps a permit for
    /// the window before it actually parks.
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    pub fn force_wake(&self) {
        self.notify.notify_one();
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
