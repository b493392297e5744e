//! Native stream transports: connected TCP/Unix sockets and pipes.
//!
//! Readiness comes from the loop's epoll set as for `add_reader`, but the work
//! is Rust: socket reads land in a per-thread buffer reused for every read and
//! reach the protocol as exact-size bytes, pipe reads go straight into a bytes
//! object sized to what the pipe holds (or, either way, into a
//! BufferedProtocol's own buffer); writes are sent at once when nothing is queued, and only the
//! unsent rest is buffered, with the stdlib's flow control.

use crate::event_loop::CoreLoop;
use crate::gil_cell::GilRefCell;
use crate::handles::NativeFn;
use crate::pyhelpers;
use crate::sock_ops::sockopt_int;
use crate::transport_common::{self, DEFAULT_HIGH_WATER};
use crate::write_buf::{self, WriteBuf};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use pyo3::Borrowed;
use pyo3::PyTraverseError;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// The stdlib reads at most this much per readiness event.
pub(crate) const MAX_READ: usize = 256 * 1024;
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
const MAX_IOVECS: usize = 64;
/// Most a read pipe hands to data_received() at once (as the stdlib's reads).
const PIPE_READ_CHUNK: usize = MAX_READ;
/// Most a read pipe takes out of the pipe in one read(): the size of the pipes
/// made for subprocesses (see `read_pipe_batch`).
const PIPE_READ_BATCH: usize = 1 << 20;
/// Seconds before edge mode double-checks a pipe taken for full (see
/// `_write_fallback`).
const PIPE_EDGE_FALLBACK: f64 = 0.1;
/// See `adapt_malloc_thresholds`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ADAPT_SIZE: usize = 2 << 20;

thread_local! {
    // One read buffer per loop thread, reused for every read of every transport.
    pub(crate) static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; MAX_READ]);
    // A bytes object handed to data_received() that nobody kept (see
    // `recycle`): refcount 1, owned by this thread, never visible to Python
    // code while it is here. No destructor: leaked when the thread exits
    // (the interpreter may be gone by then), at most MAX_RECYCLE bytes.
    static SPARE: std::cell::Cell<*mut ffi::PyObject> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Largest bytes object kept for reuse: small reads, where allocating and
/// freeing the object (glibc's malloc above pymalloc's 512 bytes) costs more
/// than the read's copy. Bigger reads go straight into new objects anyway.
const MAX_RECYCLE: usize = LARGE_READ;

/// Largest spare filled by a copy out of the shared buffer after a plain
/// recv() rather than by a two-piece readv(). readv() costs the kernel an
/// iovec import and the VFS path: 100-300 ns more per 1 KiB loopback
/// send+read than recv() plus the copy, even at 8 KiB, and the copy loses
/// beyond (benchmarks/recv_vs_readv.c).
const SPARE_COPY_MAX: usize = 8 * 1024;

/// Room beyond the expected size in a stream reader's direct read.
const STREAM_READ_SLACK: usize = 1024;

/// Reads up to MAX_READ bytes into a bytes object of the exact size read.
/// When a spare object is kept (`recycle`) and the read is exactly its size
/// (the next message of request/response traffic), the spare is handed out
/// instead of a new object: a small spare is filled by a copy after one
/// recv() into the shared buffer, a larger one directly by a readv() that
/// fills it first and the shared buffer after it. Any other size is copied
/// into a new object. (None, 0) at EOF.
fn read_shared<'py>(
    py: Python<'py>,
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, Option<Bound<'py, PyBytes>>)> {
    let spare = SPARE.with(|c| c.replace(std::ptr::null_mut()));
    // SAFETY: `spare` is null or an exact bytes object of refcount 1 that only
    // this thread knows (see `recycle`): filling it cannot be observed. Each
    // path below stores it back, hands it out (hash reset, as for a new
    // object), or frees it.
    unsafe {
        let (spare_ptr, spare_len) = if spare.is_null() {
            (std::ptr::null_mut(), 0)
        } else {
            (
                ffi::PyBytes_AS_STRING(spare) as *mut u8,
                ffi::Py_SIZE(spare) as usize,
            )
        };
        // Whether the spare is read into directly (a leading iovec) or, when
        // it matches, filled afterwards from `buf`.
        let direct = spare_len > SPARE_COPY_MAX;
        let k = loop {
            let r = if direct {
                let iov = [
                    libc::iovec {
                        iov_base: spare_ptr.cast(),
                        iov_len: spare_len,
                    },
                    libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: buf.len().min(MAX_READ - spare_len),
                    },
                ];
                libc::readv(fd, iov.as_ptr(), 2)
            } else {
                libc::recv(fd, buf.as_mut_ptr().cast(), buf.len().min(MAX_READ), 0)
            };
            if r >= 0 {
                break r as usize;
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::EINTR) {
                SPARE.with(|c| c.set(spare));
                return Err(e);
            }
        };
        if k == 0 {
            SPARE.with(|c| c.set(spare));
            return Ok((0, None));
        }
        if !spare.is_null() && k == spare_len {
            if !direct {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), spare_ptr, k);
            }
            #[allow(deprecated)]
            {
                (*spare.cast::<ffi::PyBytesObject>()).ob_shash = -1;
            }
            return Ok((
                k,
                Some(Bound::from_owned_ptr(py, spare).cast_into_unchecked()),
            ));
        }
        let obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), k as ffi::Py_ssize_t);
        if obj.is_null() {
            // The data is read and lost: the transport fails (ENOMEM).
            drop(PyErr::take(py));
            SPARE.with(|c| c.set(spare));
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let out = ffi::PyBytes_AS_STRING(obj) as *mut u8;
        let head = if direct { k.min(spare_len) } else { 0 };
        if head > 0 {
            std::ptr::copy_nonoverlapping(spare_ptr, out, head);
        }
        if k > head {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), out.add(head), k - head);
        }
        // The spare stays for a later read of its size.
        SPARE.with(|c| c.set(spare));
        Ok((
            k,
            Some(Bound::from_owned_ptr(py, obj).cast_into_unchecked()),
        ))
    }
}

/// What `read_into_stream_reader`'s read came to.
enum ReaderRead {
    /// `n` bytes are in the bytearray (0: EOF), of the `asked` the read had room for.
    Stored {
        n: usize,
        asked: usize,
    },
    /// Nothing read: the bytearray could not be grown first.
    Skipped,
    /// Read but not stored (the bytearray could not be grown after a recv).
    Stray(Vec<u8>),
    /// Read, but the bytearray could not be set to its final size.
    Failed(PyErr),
    Io(io::Error),
}

/// After data_received(data): when the call kept no reference to `data`
/// (refcount 1: ours), keeps it for the next read of the same size, which
/// then skips an allocation and a free (the common case of request/response
/// traffic with fixed-size messages). Not on free-threaded builds, where a
/// refcount of 1 does not prove that no other thread can see the object.
fn recycle(data: Bound<'_, PyBytes>) {
    static GIL_ENABLED: PyOnceLock<bool> = PyOnceLock::new();
    let py = data.py();
    let gil = *GIL_ENABLED.get_or_init(py, || {
        py.import("sys")
            .and_then(|sys| match sys.getattr("_is_gil_enabled") {
                Ok(f) => f.call0()?.is_truthy(),
                Err(_) => Ok(true),
            })
            .unwrap_or(false)
    });
    if !gil {
        return;
    }
    let ptr = data.as_ptr();
    // SAFETY: GIL held; reading the refcount and size of a live object.
    let reusable = unsafe {
        ffi::Py_REFCNT(ptr) == 1
            && ffi::PyBytes_CheckExact(ptr) != 0
            && (ffi::Py_SIZE(ptr) as usize) > 1
            && (ffi::Py_SIZE(ptr) as usize) <= MAX_RECYCLE
    };
    if !reusable {
        return;
    }
    let old = SPARE.with(|c| c.replace(data.into_ptr()));
    if !old.is_null() {
        // SAFETY: the previous spare, owned by us (a bytes object: freeing
        // it runs no Python code).
        unsafe { ffi::Py_DECREF(old) };
    }
}

