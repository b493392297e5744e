//! Native `sock_recv`, `sock_recv_into`, `sock_sendall`, `sock_recvfrom`,
//! `sock_recvfrom_into`, `sock_sendto`, `sock_accept` and `sock_connect`.
//!
//! The Python coroutines in `_loop.py` call these functions, which try the
//! syscall at once and, if it would block, return a future completed from
//! `CoreLoop::run_once` (poller `Ready::Native`) when the fd is ready: the
//! syscall runs there, in Rust, and its result or `OSError` settles the
//! future. No Handle, no Python callback, no epoll_ctl per wait: an fd that
//! only native waiters use is registered once, edge-triggered (as tokio
//! does), and stays registered between waits; readiness is tracked per fd so
//! a call that knows the socket is drained waits without a failing syscall.
//!
//! Semantics follow asyncio's selector loop: the same checks and errors (an
//! OSError subclass from errno), a waiter is skipped without touching the
//! socket once its future is done (cancelled), a user `add_reader` replaces a
//! pending `sock_recv` (its future stays pending, as in the stdlib) and
//! `remove_reader` drops it. Anything that is not a plain `socket.socket`
//! (subclasses such as `ssl.SSLSocket`, duck-typed objects) or arguments of
//! unusual types return `NotImplemented`, and the caller takes the
//! pure-Python path, so the stdlib's exact messages stay.

use crate::event_loop::CoreLoop;
use crate::handles::Handle;
use crate::poller::NativeReady;
use crate::sockaddr::{self, SockAddr};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyInt, PyType};
use pyo3::PyTraverseError;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

/// Reads whose result is at most this long are copied out of a per-thread
/// scratch `bytes` into an exact-size one; longer results are the scratch
/// object itself, resized. `sock_recv(sock, 262144)` (asyncio's read size)
/// would otherwise allocate and shrink 256 KiB per call: above glibc's mmap
/// threshold (128 KiB until a large block is freed) that is an mmap, page
/// faults and an munmap per read. The copy of up to 128 KiB is cheaper.
const COPY_MAX: usize = 128 * 1024;
/// A read longer than this makes the next one ask the kernel how much is
/// queued (FIONREAD) and receive straight into a bytes object of that size,
/// instead of copying out of the scratch (a 100 KiB memcpy costs more than
/// the ioctl). Small-message workloads never pay the ioctl.
const BIG_READ: usize = 32 * 1024;

thread_local! {
    static LAST_BIG: Cell<bool> = const { Cell::new(false) };
}

/// The bytes read and their length, or errno (Ok) / a Python error (Err).
type RecvResult<'py> = Result<(Bound<'py, PyBytes>, usize), Result<i32, PyErr>>;

/// The large-read path (see BIG_READ); None: not applicable, use the scratch.
fn recv_big(py: Python<'_>, fd: RawFd, n: usize) -> Option<RecvResult<'_>> {
    let mut avail: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail as *mut libc::c_int) };
    if rc != 0 || avail < 0 || (avail as usize) <= BIG_READ {
        return None;
    }
    let size = (avail as usize).min(n);
    // SAFETY: a fresh refcount-1 bytes object of `size` bytes, filled by
    // recv, shrunk if the kernel gave less, handed out or dropped.
    unsafe {
        let mut obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size as ffi::Py_ssize_t);
        if obj.is_null() {
            return Some(Err(Err(PyErr::fetch(py))));
        }
        let ptr = ffi::PyBytes_AsString(obj).cast::<u8>();
        let k = loop {
            let r = libc::recv(fd, ptr.cast(), size, libc::MSG_DONTWAIT);
            if r >= 0 {
                break r as usize;
            }
            let e = errno();
            if e != libc::EINTR {
                ffi::Py_DECREF(obj);
                return Some(Err(Ok(e)));
            }
            if let Err(err) = py.check_signals() {
                ffi::Py_DECREF(obj);
                return Some(Err(Err(err)));
            }
        };
        LAST_BIG.with(|c| c.set(k > BIG_READ));
        if k != size && _PyBytes_Resize(&mut obj, k as ffi::Py_ssize_t) != 0 {
            return Some(Err(Err(PyErr::fetch(py))));
        }
        Some(Ok((
            Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>(),
            k,
        )))
    }
}

/// Largest scratch kept between calls (asyncio's own read size).
const SCRATCH_MAX: usize = 256 * 1024;

thread_local! {
    // A bytes object of refcount 1 owned by this thread, never exposed to
    // Python code while it is here. Deliberately no destructor: a thread's
    // scratch (at most SCRATCH_MAX) is leaked when the thread exits, since
    // the interpreter may be gone by then.
    static SCRATCH: Cell<*mut ffi::PyObject> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" {
    // Exported by every CPython we support (3.11+), not declared by pyo3-ffi.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> libc::c_int;
}

/// A buffer export (PyObject_GetBuffer) held while a sock_sendall waits, as
/// the stdlib holds a memoryview of the data.
struct PyBuf(Box<ffi::Py_buffer>);

// SAFETY: the view is only used and released with the GIL held (see Drop).
unsafe impl Send for PyBuf {}

