//! Socket addresses between C and Python, for the datagram paths.
//!
//! `to_py` builds what Python's socket module returns from `recvfrom()` for
//! AF_INET, AF_INET6 and AF_UNIX (the same objects: `(host, port)`,
//! `(host, port, flowinfo, scope_id)`, a str path or, for Linux's abstract
//! namespace, bytes). `from_py` converts only the unambiguous address forms
//! (IP literals, exact int ports, plain paths); anything else (host names
//! that need resolving, out-of-range values, odd types) returns None and the
//! caller hands the address to the socket module, whose messages and name
//! resolution then apply unchanged.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

extern "C" {
    // POSIX (libc's crate does not declare them); glibc's are what Python's
    // socket module uses, so the text matches exactly.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
    fn inet_pton(af: libc::c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> libc::c_int;
}

/// A C socket address and its length.
#[derive(Clone, Copy)]
pub struct SockAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl SockAddr {
    pub fn empty() -> Self {
        SockAddr {
            // SAFETY: sockaddr_storage is plain data; all-zero is valid.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut self.storage as *mut libc::sockaddr_storage).cast()
    }

    /// The meaningful bytes (for comparing two addresses).
    pub fn bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `len` bytes of the storage, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<u8>(), len) }
    }
}

/// Families whose addresses `to_py`/`from_py` handle.
pub fn supported(family: i32) -> bool {
    family == libc::AF_INET || family == libc::AF_INET6 || family == libc::AF_UNIX
}

fn ntop(py: Python<'_>, af: i32, src: *const libc::c_void) -> PyResult<Bound<'_, PyString>> {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `src` points to an in_addr/in6_addr of family `af`; `buf` is
    // larger than INET6_ADDRSTRLEN.
    let p = unsafe { inet_ntop(af, src, buf.as_mut_ptr(), buf.len() as libc::socklen_t) };
    if p.is_null() {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: inet_ntop wrote a NUL-terminated string into `buf`.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(PyString::new(py, &s.to_string_lossy()))
}

/// The Python object for `addr` of `family`, as socket.recvfrom() gives it;
/// None: a family this module does not handle.
pub fn to_py<'py>(py: Python<'py>, addr: &SockAddr) -> Option<PyResult<Bound<'py, PyAny>>> {
    if addr.len == 0 {
        // No address (e.g. recvfrom() on a connected socket): Python says None.
        return Some(Ok(py.None().into_bound(py)));
    }
    let family = i32::from(addr.storage.ss_family);
    Some(match family {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in for this family.
            let sin = unsafe { &*(addr.as_ptr() as *const libc::sockaddr_in) };
            ntop(
                py,
                libc::AF_INET,
                (&sin.sin_addr as *const libc::in_addr).cast(),
            )
            .and_then(|host| {
                let port = u16::from_be(sin.sin_port);
                PyTuple::new(py, [host.into_any(), port.into_pyobject(py)?.into_any()])
                    .map(|t| t.into_any())
            })
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6 for this family.
            let sin6 = unsafe { &*(addr.as_ptr() as *const libc::sockaddr_in6) };
            ntop(
                py,
                libc::AF_INET6,
                (&sin6.sin6_addr as *const libc::in6_addr).cast(),
            )
            .and_then(|host| {
                let port = u16::from_be(sin6.sin6_port).into_pyobject(py)?;
                let flow = u32::from_be(sin6.sin6_flowinfo).into_pyobject(py)?;
                let scope = sin6.sin6_scope_id.into_pyobject(py)?;
                PyTuple::new(
                    py,
                    [
                        host.into_any(),
                        port.into_any(),
                        flow.into_any(),
                        scope.into_any(),
                    ],
                )
                .map(|t| t.into_any())
            })
        }
        libc::AF_UNIX => {
            // SAFETY: the kernel filled a sockaddr_un for this family.
            let sun = unsafe { &*(addr.as_ptr() as *const libc::sockaddr_un) };
            let off = std::mem::size_of::<libc::sa_family_t>();
            let n = (addr.len as usize)
                .saturating_sub(off)
                .min(sun.sun_path.len());
            // SAFETY: sun_path holds at least `n` bytes.
            let path = unsafe { std::slice::from_raw_parts(sun.sun_path.as_ptr().cast::<u8>(), n) };
            if n > 0 && path[0] == 0 {
                // Linux's abstract namespace: the raw bytes.
                Ok(PyBytes::new(py, path).into_any())
            } else {
                let end = path.iter().position(|b| *b == 0).unwrap_or(n);
                // SAFETY: `end` bytes of `path`; decoding failure sets an error.
                unsafe {
                    let o = ffi::PyUnicode_DecodeFSDefaultAndSize(
                        path.as_ptr().cast(),
                        end as ffi::Py_ssize_t,
                    );
                    Bound::from_owned_ptr_or_err(py, o)
                }
            }
        }
        _ => return None,
    })
}

