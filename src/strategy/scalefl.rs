//! ScaleFL (Ilhan, Su, Liu, "ScaleFL: Resource-adaptive federated learning with heterogeneous
//! clients", CVPR 2023); the rule this file implements is stated below.
//!
//! Each level scales width and depth: cluster `i_k` keeps the first `N − l_k` layers (DepthFL's
//! cut, `l_k = c − i_k`) at the width `r_k` whose sub-model holds about `i_k / c` of the full
//! model's parameters (exits included; found by bisection on the run's own model), every
//! hidden channel space keeping its first `⌈r_k·C⌉` channels, with an exit head at each depth
//! it reaches. With exits `z_1..z_n` (shallowest first) the batch loss is
//!
//! `L = [ Σ_{j<n} j·(CE(z_j, y) + γT²·KL(softmax(z_n/T).detach ‖ softmax(z_j/T))) + n·CE(z_n, y) ] / (n(n+1)/2)`,
//!
//! `T = 3`, KD from 25 % of the rounds on (0-based round index ≥ ⌊T_rounds/4⌋; before that
//! γ is 0). γ = 1 by default (`scalefl.gamma`): the reference code's default of 0 silently
//! disables KD. Server: MWA over element masks, `w = n_k`; exits are ordinary tensors.
//! Evaluation: like DepthFL, the full model's classifier and the ensemble of all exits. An
//! exit head's input follows its layer's width; its own channels stay whole (as HeteroFL's FC
//! layers do). No Scaler.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, SpaceLayout};
use rand_chacha::ChaCha8Rng;

use super::depthfl::{depth_cut_plan, level_cut_depths};
use serde::{Deserialize, Serialize};

use super::{Build, ClientPlan, EvalView, Method, PlanContext, Strategy};
use crate::config::ConfigError;
use crate::local::error::LocalError;
use crate::local::objective::Objective;
use crate::tensor::params::layer_numel;
use crate::tensor::submodel::{extract, WidthSpec};

pub const TEMPERATURE: f32 = 3.0;

pub struct ScaleFl {
    /// Each cluster's width, weakest first; `None` = `i/c`.
    pub widths: Option<Vec<f64>>,
    pub gamma: f32,
}

/// Whether KD is on at a 1-based round of `rounds`.
pub fn distills(round: usize, rounds: usize) -> bool {
    round.saturating_sub(1) >= rounds / 4
}

/// Parameters a client holds with the first `depth` layers at width spec `width`.
fn sub_model_params<B: Backend>(global: &LayeredNet<B>, layout: &SpaceLayout, depth: usize, width: &WidthSpec, device: &B::Device) -> usize {
    let sub = extract(global.clone(), layout, width, device);
    sub.layers[..depth].iter().map(layer_numel).sum::<usize>() + sub.exits.iter().filter(|e| e.after <= depth).map(layer_numel).sum::<usize>()
}

/// Each cluster's width (weakest first) so that its depth-cut sub-model holds about `i/c` of
/// the full model's parameters: bisection on `r` (parameters grow with `r`).
pub fn matched_widths<B: Backend>(global: &LayeredNet<B>, layout: &SpaceLayout, clusters: usize, device: &B::Device) -> Vec<f64> {
    let n = global.num_layers();
    let full: usize = global.layers.iter().map(layer_numel).sum();
    (0..clusters)
        .map(|cluster| {
            let level = clusters - 1 - cluster;
            if level == 0 || level >= n {
                return 1.0;
            }
            let depth = n - level;
            let target = full as f64 * (cluster + 1) as f64 / clusters as f64;
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            if sub_model_params(global, layout, depth, &WidthSpec::prefix(layout, 1.0), device) as f64 <= target {
                return 1.0; // the depth cut alone is small enough
            }
            for _ in 0..14 {
                let mid = 0.5 * (lo + hi);
                if (sub_model_params(global, layout, depth, &WidthSpec::prefix(layout, mid), device) as f64) < target {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        })
        .collect()
}

/// `[scalefl]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// γ, the weight of the exits' KD term (the reference code's default of 0 disables KD).
    pub gamma: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self { gamma: 1.0 }
    }
}

impl Method for ScaleFl {
    const NAME: &'static str = "scalefl";
    const ABOUT: &'static str = "ScaleFL: cluster i trains a width- and depth-scaled sub-model (≈ i/c of the parameters) with early exits; exit-weighted CE + KD (T = 3) from 25 % of the rounds";
    type Options = Options;
    const USES_LEVELS: bool = true;
    const FREEZES_LEVELS: bool = false; // levels drop or skip layers

    fn exit_depths(num_layers: usize, c: usize) -> Vec<usize> {
        level_cut_depths(num_layers, c)
    }

    fn check(options: &Options) -> Result<(), ConfigError> {
        if options.gamma.is_finite() && options.gamma >= 0.0 {
            Ok(())
        } else {
            Err(ConfigError::Invalid { field: "scalefl.gamma", value: options.gamma.to_string(), problem: "must be finite and ≥ 0".into() })
        }
    }

    /// Widths matched to the clusters' budgets on the initial model; unmeasured, `i/c`.
    fn build<M: Backend>(build: &Build<'_, M>, options: Options) -> Self {
        let widths = build.model.as_ref().map(|m| matched_widths(m.global, m.layout, build.capacities, m.device));
        Self { widths, gamma: options.gamma as f32 }
    }
}

impl<B: AutodiffBackend> Strategy<B> for ScaleFl {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let r = self.widths.as_ref().and_then(|w| w.get(capacity).copied()).unwrap_or_else(|| ctx.width_ratio(capacity));
        let gamma = if distills(ctx.round, ctx.rounds) { self.gamma } else { 0.0 };
        Ok(depth_cut_plan(ctx, client, capacity)?
            .with_width(WidthSpec::prefix(ctx.layout, r).unless_full(ctx.layout))
            .with_objective(Objective::ScaledExits { gamma, temperature: TEMPERATURE }))
    }

    fn eval_view(&self, _ctx: &PlanContext<'_>) -> EvalView {
        EvalView::Exits
    }
}
