//! CoCoFL (Pfeiffer et al., "CoCoFL: Communication- and computation-aware federated learning
//! via partial NN freezing and quantization", TMLR 2023); the rule this file implements is
//! stated below.
//!
//! Each round a client trains one contiguous window of `W = N − l_k` layers whose start is
//! drawn uniformly from `{0, …, l_k}`; layers below the window are frozen outside the graph,
//! layers above it stay in the graph with `require_grad = false`. It uploads the window.
//! Server, per layer: `r = uploaders / participants`,
//! `θ ← r · mean(uploads) + (1 − r) · θ_old` (its own rule, not MWA; `mean` unweighted).
//!
//! Choice: optional fake int8 on the frozen layers (`cocofl.fake_int8`, off by
//! default). Every frozen conv / linear weight tensor is quantized per tensor, symmetric:
//! `ŵ = clamp(round(w/Δ), −127, 127)·Δ`, `Δ = max|w| / 127`, and the client runs the frozen
//! layers on `ŵ` (`fake_quant.rs`). Biases and BatchNorm entries stay float, and so do
//! activations: this models CoCoFL's int8 weights, not its int8 activation arithmetic.

use burn::prelude::*;
use rand::Rng;
use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;

use serde::{Deserialize, Serialize};

use super::{Build, ClientPlan, Method, PlanContext, Strategy};
use crate::tensor::aggregate::{masked_weighted_average, AggregateError, LayerUpload, Upload};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::tensor::params::{LayerParams, NamedTensor};

pub struct CocoFl {
    pub fake_int8: bool,
}

/// `[cocofl]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Run frozen layers on fake-int8 weights (per-tensor symmetric).
    pub fake_int8: bool,
}

impl Method for CocoFl {
    const NAME: &'static str = "cocofl";
    const ABOUT: &'static str = "CoCoFL: a random window of N−(c−i) layers trains; server blends r·mean + (1−r)·old";
    type Options = Options;
    const USES_LEVELS: bool = true;

    fn build<M: Backend>(_build: &Build<'_, M>, options: Options) -> Self {
        Self { fake_int8: options.fake_int8 }
    }
}

impl<B: AutodiffBackend> Strategy<B> for CocoFl {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let l = ctx.level(capacity)?;
        let width = ctx.num_layers - l;
        let start = rng.random_range(0..=l);
        let roles = (0..ctx.num_layers)
            .map(|i| {
                if i < start {
                    LayerRole::FrozenNoGraph
                } else if i < start + width {
                    LayerRole::Trained
                } else {
                    LayerRole::FrozenInGraph
                }
            })
            .collect();
        Ok(ClientPlan::new(client, capacity, roles).with_fake_int8_frozen(self.fake_int8))
    }

    fn merge(
        &mut self,
        global: &[LayerParams<B::InnerBackend>],
        uploads: &[LayerUpload<B::InnerBackend>],
        plans: &[ClientPlan],
    ) -> Result<Vec<Option<LayerParams<B::InnerBackend>>>, AggregateError> {
        cocofl_blend(global, uploads, plans.len())
    }
}

/// CoCoFL's server rule over `participants` clients (see the module doc). `None` for
/// layers nobody uploaded.
pub fn cocofl_blend<B: Backend>(
    global: &[LayerParams<B>],
    uploads: &[LayerUpload<B>],
    participants: usize,
) -> Result<Vec<Option<LayerParams<B>>>, AggregateError> {
    (0..global.len())
        .map(|l| {
            let held: Vec<Upload<'_, B>> = uploads
                .iter()
                .filter_map(|u| u.layers.iter().find(|(i, _)| *i == l))
                .map(|(_, tensors)| Upload { weight: 1.0, tensors: tensors.as_slice(), masks: None })
                .collect();
            if held.is_empty() {
                return Ok(None);
            }
            let r = held.len() as f32 / participants.max(held.len()) as f32;
            let mean = masked_weighted_average(&global[l], &held)?;
            Ok(Some(
                mean.into_iter()
                    .zip(&global[l])
                    .map(|(m, old)| NamedTensor { name: m.name, shape: m.shape, value: m.value * r + old.value.clone() * (1.0 - r) })
                    .collect(),
            ))
        })
        .collect()
}
