//! Logic the stream and datagram transports share word for word: water
//! marks, extra info, the fatal-error report and the connection_lost
//! plumbing. Each transport keeps its own state and calls these pieces, so
//! what differs between them (buffers, messages) stays in its own module.

use crate::event_loop::CoreLoop;
use crate::pyhelpers;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// Default high-water mark of a transport's write buffer (the stdlib's 64 KiB).
pub(crate) const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// `set_write_buffer_limits(high, low)`: the stdlib's defaults (a missing
/// mark derived from the other, or 64 KiB / 16 KiB) and its ValueError.
pub(crate) fn water_marks(high: Option<i64>, low: Option<i64>) -> PyResult<(usize, usize)> {
    let high = match (high, low) {
        (Some(h), _) => h,
        (None, Some(l)) => 4 * l,
        (None, None) => DEFAULT_HIGH_WATER as i64,
    };
    let low = low.unwrap_or(high.div_euclid(4));
    if !(high >= low && low >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high as usize, low as usize))
}

/// `get_extra_info(name, default)` over a transport's extra dict.
pub(crate) fn extra_info(
    py: Python<'_>,
    extra: Option<Py<PyDict>>,
    name: &Bound<'_, PyAny>,
    default: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    if let Some(extra) = extra {
        if let Some(v) = extra.bind(py).get_item(name)? {
            return Ok(v.unbind());
        }
    }
    Ok(default.unwrap_or_else(|| py.None()))
}

/// Schedules `transport._call_connection_lost(exc)` for the next iteration,
/// as the stdlib does (so a subclass override is honoured).
pub(crate) fn schedule_connection_lost(
    core: &CoreLoop,
    transport: &Bound<'_, PyAny>,
    exc: Option<Py<PyAny>>,
) -> PyResult<()> {
    let py = transport.py();
    let cb = transport
        .getattr(intern!(py, "_call_connection_lost"))?
        .unbind();
    let exc = exc.unwrap_or_else(|| py.None());
    let args = PyTuple::new(py, [exc])?.unbind();
    core.schedule(py, cb, args)
}

/// The report half of the stdlib's `_fatal_error`: exit exceptions go up
/// untouched, others are logged through the loop's exception handler. Gives
/// back the exception object, which the caller passes to its force_close.
pub(crate) fn report_fatal_error(
    event_loop: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: impl FnOnce() -> Option<Py<PyAny>>,
    exc: PyErr,
    message: &str,
) -> PyResult<Py<PyAny>> {
    let py = transport.py();
    if pyhelpers::is_exit_exception(py, &exc) {
        return Err(exc);
    }
    let protocol = protocol();
    let exc_obj = exc.into_value(py).into_any();
    pyhelpers::transport_fatal_error(
        py,
        event_loop,
        transport,
        protocol,
        exc_obj.clone_ref(py),
        message,
    )?;
    Ok(exc_obj)
}

/// `protocol.connection_lost(exc)` with a panic turned into an exception; a
/// None `exc` is passed as None.
pub(crate) fn call_connection_lost(
    py: Python<'_>,
    protocol: Option<&Py<PyAny>>,
    exc: Option<Py<PyAny>>,
) -> PyResult<()> {
    let exc = exc.filter(|e| !e.is_none(py));
    match protocol {
        Some(p) => pyhelpers::guarded(|| {
            p.bind(py)
                .call_method1(intern!(py, "connection_lost"), (exc,))
                .map(|_| ())
        }),
        None => Ok(()),
    }
}

/// Whether a transport's socket object still wraps `fd`: once the user
/// closed it the number may belong to another socket (the stdlib's calls on
/// the closed object fail with EBADF; so do ours). This runs before every
/// read and write: with `raw` (the object passed `sock_ops::has_raw_fd`) the
/// fd is read in place while the transport's state is still borrowed, no
/// reference taken; otherwise fileno(), which runs Python code, is asked
/// after the borrow (`state`, from which `sock_of` picks the socket) ends.
///
/// # Safety
/// `raw` is true only if the socket in `state` passed `has_raw_fd` (a plain
/// socket.socket).
pub(crate) unsafe fn still_wraps_fd<S: std::ops::Deref>(
    py: Python<'_>,
    state: S,
    sock_of: impl Fn(&S::Target) -> Option<&Py<PyAny>>,
    fd: std::os::fd::RawFd,
    raw: bool,
) -> bool {
    let Some(sock) = sock_of(&state) else {
        return false;
    };
    if raw {
        // SAFETY: a plain socket.socket (the caller's promise), alive while
        // `state` holds it; GIL held.
        return unsafe { crate::sock_ops::raw_socket_fd(sock.as_ptr()) } == fd;
    }
    // A `Bound`, not a `Py` (whose drop checks for the GIL).
    let sock = sock.bind(py).clone();
    drop(state);
    matches!(
        crate::sock_ops::fileno_of(&sock),
        Ok(Some(f)) if f == fd as i64
    )
}
