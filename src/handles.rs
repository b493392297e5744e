//! `Handle` and `TimerHandle`: the callbacks the loop runs, with asyncio's API.

use crate::contexts::{self, ContextField, RunContext};
use crate::gil_cell::GilRefCell;
use crate::pyhelpers;
use pyo3::basic::CompareOp;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::PyTraverseError;
use std::sync::atomic::Ordering;

/// A handle's positional arguments. Calls with none or one argument (task
/// steps, future callbacks, most user callbacks) store no tuple at all; the
/// tuple asyncio exposes as `_args` is built on demand.
pub enum Args {
    Empty,
    One(Py<PyAny>),
    Many(Py<PyTuple>),
}

impl Args {
    /// # Safety
    /// Every pointer in `args` is a live object; the GIL is held.
    pub unsafe fn from_ptrs(py: Python<'_>, args: &[*mut ffi::PyObject]) -> PyResult<Args> {
        Ok(match args {
            [] => Args::Empty,
            [one] => Args::One(Bound::from_borrowed_ptr(py, *one).unbind()),
            _ => Args::Many(
                PyTuple::new(py, args.iter().map(|p| Bound::from_borrowed_ptr(py, *p)))?.unbind(),
            ),
        })
    }

    pub fn from_tuple(t: &Bound<'_, PyTuple>) -> Args {
        Args::Many(t.clone().unbind())
    }

    fn to_tuple(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(match self {
            Args::Empty => PyTuple::empty(py).unbind(),
            Args::One(a) => PyTuple::new(py, [a.bind(py)])?.unbind(),
            Args::Many(t) => t.clone_ref(py),
        })
    }

    fn as_ptr(&self) -> Option<*mut ffi::PyObject> {
        match self {
            Args::Empty => None,
            Args::One(a) => Some(a.as_ptr()),
            Args::Many(t) => Some(t.as_ptr()),
        }
    }

    fn release(self, py: Python<'_>) {
        match self {
            Args::Empty => {}
            Args::One(a) => drop(a.into_bound(py)),
            Args::Many(t) => drop(t.into_bound(py)),
        }
    }
}

/// What `Handle::run` holds on to while the callback runs.
enum CallArgs<'py> {
    Empty,
    One(Bound<'py, PyAny>),
    Many(Bound<'py, PyTuple>),
}

struct HandleInner {
    // Dropped on cancel so a cancelled handle pins nothing the user allocated.
    callback: Option<Py<PyAny>>,
    args: Option<Args>,
    cancelled: bool,
    // Set once a timer leaves the heap; a late cancel() then must not count
    // towards the heap's cancelled-entry statistics.
    scheduled: bool,
    // Debug mode only, boxed to keep handles small (two cache lines at most).
    debug_info: Option<Box<DebugInfo>>,
}

#[derive(Default)]
struct DebugInfo {
    // The repr cached at cancel() time, as asyncio's debug mode does.
    repr_when_cancelled: Option<String>,
    // Where the handle was created (asyncio's `_source_traceback`).
    source_traceback: Option<Py<PyAny>>,
}

impl HandleInner {
    /// The references a handle holds through its cell (for tp_traverse).
    #[inline]
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callback)?;
        match &self.args {
            Some(Args::One(a)) => visit.call(a)?,
            Some(Args::Many(t)) => visit.call(t)?,
            _ => {}
        }
        visit.call(self.source_traceback())
    }

    fn source_traceback(&self) -> Option<&Py<PyAny>> {
        self.debug_info
            .as_ref()
            .and_then(|d| d.source_traceback.as_ref())
    }
}

#[pyclass(module = "tokioloop._tokioloop", subclass, frozen)]
pub struct Handle {
    inner: GilRefCell<HandleInner>,
    // A Context, or the caller's variables alone (see contexts.rs).
    context: ContextField,
    debug: bool,
    /// Set for a native transport's readiness callback (`with_native`): the
    /// callback is that transport's own bound Rust method, which `run` calls
    /// directly instead of through the Python call machinery.
    native: Option<NativeFn>,
    // Allocated by `alloc_object` outside the GC's allocation count.
    uncounted: bool,
}

