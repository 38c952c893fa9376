//! The federation itself: the round loop ([`round_loop`]), the server's state and steps
//! ([`federation`]) with its memory budgets ([`budgets`], [`budget_steps`]), one round's shared client context ([`round_context`]), the round's
//! bookkeeping ([`round_end`]), the run's data ([`data`]) and the checks a run folder passes
//! before it is resumed or exported ([`run_folder`]). The simulator and the Flower
//! server both drive a [`federation::Federation`] through these.

pub mod budget_steps;
pub mod budgets;
pub mod data;
pub mod error;
pub mod federation;
pub mod round_context;
pub mod round_end;
pub mod round_loop;
pub mod run_folder;

pub use data::load_dataset;
pub use error::SimError;
pub use federation::RunInfo;
pub use round_loop::{run, run_from, RoundObserver, RunStart};
