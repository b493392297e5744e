//! Calls into the package's pure-Python support module for rare, formatting-heavy
//! work (reprs, error reports, debug logs), so the Rust side stays on the hot path.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

static SUPPORT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The exception a failed C-API call raised, as a PyErr — without pyo3's
/// `PyErr::fetch` rule that turns a fetched PanicException back into a Rust
/// panic. A panic that surfaced in Python code (a panicking callback) must stay
/// an exception for the loop to report, never unwind through the run loop.
pub fn take_raised(py: Python<'_>) -> PyErr {
    let mut ptype = std::ptr::null_mut();
    let mut pvalue = std::ptr::null_mut();
    let mut ptb = std::ptr::null_mut();
    // SAFETY: the GIL is held; the three out-pointers receive new references
    // (or NULL), which are consumed or released below. PyErr_Fetch/Normalize
    // work on every supported CPython (3.12 keeps them as wrappers).
    unsafe {
        #[allow(deprecated)]
        {
            pyo3::ffi::PyErr_Fetch(&mut ptype, &mut pvalue, &mut ptb);
            if ptype.is_null() {
                return pyo3::exceptions::PySystemError::new_err(
                    "error return without exception set",
                );
            }
            pyo3::ffi::PyErr_NormalizeException(&mut ptype, &mut pvalue, &mut ptb);
        }
        if !ptb.is_null() && !pvalue.is_null() {
            pyo3::ffi::PyException_SetTraceback(pvalue, ptb);
        }
        pyo3::ffi::Py_XDECREF(ptype);
        pyo3::ffi::Py_XDECREF(ptb);
        if pvalue.is_null() {
            return pyo3::exceptions::PySystemError::new_err("exception lost in normalisation");
        }
        PyErr::from_value(Bound::from_owned_ptr(py, pvalue))
    }
}

/// Runs a call into user Python code so that a PanicException it raises comes
/// back as an error (pyo3 would resume it as a Rust panic when fetching it).
pub fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(panic_to_pyerr(p)))
}

/// A panic payload caught by catch_unwind, as the PanicException pyo3 raises.
pub fn panic_to_pyerr(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "panic in tokioloop".to_string()
    };
    pyo3::panic::PanicException::new_err(msg)
}

fn support(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    SUPPORT
        .get_or_try_init(py, || py.import("tokioloop._support").map(|m| m.unbind()))
        .map(|m| m.bind(py))
}

pub fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

pub fn format_handle_repr(
    py: Python<'_>,
    kind: &str,
    cancelled: bool,
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    when: Option<f64>,
    source_traceback: Option<Py<PyAny>>,
) -> PyResult<String> {
    support(py)?
        .call_method1(
            "format_handle_repr",
            (kind, cancelled, callback, args, when, source_traceback),
        )?
        .extract()
}

/// Hands a callback's exception to the loop's exception handler with the same
/// context dict asyncio builds.
pub fn report_callback_error(
    py: Python<'_>,
    event_loop: Option<&Bound<'_, PyAny>>,
    handle: &Bound<'_, PyAny>,
    err: PyErr,
) -> PyResult<()> {
    let exc = err.into_value(py);
    support(py)?.call_method1("report_callback_error", (event_loop, handle, exc))?;
    Ok(())
}

pub fn log_slow_callback(py: Python<'_>, handle: &Bound<'_, PyAny>, seconds: f64) -> PyResult<()> {
    support(py)?.call_method1("log_slow_callback", (handle, seconds))?;
    Ok(())
}

pub fn is_coroutine(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    support(py)?.call_method1("is_coroutine", (obj,))?.extract()
}

pub fn is_coroutine_function(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    support(py)?
        .call_method1("is_coroutine_function", (obj,))?
        .extract()
}

/// asyncio's `format_helpers.extract_stack` of the caller, for debug-mode handles.
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(support(py)?.call_method0("extract_stack")?.unbind())
}

/// The stdlib's `_fatal_error`: OSErrors are only logged in debug mode, anything
/// else goes to the exception handler with the transport and protocol.
pub fn transport_fatal_error(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: Option<Py<PyAny>>,
    exc: Py<PyAny>,
    message: &str,
) -> PyResult<()> {
    support(py)?.call_method1(
        "transport_fatal_error",
        (event_loop, transport, protocol, exc, message),
    )?;
    Ok(())
}

pub fn protocol_callback_failed(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: Option<Py<PyAny>>,
    exc: Py<PyAny>,
    message: &str,
) -> PyResult<()> {
    support(py)?.call_method1(
        "protocol_callback_failed",
        (event_loop, transport, protocol, exc, message),
    )?;
    Ok(())
}

pub fn log_warning(py: Python<'_>, message: &str) -> PyResult<()> {
    support(py)?.call_method1("log_warning", (message,))?;
    Ok(())
}

/// The blocking-call detector's report: a user hook if set, else a warning
/// on the asyncio logger naming the callback and where its code lives.
pub fn report_blocking_call(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    handle: &Bound<'_, PyAny>,
    seconds: f64,
    hook: Option<Py<PyAny>>,
) -> PyResult<()> {
    support(py)?.call_method1("report_blocking_call", (event_loop, handle, seconds, hook))?;
    Ok(())
}
