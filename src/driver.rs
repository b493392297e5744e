//! The tokio side of a loop: its current-thread runtime and how the parked
//! loop waits on it.
//!
//! Two arrangements of the two epoll sets (ours, which holds every fd the
//! loop watches, and the one inside tokio's I/O driver, which holds tokio's
//! wake-up eventfd):
//!
//! - Driver inside our set (`WaitMode::DriverInside`, the default): the
//!   loop sleeps in `epoll_wait` on OUR set, in which the driver's epoll fd is
//!   one member. A wake-up from another thread goes through the runtime's
//!   waker, which writes tokio's eventfd; the driver's set turns readable,
//!   and so ours returns; the loop then gives the runtime its turn
//!   (`Driver::turn`, a `block_on` that lets the driver consume the event).
//!   An I/O event costs one `epoll_wait` and no runtime entry: the nested
//!   arrangement below costs a second `epoll_wait` and a `block_on` per
//!   wake-up (~0.3-0.4 µs per request of an echo server at one event per
//!   wake-up, measured in benchmarks/nested_epoll.c and with callgrind).
//! - Nested (`WaitMode::Nested`, the fallback): our set is registered in the
//!   driver with an `AsyncFd`, and the loop parks in `Runtime::block_on`.
//!   Used when the driver's epoll fd cannot be identified, without a timerfd
//!   (tokio's timer then bounds the wait), or with `TOKIOLOOP_NESTED_WAIT=1`.
//!
//! tokio does not expose its driver's fd, so it is found by behaviour: our
//! set is registered in the driver, and the one `eventpoll` fd of the process
//! whose `/proc/self/fdinfo` lists our set's inode as a target is the
//! driver's. Anything unexpected falls back to the nested arrangement.

use crate::poller::EpollFd;
use crate::remote::Remote;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The `epoll_event.u64` of the driver's fd in our set: no fd has this value
/// (fds are registered with their own number), so the poller never confuses it.
pub const DRIVER_TOKEN: u64 = u64::MAX;

pub struct SharedEpoll(pub Arc<EpollFd>);
impl AsRawFd for SharedEpoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

enum WaitMode {
    /// The driver's epoll fd is a member of our set.
    DriverInside,
    /// Our set is registered in the driver.
    Nested(AsyncFd<SharedEpoll>),
}

pub struct Driver {
    // Declared before `rt` so an AsyncFd deregisters while the runtime is alive.
    mode: WaitMode,
    rt: tokio::runtime::Runtime,
    /// The runtime has tokio's timer: only when no timerfd could be made
    /// (the timer costs every park a clock read and a timer-wheel pass).
    has_time: bool,
}

impl Driver {
    /// Builds the runtime and joins it with `epoll` (see the module comment).
    pub fn new(epoll: &Arc<EpollFd>, has_time: bool, remote: &Remote) -> std::io::Result<Driver> {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_io();
        if has_time {
            builder.enable_time();
        }
        let rt = builder.build()?;
        let watch = watch_in_driver(&rt, epoll)?;
        let nested_forced = std::env::var_os("TOKIOLOOP_NESTED_WAIT").is_some_and(|v| v == "1");
        let inner = if has_time || nested_forced {
            None
        } else {
            find_driver_fd(&rt, epoll.as_raw_fd())
        };
        let Some(driver_fd) = inner else {
            return Ok(Driver {
                mode: WaitMode::Nested(watch),
                rt,
                has_time,
            });
        };
        // Undo the probe registration first: the kernel refuses a cycle of sets.
        drop(watch);
        if epoll
            .add_token(driver_fd, libc::EPOLLIN as u32, DRIVER_TOKEN)
            .is_err()
        {
            return Ok(Driver {
                mode: WaitMode::Nested(watch_in_driver(&rt, epoll)?),
                rt,
                has_time,
            });
        }
        // Cross-thread wake-ups use the runtime's block_on waker, which stays
        // valid (and unparks the driver) between block_on calls.
        rt.block_on(std::future::poll_fn(|cx| {
            remote.register(cx.waker());
            Poll::Ready(())
        }));
        Ok(Driver {
            mode: WaitMode::DriverInside,
            rt,
            has_time,
        })
    }

