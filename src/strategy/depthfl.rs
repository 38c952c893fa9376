//! DepthFL (Kim, Yu, Jeong, Shin, "DepthFL: Depthwise federated learning for heterogeneous
//! clients", ICLR 2023); the rule this file implements is stated below.
//!
//! Level `l_k = c − i_k` drops the last `l_k` layers: the client trains layers
//! `L_1..L_{N−l_k}` with an exit head after every depth `D_j = N − (c − j)`, `j ≤ i_k`, that
//! it reaches (the classifier is the exit at depth N). With `n` exits' logits `z_1..z_n`
//! (shallowest first) the batch loss is mutual self-distillation:
//!
//! `L = Σ_i [ CE(z_i, y) + (w_t / (n − 1)) Σ_{j≠i} KL(softmax(z_j).detach ‖ softmax(z_i)) ]`,
//! `w_t = exp(−5 (1 − min(t, 300)/300)²)` at round t (no KD term when n = 1).
//!
//! Server: MWA with `w = n_k` over whole layers; exit heads aggregate like any layer, over
//! the clients that hold them. Evaluation: the deepest output (the full model's
//! classifier) is the reported accuracy, and the mean of every exit's logits the ensemble
//! accuracy (`accuracy_ensemble`). Choices: FedDyn regularisation off (an add-on of the paper, not its method); the KL
//! is averaged over the batch (PyTorch's `batchmean`).

use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;

use burn::tensor::backend::Backend;

use super::{Build, ClientPlan, EvalView, Method, NoOptions, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::local::objective::Objective;

pub struct DepthFl;

/// `w_t = exp(−5 (1 − min(t, 300)/300)²)`.
pub fn depthfl_weight(round: usize) -> f32 {
    let progress = round.min(300) as f64 / 300.0;
    (-5.0 * (1.0 - progress).powi(2)).exp() as f32
}

/// Depths where the global model carries exits: `N − l` for every level `l ∈ 1..c`.
pub(super) fn level_cut_depths(num_layers: usize, clusters: usize) -> Vec<usize> {
    (1..clusters).filter(|&l| l < num_layers).map(|l| num_layers - l).rev().collect()
}

/// The plan of a client whose level `l = c − i` drops the last `l` layers (DepthFL's cut,
/// ScaleFL's too): the first `N − l` train, the rest are skipped.
pub(super) fn depth_cut_plan(ctx: &PlanContext<'_>, client: usize, capacity: usize) -> Result<ClientPlan, LocalError> {
    let depth = ctx.num_layers - ctx.level(capacity)?;
    let roles = (0..ctx.num_layers).map(|i| if i < depth { LayerRole::Trained } else { LayerRole::Skipped }).collect();
    Ok(ClientPlan::new(client, capacity, roles))
}

impl Method for DepthFl {
    const NAME: &'static str = "depthfl";
    const ABOUT: &'static str = "DepthFL: cluster i trains the first N−(c−i) layers with an exit head at each depth it reaches; mutual self-distillation between exits";
    type Options = NoOptions;
    const USES_LEVELS: bool = true;
    const FREEZES_LEVELS: bool = false; // levels drop or skip layers

    fn exit_depths(num_layers: usize, c: usize) -> Vec<usize> {
        level_cut_depths(num_layers, c)
    }

    fn build<M: Backend>(_build: &Build<'_, M>, _options: NoOptions) -> Self {
        Self
    }
}

impl<B: AutodiffBackend> Strategy<B> for DepthFl {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        Ok(depth_cut_plan(ctx, client, capacity)?.with_objective(Objective::MutualDistillation { weight: depthfl_weight(ctx.round) }))
    }

    fn eval_view(&self, _ctx: &PlanContext<'_>) -> EvalView {
        EvalView::Exits
    }
}
