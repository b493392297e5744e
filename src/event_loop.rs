//! The loop core: ready queue, timers, I/O readiness and the run loop.
//!
//! One tokio current-thread runtime per loop, driven on the thread that runs
//! the loop. While callbacks run the GIL is held and tokio is not involved at
//! all; only when there is nothing to do does the loop release the GIL and
//! wait for its epoll set, a timer or a wake-up from another thread through
//! the runtime (driver.rs: how the two epoll sets are joined).

use crate::clock;
use crate::deadline::DeadlineTimer;
use crate::driver::{Driver, DriverCell};
use crate::gil_cell::GilRefCell;
use crate::handles::{self, check_callable, Args, Handle, TimerHandle};
use crate::poller::{EpollFd, Poller, Ready, MAX_EVENTS};
use crate::pyhelpers;
use crate::ready::ReadyQueue;
use crate::remote::Remote;
use crate::timers::TimerHeap;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};
use pyo3::PyTraverseError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// With user fds registered the epoll set is polled every iteration, as
/// asyncio's selector loop does (except right after a poll that left it
/// settled, see `run_once`). With only our signal wake-up socket in it,
/// a busy loop drains that socket after at most this many callbacks: signal
/// handlers themselves run every iteration through PyErr_CheckSignals.
const WAKEUP_DRAIN_EVERY: u64 = 64;

/// A poll that left the epoll set settled (`EpollFd::settled`) is trusted
/// before parking only if at most this many callbacks ran since: more, and
/// new events have likely come, which a look finds more cheaply than a wake
/// of the runtime (see `block`).
const FRESH_POLL_CALLBACKS: u64 = 8;

#[derive(Default, Clone, Copy)]
pub struct Stats {
    pub callbacks: u64,
    pub iterations: u64,
    pub timers_scheduled: u64,
    pub io_events: u64,
    pub longest_callback: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub blocking_reports: u64,
}

struct LoopState {
    ready: ReadyQueue<Py<Handle>>,
    timers: TimerHeap<Py<TimerHandle>>,
    poller: Poller,
    stopping: bool,
    running: bool,
    closed: bool,
    debug: bool,
    slow_callback_duration: f64,
    thread_id: Option<u64>,
    callbacks_at_last_poll: u64,
    /// `stats.iterations` of the iteration that last polled the epoll set.
    iteration_of_last_poll: u64,
    wakeup: Option<(OwnedFd, OwnedFd)>,
    stats: Stats,
    blocking_threshold: Option<f64>,
    blocking_hook: Option<Py<PyAny>>,
    debug_value: Option<Py<PyAny>>,
    deadline: Option<DeadlineTimer>,
    // fd -> weak reference to the native transport that owns it.
    transports: std::collections::HashMap<RawFd, Py<PyAny>>,
}

impl Drop for LoopState {
    /// A loop freed without close() (and not by the GC) still releases its
    /// handles the way the loop always does (see `handles::release_loop_owned`).
    fn drop(&mut self) {
        if self.ready.is_empty() && self.timers.len() == 0 {
            return;
        }
        let ready = std::mem::take(&mut self.ready);
        let timers = self.timers.take_all();
        Python::attach(|py| {
            handles::release_all_loop_owned(py, ready.into_items());
            handles::release_all_loop_owned(py, timers);
        });
    }
}

/// The handle being run: released through `handles::release_loop_owned`
/// however the iteration ends.
struct LoopOwned<'py>(std::mem::ManuallyDrop<Bound<'py, Handle>>);

impl Drop for LoopOwned<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: a Bound proves the GIL; the field is taken exactly once, here.
        unsafe {
            let b = std::mem::ManuallyDrop::take(&mut self.0);
            handles::release_loop_owned(b.into_ptr())
        }
    }
}

#[pyclass(module = "tokioloop._tokioloop", subclass, frozen, name = "CoreLoop")]
pub struct CoreLoop {
    state: GilRefCell<LoopState>,
    remote: Arc<Remote>,
    epoll: Arc<EpollFd>,
    driver: DriverCell,
    // The process that created the loop. After os.fork() the child shares the
    // kernel's epoll sets with the parent; it must neither run this loop nor
    // unregister anything from those sets.
    owner_pid: u32,
    self_refs: GilRefCell<SelfRefs>,
    /// Where callbacks scheduled without a context run (contexts.rs).
    run_ctx: crate::contexts::RunContext,
}

/// Objects the loop keeps that refer back to it: reported to the GC, and
/// dropped at close() so that a closed loop is freed by reference counting
/// (as the stdlib's), all but what user code assigned.
#[derive(Default)]
pub(crate) struct SelfRefs {
    /// `loop.call_soon`, the bound method handed out (bound_method.rs).
    pub call_soon: Option<Py<PyAny>>,
    /// What `loop.call_soon = ...` assigned, until `del loop.call_soon`.
    pub call_soon_assigned: Option<Py<PyAny>>,
    /// `{"loop": loop}`, the keywords create_future() passes (futures.rs).
    pub future_kwargs: Option<Py<pyo3::types::PyDict>>,
    /// `loop._task_factory` (set_task_factory); user-given, kept at close.
    pub task_factory: Option<Py<PyAny>>,
}

