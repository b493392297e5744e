//! The loop's clock: CLOCK_MONOTONIC, the clock behind `time.monotonic()`,
//! so `loop.time()` and user code agree on deadlines.

#[inline]
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CLOCK_MONOTONIC_COARSE: the same clock at tick resolution (1-4 ms), a
/// fraction of the cost; enough to time callbacks against thresholds >= 10 ms.
#[inline]
pub fn monotonic_coarse() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC_COARSE exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