impl PyBuf {
    fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<PyBuf> {
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        // SAFETY: a zeroed Py_buffer is a valid out-parameter; on success it
        // holds an export that Drop releases exactly once.
        unsafe {
            let mut view: Box<ffi::Py_buffer> = Box::new(std::mem::zeroed());
            if ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) != 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            Ok(PyBuf(view))
        }
    }

    fn ptr(&self) -> *mut u8 {
        self.0.buf.cast()
    }

    fn len(&self) -> usize {
        self.0.len.max(0) as usize
    }
}

impl Drop for PyBuf {
    fn drop(&mut self) {
        // SAFETY: the view holds a live export; releasing needs the GIL.
        Python::attach(|_| unsafe { ffi::PyBuffer_Release(&mut *self.0) });
    }
}

enum Op {
    Recv {
        n: usize,
    },
    RecvInto {
        buf: Py<PyAny>,
    },
    SendAll {
        data: PyBuf,
        pos: usize,
    },
    RecvFrom {
        n: usize,
    },
    RecvFromInto {
        buf: Py<PyAny>,
        n: usize,
    },
    // Boxed: a sockaddr_storage would make every waiter 128 bytes bigger.
    SendTo {
        data: PyBuf,
        addr: Box<SockAddr>,
    },
    /// accept(2); the listening socket's family, type and proto, which the
    /// accepted socket object gets (as socket.accept() gives it).
    Accept {
        family: i32,
        kind: i32,
        proto: i32,
    },
    /// The wait of a non-blocking connect(2) to `address` (kept for the
    /// error message; `v6`: an AF_INET6 address): SO_ERROR says how it ended.
    Connect {
        address: Py<PyAny>,
        v6: bool,
    },
}

/// A pending native operation: the future to settle and what to do when the
/// fd is ready. Lives in the poller (src/poller.rs) until then.
pub struct Waiter {
    pub fut: Py<PyAny>,
    op: Op,
}

impl Waiter {
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.fut)?;
        match &self.op {
            Op::RecvInto { buf } | Op::RecvFromInto { buf, .. } => visit.call(buf)?,
            Op::Connect { address, .. } => visit.call(address)?,
            _ => {}
        }
        Ok(())
    }
}

/// The OSError (subclass) Python's socket module raises for `errno`.
pub(crate) fn os_error(errno: i32) -> PyErr {
    let msg = std::io::Error::from_raw_os_error(errno).to_string();
    let msg = match msg.rfind(" (os error ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    PyOSError::new_err((errno, msg))
}

/// An int socket option of `fd` (getsockopt(2)), or the errno of the failure.
pub(crate) fn sockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Result<libc::c_int, i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(errno())
    }
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn would_block(e: i32) -> bool {
    e == libc::EAGAIN || e == libc::EWOULDBLOCK
}

/// Outcome of one non-blocking attempt.
enum Attempt {
    Done(Py<PyAny>),
    /// Would block; `short`: a stream transfer came back short (the kernel
    /// buffer is drained/full now) rather than with EAGAIN.
    Again,
    Failed(PyErr),
}

impl Attempt {
    /// A failed syscall as `retry_eintr` reports it: errno (Ok), EAGAIN
    /// meaning "not ready", or a signal handler's exception (Err).
    #[inline]
    fn from_error(err: Result<i32, PyErr>) -> Self {
        match err {
            Ok(e) if would_block(e) => Attempt::Again,
            Ok(e) => Attempt::Failed(os_error(e)),
            Err(err) => Attempt::Failed(err),
        }
    }
}

/// recv(2) into a fresh bytes object of the exact size (see COPY_MAX).
fn recv_bytes(py: Python<'_>, fd: RawFd, n: usize) -> RecvResult<'_> {
    if n == 0 {
        // As the socket module: no syscall at all.
        return Ok((PyBytes::new(py, b""), 0));
    }
    if LAST_BIG.with(|c| c.get()) {
        if let Some(r) = recv_big(py, fd, n) {
            return r;
        }
    }
    let scratch = n <= SCRATCH_MAX;
    let mut obj = if scratch {
        SCRATCH.with(|c| c.replace(std::ptr::null_mut()))
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: `obj` is null or our refcount-1 bytes object; every path below
    // either stores it back, hands it out as an owned reference, or drops it.
    unsafe {
        if !obj.is_null() && (ffi::PyBytes_Size(obj) as usize) < n {
            ffi::Py_DECREF(obj);
            obj = std::ptr::null_mut();
        }
        if obj.is_null() {
            obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as ffi::Py_ssize_t);
            if obj.is_null() {
                return Err(Err(PyErr::fetch(py)));
            }
        }
        let ptr = ffi::PyBytes_AsString(obj).cast::<u8>();
        let put_back = |obj: *mut ffi::PyObject| {
            if scratch {
                SCRATCH.with(|c| c.set(obj));
            } else {
                ffi::Py_DECREF(obj);
            }
        };
        let k = loop {
            let r = libc::recv(fd, ptr.cast(), n, libc::MSG_DONTWAIT);
            if r >= 0 {
                break r as usize;
            }
            let e = errno();
            if e != libc::EINTR {
                put_back(obj);
                return Err(Ok(e));
            }
            if let Err(err) = py.check_signals() {
                put_back(obj);
                return Err(Err(err));
            }
        };
        LAST_BIG.with(|c| c.set(k > BIG_READ));
        if scratch && k <= COPY_MAX {
            let out = PyBytes::new(py, std::slice::from_raw_parts(ptr, k));
            put_back(obj);
            return Ok((out, k));
        }
        if k != n && _PyBytes_Resize(&mut obj, k as ffi::Py_ssize_t) != 0 {
            return Err(Err(PyErr::fetch(py)));
        }
        Ok((
            Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>(),
            k,
        ))
    }
}

/// Runs a syscall returning a byte count until it is not interrupted by a
/// signal (running Python's signal handlers in between, as the socket module
/// does): the count, errno (Ok) or a handler's exception (Err).
fn retry_eintr(py: Python<'_>, mut f: impl FnMut() -> isize) -> Result<usize, Result<i32, PyErr>> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(Ok(e));
        }
        py.check_signals().map_err(Err)?;
    }
}

