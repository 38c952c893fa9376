//! Methods as strategies: each file states its paper and its rule, and turns a sampled
//! client into an owned [`ClientPlan`] (per-layer roles + download compressor); the round
//! loop in `sim.rs` executes plans and applies the strategy's [`ServerRule`].

mod cocofl;
mod feddrop;
mod fedavg;
mod fedolf;
mod fjord;
mod heterofl;
mod random_freeze;
mod slt;
mod tinyfel;

use rand_chacha::ChaCha8Rng;

pub use cocofl::{cocofl_blend, CocoFl};
pub use feddrop::Feddrop;
pub use fedavg::FedAvg;
pub use fedolf::FedOlf;
pub use fjord::Fjord;
pub use heterofl::HeteroFl;
pub use random_freeze::RandomFreeze;
pub use slt::{stage_count, stage_ends, stage_of, stage_plan, stage_trainable_params, stage_width, Slt, StageLengths};
pub use tinyfel::TinyFel;

use crate::config::Method;
use crate::freeze::{FreezeError, LayerRole};
use crate::qsgd::QsgdSettings;
use crate::submodel::WidthSpec;
use crate::toa::ToaSettings;
use fedolf_models::SpaceLayout;

/// How the frozen, out-of-graph prefix travels down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Download {
    Full,
    Toa(ToaSettings),
    Qsgd(QsgdSettings),
}

/// What one sampled client does this round.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPlan {
    pub client: usize,
    /// Capacity cluster, 0-based (`i_k − 1`).
    pub cluster: usize,
    pub roles: Vec<LayerRole>,
    pub download: Download,
    /// Width methods: the channels this client keeps (`None` = the full width).
    pub width: Option<WidthSpec>,
    /// CoCoFL's option: frozen layers run on fake-int8 weights.
    pub fake_int8_frozen: bool,
}

impl ClientPlan {
    /// Layers the client does not train.
    pub fn frozen(&self) -> usize {
        self.roles.iter().filter(|r| **r != LayerRole::Trained).count()
    }
}

/// How the server merges uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRule {
    /// Layer-wise MWA with `w_k = n_k` (FedOLF's rule).
    LayerwiseMwa,
    /// CoCoFL: `θ ← r·mean(uploads) + (1 − r)·θ_old`, `r` = uploaders / participants.
    CocoflBlend,
}

/// Facts a plan needs.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    pub num_layers: usize,
    pub clusters: usize,
    /// The current round (1-based) and the run's total `T`.
    pub round: usize,
    pub rounds: usize,
    pub layout: &'a SpaceLayout,
}

impl PlanContext<'_> {
    /// Width ratio `r_k = i_k / c` of a 0-based cluster.
    pub fn width_ratio(&self, cluster: usize) -> f64 {
        (cluster + 1) as f64 / self.clusters as f64
    }

    /// Level `l_k = c − i_k` of a 0-based cluster (frozen / pruned layer count); at least
    /// one layer must stay trainable.
    pub fn level(&self, cluster: usize) -> Result<usize, FreezeError> {
        let l = self.clusters - 1 - cluster;
        if l >= self.num_layers {
            return Err(FreezeError::TooManyFrozen { frozen: l, num_layers: self.num_layers });
        }
        Ok(l)
    }
}

pub trait Strategy {
    fn method(&self) -> Method;
    /// Whether clients of this cluster take part at all (FedAvg's drop variant).
    fn eligible(&self, _cluster: usize, _clusters: usize) -> bool {
        true
    }
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, cluster: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, FreezeError>;
    fn server_rule(&self) -> ServerRule {
        ServerRule::LayerwiseMwa
    }
    /// The sub-model to evaluate instead of the full global model (SLT's current stage).
    fn eval_width(&self, _ctx: &PlanContext<'_>) -> Option<WidthSpec> {
        None
    }
}

/// What strategies need beyond the method name.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyInputs {
    /// The frozen-prefix compressor (FedOLF only).
    pub download: Download,
    /// CoCoFL: run frozen layers on fake-int8 weights.
    pub cocofl_fake_int8: bool,
    /// SLT: parameters trained per stage (stage lengths in proportion); `None` = equal stages.
    pub slt_stage_params: Option<Vec<usize>>,
}

impl StrategyInputs {
    /// Every option at its default: `download` only.
    pub fn new(download: Download) -> Self {
        Self { download, cocofl_fake_int8: false, slt_stage_params: None }
    }
}

/// The strategy for a method.
pub fn strategy_for(method: Method, inputs: &StrategyInputs) -> Box<dyn Strategy> {
    match method {
        Method::Fedolf => Box::new(FedOlf { download: inputs.download }),
        Method::Fedavg => Box::new(FedAvg { drop_weak: false }),
        Method::FedavgDrop => Box::new(FedAvg { drop_weak: true }),
        Method::RandomFreeze => Box::new(RandomFreeze),
        Method::Tinyfel => Box::new(TinyFel),
        Method::Cocofl => Box::new(CocoFl { fake_int8: inputs.cocofl_fake_int8 }),
        Method::Heterofl => Box::new(HeteroFl),
        Method::Feddrop => Box::new(Feddrop),
        Method::Fjord => Box::new(Fjord),
        Method::Slt => Box::new(Slt { stage_params: inputs.slt_stage_params.clone() }),
    }
}