fn current_thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions; it is what threading.get_ident() returns.
    unsafe { libc::pthread_self() as u64 }
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// asyncio's rule for turning a file object into a descriptor.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        let fileno = obj.call_method0("fileno").map_err(|_| {
            PyValueError::new_err(format!(
                "Invalid file object: {}",
                obj.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        fileno
            .call_method0("__index__")
            .and_then(|i| i.extract())
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    obj.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

impl CoreLoop {
    /// The stdlib's debug-mode guard: loop methods that are not thread-safe
    /// refuse calls from a thread other than the one running the loop.
    fn check_thread_and_callback(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        method: &str,
    ) -> PyResult<bool> {
        let (closed, debug, thread_id) = {
            let st = self.state.borrow_mut(py);
            (st.closed, st.debug, st.thread_id)
        };
        if closed {
            return Err(closed_error());
        }
        if debug {
            if let Some(tid) = thread_id {
                if tid != current_thread_ident() {
                    return Err(PyRuntimeError::new_err(
                        "Non-thread-safe operation invoked on an event loop other than the current one",
                    ));
                }
            }
            if pyhelpers::is_coroutine_function(py, callback)? {
                return Err(PyTypeError::new_err(format!(
                    "coroutines cannot be used with {method}()"
                )));
            }
        }
        check_callable(py, callback, method)?;
        Ok(debug)
    }

    fn schedule_timer(
        &self,
        py: Python<'_>,
        when: f64,
        callback: &Bound<'_, PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Py<TimerHandle>> {
        let counter = self.state.borrow_mut(py).timers.counter();
        let th = TimerHandle::create(
            py,
            when,
            callback.clone().unbind(),
            args,
            context,
            debug,
            counter,
        )?;
        let th = th.unbind();
        let mut st = self.state.borrow_mut(py);
        st.timers.push(when, th.clone_ref(py));
        st.stats.timers_scheduled += 1;
        Ok(th)
    }

    /// The last poll left the epoll set settled (`EpollFd::settled`) and at
    /// most FRESH_POLL_CALLBACKS callbacks ran since.
    fn recently_settled(&self, st: &LoopState) -> bool {
        self.epoll.settled()
            && st.stats.callbacks - st.callbacks_at_last_poll <= FRESH_POLL_CALLBACKS
    }

    /// Parks with the GIL released until I/O, a timer deadline or a
    /// cross-thread wake-up (driver.rs: how, in which arrangement). Returns
    /// how many epoll events landed in `buf`.
    ///
    /// Events already waiting (a busy server) are taken first without letting
    /// go of the GIL. When the run loop's last poll left the set settled a few
    /// callbacks ago (`polled_empty`, see `EpollFd::settled`), that look is
    /// skipped. In the nested arrangement the look also matters for
    /// correctness: tokio watches our set edge-triggered, so a readiness it
    /// still holds from an earlier wake-up may be dropped before parking only
    /// once the set is known to hold nothing that would not come back as a
    /// new edge.
    fn block(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        buf: &mut [libc::epoll_event],
        polled_empty: bool,
    ) -> usize {
        if !polled_empty {
            let n = self.epoll.wait_now(buf);
            if n > 0 {
                return n;
            }
        }
        let remote = &*self.remote;
        remote
            .sleeping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: block() only runs inside run_forever, when close() cannot run.
        let driver = unsafe { self.driver.get() };
        let Some(driver) = driver.filter(|_| !remote.has_pending()) else {
            remote
                .sleeping
                .store(false, std::sync::atomic::Ordering::SeqCst);
            return self.epoll.wait_now(buf);
        };
        let timeout = timeout.and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok());
        let epoll = &*self.epoll;
        py.detach(move || {
            let n = driver.park(epoll, buf, remote, timeout);
            // Awake from here on, even while still waiting for the GIL: other
            // threads need not signal again.
            remote
                .sleeping
                .store(false, std::sync::atomic::Ordering::SeqCst);
            n
        })
    }

    fn drain_wakeup(&self, py: Python<'_>, fd: RawFd) {
        let _ = py;
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reading into a stack buffer from a non-blocking socket we own.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }

    /// One iteration, in asyncio's order: wait for (or poll) I/O, collect due
    /// timers, then run exactly the callbacks that were ready at that point.
    fn run_once(
        slf: &Bound<'_, Self>,
        events: &mut [libc::epoll_event],
        scratch: &mut Vec<Ready>,
        due: &mut Vec<Py<TimerHandle>>,
        remote_in: &mut Vec<Py<Handle>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (timeout, poll_io, dead, now) = {
            let mut st = this.state.borrow_mut(py);
            let dead = if st.timers.len() > 0 {
                st.timers.prune(py)
            } else {
                Vec::new()
            };
            let now = if st.timers.len() > 0 {
                clock::monotonic()
            } else {
                0.0
            };
            let busy = !st.ready.is_empty() || st.stopping || this.remote.has_pending();
            if busy {
                let poll = if st.poller.has_user_fds() {
                    // The callbacks that the last poll's handlers scheduled
                    // (a task woken by data_received) run before the next
                    // poll, as on uvloop, when that poll left the set
                    // settled: every other busy iteration still polls.
                    !(this.recently_settled(&st)
                        && st.stats.iterations == st.iteration_of_last_poll + 1)
                } else {
                    !st.poller.is_empty()
                        && st.stats.callbacks - st.callbacks_at_last_poll >= WAKEUP_DRAIN_EVERY
                };
                (Some(0.0), poll, dead, now)
            } else {
                let t = st.timers.next_deadline().map(|w| (w - now).max(0.0));
                (t, true, dead, now)
            }
        };
        // Each empty-collection guard below spares a busy iteration the
        // setup and teardown of an iterator over nothing.
        release_timers(py, dead);

        let blocked = timeout != Some(0.0);
        let n_events = if !blocked {
            if poll_io {
                this.epoll.wait_now(events)
            } else {
                0
            }
        } else {
            // With a timerfd (always, on Linux) the runtime has no timer of
            // its own: a deadline that cannot be armed is an error, not a
            // wait without end.
            let (timeout, polled_empty) = {
                let mut st = this.state.borrow_mut(py);
                let polled_empty = this.recently_settled(&st);
                let timeout = match (timeout, st.deadline.as_mut()) {
                    (Some(t), Some(timer)) => {
                        timer.arm(now + t).map_err(|e| {
                            PyOSError::new_err(format!("cannot arm the loop's timerfd: {e}"))
                        })?;
                        None
                    }
                    (t, _) => t,
                };
                (timeout, polled_empty)
            };
            this.block(py, timeout, events, polled_empty)
        };
        // SAFETY: run_once only runs inside run_forever, when close() cannot run.
        let n_events = match unsafe { this.driver.get() } {
            Some(driver) if n_events > 0 => driver.take_driver_event(events, n_events),
            _ => n_events,
        };

        {
            let mut st = this.state.borrow_mut(py);
            this.remote.drain(remote_in);
            if !remote_in.is_empty() {
                st.ready.extend(remote_in.drain(..));
            }
            let drained = if n_events > 0 {
                st.stats.io_events += n_events as u64;
                st.poller.dispatch(py, &events[..n_events], scratch)
            } else {
                true
            };
            if poll_io {
                st.callbacks_at_last_poll = st.stats.callbacks;
                st.iteration_of_last_poll = st.stats.iterations;
                // At most one event: a server that is not busy, whose next
                // request comes after the loop parks. With more, it usually
                // comes sooner, and a look before parking finds it without
                // entering the runtime.
                this.epoll.set_settled(n_events <= 1 && drained);
            }
        }
        let mut stale = Vec::new();
        for r in scratch.drain(..) {
            match r {
                Ready::Callback(h) => this.state.borrow_mut(py).ready.push_back(h),
                Ready::StaleReader(fd) => {
                    stale.extend(this.state.borrow_mut(py).poller.clear(fd, false))
                }
                Ready::StaleWriter(fd) => {
                    stale.extend(this.state.borrow_mut(py).poller.clear(fd, true))
                }
                Ready::Native(ready) => crate::sock_ops::on_ready(slf, ready),
                Ready::Internal(fd) => {
                    this.drain_wakeup(py, fd);
                    let mut st = this.state.borrow_mut(py);
                    if let Some(timer) = st.deadline.as_mut() {
                        if timer.raw_fd() == fd {
                            timer.fired();
                        }
                    }
                }
            }
        }
        drop(stale);

        // Python-level signal handlers (SIGINT's KeyboardInterrupt among them)
        // run here at the latest, right after the wake-up that the signal caused.
        py.check_signals()?;

        let mut dead_due = Vec::new();
        {
            let mut st = this.state.borrow_mut(py);
            if st.timers.len() > 0 {
                // After a wait the clock moved; in a busy iteration `now` is fresh enough.
                let end = if blocked { clock::monotonic() } else { now };
                st.timers.pop_due(end, due);
            }
            if !due.is_empty() {
                for th in due.drain(..) {
                    // Moved, not cloned: no reference-count traffic per timer.
                    let b = th.into_bound(py);
                    let base: &Handle = b.as_super().get();
                    base.set_scheduled(py, false);
                    if base.is_cancelled(py) {
                        st.timers.note_due_cancelled();
                        // Freed after the state borrow ends (freeing may run code).
                        dead_due.push(b.unbind());
                        continue;
                    }
                    // SAFETY: TimerHandle extends Handle, so the object is a Handle.
                    let h = unsafe { b.into_any().cast_into_unchecked::<Handle>() };
                    st.ready.push_back(h.unbind());
                }
            }
            st.stats.iterations += 1;
        }
        release_timers(py, dead_due);

        let (debug, detector) = {
            let mut st = this.state.borrow_mut(py);
            st.ready.start_batch();
            (st.debug, st.blocking_threshold)
        };
        // Callback timing costs two clock reads per callback: only when debug
        // mode or the blocking-call detector asked for it. The detector uses
        // the coarse clock (vDSO, no TSC read) when its threshold allows.
        let coarse = !debug && detector.map(|t| t >= 0.01).unwrap_or(false);
        let timed = debug || detector.is_some();
        let now_for_timing = || {
            if coarse {
                clock::monotonic_coarse()
            } else {
                clock::monotonic()
            }
        };
        let mut ran = 0u64;
        let mut longest = 0.0f64;
        let result = (|| -> PyResult<()> {
            loop {
                let Some(h) = this.state.borrow_mut(py).ready.next_in_batch() else {
                    break;
                };
                // Released through the guard on every path out of this iteration.
                let h = LoopOwned(std::mem::ManuallyDrop::new(h.into_bound(py)));
                let h: &Bound<'_, Handle> = &h.0;
                let handle = h.get();
                let t0 = if timed { now_for_timing() } else { 0.0 };
                // A panic in our own code under run() must not unwind through
                // the loop: it is reported like any failing callback.
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle.run(py, Some((&this.run_ctx, h.as_any())))
                }))
                .unwrap_or_else(|p| Err(pyhelpers::panic_to_pyerr(p)));
                ran += 1;
                let dt = if timed { now_for_timing() - t0 } else { 0.0 };
                if dt > longest {
                    longest = dt;
                }
                if let Err(e) = res {
                    if pyhelpers::is_exit_exception(py, &e) {
                        return Err(e);
                    }
                    pyhelpers::report_callback_error(py, Some(slf.as_any()), h.as_any(), e)?;
                }
                if timed {
                    // Read thresholds after the callback: it may have changed them.
                    let (slow, threshold, hook) = {
                        let st = this.state.borrow_mut(py);
                        (
                            st.slow_callback_duration,
                            st.blocking_threshold,
                            st.blocking_hook.as_ref().map(|h| h.clone_ref(py)),
                        )
                    };
                    if debug && dt >= slow {
                        pyhelpers::log_slow_callback(py, h.as_any(), dt)?;
                    } else if let Some(t) = threshold {
                        if dt >= t {
                            this.state.borrow_mut(py).stats.blocking_reports += 1;
                            pyhelpers::report_blocking_call(
                                py,
                                slf.as_any(),
                                h.as_any(),
                                dt,
                                hook,
                            )?;
                        }
                    }
                }
            }
            Ok(())
        })();
        let mut st = this.state.borrow_mut(py);
        st.stats.callbacks += ran;
        if longest > st.stats.longest_callback {
            st.stats.longest_callback = longest;
        }
        result
    }

    fn set_io(
        slf: &Bound<'_, Self>,
        fd_obj: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        write: bool,
    ) -> PyResult<()> {
        Self::set_io_checked(slf, fd_obj, callback, args, write, true)
    }

    fn set_io_checked(
        slf: &Bound<'_, Self>,
        fd_obj: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        write: bool,
        check_transport: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let method = if write { "add_writer" } else { "add_reader" };
        let debug = this.check_thread_and_callback(py, callback, method)?;
        let fd = fileobj_to_fd(fd_obj)?;
        if check_transport {
            this.ensure_fd_no_transport(py, fd)?;
        }
        let handle = Py::new(
            py,
            Handle::new(
                py,
                callback.clone().unbind(),
                Args::from_tuple(args),
                None,
                debug,
            )?,
        )?;
        let previous = {
            let mut st = this.state.borrow_mut(py);
            let previous = st.poller.set(fd, handle, write, false);
            if previous.is_ok() && !fd_obj.is_instance_of::<PyInt>() {
                st.poller
                    .set_fileobj(fd, Some(fd_obj.clone().unbind()), write);
            }
            previous
        };
        match previous {
            Ok(Some(old)) => Handle::cancel_py(old.bind(py)),
            Ok(None) => Ok(()),
            Err(e) => Err(PyOSError::new_err((
                e.raw_os_error().unwrap_or(0),
                e.to_string(),
            ))),
        }
    }

    // ---- scheduling, shared by the pymethods and the fast-call entry points ----

    /// The Handle for a fast-path call_soon(_threadsafe): None when the shape
    /// or the loop's state needs the general path; a null pointer (with the
    /// Python error set) when allocation failed.
    ///
    /// # Safety
    /// As for `call_soon_fast`.
    #[inline(always)]
    unsafe fn fast_handle(
        &self,
        py: Python<'_>,
        cb: *mut pyo3::ffi::PyObject,
        rest: &[*mut pyo3::ffi::PyObject],
        ctx: *mut pyo3::ffi::PyObject,
    ) -> Option<*mut pyo3::ffi::PyObject> {
        {
            let st = self.state.try_borrow_mut(py)?;
            if st.closed || st.debug {
                return None;
            }
        }
        if rest.len() > 1 || pyo3::ffi::PyCallable_Check(cb) == 0 {
            return None;
        }
        Handle::new_object_fast(py, cb, rest.first().copied(), ctx)
    }

    /// `call_soon` for the common case (loop open, not in debug mode, a
    /// callable, at most one argument): no Result plumbing, the handle built
    /// in place. `None` means the general path must handle the call (it also
    /// produces every error message); `Some(NULL)` is a failure with the
    /// Python error set.
    ///
    /// # Safety
    /// GIL held; `cb`, every pointer in `rest` and `ctx` (if not null) are
    /// live objects borrowed for the duration of the call.
    #[inline(always)]
    pub unsafe fn call_soon_fast(
        &self,
        py: Python<'_>,
        cb: *mut pyo3::ffi::PyObject,
        rest: &[*mut pyo3::ffi::PyObject],
        ctx: *mut pyo3::ffi::PyObject,
    ) -> Option<*mut pyo3::ffi::PyObject> {
        let obj = self.fast_handle(py, cb, rest, ctx)?;
        if obj.is_null() {
            return Some(obj);
        }
        // A GC pass during the allocation may have run arbitrary code; the
        // state is borrowed afresh.
        match self.state.try_borrow_mut(py) {
            Some(mut st) => {
                pyo3::ffi::Py_INCREF(obj);
                st.ready.push_back(
                    Bound::from_owned_ptr(py, obj)
                        .cast_into_unchecked::<Handle>()
                        .unbind(),
                );
                Some(obj)
            }
            None => {
                pyo3::ffi::Py_DECREF(obj);
                PyRuntimeError::new_err("call_soon() re-entered the loop's state").restore(py);
                Some(std::ptr::null_mut())
            }
        }
    }

    /// `call_later`/`call_at` for the common case, as `call_soon_fast`.
    ///
    /// # Safety
    /// As for `call_soon_fast`.
    #[inline(always)]
    pub unsafe fn call_at_fast(
        &self,
        py: Python<'_>,
        when: f64,
        cb: *mut pyo3::ffi::PyObject,
        rest: &[*mut pyo3::ffi::PyObject],
        ctx: *mut pyo3::ffi::PyObject,
    ) -> Option<*mut pyo3::ffi::PyObject> {
        if rest.len() > 1 || pyo3::ffi::PyCallable_Check(cb) == 0 || when.is_nan() {
            return None;
        }
        let counter = {
            let st = self.state.try_borrow_mut(py)?;
            if st.closed || st.debug {
                return None;
            }
            st.timers.counter()
        };
        let obj = TimerHandle::new_object_fast(py, when, cb, rest.first().copied(), ctx, counter)?;
        if obj.is_null() {
            return Some(obj);
        }
        match self.state.try_borrow_mut(py) {
            Some(mut st) => {
                pyo3::ffi::Py_INCREF(obj);
                st.timers.push(
                    when,
                    Bound::from_owned_ptr(py, obj)
                        .cast_into_unchecked::<TimerHandle>()
                        .unbind(),
                );
                st.stats.timers_scheduled += 1;
                Some(obj)
            }
            None => {
                pyo3::ffi::Py_DECREF(obj);
                PyRuntimeError::new_err("call_at() re-entered the loop's state").restore(py);
                Some(std::ptr::null_mut())
            }
        }
    }

    pub fn call_soon_impl(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let debug = self.check_thread_and_callback(py, callback, "call_soon")?;
        let h = Handle::new(py, callback.clone().unbind(), args, context, debug)?
            .into_loop_owned(py)?
            .unbind();
        self.state.borrow_mut(py).ready.push_back(h.clone_ref(py));
        Ok(h)
    }

    /// `call_soon_threadsafe` for the common case, as `call_soon_fast`.
    ///
    /// # Safety
    /// As for `call_soon_fast`.
    #[inline(always)]
    pub unsafe fn call_soon_threadsafe_fast(
        &self,
        py: Python<'_>,
        cb: *mut pyo3::ffi::PyObject,
        rest: &[*mut pyo3::ffi::PyObject],
        ctx: *mut pyo3::ffi::PyObject,
    ) -> Option<*mut pyo3::ffi::PyObject> {
        let obj = self.fast_handle(py, cb, rest, ctx)?;
        if obj.is_null() {
            return Some(obj);
        }
        pyo3::ffi::Py_INCREF(obj);
        let h = Bound::from_owned_ptr(py, obj)
            .cast_into_unchecked::<Handle>()
            .unbind();
        // As in call_soon_threadsafe_impl: the ready queue under the GIL, the
        // remote queue only for a re-entrant call.
        match self.state.try_borrow_mut(py) {
            Some(mut st) => {
                st.ready.push_back(h);
                drop(st);
                self.remote.wake();
            }
            None => self.remote.push(h),
        }
        Some(obj)
    }

    pub fn call_soon_threadsafe_impl(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let (closed, debug, thread_id) = match self.state.try_borrow_mut(py) {
            Some(st) => (st.closed, st.debug, st.thread_id),
            None => (false, false, None),
        };
        if closed {
            return Err(closed_error());
        }
        if debug && pyhelpers::is_coroutine_function(py, callback)? {
            return Err(PyTypeError::new_err(
                "coroutines cannot be used with call_soon_threadsafe()",
            ));
        }
        check_callable(py, callback, "call_soon_threadsafe")?;
        let h = Handle::new(py, callback.clone().unbind(), args, context, debug)?
            .into_loop_owned(py)?
            .unbind();
        let _ = thread_id;
        // Holding the GIL is enough to append to the ready queue from any thread:
        // the loop thread never keeps a borrow across a GIL release. That keeps
        // asyncio's ordering (arrival order) exactly. The remote queue is only
        // the fallback for a re-entrant call made while the state is borrowed.
        match self.state.try_borrow_mut(py) {
            Some(mut st) => {
                st.ready.push_back(h.clone_ref(py));
                drop(st);
                self.remote.wake();
            }
            None => self.remote.push(h.clone_ref(py)),
        }
        Ok(h)
    }

    pub fn call_later_impl(
        &self,
        py: Python<'_>,
        delay: Option<f64>,
        callback: &Bound<'_, PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let Some(delay) = delay else {
            return Err(PyTypeError::new_err("delay must not be None"));
        };
        // asyncio's call_later goes through call_at, and its errors name call_at.
        let debug = self.check_thread_and_callback(py, callback, "call_at")?;
        self.schedule_timer(
            py,
            clock::monotonic() + delay,
            callback,
            args,
            context,
            debug,
        )
    }

    pub fn call_at_impl(
        &self,
        py: Python<'_>,
        when: Option<f64>,
        callback: &Bound<'_, PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let Some(when) = when else {
            return Err(PyTypeError::new_err("when cannot be None"));
        };
        let debug = self.check_thread_and_callback(py, callback, "call_at")?;
        self.schedule_timer(py, when, callback, args, context, debug)
    }

    /// asyncio refuses add_reader & co. on an fd that a live transport owns.
    pub(crate) fn ensure_fd_no_transport(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let weak = self
            .state
            .borrow_mut(py)
            .transports
            .get(&fd)
            .map(|w| w.clone_ref(py));
        let Some(weak) = weak else { return Ok(()) };
        let transport = weak.bind(py).call0()?;
        if transport.is_none() {
            return Ok(());
        }
        if transport.call_method0("is_closing")?.is_truthy()? {
            return Ok(());
        }
        Err(PyRuntimeError::new_err(format!(
            "File descriptor {fd} is used by transport {}",
            transport.repr()?
        )))
    }

    pub fn register_transport(
        &self,
        py: Python<'_>,
        fd: RawFd,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let weak = pyo3::types::PyWeakrefReference::new(transport)?
            .into_any()
            .unbind();
        let old = self.state.borrow_mut(py).transports.insert(fd, weak);
        drop(old);
        Ok(())
    }

    pub fn unregister_transport(&self, py: Python<'_>, fd: RawFd, transport: &Bound<'_, PyAny>) {
        let old = {
            let mut st = self.state.borrow_mut(py);
            let same = st
                .transports
                .get(&fd)
                .map(|w| w.bind(py).call0().map(|t| t.is(transport)).unwrap_or(true))
                .unwrap_or(false);
            if same {
                st.transports.remove(&fd)
            } else {
                None
            }
        };
        drop(old);
    }

    // ---- API for the native transports (same thread, GIL held) ----

    /// A transport's handler left its fd possibly still ready (a read that
    /// filled its buffer, or no read at all): look at the set before parking.
    pub fn note_maybe_ready(&self, py: Python<'_>) {
        let _ = py;
        self.epoll.set_settled(false);
    }

    /// create_task may take its native path (futures.rs): the loop is open,
    /// not in debug mode, has no task factory, and its state is not busy.
    pub fn plain_task_creation(&self, py: Python<'_>) -> bool {
        let open_plain = self
            .state
            .try_borrow_mut(py)
            .is_some_and(|s| !s.closed && !s.debug);
        open_plain && self.self_refs(py, |r| r.task_factory.is_none()) == Some(true)
    }

    pub fn is_closed_now(&self, py: Python<'_>) -> bool {
        self.state
            .try_borrow_mut(py)
            .map(|s| s.closed)
            .unwrap_or(false)
    }

    /// How many callbacks are queued (a native transport reading a batch
    /// stops once its protocol scheduled something).
    pub fn ready_len(&self, py: Python<'_>) -> usize {
        self.state
            .try_borrow_mut(py)
            .map(|s| s.ready.len())
            .unwrap_or(usize::MAX)
    }

    pub fn debug_now(&self, py: Python<'_>) -> bool {
        self.state
            .try_borrow_mut(py)
            .map(|s| s.debug)
            .unwrap_or(false)
    }

    /// Schedules `callback(*args)` like call_soon (current context copied).
    pub fn schedule(&self, py: Python<'_>, callback: Py<PyAny>, args: Py<PyTuple>) -> PyResult<()> {
        let debug = self.debug_now(py);
        let h = Handle::new(py, callback, Args::Many(args), None, debug)?
            .into_object(py)?
            .unbind();
        let mut st = self.state.borrow_mut(py);
        if st.closed {
            return Err(closed_error());
        }
        st.ready.push_back(h);
        Ok(())
    }

    /// Makes `callback()` the reader (or writer) of `fd`, replacing any other;
    /// with `native`, the handle runs it as `native(callback.__self__)` (see
    /// `Handle::with_native`).
    /// `drains`: the callback leaves the fd drained in that direction, or
    /// says otherwise through `note_maybe_ready` (see `EpollFd::settled`).
    pub fn watch_fd(
        &self,
        py: Python<'_>,
        fd: RawFd,
        callback: Py<PyAny>,
        write: bool,
        native: Option<crate::handles::NativeFn>,
        drains: bool,
    ) -> PyResult<()> {
        let debug = self.debug_now(py);
        let mut handle = Handle::new(py, callback, Args::Empty, None, debug)?;
        if let Some(f) = native {
            handle = handle.with_native(f);
        }
        let handle = Py::new(py, handle)?;
        let previous = {
            let mut st = self.state.borrow_mut(py);
            if st.closed {
                return Err(closed_error());
            }
            st.poller.set(fd, handle, write, drains)
        };
        match previous {
            Ok(Some(old)) => Handle::cancel_py(old.bind(py)),
            Ok(None) => Ok(()),
            Err(e) => Err(PyErr::from(e)),
        }
    }

    pub fn unwatch_fd(&self, py: Python<'_>, fd: RawFd, write: bool) -> PyResult<bool> {
        let old = match self.state.try_borrow_mut(py) {
            Some(mut st) => st.poller.clear(fd, write),
            None => None,
        };
        match old {
            Some(h) => {
                Handle::cancel_py(h.bind(py))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub fn count_bytes(&self, py: Python<'_>, read: usize, written: usize) {
        if let Some(mut st) = self.state.try_borrow_mut(py) {
            st.stats.bytes_read += read as u64;
            st.stats.bytes_written += written as u64;
        }
    }

    /// See `Poller::set_edge`.
    pub fn set_edge_triggered(&self, py: Python<'_>, fd: RawFd, edge: bool) -> PyResult<()> {
        match self.state.try_borrow_mut(py) {
            Some(mut st) => st.poller.set_edge(fd, edge).map_err(PyErr::from),
            None => Ok(()),
        }
    }

    pub fn is_watching(&self, py: Python<'_>, fd: RawFd, write: bool) -> bool {
        self.state
            .try_borrow_mut(py)
            .map(|st| st.poller.get(py, fd, write).is_some())
            .unwrap_or(false)
    }

    fn clear_io(slf: &Bound<'_, Self>, fd_obj: &Bound<'_, PyAny>, write: bool) -> PyResult<bool> {
        Self::clear_io_checked(slf, fd_obj, write, true)
    }

    fn clear_io_checked(
        slf: &Bound<'_, Self>,
        fd_obj: &Bound<'_, PyAny>,
        write: bool,
        check_transport: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.state.borrow_mut(py).closed {
            return Ok(false);
        }
        let fd = match fileobj_to_fd(fd_obj) {
            Ok(fd) => fd,
            // A file object closed since it was registered: find it by identity.
            Err(e) => match this.state.borrow_mut(py).poller.fd_of_object(fd_obj) {
                Some(fd) => fd,
                None => return Err(e),
            },
        };
        if check_transport {
            this.ensure_fd_no_transport(py, fd)?;
        }
        let (old, native) = this.state.borrow_mut(py).poller.clear_user(fd, write);
        match old {
            Some(h) => {
                Handle::cancel_py(h.bind(py))?;
                Ok(true)
            }
            None => Ok(native.is_some()),
        }
    }

    /// The objects that refer back to the loop; None while they are borrowed
    /// (only a GC pass started by an allocation made under the borrow could
    /// see that, and callers allocate outside it).
    pub(crate) fn self_refs<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut SelfRefs) -> R,
    ) -> Option<R> {
        self.self_refs.try_borrow_mut(py).map(|mut s| f(&mut s))
    }

    /// The poller, for the native sock_* operations (src/sock_ops.rs).
    pub(crate) fn with_poller<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Poller) -> R,
    ) -> PyResult<R> {
        let mut st = self
            .state
            .try_borrow_mut(py)
            .ok_or_else(|| PyRuntimeError::new_err("event loop state is busy (re-entrant call)"))?;
        if st.closed {
            return Err(closed_error());
        }
        Ok(f(&mut st.poller))
    }
}

