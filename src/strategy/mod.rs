//! Methods as strategies: each file states its paper and its rule, and turns a sampled
//! client into an owned [`ClientPlan`] (per-layer roles, width, download compressor, local
//! objective). Everything a method does differently goes through the [`Strategy`] hooks —
//! what a client downloads, the server merge, the step before evaluation and what is
//! evaluated — so the round loop (`engine/round_loop.rs`) names no method.

pub mod plan;

use rand_chacha::ChaCha8Rng;

pub use adaptivefl::{PoolSelection, fitting_model as adaptivefl_fitting_model, kept_full_depths as adaptivefl_depths, ClientTables as AdaptiveFlTables, WIDTHS as ADAPTIVEFL_WIDTHS, pool_with_params as adaptivefl_pool, AdaptiveFl, PoolModel};
pub use cocofl::{cocofl_blend, CocoFl};
pub use depthfl::{depthfl_weight, DepthFl};
pub use feddrop::Feddrop;
pub use fedavg::FedAvg;
pub use fedavg_drop::FedAvgDrop;
pub use self::fedolf::{FedOlf, LayerMerge};
pub use fjord::Fjord;
pub use heterofl::{recompute_bn_statistics, HeteroFl};
pub use nefl::{is_batch_norm, nefl_skipped_blocks, NeFl};
pub use random_freeze::RandomFreeze;
pub use scalefl::{distills as scalefl_distills, matched_widths as scalefl_matched_widths, ScaleFl};
pub use slt::{StageLengths, stage_count, stage_ends, stage_of, stage_plan, stage_trainable_params, stage_width, Slt};
pub use tinyfel::TinyFel;
pub use plan::{ClientPlan, Download, EvalView, MemoryFit, PlanContext};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{LayeredNet, SpaceLayout};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tensor::aggregate::{aggregate_layerwise, AggregateError, LayerUpload};
use crate::config::{Config, ConfigError, OWN_SECTIONS};
use crate::local::error::LocalError;
use crate::tensor::host::{HostLayer, HostTensor};
use crate::tensor::params::LayerParams;

/// One method. `B` is the clients' training backend; the server merges on its inner backend.
pub trait Strategy<B: AutodiffBackend>: Send {
    /// Whether clients of this cluster take part at all (FedAvg's drop variant).
    fn eligible(&self, _cluster: usize, _capacities: usize) -> bool {
        true
    }

    /// Client `client`'s plan at capacity `capacity` (0 = the weakest of `ctx.capacities`):
    /// its cluster, or with memory budgets the capacity its budget is tried at.
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError>;

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
            Some(t) => Err(format!("the method keeps no state, but the checkpoint holds `{}`", t.name)),
        }
    }
}

/// What a method is built from: the run's config, how many capacities it plans for
/// (`federation.clusters`, or with memory budgets the model's own), how the frozen prefix
/// travels down, and, in a run, the initial global model on which SLT, ScaleFL and AdaptiveFL
/// measure what they need. The registry hands each method its own options beside it
/// ([`Method::build`]).
pub struct Build<'a, M: Backend> {
    pub cfg: &'a Config,
    pub capacities: usize,
    /// The frozen-prefix compressor (FedOLF only).
    pub download: Download,
    /// `None` where no model is at hand (a test of a method's plans): the measuring methods
    /// fall back to their unmeasured defaults.
    pub model: Option<Measure<'a, M>>,
}

/// The initial global model, its channel layout and its device.
pub struct Measure<'a, M: Backend> {
    pub global: &'a LayeredNet<M>,
    pub layout: &'a SpaceLayout,
    pub device: &'a M::Device,
}

/// One method's static side, implemented by its file: its name and description, its config
/// section, the facts the engine asks before any model exists, and its constructor.
pub trait Method: Sized {
    /// Its config name (`method = "…"`), which also names its section (`[NAME]`).
    const NAME: &'static str;
    /// One line for `fedolf list`.
    const ABOUT: &'static str;
    /// Its config section ([`NoOptions`] where it has none); absent = `Default`.
    type Options: DeserializeOwned + Serialize + Default;
    /// Whether cluster levels `l = c − i` freeze or cut layers, so `c ≤ N` is required.
    const USES_LEVELS: bool = false;
    /// Whether a level's layers are frozen (else they are dropped or skipped: DepthFL,
    /// ScaleFL, NeFL).
    const FREEZES_LEVELS: bool = Self::USES_LEVELS;

    /// Layers each of `c` clusters freezes, weakest first, for the run header; `None` = it
    /// changes per round.
    fn frozen_per_cluster(c: usize) -> Option<Vec<usize>> {
        Some((0..c).rev().map(|i| if Self::FREEZES_LEVELS { i } else { 0 }).collect())
    }

    /// Depths after which the global model carries an exit head (multi-exit methods).
    fn exit_depths(_num_layers: usize, _c: usize) -> Vec<usize> {
        Vec::new()
    }

    /// Range checks of its options, beyond their types.
    fn check(_options: &Self::Options) -> Result<(), ConfigError> {
        Ok(())
    }

