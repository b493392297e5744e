//! Implicit contexts without a Context object per pending handle.
//!
//! asyncio copies the current context for every callback scheduled without
//! `context=`: a new Context object that shares the caller's (immutable)
//! variable map. Thousands of those pending at once (a thread filling the
//! queue through call_soon_threadsafe for a whole GIL switch interval) cost
//! more in allocations and cache misses than the callbacks themselves: one
//! shared object measured about +25% call_soon_threadsafe throughput.
//!
//! So a handle the loop schedules keeps only the caller's variable map (its
//! "snapshot"), and the loop runs such a callback in a Context of its own
//! whose map it sets to the snapshot just before the run. What a callback
//! sees and what it changes are exactly what asyncio gives:
//! - it sees its caller's variables as they were at scheduling time;
//! - when nothing kept the run context (the common case), the map is emptied
//!   after the run and the object reused: the callback's changes reach nobody;
//! - when anything did keep it (a `Token` refers to its Context, the callback
//!   asked its handle for `get_context()`), the object, with the callback's
//!   changes, becomes that handle's context for good, and the loop takes a new
//!   one for the next run;
//! - a handle whose context is asked for while it is pending (`get_context()`,
//!   `_run()` by hand, a nested run) gets a Context of its own from then on.
//!
//! Setting a Context's map is outside the public C API. The field's place
//! (right after `ctx_prev`, in every CPython from 3.7 to 3.14) is checked at
//! start-up by behaviour, and any surprise leaves the scheme off: a copy per
//! handle, as asyncio does. `TOKIOLOOP_CONTEXT_COPIES=1` turns it off too.
//! The caller's map is read from the thread state's current context (found
//! at start-up the same way: the one word of the thread state that follows
//! entering and leaving two contexts), else from a throw-away copy.

use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::CStr;
use std::sync::OnceLock;

/// Copy: plain pointers and offsets; `empty`'s reference is owned by the
/// process-wide instance only.
#[derive(Clone, Copy)]
pub struct Layout {
    /// The type of a variable map (CPython's `hamt`).
    map_type: *mut ffi::PyTypeObject,
    /// Byte offset of `ctx_vars` in a Context.
    vars_off: usize,
    /// The empty map (a strong reference, kept for the process's life).
    empty: *mut ffi::PyObject,
    /// Byte offset of the current context (`context`) in a PyThreadState,
    /// when found: the snapshot is then read without copying a Context.
    tstate_ctx_off: Option<usize>,
}

// SAFETY: plain pointers to process-long objects, only dereferenced with the GIL held.
unsafe impl Send for Layout {}
unsafe impl Sync for Layout {}

static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();

#[inline(always)]
pub fn layout() -> Option<&'static Layout> {
    LAYOUT.get().and_then(|l| l.as_ref())
}

/// Probes the Context layout once, at module initialisation.
pub fn install(py: Python<'_>) {
    LAYOUT.get_or_init(|| {
        if std::env::var_os("TOKIOLOOP_CONTEXT_COPIES").is_some_and(|v| v != "0") {
            return None;
        }
        // SAFETY: GIL held; every object is owned through a Bound and checked
        // before use; nothing is written until the layout has been confirmed.
        let found = unsafe { probe(py) };
        if found.is_none() {
            // SAFETY: GIL held.
            unsafe { ffi::PyErr_Clear() };
        }
        found
    });
}

/// How this process schedules implicit contexts (for the tests): "off" (a
/// Context copy per handle), "snapshot" (the caller's map, read through a
/// throw-away copy) or "snapshot, thread state" (read from the thread state).
#[pyfunction]
pub fn _context_snapshots() -> &'static str {
    match layout() {
        None => "off",
        Some(l) if l.tstate_ctx_off.is_some() => "snapshot, thread state",
        Some(_) => "snapshot",
    }
}

#[inline(always)]
unsafe fn vars_slot(ctx: *mut ffi::PyObject, off: usize) -> *mut *mut ffi::PyObject {
    ctx.cast::<u8>().add(off).cast()
}