#[pymethods]
impl CoreLoop {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Self> {
        let deadline_timer = DeadlineTimer::new().ok();
        let has_time = deadline_timer.is_none();
        let epoll = Arc::new(EpollFd::new().map_err(PyErr::from)?);
        let remote = Arc::new(Remote::new());
        let driver = Driver::new(&epoll, has_time, &remote)
            .map_err(|e| PyOSError::new_err(format!("cannot start the tokio runtime: {e}")))?;
        let mut poller = Poller::new(epoll.clone());
        // Without a timerfd (never seen on Linux) the loop falls back to tokio's sleep.
        let deadline = match deadline_timer {
            Some(t) => {
                poller.add_internal(t.raw_fd()).map_err(|e| {
                    PyOSError::new_err(format!("cannot watch the loop's timerfd: {e}"))
                })?;
                Some(t)
            }
            None => None,
        };
        Ok(CoreLoop {
            state: GilRefCell::new(LoopState {
                ready: ReadyQueue::with_capacity(1024),
                timers: TimerHeap::new(),
                poller,
                stopping: false,
                running: false,
                closed: false,
                debug: false,
                slow_callback_duration: 0.1,
                thread_id: None,
                callbacks_at_last_poll: 0,
                iteration_of_last_poll: 0,
                wakeup: None,
                stats: Stats::default(),
                blocking_threshold: None,
                blocking_hook: None,
                debug_value: None,
                deadline,
                transports: std::collections::HashMap::new(),
            }),
            remote,
            epoll,
            driver: DriverCell::new(driver),
            owner_pid: std::process::id(),
            self_refs: GilRefCell::new(SelfRefs::default()),
            run_ctx: crate::contexts::RunContext::new(),
        })
    }

    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.call_soon_impl(py, callback, Args::from_tuple(args), context)
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.call_soon_threadsafe_impl(py, callback, Args::from_tuple(args), context)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        &self,
        py: Python<'_>,
        delay: Option<f64>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        self.call_later_impl(py, delay, callback, Args::from_tuple(args), context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        &self,
        py: Python<'_>,
        when: Option<f64>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        self.call_at_impl(py, when, callback, Args::from_tuple(args), context)
    }

