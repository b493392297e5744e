//! Hand-written METH_FASTCALL entry points for the loop's hottest methods.
//!
//! Every asyncio task step goes through `loop.call_soon(step, context=ctx)`.
//! PyO3's generic argument parser spends ~200 instructions matching the
//! `context` keyword by string; these entry points parse the vectorcall
//! arguments directly (the keyword by identity, falling back to equality)
//! and then run the same implementation as the PyO3 methods they replace.

use crate::event_loop::CoreLoop;
use crate::handles::Args;
use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};
use pyo3::Borrowed;
use pyo3::PyTypeInfo;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};

/// Parsed `(fixed..., *args, context=None)` call. At most two fixed
/// parameters exist (`delay`/`when` and `callback`), so no allocation is
/// needed on the common path.
/// Borrowed straight from the vectorcall array: no reference counting and no
/// tuple for the extra positional arguments until the handle stores them.
struct Parsed<'a, 'py> {
    fixed: [Option<Borrowed<'a, 'py, PyAny>>; 2],
    rest: &'a [*mut ffi::PyObject],
    context: Option<Py<PyAny>>,
}

impl<'a, 'py> Parsed<'a, 'py> {
    fn arg(&self, i: usize) -> PyResult<&Bound<'py, PyAny>> {
        // `parse` fills every fixed slot or fails, so this error cannot happen;
        // it is still an error value rather than a panic.
        self.fixed[i]
            .as_deref()
            .ok_or_else(|| PySystemError::new_err("tokioloop: argument parsing left a slot empty"))
    }

    fn args(&self, py: Python<'py>) -> PyResult<Args> {
        // SAFETY: the pointers come from the vectorcall array of the ongoing call.
        unsafe { Args::from_ptrs(py, self.rest) }
    }
}

fn missing_error(method: &str, missing: &[&str]) -> PyErr {
    let list = missing
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(" and ");
    PyTypeError::new_err(format!(
        "{method}() missing {} required positional argument{}: {list}",
        missing.len(),
        if missing.len() == 1 { "" } else { "s" }
    ))
}

/// The common shapes, `f(fixed..., *rest)` and `f(fixed..., *rest,
/// context=ctx)` with asyncio's own "context" string, without the general
/// keyword matching below. `None` means: use `parse`.
///
/// # Safety
/// As for `parse`.
#[inline(always)]
unsafe fn parse_fast<'a, 'py>(
    py: Python<'py>,
    nfixed: usize,
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> Option<Parsed<'a, 'py>> {
    if nargs < nfixed || nfixed == 0 || nfixed > 2 {
        return None;
    }
    let context = if kwnames.is_null() {
        None
    } else {
        if ffi::PyTuple_GET_SIZE(kwnames) != 1
            || ffi::PyTuple_GET_ITEM(kwnames, 0) != CONTEXT_NAME.load(Ordering::Relaxed)
        {
            return None;
        }
        let value = *args.add(nargs);
        if value == ffi::Py_None() {
            None
        } else {
            Some(Borrowed::from_ptr(py, value).to_owned().unbind())
        }
    };
    let fixed = [
        Some(Borrowed::from_ptr(py, *args)),
        if nfixed == 2 {
            Some(Borrowed::from_ptr(py, *args.add(1)))
        } else {
            None
        },
    ];
    Some(Parsed {
        fixed,
        rest: std::slice::from_raw_parts(args.add(nfixed), nargs - nfixed),
        context,
    })
}

/// # Safety
/// `args` must hold `nargs` positional arguments followed by one value per
/// name in `kwnames`, as CPython's vectorcall protocol guarantees.
unsafe fn parse<'a, 'py>(
    py: Python<'py>,
    method: &str,
    fixed_names: &[&str],
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Parsed<'a, 'py>> {
    let nfixed = fixed_names.len();
    let mut fixed: [Option<Borrowed<'a, 'py, PyAny>>; 2] = [None, None];
    for (i, slot) in fixed.iter_mut().enumerate().take(nfixed.min(nargs)) {
        *slot = Some(Borrowed::from_ptr(py, *args.add(i)));
    }
    let mut context = None;
    if !kwnames.is_null() {
        let names = Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>();
        for (i, name) in names.iter().enumerate() {
            let value: Borrowed<'a, 'py, PyAny> = Borrowed::from_ptr(py, *args.add(nargs + i));
            // asyncio passes the same "context" string object every time:
            // compare by identity first, by value (no allocation) otherwise.
            if is_context_name(name.as_ptr()) {
                context = if value.is_none() {
                    None
                } else {
                    Some(value.to_owned().unbind())
                };
                continue;
            }
            let text = name
                .cast::<PyString>()
                .ok()
                .and_then(|s| s.to_cow().ok().map(|c| c.into_owned()))
                .unwrap_or_default();
            if false {
            } else if let Some(pos) = fixed_names.iter().position(|n| *n == text) {
                // Fixed parameters may also come by keyword (`call_soon(callback=f)`).
                if fixed[pos].is_some() {
                    return Err(PyTypeError::new_err(format!(
                        "{method}() got multiple values for argument '{text}'"
                    )));
                }
                fixed[pos] = Some(value);
            } else {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{text}'"
                )));
            }
        }
    }
    if fixed.iter().take(nfixed).any(|f| f.is_none()) {
        let missing: Vec<&str> = (0..nfixed)
            .filter(|&i| fixed[i].is_none())
            .map(|i| fixed_names[i])
            .collect();
        return Err(missing_error(method, &missing));
    }
    let rest: &'a [*mut ffi::PyObject] = if nargs <= nfixed {
        &[]
    } else {
        std::slice::from_raw_parts(args.add(nfixed), nargs - nfixed)
    };
    Ok(Parsed {
        fixed,
        rest,
        context,
    })
}

