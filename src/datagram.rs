//! Native datagram transport (UDP, Unix datagram sockets).
//!
//! Readiness comes from the loop's epoll set as for the stream transports
//! (src/stream.rs): a reader Handle calling `_read_ready`, a writer Handle
//! calling `_sendto_ready` while datagrams wait. A readiness event reads a
//! datagram (as asyncio does) into the per-thread read buffer and hands
//! `datagram_received` exact-size bytes and the sender's address as the
//! socket module would give it; the last sender's address object is reused
//! while the same peer keeps sending, and an address given back to sendto()
//! is converted once. Further datagrams are read in the same event (up to
//! MAX_BATCH) only while the protocol schedules no callback, so the order of
//! datagrams and callbacks stays asyncio's. `sendto()` sends at once when nothing waits and queues
//! the datagram otherwise, with asyncio's flow control.
//!
//! Behaviour follows asyncio's `_SelectorDatagramTransport` of the running
//! interpreter: 3.11/3.12 drop empty datagrams, 3.13 sends them and counts 8
//! header bytes per queued datagram. (3.13.0 adds those 8 bytes when queueing
//! but does not take them off when sending, so its buffer size grows forever;
//! here both sides count them.) Addresses that are not plain IP literals or
//! paths, and sockets of other families, go through the socket module.

use crate::event_loop::CoreLoop;
use crate::gil_cell::GilRefCell;
use crate::handles::NativeFn;
use crate::pyhelpers;
use crate::sock_ops::{errno, os_error};
use crate::sockaddr::{self, SockAddr};
use crate::stream::own_method;
use crate::stream::{notify_flow_control, ByteView, MAX_READ, READ_BUF};
use crate::transport_common::{self, DEFAULT_HIGH_WATER};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::PyTraverseError;
use std::collections::VecDeque;
use std::os::fd::RawFd;

const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
const READ_ERROR: &str = "Fatal read error on datagram transport";
const WRITE_ERROR: &str = "Fatal write error on datagram transport";
/// Most datagrams handed to the protocol per readiness event (see `_read_ready`).
const MAX_BATCH: usize = 16;

/// Where a queued datagram goes.
enum Dest {
    /// A connected socket: send().
    Peer,
    Native(SockAddr),
    /// Anything the socket module has to interpret: sock.sendto(data, addr).
    Py(Py<PyAny>),
    /// A connected socket, data the socket module has to interpret: sock.send(data).
    PySend,
}

struct Queued {
    data: Py<PyBytes>,
    dest: Dest,
}

struct Inner {
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    extra: Option<Py<PyDict>>,
    /// The remote address given to create_datagram_endpoint (None: any).
    address: Option<Py<PyAny>>,
    closing: bool,
    paused: bool,
    conn_lost: u32,
    queue: VecDeque<Queued>,
    buffer_size: usize,
    high: usize,
    low: usize,
    protocol_paused: bool,
    writing: bool,
    /// The last sender's address and its Python object (reused while equal).
    last_from: Option<(SockAddr, Py<PyAny>)>,
    /// The last address object given to sendto() and its C form.
    last_to: Option<(Py<PyAny>, SockAddr)>,
}

#[pyclass(module = "tokioloop._tokioloop", subclass, frozen, weakref, dict)]
pub struct DatagramTransport {
    inner: GilRefCell<Inner>,
    fd: RawFd,
    family: i32,
    /// extra['peername'] was set: datagrams go out with send().
    connected: bool,
    /// Bytes counted per queued datagram besides its payload (8 on 3.13+).
    header: usize,
    /// Empty datagrams are sent (3.13+) rather than dropped.
    send_empty: bool,
    loop_obj: Py<PyAny>,
    core: Py<CoreLoop>,
    /// `sock` is a plain socket.socket whose fd `fd_still_ours` reads in
    /// place (sock_ops::has_raw_fd) instead of calling fileno().
    raw_fd: bool,
}

/// What one send attempt did.
enum Sent {
    Done,
    Again,
    /// An OSError for error_received().
    OsError(PyErr),
    /// Anything else: a fatal error.
    Fatal(PyErr),
}

fn classify(py: Python<'_>, err: PyErr) -> Sent {
    if err.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
        || err.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py)
    {
        Sent::Again
    } else if err.is_instance_of::<pyo3::exceptions::PyOSError>(py) {
        Sent::OsError(err)
    } else {
        Sent::Fatal(err)
    }
}

