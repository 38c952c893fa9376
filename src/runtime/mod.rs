//! What the process runs on: the compiled-in devices ([`backend`]), the counting heap
//! allocator and its per-thread accounts ([`memory`], [`heap_tuning`]), the worker threads
//! that train clients side by side ([`workers`]), and the seeded random streams ([`rng`]).

pub mod backend;
pub mod heap_tuning;
pub mod memory;
pub mod rng;
pub mod workers;
