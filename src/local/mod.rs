//! A client's local work: which layer plays which role ([`roles`]), training with a frozen
//! prefix outside the autodiff graph ([`training`]), FjORD's ordered dropout
//! ([`ordered_dropout`]), the losses ([`objective`], [`exit_losses`], [`loss_terms`]), CoCoFL's int8 frozen layers
//! ([`fake_quant`]) and test-set evaluation ([`evaluate`]).

pub mod error;
pub mod evaluate;
pub mod exit_losses;
pub mod fake_quant;
pub mod loss_terms;
pub mod objective;
pub mod ordered_dropout;
pub mod roles;
pub mod training;