/// `(value, address)` as socket.recvfrom() returns it.
fn address_pair<'py>(
    py: Python<'py>,
    value: Bound<'py, PyAny>,
    from: &SockAddr,
) -> PyResult<Bound<'py, PyAny>> {
    let addr = match sockaddr::to_py(py, from) {
        Some(a) => a?,
        None => py.None().into_bound(py),
    };
    Ok(pyo3::types::PyTuple::new(py, [value, addr])?.into_any())
}

/// recvfrom(2) of up to `n` bytes: `(bytes, address)`. Small datagrams go
/// through the shared read buffer and are copied out at their size.
fn recvfrom_bytes(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
) -> Result<Bound<'_, PyAny>, Result<i32, PyErr>> {
    let mut from = SockAddr::empty();
    let call = |ptr: *mut u8, len: usize, from: &mut SockAddr| {
        retry_eintr(py, || {
            from.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: `ptr` has `len` writable bytes; `from` is a
            // sockaddr_storage with its size in `len`.
            unsafe {
                libc::recvfrom(
                    fd,
                    ptr.cast(),
                    len,
                    libc::MSG_DONTWAIT,
                    from.as_mut_ptr(),
                    &mut from.len,
                )
            }
        })
    };
    let data = if n <= crate::stream::MAX_READ {
        let got = crate::stream::READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let k = call(buf.as_mut_ptr(), n.min(buf.len()), &mut from)?;
            Ok(PyBytes::new(py, &buf[..k]))
        });
        got?
    } else {
        // SAFETY: a fresh refcount-1 bytes object of `n` bytes, filled by
        // recvfrom, shrunk to what came, handed out or dropped.
        unsafe {
            let mut obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as ffi::Py_ssize_t);
            if obj.is_null() {
                return Err(Err(PyErr::fetch(py)));
            }
            let ptr = ffi::PyBytes_AsString(obj).cast::<u8>();
            let k = match call(ptr, n, &mut from) {
                Ok(k) => k,
                Err(e) => {
                    ffi::Py_DECREF(obj);
                    return Err(e);
                }
            };
            if k != n && _PyBytes_Resize(&mut obj, k as ffi::Py_ssize_t) != 0 {
                return Err(Err(PyErr::fetch(py)));
            }
            Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>()
        }
    };
    address_pair(py, data.into_any(), &from).map_err(Err)
}

/// One attempt of `op` on `fd`; `stream`: a short transfer means "not ready".
fn attempt(py: Python<'_>, fd: RawFd, op: &mut Op, stream: bool) -> Attempt {
    match op {
        Op::Recv { n } => match recv_bytes(py, fd, *n) {
            Ok((b, k)) => {
                let _ = (stream, k);
                Attempt::Done(b.into_any().unbind())
            }
            Err(err) => Attempt::from_error(err),
        },
        Op::RecvInto { buf } => {
            let view = match PyBuf::get(buf.bind(py), true) {
                Ok(v) => v,
                Err(e) => return Attempt::Failed(e),
            };
            // SAFETY: the export keeps `len` writable bytes at `ptr` alive.
            let r = retry_eintr(py, || unsafe {
                libc::recv(fd, view.ptr().cast(), view.len(), libc::MSG_DONTWAIT)
            });
            match r {
                Ok(k) => Attempt::Done(PyInt::new(py, k).into_any().unbind()),
                Err(err) => Attempt::from_error(err),
            }
        }
        Op::RecvFrom { n } => match recvfrom_bytes(py, fd, *n) {
            Ok(r) => Attempt::Done(r.unbind()),
            Err(err) => Attempt::from_error(err),
        },
        Op::RecvFromInto { buf, n } => {
            let view = match PyBuf::get(buf.bind(py), true) {
                Ok(v) => v,
                Err(e) => return Attempt::Failed(e),
            };
            let len = (*n).min(view.len());
            let mut from = SockAddr::empty();
            let r = retry_eintr(py, || {
                from.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                // SAFETY: the export keeps `len` writable bytes at `ptr` alive;
                // `from` is a sockaddr_storage with its size in `len`.
                unsafe {
                    libc::recvfrom(
                        fd,
                        view.ptr().cast(),
                        len,
                        libc::MSG_DONTWAIT,
                        from.as_mut_ptr(),
                        &mut from.len,
                    )
                }
            });
            drop(view);
            match r {
                Ok(k) => match address_pair(py, PyInt::new(py, k).into_any(), &from) {
                    Ok(t) => Attempt::Done(t.unbind()),
                    Err(e) => Attempt::Failed(e),
                },
                Err(err) => Attempt::from_error(err),
            }
        }
        Op::SendTo { data, addr } => {
            let r = retry_eintr(py, || {
                // SAFETY: the export keeps `len` readable bytes at `ptr`
                // alive; `addr` is a valid address of `addr.len` bytes.
                unsafe {
                    libc::sendto(
                        fd,
                        data.ptr().cast(),
                        data.len(),
                        libc::MSG_DONTWAIT,
                        addr.as_ptr(),
                        addr.len,
                    )
                }
            });
            match r {
                Ok(k) => Attempt::Done(PyInt::new(py, k).into_any().unbind()),
                Err(err) => Attempt::from_error(err),
            }
        }
        Op::Accept {
            family,
            kind,
            proto,
        } => accept_one(py, fd, *family, *kind, *proto),
        Op::Connect { address, v6 } => connect_result(py, fd, address.bind(py), *v6),
        Op::SendAll { data, pos } => loop {
            let len = data.len();
            if *pos >= len {
                return Attempt::Done(py.None());
            }
            let rest = len - *pos;
            // SAFETY: `*pos < len`: inside the export.
            let from = unsafe { data.ptr().add(*pos) };
            // SAFETY: the export keeps `len` readable bytes at `ptr` alive.
            let r = retry_eintr(py, || unsafe {
                libc::send(fd, from.cast(), rest, libc::MSG_DONTWAIT)
            });
            match r {
                Ok(k) => {
                    *pos += k;
                    if *pos < len && stream {
                        // The send buffer is full: an edge comes when it drains.
                        return Attempt::Again;
                    }
                }
                Err(err) => return Attempt::from_error(err),
            }
        },
    }
}