/// The Rust function behind a bound method of a native object; receives the
/// method's `__self__`.
pub type NativeFn = fn(&Bound<'_, PyAny>) -> PyResult<()>;

impl Handle {
    pub fn new(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Self> {
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            _ => copy_current_context(py)?,
        };
        let source_traceback = if debug {
            Some(pyhelpers::extract_stack(py)?)
        } else {
            None
        };
        Ok(Handle {
            inner: GilRefCell::new(HandleInner {
                callback: Some(callback),
                args: Some(args),
                cancelled: false,
                scheduled: false,
                debug_info: source_traceback.map(|tb| {
                    Box::new(DebugInfo {
                        repr_when_cancelled: None,
                        source_traceback: Some(tb),
                    })
                }),
            }),
            context: ContextField::new(context),
            debug,
            native: None,
            uncounted: false,
        })
    }

    /// Makes `run` call `f(callback.__self__)` in place of `callback()`.
    /// Only for a callback that is a builtin bound method doing exactly `f`
    /// (what the repr and the rest of the Handle API keep showing).
    pub fn with_native(mut self, f: NativeFn) -> Self {
        self.native = Some(f);
        self
    }

    #[inline]
    pub fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.inner.borrow_mut(py).cancelled
    }

    /// Runs the callback inside the handle's context. The error, if any, is
    /// returned untouched: the loop decides whether it propagates or goes to
    /// the exception handler. A snapshot handle runs in the loop's
    /// `RunContext` (see contexts.rs; `obj` is this handle's object), or in a
    /// Context of its own when none is given.
    pub fn run(
        &self,
        py: Python<'_>,
        run_ctx: Option<(&RunContext, &Bound<'_, PyAny>)>,
    ) -> PyResult<()> {
        let (cb, args) = {
            let inner = self.inner.borrow_mut(py);
            if inner.cancelled {
                return Ok(());
            }
            // Bound clones: a plain incref/decref pair, no thread-state lookup.
            match (&inner.callback, &inner.args) {
                (Some(cb), Some(args)) => (
                    cb.bind(py).clone(),
                    match args {
                        Args::Empty => CallArgs::Empty,
                        Args::One(a) => CallArgs::One(a.bind(py).clone()),
                        Args::Many(t) => CallArgs::Many(t.bind(py).clone()),
                    },
                ),
                _ => return Ok(()),
            }
        };
        let ctx = self.context.as_ptr();
        // SAFETY: GIL held; a live object.
        if let Some(l) = unsafe { contexts::snapshot_layout(ctx) } {
            return match run_ctx {
                // SAFETY: GIL held; `ctx` is this handle's snapshot.
                Some((rc, obj)) => unsafe {
                    self.run_in_loop_context(py, l, rc, obj.as_ptr(), ctx, &cb, &args)
                },
                None => {
                    let own = self.own_context(py)?;
                    // SAFETY: as below; `own` is the handle's (live) context.
                    unsafe { self.call_in(py, own, &cb, &args) }
                }
            };
        }
        // SAFETY: `ctx` is the handle's live context; the GIL is held.
        unsafe { self.call_in(py, ctx, &cb, &args) }
    }

    /// A snapshot handle's run: the loop's context takes the snapshot's
    /// variables and stands as this handle's context for the run. If anyone
    /// may still look at it afterwards (the context is held elsewhere, or the
    /// handle is: `get_context()` would show the callback's changes), it stays
    /// this handle's context for good; otherwise it is emptied and reused.
    ///
    /// # Safety
    /// GIL held; `obj` is this handle's object, `snapshot` the value of
    /// `self.context`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_in_loop_context(
        &self,
        py: Python<'_>,
        l: &contexts::Layout,
        rc: &RunContext,
        obj: *mut ffi::PyObject,
        snapshot: *mut ffi::PyObject,
        cb: &Bound<'_, PyAny>,
        args: &CallArgs<'_>,
    ) -> PyResult<()> {
        let ctx = rc.take();
        if ctx.is_null() {
            return Err(pyhelpers::take_raised(py));
        }
        rc.load(l, ctx, snapshot);
        ffi::Py_INCREF(ctx);
        // The field's reference to the snapshot is ours until it goes back.
        let snapshot = self.context.replace_raw(ctx);
        let res = self.call_in(py, ctx, cb, args);
        // Context: ours and the field's; handle: the loop's alone.
        if ffi::Py_REFCNT(ctx) == 2 && ffi::Py_REFCNT(obj) == 1 {
            let back = self.context.replace_raw(snapshot);
            ffi::Py_DECREF(back);
            rc.give_back(l, ctx);
        } else {
            ffi::Py_DECREF(snapshot);
            ffi::Py_DECREF(ctx);
        }
        res
    }

    /// The handle's Context, made from its snapshot if it has one (from then
    /// on the handle keeps and runs in that object). Borrowed.
    fn own_context(&self, py: Python<'_>) -> PyResult<*mut ffi::PyObject> {
        let p = self.context.as_ptr();
        // SAFETY: GIL held; `p` is live; the replaced reference is released
        // after the field already holds the new one.
        unsafe {
            if let Some(l) = contexts::snapshot_layout(p) {
                let c = contexts::context_from(l, p);
                if c.is_null() {
                    return Err(pyhelpers::take_raised(py));
                }
                ffi::Py_DECREF(self.context.replace_raw(c));
            }
        }
        Ok(self.context.as_ptr())
    }

    /// Calls the callback inside `ctx`.
    ///
    /// # Safety
    /// GIL held; `ctx` is a live object held for the call's duration.
    #[inline(always)]
    unsafe fn call_in(
        &self,
        py: Python<'_>,
        ctx: *mut ffi::PyObject,
        cb: &Bound<'_, PyAny>,
        args: &CallArgs<'_>,
    ) -> PyResult<()> {
        if ffi::PyContext_Enter(ctx) < 0 {
            return Err(pyhelpers::take_raised(py));
        }
        let res = match args {
            CallArgs::Empty if self.native.is_some() => {
                return self.run_native(py, cb, ctx);
            }
            CallArgs::Empty => ffi::PyObject_CallNoArgs(cb.as_ptr()),
            CallArgs::One(a) => {
                // Slot 0 is scratch space the callee may use (ARGUMENTS_OFFSET).
                let mut buf = [std::ptr::null_mut(), a.as_ptr()];
                ffi::PyObject_Vectorcall(
                    cb.as_ptr(),
                    buf.as_mut_ptr().add(1),
                    1 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
                    std::ptr::null_mut(),
                )
            }
            CallArgs::Many(t) => ffi::PyObject_Call(cb.as_ptr(), t.as_ptr(), std::ptr::null_mut()),
        };
        let err = if res.is_null() {
            Some(pyhelpers::take_raised(py))
        } else {
            ffi::Py_DECREF(res);
            None
        };
        if ffi::PyContext_Exit(ctx) < 0 {
            return Err(pyhelpers::take_raised(py));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `run` for a native callback, already inside the context `ctx`.
    ///
    /// # Safety
    /// `ctx` is the handle's context, entered by the caller; GIL held.
    unsafe fn run_native(
        &self,
        py: Python<'_>,
        cb: &Bound<'_, PyAny>,
        ctx: *mut ffi::PyObject,
    ) -> PyResult<()> {
        let res = match self.native {
            Some(f) if ffi::PyCFunction_Check(cb.as_ptr()) != 0 => {
                // A builtin bound method's __self__ (borrowed; `cb` keeps it alive).
                let target = ffi::PyCFunction_GetSelf(cb.as_ptr());
                if target.is_null() {
                    Err(pyhelpers::take_raised(py))
                } else {
                    let target = Bound::from_borrowed_ptr(py, target);
                    // What PyO3's trampoline would do: a panic becomes an exception.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&target))) {
                        Ok(r) => r,
                        Err(payload) => Err(pyhelpers::panic_to_pyerr(payload)),
                    }
                }
            }
            _ => {
                let r = ffi::PyObject_CallNoArgs(cb.as_ptr());
                if r.is_null() {
                    Err(pyhelpers::take_raised(py))
                } else {
                    ffi::Py_DECREF(r);
                    Ok(())
                }
            }
        };
        if ffi::PyContext_Exit(ctx) < 0 {
            return Err(pyhelpers::take_raised(py));
        }
        res
    }

    /// Marks the handle cancelled and returns what it held, so the caller can
    /// drop the user's objects outside any borrow (their `__del__` may re-enter).
    fn cancel_inner(&self, py: Python<'_>) -> Option<CancelledParts> {
        let mut inner = self.inner.borrow_mut(py);
        if inner.cancelled {
            return None;
        }
        inner.cancelled = true;
        let was_scheduled = inner.scheduled;
        inner.scheduled = false;
        Some((inner.callback.take(), inner.args.take(), was_scheduled))
    }

    pub fn set_scheduled(&self, py: Python<'_>, value: bool) {
        self.inner.borrow_mut(py).scheduled = value;
    }

    fn repr_with(&self, py: Python<'_>, kind: &str, when: Option<f64>) -> PyResult<String> {
        self.repr_as(py, kind, when, false)
    }

    /// `as_cancelled`: the repr the handle will have once cancelled but while
    /// it still holds its callback (what asyncio caches in debug mode).
    fn repr_as(
        &self,
        py: Python<'_>,
        kind: &str,
        when: Option<f64>,
        as_cancelled: bool,
    ) -> PyResult<String> {
        let (cb, args, cancelled, cached, tb) = {
            let inner = self.inner.borrow_mut(py);
            (
                inner.callback.as_ref().map(|c| c.clone_ref(py)),
                inner.args.as_ref().map(|a| a.to_tuple(py)).transpose()?,
                inner.cancelled,
                inner
                    .debug_info
                    .as_ref()
                    .and_then(|d| d.repr_when_cancelled.clone()),
                inner.source_traceback().map(|t| t.clone_ref(py)),
            )
        };
        if let Some(s) = cached {
            return Ok(s);
        }
        pyhelpers::format_handle_repr(py, kind, cancelled || as_cancelled, cb, args, when, tb)
    }

    fn cache_repr_if_debug(&self, py: Python<'_>, kind: &str, when: Option<f64>) -> PyResult<()> {
        if self.debug {
            let r = self.repr_as(py, kind, when, true)?;
            self.inner
                .borrow_mut(py)
                .debug_info
                .get_or_insert_with(Default::default)
                .repr_when_cancelled = Some(r);
        }
        Ok(())
    }
}

/// What a cancel takes out of a handle: callback, args, and whether it was a
/// scheduled timer.
type CancelledParts = (Option<Py<PyAny>>, Option<Args>, bool);

pub fn copy_current_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: GIL held; PyContext_CopyCurrent returns a new reference or NULL with an error set.
    unsafe {
        let p = ffi::PyContext_CopyCurrent();
        if p.is_null() {
            Err(pyhelpers::take_raised(py))
        } else {
            Ok(Bound::from_owned_ptr(py, p).unbind())
        }
    }
}