static CONTEXT_NAME: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());
static NAME_NAME: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Whether a keyword name is "context".
unsafe fn is_context_name(name: *mut ffi::PyObject) -> bool {
    is_keyword(name, &CONTEXT_NAME, c"context")
}

/// Whether a keyword name is `text`. The last matching object is remembered
/// (and kept alive) in `seen`, so the common case is one pointer compare.
unsafe fn is_keyword(
    name: *mut ffi::PyObject,
    seen: &AtomicPtr<ffi::PyObject>,
    text: &CStr,
) -> bool {
    if name == seen.load(Ordering::Relaxed) {
        return true;
    }
    if ffi::PyUnicode_Check(name) == 0
        || ffi::PyUnicode_CompareWithASCIIString(name, text.as_ptr()) != 0
    {
        return false;
    }
    // Keep the remembered string alive for ever (one small leak per new object seen).
    ffi::Py_INCREF(name);
    seen.store(name, Ordering::Relaxed);
    true
}

fn optional_float(obj: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if obj.is_none() {
        Ok(None)
    } else {
        obj.extract::<f64>().map(Some)
    }
}

/// Runs a raw entry point's fast path so that a panic inside it becomes a
/// Python SystemError instead of unwinding out of an `extern "C"` function
/// (which aborts the process). Free on the non-panicking path.
#[inline(always)]
fn no_unwind<R>(method: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: only called from entry points CPython invokes with the GIL held.
            let py = unsafe { Python::assume_attached() };
            PySystemError::new_err(format!("tokioloop: internal panic in {method}()")).restore(py);
            fallback
        }
    }
}