impl DatagramTransport {
    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .borrow_mut(py)
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .borrow_mut(py)
            .sock
            .as_ref()
            .map(|s| s.clone_ref(py))
    }

    /// Whether the socket object still wraps our fd: once the user closed it
    /// the number may belong to another socket (the stdlib's calls on the
    /// closed object fail with EBADF; so do ours).
    fn fd_still_ours(&self, py: Python<'_>) -> bool {
        let state = self.inner.borrow_mut(py);
        // SAFETY: `raw_fd` is has_raw_fd's answer for this socket.
        unsafe {
            transport_common::still_wraps_fd(py, state, |i| i.sock.as_ref(), self.fd, self.raw_fd)
        }
    }

    /// The C address for `addr` (cached by identity), or None.
    fn native_dest(&self, py: Python<'_>, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
        {
            let inner = self.inner.borrow_mut(py);
            if let Some((obj, sa)) = &inner.last_to {
                if obj.bind(py).is(addr) {
                    return Some(*sa);
                }
            }
        }
        let sa = sockaddr::from_py(self.family, addr)?;
        self.inner.borrow_mut(py).last_to = Some((addr.clone().unbind(), sa));
        Some(sa)
    }

    /// One send of `data` to `dest`.
    fn send_one(&self, py: Python<'_>, data: &[u8], dest: &Dest, obj: &Bound<'_, PyAny>) -> Sent {
        if let Dest::Py(_) | Dest::PySend = dest {
            let Some(sock) = self.sock(py) else {
                return Sent::OsError(os_error(libc::EBADF));
            };
            let sock = sock.bind(py);
            let res = match dest {
                Dest::Py(addr) => sock.call_method1(intern!(py, "sendto"), (obj, addr.bind(py))),
                _ => sock.call_method1(intern!(py, "send"), (obj,)),
            };
            return match res {
                Ok(_) => Sent::Done,
                Err(e) => classify(py, e),
            };
        }
        if !self.fd_still_ours(py) {
            return Sent::OsError(os_error(libc::EBADF));
        }
        loop {
            // SAFETY: `data` is a valid slice; the address (if any) lives in `dest`.
            let r = unsafe {
                match dest {
                    Dest::Native(sa) => libc::sendto(
                        self.fd,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                        sa.as_ptr(),
                        sa.len,
                    ),
                    _ => libc::send(
                        self.fd,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    ),
                }
            };
            if r >= 0 {
                self.core.get().count_bytes(py, 0, r as usize);
                return Sent::Done;
            }
            let e = errno();
            if e == libc::EAGAIN || e == libc::EWOULDBLOCK {
                return Sent::Again;
            }
            if e != libc::EINTR {
                return Sent::OsError(os_error(e));
            }
            if let Err(err) = py.check_signals() {
                return Sent::Fatal(err);
            }
        }
    }

    fn error_received(&self, py: Python<'_>, err: PyErr) -> PyResult<()> {
        if let Some(p) = self.protocol(py) {
            p.bind(py)
                .call_method1(intern!(py, "error_received"), (err.into_value(py),))?;
        }
        Ok(())
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        transport_common::schedule_connection_lost(slf.get().core.get(), slf.as_any(), exc)
    }

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
        let (dropped, stop_writing, stop_reading) = {
            let mut inner = this.inner.borrow_mut(py);
            if inner.conn_lost > 0 {
                return Ok(());
            }
            let dropped = std::mem::take(&mut inner.queue);
            inner.buffer_size = 0;
            let stop_writing = !dropped.is_empty() && std::mem::take(&mut inner.writing);
            let stop_reading = !inner.closing;
            inner.closing = true;
            inner.conn_lost += 1;
            (dropped, stop_writing, stop_reading)
        };
        drop(dropped);
        if stop_writing {
            this.core.get().unwatch_fd(py, this.fd, true)?;
        }
        if stop_reading {
            this.core.get().unwatch_fd(py, this.fd, false)?;
        }
        Self::schedule_connection_lost(slf, exc)
    }

    fn flow_control(slf: &Bound<'_, Self>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let proto = {
            let mut inner = slf.get().inner.borrow_mut(py);
            let change = if pause {
                inner.buffer_size > inner.high && !inner.protocol_paused
            } else {
                inner.protocol_paused && inner.buffer_size <= inner.low
            };
            if !change {
                return Ok(());
            }
            inner.protocol_paused = pause;
            inner.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        let (method, failure) = if pause {
            (
                intern!(py, "pause_writing"),
                "protocol.pause_writing() failed",
            )
        } else {
            (
                intern!(py, "resume_writing"),
                "protocol.resume_writing() failed",
            )
        };
        notify_flow_control(
            slf.get().loop_obj.bind(py),
            slf.as_any(),
            proto,
            method,
            failure,
        )
    }

    fn start_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if std::mem::replace(&mut this.inner.borrow_mut(py).writing, true) {
            return Ok(());
        }
        let cb = slf.getattr(intern!(py, "_sendto_ready"))?;
        let native = own_method::<DatagramTransport>(py, &cb, intern!(py, "_sendto_ready"))
            .then_some(native_sendto_ready as NativeFn);
        this.core
            .get()
            .watch_fd(py, this.fd, cb.unbind(), true, native, false)
    }

    fn stop_writing(&self, py: Python<'_>) -> PyResult<()> {
        if std::mem::take(&mut self.inner.borrow_mut(py).writing) {
            self.core.get().unwatch_fd(py, self.fd, true)?;
        }
        Ok(())
    }

    fn watch_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let cb = slf.getattr(intern!(py, "_read_ready"))?;
        let native = own_method::<DatagramTransport>(py, &cb, intern!(py, "_read_ready"))
            .then_some(native_read_ready as NativeFn);
        slf.get()
            .core
            .get()
            .watch_fd(py, slf.get().fd, cb.unbind(), false, native, false)
    }

    /// One recvfrom() into the shared buffer: (data, address) or the error
    /// (Ok(None): nothing there).
    fn recv_native<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Bound<'py, PyAny>)>> {
        let mut from = SockAddr::empty();
        let got = READ_BUF.with(|cell| -> PyResult<Option<Bound<'py, PyBytes>>> {
            let mut buf = cell.borrow_mut();
            loop {
                from.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                // SAFETY: `buf` has MAX_READ writable bytes; `from` is a
                // sockaddr_storage with its size in `len`.
                let r = unsafe {
                    libc::recvfrom(
                        self.fd,
                        buf.as_mut_ptr().cast(),
                        MAX_READ.min(buf.len()),
                        0,
                        from.as_mut_ptr(),
                        &mut from.len,
                    )
                };
                if r >= 0 {
                    return Ok(Some(PyBytes::new(py, &buf[..r as usize])));
                }
                let e = errno();
                if e == libc::EAGAIN || e == libc::EWOULDBLOCK {
                    return Ok(None);
                }
                if e != libc::EINTR {
                    return Err(os_error(e));
                }
                py.check_signals()?;
            }
        })?;
        let Some(data) = got else { return Ok(None) };
        self.core.get().count_bytes(py, data.as_bytes().len(), 0);
        {
            let inner = self.inner.borrow_mut(py);
            if let Some((sa, obj)) = &inner.last_from {
                if sa.bytes() == from.bytes() {
                    return Ok(Some((data, obj.bind(py).clone())));
                }
            }
        }
        let addr = match sockaddr::to_py(py, &from) {
            Some(r) => r?,
            None => py.None().into_bound(py),
        };
        let mut inner = self.inner.borrow_mut(py);
        inner.last_from = Some((from, addr.clone().unbind()));
        if !addr.is_none() {
            // An echo sends back to the same object: convert it now.
            inner.last_to = Some((addr.clone().unbind(), from));
        }
        Ok(Some((data, addr)))
    }
}