#[pymethods]
impl Handle {
    /// asyncio's constructor signature, `Handle(callback, args, loop, context=None)`.
    #[new]
    #[pyo3(signature = (callback, args, r#loop=None, context=None))]
    fn py_new(
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyAny>,
        r#loop: Option<&Bound<'_, PyAny>>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let debug = match r#loop {
            Some(l) if !l.is_none() => l.call_method0("get_debug")?.is_truthy()?,
            _ => false,
        };
        let args = if args.is_none() {
            PyTuple::empty(py)
        } else {
            PyTuple::new(py, args.try_iter()?.collect::<PyResult<Vec<_>>>()?)?
        };
        Handle::new(
            py,
            callback.clone().unbind(),
            Args::Many(args.unbind()),
            context,
            debug,
        )
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let h = slf.get();
        if h.is_cancelled(py) {
            return Ok(());
        }
        h.cache_repr_if_debug(py, "Handle", None)?;
        let dropped = h.cancel_inner(py);
        drop(dropped);
        Ok(())
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let ctx = self.own_context(py)?;
        // Shared from now on: the GC must see it (see `traverse_loop_owned`).
        // SAFETY: GIL held; a live object.
        unsafe {
            track_context(ctx);
            Ok(Bound::from_borrowed_ptr(py, ctx).unbind())
        }
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .borrow_mut(py)
            .callback
            .as_ref()
            .map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        let inner = self.inner.borrow_mut(py);
        inner.args.as_ref().map(|a| a.to_tuple(py)).transpose()
    }

    #[getter]
    fn _cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.get_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .borrow_mut(py)
            .source_traceback()
            .map(|t| t.clone_ref(py))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if crate::gil_cell::is_null_py(self.context.get()) {
            return Ok(());
        }
        visit.call(self.context.get())?;
        if let Some(inner) = self.inner.try_borrow_mut_in_gc() {
            inner.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.inner.try_borrow_mut_in_gc().map(|mut inner| {
            (
                inner.callback.take(),
                inner.args.take(),
                inner.debug_info.take(),
            )
        });
        drop(taken);
    }

    /// Runs the callback as asyncio's `Handle._run` does, errors going to the
    /// loop's exception handler (for code that drives handles by hand).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        match slf.get().run(py, None) {
            Ok(()) => Ok(()),
            Err(e) if pyhelpers::is_exit_exception(py, &e) => Err(e),
            Err(e) => pyhelpers::report_callback_error(py, None, slf.as_any(), e),
        }
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        slf.get().repr_with(slf.py(), "Handle", None)
    }
}

/// Shared with the loop's timer heap: how many scheduled timers were cancelled,
/// so the heap can be compacted before dead entries pile up.
///
/// Not atomic: every clone, drop and update happens with the GIL held (timer
/// handles are created, cancelled and freed under it, and so is the loop that
/// owns the heap), so a plain reference count and cell suffice, and a timer's
/// life costs no locked instructions.
#[derive(Clone, Default)]
pub struct CancelCounter(std::rc::Rc<std::cell::Cell<usize>>);

