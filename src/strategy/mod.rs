//! Methods as strategies: each file states its paper and its rule, and turns a sampled
//! client into an owned [`ClientPlan`] (per-layer roles, width, download compressor, local
//! objective). Everything a method does differently goes through the [`Strategy`] hooks —
//! what a client downloads, the server merge, the step before evaluation and what is
//! evaluated — so the round loop (`engine/round_loop.rs`) names no method.

mod adaptivefl;
mod cocofl;
mod depthfl;
mod feddrop;
mod fedavg;
mod fedolf;
mod fjord;
mod heterofl;
mod nefl;
mod random_freeze;
mod scalefl;
mod slt;
mod tinyfel;
pub mod plan;

use rand_chacha::ChaCha8Rng;

pub use adaptivefl::{fitting_model as adaptivefl_fitting_model, kept_full_depths as adaptivefl_depths, ClientTables as AdaptiveFlTables, WIDTHS as ADAPTIVEFL_WIDTHS, pool_with_params as adaptivefl_pool, AdaptiveFl, PoolModel};
pub use cocofl::{cocofl_blend, CocoFl};
pub use depthfl::{depthfl_weight, DepthFl};
pub use feddrop::Feddrop;
pub use fedavg::FedAvg;
pub use fedolf::FedOlf;
pub use fjord::Fjord;
pub use heterofl::{recompute_bn_statistics, HeteroFl};
pub use nefl::{is_batch_norm, nefl_skipped_blocks, NeFl};
pub use random_freeze::RandomFreeze;
pub use scalefl::{distills as scalefl_distills, matched_widths as scalefl_matched_widths, ScaleFl};
pub use slt::{stage_count, stage_ends, stage_of, stage_plan, stage_trainable_params, stage_width, Slt};
pub use tinyfel::TinyFel;
pub use plan::{ClientPlan, Download, EvalView, MemoryFit, PlanContext};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, SpaceLayout};

use crate::tensor::aggregate::{aggregate_layerwise, AggregateError, LayerUpload};
use crate::config::{Config, Method};
use crate::local::error::LocalError;
use crate::tensor::host::{HostLayer, HostTensor};
use crate::tensor::params::LayerParams;

/// One method. `B` is the clients' training backend; the server merges on its inner backend.
pub trait Strategy<B: AutodiffBackend>: Send {
    fn method(&self) -> Method;

    /// Whether clients of this cluster take part at all (FedAvg's drop variant).
    fn eligible(&self, _cluster: usize, _clusters: usize) -> bool {
        true
    }

    /// Whether cluster levels `l = c − i` freeze or cut layers, so `c ≤ N` is required.
    fn uses_levels(&self) -> bool {
        false
    }

    /// Whether a level's layers are frozen (else they are dropped or skipped: DepthFL,
    /// ScaleFL, NeFL).
    fn freezes_levels(&self) -> bool {
        self.uses_levels()
    }

    /// Layers each cluster freezes, weakest first, for the run header; `None` = it changes
    /// per round.
    fn frozen_per_cluster(&self, clusters: usize) -> Option<Vec<usize>> {
        Some((0..clusters).rev().map(|i| if self.freezes_levels() { i } else { 0 }).collect())
    }

    /// Depths after which the global model carries an exit head (multi-exit methods).
    fn exit_depths(&self, _num_layers: usize, _clusters: usize) -> Vec<usize> {
        Vec::new()
    }

