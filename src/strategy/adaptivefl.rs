//! AdaptiveFL (Jia et al., "AdaptiveFL: Adaptive heterogeneous federated learning for
//! resource-constrained AIoT systems", DAC 2024), as its official code
//! (mastlab-T3S/AdaptiveFL) runs it.
//!
//! Pool: widths `r ∈ {0.4, 0.66, 1}` × kept-full depths `d`: the layers before `d` keep full
//! width, the layers from `d` on keep the first `⌈r·C⌉` channels of every hidden space; width
//! 1 is the full model, once. Seven models, ordered by parameter count `P_m`; a model's
//! *level* is its width's index. Client `k` of cluster `i_k` has the budget
//! `B_k = (i_k/c)·P` (`P`: the full model's parameters) and can train `m` iff `P_m ≤ B_k`.
//!
//! Each round fills `|C_t|` slots in turn (`adaptivefl.selection`), a client at most once:
//! - `available` (the official default): `m ~ U(pool)`, then `k ~ U{k : P_m ≤ B_k}`;
//! - `reward` (the official "RL" mode): `m ~ U(pool)`, then `k ∝ ρ_k(lv(m))` with
//!   `ρ_k(v) = min(S_k(v), 0.5) / √T^c_{k,v}` and
//!   `S_k(v) = mean_{m': lv(m') = v} Σ_{i ≥ m'} T^r_{k,i} / Σ_i T^r_{k,i}`.
//!   Tables start at 1. When the round merges, a client that could train `m` adds 1 to
//!   `T^r_{k,i}` for every `i ≥ m` (3 more when `m` is the full model); one that could not
//!   trains the largest model `f` that fits, adds 3 to `T^r_{k,f}` and takes `j` from
//!   `T^r_{k,f+j}` (floor 0); both add 1 to `T^c_{k,lv(m)}` and to `T^c_{k,lv(f)}`;
//! - `uniform`: the engine samples the clients uniformly; each draws `m ~ U(pool)`.
//!
//! A client that cannot train its model trains the largest that fits its budget (the smallest
//! when none does). It trains the whole sub-model; server: MWA over element masks,
//! `w = n_k`; the full model is evaluated.
//!
//! Choices where the official code does not carry over:
//! - kept-full depths `d = round(N·{4, 6, 8}/13)`: the official VGG16 keeps 4, 6 or 8 of its
//!   13 convolutions full (its ResNet18 counts whole stages instead);
//! - a client's resource is its cluster's budget every round (the official clients draw a
//!   Gaussian resource around their group's each round), so the reward tables learn a fixed
//!   threshold;
//! - `available` draws a client at most once a round (the official one draws with
//!   replacement), and a slot whose model no remaining client can train goes to any remaining
//!   client, who falls back.

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, SpaceLayout};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use serde::{Deserialize, Serialize};

use super::{Build, ClientPlan, Method, PlanContext, Strategy};
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::runtime::rng::{draw_by_cumulative, running_sums};
use crate::tensor::aggregate::{aggregate_layerwise, AggregateError, LayerUpload};
use crate::tensor::host::HostTensor;
use crate::tensor::params::{layer_numel, LayerParams};
use crate::tensor::submodel::{extract, WidthSpec};

/// The pool's widths; a model's level is its width's index.
pub const WIDTHS: [f64; 3] = [0.4, 0.66, 1.0];

/// One model of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolModel {
    pub width: f64,
    /// Index of `width` in [`WIDTHS`].
    pub level: usize,
    /// Layers before this index keep full width.
    pub split: usize,
    /// Parameters (BN statistics included) the client holds.
    pub params: usize,
}

/// What one slot of a round asked of a client and what the client could train (pool indices).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Feedback {
    client: usize,
    drawn: usize,
    trained: usize,
    fits: bool,
}

/// One client's reward tables: `T^r` over the pool's models, `T^c` over the levels.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTables {
    pub resource: Vec<f32>,
    pub count: Vec<f32>,
}

impl ClientTables {
    /// Every entry at 1.
    pub fn new(models: usize) -> Self {
        Self { resource: vec![1.0; models], count: vec![1.0; WIDTHS.len()] }
    }