// SAFETY: see above; the GIL serialises every access to the Rc and the Cell.
unsafe impl Send for CancelCounter {}
unsafe impl Sync for CancelCounter {}

impl CancelCounter {
    #[inline]
    pub fn load(&self, _order: Ordering) -> usize {
        self.0.get()
    }

    #[inline]
    pub fn store(&self, value: usize, _order: Ordering) {
        self.0.set(value)
    }

    #[inline]
    pub fn fetch_add(&self, value: usize, _order: Ordering) -> usize {
        let old = self.0.get();
        self.0.set(old.wrapping_add(value));
        old
    }
}

#[pyclass(module = "tokioloop._tokioloop", extends = Handle, frozen)]
pub struct TimerHandle {
    pub when: f64,
    counter: CancelCounter,
}

impl TimerHandle {
    /// A timer about to enter the loop's heap: created untracked by the GC
    /// (see `traverse_loop_owned`); PyO3's path (no measured layout) tracks it.
    pub fn create(
        py: Python<'_>,
        when: f64,
        callback: Py<PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
        debug: bool,
        counter: CancelCounter,
    ) -> PyResult<Bound<'_, TimerHandle>> {
        let mut base = Handle::new(py, callback, args, context, debug)?;
        base.set_scheduled(py, true);
        let timer = TimerHandle { when, counter };
        let layout = LAYOUT.get();
        if let Some(l) = layout {
            // SAFETY: offsets and type measured at start-up for exactly this layout.
            unsafe {
                let (obj, uncounted) = alloc_object(l, l.timer_type, true);
                base.uncounted = uncounted;
                if obj.is_null() {
                    let err = PyErr::fetch(py);
                    base.release(py);
                    return Err(err);
                }
                std::ptr::write(obj.cast::<u8>().add(l.handle_off).cast::<Handle>(), base);
                std::ptr::write(
                    obj.cast::<u8>().add(l.timer_off).cast::<TimerHandle>(),
                    timer,
                );
                // Left untracked: the loop owns it (see `traverse_loop_owned`).
                return Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked());
            }
        }
        Bound::new(py, PyClassInitializer::from(base).add_subclass(timer))
    }
}

#[pymethods]
impl TimerHandle {
    // Present so the subclass stays GC-tracked; the base class visits the references.
    fn __traverse__(&self, _visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        Ok(())
    }

    fn __clear__(&self) {}

    fn when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        let base: &Handle = slf.as_super().get();
        base.inner.borrow_mut(slf.py()).scheduled
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base: &Handle = slf.as_super().get();
        if base.is_cancelled(py) {
            return Ok(());
        }
        let when = slf.get().when;
        base.cache_repr_if_debug(py, "TimerHandle", Some(when))?;
        if let Some((cb, args, was_scheduled)) = base.cancel_inner(py) {
            if was_scheduled {
                slf.get().counter.fetch_add(1, Ordering::Relaxed);
            }
            drop(cb);
            drop(args);
        }
        Ok(())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let base: &Handle = slf.as_super().get();
        base.repr_with(slf.py(), "TimerHandle", Some(slf.get().when))
    }

    fn __hash__(&self) -> u64 {
        let w = self.when;
        // Mirrors asyncio: equal deadlines hash equal.
        if w == 0.0 {
            0
        } else {
            w.to_bits()
        }
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let a = slf.get().when;
        let b = other.get().when;
        let res = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || eq_handles(slf, other)?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || eq_handles(slf, other)?,
            CompareOp::Eq => eq_handles(slf, other)?,
            CompareOp::Ne => !eq_handles(slf, other)?,
        };
        Ok(pyo3::types::PyBool::new(py, res)
            .to_owned()
            .into_any()
            .unbind())
    }
}

fn eq_handles(a: &Bound<'_, TimerHandle>, b: &Bound<'_, TimerHandle>) -> PyResult<bool> {
    let py = a.py();
    if a.get().when != b.get().when {
        return Ok(false);
    }
    let ha: &Handle = a.as_super().get();
    let hb: &Handle = b.as_super().get();
    let (ca, aa, xa) = {
        let i = ha.inner.borrow_mut(py);
        (
            i.callback.as_ref().map(|c| c.clone_ref(py)),
            i.args.as_ref().map(|a| a.to_tuple(py)).transpose()?,
            i.cancelled,
        )
    };
    let (cb, ab, xb) = {
        let i = hb.inner.borrow_mut(py);
        (
            i.callback.as_ref().map(|c| c.clone_ref(py)),
            i.args.as_ref().map(|a| a.to_tuple(py)).transpose()?,
            i.cancelled,
        )
    };
    if xa != xb {
        return Ok(false);
    }
    let same = |x: Option<Py<PyAny>>, y: Option<Py<PyAny>>| -> PyResult<bool> {
        match (x, y) {
            (None, None) => Ok(true),
            (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)),
            _ => Ok(false),
        }
    };
    Ok(same(ca, cb)? && same(aa.map(|a| a.into_any()), ab.map(|a| a.into_any()))?)
}

pub fn check_callable(py: Python<'_>, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    if callback.is_callable() {
        return Ok(());
    }
    if pyhelpers::is_coroutine(py, callback)? {
        return Err(PyTypeError::new_err(format!(
            "coroutines cannot be used with {method}()"
        )));
    }
    Err(PyTypeError::new_err(format!(
        "a callable object was expected by {method}(), got {}",
        callback.repr()?
    )))
}

// ---- raw type slots ----
//
// PyO3's generic tp_traverse and tp_dealloc go through trampolines (panic
// traps, thread-state bookkeeping in thread-local storage, a walk up the type
// chain for the base traverse): ~100-200 instructions per call. Handles are
// created, traversed by every young-generation GC pass and freed by the
// hundred thousand, so both slots are replaced by direct versions below. They
// do what PyO3's would: visit the (heap) type and our references; untrack,
// drop the Rust value, free, and release the type.