    /// "driver inside" or "nested" (tests and diagnostics).
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            WaitMode::DriverInside => "driver inside",
            WaitMode::Nested(_) => "nested",
        }
    }

    pub fn driver_inside(&self) -> bool {
        matches!(self.mode, WaitMode::DriverInside)
    }

    /// Waits, GIL released by the caller, until our set has events, a
    /// wake-up from another thread arrived or `timeout` passed. Returns how
    /// many events landed in `buf` (with the driver inside, one of them may
    /// be DRIVER_TOKEN: see `take_driver_event`).
    pub fn park(
        &self,
        epoll: &EpollFd,
        buf: &mut [libc::epoll_event],
        remote: &Remote,
        timeout: Option<Duration>,
    ) -> usize {
        match &self.mode {
            WaitMode::DriverInside => {
                let ms = match timeout {
                    // Rounded up: an early return would only spin once more.
                    Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
                    None => -1,
                };
                epoll.wait(buf, ms)
            }
            WaitMode::Nested(watch) => {
                let sleep = timeout.filter(|_| self.has_time);
                self.rt.block_on(async move {
                    let wait = Wait {
                        watch,
                        epoll,
                        buf,
                        remote,
                        sleep: sleep.map(|d| Box::pin(tokio::time::sleep(d))),
                        known_empty: true,
                    };
                    wait.await
                })
            }
        }
    }

    /// With the driver inside: removes the driver's event from the first `n`
    /// of `buf` and, if there was one, lets the runtime consume what woke it
    /// (else the driver's set stays readable and every wait returns at once).
    /// Returns how many events are left for the poller.
    pub fn take_driver_event(&self, buf: &mut [libc::epoll_event], n: usize) -> usize {
        if !self.driver_inside() {
            return n;
        }
        let Some(i) = buf[..n].iter().position(|ev| ev.u64 == DRIVER_TOKEN) else {
            return n;
        };
        buf[i] = buf[n - 1];
        turn(&self.rt);
        n - 1
    }
}

/// Registers our epoll set in the runtime's driver (the nested wait, and the
/// probe that finds the driver's fd).
fn watch_in_driver(
    rt: &tokio::runtime::Runtime,
    epoll: &Arc<EpollFd>,
) -> std::io::Result<AsyncFd<SharedEpoll>> {
    let _guard = rt.enter();
    // SAFETY: the epoll fd is owned by the Arc inside, so it stays open and
    // unchanged for as long as this registration lives.
    let fd =
        unsafe { AsyncFd::register_with_interest(SharedEpoll(epoll.clone()), Interest::READABLE) }?;
    Ok(fd)
}

/// The driver's epoll fd, `registered` being registered in it: of the
/// candidates from /proc, the one that turns readable when the runtime's
/// waker fires and quiet again after the runtime's turn, twice over (a set
/// of another process sharing a stale entry would have to do the same by
/// chance at both moments).
fn find_driver_fd(rt: &tokio::runtime::Runtime, registered: RawFd) -> Option<RawFd> {
    let mut candidates = driver_epoll_candidates(registered);
    let waker = rt.block_on(std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())));
    for _ in 0..2 {
        if candidates.iter().any(|&fd| readable_now(fd)) {
            return None;
        }
        waker.wake_by_ref();
        candidates.retain(|&fd| readable_now(fd));
        turn(rt);
    }
    // The driver's fd and mio's dup of it (the same set): either will do.
    match candidates.first() {
        Some(&fd) if candidates.iter().all(|&fd| !readable_now(fd)) => Some(fd),
        _ => None,
    }
}

/// One pass of the runtime: the future wakes itself on its first poll
/// (inside the scheduler that only sets a flag), so block_on yields to the
/// driver without blocking (`park_yield`), which takes the pending events off
/// the driver's set, and returns on the second poll.
fn turn(rt: &tokio::runtime::Runtime) {
    let mut polled = false;
    rt.block_on(std::future::poll_fn(|cx| {
        if std::mem::replace(&mut polled, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }));
}

/// Holds the driver until `close()` drops it (freeing the runtime's fds as the
/// stdlib frees its selector). Accessed without a lock: `block()` uses it only
/// while the loop runs, on the loop's thread with the GIL released, and
/// `close()` (GIL held) refuses to run while the loop runs, so the two never
/// overlap.
pub struct DriverCell(std::cell::UnsafeCell<Option<Driver>>, u32);

impl Drop for DriverCell {
    fn drop(&mut self) {
        if std::process::id() != self.1 {
            // A forked child: dropping the runtime would deregister our epoll
            // fd from the runtime's epoll set, which the parent shares.
            if let Some(driver) = self.0.get_mut().take() {
                std::mem::forget(driver);
            }
        }
    }
}

// SAFETY: see the type's comment: use and removal never overlap.
unsafe impl Sync for DriverCell {}

impl DriverCell {
    pub fn new(driver: Driver) -> Self {
        DriverCell(std::cell::UnsafeCell::new(Some(driver)), std::process::id())
    }

    /// # Safety
    /// Only while the loop is running (close() cannot run then).
    pub unsafe fn get(&self) -> Option<&Driver> {
        (*self.0.get()).as_ref()
    }

    /// # Safety
    /// Only from close(), after checking that the loop is not running.
    pub unsafe fn take(&self) -> Option<Driver> {
        (*self.0.get()).take()
    }
}

/// What the parked loop waits for in the nested arrangement, polled by the
/// runtime's `block_on`: a wake-up from another thread, our epoll set turning
/// readable, or (only without a timerfd) tokio's timer. Returns how many
/// events `epoll_wait` put in `buf`. Hand-written rather than a `select!`
/// over `Notify` and `readable()`: no futures to build and drop per wait.
struct Wait<'a> {
    watch: &'a AsyncFd<SharedEpoll>,
    epoll: &'a EpollFd,
    buf: &'a mut [libc::epoll_event],
    remote: &'a Remote,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The set was found empty just before the first poll: a readiness tokio
    /// reports then is an old one, cleared without another epoll_wait.
    known_empty: bool,
}

