//! What a strategy hands the engine: a sampled client's [`ClientPlan`] (its layers' roles,
//! width, download compressor, local objective), the facts a plan is made from
//! ([`PlanContext`]), and what the server evaluates ([`EvalView`]). Plans are plain data:
//! they are serialised to Flower nodes.

use fedolf_models::SpaceLayout;

use crate::compress::qsgd::QsgdSettings;
use crate::compress::toa::ToaSettings;
use crate::local::error::LocalError;
use crate::local::objective::Objective;
use crate::local::roles::LayerRole;
use crate::tensor::submodel::WidthSpec;

/// How the frozen, out-of-graph prefix travels down.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Download {
    Full,
    Toa(ToaSettings),
    Qsgd(QsgdSettings),
}

/// What one sampled client does this round (serialisable: it travels to a Flower node).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientPlan {
    pub client: usize,
    /// The capacity the plan is made at, 0-based (`i_k − 1`): the client's cluster, or with
    /// memory budgets the one its budget holds.
    pub capacity: usize,
    pub roles: Vec<LayerRole>,
    pub download: Download,
    /// Width methods: the channels this client keeps (`None` = the full width).
    pub width: Option<WidthSpec>,
    /// CoCoFL's option: frozen layers run on fake-int8 weights.
    pub fake_int8_frozen: bool,
    /// The local loss (multi-exit methods distill between exits).
    pub objective: Objective,
    /// NeFL: the level whose own BatchNorm bank this client downloads and trains (`None` =
    /// the global model's BatchNorm).
    pub bn_bank: Option<usize>,
    /// `federation.capacity = "memory"`: the budget this plan was chosen to fit, and its
    /// predicted peak.
    #[serde(default)]
    pub memory: Option<MemoryFit>,
}

impl ClientPlan {
    /// A plan with these roles, the full width, a full download and cross-entropy.
    pub fn new(client: usize, capacity: usize, roles: Vec<LayerRole>) -> Self {
        Self { client, capacity, roles, download: Download::Full, width: None, fake_int8_frozen: false, objective: Objective::CrossEntropy, bn_bank: None, memory: None }
    }

    /// The frozen prefix travels down through this compressor.
    pub fn with_download(mut self, download: Download) -> Self {
        self.download = download;
        self
    }

    /// The channels the client keeps (`None` = the full width).
    pub fn with_width(mut self, width: Option<WidthSpec>) -> Self {
        self.width = width;
        self
    }

    /// Frozen layers run on fake-int8 weights (CoCoFL's option).
    pub fn with_fake_int8_frozen(mut self, on: bool) -> Self {
        self.fake_int8_frozen = on;
        self
    }

    /// The local loss.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }

    /// The level whose BatchNorm bank the client trains (NeFL).
    pub fn with_bn_bank(mut self, bank: Option<usize>) -> Self {
        self.bn_bank = bank;
        self
    }

    /// Layers the client does not train.
    pub fn frozen(&self) -> usize {
        self.roles.iter().filter(|r| **r != LayerRole::Trained).count()
    }
}

/// What the server evaluates each evaluation round.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalView {
    /// The full global model.
    Full,
    /// A width sub-model of it (SLT's current stage).
    Width(WidthSpec),
    /// The full model with its exit heads: the deepest output is the accuracy, the mean of
    /// every exit's logits the ensemble accuracy.
    Exits,
}

/// Facts a plan needs.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    pub num_layers: usize,
    /// `c`, how many capacities plans are made at: `federation.clusters`, or with memory
    /// budgets every one the model allows.
    pub capacities: usize,
    /// The current round (1-based) and the run's total `T`.
    pub round: usize,
    pub rounds: usize,
    pub layout: &'a SpaceLayout,
}

impl PlanContext<'_> {
    /// Width ratio `r_k = i_k / c` at a 0-based capacity.
    pub fn width_ratio(&self, capacity: usize) -> f64 {
        (capacity + 1) as f64 / self.capacities as f64
    }

    /// Level `l_k = c − i_k` (frozen / pruned layer count) at a 0-based capacity; at least
    /// one layer must stay trainable.
    pub fn level(&self, capacity: usize) -> Result<usize, LocalError> {
        let l = self.capacities - 1 - capacity;
        if l >= self.num_layers {
            return Err(LocalError::TooManyFrozen { frozen: l, num_layers: self.num_layers });
        }
        Ok(l)
    }
}

/// What a client's plan was chosen against (recorded with its round).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryFit {
    pub budget_mb: f64,
    pub predicted_mb: f64,
}
