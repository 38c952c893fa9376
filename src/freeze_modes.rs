//! The freezing modes the paper contrasts for memory (Fig. 2: ordered vs random; Fig. 17:
//! TinyFEL), all run on the same model and batch (BASELINES.md, "Random freezing" and
//! "TinyFEL"):
//! - `ordered` (FedOLF): layers `[0, l)` on the inner backend (FrozenNoGrad), the rest train.
//! - `random`: `l` layers drawn uniformly; frozen layers below the lowest trained one run on
//!   the inner backend, frozen layers above it stay in the graph with `require_grad = false`
//!   (FrozenPassGrad) — their activations are kept so gradients reach the layers below.
//! - `tinyfel`: the whole forward pass is recorded on the autodiff backend; gradients of the
//!   first `l` layers are computed and discarded (only the rest step).
//! - `none`: full training.
//! A [`PreparedStep`] is built before measuring, so that the measured region is exactly one
//! training step: forward, backward, optimizer update.

use burn::module::{AutodiffModule, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{Features, LayeredNet};
use rand::seq::index::sample;
use rand::Rng;

use crate::freeze::{sgd_optimizer, FreezeError, SgdSettings};
use crate::params::{deep_copy, param_ids, pass_grad_only};
use crate::toa::{sparsify_prefix, ToaSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeMode {
    Ordered,
    Random,
    TinyFel,
    None,
}

impl FreezeMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ordered => "ordered",
            Self::Random => "random",
            Self::TinyFel => "tinyfel",
            Self::None => "none",
        }
    }
}

/// How each layer takes part in a step (drives both the step and the Eq. 23 count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRole {
    /// Inner backend: weights only, no graph.
    FrozenNoGraph,
    /// In the graph with `require_grad = false`: weights + kept activations.
    FrozenInGraph,
    /// In the graph, gradients computed then discarded (TinyFEL's frozen layers).
    FrozenGradDiscarded,
    Trained,
}

/// The per-layer roles of `mode` with `l` frozen layers (random draws from `rng`).
pub fn layer_roles<R: Rng>(mode: FreezeMode, num_layers: usize, l: usize, rng: &mut R) -> Result<Vec<LayerRole>, FreezeError> {
    if l >= num_layers {
        return Err(FreezeError::TooManyFrozen { frozen: l, num_layers });
    }
    let roles = match mode {
        FreezeMode::None => vec![LayerRole::Trained; num_layers],
        FreezeMode::Ordered => (0..num_layers).map(|i| if i < l { LayerRole::FrozenNoGraph } else { LayerRole::Trained }).collect(),
        FreezeMode::TinyFel => (0..num_layers).map(|i| if i < l { LayerRole::FrozenGradDiscarded } else { LayerRole::Trained }).collect(),
        FreezeMode::Random => {
            let mut frozen = vec![false; num_layers];
            for i in sample(rng, num_layers, l).into_iter() {
                frozen[i] = true;
            }
            let lowest_trained = frozen.iter().position(|f| !f).expect("l < N leaves a trained layer");
            frozen
                .iter()
                .enumerate()
                .map(|(i, &f)| match (f, i < lowest_trained) {
                    (false, _) => LayerRole::Trained,
                    (true, true) => LayerRole::FrozenNoGraph,
                    (true, false) => LayerRole::FrozenInGraph,
                })
                .collect()
        }
    };
    Ok(roles)
}

/// A client model laid out for one mode, ready for a measured step.
pub struct PreparedStep<B: AutodiffBackend> {
    no_graph: LayeredNet<B::InnerBackend>,
    graph: LayeredNet<B>,
    /// Only these parameters step (TinyFEL); `None` = every parameter with a gradient.
    keep: Option<Vec<ParamId>>,
}

impl<B: AutodiffBackend> PreparedStep<B> {
    /// Lay out a deep copy of `global` by `roles` (which must put every `FrozenNoGraph`
    /// layer before the others, as [`layer_roles`] does). `toa` sparsifies the no-graph
    /// prefix.
    pub fn new<R: Rng>(global: &LayeredNet<B>, roles: &[LayerRole], toa: Option<ToaSettings>, rng: &mut R) -> Result<Self, FreezeError> {
        let m = roles.iter().take_while(|r| **r == LayerRole::FrozenNoGraph).count();
        let (prefix, mut graph) = deep_copy(global).split_at(m)?;
        let mut no_graph = prefix.valid();
        if let Some(settings) = toa {
            no_graph = sparsify_prefix(no_graph, settings, rng)?.0;
        }
        let graph_roles = &roles[m..];
        graph.layers = std::mem::take(&mut graph.layers)
            .into_iter()
            .zip(graph_roles)
            .map(|(layer, role)| if *role == LayerRole::FrozenInGraph { pass_grad_only(layer) } else { layer })
            .collect();
        let keep = graph_roles.contains(&LayerRole::FrozenGradDiscarded).then(|| {
            graph.layers.iter().zip(graph_roles).filter(|(_, r)| **r == LayerRole::Trained).flat_map(|(l, _)| param_ids(l)).collect()
        });
        Ok(Self { no_graph, graph, keep })
    }

    /// One SGD step on a batch. Returns the loss.
    /// # Shapes
    /// `x: [b, c, h, w]`, `y: [b]`
    pub fn step(self, x: Tensor<B::InnerBackend, 4>, y: Tensor<B::InnerBackend, 1, Int>, sgd: &SgdSettings) -> f64 {
        let device = x.device();
        let m = self.no_graph.num_layers();
        let h = self.no_graph.forward_range(Features::Map(x), 0, m).expect("full range");
        let h = Features::<B>::from_inner(h);
        let n = self.graph.num_layers();
        let logits = self.graph.forward_range(h, 0, n).expect("full range").into_flat();
        let loss = CrossEntropyLossConfig::new().init::<B>(&device).forward(logits, Tensor::from_inner(y));
        let value = loss.clone().into_scalar().elem::<f64>();
        let mut grads = loss.backward();
        let grads = match &self.keep {
            Some(ids) => GradientsParams::from_params(&mut grads, &self.graph, ids),
            None => GradientsParams::from_module(&mut grads, &self.graph),
        };
        let mut optim = sgd_optimizer::<B>(sgd);
        let _ = optim.step(sgd.lr, self.graph, grads);
        value
    }
}
