//! I/O readiness for `add_reader`/`add_writer`: a level-triggered epoll set of
//! our own (the semantics asyncio's selector gives), in which the loop sleeps
//! with tokio's driver fd as a member (or, as a fallback, which tokio's driver
//! watches: src/driver.rs). Fds that only the
//! native sock_* operations (src/sock_ops.rs) use are registered
//! edge-triggered instead and stay registered between waits. Native write-pipe
//! transports may switch their own (Handle-watched) fd to edge-triggered
//! (`set_edge`); that stays Handle mode, dispatched as callbacks.

use crate::handles::Handle;
use crate::sock_ops::Waiter;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub const MAX_EVENTS: usize = 256;

/// The loop's own epoll set. The descriptor can be closed early by
/// `loop.close()` (the stdlib releases its selector there) while Arcs to this
/// object still exist; afterwards every call fails harmlessly with EBADF.
pub struct EpollFd {
    fd: AtomicI32,
    /// The set holds nothing ready that would not wake tokio by itself, as
    /// far as the loop knows: set by the run loop after a poll (see
    /// CoreLoop::block), cleared by any registration change. An epoll_ctl on
    /// an fd that is ready while its entry still sits on the set's ready list
    /// (level-triggered entries stay there after being reported) does not
    /// notify the epoll set that watches ours, so tokio would not wake for it.
    settled: AtomicBool,
}

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.load(Ordering::Acquire)
    }
}

impl Drop for EpollFd {
    fn drop(&mut self) {
        self.close();
    }
}