impl std::future::Future for Wait<'_> {
    type Output = usize;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
        let this = self.get_mut();
        // Registered before `pending` is read: see Remote::wake.
        this.remote.register(cx.waker());
        if this.remote.has_pending() {
            return Poll::Ready(this.epoll.wait_now(this.buf));
        }
        // Only the first poll, before the runtime parked, can see an old readiness.
        let mut old_readiness = std::mem::take(&mut this.known_empty);
        loop {
            match this.watch.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    if !std::mem::take(&mut old_readiness) {
                        let n = this.epoll.wait_now(this.buf);
                        if n > 0 {
                            return Poll::Ready(n);
                        }
                    }
                    // Nothing left in our level-triggered set: only now may
                    // tokio forget the readiness, or a wake-up could be lost.
                    guard.clear_ready();
                }
                Poll::Ready(Err(_)) => return Poll::Ready(this.epoll.wait_now(this.buf)),
                Poll::Pending => break,
            }
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(this.epoll.wait_now(this.buf));
            }
        }
        Poll::Pending
    }
}

/// The `eventpoll` fds of this process whose targets include `registered`
/// (our set, just registered in the driver). The driver's own fd and its dup
/// (mio keeps a cloned registry) are among them; a set elsewhere could only
/// list the number through a stale entry, which `verify_driver_fd` rules out.
fn driver_epoll_candidates(registered: RawFd) -> Vec<RawFd> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return found;
    };
    for entry in dir {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        if fd == registered {
            continue;
        }
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.as_os_str() == "anon_inode:[eventpoll]" => {}
            _ => continue,
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        if lists_target(&info, registered) {
            found.push(fd);
        }
    }
    found.sort_unstable();
    found
}

/// Whether an eventpoll fdinfo text has a `tfd: <fd> ...` line for this fd.
fn lists_target(info: &str, fd: RawFd) -> bool {
    info.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("tfd:")
            && words.next().and_then(|w| w.parse::<RawFd>().ok()) == Some(fd)
    })
}

/// Whether `fd` can be read now, without waiting.
fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 && pfd.revents & libc::POLLIN != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_line_is_matched_by_fd() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        7 events:       19 data:                7  pos:0 ino:2a37 sdev:e\n";
        assert!(lists_target(info, 7));
        assert!(!lists_target(info, 17));
        assert!(!lists_target("", 7));
    }

    #[test]
    fn the_driver_fd_is_found_and_joins_our_set() -> std::io::Result<()> {
        let epoll = Arc::new(EpollFd::new()?);
        let remote = Remote::new();
        let driver = Driver::new(&epoll, false, &remote)?;
        if std::env::var_os("TOKIOLOOP_NESTED_WAIT").is_some() {
            return Ok(());
        }
        assert_eq!(driver.mode_name(), "driver inside");
        // A wake-up through the runtime's waker reaches our set...
        remote.force_wake();
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let n = driver.park(&epoll, &mut buf, &remote, Some(Duration::from_secs(5)));
        assert_eq!(n, 1);
        assert_eq!({ buf[0].u64 }, DRIVER_TOKEN);
        // ...and after the runtime's turn the set is quiet again.
        assert_eq!(driver.take_driver_event(&mut buf, n), 0);
        assert_eq!(epoll.wait_now(&mut buf), 0);
        Ok(())
    }
}