/// The Rust value of a Handle object. TimerHandle (and any subclass) lays
/// its Handle part out first, so this is valid for those too.
#[inline(always)]
unsafe fn handle_value(obj: *mut ffi::PyObject) -> *const Handle {
    let py = Python::assume_attached();
    let b = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<Handle>();
    b.get() as *const Handle
}

#[inline(always)]
unsafe fn timer_value(obj: *mut ffi::PyObject) -> *const TimerHandle {
    let py = Python::assume_attached();
    let b = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<TimerHandle>();
    b.get() as *const TimerHandle
}

unsafe extern "C" fn handle_traverse(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // Instances of heap types keep their type alive.
    let r = visit(ffi::Py_TYPE(obj).cast(), arg);
    if r != 0 {
        return r;
    }
    let h = &*handle_value(obj);
    // Zero-filled: allocated but not yet initialised (see Handle::__traverse__).
    if crate::gil_cell::is_null_py(h.context.get()) {
        return 0;
    }
    let r = visit(h.context.as_ptr(), arg);
    if r != 0 {
        return r;
    }
    if let Some(inner) = h.inner.try_borrow_mut_in_gc() {
        // Straight-line (no array of options): this runs for every young
        // handle on every GC pass.
        if let Some(cb) = &inner.callback {
            let r = visit(cb.as_ptr(), arg);
            if r != 0 {
                return r;
            }
        }
        if let Some(p) = inner.args.as_ref().and_then(|a| a.as_ptr()) {
            let r = visit(p, arg);
            if r != 0 {
                return r;
            }
        }
        if let Some(tb) = inner.source_traceback() {
            let r = visit(tb.as_ptr(), arg);
            if r != 0 {
                return r;
            }
        }
    }
    0
}

impl Handle {
    /// Drops the fields with the GIL known to be held (a plain Py_DECREF each,
    /// no thread-state lookup).
    fn release(self, py: Python<'_>) {
        let Handle { inner, context, .. } = self;
        let HandleInner {
            callback,
            args,
            debug_info,
            ..
        } = inner.into_inner();
        drop(callback.map(|o| o.into_bound(py)));
        if let Some(a) = args {
            a.release(py);
        }
        if let Some(tb) = debug_info.and_then(|d| d.source_traceback) {
            drop(tb.into_bound(py));
        }
        // SAFETY: GIL held; a live object.
        unsafe { track_context(context.as_ptr()) };
        drop(context.into_inner().into_bound(py));
    }
}

unsafe fn drop_handle_value(obj: *mut ffi::PyObject) {
    let p = handle_value(obj).cast_mut();
    if crate::gil_cell::is_null_py((*p).context.get()) {
        return;
    }
    let py = Python::assume_attached();
    // Field by field in place (no move of the whole value), in declaration
    // order as a plain drop would.
    let h = &mut *p;
    let inner = h.inner.get_mut();
    if let Some(cb) = inner.callback.take() {
        drop(cb.into_bound(py));
    }
    if let Some(a) = inner.args.take() {
        a.release(py);
    }
    if let Some(d) = inner.debug_info.take() {
        if let Some(tb) = d.source_traceback {
            drop(tb.into_bound(py));
        }
    }
    // A context's own dealloc untracks it unconditionally: it must be tracked
    // when its last reference goes (ours, if the loop owned the handle).
    track_context(h.context.as_ptr());
    drop(std::ptr::read(h.context.get()).into_bound(py));
}

unsafe fn free_instance(obj: *mut ffi::PyObject, uncounted: bool) {
    let ty = ffi::Py_TYPE(obj);
    match ((*ty).tp_free, LAYOUT.get()) {
        // The mirror of `alloc_object`'s uncounted path (the object is untracked by now).
        (_, Some(l)) if uncounted => ffi::PyObject_Free(obj.cast::<u8>().sub(l.gc_head).cast()),
        (Some(free), _) => free(obj.cast()),
        (None, _) => ffi::PyObject_GC_Del(obj.cast()),
    }
    // Heap-type instances own a reference to their type.
    ffi::Py_DECREF(ty.cast());
}

/// Read before the value is dropped (zero-filled, i.e. false, if never initialised).
#[inline(always)]
unsafe fn is_uncounted(obj: *mut ffi::PyObject) -> bool {
    std::ptr::read_volatile(std::ptr::addr_of!((*handle_value(obj)).uncounted).cast::<u8>()) != 0
}

unsafe extern "C" fn handle_dealloc(obj: *mut ffi::PyObject) {
    ffi::PyObject_GC_UnTrack(obj.cast());
    let uncounted = is_uncounted(obj);
    drop_handle_value(obj);
    free_instance(obj, uncounted);
}

unsafe extern "C" fn timer_dealloc(obj: *mut ffi::PyObject) {
    ffi::PyObject_GC_UnTrack(obj.cast());
    let uncounted = is_uncounted(obj);
    std::ptr::drop_in_place(timer_value(obj).cast_mut());
    drop_handle_value(obj);
    free_instance(obj, uncounted);
}

/// Allocates an object of one of our handle types (Rust value not yet written).
/// A handle the loop is about to own is allocated outside the GC's count of
/// new container objects (the count that triggers young collections), as if
/// it were not a container: until the loop lets go of it, it cannot be part
/// of garbage (see `traverse_loop_owned`), and counting it doubled the number
/// of collections per timer (a copied context is the other allocation).
/// Layout as `PyObject_GC_New`'s: a zeroed GC header, then the object.
/// Returns the object (NULL with an error set) and whether it is uncounted.
///
/// # Safety
/// GIL held; `ty` is Handle or TimerHandle.
#[inline(always)]
unsafe fn alloc_object(
    l: &Layout,
    ty: *mut ffi::PyTypeObject,
    loop_owned: bool,
) -> (*mut ffi::PyObject, bool) {
    if !loop_owned || l.gc_head == 0 {
        return (ffi::PyObject_GC_New::<ffi::PyObject>(ty), false);
    }
    let mem = ffi::PyObject_Malloc(l.gc_head + (*ty).tp_basicsize as usize).cast::<u8>();
    if mem.is_null() {
        ffi::PyErr_NoMemory();
        return (std::ptr::null_mut(), true);
    }
    std::ptr::write_bytes(mem, 0, l.gc_head);
    let obj = mem.add(l.gc_head).cast::<ffi::PyObject>();
    // Sets type and reference count, and takes the reference a heap type's instance owns.
    ffi::PyObject_Init(obj, ty);
    (obj, true)
}

