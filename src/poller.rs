//! I/O readiness for `add_reader`/`add_writer`: a level-triggered epoll set of
//! our own (the semantics asyncio's selector gives), whose fd is in turn watched
//! by the tokio runtime's driver while the loop sleeps. Native write-pipe
//! transports may switch their own fd to edge-triggered (`set_edge`).

use crate::handles::Handle;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

pub const MAX_EVENTS: usize = 256;

/// The loop's own epoll set. The descriptor can be closed early by
/// `loop.close()` (the stdlib releases its selector there) while Arcs to this
/// object still exist; afterwards every call fails harmlessly with EBADF.
pub struct EpollFd(AtomicI32);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.load(Ordering::Acquire)
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
        Ok(EpollFd(AtomicI32::new(fd)))
    }

    pub fn close(&self) {
        let fd = self.0.swap(-1, Ordering::AcqRel);
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

    fn ctl(&self, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
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
    // Edge-triggered (EPOLLET): only native pipe transports ask for it.
    edge: bool,
}

impl Interest {
    fn mask(&self) -> u32 {
        let mut m = 0u32;
        if self.reader.is_some() || self.internal {
            m |= libc::EPOLLIN as u32;
        }
        if self.writer.is_some() {
            m |= libc::EPOLLOUT as u32;
        }
        if m != 0 && self.edge {
            m |= libc::EPOLLET as u32;
        }
        m
    }
}

pub enum Ready {
    Callback(Py<Handle>),
    /// A reader whose handle was cancelled: asyncio unregisters it on sight.
    StaleReader(RawFd),
    StaleWriter(RawFd),
    Internal(RawFd),
}

pub struct Poller {
    pub epoll: std::sync::Arc<EpollFd>,
    fds: HashMap<RawFd, Interest>,
    internal_count: usize,
}

impl Poller {
    pub fn new(epoll: std::sync::Arc<EpollFd>) -> Self {
        Poller {
            epoll,
            fds: HashMap::new(),
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

    fn apply(&mut self, fd: RawFd, old_mask: u32) -> io::Result<()> {
        let new_mask = self.fds.get(&fd).map(|i| i.mask()).unwrap_or(0);
        let res = if new_mask == 0 {
            self.fds.remove(&fd);
            match self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0) {
                // The fd was closed under us; the kernel already forgot it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF)) => {
                    Ok(())
                }
                r => r,
            }
        } else if old_mask == 0 {
            match self.epoll.ctl(libc::EPOLL_CTL_ADD, fd, new_mask) {
                // A closed-and-reused fd number may still be known to us as a stale entry.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, new_mask)
                }
                r => r,
            }
        } else {
            match self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, new_mask) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.epoll.ctl(libc::EPOLL_CTL_ADD, fd, new_mask)
                }
                r => r,
            }
        };
        if res.is_err() && old_mask == 0 {
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
    ) -> io::Result<Option<Py<Handle>>> {
        let entry = self.fds.entry(fd).or_default();
        let old_mask = entry.mask();
        let slot = if write {
            &mut entry.writer
        } else {
            &mut entry.reader
        };
        let previous = slot.replace(handle);
        match self.apply(fd, old_mask) {
            Ok(()) => Ok(previous),
            Err(e) => {
                if let Some(entry) = self.fds.get_mut(&fd) {
                    let slot = if write {
                        &mut entry.writer
                    } else {
                        &mut entry.reader
                    };
                    *slot = previous;
                }
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
        let old_mask = entry.mask();
        let slot = if write {
            &mut entry.writer
        } else {
            &mut entry.reader
        };
        let previous = slot.take()?;
        let _ = self.apply(fd, old_mask);
        Some(previous)
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
        let old_mask = entry.mask();
        entry.edge = edge;
        self.apply(fd, old_mask)
    }

    pub fn get(&self, py: Python<'_>, fd: RawFd, write: bool) -> Option<Py<Handle>> {
        let entry = self.fds.get(&fd)?;
        let slot = if write { &entry.writer } else { &entry.reader };
        slot.as_ref().map(|h| h.clone_ref(py))
    }

    pub fn add_internal(&mut self, fd: RawFd) -> io::Result<()> {
        let entry = self.fds.entry(fd).or_default();
        let old_mask = entry.mask();
        if !entry.internal {
            entry.internal = true;
            self.internal_count += 1;
        }
        self.apply(fd, old_mask)
    }

    pub fn remove_internal(&mut self, fd: RawFd) {
        if let Some(entry) = self.fds.get_mut(&fd) {
            let old_mask = entry.mask();
            if entry.internal {
                entry.internal = false;
                self.internal_count -= 1;
            }
            let _ = self.apply(fd, old_mask);
        }
    }

    /// Translates raw epoll events into work for the loop. An error or hang-up
    /// wakes both directions, as selectors.EpollSelector reports it.
    pub fn dispatch(&self, py: Python<'_>, events: &[libc::epoll_event], out: &mut Vec<Ready>) {
        for ev in events {
            let fd = ev.u64 as RawFd;
            let Some(interest) = self.fds.get(&fd) else {
                continue;
            };
            let bits = ev.events;
            let readable = bits & !(libc::EPOLLOUT as u32) != 0;
            let writable = bits & !(libc::EPOLLIN as u32) != 0;
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
                }
            }
            if writable {
                if let Some(w) = &interest.writer {
                    if w.get().is_cancelled(py) {
                        out.push(Ready::StaleWriter(fd));
                    } else {
                        out.push(Ready::Callback(w.clone_ref(py)));
                    }
                }
            }
        }
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

    /// Like take_all, but without touching the kernel's epoll set: in a forked
    /// child that set is shared with the parent, which still uses it.
    pub fn forget_all(&mut self) -> Vec<Py<Handle>> {
        self.internal_count = 0;
        let mut out = Vec::new();
        for (_, i) in self.fds.drain() {
            out.extend(i.reader);
            out.extend(i.writer);
        }
        out
    }

    pub fn take_all(&mut self) -> Vec<Py<Handle>> {
        let mut out = Vec::new();
        self.internal_count = 0;
        for (fd, i) in self.fds.drain() {
            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0);
            out.extend(i.reader);
            out.extend(i.writer);
        }
        out
    }
}

impl Poller {
    pub fn traverse(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for i in self.fds.values() {
            visit.call(&i.reader)?;
            visit.call(&i.writer)?;
            visit.call(&i.reader_obj)?;
            visit.call(&i.writer_obj)?;
        }
        Ok(())
    }
}
