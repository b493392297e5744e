//! The loop's wake-up for the earliest timer: a timerfd armed at the absolute
//! CLOCK_MONOTONIC deadline and watched in the loop's epoll set. tokio's own
//! timer wheel rounds every sleep up to a whole millisecond tick; a timerfd
//! wakes the parked runtime on the deadline itself, so `call_later(0.005)`
//! runs ~0.1 ms late instead of ~1 ms, as on the stdlib's selector loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct DeadlineTimer {
    fd: OwnedFd,
    armed: Option<f64>,
}

impl DeadlineTimer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DeadlineTimer {
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: None,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Arms the timer for `when` (seconds on the monotonic clock). A deadline
    /// already armed costs nothing; a stale one only causes a harmless wake-up.
    pub fn arm(&mut self, when: f64) -> io::Result<()> {
        if self.armed == Some(when) {
            return Ok(());
        }
        // A zero it_value would disarm: the earliest representable instant fires at once.
        let when = if when.is_finite() {
            when.max(1e-9)
        } else {
            1e-9
        };
        let secs = when.trunc();
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: secs as libc::time_t,
                tv_nsec: (((when - secs) * 1e9) as libc::c_long).clamp(0, 999_999_999),
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old-value pointer may be null.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            self.armed = None;
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(when);
        Ok(())
    }

    /// Called when the fd fired: the armed deadline is consumed.
    pub fn fired(&mut self) {
        self.armed = None;
    }
}
