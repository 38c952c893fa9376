//! What can go wrong in a client's local work.

use fedolf_models::ModelError;
use thiserror::Error;

use crate::compress::toa::ToaError;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum LocalError {
    #[error("frozen layer count {frozen} must be below the model's {num_layers} layers (at least one layer has to train)")]
    TooManyFrozen { frozen: usize, num_layers: usize },
    #[error("layer roles: {0}")]
    BadRoles(String),
    #[error("local training diverged: mean loss is {loss} in epoch {epoch} (lower the learning rate?)")]
    Diverged { epoch: usize, loss: f64 },
    #[error("batch_size must be at least 1")]
    ZeroBatch,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Toa(#[from] ToaError),
}