/// One accept(2) on the listening `fd`: `(socket.socket, address)` as
/// asyncio's sock_accept returns it (non-inheritable, non-blocking).
fn accept_one(py: Python<'_>, fd: RawFd, family: i32, kind: i32, proto: i32) -> Attempt {
    let mut from = SockAddr::empty();
    // SOCK_CLOEXEC as the socket module does (PEP 446: not inheritable).
    let r = retry_eintr(py, || {
        from.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `from` is a sockaddr_storage with its size in `len`.
        unsafe { libc::accept4(fd, from.as_mut_ptr(), &mut from.len, libc::SOCK_CLOEXEC) as isize }
    });
    let conn_fd = match r {
        Ok(c) => c as RawFd,
        Err(err) => return Attempt::from_error(err),
    };
    let made = (|| -> PyResult<Py<PyAny>> {
        let ty = socket_type(py)?;
        let conn = match ty.call1((family, kind, proto, conn_fd)) {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: the fd is ours until a socket object owns it.
                unsafe { libc::close(conn_fd) };
                return Err(e);
            }
        };
        // From here on the object owns (and closes) the fd.
        conn.call_method1(intern!(py, "setblocking"), (false,))?;
        let addr = match sockaddr::to_py(py, &from) {
            Some(a) => a?,
            None => py.None().into_bound(py),
        };
        Ok(pyo3::types::PyTuple::new(py, [conn, addr])?
            .into_any()
            .unbind())
    })();
    match made {
        Ok(t) => Attempt::Done(t),
        Err(e) => Attempt::Failed(e),
    }
}

/// How the non-blocking connect on `fd` ended (asyncio reads SO_ERROR once
/// the socket is writable): None, or OSError(err, "Connect call failed ...").
fn connect_result(py: Python<'_>, fd: RawFd, address: &Bound<'_, PyAny>, v6: bool) -> Attempt {
    let err = match sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
        Ok(v) => v,
        Err(e) => return Attempt::Failed(os_error(e)),
    };
    if err == 0 {
        return Attempt::Done(py.None());
    }
    match resolved_form(py, address, v6).and_then(|a| a.str()) {
        // OSError(errno, msg) gives the subclass, e.g. ConnectionRefusedError.
        Ok(a) => Attempt::Failed(PyOSError::new_err((
            err,
            format!("Connect call failed {a}"),
        ))),
        Err(e) => Attempt::Failed(e),
    }
}

/// The address as asyncio's resolution step hands it on: an IPv6 literal
/// gets its flowinfo and scope id (0 when not given); anything else as is.
fn resolved_form<'py>(
    py: Python<'py>,
    address: &Bound<'py, PyAny>,
    v6: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let Ok(t) = address.cast::<pyo3::types::PyTuple>() else {
        return Ok(address.clone());
    };
    if !v6 || t.len() >= 4 {
        return Ok(address.clone());
    }
    let mut items: Vec<Bound<'py, PyAny>> = t.iter().collect();
    while items.len() < 4 {
        items.push(0i32.into_pyobject(py)?.into_any());
    }
    Ok(pyo3::types::PyTuple::new(py, items)?.into_any())
}

static SOCKET_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn socket_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = SOCKET_TYPE.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        Ok(py
            .import("socket")?
            .getattr("socket")?
            .cast_into::<PyType>()?
            .unbind())
    })?;
    Ok(ty.bind(py))
}

