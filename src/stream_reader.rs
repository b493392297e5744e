//! asyncio's `StreamReaderProtocol.data_received()`, done in Rust.
//!
//! Behind asyncio streams (start_server, open_connection) every read went
//! through four small Python functions: StreamReaderProtocol.data_received,
//! its `_stream_reader` property, StreamReader.feed_data and
//! StreamReader._wakeup_waiter (~5,800 instructions per 1 KiB read, a quarter
//! of an echo request). When the protocol and its reader are exactly the
//! stdlib's classes and none of those methods was replaced (on the class or
//! the instance), the transport takes the same steps here on the same
//! attributes: extend the reader's bytearray, wake its waiter, pause the
//! transport past twice the limit. Anything else (a subclass, a replaced
//! method, a reader at EOF, a buffer that is not a bytearray) goes through
//! the Python method, unchanged. What a caller can see differs only in what
//! a profiler or tracer sees: those frames do not run.

use crate::pyhelpers;
use pyo3::exceptions::PyNotImplementedError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyType};
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// `_PyObject_GetMethod`: the lookup behind LOAD_METHOD. 1 and the plain
/// function when `name` resolves to a method of the type that the instance
/// does not shadow.
type GetMethodFn = unsafe extern "C" fn(
    obj: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
    method: *mut *mut ffi::PyObject,
) -> std::os::raw::c_int;
/// `_PyType_Lookup`: a type's attribute through its MRO and the method
/// cache, borrowed, no instance involved.
type TypeLookupFn = unsafe extern "C" fn(
    tp: *mut ffi::PyTypeObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// The two private CPython functions the fast path needs, looked up in the
/// running interpreter rather than linked: both are exported by 3.11-3.14,
/// but a CPython that drops either must still import this module (the fast
/// path is then off and every read goes through the Python methods).
struct PrivateApi {
    get_method: GetMethodFn,
    type_lookup: TypeLookupFn,
}

impl PrivateApi {
    fn resolve() -> Option<PrivateApi> {
        // SAFETY: dlsym with RTLD_DEFAULT searches the symbols already loaded
        // (the interpreter's); a non-null result is the function of that
        // name, whose C signature is the one declared above.
        unsafe {
            let gm = libc::dlsym(libc::RTLD_DEFAULT, c"_PyObject_GetMethod".as_ptr());
            let tl = libc::dlsym(libc::RTLD_DEFAULT, c"_PyType_Lookup".as_ptr());
            if gm.is_null() || tl.is_null() {
                return None;
            }
            Some(PrivateApi {
                get_method: std::mem::transmute::<*mut libc::c_void, GetMethodFn>(gm),
                type_lookup: std::mem::transmute::<*mut libc::c_void, TypeLookupFn>(tl),
            })
        }
    }
}

/// One of the two stdlib classes and its own methods (and property) that the
/// fast path stands in for.
struct Class {
    ty: Py<PyType>,
    methods: Vec<(Py<PyString>, Py<PyAny>)>,
    /// The type's version tag when last found unmodified; CPython gives a
    /// type a new tag whenever it or a base changes, 0 when it has none.
    tag: AtomicU32,
}

impl Class {
    fn load(streams: &Bound<'_, PyAny>, name: &str, methods: &[&str]) -> PyResult<Class> {
        let py = streams.py();
        let cls = streams.getattr(name)?;
        let dict = cls.getattr("__dict__")?;
        let mut own = Vec::new();
        for m in methods {
            let f = dict.get_item(*m)?;
            // A function replaced before this first capture is not the stdlib's.
            let getter = f.getattr("fget").unwrap_or_else(|_| f.clone());
            let module: String = getter.getattr("__module__")?.extract()?;
            let qualname: String = getter.getattr("__qualname__")?.extract()?;
            if module != "asyncio.streams" || qualname != format!("{name}.{m}") {
                return Err(pyo3::exceptions::PyLookupError::new_err(qualname));
            }
            own.push((PyString::intern(py, m).unbind(), f.unbind()));
        }
        Ok(Class {
            ty: cls.cast_into::<PyType>()?.unbind(),
            methods: own,
            tag: AtomicU32::new(0),
        })
    }

    /// `obj` is exactly this class, and the class is as the stdlib made it.
    #[inline]
    fn is_instance(&self, obj: &Bound<'_, PyAny>) -> bool {
        let ty = self.ty.as_ptr().cast::<ffi::PyTypeObject>();
        // SAFETY: GIL held; reading a live type object's fields.
        unsafe {
            if ffi::Py_TYPE(obj.as_ptr()) != ty {
                return false;
            }
            let tag = self.tag.load(Ordering::Relaxed);
            (tag != 0 && (*ty).tp_version_tag == tag) || self.revalidate(obj.py())
        }
    }

    /// After a change to the class or a base (or at first use): are its
    /// methods still the stdlib's?
    #[cold]
    fn revalidate(&self, py: Python<'_>) -> bool {
        let Some(api) = private_api(py) else {
            return false;
        };
        let ty = self.ty.as_ptr().cast::<ffi::PyTypeObject>();
        // SAFETY: GIL held; _PyType_Lookup returns borrowed references,
        // compared only. It also gives the type a version tag.
        unsafe {
            for (name, f) in &self.methods {
                if (api.type_lookup)(ty, name.as_ptr()) != f.as_ptr() {
                    return false;
                }
            }
            self.tag.store((*ty).tp_version_tag, Ordering::Relaxed);
        }
        true
    }
}

/// `obj.name` resolves to the class's own function `f`: no instance
/// attribute shadows it (one lookup, as LOAD_METHOD makes).
fn not_shadowed(
    api: &PrivateApi,
    obj: &Bound<'_, PyAny>,
    name: &Py<PyString>,
    f: &Py<PyAny>,
) -> bool {
    let mut found: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: GIL held; `found` receives a new reference or NULL.
    unsafe {
        let unbound = (api.get_method)(obj.as_ptr(), name.as_ptr(), &mut found);
        if found.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        ffi::Py_DECREF(found);
        unbound == 1 && found == f.as_ptr()
    }
}

/// `obj.name`, or None when that raises (the Python path then raises it).
fn attr<'py>(obj: &Bound<'py, PyAny>, name: &Bound<'py, PyString>) -> Option<Bound<'py, PyAny>> {
    // SAFETY: GIL held; a new reference or NULL with an exception set.
    unsafe {
        let r = ffi::PyObject_GetAttr(obj.as_ptr(), name.as_ptr());
        if r.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        Some(Bound::from_owned_ptr(obj.py(), r))
    }
}

struct Originals {
    protocol: Class,
    reader: Class,
    api: &'static PrivateApi,
}

static ORIGINALS: PyOnceLock<Option<Originals>> = PyOnceLock::new();

/// StreamReaderProtocol's type object once `originals` resolved it (kept
/// alive there), NO_PROTOCOL_TYPE if it could not be; null before. Lets a
/// transport whose protocol is anything else skip `target` with one compare.
static PROTOCOL_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
/// Matches no object's type (no object lives at that small, aligned address).
const NO_PROTOCOL_TYPE: *mut ffi::PyTypeObject = std::ptr::dangling_mut();

/// False when `proto` cannot be a plain StreamReaderProtocol (its type is
/// not that class, or the fast path is unavailable): `target` would say None.
#[inline]
pub(crate) fn may_be_plain(proto: &Bound<'_, PyAny>) -> bool {
    let ty = PROTOCOL_TYPE.load(Ordering::Relaxed);
    // SAFETY: reading the type pointer of a live object.
    ty.is_null() || ty == unsafe { ffi::Py_TYPE(proto.as_ptr()) }
}

static PRIVATE_API: PyOnceLock<Option<PrivateApi>> = PyOnceLock::new();

fn private_api(py: Python<'_>) -> Option<&'static PrivateApi> {
    PRIVATE_API.get_or_init(py, PrivateApi::resolve).as_ref()
}

fn originals(py: Python<'_>) -> Option<&Originals> {
    ORIGINALS
        .get_or_init(py, || {
            let api = private_api(py)?;
            let load = || -> PyResult<Originals> {
                let streams = py.import("asyncio.streams")?;
                Ok(Originals {
                    protocol: Class::load(
                        &streams,
                        "StreamReaderProtocol",
                        &["data_received", "_stream_reader"],
                    )?,
                    reader: Class::load(
                        &streams,
                        "StreamReader",
                        &["feed_data", "_wakeup_waiter"],
                    )?,
                    api,
                })
            };
            let found = load().ok();
            let ty = found.as_ref().map_or(NO_PROTOCOL_TYPE, |o| {
                o.protocol.ty.as_ptr().cast::<ffi::PyTypeObject>()
            });
            PROTOCOL_TYPE.store(ty, Ordering::Relaxed);
            found
        })
        .as_ref()
}

/// A plain StreamReaderProtocol's reader and its (exact) bytearray.
pub(crate) struct Target<'py> {
    pub reader: Bound<'py, PyAny>,
    pub buffer: Bound<'py, PyAny>,
}

/// The reader and bytearray that `proto.data_received(data)` would extend,
/// when `proto` is a plain StreamReaderProtocol (see the module comment).
/// None: not applicable, the caller calls the Python method. Some(None):
/// the protocol has no reader (any more); data_received does nothing then.
pub(crate) fn target<'py>(proto: &Bound<'py, PyAny>) -> Option<Option<Target<'py>>> {
    let py = proto.py();
    let o = originals(py)?;
    if !o.protocol.is_instance(proto) {
        return None;
    }
    // data_received: a method the instance may shadow; _stream_reader: a
    // property, which only the class can replace (is_instance checks that).
    // The attributes themselves are read the generic way, as Python does.
    let (name, f) = &o.protocol.methods[0];
    let api = o.api;
    if !not_shadowed(api, proto, name, f) {
        return None;
    }
    let wr = attr(proto, intern!(py, "_stream_reader_wr"))?;
    if wr.is_none() {
        return Some(None);
    }
    // SAFETY: GIL held; type check, then a new reference to the referent.
    let reader = unsafe {
        if ffi::PyWeakref_CheckRefExact(wr.as_ptr()) == 0 {
            return None;
        }
        let mut r: *mut ffi::PyObject = std::ptr::null_mut();
        match ffi::compat::PyWeakref_GetRef(wr.as_ptr(), &mut r) {
            // A dead reference: the property gives None, as below.
            0 => return Some(None),
            1 => Bound::from_owned_ptr(py, r),
            _ => {
                ffi::PyErr_Clear();
                return None;
            }
        }
    };
    if reader.is_none() {
        return Some(None);
    }
    if !o.reader.is_instance(&reader)
        || !o
            .reader
            .methods
            .iter()
            .all(|(n, f)| not_shadowed(api, &reader, n, f))
    {
        return None;
    }
    // feed_data's `assert not self._eof`: any EOF state but plain False is
    // left to Python (which raises, or not under -O).
    if !attr(&reader, intern!(py, "_eof"))?.is(pyo3::types::PyBool::new(py, false)) {
        return None;
    }
    let buffer = attr(&reader, intern!(py, "_buffer"))?;
    // SAFETY: type check only.
    if unsafe { ffi::PyByteArray_CheckExact(buffer.as_ptr()) } == 0 {
        return None;
    }
    Some(Some(Target { reader, buffer }))
}