unsafe fn owned(py: Python<'_>, p: *mut ffi::PyObject) -> Option<Bound<'_, PyAny>> {
    Bound::from_owned_ptr_or_opt(py, p)
}

/// What `var` holds in `ctx` (entered for the read): `Some(true)` for
/// `True`, `Some(false)` when unset, `None` for anything else or an error.
unsafe fn reads_true(ctx: &Bound<'_, PyAny>, var: &Bound<'_, PyAny>) -> Option<bool> {
    if ffi::PyContext_Enter(ctx.as_ptr()) < 0 {
        return None;
    }
    let mut out = std::ptr::null_mut();
    let r = ffi::PyContextVar_Get(var.as_ptr(), std::ptr::null_mut(), &mut out);
    let exited = ffi::PyContext_Exit(ctx.as_ptr()) >= 0;
    let seen = if out.is_null() {
        Some(false)
    } else {
        let t = out == ffi::Py_True();
        ffi::Py_DECREF(out);
        t.then_some(true)
    };
    if exited && r >= 0 {
        seen
    } else {
        None
    }
}

unsafe fn probe(py: Python<'_>) -> Option<Layout> {
    // PyObject_HEAD, then `ctx_prev`, then `ctx_vars`.
    let off = std::mem::size_of::<ffi::PyObject>() + std::mem::size_of::<usize>();
    let word = |o: &Bound<'_, PyAny>, at: usize| *o.as_ptr().cast::<u8>().add(at).cast::<usize>();
    let a = owned(py, ffi::PyContext_New())?;
    let map = *vars_slot(a.as_ptr(), off);
    if map.is_null() || ffi::Py_REFCNT(map) < 1 {
        return None;
    }
    let map_type = ffi::Py_TYPE(map);
    if CStr::from_ptr((*map_type).tp_name) != c"hamt" {
        return None;
    }
    // A fresh context: no previous context, no weak references, not entered.
    if word(&a, off - std::mem::size_of::<usize>()) != 0
        || word(&a, off + std::mem::size_of::<usize>()) != 0
    {
        return None;
    }
    // A copy shares the map.
    let b = owned(py, ffi::PyContext_Copy(a.as_ptr()))?;
    if *vars_slot(b.as_ptr(), off) != map {
        return None;
    }
    // Setting a variable inside `b` gives `b` (only) a new map.
    let var = owned(
        py,
        ffi::PyContextVar_New(c"tokioloop_probe".as_ptr(), std::ptr::null_mut()),
    )?;
    if ffi::PyContext_Enter(b.as_ptr()) < 0 {
        return None;
    }
    let token = ffi::PyContextVar_Set(var.as_ptr(), ffi::Py_True());
    if ffi::PyContext_Exit(b.as_ptr()) < 0 {
        return None;
    }
    drop(owned(py, token)?);
    let b_map = *vars_slot(b.as_ptr(), off);
    if b_map == map || *vars_slot(a.as_ptr(), off) != map || ffi::Py_TYPE(b_map) != map_type {
        return None;
    }
    // What a variable reads in `a` follows the map written into it.
    let empty = map;
    ffi::Py_INCREF(empty);
    let mut l = Layout {
        map_type,
        vars_off: off,
        empty,
        tstate_ctx_off: None,
    };
    set_vars(&l, a.as_ptr(), b_map);
    let ok_set = reads_true(&a, &var) == Some(true);
    set_vars(&l, a.as_ptr(), empty);
    let ok_empty = reads_true(&a, &var) == Some(false);
    if ok_set && ok_empty {
        l.tstate_ctx_off = probe_tstate(py, &l, &b);
        Some(l)
    } else {
        ffi::Py_DECREF(empty);
        None
    }
}

/// Words of the thread state searched for its current context: the field
/// sits at byte 224 (3.11) or 208 (3.12, 3.13), inside every version's struct.
const TSTATE_SCAN_WORDS: usize = 36;

/// Finds the thread state's current-context field: the one word (of the
/// first `TSTATE_SCAN_WORDS`) that holds each context entered, in turn, and
/// no longer holds it once left; then checks a snapshot read through it.
unsafe fn probe_tstate(py: Python<'_>, l: &Layout, with_var: &Bound<'_, PyAny>) -> Option<usize> {
    let ts = ffi::PyThreadState_Get().cast::<usize>();
    if ts.is_null() {
        return None;
    }
    let word = |i: usize| std::ptr::read_volatile(ts.add(i));
    let c1 = owned(py, ffi::PyContext_New())?;
    let c2 = owned(py, ffi::PyContext_New())?;
    let (p1, p2) = (c1.as_ptr() as usize, c2.as_ptr() as usize);
    if ffi::PyContext_Enter(c1.as_ptr()) < 0 {
        return None;
    }
    let mut found: Vec<usize> = (0..TSTATE_SCAN_WORDS).filter(|&i| word(i) == p1).collect();
    if ffi::PyContext_Enter(c2.as_ptr()) == 0 {
        found.retain(|&i| word(i) == p2);
        if ffi::PyContext_Exit(c2.as_ptr()) < 0 {
            found.clear();
        }
    } else {
        found.clear();
    }
    found.retain(|&i| word(i) == p1);
    if ffi::PyContext_Exit(c1.as_ptr()) < 0 {
        return None;
    }
    found.retain(|&i| word(i) != p1);
    let [i] = found[..] else {
        return None;
    };
    let off = i * std::mem::size_of::<usize>();
    // A snapshot taken inside `with_var` is its map.
    let probe = Layout {
        tstate_ctx_off: Some(off),
        ..*l
    };
    if ffi::PyContext_Enter(with_var.as_ptr()) < 0 {
        return None;
    }
    let seen = snapshot_current(&probe);
    let exited = ffi::PyContext_Exit(with_var.as_ptr()) >= 0;
    let seen = owned(py, seen)?;
    (exited && seen.as_ptr() == *vars_slot(with_var.as_ptr(), l.vars_off)).then_some(off)
}

/// Replaces `ctx`'s variable map with `map`. The old map is released last:
/// its values' finalizers may run.
///
/// # Safety
/// GIL held; `ctx` is a Context that no frame is running in, `map` a map.
#[inline(always)]
unsafe fn set_vars(l: &Layout, ctx: *mut ffi::PyObject, map: *mut ffi::PyObject) {
    let slot = vars_slot(ctx, l.vars_off);
    ffi::Py_INCREF(map);
    let old = std::ptr::replace(slot, map);
    ffi::Py_XDECREF(old);
}

/// A new reference to the current context's variable map, or null with an
/// error set.
///
/// # Safety
/// GIL held.
#[inline(always)]
pub unsafe fn snapshot_current(l: &Layout) -> *mut ffi::PyObject {
    if let Some(off) = l.tstate_ctx_off {
        let ts = ffi::PyThreadState_Get();
        let cur = *ts.cast::<u8>().add(off).cast::<*mut ffi::PyObject>();
        // Null until the thread first needs a context: the copy below makes it.
        if !cur.is_null() {
            let map = *vars_slot(cur, l.vars_off);
            ffi::Py_INCREF(map);
            return map;
        }
    }
    // The copy comes from (and goes back to) CPython's free list.
    let c = ffi::PyContext_CopyCurrent();
    if c.is_null() {
        return c;
    }
    let map = *vars_slot(c, l.vars_off);
    ffi::Py_INCREF(map);
    ffi::Py_DECREF(c);
    map
}

/// The layout, when `o` is a snapshot rather than a Context (or anything a
/// user passed): snapshots exist only once the layout was confirmed.
///
/// # Safety
/// GIL held; `o` is a live object.
#[inline(always)]
pub unsafe fn snapshot_layout(o: *mut ffi::PyObject) -> Option<&'static Layout> {
    layout().filter(|l| ffi::Py_TYPE(o) == l.map_type)
}

