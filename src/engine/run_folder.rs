//! Reading a run folder before acting on it. A resume or an export first reads the folder's
//! checkpoint against the run's own model — every tensor present, with its shape, every value
//! finite — and only then writes anything; a folder that fails is named in the error and left
//! as it was.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::DatasetKind;

use crate::config::Config;
use crate::engine::error::SimError;
use crate::engine::round_context::ClientSetup;
use crate::io::checkpoint::{self, Checkpoint};
use crate::tensor::host::{model_to_host, HostLayer};
use crate::tensor::params::read_model;

/// The run's model as names and shapes (its values are a fresh draw and mean nothing), and
/// its layer count: what a checkpoint of the run must hold.
pub fn model_template<B: AutodiffBackend>(cfg: &Config, device: &B::Device) -> Result<(Vec<HostLayer>, usize), SimError> {
    let kind = DatasetKind::parse(&cfg.data.dataset)?;
    let (setup, plain) = ClientSetup::new::<B>(cfg, kind.input_shape(), kind.num_classes(), device)?;
    let model = plain.with_exits(&setup.exit_depths, device)?;
    Ok((model_to_host(read_model(&model.valid())), setup.num_layers))
}

/// The checkpoint of run folder `run` (whose config is `cfg`), checked against the run's model.
/// A folder without one is an error that says there is nothing to resume.
pub fn read_checkpoint<B: AutodiffBackend>(run: &Path, cfg: &Config, device: &B::Device) -> Result<Checkpoint, SimError> {
    if !Checkpoint::exists(run) {
        return Err(SimError::RunFolder(format!(
            "{} holds no checkpoint ({} is missing): there is nothing to resume, and nothing was changed",
            run.display(),
            run.join(checkpoint::FOLDER).join("state.json").display()
        )));
    }
    let (template, num_layers) = model_template::<B>(cfg, device)?;
    Ok(Checkpoint::read(run, &template, num_layers)?)
}