/// The fd of a plain `socket.socket`, after the stdlib's checks; None: take
/// the Python path (anything else, e.g. ssl.SSLSocket or a duck-typed object).
fn plain_socket_fd(lp: &Bound<'_, CoreLoop>, sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = lp.py();
    if !is_plain_socket(sock)? {
        return Ok(None);
    }
    if lp.get().debug_now(py) && sock.call_method0(intern!(py, "gettimeout"))?.ne(0)? {
        return Err(PyValueError::new_err("the socket must be non-blocking"));
    }
    Ok(socket_fd(sock)?.and_then(|fd| RawFd::try_from(fd).ok()))
}

/// The fd and address family of a plain `socket.socket` whose addresses this
/// module converts (`plain_socket_fd`, then `addr_family`); None: take the
/// Python path.
#[inline]
fn plain_socket_family(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
) -> PyResult<Option<(RawFd, i32)>> {
    let Some(fd) = plain_socket_fd(lp, sock)? else {
        return Ok(None);
    };
    Ok(addr_family(sock, fd).map(|family| (fd, family)))
}

/// A size argument that is exactly an int in usize range; None: let the
/// Python implementation take it (and raise the socket module's error).
#[inline]
fn exact_usize(n: &Bound<'_, PyAny>) -> Option<usize> {
    if !n.is_exact_instance_of::<PyInt>() {
        return None;
    }
    n.extract::<usize>().ok()
}

/// Whether `sock` is exactly `socket.socket` (not a subclass that may
/// override its methods).
fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(sock.get_type().is(socket_type(sock.py())?))
}

/// `obj.fileno()`, read straight from the object when it is a plain
/// socket.socket (see `socket_fd`). None when fileno() does not give an int.
pub fn fileno_of(obj: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    if is_plain_socket(obj)? {
        return socket_fd(obj);
    }
    Ok(obj
        .call_method0(intern!(obj.py(), "fileno"))?
        .extract::<i64>()
        .ok())
}

/// Whether `fileno()` of `obj` can be read with `raw_socket_fd` from now on:
/// a plain socket.socket, whose layout was checked against fileno() (on this
/// object, or on an earlier one). The stream transports ask once, then read
/// the fd before every syscall without a method call.
pub fn has_raw_fd(obj: &Bound<'_, PyAny>) -> bool {
    if !matches!(is_plain_socket(obj), Ok(true)) {
        return false;
    }
    if FD_LAYOUT.load(Ordering::Relaxed) == 0 {
        // Checks the layout (on an open socket) and records the answer.
        let _ = socket_fd(obj);
    }
    FD_LAYOUT.load(Ordering::Relaxed) == 1
}

/// `fileno()` of an object for which `has_raw_fd` said yes (-1 once closed,
/// as fileno() says).
///
/// # Safety
/// `obj` must be such an object, alive, and the GIL held.
pub unsafe fn raw_socket_fd(obj: *mut ffi::PyObject) -> libc::c_int {
    obj.cast::<u8>()
        .add(std::mem::size_of::<ffi::PyObject>())
        .cast::<libc::c_int>()
        .read_unaligned()
}

/// 0: not checked yet, 1: `sock_fd` read from the object matches fileno(),
/// 2: it did not (never seen; fileno() is used then).
static FD_LAYOUT: AtomicU8 = AtomicU8::new(0);

/// `sock.fileno()` of a plain socket.socket. CPython's socket object starts
/// with `PyObject_HEAD; SOCKET_T sock_fd;` (Modules/socketmodule.h, unchanged
/// for decades); the first open socket seen checks that against fileno(),
/// and the method call is skipped from then on.
fn socket_fd(sock: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    let py = sock.py();
    // SAFETY: `sock` is exactly socket.socket (checked by the caller), whose
    // instances are larger than this header (checked via tp_basicsize).
    let raw = || -> Option<i64> {
        let ty = sock.get_type();
        let size = unsafe { (*ty.as_type_ptr()).tp_basicsize } as usize;
        if size < std::mem::size_of::<ffi::PyObject>() + std::mem::size_of::<libc::c_int>() {
            return None;
        }
        let p = unsafe { raw_socket_fd(sock.as_ptr()) };
        Some(p as i64)
    };
    match FD_LAYOUT.load(Ordering::Relaxed) {
        1 => {
            if let Some(fd) = raw() {
                return Ok(Some(fd));
            }
        }
        2 => {}
        _ => {
            let f = sock
                .call_method0(intern!(py, "fileno"))?
                .extract::<i64>()
                .ok();
            if let Some(f) = f.filter(|f| *f >= 0) {
                let ok = raw() == Some(f);
                FD_LAYOUT.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            }
            return Ok(f);
        }
    }
    Ok(sock
        .call_method0(intern!(py, "fileno"))?
        .extract::<i64>()
        .ok())
}

static NATIVE_CREATE_FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `lp.create_future()`; when the loop's class keeps tokioloop's own
/// create_future, without the method call.
fn create_future<'py>(lp: &Bound<'py, CoreLoop>) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let native = NATIVE_CREATE_FUTURE.get_or_try_init(py, || -> PyResult<_> {
        use pyo3::PyTypeInfo;
        Ok(CoreLoop::type_object(py).getattr("create_future")?.unbind())
    })?;
    let method = lp.get_type().getattr(intern!(py, "create_future"))?;
    if method.is(native.bind(py)) {
        return crate::futures::create_future(lp);
    }
    lp.call_method0(intern!(py, "create_future"))
}

