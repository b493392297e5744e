//! `loop.create_future()` and `loop.create_task()` without a Python frame.
//!
//! The stdlib's is `return futures.Future(loop=self)`: a Python frame and a
//! keyword dict per call, for every `await reader.read()`, `Queue.get()` on an
//! empty queue, `Event.wait()`... Here it reads `asyncio.futures.Future` at
//! call time as that line does, and when it is asyncio's own C Future (which
//! only reads its keywords) calls it with one `{"loop": loop}` dict kept per
//! loop. Anything else put in its place is called the ordinary way.
//!
//! create_task likewise: `tasks.Task(coro, loop=self, name=name,
//! context=context)`, with the same per-loop keywords when name and context
//! are None. A task factory, other keywords, debug mode (the stdlib trims
//! the task's source traceback then), a closed loop or a replaced
//! `asyncio.tasks.Task` go to the Python method (`Loop._create_task`).

use crate::event_loop::CoreLoop;
use crate::pyhelpers;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

/// asyncio.futures' namespace.
static FUTURES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
/// asyncio's C Future type (`_asyncio.Future`), None without the C module.
static C_FUTURE: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();

fn c_future(py: Python<'_>) -> Option<&Py<PyAny>> {
    C_FUTURE
        .get_or_init(py, || {
            py.import("_asyncio")
                .and_then(|m| m.getattr("Future"))
                .ok()
                .map(Bound::unbind)
        })
        .as_ref()
}

pub(crate) fn create_future<'py>(lp: &Bound<'py, CoreLoop>) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let namespace = FUTURES.get_or_try_init(py, || -> PyResult<_> {
        Ok(py.import("asyncio.futures")?.dict().unbind())
    })?;
    let namespace = namespace.bind(py);
    let Some(cls) = namespace.get_item(pyo3::intern!(py, "Future"))? else {
        // Deleted from the module: the AttributeError the stdlib's line raises.
        return py.import("asyncio.futures")?.getattr("Future");
    };
    if !c_future(py).is_some_and(|c| cls.is(c.bind(py))) {
        return cls.call((), Some(&loop_kwargs(lp)?));
    }
    let kwargs = cached_loop_kwargs(lp)?;
    // SAFETY: GIL held; a callable, an empty tuple and a dict, all alive for
    // the call; the result is a new reference or NULL with an exception set.
    unsafe {
        let r = ffi::PyObject_Call(cls.as_ptr(), PyTuple::empty(py).as_ptr(), kwargs.as_ptr());
        if r.is_null() {
            return Err(pyhelpers::take_raised(py));
        }
        Ok(Bound::from_owned_ptr(py, r))
    }
}

/// `obj` is exactly asyncio's C Future (`_asyncio.Future`), whose
/// set_result() refuses a future that is not pending before doing anything.
pub(crate) fn is_exact_c_future(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: reading the type pointer of a live object.
    c_future(obj.py()).is_some_and(|t| unsafe { ffi::Py_TYPE(obj.as_ptr()) }.cast() == t.as_ptr())
}

fn loop_kwargs<'py>(lp: &Bound<'py, CoreLoop>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(lp.py());
    d.set_item(pyo3::intern!(lp.py(), "loop"), lp)?;
    Ok(d)
}

/// asyncio.tasks' namespace and the C Task type it held at import.
static TASKS: PyOnceLock<(Py<PyDict>, Py<PyAny>)> = PyOnceLock::new();

/// The per-loop `{"loop": loop}` (kept until close()).
fn cached_loop_kwargs<'py>(lp: &Bound<'py, CoreLoop>) -> PyResult<Bound<'py, PyDict>> {
    let py = lp.py();
    if let Some(Some(d)) = lp
        .get()
        .self_refs(py, |r| r.future_kwargs.as_ref().map(|d| d.clone_ref(py)))
    {
        return Ok(d.into_bound(py));
    }
    let d = loop_kwargs(lp)?;
    if !lp.get().is_closed_now(py) {
        let keep = d.clone().unbind();
        let old = lp.get().self_refs(py, |r| r.future_kwargs.replace(keep));
        drop(old);
    }
    Ok(d)
}

/// `loop.create_task(coro, name=name, context=context)` when none of the
/// cases the Python method handles applies; None: use that method.
pub(crate) fn create_task<'py>(
    lp: &Bound<'py, CoreLoop>,
    coro: &Bound<'py, PyAny>,
    name: Option<&Bound<'py, PyAny>>,
    context: Option<&Bound<'py, PyAny>>,
) -> Option<PyResult<Bound<'py, PyAny>>> {
    let py = lp.py();
    if !lp.get().plain_task_creation(py) {
        return None;
    }
    let (namespace, c_task) = match TASKS.get_or_try_init(py, || -> PyResult<_> {
        let module = py.import("asyncio.tasks")?;
        let c_task = py.import("_asyncio")?.getattr("Task")?.unbind();
        Ok((module.dict().unbind(), c_task))
    }) {
        Ok(t) => t,
        Err(e) => return Some(Err(e)),
    };
    let cls = namespace
        .bind(py)
        .get_item(pyo3::intern!(py, "Task"))
        .ok()
        .flatten()?;
    if !cls.is(c_task.bind(py)) {
        return None;
    }
    let name = name.filter(|n| !n.is_none());
    let context = context.filter(|c| !c.is_none());
    let kwargs = if name.is_none() && context.is_none() {
        cached_loop_kwargs(lp)
    } else {
        loop_kwargs(lp).and_then(|d| {
            d.set_item(pyo3::intern!(py, "name"), name)?;
            d.set_item(pyo3::intern!(py, "context"), context)?;
            Ok(d)
        })
    };
    let kwargs = match kwargs {
        Ok(k) => k,
        Err(e) => return Some(Err(e)),
    };
    let args = match PyTuple::new(py, [coro]) {
        Ok(a) => a,
        Err(e) => return Some(Err(e)),
    };
    // SAFETY: GIL held; all three objects alive for the call; a new
    // reference or NULL with an exception set.
    unsafe {
        let r = ffi::PyObject_Call(cls.as_ptr(), args.as_ptr(), kwargs.as_ptr());
        if r.is_null() {
            return Some(Err(pyhelpers::take_raised(py)));
        }
        Some(Ok(Bound::from_owned_ptr(py, r)))
    }
}