/// Where the Rust values sit inside Handle and TimerHandle objects, measured
/// at start-up on real instances, so hot paths can allocate without PyO3's
/// initializer chain (zero-fill, base `tp_new`, then a move into place).
struct Layout {
    handle_type: *mut ffi::PyTypeObject,
    timer_type: *mut ffi::PyTypeObject,
    handle_off: usize,
    timer_off: usize,
    // Size of the GC header before each object (what `PyObject_GC_New`
    // reserves); 0 if it could not be confirmed, which turns uncounted
    // allocation off.
    gc_head: usize,
}

// SAFETY: the type pointers are immortal for our purposes (a reference is
// leaked on purpose) and are only used with the GIL held.
unsafe impl Send for Layout {}
unsafe impl Sync for Layout {}

static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();

impl Handle {
    /// Allocates the Python object for this handle. Unlike PyO3's path the
    /// object is not zero-filled and is only tracked by the GC once complete.
    pub fn into_object(self, py: Python<'_>) -> PyResult<Bound<'_, Handle>> {
        self.into_object_with(py, true)
    }

    /// As `into_object`, for a handle the loop is about to own: left
    /// untracked (see `traverse_loop_owned`).
    pub fn into_loop_owned(self, py: Python<'_>) -> PyResult<Bound<'_, Handle>> {
        self.into_object_with(py, false)
    }

    fn into_object_with(mut self, py: Python<'_>, track: bool) -> PyResult<Bound<'_, Handle>> {
        let Some(l) = LAYOUT.get() else {
            return Bound::new(py, self);
        };
        // SAFETY: offset and type measured at start-up for exactly this layout.
        unsafe {
            let (obj, uncounted) = alloc_object(l, l.handle_type, !track);
            self.uncounted = uncounted;
            if obj.is_null() {
                let err = PyErr::fetch(py);
                self.release(py);
                return Err(err);
            }
            std::ptr::write(obj.cast::<u8>().add(l.handle_off).cast::<Handle>(), self);
            if track {
                ffi::PyObject_GC_Track(obj.cast());
            }
            Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked())
        }
    }
}

/// Allocates and fills a plain (non-debug) handle of type `ty` for `cb(arg)`
/// (or `cb()`); `ctx` null means a copy of the current context. The object
/// is returned untracked (the caller completes it, then hands it to the loop
/// or tracks it), or NULL with the error set.
///
/// # Safety
/// GIL held; the pointers are live objects (borrowed); `ty` is Handle or
/// TimerHandle with the Handle value at `l.handle_off`.
#[inline(always)]
unsafe fn alloc_fast(
    py: Python<'_>,
    l: &Layout,
    ty: *mut ffi::PyTypeObject,
    cb: *mut ffi::PyObject,
    arg: Option<*mut ffi::PyObject>,
    ctx: *mut ffi::PyObject,
    scheduled: bool,
) -> *mut ffi::PyObject {
    let snapshot = contexts::layout();
    let context = if ctx.is_null() {
        let c = match snapshot {
            Some(l) => contexts::snapshot_current(l),
            None => ffi::PyContext_CopyCurrent(),
        };
        if c.is_null() {
            return c;
        }
        c
    } else {
        ffi::Py_INCREF(ctx);
        ctx
    };
    let (obj, uncounted) = alloc_object(l, ty, true);
    if obj.is_null() {
        ffi::Py_DECREF(context);
        return obj;
    }
    if ctx.is_null() && snapshot.is_none() {
        // Our own copy, held by this loop-owned handle alone: untracked like
        // the handle (see `traverse_loop_owned`).
        ffi::PyObject_GC_UnTrack(context.cast());
    }
    ffi::Py_INCREF(cb);
    let args = match arg {
        None => Args::Empty,
        Some(a) => {
            ffi::Py_INCREF(a);
            Args::One(Bound::from_owned_ptr(py, a).unbind())
        }
    };
    std::ptr::write(
        obj.cast::<u8>().add(l.handle_off).cast::<Handle>(),
        Handle {
            inner: GilRefCell::new(HandleInner {
                callback: Some(Bound::from_owned_ptr(py, cb).unbind()),
                args: Some(args),
                cancelled: false,
                scheduled,
                debug_info: None,
            }),
            context: ContextField::new(Bound::from_owned_ptr(py, context).unbind()),
            debug: false,
            native: None,
            uncounted,
        },
    );
    obj
}

impl Handle {
    /// A plain handle built in place (see `alloc_fast`): a new reference,
    /// NULL with the error set, or `None` when the layout is unknown (use
    /// the general path).
    ///
    /// # Safety
    /// As for `alloc_fast`.
    #[inline(always)]
    pub unsafe fn new_object_fast(
        py: Python<'_>,
        cb: *mut ffi::PyObject,
        arg: Option<*mut ffi::PyObject>,
        ctx: *mut ffi::PyObject,
    ) -> Option<*mut ffi::PyObject> {
        let l = LAYOUT.get()?;
        // Left untracked: the loop owns it (see `traverse_loop_owned`).
        Some(alloc_fast(py, l, l.handle_type, cb, arg, ctx, false))
    }
}

impl TimerHandle {
    /// Like `Handle::new_object_fast`, for a timer due at `when` that is
    /// about to enter the heap.
    ///
    /// # Safety
    /// As for `alloc_fast`.
    #[inline(always)]
    pub unsafe fn new_object_fast(
        py: Python<'_>,
        when: f64,
        cb: *mut ffi::PyObject,
        arg: Option<*mut ffi::PyObject>,
        ctx: *mut ffi::PyObject,
        counter: CancelCounter,
    ) -> Option<*mut ffi::PyObject> {
        let l = LAYOUT.get()?;
        let obj = alloc_fast(py, l, l.timer_type, cb, arg, ctx, true);
        if !obj.is_null() {
            std::ptr::write(
                obj.cast::<u8>().add(l.timer_off).cast::<TimerHandle>(),
                TimerHandle { when, counter },
            );
            // Left untracked: the loop owns it (see `traverse_loop_owned`).
        }
        Some(obj)
    }
}

/// Measures the layout on objects PyO3 itself built; any surprise leaves the
/// fast allocation off.
fn measure_layout(py: Python<'_>) -> PyResult<Option<Layout>> {
    use pyo3::PyTypeInfo;
    let h = Bound::new(py, Handle::new(py, py.None(), Args::Empty, None, false)?)?;
    let t = TimerHandle::create(
        py,
        0.0,
        py.None(),
        Args::Empty,
        None,
        false,
        CancelCounter::default(),
    )?;
    let base = |p: *mut ffi::PyObject| p as usize;
    // SAFETY: live objects of the right types.
    let (handle_off, t_handle_off, timer_off) = unsafe {
        (
            handle_value(h.as_ptr()) as usize - base(h.as_ptr()),
            handle_value(t.as_ptr()) as usize - base(t.as_ptr()),
            timer_value(t.as_ptr()) as usize - base(t.as_ptr()),
        )
    };
    let handle_type = Handle::type_object(py).as_type_ptr();
    let timer_type = TimerHandle::type_object(py).as_type_ptr();
    // SAFETY: reading plain fields of our own type objects.
    let ok = unsafe {
        let hsize = (*handle_type).tp_basicsize as usize;
        let tsize = (*timer_type).tp_basicsize as usize;
        handle_off >= std::mem::size_of::<ffi::PyObject>()
            && handle_off == t_handle_off
            && handle_off + std::mem::size_of::<Handle>() <= hsize
            && timer_off >= handle_off + std::mem::size_of::<Handle>()
            && timer_off + std::mem::size_of::<TimerHandle>() <= tsize
            && (*handle_type).tp_itemsize == 0
            && (*timer_type).tp_itemsize == 0
    };
    if !ok {
        return Ok(None);
    }
    // The GC header: sys.getsizeof() adds exactly what precedes a GC object
    // to its __sizeof__(). Uncounted allocation needs it to be the plain
    // two-word header and both types to free with PyObject_GC_Del.
    let sys = py.import("sys")?;
    let presize = |o: &Bound<'_, PyAny>| -> PyResult<isize> {
        Ok(sys.call_method1("getsizeof", (o,))?.extract::<isize>()?
            - o.call_method0("__sizeof__")?.extract::<isize>()?)
    };
    let two_words = 2 * std::mem::size_of::<usize>() as isize;
    // SAFETY: reading plain fields of our own type objects.
    let gc_del_frees = unsafe {
        let del = ffi::PyObject_GC_Del as unsafe extern "C" fn(*mut std::ffi::c_void);
        [handle_type, timer_type]
            .iter()
            .all(|t| (**t).tp_free.map(|f| f as usize) == Some(del as usize))
    };
    let gc_head = if presize(h.as_any())? == two_words
        && presize(t.as_any())? == two_words
        && gc_del_frees
        && std::env::var_os("TOKIOLOOP_COUNTED_HANDLES").is_none()
    {
        two_words as usize
    } else {
        0
    };
    // SAFETY: keep the types alive for as long as the process (the pointers are cached).
    unsafe {
        ffi::Py_INCREF(handle_type.cast());
        ffi::Py_INCREF(timer_type.cast());
    }
    Ok(Some(Layout {
        handle_type,
        timer_type,
        handle_off,
        timer_off,
        gc_head,
    }))
}

/// Installs the direct slots on the Handle and TimerHandle types (once, at
/// module initialisation, before any instance or subclass exists).
pub fn install_slots(py: Python<'_>) -> PyResult<()> {
    use pyo3::PyTypeInfo;
    let h = Handle::type_object(py);
    let t = TimerHandle::type_object(py);
    // SAFETY: both are our own heap types, fully initialised; the slots are
    // plain fields of the type object and no instance exists yet.
    unsafe {
        let hp = h.as_type_ptr();
        (*hp).tp_traverse = Some(handle_traverse);
        (*hp).tp_dealloc = Some(handle_dealloc);
        let tp = t.as_type_ptr();
        (*tp).tp_traverse = Some(handle_traverse);
        (*tp).tp_dealloc = Some(timer_dealloc);
    }
    if LAYOUT.get().is_none() {
        if let Some(layout) = measure_layout(py)? {
            let _ = LAYOUT.set(layout);
        }
    }
    Ok(())
}

/// `TimerHandle.cancel` as a plain METH_NOARGS function: every wait_for(),
/// timeout and cancelled sleep goes through it, and PyO3's method trampoline
/// (thread-state bookkeeping in thread-local storage) costs more than the
/// cancel itself.
unsafe extern "C" fn timer_cancel_raw(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    // The method descriptor checked the receiver's type before calling us.
    let b = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<TimerHandle>();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| TimerHandle::cancel(&b)));
    match res {
        Ok(Ok(())) => {
            let none = ffi::Py_None();
            ffi::Py_INCREF(none);
            none
        }
        Ok(Err(e)) => {
            e.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            pyo3::exceptions::PySystemError::new_err("tokioloop: internal panic in cancel()")
                .restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Replaces the PyO3-generated `TimerHandle.cancel` with `timer_cancel_raw`.
pub fn install_methods(py: Python<'_>) -> PyResult<()> {
    use pyo3::PyTypeInfo;
    let ty = TimerHandle::type_object(py);
    // The descriptor keeps a pointer to its PyMethodDef for ever: leak it on purpose.
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: c"cancel".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: timer_cancel_raw,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc:
            c"cancel($self, /)\n--\n\nCancel the timer (its callback and arguments are released)."
                .as_ptr(),
    }));
    // SAFETY: a valid type object and a 'static method definition; then the
    // type's own dict is updated and CPython told its caches are stale.
    unsafe {
        let descr = ffi::PyDescr_NewMethod(ty.as_type_ptr(), def);
        if descr.is_null() {
            return Err(PyErr::fetch(py));
        }
        let descr = Bound::from_owned_ptr(py, descr);
        let dict = (*ty.as_type_ptr()).tp_dict;
        if dict.is_null() || ffi::PyDict_SetItemString(dict, c"cancel".as_ptr(), descr.as_ptr()) < 0
        {
            return Err(PyErr::fetch(py));
        }
        ffi::PyType_Modified(ty.as_type_ptr());
    }
    Ok(())
}