    /// `ρ(v)` for level `level` of `pool`.
    pub fn reward(&self, pool: &[PoolModel], level: usize) -> f64 {
        let total: f64 = self.resource.iter().map(|&v| v as f64).sum();
        let models: Vec<usize> = (0..pool.len()).filter(|&m| pool[m].level == level).collect();
        if models.is_empty() || total <= 0.0 {
            return 0.0;
        }
        let success = models.iter().map(|&m| self.resource[m..].iter().map(|&v| v as f64).sum::<f64>()).sum::<f64>() / (models.len() as f64 * total);
        success.min(0.5) / (self.count[level] as f64).sqrt()
    }

    /// The client was sent `pool[drawn]` and trained `pool[trained]`; `fits`: the drawn one fit.
    pub fn learn(&mut self, pool: &[PoolModel], drawn: usize, trained: usize, fits: bool) {
        if fits {
            for v in &mut self.resource[drawn..] {
                *v += 1.0;
            }
            if drawn == pool.len() - 1 {
                self.resource[drawn] += 3.0;
            }
        } else {
            self.resource[trained] += 3.0;
            for (j, v) in self.resource[trained + 1..].iter_mut().enumerate() {
                *v = (*v - (j + 1) as f32).max(0.0);
            }
        }
        self.count[pool[drawn].level] += 1.0;
        self.count[pool[trained].level] += 1.0;
    }
}

/// `[adaptivefl]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// How a round's clients and their pool models are chosen.
    pub selection: PoolSelection,
}

/// How each round's slots get a pool model and a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolSelection {
    /// Per slot a pool model drawn uniformly, then a client drawn uniformly among those whose
    /// budget holds it (the official code's default, `--client_chosen_mode available`).
    #[default]
    Available,
    /// Per slot a pool model drawn uniformly, then a client drawn in proportion to its reward
    /// for the model's width, learnt from which models each client could train (the official
    /// code's `RL` mode).
    Reward,
    /// Clients sampled uniformly; each draws a pool model and falls back to the largest that
    /// fits its budget.
    Uniform,
}

impl PoolSelection {
    pub fn name(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Reward => "reward",
            Self::Uniform => "uniform",
        }
    }
}

pub struct AdaptiveFl {
    /// The pool (ascending parameter count) and the full model's parameter count.
    pool: Option<(Vec<PoolModel>, usize)>,
    selection: PoolSelection,
    /// `reward`: the tables of every client that has been selected (the others hold 1s).
    tables: BTreeMap<usize, ClientTables>,
    /// `reward`: the feedback of the round being trained, learnt when it merges (selection
    /// runs while the federation is only borrowed).
    pending: Mutex<Vec<Feedback>>,
}

impl AdaptiveFl {
    pub fn new(pool: Option<(Vec<PoolModel>, usize)>, selection: PoolSelection) -> Self {
        Self { pool, selection, tables: BTreeMap::new(), pending: Mutex::new(Vec::new()) }
    }

    fn pool(&self) -> Result<(&[PoolModel], usize), LocalError> {
        match &self.pool {
            Some((pool, full)) if !pool.is_empty() => Ok((pool, *full)),
            _ => Err(LocalError::BadRoles("AdaptiveFL needs its model pool (AdaptiveFl::build measures it on the run's initial model)".into())),
        }
    }

    /// `ρ_k(v)` of client `client` for level `level`.
    pub fn reward(&self, client: usize, level: usize) -> f64 {
        let Ok((pool, _)) = self.pool() else { return 0.0 };
        match self.tables.get(&client) {
            Some(t) => t.reward(pool, level),
            None => ClientTables::new(pool.len()).reward(pool, level),
        }
    }

    /// Client `client`'s tables (`None`: never selected under `reward`, every entry 1).
    pub fn tables(&self, client: usize) -> Option<&ClientTables> {
        self.tables.get(&client)
    }