/// A new Context holding `map`'s variables (new reference, or null with an
/// error set).
///
/// # Safety
/// GIL held; `map` is a snapshot.
pub unsafe fn context_from(l: &Layout, map: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let c = ffi::PyContext_New();
    if !c.is_null() {
        set_vars(l, c, map);
    }
    c
}

/// The Context a loop runs snapshot handles in, reused while nobody else
/// holds it (a strong reference, or null). Null while a run has it: a nested
/// run makes its own.
pub struct RunContext(std::cell::Cell<*mut ffi::PyObject>);

// SAFETY: read and written only with the GIL held (the extension is not
// free-threaded), so no two threads touch it at once.
unsafe impl Sync for RunContext {}
unsafe impl Send for RunContext {}

impl RunContext {
    pub fn new() -> Self {
        RunContext(std::cell::Cell::new(std::ptr::null_mut()))
    }

    /// A Context (new reference, map empty; or null with an error set) to
    /// run a snapshot handle in.
    ///
    /// # Safety
    /// GIL held.
    #[inline(always)]
    pub unsafe fn take(&self) -> *mut ffi::PyObject {
        let kept = self.0.replace(std::ptr::null_mut());
        if kept.is_null() {
            ffi::PyContext_New()
        } else {
            kept
        }
    }