// ---- loop-owned handles and the cyclic GC ----
//
// The handles the loop schedules (call_soon, call_later, call_at,
// call_soon_threadsafe) are created untracked by the cyclic GC: scanning
// hundreds of thousands of pending handles on every young collection was most
// of the cost of a timer. While the loop is a handle's only owner (reference
// count 1), the loop's own tp_traverse visits what the handle references
// instead (`traverse_loop_owned`): the accounting is exact, since the loop's
// reference is the only one, so a loop dropped in a cycle with its own pending
// callbacks is still collected. A handle someone else also holds is visited
// as an object (a no-op for the GC while it is untracked): whatever it
// references stays alive, which is right, the loop keeps the handle alive.
// When the loop lets go of a handle that is still referenced elsewhere
// (`release_loop_owned`), the handle is tracked from then on, so a cycle
// through it (a timer kept by the object its callback is bound to) can be
// collected once the loop no longer holds it. Forgetting that step would only
// leak such a cycle, never free anything early.

/// For the loop's tp_traverse: one handle (Handle or TimerHandle) in its
/// ready queue or timer heap.
pub fn traverse_loop_owned<T>(h: &Py<T>, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
    let p = h.as_ptr();
    // SAFETY: a live handle object (the loop holds a reference); the GC calls
    // traverse with the GIL held. The counts read here do not change during one
    // collection's traversals, so every pass sees the same references.
    unsafe {
        if ffi::Py_REFCNT(p) != 1 || ffi::PyObject_GC_IsTracked(p) != 0 {
            return visit.call(h);
        }
        let v = &*handle_value(p);
        if crate::gil_cell::is_null_py(v.context.get()) {
            return Ok(());
        }
        traverse_owned_context(v.context.get(), visit)?;
        // A busy cell is skipped in every pass alike (see try_borrow_mut_in_gc).
        if let Some(inner) = v.inner.try_borrow_mut_in_gc() {
            inner.traverse(visit)?;
        }
    }
    Ok(())
}