    /// Fill the round's slots (`available` and `reward`).
    fn fill_slots(&self, ctx: &PlanContext<'_>, candidates: &[usize], clusters: &[usize], per_round: usize, rng: &mut ChaCha8Rng) -> Result<Vec<ClientPlan>, LocalError> {
        let (pool, full) = self.pool()?;
        let budget = |k: usize| full as f64 * ctx.width_ratio(clusters[k]);
        let fits = |m: usize, k: usize| pool[m].params as f64 <= budget(k);
        let mut left = candidates.to_vec();
        let mut plans = Vec::with_capacity(per_round);
        let mut feedback = Vec::with_capacity(per_round);
        for _ in 0..per_round.min(left.len()) {
            let drawn = rng.random_range(0..pool.len());
            let slot = match self.selection {
                PoolSelection::Reward => {
                    let weights: Vec<f64> = left.iter().map(|&k| self.reward(k, pool[drawn].level)).collect();
                    weighted_index(&weights, rng)
                }
                _ => {
                    let able: Vec<usize> = (0..left.len()).filter(|&i| fits(drawn, left[i])).collect();
                    (!able.is_empty()).then(|| able[rng.random_range(0..able.len())])
                }
            };
            let client = left.remove(slot.unwrap_or_else(|| rng.random_range(0..left.len())));
            let trained = fitting_index(pool, drawn, budget(client));
            feedback.push(Feedback { client, drawn, trained, fits: fits(drawn, client) });
            plans.push(plan_for(ctx, client, clusters[client], &pool[trained]));
        }
        if self.selection == PoolSelection::Reward {
            *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = feedback;
        }
        Ok(plans)
    }
}

/// An index drawn in proportion to `weights`; `None` when they sum to 0.
fn weighted_index(weights: &[f64], rng: &mut ChaCha8Rng) -> Option<usize> {
    let cumulative = running_sums(weights);
    (cumulative.last().is_some_and(|&total| total > 0.0)).then(|| draw_by_cumulative(&cumulative, rng))
}

/// The kept-full depths of an `N`-layer model.
pub fn kept_full_depths(num_layers: usize) -> Vec<usize> {
    let mut d: Vec<usize> = [4.0, 6.0, 8.0].iter().map(|f| (num_layers as f64 * f / 13.0).round() as usize).collect();
    d.dedup();
    d
}

/// The pool on `global`, ascending by parameter count, and the full model's count. Each
/// distinct sub-model appears once (width 1 at any depth, or a depth past the last narrowed
/// space, is the full model).
pub fn pool_with_params<B: Backend>(global: &LayeredNet<B>, layout: &SpaceLayout, device: &B::Device) -> (Vec<PoolModel>, usize) {
    let full: usize = global.layers.iter().map(layer_numel).sum();
    let mut pool = Vec::new();
    let mut specs: Vec<WidthSpec> = Vec::new();
    for (level, &width) in WIDTHS.iter().enumerate() {
        for split in kept_full_depths(global.num_layers()) {
            let spec = WidthSpec::prefix_after(layout, split, width);
            if specs.contains(&spec) {
                continue;
            }
            let sub = extract(global.clone(), layout, &spec, device);
            pool.push(PoolModel { width, level, split, params: sub.layers.iter().map(layer_numel).sum() });
            specs.push(spec);
        }
    }
    pool.sort_by_key(|m| m.params);
    (pool, full)
}

/// The index of the model a client with `budget` parameters trains when it drew
/// `pool[drawn]`: the drawn one if it fits, else the largest that fits, else the smallest.
pub fn fitting_index(pool: &[PoolModel], drawn: usize, budget: f64) -> usize {
    if pool[drawn].params as f64 <= budget {
        return drawn;
    }
    (0..pool.len()).filter(|&m| pool[m].params as f64 <= budget).max_by_key(|&m| pool[m].params).unwrap_or(0)
}

/// [`fitting_index`]'s model.
pub fn fitting_model(pool: &[PoolModel], drawn: usize, budget: f64) -> &PoolModel {
    &pool[fitting_index(pool, drawn, budget)]
}

fn plan_for(ctx: &PlanContext<'_>, client: usize, capacity: usize, model: &PoolModel) -> ClientPlan {
    ClientPlan::new(client, capacity, vec![LayerRole::Trained; ctx.num_layers]).with_width(WidthSpec::prefix_after(ctx.layout, model.split, model.width).unless_full(ctx.layout))
}