/// `proto.data_received(data)` done here when `proto` is a plain
/// StreamReaderProtocol (see the module comment). None: not applicable,
/// nothing was done, the caller calls the Python method.
pub(crate) fn data_received(
    proto: &Bound<'_, PyAny>,
    data: &Bound<'_, PyBytes>,
) -> Option<PyResult<()>> {
    if data.as_bytes().is_empty() {
        return None;
    }
    let Some(t) = target(proto)? else {
        return Some(Ok(()));
    };
    // From here on the steps have effects, as in feed_data: errors propagate.
    Some(pyhelpers::guarded(|| {
        extend(&t.buffer, data.as_bytes())?;
        fed(&t.reader, &t.buffer)
    }))
}

/// `self._buffer.extend(data)` on an exact bytearray.
fn extend(buffer: &Bound<'_, PyAny>, data: &[u8]) -> PyResult<()> {
    // SAFETY: `buffer` is an exact bytearray; resizing fails (BufferError, as
    // extend() raises) while it has exports; after a successful resize it has
    // room for `data` at the old end.
    unsafe {
        let old = ffi::PyByteArray_Size(buffer.as_ptr());
        if ffi::PyByteArray_Resize(buffer.as_ptr(), old + data.len() as ffi::Py_ssize_t) < 0 {
            return Err(pyhelpers::take_raised(buffer.py()));
        }
        let dst = ffi::PyByteArray_AsString(buffer.as_ptr()).cast::<u8>();
        std::ptr::copy_nonoverlapping(data.as_ptr(), dst.add(old as usize), data.len());
    }
    Ok(())
}

