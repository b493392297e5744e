//! `loop.create_future()` without a Python frame.
//!
//! The stdlib's is `return futures.Future(loop=self)`: a Python frame and a
//! keyword dict per call, for every `await reader.read()`, `Queue.get()` on an
//! empty queue, `Event.wait()`... Here it reads `asyncio.futures.Future` at
//! call time as that line does, and when it is asyncio's own C Future (which
//! only reads its keywords) calls it with one `{"loop": loop}` dict kept per
//! loop. Anything else put in its place is called the ordinary way.

use crate::event_loop::CoreLoop;
use crate::pyhelpers;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

/// asyncio.futures' namespace and the C Future type it held at import.
static FUTURES: PyOnceLock<(Py<PyDict>, Py<PyAny>)> = PyOnceLock::new();

pub(crate) fn create_future<'py>(lp: &Bound<'py, CoreLoop>) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let (namespace, c_future) = FUTURES.get_or_try_init(py, || -> PyResult<_> {
        let module = py.import("asyncio.futures")?;
        let c_future = py.import("_asyncio")?.getattr("Future")?.unbind();
        Ok((module.dict().unbind(), c_future))
    })?;
    let namespace = namespace.bind(py);
    let Some(cls) = namespace.get_item(pyo3::intern!(py, "Future"))? else {
        // Deleted from the module: the AttributeError the stdlib's line raises.
        return py.import("asyncio.futures")?.getattr("Future");
    };
    if !cls.is(c_future.bind(py)) {
        return cls.call((), Some(&loop_kwargs(lp)?));
    }
    let kwargs = match lp
        .get()
        .self_refs(py, |r| r.future_kwargs.as_ref().map(|d| d.clone_ref(py)))
    {
        Some(Some(d)) => d.into_bound(py),
        _ => {
            let d = loop_kwargs(lp)?;
            if !lp.get().is_closed_now(py) {
                let keep = d.clone().unbind();
                let old = lp.get().self_refs(py, |r| r.future_kwargs.replace(keep));
                drop(old);
            }
            d
        }
    };
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

fn loop_kwargs<'py>(lp: &Bound<'py, CoreLoop>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(lp.py());
    d.set_item(pyo3::intern!(lp.py(), "loop"), lp)?;
    Ok(d)
}
