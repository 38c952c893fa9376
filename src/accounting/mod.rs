//! Honest accounting: the paper's memory model ([`theory`]) and the measured probe beside it
//! ([`memory_probe`]), the peak predictor that memory budgets plan with ([`budget`]), energy
//! ([`energy`]), step timing ([`speed`]) and device-vs-CPU parity ([`parity`]).

pub mod budget;
pub mod energy;
pub mod memory_probe;
#[cfg(feature = "flex")]
pub mod parity;
pub mod speed;
pub mod theory;
