//! SLT (Pfeiffer, Khalili, Henkel, "Aggregating capacity in FL through successive layer
//! training for computationally-constrained devices", NeurIPS 2023); the rule this file
//! implements is stated below.
//!
//! Stages `j = 1..J`, `J = N − 1` (one per layer that can be frozen). At stage `j`:
//! layers `< j` are frozen at full width (outside the graph); layer `j` — and, for a client of
//! cluster `i_k`, the next `d_k − 1` layers, `d_k = i_k` (`= c − l_k`) — train at full
//! width; every later layer trains at width
//! `s_j = 0.5 + 0.5·(j − 1)/(J − 1)` (prefix channels, `⌈s_j·C⌉`), so the last stage trains
//! the full model's top. Width is per channel space: a space stays whole when a full-width
//! layer produces it (so the first narrow layer reads full inputs and writes narrow outputs).
//! Stage `j` lasts a share of the `T` rounds proportional to the parameters it trains
//! (the weakest client's sub-model, `slt.stage_lengths = "params"`) or `T/J` rounds each
//! (`"equal"`). Server: MWA over element masks, `w = n_k`. Evaluation uses the current
//! stage's model: the weakest client's sub-model (full up to layer `j`, `s_j` beyond).
//!
//! Choices: no Scaler on the narrow layers (the reference code slices without rescaling);
//! no width-only pretraining stage before stage 1.

use burn::prelude::*;
use fedolf_models::{LayeredNet, SpaceLayout};
use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;

use serde::{Deserialize, Serialize};

use super::{Build, ClientPlan, EvalView, Method, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::tensor::params::layer_numel;
use crate::tensor::submodel::{extract, WidthSpec};

/// The number of SLT stages of an `N`-layer model: one per layer that can be frozen.
pub fn stage_count(num_layers: usize) -> usize {
    num_layers.saturating_sub(1).max(1)
}

/// `s_j` for the 0-based stage `j` of `stages`: 0.5 at the first stage, 1.0 at the last.
pub fn stage_width(j: usize, stages: usize) -> f64 {
    if stages <= 1 {
        return 1.0;
    }
    0.5 + 0.5 * j as f64 / (stages - 1) as f64
}

/// The last round (1-based, inclusive) of every stage: `T` split in proportion to
/// `weights`, every stage at least one round. With fewer rounds than stages, the first `T`
/// stages get one round each and the rest none.
pub fn stage_ends(weights: &[f64], rounds: usize) -> Vec<usize> {
    let stages = weights.len();
    if rounds < stages {
        return (0..stages).map(|j| (j + 1).min(rounds)).collect();
    }
    let total: f64 = weights.iter().sum();
    let mut ends: Vec<usize> = Vec::with_capacity(stages);
    let mut cumulative = 0.0;
    for (j, w) in weights.iter().enumerate() {
        cumulative += w;
        let share = if total > 0.0 { cumulative / total } else { (j + 1) as f64 / stages as f64 };
        let previous = ends.last().copied().unwrap_or(0);
        // At least one round here, and one left for each later stage.
        ends.push(((share * rounds as f64).round() as usize).clamp(previous + 1, rounds - (stages - 1 - j)));
    }
    ends
}

/// The 0-based stage of a 1-based round.
pub fn stage_of(ends: &[usize], round: usize) -> usize {
    ends.iter().position(|&e| round <= e).unwrap_or(ends.len().saturating_sub(1))
}

/// Stage `j`'s roles and widths for a client that trains `full` layers at full width.
pub fn stage_plan(layout: &SpaceLayout, num_layers: usize, j: usize, full: usize) -> (Vec<LayerRole>, WidthSpec) {
    let stages = stage_count(num_layers);
    let roles = (0..num_layers).map(|i| if i < j { LayerRole::FrozenNoGraph } else { LayerRole::Trained }).collect();
    let width = WidthSpec::prefix_after(layout, (j + full).min(num_layers), stage_width(j, stages));
    (roles, width)
}

/// Parameters each stage trains in the weakest client's sub-model (the `params` weights).
pub fn stage_trainable_params<B: Backend>(global: &LayeredNet<B>, layout: &SpaceLayout, device: &B::Device) -> Vec<usize> {
    let n = global.num_layers();
    (0..stage_count(n))
        .map(|j| {
            let (_, width) = stage_plan(layout, n, j, 1);
            let sub = extract(global.clone(), layout, &width, device);
            sub.layers[j..].iter().map(layer_numel).sum()
        })
        .collect()
}

pub struct Slt {
    /// `params` weights per stage; `None` = equal stages.
    pub stage_params: Option<Vec<usize>>,
}

/// `[slt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// `params`: stage lengths in proportion to the parameters each stage trains; `equal`.
    pub stage_lengths: StageLengths,
}

/// How the `T` rounds are shared among the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StageLengths {
    /// In proportion to the parameters each stage trains (SLT's rule).
    #[default]
    Params,
    /// The same number of rounds per stage.
    Equal,
}

impl Method for Slt {
    const NAME: &'static str = "slt";
    const ABOUT: &'static str = "SLT: stage j freezes layers < j, trains layer j (+i−1 more) at full width and the rest at width 0.5→1.0";
    type Options = Options;

    fn frozen_per_cluster(_c: usize) -> Option<Vec<usize>> {
        None // by stage
    }

    /// `slt.stage_lengths = "params"` measures each stage's trainable parameters on the
    /// initial model; unmeasured, the stages are equal.
    fn build<M: Backend>(build: &Build<'_, M>, options: Options) -> Self {
        let stage_params = match (&build.model, options.stage_lengths) {
            (Some(m), StageLengths::Params) => Some(stage_trainable_params(m.global, m.layout, m.device)),
            _ => None,
        };
        Self { stage_params }
    }
}

impl Slt {
    fn ends(&self, ctx: &PlanContext<'_>) -> Vec<usize> {
        let stages = stage_count(ctx.num_layers);
        let weights: Vec<f64> = match &self.stage_params {
            Some(p) if p.len() == stages => p.iter().map(|&x| x as f64).collect(),
            _ => vec![1.0; stages],
        };
        stage_ends(&weights, ctx.rounds)
    }
}

impl<B: AutodiffBackend> Strategy<B> for Slt {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let j = stage_of(&self.ends(ctx), ctx.round);
        let (roles, width) = stage_plan(ctx.layout, ctx.num_layers, j, capacity + 1);
        let width = width.unless_full(ctx.layout);
        Ok(ClientPlan::new(client, capacity, roles).with_width(width))
    }

    fn eval_view(&self, ctx: &PlanContext<'_>) -> EvalView {
        let j = stage_of(&self.ends(ctx), ctx.round);
        let (_, width) = stage_plan(ctx.layout, ctx.num_layers, j, 1);
        if width.is_full(ctx.layout) {
            EvalView::Full
        } else {
            EvalView::Width(width)
        }
    }
}