    fn build<M: Backend>(build: &Build<'_, M>, options: Self::Options) -> Self;
}

/// The options of a method that has none: its section, if written, must be empty.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// What the engine and the command line ask of a method without building it.
#[derive(Debug)]
pub struct Facts {
    pub name: &'static str,
    pub about: &'static str,
    pub uses_levels: bool,
    pub frozen_per_cluster: fn(usize) -> Option<Vec<usize>>,
    pub exit_depths: fn(usize, usize) -> Vec<usize>,
    /// Its options with their defaults, dotted as in `--set` (`cocofl.fake_int8 = false`).
    pub options: fn() -> Vec<String>,
    /// Parse and check its section, and write it back whole (defaults filled in).
    settle: fn(&mut Config) -> Result<(), ConfigError>,
}

impl Facts {
    const fn of<T: Method>() -> Self {
        Self {
            name: T::NAME,
            about: T::ABOUT,
            uses_levels: T::USES_LEVELS,
            frozen_per_cluster: T::frozen_per_cluster,
            exit_depths: T::exit_depths,
            options: || {
                let table = toml::Table::try_from(T::Options::default()).unwrap_or_default();
                table.iter().map(|(key, value)| format!("{}.{key} = {value}", T::NAME)).collect()
            },
            settle: |cfg| {
                let options = cfg.options_of::<T::Options>(T::NAME)?;
                T::check(&options)?;
                let table = toml::Table::try_from(&options).map_err(|e| ConfigError::Parse { path: T::NAME.into(), message: e.to_string() })?;
                if table.is_empty() {
                    cfg.options.remove(T::NAME);
                } else {
                    cfg.options.insert(T::NAME.into(), table);
                }
                Ok(())
            },
        }
    }
}

/// The registry: one line a method (`file::Type`), in `fedolf list`'s order. It lists their
/// [`Facts`] and builds the configured one.
// Each method's file, declared here and not inside `registry!`: cargo-mutants finds source
// files by their `mod` lines and does not look into a macro's input, so files declared there
// are never mutated (experiments/mutants.sh found fedolf.rs with no mutants at all).
mod adaptivefl;
mod cocofl;
mod depthfl;
mod fedavg;
mod fedavg_drop;
mod feddrop;
mod fedolf;
mod fjord;
mod heterofl;
mod nefl;
mod random_freeze;
mod scalefl;
mod slt;
mod tinyfel;

macro_rules! registry {
    ($($file:ident::$method:ident,)+) => {
        /// Every method.
        pub const METHODS: &[Facts] = &[$(Facts::of::<self::$file::$method>(),)+];

        /// The strategy of the configured method, with its options.
        pub fn strategy_for<B: AutodiffBackend>(build: &Build<'_, B::InnerBackend>) -> Result<Box<dyn Strategy<B>>, ConfigError> {
            let name = build.cfg.method.as_str();
            $(if name == <self::$file::$method as Method>::NAME {
                let options = build.cfg.options_of(name)?;
                return Ok(Box::new(<self::$file::$method as Method>::build(build, options)));
            })+
            Err(unknown_method(name))
        }
    };
}

registry! {
    fedolf::FedOlf,
    fedavg::FedAvg,
    fedavg_drop::FedAvgDrop,
    random_freeze::RandomFreeze,
    tinyfel::TinyFel,
    cocofl::CocoFl,
    heterofl::HeteroFl,
    feddrop::Feddrop,
    fjord::Fjord,
    slt::Slt,
    depthfl::DepthFl,
    scalefl::ScaleFl,
    adaptivefl::AdaptiveFl,
    nefl::NeFl,
}

fn unknown_method(name: &str) -> ConfigError {
    let known: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
    ConfigError::Invalid { field: "method", value: format!("{name:?}"), problem: format!("unknown method (one of {})", known.join(", ")) }
}

/// The facts of method `name`.
pub fn facts(name: &str) -> Result<&'static Facts, ConfigError> {
    METHODS.iter().find(|m| m.name == name).ok_or_else(|| unknown_method(name))
}

/// The registry's half of a config's checks: a known method, every method section naming a
/// method and holding valid options for it. Every method's section is then held whole,
/// defaults filled in, so two configs that mean the same compare equal and the run folder's
/// `config.toml` spells every option out.
fn settle_methods(cfg: &mut Config) -> Result<(), ConfigError> {
    facts(&cfg.method)?;
    if let Some(section) = cfg.options.keys().find(|s| facts(s).is_err()) {
        return Err(ConfigError::Parse {
            path: section.clone(),
            message: format!("unknown field `{section}`: not a config section ({}) or a method's", OWN_SECTIONS.join(", ")),
        });
    }
    METHODS.iter().try_for_each(|method| (method.settle)(cfg))
}

impl Config {
    /// Parse TOML text, apply `key=value` overrides and check the whole config, the method
    /// and its options included (`origin` names the source in error messages). Defined here
    /// so that the methods' checks, which live above `config.rs`, are never skipped.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::parse_with(text, origin, overrides, &settle_methods)
    }
}