/// Streaming a pipe makes short-lived objects of a few hundred KiB: our
/// bytes, then the copies asyncio's StreamReader makes of it (its bytearray,
/// the bytes read() returns). glibc serves those from mmap() while its mmap
/// threshold is at the initial 128 KiB, and trims the heap top whenever more
/// than 128 KiB is free there, so every chunk page-faults its memory in again
/// (~11,000-18,000 faults per 100 MB from a child, a third of the loop's CPU).
/// glibc raises both thresholds by itself once a block above the mmap
/// threshold is freed (mmap threshold = that size, trim threshold = twice it):
/// one malloc+free of 2 MiB, the first time a read pipe is made, triggers
/// that adaptation, which any program freeing one such buffer gets anyway.
/// A threshold set by the user (mallopt, MALLOC_*_ environment variables)
/// turns the adaptation off in glibc, and then this changes nothing.
fn adapt_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: a plain malloc/free pair; black_box keeps it from being elided.
            unsafe {
                let p = std::hint::black_box(libc::malloc(MALLOC_ADAPT_SIZE));
                if !p.is_null() {
                    libc::free(p);
                }
            }
        });
    }
}

static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn is_buffered_protocol(py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let cls = BUFFERED_PROTOCOL.get_or_try_init(py, || {
        py.import("asyncio")?
            .getattr("BufferedProtocol")
            .map(|c| c.unbind())
    })?;
    protocol.is_instance(cls.bind(py))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Socket,
    ReadPipe,
    WritePipe,
}

struct Inner {
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    buffered: bool,
    extra: Option<Py<PyDict>>,
    server: Option<Py<PyAny>>,
    closing: bool,
    paused: bool,
    conn_lost: u32,
    eof_requested: bool,
    wbuf: WriteBuf,
    high: usize,
    low: usize,
    protocol_paused: bool,
    flush_waiters: Vec<Py<PyAny>>,
    sendfile_active: bool,
    /// Edge mode only (see `edge_mode`).
    pipe_state: PipeState,
    /// A `_write_fallback` timer is pending.
    fallback_armed: bool,
    /// Read pipe: chunks read but not yet handed to data_received (see
    /// `read_pipe_batch`), and whether `_deliver_pending` is scheduled.
    rbuf: VecDeque<Py<PyBytes>>,
    deliver_scheduled: bool,
}

/// What a write pipe in edge mode knows about its fill level.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PipeState {
    /// Not known to be full: write at once.
    Open,
    /// A write of the pipe's whole capacity went through: it is full, unless
    /// someone made it bigger since we asked (F_SETPIPE_SZ); the next write
    /// waits for the edge, with a timer as a safety net for that case.
    MaybeFull,
    /// A write stopped short: wait for the EPOLLOUT edge.
    Full,
}

#[pyclass(module = "tokioloop._tokioloop", subclass, frozen, weakref, dict)]
pub struct StreamTransport {
    inner: GilRefCell<Inner>,
    fd: RawFd,
    kind: Kind,
    loop_obj: Py<PyAny>,
    core: Py<CoreLoop>,
    /// Capacity of a write pipe (F_GETPIPE_SZ), 0 when not a pipe.
    pipe_capacity: usize,
    /// A socket whose last read was big: read the next straight into an
    /// exact-size bytes (FIONREAD first) instead of copying out of the shared
    /// buffer. One ioctl costs less than copying 32 KiB; small messages keep
    /// the copy (cheaper than the extra syscall).
    large_reads: std::sync::atomic::AtomicBool,
    /// Size of the last read of a socket: how much room a read straight into
    /// a StreamReader's bytearray makes (`read_into_stream_reader`).
    last_read: std::sync::atomic::AtomicUsize,
    /// `sock` is a plain socket.socket whose fd `fd_still_ours` reads in
    /// place (sock_ops::has_raw_fd) instead of calling fileno().
    raw_fd: bool,
}

/// What `read_available` read: the byte count, the first piece, the others.
type ReadPieces<'py> = (usize, Option<Bound<'py, PyBytes>>, Vec<Bound<'py, PyBytes>>);
/// Most pieces one `read_available` fills.
const MAX_PIECES: usize = PIPE_READ_BATCH / PIPE_READ_CHUNK;

/// A socket read of at least this much switches the transport to direct reads.
const LARGE_READ: usize = 32 * 1024;

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// A borrowed view of any bytes-like object (bytes, bytearray, memoryview...).
/// Holds a reference to the object, as a buffer export does.
pub(crate) struct ByteView {
    view: ffi::Py_buffer,
    /// An exact bytes object, read in place without the buffer protocol
    /// (immutable, so no export is needed to keep its data still): only
    /// `buf`, `len` and `obj` of `view` are set.
    plain_bytes: bool,
}

impl ByteView {
    pub(crate) fn new(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        // SAFETY: Py_buffer is plain data filled in by PyObject_GetBuffer.
        let mut view: ffi::Py_buffer = unsafe { std::mem::zeroed() };
        // SAFETY (both branches): GIL held (we have a Bound). An exact bytes
        // object's data stays where it is, unchanged, while we hold a reference.
        unsafe {
            if !writable && ffi::PyBytes_CheckExact(obj.as_ptr()) != 0 {
                view.buf = ffi::PyBytes_AsString(obj.as_ptr()).cast();
                view.len = ffi::Py_SIZE(obj.as_ptr());
                view.obj = ffi::Py_NewRef(obj.as_ptr());
                return Ok(ByteView {
                    view,
                    plain_bytes: true,
                });
            }
            let flags = if writable {
                ffi::PyBUF_WRITABLE
            } else {
                ffi::PyBUF_SIMPLE
            };
            if ffi::PyObject_GetBuffer(obj.as_ptr(), &mut view, flags) < 0 {
                return Err(PyErr::fetch(obj.py()));
            }
        }
        Ok(ByteView {
            view,
            plain_bytes: false,
        })
    }

    fn len(&self) -> usize {
        self.view.len as usize
    }

    fn ptr(&self) -> *mut u8 {
        self.view.buf as *mut u8
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: the exporter guarantees `len` readable bytes at `buf` while the view lives.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len()) }
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        // SAFETY: releasing the view (or the reference) we obtained; the GIL
        // is held wherever views live.
        unsafe {
            if self.plain_bytes {
                ffi::Py_DECREF(self.view.obj);
            } else {
                ffi::PyBuffer_Release(&mut self.view);
            }
        }
    }
}

fn bytes_like_error(data: &Bound<'_, PyAny>) -> PyErr {
    let name = data
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not '{name}'"
    ))
}

impl StreamTransport {
    fn core(&self, _py: Python<'_>) -> &CoreLoop {
        self.core.get()
    }