impl Method for AdaptiveFl {
    const NAME: &'static str = "adaptivefl";
    const ABOUT: &'static str = "AdaptiveFL: a pool of sub-models (widths 0.4, 0.66, 1 × full-width input-side depths); each slot of a round draws a model and a client whose budget (i/c of the parameters) holds it (adaptivefl.selection)";
    type Options = Options;

    /// The pool measured on the initial model; unmeasured, none (planning then fails).
    fn build<M: Backend>(build: &Build<'_, M>, options: Options) -> Self {
        let pool = build.model.as_ref().filter(|m| m.global.num_layers() > 0).map(|m| pool_with_params(m.global, m.layout, m.device));
        Self::new(pool, options.selection)
    }
}

impl<B: AutodiffBackend> Strategy<B> for AdaptiveFl {
    /// `uniform`, and memory budgets (where the engine picks the clients): the client's own draw.
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let (pool, full) = self.pool()?;
        let model = fitting_model(pool, rng.random_range(0..pool.len()), full as f64 * ctx.width_ratio(capacity));
        Ok(plan_for(ctx, client, capacity, model))
    }

    fn select(&self, ctx: &PlanContext<'_>, candidates: &[usize], clusters: &[usize], per_round: usize, rng: &mut ChaCha8Rng) -> Option<Result<Vec<ClientPlan>, LocalError>> {
        (self.selection != PoolSelection::Uniform).then(|| self.fill_slots(ctx, candidates, clusters, per_round, rng))
    }

    fn merge(
        &mut self,
        global: &[LayerParams<B::InnerBackend>],
        uploads: &[LayerUpload<B::InnerBackend>],
        _plans: &[ClientPlan],
    ) -> Result<Vec<Option<LayerParams<B::InnerBackend>>>, AggregateError> {
        let feedback = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        if let Some((pool, _)) = &self.pool {
            for f in feedback {
                self.tables.entry(f.client).or_insert_with(|| ClientTables::new(pool.len())).learn(pool, f.drawn, f.trained, f.fits);
            }
        }
        aggregate_layerwise(global, uploads)
    }

    /// `reward/clients` `[n]`, `reward/resource` `[n, models]`, `reward/count` `[n, levels]`.
    fn state(&self) -> Vec<HostTensor> {
        if self.tables.is_empty() {
            return Vec::new();
        }
        let n = self.tables.len();
        let models = self.tables.values().next().map_or(0, |t| t.resource.len());
        vec![
            HostTensor { name: "reward/clients".into(), shape: vec![n], values: self.tables.keys().map(|&k| k as f32).collect() },
            HostTensor { name: "reward/resource".into(), shape: vec![n, models], values: self.tables.values().flat_map(|t| t.resource.clone()).collect() },
            HostTensor { name: "reward/count".into(), shape: vec![n, WIDTHS.len()], values: self.tables.values().flat_map(|t| t.count.clone()).collect() },
        ]
    }

    fn restore_state(&mut self, state: Vec<HostTensor>) -> Result<(), String> {
        self.tables.clear();
        if state.is_empty() {
            return Ok(());
        }
        let models = self.pool.as_ref().map_or(0, |(p, _)| p.len());
        let find = |name: &str| state.iter().find(|t| t.name == name).ok_or_else(|| format!("AdaptiveFL state: `{name}` is missing"));
        let (clients, resource, count) = (find("reward/clients")?, find("reward/resource")?, find("reward/count")?);
        let n = clients.values.len();
        if resource.shape != [n, models] || count.shape != [n, WIDTHS.len()] || resource.values.len() != n * models || count.values.len() != n * WIDTHS.len() {
            return Err(format!("AdaptiveFL state: tables of shape {:?} and {:?} for {n} clients and a pool of {models} models", resource.shape, count.shape));
        }
        for (i, &k) in clients.values.iter().enumerate() {
            if !(k >= 0.0 && k.fract() == 0.0) {
                return Err(format!("AdaptiveFL state: `{k}` is not a client index"));
            }
            let t = ClientTables { resource: resource.values[i * models..(i + 1) * models].to_vec(), count: count.values[i * WIDTHS.len()..(i + 1) * WIDTHS.len()].to_vec() };
            self.tables.insert(k as usize, t);
        }
        Ok(())
    }
}