    /// Loads `map` into `ctx` (from `take`).
    ///
    /// # Safety
    /// GIL held; `ctx` from `take`, not entered; `map` a snapshot.
    #[inline(always)]
    pub unsafe fn load(&self, l: &Layout, ctx: *mut ffi::PyObject, map: *mut ffi::PyObject) {
        set_vars(l, ctx, map);
    }

    /// Takes back `ctx` (our reference) after a run that left nobody else
    /// holding it: its map is emptied (the callback's values go now, as a
    /// per-handle copy's would) and the object kept for the next run.
    ///
    /// # Safety
    /// GIL held; `ctx` from `take`, exited, its reference count 1.
    #[inline(always)]
    pub unsafe fn give_back(&self, l: &Layout, ctx: *mut ffi::PyObject) {
        // Finalizers may run here (and nested runs take and give back).
        set_vars(l, ctx, l.empty);
        if self.0.get().is_null() {
            self.0.set(ctx);
        } else {
            ffi::Py_DECREF(ctx);
        }
    }
}

impl Default for RunContext {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RunContext {
    fn drop(&mut self) {
        let kept = self.0.replace(std::ptr::null_mut());
        if !kept.is_null() {
            // A loop is dropped by its tp_dealloc, under the GIL; if the
            // interpreter is gone, the object goes with it.
            // SAFETY: our strong reference, released with the GIL held.
            Python::try_attach(|py| drop(unsafe { Bound::from_owned_ptr(py, kept) }));
        }
    }
}

/// A handle's context: a Context, or a snapshot until someone needs the
/// object. Replaced only with the GIL held (see `Handle::own_context`).
pub struct ContextField(std::cell::UnsafeCell<Py<PyAny>>);

// SAFETY: read and replaced only with the GIL held (the extension is not
// free-threaded), so no two threads touch it at once.
unsafe impl Sync for ContextField {}

impl ContextField {
    pub fn new(c: Py<PyAny>) -> Self {
        ContextField(std::cell::UnsafeCell::new(c))
    }

    #[inline(always)]
    pub fn get(&self) -> &Py<PyAny> {
        // SAFETY: replacements happen under the GIL and never while a
        // reference from here is in use (callers copy the pointer out).
        unsafe { &*self.0.get() }
    }

    #[inline(always)]
    pub fn as_ptr(&self) -> *mut ffi::PyObject {
        self.get().as_ptr()
    }

    /// Puts `new` (a reference handed over) in place and returns the old
    /// value's reference.
    ///
    /// # Safety
    /// GIL held; no reference from `get` is alive.
    #[inline(always)]
    pub unsafe fn replace_raw(&self, new: *mut ffi::PyObject) -> *mut ffi::PyObject {
        let slot = self.0.get().cast::<*mut ffi::PyObject>();
        std::ptr::replace(slot, new)
    }

    pub fn into_inner(self) -> Py<PyAny> {
        self.0.into_inner()
    }
}