    fn sys_read(&self, buf: *mut u8, len: usize) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` points to `len` writable bytes owned by the caller.
            let n = unsafe {
                match self.kind {
                    Kind::Socket => libc::recv(self.fd, buf.cast(), len, 0),
                    _ => libc::read(self.fd, buf.cast(), len),
                }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    fn sys_write(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `data` is a valid slice for the duration of the call.
            let n = unsafe {
                match self.kind {
                    Kind::Socket => libc::send(
                        self.fd,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    ),
                    _ => libc::write(self.fd, data.as_ptr().cast(), data.len()),
                }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    fn sys_writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        loop {
            let n = match self.kind {
                Kind::Socket => {
                    // SAFETY: msghdr is plain data; iov points to valid iovecs for the call.
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                    msg.msg_iovlen = iov.len() as _;
                    // SAFETY: see above.
                    unsafe { libc::sendmsg(self.fd, &msg, libc::MSG_NOSIGNAL) }
                }
                // SAFETY: iov points to valid iovecs for the call.
                _ => unsafe { libc::writev(self.fd, iov.as_ptr(), iov.len() as i32) },
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// Whether the user's socket/pipe object still owns our fd. If they closed
    /// it behind the transport's back, the number may already belong to an
    /// unrelated new socket: never touch it then (the stdlib gets EBADF from
    /// the closed object; we report the same).
    fn fd_still_ours(&self, py: Python<'_>) -> bool {
        let state = self.inner.borrow_mut(py);
        // SAFETY: `raw_fd` is has_raw_fd's answer for this socket.
        unsafe {
            transport_common::still_wraps_fd(py, state, |i| i.sock.as_ref(), self.fd, self.raw_fd)
        }
    }

    fn ebadf() -> PyErr {
        PyErr::from(io::Error::from_raw_os_error(libc::EBADF))
    }

    fn read_error_message(&self) -> &'static str {
        match self.kind {
            Kind::Socket => "Fatal read error on socket transport",
            _ => "Fatal read error on pipe transport",
        }
    }

    fn write_error_message(&self) -> &'static str {
        match self.kind {
            Kind::Socket => "Fatal write error on socket transport",
            _ => "Fatal write error on pipe transport",
        }
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .borrow_mut(py)
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    fn watch_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let cb = slf.getattr(intern!(py, "_read_ready"))?;
        let native = own_method::<StreamTransport>(py, &cb, intern!(py, "_read_ready"))
            .then_some(native_read_ready as NativeFn);
        slf.get()
            .core(py)
            .watch_fd(py, slf.get().fd, cb.unbind(), false, native, true)
    }

    fn watch_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.core(py).is_watching(py, this.fd, true) {
            return Ok(());
        }
        let cb = slf.getattr(intern!(py, "_write_ready"))?;
        let native = own_method::<StreamTransport>(py, &cb, intern!(py, "_write_ready"))
            .then_some(native_write_ready as NativeFn);
        this.core(py)
            .watch_fd(py, this.fd, cb.unbind(), true, native, true)?;
        if this.edge_mode() {
            this.core(py).set_edge_triggered(py, this.fd, true)?;
        }
        Ok(())
    }

    /// A write pipe (a real pipe) is written in edge mode: once a write has
    /// filled it, the next one waits for the EPOLLOUT edge the kernel sends
    /// when a read that found the pipe full has finished. Level-triggered
    /// readiness (and any write attempt) comes while the reader is still
    /// copying the data out, and the kernel then makes us spin on the pipe's
    /// lock until it is done: a third of the loop's CPU, and of the child's,
    /// when streaming to a child. The write watch stays armed (a new
    /// registration would report the pipe writable at once) until the
    /// transport closes.
    fn edge_mode(&self) -> bool {
        self.pipe_capacity > 0
    }

    /// What `sent` of `wanted` bytes written tells about the pipe's fill level.
    fn pipe_state_after(&self, sent: usize, wanted: usize) -> PipeState {
        if !self.edge_mode() {
            PipeState::Open
        } else if sent < wanted {
            PipeState::Full
        } else if sent >= self.pipe_capacity {
            PipeState::MaybeFull
        } else {
            PipeState::Open
        }
    }

    /// Whether the pipe is full now (poll() reads its level without its lock).
    /// Once it is, a reader finishing a read sends the EPOLLOUT edge.
    fn pipe_looks_full(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 0 }
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        transport_common::schedule_connection_lost(slf.get().core(slf.py()), slf.as_any(), exc)
    }

    /// Error path shared by reads and writes: report as the stdlib does, then
    /// drop the connection (connection_lost follows on the next iteration).
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let exc_obj = transport_common::report_fatal_error(
            slf.get().loop_obj.bind(py),
            slf.as_any(),
            || slf.get().protocol(py),
            exc,
            message,
        )?;
        Self::force_close(slf, Some(exc_obj))
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (had_buffer, was_closing) = {
            let mut inner = this.inner.borrow_mut(py);
            if inner.conn_lost > 0 {
                return Ok(());
            }
            let had = !inner.wbuf.is_empty();
            inner.wbuf.clear();
            let was = inner.closing;
            inner.closing = true;
            inner.conn_lost += 1;
            (had, was)
        };
        if had_buffer {
            this.core(py).unwatch_fd(py, this.fd, true)?;
        }
        if !was_closing {
            this.core(py).unwatch_fd(py, this.fd, false)?;
        }
        Self::schedule_connection_lost(slf, exc)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let proto = {
            let mut inner = slf.get().inner.borrow_mut(py);
            if inner.wbuf.len() <= inner.high || inner.protocol_paused {
                return Ok(());
            }
            inner.protocol_paused = true;
            inner.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        Self::notify_flow_control(
            slf,
            proto,
            intern!(py, "pause_writing"),
            "protocol.pause_writing() failed",
        )
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let proto = {
            let mut inner = slf.get().inner.borrow_mut(py);
            if !inner.protocol_paused || inner.wbuf.len() > inner.low {
                return Ok(());
            }
            inner.protocol_paused = false;
            inner.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        Self::notify_flow_control(
            slf,
            proto,
            intern!(py, "resume_writing"),
            "protocol.resume_writing() failed",
        )
    }

    fn notify_flow_control(
        slf: &Bound<'_, Self>,
        proto: Option<Py<PyAny>>,
        method: &Bound<'_, pyo3::types::PyString>,
        failure: &str,
    ) -> PyResult<()> {
        notify_flow_control(
            slf.get().loop_obj.bind(slf.py()),
            slf.as_any(),
            proto,
            method,
            failure,
        )
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(proto) = this.protocol(py) else {
            return Ok(());
        };
        let res = pyhelpers::guarded(|| proto.bind(py).call_method0(intern!(py, "eof_received")));
        if this.kind == Kind::ReadPipe {
            // A read pipe closes on EOF whatever the protocol answers.
            if let Err(e) = res {
                if pyhelpers::is_exit_exception(py, &e) {
                    return Err(e);
                }
                return Self::fatal_error(
                    slf,
                    e,
                    "Fatal error: protocol.eof_received() call failed.",
                );
            }
            {
                let mut inner = this.inner.borrow_mut(py);
                inner.closing = true;
            }
            this.core(py).unwatch_fd(py, this.fd, false)?;
            return Self::schedule_connection_lost(slf, None);
        }
        match res {
            Err(e) => {
                Self::fatal_error(slf, e, "Fatal error: protocol.eof_received() call failed.")
            }
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    this.core(py).unwatch_fd(py, this.fd, false)?;
                    Ok(())
                } else {
                    Self::close(slf)
                }
            }
        }
    }

    /// A socket after a big read (`large_reads`): reads what it holds
    /// straight into one new bytes object of that size, up to MAX_READ, with
    /// no copy out of the shared read buffer (see `read_available`).
    fn read_socket_exact<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<io::Result<(usize, Option<Bound<'py, PyBytes>>)>> {
        self.read_available(py, MAX_READ, MAX_READ)
            .map(|r| r.map(|(n, first, _)| (n, first)))
    }

    /// Reads what a pipe holds, up to PIPE_READ_BATCH, in pieces of at most
    /// PIPE_READ_CHUNK (see `read_available`). The pipe's lock is taken once
    /// per batch rather than once per chunk: a writer on another CPU holds
    /// that lock while it copies in, and every read meeting it spins until it
    /// is done. The first chunk goes to data_received() now, the others one
    /// per loop iteration (or after resume_reading()), as if read then.
    fn read_pipe_batch<'py>(&self, py: Python<'py>) -> Option<io::Result<ReadPieces<'py>>> {
        self.read_available(py, PIPE_READ_BATCH, PIPE_READ_CHUNK)
    }

    /// Reads what the fd holds (FIONREAD), up to `max` (at most MAX_PIECES
    /// pieces), with one readv() straight into new bytes objects of at most
    /// `chunk` bytes each: no copy out of a shared buffer, no allocation
    /// bigger than the data (and no other allocation for a single piece). A
    /// short read (someone else read meanwhile) keeps what came.
    ///
    /// None when the fd looks empty (EOF, a spurious wake-up) or cannot say
    /// (FIONREAD unsupported), or the allocation failed: the caller then
    /// reads through the shared buffer.
    fn read_available<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        chunk: usize,
    ) -> Option<io::Result<ReadPieces<'py>>> {
        let mut avail: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through a valid pointer.
        if unsafe { libc::ioctl(self.fd, libc::FIONREAD, &mut avail) } < 0 || avail <= 0 {
            return None;
        }
        let want = (avail as usize).min(max).min(chunk * MAX_PIECES);
        let mut pieces: Vec<Bound<'py, PyBytes>> = Vec::new();
        let mut first = None;
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PIECES];
        let mut count = 0;
        let mut left = want;
        while left > 0 {
            let n = left.min(chunk);
            // SAFETY: a new, uninitialised bytes object of `n` bytes; nobody
            // else sees it before it is filled below.
            let obj =
                unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as ffi::Py_ssize_t) };
            if obj.is_null() {
                drop(PyErr::take(py));
                return None;
            }
            // SAFETY: `obj` is a new reference to a bytes object of `n` bytes.
            let bytes = unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>() };
            iov[count] = libc::iovec {
                // SAFETY: the bytes object owns `n` bytes at this address.
                iov_base: unsafe { ffi::PyBytes_AsString(obj) }.cast(),
                iov_len: n,
            };
            count += 1;
            if first.is_none() {
                first = Some(bytes);
            } else {
                pieces.push(bytes);
            }
            left -= n;
        }
        let got = loop {
            // SAFETY: every iovec points into a bytes object alive in `first`/`pieces`.
            let n = unsafe { libc::readv(self.fd, iov.as_ptr(), count as libc::c_int) };
            if n >= 0 {
                break n as usize;
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Some(Err(e));
            }
        };
        if got < want {
            // Keep whole pieces up to `got`, and the part of the next one.
            let mut kept = 0;
            let mut short = Vec::new();
            for piece in first.take().into_iter().chain(pieces) {
                let len = piece.as_bytes().len();
                if kept + len <= got {
                    kept += len;
                    short.push(piece);
                } else {
                    if got > kept {
                        short.push(PyBytes::new(py, &piece.as_bytes()[..got - kept]));
                    }
                    break;
                }
            }
            let mut short = short.into_iter();
            first = short.next();
            pieces = short.collect();
        }
        Some(Ok((got, first, pieces)))
    }

    /// One read, as asyncio's `_read_ready`; `drained` is set when the read
    /// left the fd empty (a short read, EOF, EAGAIN) or no longer watched.
    /// A read that returns less than it asked for has exhausted a stream fd
    /// (epoll(7); tokio clears readiness on the same rule), except for an EOF
    /// or error queued behind the data, which the event's RDHUP/HUP/ERR bits
    /// tell (Poller::dispatch).
    fn read_ready(slf: &Bound<'_, Self>, drained: &mut bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.kind == Kind::WritePipe {
            *drained = true;
            // The read end closed: a write pipe can only learn that by readability.
            let has_buffer = !this.inner.borrow_mut(py).wbuf.is_empty();
            this.core(py).unwatch_fd(py, this.fd, false)?;
            if has_buffer {
                let exc = pyo3::exceptions::PyBrokenPipeError::new_err(())
                    .into_value(py)
                    .into_any();
                return Self::force_close(slf, Some(exc));
            }
            return Self::force_close(slf, None);
        }
        if !this.fd_still_ours(py) {
            if this.inner.borrow_mut(py).conn_lost > 0 {
                return Ok(());
            }
            return Self::fatal_error(slf, Self::ebadf(), this.read_error_message());
        }
        let (buffered, proto, pending) = {
            let inner = this.inner.borrow_mut(py);
            if inner.conn_lost > 0 {
                return Ok(());
            }
            match &inner.protocol {
                Some(p) => (
                    inner.buffered,
                    p.clone_ref(py),
                    inner.deliver_scheduled || !inner.rbuf.is_empty(),
                ),
                None => return Ok(()),
            }
        };
        if pending {
            // Chunks already read go first, and reads wait, through
            // `_deliver_pending`, which runs after whatever the previous
            // chunk made the protocol schedule (a subprocess pipe pauses
            // a StreamReader one call_soon later).
            return Self::schedule_delivery(slf, false);
        }
        let proto = proto.bind(py);
        if buffered {
            let buf =
                match pyhelpers::guarded(|| proto.call_method1(intern!(py, "get_buffer"), (-1,))) {
                    Ok(b) => b,
                    Err(e) => {
                        return Self::fatal_error(
                            slf,
                            e,
                            "Fatal error: protocol.get_buffer() call failed.",
                        )
                    }
                };
            let view = match ByteView::new(&buf, true) {
                Ok(v) => v,
                Err(_) => {
                    // What socket.recv_into() says about a read-only buffer.
                    let name = buf
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default();
                    let e = PyTypeError::new_err(format!(
                        "recv_into() argument 'buffer' must be read-write bytes-like object, not {name}"
                    ));
                    return Self::fatal_error(slf, e, this.read_error_message());
                }
            };
            if view.len() == 0 {
                let e = PyRuntimeError::new_err("get_buffer() returned an empty buffer");
                return Self::fatal_error(
                    slf,
                    e,
                    "Fatal error: protocol.get_buffer() call failed.",
                );
            }
            let want = view.len();
            let res = this.sys_read(view.ptr(), want);
            drop(view);
            drop(buf);
            *drained = match &res {
                Ok(n) => *n < want,
                Err(e) => would_block(e),
            };
            if let Ok(n) = res {
                this.core(py).count_bytes(py, n, 0);
            }
            match res {
                Ok(0) => Self::on_eof(slf),
                Ok(n) => match pyhelpers::guarded(|| {
                    proto.call_method1(intern!(py, "buffer_updated"), (n,))
                }) {
                    Ok(_) => Ok(()),
                    Err(e) => Self::fatal_error(
                        slf,
                        e,
                        "Fatal error: protocol.buffer_updated() call failed.",
                    ),
                },
                Err(e) if would_block(&e) => Ok(()),
                Err(e) => Self::fatal_error(slf, PyErr::from(e), this.read_error_message()),
            }
        } else {
            if this.kind == Kind::ReadPipe {
                if let Some(res) = this.read_pipe_batch(py) {
                    *drained = match &res {
                        Ok((n, _, _)) => *n < PIPE_READ_BATCH,
                        Err(e) => would_block(e),
                    };
                    return match res {
                        Ok((0, _, _)) => Self::on_eof(slf),
                        Ok((n, first, rest)) => {
                            this.core(py).count_bytes(py, n, 0);
                            let Some(first) = first else {
                                return Ok(());
                            };
                            this.inner
                                .borrow_mut(py)
                                .rbuf
                                .extend(rest.into_iter().map(|p| p.unbind()));
                            Self::deliver(slf, proto, first)?;
                            Self::schedule_delivery(slf, true)
                        }
                        Err(e) if would_block(&e) => Ok(()),
                        Err(e) => Self::fatal_error(slf, PyErr::from(e), this.read_error_message()),
                    };
                }
            }
            if this.kind == Kind::Socket && crate::stream_reader::may_be_plain(proto) {
                if let Some(done) = Self::read_into_stream_reader(slf, proto, drained) {
                    return done;
                }
            }
            let direct = if this.large_reads.load(std::sync::atomic::Ordering::Relaxed) {
                this.read_socket_exact(py)
            } else {
                None
            };
            let res = direct.unwrap_or_else(|| {
                READ_BUF.with(|cell| {
                    let mut buf = cell.borrow_mut();
                    let cap = if this.kind == Kind::ReadPipe {
                        PIPE_READ_CHUNK
                    } else {
                        buf.len()
                    };
                    if this.kind == Kind::Socket {
                        return read_shared(py, this.fd, &mut buf[..cap]);
                    }
                    let n = this.sys_read(buf.as_mut_ptr(), cap)?;
                    Ok::<_, io::Error>((
                        n,
                        if n > 0 {
                            Some(PyBytes::new(py, &buf[..n]))
                        } else {
                            None
                        },
                    ))
                })
            });
            // Both reads ask for at most MAX_READ (pipes: PIPE_READ_CHUNK).
            let asked = if this.kind == Kind::ReadPipe {
                PIPE_READ_CHUNK
            } else {
                MAX_READ
            };
            *drained = match &res {
                Ok((n, _)) => *n < asked,
                Err(e) => would_block(e),
            };
            if let Ok((n, _)) = &res {
                this.core(py).count_bytes(py, *n, 0);
                if this.kind == Kind::Socket {
                    let large = *n >= LARGE_READ;
                    if large {
                        // Direct reads allocate bytes of up to 256 KiB.
                        adapt_malloc_thresholds();
                    }
                    this.large_reads
                        .store(large, std::sync::atomic::Ordering::Relaxed);
                }
            }
            match res {
                Ok((0, _)) => Self::on_eof(slf),
                Ok((_, Some(data))) => {
                    let res = call_data_received(proto, &data);
                    recycle(data);
                    match res {
                        Ok(_) => Ok(()),
                        Err(e) => Self::fatal_error(
                            slf,
                            e,
                            "Fatal error: protocol.data_received() call failed.",
                        ),
                    }
                }
                Ok(_) => Ok(()),
                Err(e) if would_block(&e) => Ok(()),
                Err(e) => Self::fatal_error(slf, PyErr::from(e), this.read_error_message()),
            }
        }
    }

    /// The read of a socket whose protocol is a plain StreamReaderProtocol
    /// (stream_reader.rs): the data goes into the reader's bytearray, which
    /// is all data_received would do with a bytes object (then wake the
    /// reader, pause past the limit, as there). Small reads (the last one at
    /// most SPARE_COPY_MAX) are copied in once from the shared buffer after a
    /// recv(); bigger ones land in it directly, by one recv() into the
    /// bytearray grown by the last read's size (or what FIONREAD says after
    /// a large one) plus a quarter and STREAM_READ_SLACK. Either way one
    /// copy fewer than a bytes object extended into the bytearray. None: not
    /// applicable, nothing read.
    fn read_into_stream_reader(
        slf: &Bound<'_, Self>,
        proto: &Bound<'_, PyAny>,
        drained: &mut bool,
    ) -> Option<PyResult<()>> {
        use std::sync::atomic::Ordering::Relaxed;
        let py = slf.py();
        let this = slf.get();
        let target = crate::stream_reader::target(proto)??;
        let ba = target.buffer.as_ptr();
        // SAFETY (all blocks below): `ba` is an exact bytearray (target()
        // checked), the GIL is held throughout, and no Python code runs
        // between a resize and the write into the room it made.
        let old = unsafe { ffi::PyByteArray_Size(ba) } as usize;
        let resize = |len: usize| -> PyResult<()> {
            if unsafe { ffi::PyByteArray_Resize(ba, len as ffi::Py_ssize_t) } < 0 {
                return Err(pyhelpers::take_raised(py));
            }
            Ok(())
        };
        let last = this.last_read.load(Relaxed);
        // Small reads go through the shared buffer, then into the bytearray
        // grown by exactly what came (see SPARE_COPY_MAX).
        let small_read = || {
            READ_BUF.with(|cell| {
                let mut shared = cell.borrow_mut();
                let shared = &mut shared[..MAX_READ];
                let n = match this.sys_read(shared.as_mut_ptr(), MAX_READ) {
                    Ok(n) => n,
                    Err(e) => return ReaderRead::Io(e),
                };
                if n == 0 {
                    return ReaderRead::Stored {
                        n: 0,
                        asked: MAX_READ,
                    };
                }
                if resize(old + n).is_err() {
                    // An export holds the bytearray, or no memory: the Python
                    // path gets the data and raises what extend() raises.
                    unsafe { ffi::PyErr_Clear() };
                    return ReaderRead::Stray(shared[..n].to_vec());
                }
                unsafe {
                    let dst = ffi::PyByteArray_AsString(ba).cast::<u8>().add(old);
                    std::ptr::copy_nonoverlapping(shared.as_ptr(), dst, n);
                }
                ReaderRead::Stored { n, asked: MAX_READ }
            })
        };
        let large_read = || {
            let mut want = last;
            if this.large_reads.load(Relaxed) {
                let mut avail: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int through a valid pointer.
                if unsafe { libc::ioctl(this.fd, libc::FIONREAD, &mut avail) } == 0 && avail > 0 {
                    want = avail as usize;
                }
            }
            // One recv() with room to spare: a single buffer is cheaper for
            // the kernel than readv's two pieces, and the slack takes a
            // message that grew a little without leaving the fd unread. A
            // fill means there may be more: the fd is not reported drained
            // and the next read (sized by FIONREAD) picks it up.
            let cap = (want + want / 4 + STREAM_READ_SLACK).min(MAX_READ);
            if resize(old + cap).is_err() {
                unsafe { ffi::PyErr_Clear() };
                return ReaderRead::Skipped;
            }
            let dst = unsafe { ffi::PyByteArray_AsString(ba).cast::<u8>().add(old) };
            let n = match this.sys_read(dst, cap) {
                Ok(n) => n,
                Err(e) => {
                    // Shrinking back: no failure that matters (the data is the old data).
                    if resize(old).is_err() {
                        unsafe { ffi::PyErr_Clear() };
                    }
                    return ReaderRead::Io(e);
                }
            };
            if let Err(e) = resize(old + n) {
                return ReaderRead::Failed(e);
            }
            ReaderRead::Stored { n, asked: cap }
        };
        let outcome = if last <= SPARE_COPY_MAX {
            small_read()
        } else {
            large_read()
        };
        const FAILED: &str = "Fatal error: protocol.data_received() call failed.";
        let n = match outcome {
            ReaderRead::Skipped => return None,
            ReaderRead::Stray(bytes) => {
                this.core(py).count_bytes(py, bytes.len(), 0);
                *drained = bytes.len() < MAX_READ;
                let data = PyBytes::new(py, &bytes);
                return Some(match call_data_received(proto, &data) {
                    Ok(_) => Ok(()),
                    Err(e) => Self::fatal_error(slf, e, FAILED),
                });
            }
            ReaderRead::Failed(e) => {
                *drained = true;
                return Some(Self::fatal_error(slf, e, FAILED));
            }
            ReaderRead::Io(e) => {
                *drained = would_block(&e);
                return Some(if would_block(&e) {
                    Ok(())
                } else {
                    Self::fatal_error(slf, PyErr::from(e), this.read_error_message())
                });
            }
            ReaderRead::Stored { n, asked } => {
                *drained = n < asked;
                n
            }
        };
        if n == 0 {
            return Some(Self::on_eof(slf));
        }
        this.core(py).count_bytes(py, n, 0);
        let large = n >= LARGE_READ;
        if large {
            adapt_malloc_thresholds();
        }
        // After a fill the next read asks FIONREAD how much is there, so a
        // burst is caught up in one more read rather than growing by steps.
        this.large_reads.store(large || !*drained, Relaxed);
        this.last_read.store(n, Relaxed);
        Some(
            match pyhelpers::guarded(|| crate::stream_reader::fed(&target.reader, &target.buffer)) {
                Ok(()) => Ok(()),
                Err(e) => Self::fatal_error(slf, e, FAILED),
            },
        )
    }

    /// Hands the next pending chunk of a read pipe to the protocol and
    /// schedules what follows. Returns None when nothing is pending.
    fn deliver_one_pending(
        slf: &Bound<'_, Self>,
        proto: &Bound<'_, PyAny>,
    ) -> Option<PyResult<()>> {
        let py = slf.py();
        let this = slf.get();
        let chunk = this.inner.borrow_mut(py).rbuf.pop_front()?;
        let res = Self::deliver(slf, proto, chunk.into_bound(py));
        if res.is_ok() {
            return Some(Self::schedule_delivery(slf, true));
        }
        Some(res)
    }

    /// Schedules `_deliver_pending` (when something is pending, or `always`:
    /// after a delivery, the next read waits until what the protocol
    /// scheduled has run, as it would with one read per iteration).
    fn schedule_delivery(slf: &Bound<'_, Self>, always: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut inner = this.inner.borrow_mut(py);
            if inner.deliver_scheduled || (inner.rbuf.is_empty() && !always) {
                return Ok(());
            }
            inner.deliver_scheduled = true;
        }
        let cb = slf.getattr(intern!(py, "_deliver_pending"))?.unbind();
        this.core(py).schedule(py, cb, PyTuple::empty(py).unbind())
    }

    /// data_received(data), or for a protocol that became a BufferedProtocol
    /// since the data was read, get_buffer()/buffer_updated() until it is in.
    fn deliver(
        slf: &Bound<'_, Self>,
        proto: &Bound<'_, PyAny>,
        data: Bound<'_, PyBytes>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().inner.borrow_mut(py).buffered {
            return match call_data_received(proto, &data) {
                Ok(_) => Ok(()),
                Err(e) => {
                    Self::fatal_error(slf, e, "Fatal error: protocol.data_received() call failed.")
                }
            };
        }
        let mut rest = data.as_bytes();
        while !rest.is_empty() {
            let step =
                pyhelpers::guarded(|| proto.call_method1(intern!(py, "get_buffer"), (rest.len(),)))
                    .and_then(|buf| {
                        let view = ByteView::new(&buf, true)?;
                        let n = view.len().min(rest.len());
                        if n == 0 {
                            return Err(PyRuntimeError::new_err(
                                "get_buffer() returned an empty buffer",
                            ));
                        }
                        // SAFETY: `n` bytes fit in both the view and `rest`.
                        unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), view.ptr(), n) };
                        Ok(n)
                    })
                    .and_then(|n| {
                        pyhelpers::guarded(|| {
                            proto.call_method1(intern!(py, "buffer_updated"), (n,))
                        })
                        .map(|_| n)
                    });
            match step {
                Ok(n) => rest = &rest[n..],
                Err(e) => {
                    return Self::fatal_error(
                        slf,
                        e,
                        "Fatal error: protocol.buffer_updated() call failed.",
                    )
                }
            }
        }
        Ok(())
    }

    /// Queues `view[start..]`: by reference when `data` is a big enough bytes
    /// object (immutable), else as a copy.
    fn queue(&self, py: Python<'_>, data: &Bound<'_, PyAny>, view: &ByteView, start: usize) {
        let len = view.len() - start;
        let mut inner = self.inner.borrow_mut(py);
        if len >= write_buf::SHARE_MIN {
            if let Ok(bytes) = data.cast::<PyBytes>() {
                inner.wbuf.push_shared(bytes.clone().unbind(), start, len);
                return;
            }
        }
        inner.wbuf.push_copy(&view.as_slice()[start..]);
    }

    fn resolve_flush_waiters(&self, py: Python<'_>, exc: Option<&str>) -> PyResult<()> {
        let waiters = std::mem::take(&mut self.inner.borrow_mut(py).flush_waiters);
        for w in waiters {
            let w = w.bind(py);
            if w.call_method0(intern!(py, "done"))?.is_truthy()? {
                continue;
            }
            match exc {
                None => {
                    w.call_method1(intern!(py, "set_result"), (py.None(),))?;
                }
                Some(msg) => {
                    let err = pyo3::exceptions::PyConnectionError::new_err(msg.to_string());
                    w.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
                }
            }
        }
        Ok(())
    }
}

#[pymethods]
impl StreamTransport {
    #[new]
    #[pyo3(signature = (r#loop, sock, protocol, extra=None, server=None, kind=0))]
    fn new(
        r#loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        extra: Option<&Bound<'_, PyDict>>,
        server: Option<&Bound<'_, PyAny>>,
        kind: u8,
    ) -> PyResult<Self> {
        let py = r#loop.py();
        let core = r#loop
            .cast::<CoreLoop>()
            .map_err(|_| PyTypeError::new_err("loop must be a tokioloop loop"))?
            .clone()
            .unbind();
        let kind = match kind {
            0 => Kind::Socket,
            1 => Kind::ReadPipe,
            2 => Kind::WritePipe,
            k => return Err(PyValueError::new_err(format!("unknown transport kind {k}"))),
        };
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        // SAFETY: fcntl on a descriptor the caller owns; failures leave it unchanged.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        if kind == Kind::Socket {
            set_nodelay_if_tcp(fd);
        } else if kind == Kind::ReadPipe {
            adapt_malloc_thresholds();
        }
        let pipe_capacity = if kind == Kind::WritePipe {
            // SAFETY: fcntl on the caller's descriptor; fails (-1) for non-pipes.
            unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }.max(0) as usize
        } else {
            0
        };
        let buffered = is_buffered_protocol(py, protocol)?;
        let extra = match extra {
            Some(d) => d.clone().unbind(),
            None => PyDict::new(py).unbind(),
        };
        Ok(StreamTransport {
            large_reads: std::sync::atomic::AtomicBool::new(false),
            last_read: std::sync::atomic::AtomicUsize::new(0),
            raw_fd: crate::sock_ops::has_raw_fd(sock),
            inner: GilRefCell::new(Inner {
                sock: Some(sock.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                buffered,
                extra: Some(extra),
                server: server.filter(|s| !s.is_none()).map(|s| s.clone().unbind()),
                closing: false,
                paused: false,
                conn_lost: 0,
                eof_requested: false,
                wbuf: WriteBuf::default(),
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                flush_waiters: Vec::new(),
                sendfile_active: false,
                pipe_state: PipeState::Open,
                fallback_armed: false,
                rbuf: VecDeque::new(),
                deliver_scheduled: false,
            }),
            fd,
            kind,
            loop_obj: r#loop.clone().unbind(),
            core,
            pipe_capacity,
        })
    }

    /// Starts watching the fd; scheduled right after connection_made.
    fn _attach_reader(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let inner = this.inner.borrow_mut(py);
            if inner.closing || inner.paused || inner.conn_lost > 0 {
                return Ok(());
            }
        }
        if this.core(py).is_closed_now(py) {
            return Ok(());
        }
        this.core(py)
            .register_transport(py, this.fd, slf.as_any())?;
        Self::watch_read(slf)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut drained = false;
        let res = Self::read_ready(slf, &mut drained);
        if !drained {
            // The loop must look at its epoll set again before it parks (see
            // CoreLoop::note_maybe_ready): the fd may still be readable.
            let py = slf.py();
            slf.get().core(py).note_maybe_ready(py);
        }
        res
    }

    /// Scheduled while a read pipe has chunks read but not yet delivered.
    fn _deliver_pending(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let proto = {
            let mut inner = this.inner.borrow_mut(py);
            inner.deliver_scheduled = false;
            if inner.conn_lost > 0 || inner.closing || inner.paused {
                // resume_reading() schedules us again.
                return Ok(());
            }
            match &inner.protocol {
                Some(p) => p.clone_ref(py),
                None => return Ok(()),
            }
        };
        match Self::deliver_one_pending(slf, proto.bind(py)) {
            Some(res) => res,
            // Nothing pending: this is the read that waited (see
            // `schedule_delivery`).
            None => Self::_read_ready(slf),
        }
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.kind == Kind::ReadPipe {
            return Err(pyo3::exceptions::PyNotImplementedError::new_err(
                "a read pipe transport cannot write",
            ));
        }
        let view = ByteView::new(data, false).map_err(|_| bytes_like_error(data))?;
        {
            let mut inner = this.inner.borrow_mut(py);
            if inner.eof_requested {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if inner.sendfile_active {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            if view.len() == 0 {
                return Ok(());
            }
            // A write pipe drops writes once closing, like the stdlib's; a
            // socket transport still flushes what is written before close().
            let pipe_closing = this.kind == Kind::WritePipe && inner.closing;
            if inner.conn_lost > 0 || inner.sock.is_none() || pipe_closing {
                let warn = inner.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                inner.conn_lost += 1;
                drop(inner);
                if warn {
                    let msg = match this.kind {
                        Kind::Socket => "socket.send() raised exception.",
                        _ => "pipe closed by peer or os.write(pipe, data) raised exception.",
                    };
                    pyhelpers::log_warning(py, msg)?;
                }
                return Ok(());
            }
            if !inner.wbuf.is_empty() {
                drop(inner);
                this.queue(py, data, &view, 0);
                return Self::maybe_pause_protocol(slf);
            }
            if inner.pipe_state != PipeState::Open {
                // poll() cannot tell: the reader has usually started copying
                // the pipe out already, which makes it look writable.
                let arm = inner.pipe_state == PipeState::MaybeFull && !inner.fallback_armed;
                inner.pipe_state = PipeState::Full;
                inner.fallback_armed |= arm;
                drop(inner);
                this.queue(py, data, &view, 0);
                Self::watch_write(slf)?;
                if arm {
                    let cb = slf.getattr(intern!(py, "_write_fallback"))?;
                    this.loop_obj
                        .bind(py)
                        .call_method1(intern!(py, "call_later"), (PIPE_EDGE_FALLBACK, cb))?;
                }
                return Self::maybe_pause_protocol(slf);
            }
        }
        // Nothing queued: try to send right away and queue only the rest.
        if !this.fd_still_ours(py) {
            return Self::fatal_error(slf, Self::ebadf(), this.write_error_message());
        }
        let sent = match this.sys_write(view.as_slice()) {
            Ok(n) => n,
            Err(e) if would_block(&e) => 0,
            Err(e) => return Self::fatal_error(slf, PyErr::from(e), this.write_error_message()),
        };
        this.inner.borrow_mut(py).pipe_state = this.pipe_state_after(sent, view.len());
        this.core(py).count_bytes(py, 0, sent);
        if sent == view.len() {
            return Ok(());
        }
        this.queue(py, data, &view, sent);
        drop(view);
        Self::watch_write(slf)?;
        Self::maybe_pause_protocol(slf)
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let mut joined: Vec<u8> = Vec::new();
        for (i, item) in list_of_data.try_iter()?.enumerate() {
            let item = item?;
            let view = ByteView::new(&item, false).map_err(|_| {
                let name = item
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                PyTypeError::new_err(format!(
                    "sequence item {i}: expected a bytes-like object, {name} found"
                ))
            })?;
            joined.extend_from_slice(view.as_slice());
        }
        let bytes = PyBytes::new(py, &joined);
        Self::write(slf, bytes.as_any())
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.fd_still_ours(py) {
            this.core(py).unwatch_fd(py, this.fd, true)?;
            return Self::fatal_error(slf, Self::ebadf(), this.write_error_message());
        }
        let edge = this.edge_mode();
        let mut first = true;
        let (empty, closing, eof) = loop {
            let result = {
                let mut inner = this.inner.borrow_mut(py);
                if first {
                    // An edge: the pipe has room again.
                    inner.pipe_state = PipeState::Open;
                }
                if inner.conn_lost > 0 || inner.wbuf.is_empty() {
                    None
                } else {
                    let iov = inner.wbuf.iovecs(py, MAX_IOVECS);
                    let wanted: usize = iov.iter().map(|v| v.iov_len).sum();
                    Some((this.sys_writev(&iov), wanted))
                }
            };
            let Some((result, wanted)) = result else {
                // Only on the first round: later ones run with data queued.
                if !edge || this.inner.borrow_mut(py).conn_lost > 0 {
                    this.core(py).unwatch_fd(py, this.fd, true)?;
                }
                return Ok(());
            };
            let sent = match result {
                Ok(n) => n,
                Err(e) if would_block(&e) => {
                    if edge {
                        this.inner.borrow_mut(py).pipe_state = PipeState::Full;
                    }
                    return Ok(());
                }
                Err(e) => {
                    this.core(py).unwatch_fd(py, this.fd, true)?;
                    {
                        let mut inner = this.inner.borrow_mut(py);
                        inner.wbuf.clear();
                    }
                    this.resolve_flush_waiters(py, Some("Connection is closed by peer"))?;
                    return Self::fatal_error(slf, PyErr::from(e), this.write_error_message());
                }
            };
            first = false;
            this.core(py).count_bytes(py, 0, sent);
            let mut inner = this.inner.borrow_mut(py);
            inner.wbuf.consume(py, sent);
            let mut state = this.pipe_state_after(sent, wanted);
            if state == PipeState::MaybeFull && !inner.wbuf.is_empty() && this.pipe_looks_full() {
                state = PipeState::Full;
            }
            inner.pipe_state = state;
            // In edge mode no new event comes while the pipe has room: keep
            // writing what did not fit in one writev's iovecs.
            if !edge || state == PipeState::Full || inner.wbuf.is_empty() {
                break (inner.wbuf.is_empty(), inner.closing, inner.eof_requested);
            }
        };
        Self::maybe_resume_protocol(slf)?;
        if empty {
            if !this.edge_mode() || closing {
                this.core(py).unwatch_fd(py, this.fd, true)?;
            }
            this.resolve_flush_waiters(py, None)?;
            if closing {
                if this.kind == Kind::WritePipe {
                    this.core(py).unwatch_fd(py, this.fd, false)?;
                }
                Self::_call_connection_lost(slf, None)?;
            } else if eof && this.kind == Kind::Socket {
                // SAFETY: shutdown on our own socket fd.
                unsafe { libc::shutdown(this.fd, libc::SHUT_WR) };
            }
        }
        Ok(())
    }

    /// Safety net of edge mode: a pipe we took for full after writing its
    /// capacity, but that someone enlarged meanwhile, sends no edge. Writes
    /// when the pipe has room and data still waits for an edge.
    fn _write_fallback(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut inner = this.inner.borrow_mut(py);
            inner.fallback_armed = false;
            if inner.conn_lost > 0
                || inner.sock.is_none()
                || inner.wbuf.is_empty()
                || inner.pipe_state != PipeState::Full
                || this.pipe_looks_full()
            {
                // Full for real: the reader's next read sends the edge.
                return Ok(());
            }
        }
        Self::_write_ready(slf)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match this.kind {
            Kind::ReadPipe => Err(pyo3::exceptions::PyNotImplementedError::new_err(
                "a read pipe transport cannot write",
            )),
            Kind::WritePipe => {
                let buffered = {
                    let mut inner = this.inner.borrow_mut(py);
                    if inner.closing {
                        return Ok(());
                    }
                    inner.closing = true;
                    !inner.wbuf.is_empty()
                };
                if !buffered {
                    this.inner.borrow_mut(py).conn_lost += 1;
                    this.core(py).unwatch_fd(py, this.fd, false)?;
                    Self::schedule_connection_lost(slf, None)?;
                }
                Ok(())
            }
            Kind::Socket => {
                let buffered = {
                    let mut inner = this.inner.borrow_mut(py);
                    if inner.closing || inner.eof_requested {
                        return Ok(());
                    }
                    inner.eof_requested = true;
                    !inner.wbuf.is_empty()
                };
                if !buffered {
                    // SAFETY: shutdown on our own socket fd.
                    if unsafe { libc::shutdown(this.fd, libc::SHUT_WR) } < 0 {
                        let e = last_err();
                        if e.raw_os_error() != Some(libc::ENOTCONN) {
                            return Err(e.into());
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn can_write_eof(&self) -> bool {
        self.kind != Kind::ReadPipe
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.kind == Kind::WritePipe {
            return Self::write_eof(slf);
        }
        let buffered = {
            let mut inner = this.inner.borrow_mut(py);
            if inner.closing {
                return Ok(());
            }
            inner.closing = true;
            !inner.wbuf.is_empty()
        };
        this.core(py).unwatch_fd(py, this.fd, false)?;
        if !buffered {
            this.inner.borrow_mut(py).conn_lost += 1;
            this.core(py).unwatch_fd(py, this.fd, true)?;
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    /// asyncio's private name for abort-with-an-exception (sslproto calls it).
    #[pyo3(name = "_force_close", signature = (exc=None))]
    fn py_force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let exc = exc.filter(|e| !e.is_none(slf.py()));
        Self::force_close(slf, exc)
    }

    /// Set while loop.sendfile() owns the socket: writes are refused meanwhile.
    fn _set_sendfile_active(&self, py: Python<'_>, active: bool) {
        self.inner.borrow_mut(py).sendfile_active = active;
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.inner.borrow_mut(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        let inner = self.inner.borrow_mut(py);
        !inner.closing && !inner.paused
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut inner = this.inner.borrow_mut(py);
            if inner.closing || inner.paused {
                return Ok(());
            }
            inner.paused = true;
        }
        this.core(py).unwatch_fd(py, this.fd, false)?;
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut inner = this.inner.borrow_mut(py);
            if inner.closing || !inner.paused {
                return Ok(());
            }
            inner.paused = false;
        }
        if this.core(py).is_closed_now(py) {
            return Ok(());
        }
        Self::watch_read(slf)?;
        Self::schedule_delivery(slf, false)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let (high, low) = transport_common::water_marks(high, low)?;
        {
            let mut inner = slf.get().inner.borrow_mut(slf.py());
            inner.high = high;
            inner.low = low;
        }
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        let inner = self.inner.borrow_mut(py);
        (inner.low, inner.high)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.inner.borrow_mut(py).wbuf.len()
    }

    /// Bytes of the last read that went straight into a StreamReader's
    /// bytearray (`read_into_stream_reader`); 0 if none did. For tests.
    fn _last_reader_read(&self) -> usize {
        self.last_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let extra = self
            .inner
            .borrow_mut(py)
            .extra
            .as_ref()
            .map(|e| e.clone_ref(py));
        transport_common::extra_info(py, extra, name, default)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = is_buffered_protocol(py, protocol)?;
        let old = {
            let mut inner = self.inner.borrow_mut(py);
            inner.buffered = buffered;
            inner.protocol.replace(protocol.clone().unbind())
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_obj.clone_ref(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_obj.clone_ref(py)
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .borrow_mut(py)
            .sock
            .as_ref()
            .map(|s| s.clone_ref(py))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.inner.borrow_mut(py).protocol_paused
    }

    /// 0 = socket, 1 = read pipe, 2 = write pipe.
    #[getter]
    fn _kind(&self) -> u8 {
        match self.kind {
            Kind::Socket => 0,
            Kind::ReadPipe => 1,
            Kind::WritePipe => 2,
        }
    }

    /// A future resolved once everything written so far has left the buffer.
    fn _flush_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let fut = self
            .loop_obj
            .bind(py)
            .call_method0(intern!(py, "create_future"))?;
        let mut inner = self.inner.borrow_mut(py);
        if inner.conn_lost > 0 {
            drop(inner);
            let err = pyo3::exceptions::PyConnectionError::new_err("Connection is closed by peer");
            fut.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
        } else if inner.wbuf.is_empty() {
            drop(inner);
            fut.call_method1(intern!(py, "set_result"), (py.None(),))?;
        } else {
            inner.flush_waiters.push(fut.clone().unbind());
        }
        Ok(fut.unbind())
    }

    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, sock, server) = {
            let mut inner = this.inner.borrow_mut(py);
            if inner.sock.is_none() {
                return Ok(());
            }
            inner.closing = true;
            inner.rbuf.clear();
            (
                inner.protocol.take(),
                inner.sock.take(),
                inner.server.take(),
            )
        };
        this.resolve_flush_waiters(py, Some("Connection is closed by peer"))?;
        let res = transport_common::call_connection_lost(py, protocol.as_ref(), exc);
        // Whatever the protocol did, the socket is closed and the server told.
        this.core(py)
            .unregister_transport(py, this.fd, slf.as_any());
        let _ = this.core(py).unwatch_fd(py, this.fd, false);
        let _ = this.core(py).unwatch_fd(py, this.fd, true);
        let close_res = match sock {
            Some(s) => s.bind(py).call_method0(intern!(py, "close")).map(|_| ()),
            None => Ok(()),
        };
        let detach_res = match server {
            Some(s) => s
                .bind(py)
                .call_method1(intern!(py, "_detach"), (slf,))
                .map(|_| ()),
            None => Ok(()),
        };
        res.and(close_res).and(detach_res)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let inner = self.inner.borrow_mut(py);
        let state = if inner.sock.is_none() {
            " closed"
        } else if inner.closing {
            " closing"
        } else if self.kind == Kind::Socket {
            ""
        } else {
            " open"
        };
        let kind = match self.kind {
            Kind::Socket => "StreamTransport",
            Kind::ReadPipe => "ReadPipeTransport",
            Kind::WritePipe => "WritePipeTransport",
        };
        format!(
            "<{kind}{state} fd={} read={} write=<bufsize={}>>",
            self.fd,
            if inner.paused { "paused" } else { "polling" },
            inner.wbuf.len()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // A Python subclass with a managed __dict__ can be traversed by a GC
        // pass between allocation (zero-filled) and initialisation of our fields.
        if crate::gil_cell::is_null_py(&self.loop_obj) {
            return Ok(());
        }
        visit.call(&self.loop_obj)?;
        visit.call(&self.core)?;
        if let Some(inner) = self.inner.try_borrow_mut_in_gc() {
            visit.call(&inner.sock)?;
            visit.call(&inner.protocol)?;
            visit.call(&inner.extra)?;
            visit.call(&inner.server)?;
            for w in &inner.flush_waiters {
                visit.call(w)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.inner.try_borrow_mut_in_gc().map(|mut inner| {
            (
                inner.protocol.take(),
                inner.extra.take(),
                inner.server.take(),
                std::mem::take(&mut inner.flush_waiters),
            )
        });
        drop(taken);
    }
}

/// Calls pause_writing/resume_writing of `proto`; a failure goes to the
/// exception handler (exit exceptions propagate), as the stdlib does. Shared
/// by the stream and datagram transports.
pub(crate) fn notify_flow_control(
    event_loop: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    proto: Option<Py<PyAny>>,
    method: &Bound<'_, pyo3::types::PyString>,
    failure: &str,
) -> PyResult<()> {
    let py = transport.py();
    let Some(p) = proto else { return Ok(()) };
    match pyhelpers::guarded(|| p.bind(py).call_method0(method)) {
        Ok(_) => Ok(()),
        Err(e) if pyhelpers::is_exit_exception(py, &e) => Err(e),
        Err(e) => pyhelpers::protocol_callback_failed(
            py,
            event_loop,
            transport,
            Some(p),
            e.into_value(py).into_any(),
            failure,
        ),
    }
}

/// PyO3's own `write` descriptor, for the call shapes `write_fast` leaves to it.
static WRITE_GENERIC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `transport.write(data)`, the hottest call of a protocol, without PyO3's
/// generic argument parsing (~150 instructions a call). Other shapes
/// (`write(data=...)`, wrong arity) go to PyO3's method, which parses them
/// and raises its usual errors.
///
/// # Safety
/// Called by CPython through a method descriptor of StreamTransport: `slf` is
/// a StreamTransport (or subclass) instance, the GIL is held.
unsafe extern "C" fn write_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let nargs = ffi::PyVectorcall_NARGS(nargs as usize);
    if nargs != 1 || !kwnames.is_null() {
        let Some(generic) = WRITE_GENERIC.get(py) else {
            pyo3::exceptions::PySystemError::new_err("tokioloop: write() not initialised")
                .restore(py);
            return std::ptr::null_mut();
        };
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames) as usize
        };
        let mut all = Vec::with_capacity(1 + nargs as usize + nkw);
        all.push(slf);
        all.extend_from_slice(std::slice::from_raw_parts(args, nargs as usize + nkw));
        return ffi::PyObject_Vectorcall(
            generic.as_ptr(),
            all.as_ptr(),
            (1 + nargs) as usize,
            kwnames,
        );
    }
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let this = Borrowed::from_ptr(py, slf).cast_unchecked::<StreamTransport>();
        let data = Borrowed::from_ptr(py, *args);
        StreamTransport::write(&this, &data)
    }));
    let err = match res {
        Ok(Ok(())) => return ffi::Py_NewRef(ffi::Py_None()),
        Ok(Err(e)) => e,
        Err(payload) => pyhelpers::panic_to_pyerr(payload),
    };
    err.restore(py);
    std::ptr::null_mut()
}

/// Puts `write_fast` in place of PyO3's `write` on the StreamTransport type
/// (subclasses inherit it).
pub fn install(py: Python<'_>) -> PyResult<()> {
    use pyo3::PyTypeInfo;
    let ty = StreamTransport::type_object(py);
    let generic = ty.getattr(intern!(py, "write"))?;
    let doc = generic
        .getattr(intern!(py, "__doc__"))
        .ok()
        .and_then(|d| d.extract::<String>().ok())
        .unwrap_or_default();
    let doc = format!("write($self, data)\n--\n\n{doc}");
    WRITE_GENERIC.get_or_init(py, || generic.unbind());
    // The descriptor points to its doc for ever: leak it.
    let doc: &'static std::ffi::CStr = Box::leak(
        std::ffi::CString::new(doc)
            .unwrap_or_default()
            .into_boxed_c_str(),
    );
    crate::fastcall::set_type_method(
        &ty,
        ffi::PyMethodDef {
            ml_name: c"write".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: write_fast,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        },
    )
}

/// Whether `method` (looked up on a transport) is the transport class `T`'s
/// own Rust method `name`, not an override: the readiness handles then call
/// that Rust function directly (`Handle::with_native`), skipping the Python
/// call machinery on every event.
pub(crate) fn own_method<T: pyo3::PyTypeInfo>(
    py: Python<'_>,
    method: &Bound<'_, PyAny>,
    name: &Bound<'_, pyo3::types::PyString>,
) -> bool {
    // SAFETY: type checks before each cast; the GIL is held.
    unsafe {
        if ffi::PyCFunction_Check(method.as_ptr()) == 0 {
            return false;
        }
        let Ok(Some(descr)) = T::type_object(py).getattr(name).map(|d| {
            Some(d).filter(|d| {
                ffi::PyObject_TypeCheck(d.as_ptr(), &raw mut ffi::PyMethodDescr_Type) != 0
            })
        }) else {
            return false;
        };
        let ml = (*method.as_ptr().cast::<ffi::PyCFunctionObject>()).m_ml;
        let own = (*descr.as_ptr().cast::<ffi::PyMethodDescrObject>()).d_method;
        !ml.is_null() && std::ptr::eq(ml, own)
    }
}

/// `protocol.data_received(data)`, natively for a plain StreamReaderProtocol
/// (`stream_reader`).
fn call_data_received(proto: &Bound<'_, PyAny>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
    if crate::stream_reader::may_be_plain(proto) {
        if let Some(done) = crate::stream_reader::data_received(proto, data) {
            return done;
        }
    }
    let py = proto.py();
    pyhelpers::guarded(|| proto.call_method1(intern!(py, "data_received"), (data,))).map(drop)
}

fn native_read_ready(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    StreamTransport::_read_ready(obj.cast::<StreamTransport>()?)
}

fn native_write_ready(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    StreamTransport::_write_ready(obj.cast::<StreamTransport>()?)
}

fn set_nodelay_if_tcp(fd: RawFd) {
    let Ok(domain) = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) else {
        return;
    };
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return;
    }
    if sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Ok(libc::SOCK_STREAM) {
        return;
    }
    let one: libc::c_int = 1;
    // SAFETY: setting an int option from a valid pointer.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
