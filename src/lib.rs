//! fedolf — federated learning with ordered layer freezing (FedOLF, IEEE TMC,
//! arXiv 2512.23200) on Burn.
//!
//! Modules, bottom up: [`params`] (the only Burn-parameter walker), [`aggregate`] (MWA),
//! [`freeze`] (frozen-prefix training), [`toa`] (download sparsification), [`rng`] (seeded
//! streams), [`backend`] (feature → backend).

pub mod aggregate;
pub mod backend;
pub mod budget;
pub mod checkpoint;
pub mod client_round;
pub mod evaluate;
pub mod federation;
pub mod freeze;
pub mod freeze_modes;
pub mod heap_tuning;
pub mod host;
pub mod memory;
pub mod memory_probe;
pub mod objective;
pub mod ordered_dropout;
pub mod params;
#[cfg(feature = "flex")]
pub mod parity;
pub mod rng;
pub mod toa;

pub use fedolf_models as models;
pub mod config;
pub mod energy;
pub mod fake_quant;
pub mod plot;
pub mod qsgd;
pub mod report;
pub mod sim;
pub mod speed;
pub mod strategy;
pub mod submodel;
pub mod theory;
pub mod trials;
pub mod workers;
