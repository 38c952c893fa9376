//! fedolf — federated learning with ordered layer freezing (FedOLF, IEEE TMC,
//! arXiv 2512.23200) on Burn.
//!
//! The crate is layered; each folder uses only those listed before it (ARCHITECTURE.md, and
//! `tests/architecture.rs` keeps it so):
//! [`records`] (plain result rows) → [`runtime`] (devices, memory counting, threads, seeded
//! streams) → [`tensor`] (weights as data) → [`compress`] (TOA, QSGD) → [`local`] (a
//! client's training) → [`config`] → [`strategy`] (one file per method) → [`accounting`]
//! (memory, energy, speed, budgets) → [`io`] (run folders) → [`engine`] (the round loop and
//! the federation). The `fedolf` binary (`src/cli/`) and the Python bindings sit on top.

pub mod records;
pub mod runtime;
pub mod tensor;
pub mod compress;
pub mod local;
pub mod config;
pub mod strategy;
pub mod accounting;
pub mod io;
pub mod engine;

pub use fedolf_models as models;
