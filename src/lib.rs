//! tokioloop: asyncio's event loop, in Rust on a tokio current-thread runtime.

// Nothing that input or the OS can reach may panic: errors become Python
// exceptions. Enforced by clippy outside the unit tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod bound_method;
mod clock;
mod contexts;
mod datagram;
mod deadline;
mod driver;
mod event_loop;
mod fastcall;
mod futures;
mod gil_cell;
mod handles;
mod poller;
mod pyhelpers;
mod ready;
mod remote;
mod sock_ops;
mod sockaddr;
mod stream;
mod stream_reader;
mod timers;
mod transport_common;
mod write_buf;

use pyo3::prelude::*;

/// Test hook: panics on purpose, so the tests can pin that a Rust panic reaches
/// Python as an exception (pyo3's PanicException) instead of aborting.
/// The one panic site kept in src/: it fires only when this private function
/// is called (tests/test_errors.py), and pyo3's call trampoline
/// catches the unwind and raises PanicException, so it cannot abort the
/// interpreter or touch any loop.
#[pyfunction]
#[allow(clippy::panic)]
fn _panic_for_tests(message: &str) {
    panic!("{message}");
}

#[pymodule]
fn _tokioloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    contexts::install(m.py());
    m.add_class::<event_loop::CoreLoop>()?;
    fastcall::install(m.py())?;
    bound_method::install(m.py())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    handles::install_slots(m.py())?;
    handles::install_methods(m.py())?;
    m.add_class::<stream::StreamTransport>()?;
    m.add_class::<datagram::DatagramTransport>()?;
    stream::install(m.py())?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(contexts::_context_snapshots, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_recv, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_recv_into, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_sendall, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_recvfrom, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_recvfrom_into, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_sendto, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_accept, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_connect, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::_sock_cancel, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
