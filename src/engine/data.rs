//! The run's data: the dataset its config names, cut to its size limits.

use std::path::Path;

use fedolf_datasets::{Dataset, DatasetKind};

use crate::config::Config;
use crate::engine::error::SimError;

/// Read the dataset the config names, applying its size limits.
pub fn load_dataset(cfg: &Config) -> Result<Dataset, SimError> {
    let kind = DatasetKind::parse(&cfg.data.dataset)?;
    let dir = (!cfg.data.data_dir.is_empty()).then(|| Path::new(&cfg.data.data_dir));
    let mut ds = fedolf_datasets::load(kind, dir)?;
    if cfg.data.train_limit > 0 {
        ds.train.truncate(cfg.data.train_limit);
    }
    if cfg.data.test_limit > 0 {
        ds.test.truncate(cfg.data.test_limit);
    }
    Ok(ds)
}