/// (readiness known for `fd` registered for `sock`, is it a stream socket).
fn known_state(
    lp: &Bound<'_, CoreLoop>,
    fd: RawFd,
    sock: &Bound<'_, PyAny>,
    write: bool,
) -> (bool, bool) {
    let py = lp.py();
    lp.get()
        .with_poller(py, |p| {
            let ready = p
                .native_state(py, fd, sock)
                .map(|s| if write { s.wr_ready } else { s.rd_ready })
                .unwrap_or(true);
            (ready, p.is_stream(fd))
        })
        .unwrap_or((true, false))
}

fn note_not_ready(lp: &Bound<'_, CoreLoop>, fd: RawFd, write: bool) {
    let _ = lp
        .get()
        .with_poller(lp.py(), |p| p.note_not_ready(fd, write));
}

/// Creates the future and parks `op` in the poller until `fd` is ready.
fn wait(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    op: Op,
    write: bool,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let this = lp.get();
    this.ensure_fd_no_transport(py, fd)?;
    let fut = create_future(lp)?.unbind();
    let waiter = Waiter {
        fut: fut.clone_ref(py),
        op,
    };
    let displaced =
        this.with_poller(py, |p| p.install_native(py, fd, waiter, write, Some(sock)))?;
    match displaced {
        Ok(d) => {
            drop(d.waiter);
            if let Some(h) = d.handle {
                Handle::cancel_py(h.bind(py))?;
            }
            Ok(fut)
        }
        Err((e, w)) => {
            drop(w);
            Err(os_error(e.raw_os_error().unwrap_or(libc::EIO)))
        }
    }
}

fn not_implemented(py: Python<'_>) -> Py<PyAny> {
    py.NotImplemented()
}