type Body = for<'a, 'py> fn(Python<'py>, &CoreLoop, Parsed<'a, 'py>) -> PyResult<Py<PyAny>>;

/// # Safety
/// Called by CPython through a method descriptor of the CoreLoop type, so
/// `slf` is a CoreLoop (or subclass) instance and the GIL is held.
#[inline(always)]
unsafe fn entry(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: &str,
    fixed: &[&str],
    body: Body,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let result = catch_unwind(AssertUnwindSafe(|| -> PyResult<Py<PyAny>> {
        let this = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<CoreLoop>();
        let nargs = nargs.max(0) as usize;
        let parsed = match parse_fast(py, fixed.len(), args, nargs, kwnames) {
            Some(p) => p,
            None => parse(py, method, fixed, args, nargs, kwnames)?,
        };
        body(py, this.get(), parsed)
    }));
    match result {
        Ok(Ok(obj)) => obj.into_ptr(),
        Ok(Err(e)) => {
            e.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            PySystemError::new_err(format!("tokioloop: internal panic in {method}()")).restore(py);
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kw: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // Every task step and future callback comes through here as
    // `call_soon(f)`, `call_soon(f, arg)` or `call_soon(f, context=ctx)`:
    // those shapes skip the general parser and Result plumbing below.
    if nargs == 1 || nargs == 2 {
        let nargs = nargs as usize;
        if let Some(ctx) = plain_context(args, nargs, kw) {
            let py = Python::assume_attached();
            let this = Borrowed::from_ptr(py, slf).cast_unchecked::<CoreLoop>();
            let rest = std::slice::from_raw_parts(args.add(1), nargs - 1);
            let fast = no_unwind("call_soon", Some(std::ptr::null_mut()), || {
                this.get().call_soon_fast(py, *args, rest, ctx)
            });
            if let Some(res) = fast {
                return res;
            }
        }
    }
    entry(
        slf,
        args,
        nargs,
        kw,
        "call_soon",
        &["callback"],
        |py, core, mut p| {
            let ctx = p.context.take();
            let args = p.args(py)?;
            Ok(core.call_soon_impl(py, p.arg(0)?, args, ctx)?.into_any())
        },
    )
}

unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kw: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    if nargs == 1 || nargs == 2 {
        let nargs = nargs as usize;
        if let Some(ctx) = plain_context(args, nargs, kw) {
            let py = Python::assume_attached();
            let this = Borrowed::from_ptr(py, slf).cast_unchecked::<CoreLoop>();
            let rest = std::slice::from_raw_parts(args.add(1), nargs - 1);
            let fast = no_unwind("call_soon_threadsafe", Some(std::ptr::null_mut()), || {
                this.get().call_soon_threadsafe_fast(py, *args, rest, ctx)
            });
            if let Some(res) = fast {
                return res;
            }
        }
    }
    entry(
        slf,
        args,
        nargs,
        kw,
        "call_soon_threadsafe",
        &["callback"],
        |py, core, mut p| {
            let ctx = p.context.take();
            Ok(core
                .call_soon_threadsafe_impl(py, p.arg(0)?, p.args(py)?, ctx)?
                .into_any())
        },
    )
}

/// The context of a `(..., context=ctx)` call made with asyncio's own
/// "context" string: `Some(NULL)` for none (or None), `None` for any other
/// keyword shape (use the general parser).
#[inline(always)]
unsafe fn plain_context(
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kw: *mut ffi::PyObject,
) -> Option<*mut ffi::PyObject> {
    if kw.is_null() {
        return Some(std::ptr::null_mut());
    }
    if ffi::PyTuple_GET_SIZE(kw) != 1
        || ffi::PyTuple_GET_ITEM(kw, 0) != CONTEXT_NAME.load(Ordering::Relaxed)
    {
        return None;
    }
    let v = *args.add(nargs);
    Some(if v == ffi::Py_None() {
        std::ptr::null_mut()
    } else {
        v
    })
}

/// An exact float or int as f64; anything else (or an overflow) takes the
/// general path, which raises asyncio's errors.
#[inline(always)]
unsafe fn plain_number(obj: *mut ffi::PyObject) -> Option<f64> {
    if ffi::PyFloat_CheckExact(obj) != 0 {
        return Some(ffi::PyFloat_AS_DOUBLE(obj));
    }
    if ffi::PyLong_CheckExact(obj) != 0 {
        let v = ffi::PyLong_AsDouble(obj);
        if v == -1.0 && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        return Some(v);
    }
    None
}

/// Fast path shared by call_later and call_at: `(number, callback[, arg])`.
#[inline(always)]
unsafe fn timer_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kw: *mut ffi::PyObject,
    relative: bool,
) -> Option<*mut ffi::PyObject> {
    if nargs != 2 && nargs != 3 {
        return None;
    }
    let nargs = nargs as usize;
    let ctx = plain_context(args, nargs, kw)?;
    let t = plain_number(*args)?;
    let when = if relative {
        crate::clock::monotonic() + t
    } else {
        t
    };
    let py = Python::assume_attached();
    let this = Borrowed::from_ptr(py, slf).cast_unchecked::<CoreLoop>();
    let rest = std::slice::from_raw_parts(args.add(2), nargs - 2);
    this.get().call_at_fast(py, when, *args.add(1), rest, ctx)
}

unsafe extern "C" fn call_later(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kw: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let fast = no_unwind("call_later", Some(std::ptr::null_mut()), || {
        timer_fast(slf, args, nargs, kw, true)
    });
    if let Some(res) = fast {
        return res;
    }
    entry(
        slf,
        args,
        nargs,
        kw,
        "call_later",
        &["delay", "callback"],
        |py, core, mut p| {
            let delay = optional_float(p.arg(0)?)?;
            let ctx = p.context.take();
            Ok(core
                .call_later_impl(py, delay, p.arg(1)?, p.args(py)?, ctx)?
                .into_any())
        },
    )
}

unsafe extern "C" fn call_at(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kw: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let fast = no_unwind("call_at", Some(std::ptr::null_mut()), || {
        timer_fast(slf, args, nargs, kw, false)
    });
    if let Some(res) = fast {
        return res;
    }
    entry(
        slf,
        args,
        nargs,
        kw,
        "call_at",
        &["when", "callback"],
        |py, core, mut p| {
            let when = optional_float(p.arg(0)?)?;
            let ctx = p.context.take();
            Ok(core
                .call_at_impl(py, when, p.arg(1)?, p.args(py)?, ctx)?
                .into_any())
        },
    )
}

/// `loop.is_closed()`: asyncio calls it for every task created.
unsafe extern "C" fn is_closed(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let this = Borrowed::from_ptr(py, slf).cast_unchecked::<CoreLoop>();
    no_unwind("is_closed", std::ptr::null_mut(), || {
        ffi::PyBool_FromLong(this.get().is_closed_now(py) as std::ffi::c_long)
    })
}

/// `loop.get_debug()`: the C Task constructor calls it for every task.
unsafe extern "C" fn get_debug(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let this = Borrowed::from_ptr(py, slf).cast_unchecked::<CoreLoop>();
    no_unwind("get_debug", std::ptr::null_mut(), || {
        this.get().get_debug(py).into_ptr()
    })
}

/// `loop.create_future()` (see futures.rs).
unsafe extern "C" fn create_future(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let this = Borrowed::from_ptr(py, slf).cast_unchecked::<CoreLoop>();
    no_unwind(
        "create_future",
        std::ptr::null_mut(),
        || match crate::futures::create_future(&this) {
            Ok(f) => f.into_ptr(),
            Err(e) => {
                e.restore(py);
                std::ptr::null_mut()
            }
        },
    )
}

/// `loop.create_task(coro, *, name=None, context=None, **kwargs)`: the
/// common case natively (futures.rs), anything else through the Python
/// method `_create_task` with the same arguments.
unsafe extern "C" fn create_task(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let nargs = ffi::PyVectorcall_NARGS(nargsf as usize);
    let fast = no_unwind("create_task", Some(std::ptr::null_mut()), || {
        if nargs != 1 {
            return None;
        }
        let (mut name, mut context) = (None, None);
        if !kwnames.is_null() {
            for i in 0..ffi::PyTuple_GET_SIZE(kwnames) {
                let key = ffi::PyTuple_GET_ITEM(kwnames, i);
                let value = Borrowed::from_ptr(py, *args.add(1 + i as usize));
                if is_context_name(key) {
                    context = Some(value.to_owned());
                } else if is_keyword(key, &NAME_NAME, c"name") {
                    name = Some(value.to_owned());
                } else {
                    return None;
                }
            }
        }
        let this = Borrowed::from_ptr(py, slf).cast_unchecked::<CoreLoop>();
        let coro = Borrowed::from_ptr(py, *args).to_owned();
        crate::futures::create_task(&this, &coro, name.as_ref(), context.as_ref()).map(
            |r| match r {
                Ok(task) => task.into_ptr(),
                Err(e) => {
                    e.restore(py);
                    std::ptr::null_mut()
                }
            },
        )
    });
    if let Some(result) = fast {
        return result;
    }
    // Interned: with a task factory set (eager_task_factory, say) every
    // create_task comes this way.
    let method = ffi::PyObject_GetAttr(slf, pyo3::intern!(py, "_create_task").as_ptr());
    if method.is_null() {
        return std::ptr::null_mut();
    }
    let result = ffi::PyObject_Vectorcall(method, args, nargs as usize, kwnames);
    ffi::Py_DECREF(method);
    result
}

type Raw = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// Replaces the PyO3-generated methods on the CoreLoop type with the
/// fast-call versions above (same names, same behaviour).
pub fn install(py: Python<'_>) -> PyResult<()> {
    let table: [(&'static CStr, Raw, &'static CStr); 5] = [
        (c"call_soon", call_soon, c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called soon."),
        (c"call_soon_threadsafe", call_soon_threadsafe, c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), but safe to call from any thread."),
        (c"call_later", call_later, c"call_later($self, delay, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called after delay seconds."),
        (c"call_at", call_at, c"call_at($self, when, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called at loop time `when`."),
        (c"create_task", create_task, c"create_task($self, coro, *, name=None, context=None, **kwargs)\n--\n\nSchedule a coroutine object; return a task object."),
    ];
    type NoArgs =
        unsafe extern "C" fn(*mut ffi::PyObject, *mut ffi::PyObject) -> *mut ffi::PyObject;
    let noargs: [(&'static CStr, NoArgs, &'static CStr); 3] = [
        (
            c"is_closed",
            is_closed,
            c"is_closed($self, /)\n--\n\nReturns True if the event loop was closed.",
        ),
        (
            c"get_debug",
            get_debug,
            c"get_debug($self, /)\n--\n\nReturns what was given to set_debug().",
        ),
        (
            c"create_future",
            create_future,
            c"create_future($self, /)\n--\n\nCreate a Future object attached to the loop.",
        ),
    ];
    let ty = CoreLoop::type_object(py);
    let defs = table
        .into_iter()
        .map(|(name, func, doc)| ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: func,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        })
        .chain(
            noargs
                .into_iter()
                .map(|(name, func, doc)| ffi::PyMethodDef {
                    ml_name: name.as_ptr(),
                    ml_meth: ffi::PyMethodDefPointer { PyCFunction: func },
                    ml_flags: ffi::METH_NOARGS,
                    ml_doc: doc.as_ptr(),
                }),
        );
    for def in defs {
        set_type_method(&ty, def)?;
    }
    Ok(())
}

/// Puts a method descriptor for `def` in the type's own dict under
/// `def.ml_name` (replacing PyO3's), then tells CPython its caches are stale.
/// `ml_name` and `ml_doc` must point to memory that lives for ever.
pub(crate) fn set_type_method(ty: &Bound<'_, PyType>, def: ffi::PyMethodDef) -> PyResult<()> {
    let py = ty.py();
    let name = def.ml_name;
    // The descriptor keeps a pointer to its PyMethodDef for ever: leak it on purpose.
    let def = Box::leak(Box::new(def));
    // SAFETY: a valid type object and a 'static method definition.
    let descr = unsafe { ffi::PyDescr_NewMethod(ty.as_ptr().cast(), def) };
    if descr.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `descr` is a new reference we own.
    let descr = unsafe { Bound::from_owned_ptr(py, descr) };
    // SAFETY: writing the type's own dict, then telling CPython its caches are stale.
    unsafe {
        let dict = (*ty.as_ptr().cast::<ffi::PyTypeObject>()).tp_dict;
        if dict.is_null() || ffi::PyDict_SetItemString(dict, name, descr.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        ffi::PyType_Modified(ty.as_ptr().cast());
    }
    Ok(())
}
