use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong reading or partitioning a dataset; file errors name the file.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {problem}")]
    Malformed { path: PathBuf, problem: String },
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch { images: PathBuf, n_images: usize, labels: PathBuf, n_labels: usize },
    #[error("dataset `{name}` not found; looked in: {searched}. {hint}")]
    NotFound { name: String, searched: String, hint: String },
    #[error("unknown dataset `{0}` (known: fashion-mnist, emnist, cifar10, cifar100, cinic10, synthetic)")]
    UnknownDataset(String),
    #[error("invalid partition: {0}")]
    BadPartition(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Malformed { path: path.into(), problem: problem.into() }
    }
}