impl EpollFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EpollFd {
            fd: AtomicI32::new(fd),
            settled: AtomicBool::new(false),
        })
    }

    pub fn close(&self) {
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: we owned `fd` and nobody else can see it any more.
            unsafe { libc::close(fd) };
        }
    }

    /// Non-blocking harvest of ready fds into `buf`; returns how many.
    pub fn wait_now(&self, buf: &mut [libc::epoll_event]) -> usize {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` events.
            let n = unsafe {
                libc::epoll_wait(self.as_raw_fd(), buf.as_mut_ptr(), buf.len() as i32, 0)
            };
            if n >= 0 {
                return n as usize;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return 0;
            }
        }
    }

    /// Blocking harvest (`timeout_ms` -1: no limit). A signal ends the wait
    /// with 0 events, so the run loop gets to run Python's signal handlers.
    pub fn wait(&self, buf: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: `buf` is valid for `buf.len()` events.
        let n = unsafe {
            libc::epoll_wait(
                self.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len() as i32,
                timeout_ms,
            )
        };
        n.max(0) as usize
    }

    /// Adds a descriptor under a token of its own (not its fd number), level-triggered.
    pub fn add_token(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    pub fn set_settled(&self, settled: bool) {
        self.settled.store(settled, Ordering::Relaxed);
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
        self.set_settled(false);
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[derive(Default)]
struct Interest {
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
    // The objects given to add_reader/add_writer, so a socket closed since can
    // still be found by identity (selectors does the same).
    reader_obj: Option<Py<PyAny>>,
    writer_obj: Option<Py<PyAny>>,
    // Internal fds (the signal wake-up socket) that have no Python handle.
    internal: bool,
    // Native sock_recv/sock_sendall waiters (src/sock_ops.rs). A reader Handle
    // and a native reader exclude each other, as asyncio's sock_recv (an
    // add_reader underneath) and a user's add_reader replace each other.
    native_r: Option<Waiter>,
    native_w: Option<Waiter>,
    // What the kernel's epoll set holds for this fd (0: not registered). With
    // Handles (or the internal flag) it is asyncio's level-triggered mask;
    // with only native waiters it is EPOLLIN|EPOLLOUT|EPOLLET, kept between
    // waits (see `native_mode`).
    registered: u32,
    // Edge-triggered registration: wanted even while no native waiter is
    // pending, until a remove_reader/remove_writer or a Handle takes over.
    keep_native: bool,
    // Readiness as last seen (edge-triggered mode only): set by an event,
    // cleared when a syscall said EAGAIN (or a stream read/write came back
    // short). False means "an edge will be reported when this changes".
    rd_ready: bool,
    wr_ready: bool,
    // A hang-up, error or peer shutdown was reported: final states (a read
    // returns EOF/the error at once from now on) that no further edge announces,
    // so a short read must not mark the fd "not ready" any more.
    rd_final: bool,
    wr_final: bool,
    // Weak reference to the socket object the edge-triggered registration
    // was made for: a different object means the fd may have been closed and
    // reused since, so the registration is verified (MOD, else ADD).
    owner: Option<Py<PyAny>>,
    // SOCK_STREAM: a short read/write means the kernel buffer was drained/filled.
    stream: bool,
    // Edge-triggered Handle mode (EPOLLET with reader/writer Handles): only
    // native pipe transports ask for it (`set_edge`).
    edge: bool,
    // The reader's (writer's) callback leaves the fd drained or says it may
    // not have (stream transports; see EpollFd::settled).
    reader_drains: bool,
    writer_drains: bool,
}

const ET_MASK: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
const FINAL_R: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const FINAL_W: u32 = (libc::EPOLLHUP | libc::EPOLLERR) as u32;

impl Interest {
    fn has_handles(&self) -> bool {
        self.reader.is_some() || self.writer.is_some() || self.internal
    }

    /// Registered edge-triggered for native waiters only (an edge-triggered fd
    /// with Handles, see `set_edge`, is dispatched as callbacks).
    fn native_mode(&self) -> bool {
        self.registered & libc::EPOLLET as u32 != 0 && !self.has_handles()
    }

    fn mask(&self) -> u32 {
        let mut m = 0u32;
        if self.reader.is_some() || self.internal || self.native_r.is_some() {
            // RDHUP: an event tells when a peer's FIN came with the data,
            // which a short read then leaves behind (see EpollFd::settled).
            m |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if self.writer.is_some() || self.native_w.is_some() {
            m |= libc::EPOLLOUT as u32;
        }
        if m != 0 && self.edge {
            m |= libc::EPOLLET as u32;
        }
        m
    }

    /// The registration this entry should have in the kernel.
    fn desired(&self) -> u32 {
        if self.has_handles() {
            self.mask()
        } else if self.native_r.is_some() || self.native_w.is_some() || self.keep_native {
            ET_MASK
        } else {
            0
        }
    }

    fn is_unused(&self) -> bool {
        self.registered == 0
            && !self.has_handles()
            && self.native_r.is_none()
            && self.native_w.is_none()
            && self.reader_obj.is_none()
            && self.writer_obj.is_none()
    }
}

pub enum Ready {
    Callback(Py<Handle>),
    /// A reader whose handle was cancelled: asyncio unregisters it on sight.
    StaleReader(RawFd),
    StaleWriter(RawFd),
    Internal(RawFd),
    /// A native sock_* waiter whose fd became ready (taken out of the poller;
    /// src/sock_ops.rs completes it or puts it back).
    Native(NativeReady),
}

pub struct NativeReady {
    pub fd: RawFd,
    pub write: bool,
    /// SOCK_STREAM (see Interest::stream).
    pub stream: bool,
    pub waiter: Waiter,
}

/// What `install_native` displaced: asyncio cancels the handle a new reader
/// (writer) replaces; a replaced native waiter's future is left pending, as
/// the stdlib leaves the future of a replaced sock_recv.
pub struct Displaced {
    pub handle: Option<Py<Handle>>,
    pub waiter: Option<Waiter>,
}

/// Readiness known for an fd registered edge-triggered for `owner`.
pub struct NativeState {
    pub rd_ready: bool,
    pub wr_ready: bool,
}

/// Hashes an fd by multiplication: fds are small distinct integers, and
/// SipHash showed up in profiles of the sock_* hot path.
#[derive(Default)]
pub struct FdHasher(u64);

impl std::hash::Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i32(&mut self, n: i32) {
        self.0 = (n as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FdMap<V> = HashMap<RawFd, V, std::hash::BuildHasherDefault<FdHasher>>;

pub struct Poller {
    pub epoll: std::sync::Arc<EpollFd>,
    fds: FdMap<Interest>,
    internal_count: usize,
}

/// Everything `take_all`/`forget_all` removed, dropped by the caller once no
/// borrow of the loop state is alive.
pub struct Taken {
    pub handles: Vec<Py<Handle>>,
    pub waiters: Vec<Waiter>,
    pub objects: Vec<Py<PyAny>>,
}

impl Poller {
    pub fn new(epoll: std::sync::Arc<EpollFd>) -> Self {
        Poller {
            epoll,
            fds: FdMap::default(),
            internal_count: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Whether any fd other than our own wake-up socket is watched.
    pub fn has_user_fds(&self) -> bool {
        self.fds.len() > self.internal_count
    }

    /// Brings the kernel's registration of `fd` in line with `desired()`.
    /// `verify`: issue the call even if our record says nothing changes (the
    /// record may be stale: the fd may have been closed and reused).
    fn sync(&mut self, fd: RawFd, verify: bool) -> io::Result<()> {
        let Some(entry) = self.fds.get_mut(&fd) else {
            return Ok(());
        };
        let want = entry.desired();
        let have = entry.registered;
        let res = if want == have && !(verify && want != 0) {
            Ok(())
        } else if want == 0 {
            match self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0) {
                // The fd was closed under us; the kernel already forgot it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF)) => {
                    Ok(())
                }
                r => r,
            }
        } else if have == 0 {
            match self.epoll.ctl(libc::EPOLL_CTL_ADD, fd, want) {
                // A closed-and-reused fd number may still be known to the kernel.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, want)
                }
                r => r,
            }
        } else {
            match self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, want) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.epoll.ctl(libc::EPOLL_CTL_ADD, fd, want)
                }
                r => r,
            }
        };
        match res {
            Ok(()) => {
                if want & libc::EPOLLET as u32 != 0 && (have != want || verify) {
                    // A fresh edge-triggered registration: nothing known yet
                    // (the kernel reports the current state as a first event).
                    entry.rd_ready = true;
                    entry.wr_ready = true;
                    entry.rd_final = false;
                    entry.wr_final = false;
                }
                entry.registered = want;
            }
            Err(_) if want == 0 => entry.registered = 0,
            Err(_) => {}
        }
        if entry.registered == 0 {
            entry.owner = None;
        }
        if entry.is_unused() {
            self.fds.remove(&fd);
        }
        res
    }

    /// Installs `handle` as the reader (or writer) of `fd`, returning the one it replaces.
    pub fn set(
        &mut self,
        fd: RawFd,
        handle: Py<Handle>,
        write: bool,
        drains: bool,
    ) -> io::Result<Option<Py<Handle>>> {
        let entry = self.fds.entry(fd).or_default();
        if write {
            entry.writer_drains = drains;
        } else {
            entry.reader_drains = drains;
        }
        // A registration kept only for native waiters may be stale (fd reused).
        let verify = !entry.has_handles();
        let slot = if write {
            &mut entry.writer
        } else {
            &mut entry.reader
        };
        let previous = slot.replace(handle);
        // The handle takes over from a native waiter of the same direction.
        let native = if write {
            entry.native_w.take()
        } else {
            entry.native_r.take()
        };
        entry.keep_native = false;
        match self.sync(fd, verify) {
            Ok(()) => {
                drop(native);
                Ok(previous)
            }
            Err(e) => {
                if let Some(entry) = self.fds.get_mut(&fd) {
                    let slot = if write {
                        &mut entry.writer
                    } else {
                        &mut entry.reader
                    };
                    *slot = previous;
                    if write {
                        entry.native_w = native;
                    } else {
                        entry.native_r = native;
                    }
                }
                let _ = self.sync(fd, false);
                Err(e)
            }
        }
    }

    /// Removes the reader (or writer) of `fd`, returning it if there was one.
    pub fn clear(&mut self, fd: RawFd, write: bool) -> Option<Py<Handle>> {
        let entry = self.fds.get_mut(&fd)?;
        if write {
            entry.writer_obj = None;
        } else {
            entry.reader_obj = None;
        }
        let slot = if write {
            &mut entry.writer
        } else {
            &mut entry.reader
        };
        let previous = slot.take();
        if previous.is_none() {
            if entry.is_unused() {
                self.fds.remove(&fd);
            }
            return None;
        }
        let _ = self.sync(fd, false);
        previous
    }

    /// The user's remove_reader/remove_writer: also drops a native waiter of
    /// that direction (the stdlib's sock_recv is an add_reader, which
    /// remove_reader cancels), and forgets a registration kept for native
    /// waiters, so a caller that unregisters before closing leaves nothing
    /// behind in the kernel. Returns the handle and whether a waiter was dropped.
    pub fn clear_user(&mut self, fd: RawFd, write: bool) -> (Option<Py<Handle>>, Option<Waiter>) {
        let Some(entry) = self.fds.get_mut(&fd) else {
            return (None, None);
        };
        let waiter = if write {
            entry.native_w.take()
        } else {
            entry.native_r.take()
        };
        entry.keep_native = false;
        let handle = self.clear(fd, write);
        let _ = self.sync(fd, false);
        (handle, waiter)
    }

    /// Makes a watched fd edge-triggered (or level-triggered again). The flag
    /// goes with the registration: once the fd is no longer watched at all it
    /// is forgotten.
    pub fn set_edge(&mut self, fd: RawFd, edge: bool) -> io::Result<()> {
        let Some(entry) = self.fds.get_mut(&fd) else {
            return Ok(());
        };
        if entry.edge == edge {
            return Ok(());
        }
        entry.edge = edge;
        self.sync(fd, false)
    }

    pub fn get(&self, py: Python<'_>, fd: RawFd, write: bool) -> Option<Py<Handle>> {
        let entry = self.fds.get(&fd)?;
        let slot = if write { &entry.writer } else { &entry.reader };
        slot.as_ref().map(|h| h.clone_ref(py))
    }

    pub fn add_internal(&mut self, fd: RawFd) -> io::Result<()> {
        let entry = self.fds.entry(fd).or_default();
        let verify = !entry.has_handles();
        if !entry.internal {
            entry.internal = true;
            self.internal_count += 1;
        }
        let res = self.sync(fd, verify);
        if res.is_err() {
            if let Some(entry) = self.fds.get_mut(&fd) {
                if entry.internal {
                    entry.internal = false;
                    self.internal_count -= 1;
                }
            }
            let _ = self.sync(fd, false);
        }
        res
    }

    pub fn remove_internal(&mut self, fd: RawFd) {
        if let Some(entry) = self.fds.get_mut(&fd) {
            if entry.internal {
                entry.internal = false;
                self.internal_count -= 1;
            }
            let _ = self.sync(fd, false);
        }
    }

    // ---- native waiters (src/sock_ops.rs) ----

    /// Readiness of `fd` if it is registered edge-triggered for exactly
    /// `sock` (so the record can be trusted); None otherwise.
    pub fn native_state(
        &self,
        py: Python<'_>,
        fd: RawFd,
        sock: &Bound<'_, PyAny>,
    ) -> Option<NativeState> {
        let entry = self.fds.get(&fd)?;
        if !entry.native_mode() {
            return None;
        }
        let owner = entry.owner.as_ref()?;
        if !is_owner(py, owner, sock) {
            return None;
        }
        Some(NativeState {
            rd_ready: entry.rd_ready,
            wr_ready: entry.wr_ready,
        })
    }

    /// Records what a syscall on `fd` learnt: the direction is not ready (an
    /// edge will tell when it becomes so).
    pub fn note_not_ready(&mut self, fd: RawFd, write: bool) {
        if let Some(entry) = self.fds.get_mut(&fd) {
            if write {
                entry.wr_ready = entry.wr_final;
            } else {
                entry.rd_ready = entry.rd_final;
            }
        }
    }

    /// Whether the fd's socket is known to be a stream socket.
    pub fn is_stream(&self, fd: RawFd) -> bool {
        self.fds.get(&fd).map(|e| e.stream).unwrap_or(false)
    }

    /// Makes `waiter` the native reader (writer) of `fd`, registering the fd
    /// edge-triggered (or in asyncio's mask if Handles share it). `sock`: the
    /// socket object (None when putting back a waiter that found EAGAIN).
    pub fn install_native(
        &mut self,
        py: Python<'_>,
        fd: RawFd,
        waiter: Waiter,
        write: bool,
        sock: Option<&Bound<'_, PyAny>>,
    ) -> Result<Displaced, (io::Error, Waiter)> {
        let entry = self.fds.entry(fd).or_default();
        let mut verify = false;
        if let Some(sock) = sock {
            let same = entry
                .owner
                .as_ref()
                .map(|o| is_owner(py, o, sock))
                .unwrap_or(false);
            if !same {
                verify = true;
                entry.owner = pyo3::types::PyWeakrefReference::new(sock)
                    .ok()
                    .map(|w| w.into_any().unbind());
                entry.stream = sock_is_stream(fd);
            }
        } else if entry.registered == 0 {
            verify = true;
        }
        let (handle, obj) = if write {
            (entry.writer.take(), entry.writer_obj.take())
        } else {
            (entry.reader.take(), entry.reader_obj.take())
        };
        drop(obj);
        let slot = if write {
            &mut entry.native_w
        } else {
            &mut entry.native_r
        };
        let old = slot.replace(waiter);
        entry.keep_native = true;
        match self.sync(fd, verify) {
            Ok(()) => Ok(Displaced {
                handle,
                waiter: old,
            }),
            Err(e) => {
                let mut back = None;
                if let Some(entry) = self.fds.get_mut(&fd) {
                    let slot = if write {
                        &mut entry.native_w
                    } else {
                        &mut entry.native_r
                    };
                    back = std::mem::replace(slot, old);
                    if write {
                        entry.writer = handle;
                    } else {
                        entry.reader = handle;
                    }
                    entry.keep_native = false;
                }
                let _ = self.sync(fd, false);
                match back {
                    Some(w) => Err((e, w)),
                    // Cannot happen: the slot held our waiter.
                    None => Ok(Displaced {
                        handle: None,
                        waiter: None,
                    }),
                }
            }
        }
    }

    /// A native waiter taken out by `dispatch` finished (or was dropped): in
    /// asyncio's level-triggered mode the interest goes (as the stdlib's
    /// sock_recv removes its reader); edge-triggered registrations stay.
    pub fn native_done(&mut self, fd: RawFd) {
        let _ = self.sync(fd, false);
    }

    /// Drops the native waiter of `fd` whose future is `fut` (a cancelled
    /// sock_* call). With `fd` None (socket closed since), searches all fds.
    pub fn cancel_native(
        &mut self,
        py: Python<'_>,
        fd: Option<RawFd>,
        fut: &Bound<'_, PyAny>,
    ) -> Vec<Waiter> {
        let mut out = Vec::new();
        let mut touched = Vec::new();
        let mut check = |fd: RawFd, entry: &mut Interest| {
            for slot in [&mut entry.native_r, &mut entry.native_w] {
                if slot
                    .as_ref()
                    .map(|w| w.fut.bind(py).is(fut))
                    .unwrap_or(false)
                {
                    out.extend(slot.take());
                    touched.push(fd);
                }
            }
        };
        match fd {
            Some(fd) => {
                if let Some(entry) = self.fds.get_mut(&fd) {
                    check(fd, entry);
                }
            }
            None => {
                for (fd, entry) in self.fds.iter_mut() {
                    check(*fd, entry);
                }
            }
        }
        for fd in touched {
            let _ = self.sync(fd, false);
        }
        out
    }

    /// Translates raw epoll events into work for the loop (`out`). An error or
    /// hang-up wakes both directions, as selectors.EpollSelector reports it.
    ///
    /// Returns whether every event leaves its fd with nothing that would not
    /// wake tokio again once handled (see EpollFd::settled): plain IN/OUT
    /// readiness only (a hang-up, error or peer shutdown outlives a read of
    /// the data) of our internal fds, edge-triggered fds, or callbacks that
    /// drain.
    pub fn dispatch(
        &mut self,
        py: Python<'_>,
        events: &[libc::epoll_event],
        out: &mut Vec<Ready>,
    ) -> bool {
        let mut drained = true;
        for ev in events {
            let fd = ev.u64 as RawFd;
            let Some(interest) = self.fds.get_mut(&fd) else {
                continue;
            };
            let bits = ev.events;
            let readable = bits & !(libc::EPOLLOUT as u32) != 0;
            let writable = bits & !(libc::EPOLLIN as u32) != 0;
            drained &= bits & !((libc::EPOLLIN | libc::EPOLLOUT) as u32) == 0
                && (interest.internal
                    || interest.registered & libc::EPOLLET as u32 != 0
                    || ((!readable || interest.reader_drains)
                        && (!writable || interest.writer_drains)));
            if interest.native_mode() {
                if bits & FINAL_R != 0 {
                    interest.rd_final = true;
                }
                if bits & FINAL_W != 0 {
                    interest.wr_final = true;
                }
                if readable {
                    interest.rd_ready = true;
                    if let Some(waiter) = interest.native_r.take() {
                        out.push(Ready::Native(NativeReady {
                            fd,
                            write: false,
                            stream: interest.stream,
                            waiter,
                        }));
                    }
                }
                // A peer's shutdown (EPOLLRDHUP alone) says nothing about writing.
                if bits & (libc::EPOLLOUT as u32 | FINAL_W) != 0 {
                    interest.wr_ready = true;
                    if let Some(waiter) = interest.native_w.take() {
                        out.push(Ready::Native(NativeReady {
                            fd,
                            write: true,
                            stream: interest.stream,
                            waiter,
                        }));
                    }
                }
                continue;
            }
            if interest.internal && readable {
                out.push(Ready::Internal(fd));
            }
            if readable {
                if let Some(r) = &interest.reader {
                    if r.get().is_cancelled(py) {
                        out.push(Ready::StaleReader(fd));
                    } else {
                        out.push(Ready::Callback(r.clone_ref(py)));
                    }
                } else if let Some(waiter) = interest.native_r.take() {
                    out.push(Ready::Native(NativeReady {
                        fd,
                        write: false,
                        stream: interest.stream,
                        waiter,
                    }));
                }
            }
            if writable {
                if let Some(w) = &interest.writer {
                    if w.get().is_cancelled(py) {
                        out.push(Ready::StaleWriter(fd));
                    } else {
                        out.push(Ready::Callback(w.clone_ref(py)));
                    }
                } else if let Some(waiter) = interest.native_w.take() {
                    out.push(Ready::Native(NativeReady {
                        fd,
                        write: true,
                        stream: interest.stream,
                        waiter,
                    }));
                }
            }
        }
        drained
    }

    /// Remembers which Python object a registration was made with.
    pub fn set_fileobj(&mut self, fd: RawFd, obj: Option<Py<PyAny>>, write: bool) {
        if let Some(entry) = self.fds.get_mut(&fd) {
            if write {
                entry.writer_obj = obj;
            } else {
                entry.reader_obj = obj;
            }
        }
    }

    /// The fd registered with exactly this object (e.g. a socket closed since).
    pub fn fd_of_object(&self, obj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.fds.iter().find_map(|(fd, i)| {
            let hit = |o: &Option<Py<PyAny>>| {
                o.as_ref()
                    .map(|o| o.bind(obj.py()).is(obj))
                    .unwrap_or(false)
            };
            if hit(&i.reader_obj) || hit(&i.writer_obj) {
                Some(*fd)
            } else {
                None
            }
        })
    }

    fn drain_into(&mut self, out: &mut Taken, deregister: bool) {
        self.internal_count = 0;
        for (fd, i) in self.fds.drain() {
            if deregister && i.registered != 0 {
                let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0);
            }
            out.handles.extend(i.reader);
            out.handles.extend(i.writer);
            out.waiters.extend(i.native_r);
            out.waiters.extend(i.native_w);
            out.objects.extend(i.reader_obj);
            out.objects.extend(i.writer_obj);
            out.objects.extend(i.owner);
        }
    }

    /// Like take_all, but without touching the kernel's epoll set: in a forked
    /// child that set is shared with the parent, which still uses it.
    pub fn forget_all(&mut self) -> Taken {
        let mut out = Taken {
            handles: Vec::new(),
            waiters: Vec::new(),
            objects: Vec::new(),
        };
        self.drain_into(&mut out, false);
        out
    }

    pub fn take_all(&mut self) -> Taken {
        let mut out = Taken {
            handles: Vec::new(),
            waiters: Vec::new(),
            objects: Vec::new(),
        };
        self.drain_into(&mut out, true);
        out
    }
}

fn is_owner(py: Python<'_>, owner: &Py<PyAny>, sock: &Bound<'_, PyAny>) -> bool {
    use pyo3::types::PyWeakrefMethods;
    // SAFETY: `owner` is only ever set from PyWeakrefReference::new.
    let weak = unsafe {
        owner
            .bind(py)
            .cast_unchecked::<pyo3::types::PyWeakrefReference>()
    };
    weak.upgrade().map(|o| o.is(sock)).unwrap_or(false)
}

fn sock_is_stream(fd: RawFd) -> bool {
    crate::sock_ops::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
}

impl Poller {
    pub fn traverse(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for i in self.fds.values() {
            visit.call(&i.reader)?;
            visit.call(&i.writer)?;
            visit.call(&i.reader_obj)?;
            visit.call(&i.writer_obj)?;
            visit.call(&i.owner)?;
            for w in [&i.native_r, &i.native_w].into_iter().flatten() {
                w.traverse(visit)?;
            }
        }
        Ok(())
    }
}