    /// The run loop proper; `Loop.run_forever` wraps it with asyncio's
    /// bookkeeping (running-loop registration, async-generator hooks).
    fn _run_forever_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.state.borrow_mut(py);
            if st.closed {
                return Err(closed_error());
            }
            if st.running {
                return Err(PyRuntimeError::new_err(
                    "This event loop is already running",
                ));
            }
            if std::process::id() != this.owner_pid {
                return Err(PyRuntimeError::new_err(
                    "This event loop was created in another process (before os.fork()); create a new loop in this process",
                ));
            }
            st.running = true;
            st.thread_id = Some(current_thread_ident());
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let mut scratch = Vec::new();
        let mut due = Vec::new();
        let mut remote_in = Vec::new();
        // catch_unwind so the loop is never left marked running (wedged) by a panic.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
            if let Err(e) = Self::run_once(slf, &mut events, &mut scratch, &mut due, &mut remote_in)
            {
                break Err(e);
            }
            if this.state.borrow_mut(py).stopping {
                break Ok(());
            }
        }))
        .unwrap_or_else(|p| Err(pyhelpers::panic_to_pyerr(p)));
        let mut st = this.state.borrow_mut(py);
        st.stopping = false;
        st.running = false;
        st.thread_id = None;
        result
    }

    fn stop(&self, py: Python<'_>) {
        self.state.borrow_mut(py).stopping = true;
    }

    fn is_running(&self, py: Python<'_>) -> bool {
        self.state
            .try_borrow_mut(py)
            .map(|s| s.running)
            .unwrap_or(true)
    }

    fn is_closed(&self, py: Python<'_>) -> bool {
        self.state
            .try_borrow_mut(py)
            .map(|s| s.closed)
            .unwrap_or(false)
    }

    /// Marks the loop closed and drops every pending callback, timer and fd
    /// registration. Returns False if it was already closed.
    fn _close_core(&self, py: Python<'_>) -> PyResult<bool> {
        let (ready, timers, fds, wakeup) = {
            let mut st = self.state.borrow_mut(py);
            if st.running {
                return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
            }
            if st.closed {
                return Ok(false);
            }
            st.closed = true;
            let wakeup = st.wakeup.take();
            let forked = std::process::id() != self.owner_pid;
            if let Some((r, _)) = &wakeup {
                if !forked {
                    st.poller.remove_internal(r.as_raw_fd());
                }
            }
            (
                std::mem::take(&mut st.ready),
                st.timers.take_all(),
                if forked {
                    st.poller.forget_all()
                } else {
                    st.poller.take_all()
                },
                wakeup,
            )
        };
        handles::release_all_loop_owned(py, ready.into_items());
        handles::release_all_loop_owned(py, timers);
        drop((fds, wakeup));
        // Release the runtime (its epoll and eventfd), our epoll set and the
        // timerfd now, as the stdlib closes its selector in close().
        let deadline = self.state.borrow_mut(py).deadline.take();
        drop(deadline);
        // SAFETY: checked above that the loop is not running.
        let driver = unsafe { self.driver.take() };
        if std::process::id() == self.owner_pid {
            drop(driver);
        } else if let Some(driver) = driver {
            // A forked child: dropping the AsyncFd would deregister our epoll fd
            // from tokio's epoll set, which the parent shares. Leak it instead.
            std::mem::forget(driver);
        }
        self.epoll.close();
        let mut leftover = Vec::new();
        self.remote.drain(&mut leftover);
        handles::release_all_loop_owned(py, leftover);
        self.remote.forget_waker();
        let cached = self.self_refs(py, |s| (s.call_soon.take(), s.future_kwargs.take()));
        drop(cached);
        Ok(true)
    }

    /// Returns exactly what was given to set_debug(), as asyncio does.
    pub fn get_debug(&self, py: Python<'_>) -> Py<PyAny> {
        match self.state.try_borrow_mut(py) {
            Some(st) => match &st.debug_value {
                Some(v) => v.clone_ref(py),
                None => pyo3::types::PyBool::new(py, st.debug)
                    .to_owned()
                    .into_any()
                    .unbind(),
            },
            None => pyo3::types::PyBool::new(py, false)
                .to_owned()
                .into_any()
                .unbind(),
        }
    }

    fn _set_debug_core(&self, py: Python<'_>, enabled: &Bound<'_, PyAny>) -> PyResult<()> {
        let flag = enabled.is_truthy()?;
        let old = {
            let mut st = self.state.borrow_mut(py);
            st.debug = flag;
            st.debug_value.replace(enabled.clone().unbind())
        };
        drop(old);
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // See StreamTransport::__traverse__: the Python subclass (Loop) can be
        // traversed while our fields are still zero-filled; owner_pid is never 0 then.
        // SAFETY: reading a plain u32 field of zero-filled or initialised memory.
        if unsafe { std::ptr::read_volatile(std::ptr::addr_of!(self.owner_pid)) } == 0 {
            return Ok(());
        }
        if let Some(st) = self.state.try_borrow_mut_in_gc() {
            for h in st.ready.iter() {
                handles::traverse_loop_owned(h, &visit)?;
            }
            st.timers.traverse(&visit)?;
            st.poller.traverse(&visit)?;
            visit.call(&st.debug_value)?;
        }
        if let Some(refs) = self.self_refs.try_borrow_mut_in_gc() {
            visit.call(&refs.call_soon)?;
            visit.call(&refs.call_soon_assigned)?;
            visit.call(&refs.future_kwargs)?;
            visit.call(&refs.task_factory)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let refs = self
            .self_refs
            .try_borrow_mut_in_gc()
            .map(|mut s| std::mem::take(&mut *s));
        drop(refs);
        let taken = self.state.try_borrow_mut_in_gc().map(|mut st| {
            (
                std::mem::take(&mut st.ready),
                st.timers.take_all(),
                if std::process::id() != self.owner_pid {
                    st.poller.forget_all()
                } else {
                    st.poller.take_all()
                },
                st.debug_value.take(),
            )
        });
        if let Some((ready, timers, fds, debug_value)) = taken {
            // SAFETY: the GC calls tp_clear with the GIL held.
            let py = unsafe { Python::assume_attached() };
            handles::release_all_loop_owned(py, ready.into_items());
            handles::release_all_loop_owned(py, timers);
            drop((fds, debug_value));
        }
    }

    /// What set_task_factory() stored (None for none), where create_task's
    /// native path can see it; assigning the attribute works as on the stdlib.
    #[getter(_task_factory)]
    fn task_factory_attr(&self, py: Python<'_>) -> Py<PyAny> {
        self.self_refs(py, |r| r.task_factory.as_ref().map(|f| f.clone_ref(py)))
            .flatten()
            .unwrap_or_else(|| py.None())
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        let old = self
            .self_refs(py, |r| std::mem::replace(&mut r.task_factory, value))
            .ok_or_else(|| PyRuntimeError::new_err("event loop state is busy"))?;
        drop(old);
        Ok(())
    }

    #[getter]
    fn get_slow_callback_duration(&self, py: Python<'_>) -> f64 {
        self.state.borrow_mut(py).slow_callback_duration
    }

    #[setter]
    fn set_slow_callback_duration(&self, py: Python<'_>, value: f64) {
        self.state.borrow_mut(py).slow_callback_duration = value;
    }

    #[getter]
    fn _thread_id(&self, py: Python<'_>) -> Option<u64> {
        self.state.try_borrow_mut(py).and_then(|s| s.thread_id)
    }

    #[getter]
    fn _stopping(&self, py: Python<'_>) -> bool {
        self.state.borrow_mut(py).stopping
    }

    /// How the loop waits (driver.rs): "driver inside" or "nested"; None once closed.
    fn _wait_mode(&self, py: Python<'_>) -> Option<&'static str> {
        let _ = py;
        // SAFETY: the GIL is held, and close() (which takes the driver) needs it too.
        unsafe { self.driver.get() }.map(|d| d.mode_name())
    }

    fn _ready_count(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).ready.len()
    }

    fn _timer_count(&self, py: Python<'_>) -> usize {
        self.state.borrow_mut(py).timers.len()
    }

    /// Queues an existing handle (signal delivery reuses one handle per signal).
    fn _add_handle(&self, py: Python<'_>, handle: Py<Handle>) -> PyResult<()> {
        let mut st = self.state.borrow_mut(py);
        if st.closed {
            return Err(closed_error());
        }
        st.ready.push_back(handle);
        Ok(())
    }

    /// Wakes the loop from any thread (asyncio's name for its self-pipe write).
    fn _write_to_self(&self) {
        self.remote.force_wake();
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::set_io(slf, fd, callback, args, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::set_io(slf, fd, callback, args, true)
    }

    /// asyncio's private variants: no check for an fd owned by a transport
    /// (the loop's own machinery, e.g. sendfile, uses them on such fds).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::set_io_checked(slf, fd, callback, args, false, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::set_io_checked(slf, fd, callback, args, true, false)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::clear_io_checked(slf, fd, false, false)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::clear_io_checked(slf, fd, true, false)
    }

    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::clear_io(slf, fd, false)
    }

    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::clear_io(slf, fd, true)
    }

    /// The handle currently registered as reader or writer of `fd`, if any.
    fn _get_io_handle(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        write: bool,
    ) -> PyResult<Option<Py<Handle>>> {
        let py = slf.py();
        let fd = fileobj_to_fd(fd)?;
        Ok(slf.get().state.borrow_mut(py).poller.get(py, fd, write))
    }

    /// The write end of a socket whose readability wakes the loop; the Python
    /// layer hands it to `signal.set_wakeup_fd` so signals interrupt the wait.
    fn _signal_wakeup_fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        let mut st = self.state.borrow_mut(py);
        if st.closed {
            return Err(closed_error());
        }
        if let Some((_, w)) = &st.wakeup {
            return Ok(w.as_raw_fd());
        }
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid out-array of two ints.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        st.poller.add_internal(r.as_raw_fd())?;
        let wfd = w.as_raw_fd();
        st.wakeup = Some((r, w));
        Ok(wfd)
    }

    /// Counters for `Loop.stats()`.
    fn _stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let st = self.state.borrow_mut(py);
        let d = pyo3::types::PyDict::new(py);
        d.set_item("callbacks", st.stats.callbacks)?;
        d.set_item("iterations", st.stats.iterations)?;
        d.set_item("timers_scheduled", st.stats.timers_scheduled)?;
        d.set_item("timers_cancelled", st.timers.cancelled_total())?;
        d.set_item("timers_pending", st.timers.len())?;
        d.set_item("io_events", st.stats.io_events)?;
        d.set_item("bytes_read", st.stats.bytes_read)?;
        d.set_item("bytes_written", st.stats.bytes_written)?;
        d.set_item("ready", st.ready.len())?;
        d.set_item("longest_callback", st.stats.longest_callback)?;
        d.set_item("blocking_reports", st.stats.blocking_reports)?;
        Ok(d)
    }

    /// Turns the blocking-call detector on (threshold in seconds) or off (None).
    #[pyo3(signature = (threshold, hook=None))]
    fn _set_blocking_detector(
        &self,
        py: Python<'_>,
        threshold: Option<f64>,
        hook: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        if let Some(t) = threshold {
            if t.is_nan() || t < 0.0 {
                return Err(PyValueError::new_err(format!(
                    "threshold must be a non-negative number of seconds, got {t}"
                )));
            }
        }
        let old = {
            let mut st = self.state.borrow_mut(py);
            st.blocking_threshold = threshold;
            std::mem::replace(&mut st.blocking_hook, hook.filter(|h| !h.is_none(py)))
        };
        drop(old);
        Ok(())
    }

    fn _get_blocking_detector(&self, py: Python<'_>) -> (Option<f64>, Option<Py<PyAny>>) {
        let st = self.state.borrow_mut(py);
        (
            st.blocking_threshold,
            st.blocking_hook.as_ref().map(|h| h.clone_ref(py)),
        )
    }
}

impl Handle {
    pub fn cancel_py(h: &Bound<'_, Handle>) -> PyResult<()> {
        h.call_method0("cancel").map(|_| ())
    }
}

/// Lets go of timer handles the loop dropped from its heap. A Vec that never
/// allocated is forgotten rather than dropped: the drop glue is an
/// out-of-line call, paid on every iteration of a loop without timers.
#[inline(always)]
fn release_timers(py: Python<'_>, dead: Vec<Py<TimerHandle>>) {
    if dead.capacity() == 0 {
        std::mem::forget(dead);
    } else {
        handles::release_all_loop_owned(py, dead);
    }
}
