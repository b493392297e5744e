//! `loop.call_soon` served from one bound method per loop.
//!
//! asyncio's C Future and Task schedule every callback and task step with
//! `PyObject_GetAttr(loop, "call_soon")` and then call the result: an
//! attribute lookup through the loop class's MRO and instance dict, and a new
//! bound method object, allocated and freed each time (~600 instructions of a
//! task step). Here `call_soon` on the loop type is a data descriptor that
//! hands out the loop's one bound method, made on first use.
//!
//! It keeps what the attribute looked like before: `Loop.call_soon` is the
//! method descriptor, `loop.call_soon` a bound method of `loop`, assigning
//! `loop.call_soon = f` (mock.patch.object) makes `loop.call_soon` return `f`
//! until `del loop.call_soon`. The difference: such an assignment does not
//! appear in `loop.__dict__`. The bound method refers to the loop, so the
//! loop drops it in close() (a closed loop is freed by reference counting, as
//! the stdlib's) and reports it to the GC before that.

use crate::event_loop::CoreLoop;
use pyo3::exceptions::{PyAttributeError, PySystemError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::PyTypeInfo;
use std::ffi::CStr;

#[repr(C)]
struct CachedMethod {
    ob_base: ffi::PyObject,
    /// The method descriptor (strong reference) whose binding is cached.
    method: *mut ffi::PyObject,
}

/// # Safety
/// `slf` is a CachedMethod, `obj` NULL or a live object, GIL held.
unsafe extern "C" fn descr_get(
    slf: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    ty: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let method = (*slf.cast::<CachedMethod>()).method;
    let Some(bind) = (*ffi::Py_TYPE(method)).tp_descr_get else {
        return std::ptr::null_mut();
    };
    let py = Python::assume_attached();
    let core_type = CoreLoop::type_object(py).as_type_ptr();
    if obj.is_null() || obj == ffi::Py_None() || ffi::PyObject_TypeCheck(obj, core_type) == 0 {
        // Class access, or a receiver of the wrong type (the method
        // descriptor raises its TypeError).
        return bind(method, obj, ty);
    }
    let lp = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<CoreLoop>();
    let core = lp.get();
    if let Some(Some(found)) = core.self_refs(py, |s| {
        s.call_soon_assigned
            .as_ref()
            .or(s.call_soon.as_ref())
            .map(|o| o.clone_ref(py))
    }) {
        return found.into_ptr();
    }
    let bound = bind(method, obj, ty);
    if !bound.is_null() && !core.is_closed_now(py) {
        let keep = pyo3::Borrowed::from_ptr(py, bound).to_owned().unbind();
        if let Some(old) = core.self_refs(py, |s| s.call_soon.replace(keep)) {
            drop(old);
        }
    }
    bound
}

/// # Safety
/// As for `descr_get`; `value` NULL means `del`.
unsafe extern "C" fn descr_set(
    slf: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> std::os::raw::c_int {
    let _ = slf;
    let py = Python::assume_attached();
    let core_type = CoreLoop::type_object(py).as_type_ptr();
    if obj.is_null() || ffi::PyObject_TypeCheck(obj, core_type) == 0 {
        PySystemError::new_err("tokioloop: call_soon descriptor used on a foreign object")
            .restore(py);
        return -1;
    }
    let lp = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<CoreLoop>();
    let new = if value.is_null() {
        None
    } else {
        Some(pyo3::Borrowed::from_ptr(py, value).to_owned().unbind())
    };
    let deleting = new.is_none();
    let Some(old) = lp
        .get()
        .self_refs(py, |s| std::mem::replace(&mut s.call_soon_assigned, new))
    else {
        PySystemError::new_err("tokioloop: loop state busy").restore(py);
        return -1;
    };
    if deleting && old.is_none() {
        let name = lp
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        PyAttributeError::new_err(format!("'{name}' object has no attribute 'call_soon'"))
            .restore(py);
        return -1;
    }
    drop(old);
    0
}

/// # Safety
/// Called by CPython once the CachedMethod's refcount drops to zero.
unsafe extern "C" fn dealloc(slf: *mut ffi::PyObject) {
    ffi::Py_XDECREF((*slf.cast::<CachedMethod>()).method);
    let ty = ffi::Py_TYPE(slf);
    if let Some(free) = (*ty).tp_free {
        free(slf.cast());
    }
    ffi::Py_DECREF(ty.cast());
}

/// Replaces `CoreLoop.call_soon` (the method descriptor `fastcall::install`
/// put there) by a caching descriptor around it.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let name: &CStr = c"call_soon";
    let mut slots = [
        ffi::PyType_Slot {
            slot: ffi::Py_tp_descr_get,
            pfunc: descr_get as *mut std::ffi::c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_descr_set,
            pfunc: descr_set as *mut std::ffi::c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_dealloc,
            pfunc: dealloc as *mut std::ffi::c_void,
        },
        ffi::PyType_Slot {
            slot: 0,
            pfunc: std::ptr::null_mut(),
        },
    ];
    let mut spec = ffi::PyType_Spec {
        name: c"tokioloop._tokioloop.cached_method".as_ptr(),
        basicsize: std::mem::size_of::<CachedMethod>() as std::os::raw::c_int,
        itemsize: 0,
        flags: ffi::Py_TPFLAGS_DEFAULT as std::os::raw::c_uint,
        slots: slots.as_mut_ptr(),
    };
    let loop_type = CoreLoop::type_object(py);
    // SAFETY: a valid spec whose slots outlive the call (CPython copies
    // them); the new type and object are owned references checked for NULL.
    unsafe {
        let ty = ffi::PyType_FromSpec(&mut spec);
        if ty.is_null() {
            return Err(PyErr::fetch(py));
        }
        let ty = Bound::from_owned_ptr(py, ty).cast_into_unchecked::<PyType>();
        let method = loop_type.getattr(name.to_str().unwrap_or("call_soon"))?;
        let alloc = (*ty.as_type_ptr())
            .tp_alloc
            .unwrap_or(ffi::PyType_GenericAlloc);
        let obj = alloc(ty.as_type_ptr(), 0);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        (*obj.cast::<CachedMethod>()).method = method.into_ptr();
        let obj = Bound::from_owned_ptr(py, obj);
        let dict = (*loop_type.as_type_ptr()).tp_dict;
        if dict.is_null() || ffi::PyDict_SetItemString(dict, name.as_ptr(), obj.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        ffi::PyType_Modified(loop_type.as_type_ptr());
    }
    Ok(())
}
