//! tokioloop: asyncio's event loop, in Rust on a tokio current-thread runtime.

mod clock;
mod deadline;
mod event_loop;
mod fastcall;
mod gil_cell;
mod handles;
mod poller;
mod pyhelpers;
mod remote;
mod stream;
mod timers;

use pyo3::prelude::*;

#[pymodule]
fn _tokioloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::CoreLoop>()?;
    fastcall::install(m.py())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    handles::install_slots(m.py())?;
    handles::install_methods(m.py())?;
    m.add_class::<stream::StreamTransport>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
