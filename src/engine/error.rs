//! What can stop a run: every error of the layers below, with the round and client it
//! happened to where that helps.

use fedolf_datasets::DataError;
use fedolf_models::ModelError;
use thiserror::Error;

use crate::compress::qsgd::QsgdError;
use crate::compress::toa::ToaError;
use crate::io::checkpoint::CheckpointError;
use crate::local::ordered_dropout::OrderedDropoutError;
use crate::local::error::LocalError;
use crate::runtime::workers::WorkerError;
use crate::tensor::aggregate::AggregateError;
use crate::tensor::params::ParamError;

#[derive(Debug, Error)]
pub enum SimError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    // `error`, not `source`: the message already carries it, and a source would print twice.
    #[error("round {round}, client {client}: {error}")]
    Client { round: usize, client: usize, error: LocalError },
    #[error(transparent)]
    Freeze(#[from] LocalError),
    #[error(transparent)]
    Toa(#[from] ToaError),
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Qsgd(#[from] QsgdError),
    #[error("round {round}, client {client}: {error}")]
    OrderedDropout { round: usize, client: usize, error: OrderedDropoutError },
    #[error("config field `{field}`: {problem}")]
    Config { field: &'static str, problem: String },
    /// The method or its options (a config built by hand, not read with `Config::from_toml`).
    #[error(transparent)]
    Method(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Workers(#[from] WorkerError),
    #[error("round {round}: the global model's test loss is {loss} (diverged; lower train.lr)")]
    Diverged { round: usize, loss: f64 },
    #[error("round {round}, client {client}: the upload's tensor `{tensor}` holds NaN or infinite values (diverged; lower train.lr, or set train.nonfinite = \"skip\")")]
    NonFinite { round: usize, client: usize, tensor: String },
    #[error("interrupted; the checkpoint holds the {round} rounds completed")]
    Interrupted { round: usize },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("resume: {0}")]
    Resume(String),
    /// The results files could not be written (the error names the file).
    #[error("writing the run's results: {0}")]
    Results(std::io::Error),
    /// A run folder that cannot be acted on (resumed, exported) as it is.
    #[error("{0}")]
    RunFolder(String),
}

