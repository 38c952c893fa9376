//! FjORD's local training (Horváth et al., NeurIPS 2021, ordered dropout): for every
//! mini-batch draw `p` uniformly from the client's ratios and train only the `p`-prefix of
//! every channel space, i.e. the first `⌈p·C⌉` channels of the global count `C` (prefixes
//! nest, so they are also a prefix of the client's `r_k` sub-model). The trained prefix is
//! written back into the sub-model through the same extract / embed used for aggregation.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::LayeredNet;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::local::training::{gather_batch, ClientData, LocalModel, LocalOutcome, LocalTraining, LossTally};
use crate::tensor::params::{mark_trainable, read_model, write_model, NamedTensor, ParamError};
use crate::tensor::submodel::{embed, embedding_indices, extract, kept_channels, WidthSpec};

#[derive(Debug, thiserror::Error)]
pub enum OrderedDropoutError {
    #[error(transparent)]
    Freeze(#[from] LocalError),
    #[error(transparent)]
    Param(#[from] ParamError),
}

/// E epochs of ordered-dropout SGD on the client's sub-model `model`.
pub fn train_ordered_dropout<B: AutodiffBackend, R: Rng>(
    mut model: LayeredNet<B>,
    global_sizes: &[usize],
    ratios: &[f64],
    data: &ClientData<'_, B::InnerBackend>,
    settings: &LocalTraining,
    rng: &mut R,
) -> Result<(LayeredNet<B>, LocalOutcome), OrderedDropoutError> {
    if settings.batch_size == 0 {
        return Err(LocalError::ZeroBatch.into());
    }
    let device = data.images.device();
    let layout = model.channel_spaces();
    let all_trained = vec![LayerRole::Trained; model.num_layers()];
    let mut order = data.indices.to_vec();
    let mut tally = LossTally::default();
    for epoch in 0..settings.epochs {
        order.shuffle(rng);
        for batch in order.chunks(settings.batch_size) {
            let p = ratios[rng.random_range(0..ratios.len().max(1))];
            let spec = WidthSpec {
                kept: global_sizes.iter().zip(&layout.sizes).map(|(&c, &local)| (0..kept_channels(p, c).min(local)).collect()).collect(),
                scaler: 1.0,
                per_batch_ratios: Vec::new(),
            };
            let (x, y) = gather_batch(data, batch);
            let loss = if spec.is_full(&layout) {
                let (trained, loss) = LocalModel::from_roles(&model, &all_trained)?.fresh_step(x, y, &settings.sgd);
                model = trained.join();
                loss
            } else {
                let sub = mark_trainable(LayeredNet::<B>::from_inner(extract(model.valid(), &layout, &spec, &device)));
                let (trained, loss) = LocalModel::from_roles(&sub, &all_trained)?.fresh_step(x, y, &settings.sgd);
                model = write_back(model, &trained.join(), &layout, &spec, &device)?;
                loss
            };
            tally.add(loss);
        }
        tally.end_epoch(epoch)?;
    }
    let (mean_loss, steps) = (tally.mean(), tally.steps());
    Ok((model, LocalOutcome { mean_loss, steps, samples: data.indices.len() * settings.epochs, device_peak_bytes: None }))
}

/// Copy a trained prefix back into the sub-model it was cut from; other elements keep
/// their values.
fn write_back<B: AutodiffBackend>(
    model: LayeredNet<B>,
    prefix: &LayeredNet<B>,
    layout: &fedolf_models::SpaceLayout,
    spec: &WidthSpec,
    device: &B::Device,
) -> Result<LayeredNet<B>, ParamError> {
    let current = read_model(&model.valid());
    let positions = embedding_indices(model.valid(), layout, spec, device)?;
    let merged: Vec<Option<Vec<NamedTensor<B>>>> = embed(&read_model(&prefix.valid()), &positions, &current)
        .into_iter()
        .zip(&current)
        .map(|((values, masks), old)| {
            Some(
                values
                    .into_iter()
                    .zip(masks)
                    .zip(old)
                    .map(|((v, m), o)| NamedTensor {
                        name: v.name,
                        shape: v.shape,
                        value: Tensor::from_inner(o.value.clone().mask_where(m.greater_elem(0.0), v.value)),
                    })
                    .collect(),
            )
        })
        .collect();
    write_model(model, &merged)
}