fn exact_port(obj: &Bound<'_, PyAny>) -> Option<u16> {
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<u16>().ok()
}

fn pton(af: i32, host: &Bound<'_, PyAny>, dst: *mut libc::c_void) -> Option<()> {
    let s = host.cast::<PyString>().ok()?;
    if !host.is_exact_instance_of::<PyString>() {
        return None;
    }
    let s = s.to_str().ok()?;
    if s.is_empty() || s.len() > 63 || s.contains('\0') {
        return None;
    }
    let c = std::ffi::CString::new(s).ok()?;
    // SAFETY: `dst` points to an in_addr/in6_addr for `af`; `c` is NUL-terminated.
    (unsafe { inet_pton(af, c.as_ptr(), dst) } == 1).then_some(())
}

/// The C address for `obj` on a socket of `family`, when it is a form this
/// module converts exactly as the socket module would; None otherwise.
pub fn from_py(family: i32, obj: &Bound<'_, PyAny>) -> Option<SockAddr> {
    let mut out = SockAddr::empty();
    match family {
        libc::AF_INET => {
            let t = obj.cast::<PyTuple>().ok()?;
            if !obj.is_exact_instance_of::<PyTuple>() || t.len() != 2 {
                return None;
            }
            let port = exact_port(&t.get_item(1).ok()?)?;
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(out.as_mut_ptr() as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            pton(
                libc::AF_INET,
                &t.get_item(0).ok()?,
                (&mut sin.sin_addr as *mut libc::in_addr).cast(),
            )?;
            out.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        libc::AF_INET6 => {
            let t = obj.cast::<PyTuple>().ok()?;
            if !obj.is_exact_instance_of::<PyTuple>() || !(2..=4).contains(&t.len()) {
                return None;
            }
            let port = exact_port(&t.get_item(1).ok()?)?;
            let flow = match t.get_item(2) {
                Ok(f) if f.is_exact_instance_of::<PyInt>() => f.extract::<u32>().ok()?,
                Ok(_) => return None,
                Err(_) => 0,
            };
            if flow > 0xfffff {
                return None;
            }
            let scope = match t.get_item(3) {
                Ok(s) if s.is_exact_instance_of::<PyInt>() => s.extract::<u32>().ok()?,
                Ok(_) => return None,
                Err(_) => 0,
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(out.as_mut_ptr() as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = port.to_be();
            sin6.sin6_flowinfo = flow.to_be();
            sin6.sin6_scope_id = scope;
            pton(
                libc::AF_INET6,
                &t.get_item(0).ok()?,
                (&mut sin6.sin6_addr as *mut libc::in6_addr).cast(),
            )?;
            out.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        }
        libc::AF_UNIX => {
            let encoded;
            let path: &[u8] = if obj.is_exact_instance_of::<PyString>() {
                let s = obj.cast::<PyString>().ok()?.to_str().ok()?;
                if s.contains('\0') {
                    return None;
                }
                // Non-ASCII paths go through the socket module (FS encoding).
                if !s.is_ascii() {
                    return None;
                }
                encoded = s.as_bytes().to_vec();
                &encoded
            } else if obj.is_exact_instance_of::<PyBytes>() {
                obj.cast::<PyBytes>().ok()?.as_bytes()
            } else {
                return None;
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_un.
            let sun = unsafe { &mut *(out.as_mut_ptr() as *mut libc::sockaddr_un) };
            let abstract_ns = path.first() == Some(&0);
            // A file path needs room for its terminating NUL.
            if path.is_empty()
                || path.len() > sun.sun_path.len()
                || (!abstract_ns && path.len() >= sun.sun_path.len())
            {
                return None;
            }
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in sun.sun_path.iter_mut().zip(path) {
                *d = *s as libc::c_char;
            }
            out.len = (std::mem::size_of::<libc::sa_family_t>() + path.len()) as libc::socklen_t;
        }
        _ => return None,
    }
    Some(out)
}