/// Drops the loop's reference to a handle it owned (run, pruned, or dropped
/// at close), tracking the handle first if anyone else still holds it.
///
/// # Safety
/// GIL held; `obj` is a live Handle (or TimerHandle) object whose reference
/// this call consumes.
#[inline(always)]
pub unsafe fn release_loop_owned(obj: *mut ffi::PyObject) {
    if ffi::Py_REFCNT(obj) > 1 && ffi::PyObject_GC_IsTracked(obj) == 0 {
        // Its context first: a tracked handle's referents are all visible.
        track_context((*handle_value(obj)).context.as_ptr());
        ffi::PyObject_GC_Track(obj.cast());
    }
    ffi::Py_DECREF(obj);
}

/// Tracks a context copy the loop left untracked (see `alloc_fast`); no-op
/// for anything else (user contexts are tracked, other objects are left alone).
///
/// # Safety
/// GIL held; `ctx` is a live object.
#[inline(always)]
pub unsafe fn track_context(ctx: *mut ffi::PyObject) {
    if ffi::PyContext_CheckExact(ctx) != 0 && ffi::PyObject_GC_IsTracked(ctx) == 0 {
        ffi::PyObject_GC_Track(ctx.cast());
    }
}

/// The context of a handle the loop alone holds. A copy held by this handle
/// alone and left untracked is accounted through the loop, as the handle is:
/// its own tp_traverse reports its referents to our visitor. Otherwise the
/// context is visited as an object.
fn traverse_owned_context(ctx: &Py<PyAny>, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
    let p = ctx.as_ptr();
    // SAFETY: a live object; traverse runs with the GIL held.
    unsafe {
        if ffi::PyContext_CheckExact(p) == 0
            || ffi::Py_REFCNT(p) != 1
            || ffi::PyObject_GC_IsTracked(p) != 0
        {
            return visit.call(ctx);
        }
        let Some(traverse) = (*ffi::Py_TYPE(p)).tp_traverse else {
            return Ok(());
        };
        struct Fwd<'a, 'b> {
            visit: &'a PyVisit<'b>,
            err: Option<PyTraverseError>,
        }
        unsafe extern "C" fn fwd(
            o: *mut ffi::PyObject,
            arg: *mut std::ffi::c_void,
        ) -> std::ffi::c_int {
            let f = &mut *arg.cast::<Fwd<'_, '_>>();
            let py = Python::assume_attached();
            let b = pyo3::Borrowed::from_ptr(py, o);
            match f.visit.call(b.as_unbound()) {
                Ok(()) => 0,
                Err(e) => {
                    f.err = Some(e);
                    1
                }
            }
        }
        let mut f = Fwd { visit, err: None };
        if traverse(p, fwd, std::ptr::addr_of_mut!(f).cast()) != 0 {
            if let Some(e) = f.err {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `release_loop_owned` for a `Py` the loop held.
#[inline(always)]
pub fn release_loop_owned_py<T>(_py: Python<'_>, h: Py<T>) {
    // SAFETY: the GIL token proves the GIL is held; `into_ptr` hands over the reference.
    unsafe { release_loop_owned(h.into_ptr()) }
}

/// Releases every handle of `items` (see `release_loop_owned`).
pub fn release_all_loop_owned<T>(py: Python<'_>, items: impl IntoIterator<Item = Py<T>>) {
    for h in items {
        release_loop_owned_py(py, h);
    }
}
