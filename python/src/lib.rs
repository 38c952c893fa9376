//! `fedolf._core`: the Rust core of fedolf for Python (a Flower app's server and clients).
//! Every call runs the function the simulator runs; nothing here re-implements a rule.
//! Tensors cross as `(layer, name, shape, little-endian f32 bytes)` (see `wire.rs`); the
//! `fedolf` Python package turns them into numpy arrays.

mod client;
mod functions;
mod server;
mod wire;

use fedolf::runtime::memory::CountingAllocator;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

/// Counts heap bytes so a node's local round reports its peak, as `fedolf run` does.
#[global_allocator]
pub(crate) static ALLOC: CountingAllocator = CountingAllocator::new();

/// The training backend: Flex on the CPU, with autodiff.
pub(crate) type Train = fedolf::runtime::backend::CpuBackend;

pyo3::create_exception!(_core, FedolfError, PyException, "A fedolf error: bad config, data, tensors or plan.");

/// A Rust error (with its causes) as a `FedolfError`.
pub(crate) fn py_err<E: std::fmt::Display>(e: E) -> PyErr {
    FedolfError::new_err(e.to_string())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    fedolf::runtime::heap_tuning::keep_freed_memory();
    m.add("FedolfError", m.py().get_type::<FedolfError>())?;
    m.add_class::<server::Server>()?;
    m.add_class::<client::Client>()?;
    functions::register(m)?;
    Ok(())
}