/// `sock.recv(n)` now (bytes), or a future of it; NotImplemented: use the
/// Python implementation.
#[pyfunction]
pub fn _sock_recv(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    n: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let Some(n) = exact_usize(n) else {
        return Ok(not_implemented(py));
    };
    let Some(fd) = plain_socket_fd(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    if n == 0 {
        return Ok(PyBytes::new(py, b"").into_any().unbind());
    }
    let (ready, stream) = known_state(lp, fd, sock, false);
    if ready {
        match recv_bytes(py, fd, n) {
            Ok((b, k)) => {
                if stream && k > 0 && k < n {
                    note_not_ready(lp, fd, false);
                }
                return Ok(b.into_any().unbind());
            }
            Err(Ok(e)) if would_block(e) => note_not_ready(lp, fd, false),
            Err(Ok(e)) => return Err(os_error(e)),
            Err(Err(err)) => return Err(err),
        }
    }
    wait(lp, sock, fd, Op::Recv { n }, false)
}

/// `sock.recv_into(buf)` now (int), or a future of it; NotImplemented: use
/// the Python implementation.
#[pyfunction]
pub fn _sock_recv_into(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    buf: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let Some(fd) = plain_socket_fd(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    // A buffer the socket module would refuse: its own error message, please.
    if PyBuf::get(buf, true).is_err() {
        return Ok(not_implemented(py));
    }
    let op = Op::RecvInto {
        buf: buf.clone().unbind(),
    };
    attempt_or_wait(lp, sock, fd, op, false)
}

/// The operation now if the fd may be ready, else (or on EAGAIN) a future
/// completed by the run loop when it is.
fn attempt_or_wait(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    mut op: Op,
    write: bool,
) -> PyResult<Py<PyAny>> {
    let (ready, stream) = known_state(lp, fd, sock, write);
    if ready {
        match attempt(lp.py(), fd, &mut op, stream) {
            Attempt::Done(r) => return Ok(r),
            Attempt::Again => note_not_ready(lp, fd, write),
            Attempt::Failed(e) => return Err(e),
        }
    }
    wait(lp, sock, fd, op, write)
}

/// Sends all of `data` now (None), or returns a future of the rest being
/// sent; NotImplemented: use the Python implementation.
#[pyfunction]
pub fn _sock_sendall(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let Some(fd) = plain_socket_fd(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    let Ok(view) = PyBuf::get(data, false) else {
        return Ok(not_implemented(py));
    };
    attempt_or_wait(lp, sock, fd, Op::SendAll { data: view, pos: 0 }, true)
}

/// 0: not checked yet, 1: the int after `sock_fd` in a socket object is its
/// family (`sock_family`, Modules/socketmodule.h), 2: it did not match.
static FAMILY_LAYOUT: AtomicU8 = AtomicU8::new(0);

fn so_domain(fd: RawFd) -> Option<i32> {
    sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()
}

/// The address family of the plain socket.socket `sock` (on `fd`), if this
/// module converts its addresses. Read from the object once its layout was
/// checked against SO_DOMAIN (as `socket_fd` does for the fd): a getsockopt
/// per call was a tenth of a datagram round trip.
fn addr_family(sock: &Bound<'_, PyAny>, fd: RawFd) -> Option<i32> {
    let from_object = || -> Option<i32> {
        if FD_LAYOUT.load(Ordering::Relaxed) != 1 {
            return None;
        }
        let head = std::mem::size_of::<ffi::PyObject>() + std::mem::size_of::<libc::c_int>();
        // SAFETY: `sock` is exactly socket.socket (checked by the caller),
        // whose instances are at least tp_basicsize bytes, checked here.
        unsafe {
            let size = (*sock.get_type().as_type_ptr()).tp_basicsize as usize;
            if size < head + std::mem::size_of::<libc::c_int>() {
                return None;
            }
            Some(
                sock.as_ptr()
                    .cast::<u8>()
                    .add(head)
                    .cast::<libc::c_int>()
                    .read_unaligned(),
            )
        }
    };
    let family = match FAMILY_LAYOUT.load(Ordering::Relaxed) {
        1 => from_object().or_else(|| so_domain(fd)),
        2 => so_domain(fd),
        _ => {
            let real = so_domain(fd);
            if let (Some(r), Some(o)) = (real, from_object()) {
                FAMILY_LAYOUT.store(if r == o { 1 } else { 2 }, Ordering::Relaxed);
            }
            real
        }
    };
    family.filter(|f| sockaddr::supported(*f))
}

/// `sock.recvfrom(n)` now (a tuple), or a future of it; NotImplemented: use
/// the Python implementation.
#[pyfunction]
pub fn _sock_recvfrom(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    n: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let Some(n) = exact_usize(n) else {
        return Ok(not_implemented(py));
    };
    let Some((fd, _)) = plain_socket_family(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    attempt_or_wait(lp, sock, fd, Op::RecvFrom { n }, false)
}

/// `sock.recvfrom_into(buf, nbytes)` now (a tuple), or a future of it;
/// NotImplemented: use the Python implementation (which also raises the
/// socket module's errors for a bad `nbytes` or buffer).
#[pyfunction]
pub fn _sock_recvfrom_into(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    buf: &Bound<'_, PyAny>,
    nbytes: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let Some(nbytes) = exact_usize(nbytes) else {
        return Ok(not_implemented(py));
    };
    let Some(fd) = plain_socket_fd(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    let Ok(view) = PyBuf::get(buf, true) else {
        return Ok(not_implemented(py));
    };
    // asyncio passes len(buf) for nbytes=0; the socket module refuses more.
    let n = if nbytes == 0 {
        match buf.len() {
            Ok(n) => n,
            Err(_) => return Ok(not_implemented(py)),
        }
    } else {
        nbytes
    };
    if n > view.len() || addr_family(sock, fd).is_none() {
        return Ok(not_implemented(py));
    }
    drop(view);
    let op = Op::RecvFromInto {
        buf: buf.clone().unbind(),
        n,
    };
    attempt_or_wait(lp, sock, fd, op, false)
}

/// `sock.sendto(data, address)` now (an int), or a future of it;
/// NotImplemented: use the Python implementation (addresses that need
/// resolving, unusual types).
#[pyfunction]
pub fn _sock_sendto(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
    address: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let Some((fd, family)) = plain_socket_family(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    let Some(addr) = sockaddr::from_py(family, address) else {
        return Ok(not_implemented(py));
    };
    let Ok(view) = PyBuf::get(data, false) else {
        return Ok(not_implemented(py));
    };
    let addr = Box::new(addr);
    attempt_or_wait(lp, sock, fd, Op::SendTo { data: view, addr }, true)
}

static SOCKET_ATTRS: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

/// `(family, type, proto)` of a plain socket.socket as the C socket object
/// stores them (what socket.accept() hands to the accepted socket), read
/// through `_socket.socket`'s own descriptors: no Python-level property, no
/// enum conversion.
fn socket_triple(sock: &Bound<'_, PyAny>) -> PyResult<(i32, i32, i32)> {
    let py = sock.py();
    let descrs = SOCKET_ATTRS.get_or_try_init(py, || -> PyResult<[Py<PyAny>; 3]> {
        let base = py.import("_socket")?.getattr("socket")?;
        Ok([
            base.getattr("family")?.unbind(),
            base.getattr("type")?.unbind(),
            base.getattr("proto")?.unbind(),
        ])
    })?;
    let get = |d: &Py<PyAny>| -> PyResult<i32> {
        let d = d.bind(py);
        // SAFETY: calling the descriptor's tp_descr_get slot with a live
        // instance and its type; a new reference or NULL with an error set.
        unsafe {
            let tp = ffi::Py_TYPE(d.as_ptr());
            match (*tp).tp_descr_get {
                Some(f) => {
                    let r = f(
                        d.as_ptr(),
                        sock.as_ptr(),
                        ffi::Py_TYPE(sock.as_ptr()).cast(),
                    );
                    Bound::from_owned_ptr_or_err(py, r)?.extract::<i32>()
                }
                None => d.call_method1(intern!(py, "__get__"), (sock,))?.extract(),
            }
        }
    };
    Ok((get(&descrs[0])?, get(&descrs[1])?, get(&descrs[2])?))
}

/// `sock.accept()` with the accepted socket made non-blocking, now (a tuple)
/// or a future of it; NotImplemented: use the Python implementation.
#[pyfunction]
pub fn _sock_accept(lp: &Bound<'_, CoreLoop>, sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    // Only families whose addresses this module converts as the socket module does.
    let Some((fd, _)) = plain_socket_family(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    let (family, kind, proto) = socket_triple(sock)?;
    let op = Op::Accept {
        family,
        kind,
        proto,
    };
    attempt_or_wait(lp, sock, fd, op, false)
}

/// `sock.connect(address)`: None when connected at once, else a future
/// settled once the socket is writable (None or the OSError asyncio raises);
/// NotImplemented: use the Python implementation. Taken here: AF_UNIX paths,
/// and IP literals with an int port on stream/datagram sockets, for which
/// asyncio's resolution step (`_ipaddr_info`) calls no getaddrinfo and
/// yields the same C address; anything needing resolution goes to Python
/// (which calls this again with the resolved address).
#[pyfunction]
pub fn _sock_connect(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    address: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let Some((fd, family)) = plain_socket_family(lp, sock)? else {
        return Ok(not_implemented(py));
    };
    if family != libc::AF_UNIX {
        let (_, kind, proto) = socket_triple(sock)?;
        let literal_ok = (kind == libc::SOCK_STREAM || kind == libc::SOCK_DGRAM)
            && (proto == 0 || proto == libc::IPPROTO_TCP || proto == libc::IPPROTO_UDP);
        if !literal_ok {
            return Ok(not_implemented(py));
        }
    }
    let Some(addr) = sockaddr::from_py(family, address) else {
        return Ok(not_implemented(py));
    };
    // SAFETY: `addr` is a valid address of `addr.len` bytes.
    if unsafe { libc::connect(fd, addr.as_ptr(), addr.len) } == 0 {
        return Ok(py.None());
    }
    match errno() {
        // In progress; after EINTR it goes on in the background too (the
        // socket module raises InterruptedError once the handlers ran).
        libc::EINPROGRESS => {}
        libc::EINTR => py.check_signals()?,
        e if would_block(e) => {}
        e => return Err(os_error(e)),
    }
    // Only an edge after this point says the connect has ended.
    note_not_ready(lp, fd, true);
    let op = Op::Connect {
        address: address.clone().unbind(),
        v6: family == libc::AF_INET6,
    };
    wait(lp, sock, fd, op, true)
}

/// Drops the waiter of a cancelled native sock_* call (its future `fut`),
/// releasing what it holds (e.g. sock_sendall's buffer export) at once.
#[pyfunction]
pub fn _sock_cancel(
    lp: &Bound<'_, CoreLoop>,
    sock: &Bound<'_, PyAny>,
    fut: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = lp.py();
    let fd = sock
        .call_method0(intern!(py, "fileno"))
        .ok()
        .and_then(|f| f.extract::<i64>().ok())
        .and_then(|f| RawFd::try_from(f).ok())
        .filter(|f| *f >= 0);
    let dropped = lp.get().with_poller(py, |p| {
        let mut found = p.cancel_native(py, fd, fut);
        if found.is_empty() && fd.is_some() {
            // The socket object may now wrap another fd (detach/dup tricks).
            found = p.cancel_native(py, None, fut);
        }
        found
    });
    drop(dropped);
    Ok(())
}

/// A native waiter's fd is ready (called by the run loop with no borrow of
/// the loop state alive): do the syscall, settle the future, or wait again.
pub fn on_ready(lp: &Bound<'_, CoreLoop>, ready: NativeReady) {
    let py = lp.py();
    let this = lp.get();
    let NativeReady {
        fd,
        write,
        stream,
        mut waiter,
    } = ready;
    let done = waiter
        .fut
        .bind(py)
        .call_method0(intern!(py, "done"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(true);
    if done {
        // Cancelled meanwhile: asyncio leaves the socket untouched.
        drop(waiter);
        let _ = this.with_poller(py, |p| p.native_done(fd));
        return;
    }
    let outcome = attempt(py, fd, &mut waiter.op, stream);
    let fut = waiter.fut.clone_ref(py);
    let res = match outcome {
        Attempt::Done(value) => {
            let drained = match (&waiter.op, stream) {
                (Op::Recv { n }, true) => {
                    let k = value.bind(py).len().unwrap_or(0);
                    k > 0 && k < *n
                }
                _ => false,
            };
            drop(waiter);
            let _ = this.with_poller(py, |p| {
                if drained {
                    p.note_not_ready(fd, false);
                }
                p.native_done(fd)
            });
            fut.bind(py)
                .call_method1(intern!(py, "set_result"), (value,))
        }
        Attempt::Failed(err) => {
            drop(waiter);
            let _ = this.with_poller(py, |p| p.native_done(fd));
            fut.bind(py)
                .call_method1(intern!(py, "set_exception"), (err.into_value(py),))
        }
        Attempt::Again => {
            let installed = this.with_poller(py, |p| {
                p.note_not_ready(fd, write);
                p.install_native(py, fd, waiter, write, None)
            });
            match installed {
                Ok(Ok(d)) => {
                    drop(d.waiter);
                    match d.handle {
                        Some(h) => Handle::cancel_py(h.bind(py)).map(|_| py.None().into_bound(py)),
                        None => return,
                    }
                }
                Ok(Err((e, w))) => {
                    drop(w);
                    let err = os_error(e.raw_os_error().unwrap_or(libc::EIO));
                    fut.bind(py)
                        .call_method1(intern!(py, "set_exception"), (err.into_value(py),))
                }
                // The loop is closing: the future stays pending, as in the stdlib.
                Err(_) => return,
            }
        }
    };
    if let Err(e) = res {
        e.write_unraisable(py, Some(fut.bind(py)));
    }
}