#[pymethods]
impl DatagramTransport {
    #[new]
    #[pyo3(signature = (r#loop, sock, protocol, address=None, extra=None))]
    fn new(
        r#loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let py = r#loop.py();
        let core = r#loop
            .cast::<CoreLoop>()
            .map_err(|_| PyTypeError::new_err("loop must be a tokioloop loop"))?
            .clone()
            .unbind();
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        let family: i32 = sock.getattr("family")?.extract()?;
        let extra = match extra {
            Some(d) => d.clone().unbind(),
            None => PyDict::new(py).unbind(),
        };
        let connected = match extra.bind(py).get_item("peername")? {
            Some(p) => p.is_truthy()?,
            None => false,
        };
        let py313 = py.version_info() >= (3, 13);
        Ok(DatagramTransport {
            inner: GilRefCell::new(Inner {
                sock: Some(sock.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                extra: Some(extra),
                address: address.filter(|a| !a.is_none()).map(|a| a.clone().unbind()),
                closing: false,
                paused: false,
                conn_lost: 0,
                queue: VecDeque::new(),
                buffer_size: 0,
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                writing: false,
                last_from: None,
                last_to: None,
            }),
            fd,
            family,
            connected,
            header: if py313 { 8 } else { 0 },
            send_empty: py313,
            loop_obj: r#loop.clone().unbind(),
            core,
            raw_fd: crate::sock_ops::has_raw_fd(sock),
        })
    }

    /// Starts reading; scheduled right after connection_made.
    fn _start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let inner = this.inner.borrow_mut(py);
            if inner.closing || inner.paused || inner.sock.is_none() {
                return Ok(());
            }
        }
        if this.core.get().is_closed_now(py) {
            return Ok(());
        }
        this.core
            .get()
            .register_transport(py, this.fd, slf.as_any())?;
        Self::watch_read(slf)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.inner.borrow_mut(py).conn_lost > 0 {
            return Ok(());
        }
        let res = if !this.fd_still_ours(py) {
            Err(os_error(libc::EBADF))
        } else if sockaddr::supported(this.family) {
            this.recv_native(py)
        } else {
            // Other families: the socket module knows their addresses.
            match this.sock(py) {
                Some(s) => s
                    .bind(py)
                    .call_method1(intern!(py, "recvfrom"), (MAX_READ,))
                    .and_then(|r| {
                        let (d, a): (Bound<'_, PyBytes>, Bound<'_, PyAny>) = r.extract()?;
                        Ok(Some((d, a)))
                    }),
                None => Ok(None),
            }
        };
        match res {
            Ok(None) => Ok(()),
            Ok(Some((data, addr))) => {
                let Some(p) = this.protocol(py) else {
                    return Ok(());
                };
                let p = p.bind(py);
                let queued = this.core.get().ready_len(py);
                p.call_method1(intern!(py, "datagram_received"), (data, addr))?;
                // More datagrams in this readiness (one epoll_wait per
                // datagram is most of a busy server's cost), but only while
                // nothing can tell the difference from asyncio's one datagram
                // per iteration: the protocol scheduled no callback (those run
                // before the next datagram in asyncio), did not pause, close
                // or swap itself, and the batch stays short (timers, other fds).
                let core = this.core.get();
                let batch = if sockaddr::supported(this.family) {
                    MAX_BATCH
                } else {
                    1
                };
                for _ in 1..batch {
                    if core.ready_len(py) != queued {
                        break;
                    }
                    {
                        let inner = this.inner.borrow_mut(py);
                        let same = inner.protocol.as_ref().map(|q| q.bind(py).is(p));
                        if inner.conn_lost > 0
                            || inner.closing
                            || inner.paused
                            || same != Some(true)
                        {
                            break;
                        }
                    }
                    if !this.fd_still_ours(py) {
                        break;
                    }
                    match this.recv_native(py) {
                        Ok(Some((data, addr))) => {
                            p.call_method1(intern!(py, "datagram_received"), (data, addr))?;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return match classify(py, e) {
                                Sent::Again | Sent::Done => Ok(()),
                                Sent::OsError(e) => this.error_received(py, e),
                                Sent::Fatal(e) => Self::fatal_error(slf, e, READ_ERROR),
                            };
                        }
                    }
                }
                Ok(())
            }
            Err(e) => match classify(py, e) {
                Sent::Again | Sent::Done => Ok(()),
                Sent::OsError(e) => this.error_received(py, e),
                Sent::Fatal(e) => Self::fatal_error(slf, e, READ_ERROR),
            },
        }
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // SAFETY: type checks on a live object.
        let bytes_like = unsafe {
            ffi::PyBytes_Check(data.as_ptr()) != 0
                || ffi::PyByteArray_Check(data.as_ptr()) != 0
                || ffi::PyMemoryView_Check(data.as_ptr()) != 0
        };
        if !bytes_like {
            let name = data
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{name}'"
            )));
        }
        let len = data.len()?;
        if len == 0 && !this.send_empty {
            return Ok(());
        }
        let mut addr = addr.filter(|a| !a.is_none()).cloned();
        let (fixed, conn_lost, queued) = {
            let inner = this.inner.borrow_mut(py);
            (
                inner.address.as_ref().map(|a| a.clone_ref(py)),
                inner.conn_lost,
                !inner.queue.is_empty(),
            )
        };
        if let Some(fixed) = fixed {
            let fixed = fixed.bind(py);
            if let Some(a) = &addr {
                if !a.is(fixed) && !a.eq(fixed)? {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        fixed.str()?
                    )));
                }
            }
            addr = Some(fixed.clone());
            if conn_lost > 0 {
                if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                    pyhelpers::log_warning(py, "socket.send() raised exception.")?;
                }
                this.inner.borrow_mut(py).conn_lost += 1;
                return Ok(());
            }
        }
        let dest = if this.connected {
            Dest::Peer
        } else {
            match &addr {
                Some(a) => match this.native_dest(py, a) {
                    Some(sa) => Dest::Native(sa),
                    None => Dest::Py(a.clone().unbind()),
                },
                None => Dest::Py(py.None()),
            }
        };
        if !queued {
            // Nothing waits: try to send it right away.
            let outcome = match ByteView::new(data, false) {
                Ok(view) => this.send_one(py, view.as_slice(), &dest, data),
                // The socket module says what it thinks of this buffer.
                Err(_) => {
                    let dest = match (&dest, &addr) {
                        (Dest::Peer, _) => Dest::PySend,
                        (_, Some(a)) => Dest::Py(a.clone().unbind()),
                        (_, None) => Dest::Py(py.None()),
                    };
                    this.send_one(py, &[], &dest, data)
                }
            };
            match outcome {
                Sent::Done => return Ok(()),
                Sent::Again => Self::start_writing(slf)?,
                Sent::OsError(e) => return this.error_received(py, e),
                Sent::Fatal(e) => return Self::fatal_error(slf, e, WRITE_ERROR),
            }
        }
        // Queue an immutable copy (a bytes object is one already).
        let copy = match data.cast::<PyBytes>() {
            Ok(b) if data.is_exact_instance_of::<PyBytes>() => b.clone().unbind(),
            _ => py
                .get_type::<PyBytes>()
                .call1((data,))?
                .cast_into::<PyBytes>()?
                .unbind(),
        };
        {
            let mut inner = this.inner.borrow_mut(py);
            inner.queue.push_back(Queued { data: copy, dest });
            inner.buffer_size += len + this.header;
        }
        Self::flow_control(slf, true)
    }

    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let item = {
                let mut inner = this.inner.borrow_mut(py);
                let Some(item) = inner.queue.pop_front() else {
                    break;
                };
                let n = item.data.bind(py).as_bytes().len();
                inner.buffer_size -= (n + this.header).min(inner.buffer_size);
                item
            };
            let data = item.data.bind(py);
            match this.send_one(py, data.as_bytes(), &item.dest, data.as_any()) {
                Sent::Done => {}
                Sent::Again => {
                    let n = data.as_bytes().len();
                    let mut inner = this.inner.borrow_mut(py);
                    inner.buffer_size += n + this.header;
                    inner.queue.push_front(item);
                    break;
                }
                Sent::OsError(e) => return this.error_received(py, e),
                Sent::Fatal(e) => return Self::fatal_error(slf, e, WRITE_ERROR),
            }
        }
        Self::flow_control(slf, false)?; // may queue more
        let (empty, closing) = {
            let inner = this.inner.borrow_mut(py);
            (inner.queue.is_empty(), inner.closing)
        };
        if empty {
            this.stop_writing(py)?;
            if closing {
                return Self::_call_connection_lost(slf, None);
            }
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let queued = {
            let mut inner = this.inner.borrow_mut(py);
            if inner.closing {
                return Ok(());
            }
            inner.closing = true;
            !inner.queue.is_empty()
        };
        this.core.get().unwatch_fd(py, this.fd, false)?;
        if !queued {
            this.inner.borrow_mut(py).conn_lost += 1;
            this.stop_writing(py)?;
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    #[pyo3(name = "_force_close", signature = (exc=None))]
    fn py_force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let exc = exc.filter(|e| !e.is_none(slf.py()));
        Self::force_close(slf, exc)
    }

    #[pyo3(name = "_fatal_error", signature = (exc, message="Fatal error on transport"))]
    fn py_fatal_error(
        slf: &Bound<'_, Self>,
        exc: &Bound<'_, PyAny>,
        message: &str,
    ) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc.clone()), message)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.inner.borrow_mut(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        let inner = self.inner.borrow_mut(py);
        !inner.closing && !inner.paused
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut inner = self.inner.borrow_mut(py);
            if inner.closing || inner.paused {
                return Ok(());
            }
            inner.paused = true;
        }
        self.core.get().unwatch_fd(py, self.fd, false)?;
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut inner = slf.get().inner.borrow_mut(py);
            if inner.closing || !inner.paused {
                return Ok(());
            }
            inner.paused = false;
        }
        if slf.get().core.get().is_closed_now(py) {
            return Ok(());
        }
        Self::watch_read(slf)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.inner.borrow_mut(py).buffer_size
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        let inner = self.inner.borrow_mut(py);
        (inner.low, inner.high)
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
        Self::flow_control(slf, true)
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

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) {
        let old = self
            .inner
            .borrow_mut(py)
            .protocol
            .replace(protocol.clone().unbind());
        drop(old);
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
        self.sock(py)
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .borrow_mut(py)
            .address
            .as_ref()
            .map(|a| a.clone_ref(py))
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.inner.borrow_mut(py).protocol_paused
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.inner.borrow_mut(py).conn_lost
    }

    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, sock, dropped) = {
            let mut inner = this.inner.borrow_mut(py);
            if inner.sock.is_none() {
                return Ok(());
            }
            inner.closing = true;
            inner.last_from = None;
            inner.last_to = None;
            // Anything sent after abort() can never leave now.
            inner.buffer_size = 0;
            (
                inner.protocol.take(),
                inner.sock.take(),
                std::mem::take(&mut inner.queue),
            )
        };
        drop(dropped);
        let res = transport_common::call_connection_lost(py, protocol.as_ref(), exc);
        // Whatever the protocol did, the socket is closed.
        let core = this.core.get();
        core.unregister_transport(py, this.fd, slf.as_any());
        let _ = core.unwatch_fd(py, this.fd, false);
        this.inner.borrow_mut(py).writing = false;
        let _ = core.unwatch_fd(py, this.fd, true);
        let close_res = match sock {
            Some(s) => s.bind(py).call_method0(intern!(py, "close")).map(|_| ()),
            None => Ok(()),
        };
        res.and(close_res)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let inner = self.inner.borrow_mut(py);
        let mut info = vec!["DatagramTransport".to_string()];
        if inner.sock.is_none() {
            info.push("closed".into());
        } else if inner.closing {
            info.push("closing".into());
        }
        info.push(format!("fd={}", self.fd));
        if inner.sock.is_some() {
            let read = if inner.paused || inner.closing {
                "idle"
            } else {
                "polling"
            };
            info.push(format!("read={read}"));
            let write = if inner.writing { "polling" } else { "idle" };
            info.push(format!("write=<{write}, bufsize={}>", inner.buffer_size));
        }
        format!("<{}>", info.join(" "))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // A Python subclass with a managed __dict__ can be traversed by a GC
        // pass between allocation (zero-filled) and initialisation.
        if crate::gil_cell::is_null_py(&self.loop_obj) {
            return Ok(());
        }
        visit.call(&self.loop_obj)?;
        visit.call(&self.core)?;
        if let Some(inner) = self.inner.try_borrow_mut_in_gc() {
            visit.call(&inner.sock)?;
            visit.call(&inner.protocol)?;
            visit.call(&inner.extra)?;
            visit.call(&inner.address)?;
            for q in &inner.queue {
                visit.call(&q.data)?;
                if let Dest::Py(a) = &q.dest {
                    visit.call(a)?;
                }
            }
            if let Some((_, o)) = &inner.last_from {
                visit.call(o)?;
            }
            if let Some((o, _)) = &inner.last_to {
                visit.call(o)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.inner.try_borrow_mut_in_gc().map(|mut inner| {
            (
                inner.protocol.take(),
                inner.extra.take(),
                inner.address.take(),
                std::mem::take(&mut inner.queue),
                inner.last_from.take(),
                inner.last_to.take(),
            )
        });
        drop(taken);
    }
}

fn native_read_ready(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    DatagramTransport::_read_ready(obj.cast::<DatagramTransport>()?)
}

fn native_sendto_ready(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    DatagramTransport::_sendto_ready(obj.cast::<DatagramTransport>()?)
}