/// StreamReader.feed_data's effects after the extend, on a reader from
/// `target`: wake the waiter, pause the transport past twice the limit.
pub(crate) fn fed(reader: &Bound<'_, PyAny>, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = reader.py();
    // self._wakeup_waiter()
    let waiter = reader.getattr(intern!(py, "_waiter"))?;
    if !waiter.is_none() {
        reader.setattr(intern!(py, "_waiter"), py.None())?;
        if crate::futures::is_exact_c_future(&waiter) {
            // `if not waiter.cancelled(): waiter.set_result(None)` with one
            // call in the common case: a C Future's set_result() fails, with
            // no effect, on any future that is not pending; only then is
            // cancelled() asked, and a cancelled waiter is left alone as there.
            if let Err(e) = waiter.call_method1(intern!(py, "set_result"), (py.None(),)) {
                if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
                    return Err(e);
                }
            }
        } else if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
    }
    // Pause the transport past twice the limit.
    let transport = reader.getattr(intern!(py, "_transport"))?;
    if transport.is_none() || reader.getattr(intern!(py, "_paused"))?.is_truthy()? {
        return Ok(());
    }
    let size = buffer.len()?;
    let limit = reader.getattr(intern!(py, "_limit"))?;
    // SAFETY: type check only.
    let exact_int = unsafe { ffi::PyLong_CheckExact(limit.as_ptr()) } != 0;
    let over = match limit.extract::<i64>() {
        Ok(l) if exact_int => (size as i128) > 2 * (l as i128),
        _ => size
            .into_pyobject(py)?
            .gt(2i64.into_pyobject(py)?.mul(&limit)?)?,
    };
    if !over {
        return Ok(());
    }
    match transport.call_method0(intern!(py, "pause_reading")) {
        Ok(_) => reader.setattr(intern!(py, "_paused"), true),
        Err(e) if e.is_instance_of::<PyNotImplementedError>(py) => {
            reader.setattr(intern!(py, "_transport"), py.None())
        }
        Err(e) => Err(e),
    }
}