    fn plan(&self, ctx: &PlanContext<'_>, client: usize, cluster: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError>;

    /// Step 1 for a method that picks its own clients (AdaptiveFL): `per_round` of the
    /// `candidates` (clients by index; `clusters[k]` is client k's cluster) and each one's
    /// plan. `None`: the engine samples uniformly and calls [`plan`](Self::plan) per client.
    fn select(&self, _ctx: &PlanContext<'_>, _candidates: &[usize], _clusters: &[usize], _per_round: usize, _rng: &mut ChaCha8Rng) -> Option<Result<Vec<ClientPlan>, LocalError>> {
        None
    }

    /// The model this client downloads, when it is not the global model itself (NeFL: the
    /// client's level's BatchNorm bank in place of the global one).
    fn client_start(&self, _plan: &ClientPlan, _global: &[HostLayer]) -> Option<Vec<HostLayer>> {
        None
    }

    /// The server's merge of this round's uploads (in the order of `plans`): `Some(new
    /// tensors)` per layer, `None` for layers that keep their value. Default: layer-wise MWA,
    /// `w_k = n_k` (FedOLF's rule).
    fn merge(
        &mut self,
        global: &[LayerParams<B::InnerBackend>],
        uploads: &[LayerUpload<B::InnerBackend>],
        _plans: &[ClientPlan],
    ) -> Result<Vec<Option<LayerParams<B::InnerBackend>>>, AggregateError> {
        aggregate_layerwise(global, uploads)
    }

    /// A step on the global model before it is evaluated (HeteroFL's static BN).
    fn before_eval(&self, global: LayeredNet<B>, _train: &Tensor<B::InnerBackend, 4>) -> LayeredNet<B> {
        global
    }

    /// What is evaluated.
    fn eval_view(&self, _ctx: &PlanContext<'_>) -> EvalView {
        EvalView::Full
    }

    /// State carried from round to round beyond the global model (for checkpoints), as named
    /// tensors; stateless methods have none.
    fn state(&self) -> Vec<HostTensor> {
        Vec::new()
    }

    /// Restore what [`state`](Self::state) saved.
    fn restore_state(&mut self, state: Vec<HostTensor>) -> Result<(), String> {
        match state.first() {
            None => Ok(()),
            Some(t) => Err(format!("{} keeps no state, but the checkpoint holds `{}`", self.method().name(), t.name)),
        }
    }
}

/// What a method is built from: the run's config, the capacity levels it plans for
/// (`federation.clusters`, or with memory budgets the model's own), how the frozen prefix
/// travels down, and, in a run, the initial global model on which SLT, ScaleFL and AdaptiveFL
/// measure what they need. Each method reads its own
/// options from the config in its own file (`X::build`); the registry below names each once.
pub struct Build<'a, M: Backend> {
    pub cfg: &'a Config,
    pub levels: usize,
    /// The frozen-prefix compressor (FedOLF only).
    pub download: Download,
    /// `None` where no model is at hand (a node laying out the model it is sent, a check of
    /// the config): the measuring methods fall back to their unmeasured defaults.
    pub model: Option<Measure<'a, M>>,
}

/// The initial global model, its channel layout and its device.
pub struct Measure<'a, M: Backend> {
    pub global: &'a LayeredNet<M>,
    pub layout: &'a SpaceLayout,
    pub device: &'a M::Device,
}

impl<'a, M: Backend> Build<'a, M> {
    /// A build with no model to measure and no compressed download, at the config's clusters.
    pub fn unmeasured(cfg: &'a Config) -> Self {
        Self { cfg, levels: cfg.federation.clusters, download: Download::Full, model: None }
    }
}

/// Depths after which the configured method's models carry exit heads (what a node, which
/// never builds the run's strategy, needs to lay out the model it is sent).
pub fn exit_depths_for<B: AutodiffBackend>(cfg: &Config, num_layers: usize, clusters: usize) -> Vec<usize> {
    strategy_for::<B>(&Build::unmeasured(cfg)).exit_depths(num_layers, clusters)
}

/// The strategy of the configured method: the registry, one line a method.
pub fn strategy_for<B: AutodiffBackend>(build: &Build<'_, B::InnerBackend>) -> Box<dyn Strategy<B>> {
    match build.cfg.method {
        Method::Fedolf => Box::new(FedOlf::build(build)),
        Method::Fedavg => Box::new(FedAvg { drop_weak: false }),
        Method::FedavgDrop => Box::new(FedAvg { drop_weak: true }),
        Method::RandomFreeze => Box::new(RandomFreeze),
        Method::Tinyfel => Box::new(TinyFel),
        Method::Cocofl => Box::new(CocoFl::build(build)),
        Method::Heterofl => Box::new(HeteroFl::build(build)),
        Method::Feddrop => Box::new(Feddrop),
        Method::Fjord => Box::new(Fjord),
        Method::Slt => Box::new(Slt::build(build)),
        Method::Depthfl => Box::new(DepthFl),
        Method::Scalefl => Box::new(ScaleFl::build(build)),
        Method::Adaptivefl => Box::new(AdaptiveFl::build(build)),
        Method::Nefl => Box::new(NeFl::default()),
    }
}
