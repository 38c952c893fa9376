//! Experiment configuration: plain serde structs (unknown fields rejected, with their dotted
//! path named), `--set key=value` overrides applied to the TOML tree before parsing, and
//! range checks that name the field.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::runtime::backend::DeviceKind;
use crate::compress::toa::ToaMode;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("config field `{field}` = {value}: {problem}")]
    Invalid { field: &'static str, value: String, problem: String },
    /// An invalid value, with where it came from (the config file, or the `--set` that gave
    /// it). `error`, not `source`: the message already carries it, and a source would print
    /// twice in an error chain.
    #[error("{origin}: {error}")]
    InConfig { origin: String, error: Box<ConfigError> },
    #[error("--set `{0}`: expected key=value (e.g. train.lr=0.01)")]
    BadOverride(String),
    #[error("--set `{key}`: `{part}` is not a table in the config")]
    OverrideTarget { key: String, part: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionKind {
    Iid,
    Dirichlet,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run name: results go to `runs/<name>-<timestamp>/`.
    pub name: String,
    pub seed: u64,
    /// Trials: one run per seed, into `trial-<seed>/` of one run folder, with the mean and
    /// standard deviation across them (the paper's protocol: three trials). Empty = one run
    /// with `seed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// The method's name (`fedolf list`; the methods are `strategy/`'s registry).
    pub method: String,
    pub device: DeviceKind,
    /// Write `checkpoint/` every this many rounds (and always after the last); 0 = only at
    /// the end.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub federation: FederationConfig,
    pub train: TrainConfig,
    pub toa: ToaConfig,
    #[serde(default)]
    pub qsgd: QsgdConfig,
    pub energy: EnergyConfig,
    /// Each method's own section (`[cocofl]`, `[slt]`, …) as written: the method's file
    /// declares and checks its options (`strategy/`), this file only carries them.
    #[serde(skip)]
    pub options: BTreeMap<String, toml::Table>,
}

fn default_checkpoint_every() -> usize {
    10
}

/// What a client's NaN or infinite loss or upload does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NonFinite {
    /// Stop the run with an error naming the round and the client.
    #[default]
    Stop,
    /// Leave the client out of the round's merge (counted in `rounds.csv`, `skipped`).
    Skip,
}

/// What decides how much of the model a client trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Capacity {
    /// A fixed table: cluster i of c freezes (or prunes) `l = c − i` layers.
    #[default]
    Clusters,
    /// Each client declares a memory budget (`budgets_mb`); each round it trains the largest
    /// plan of its method whose predicted training peak fits (`crate::accounting::budget`).
    Memory,
}

/// QSGD on the frozen layers' download (the paper's comparison for TOA); `bits = 0` = off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QsgdConfig {
    pub bits: u32,
    pub bucket: usize,
}

impl Default for QsgdConfig {
    fn default() -> Self {
        Self { bits: 0, bucket: 128 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// fashion-mnist, emnist, cifar10, cifar100, cinic10.
    pub dataset: String,
    /// Folder with the dataset's files; empty = search well-known places.
    #[serde(default)]
    pub data_dir: String,
    pub partition: PartitionKind,
    /// Dirichlet concentration (smaller = more skewed).
    pub alpha: f64,
    /// Smallest client dataset a Dirichlet draw may produce.
    pub min_size: usize,
    /// Use only the first N training images (0 = all).
    #[serde(default)]
    pub train_limit: usize,
    /// Evaluate on the first N test images (0 = all).
    #[serde(default)]
    pub test_limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// cnn, alexnet, resnet20, resnet44.
    pub name: String,
    /// CNN only: hidden FC width before the classifier. 0 = none (the FedOLF paper's EMNIST
    /// CNN); 512 = FedAvg's CNN.
    #[serde(default)]
    pub cnn_hidden: usize,
    /// ResNets only: `a` = parameter-free shortcuts (He et al. §4.2, the CIFAR ResNets);
    /// `b` = 1×1 conv + BN projections.
    #[serde(default)]
    pub shortcut: ShortcutOption,
}

/// ResNet shortcuts as configs and the command line spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShortcutOption {
    /// Parameter-free: subsampled identity, zero-padded channels (He et al. §4.2).
    #[default]
    A,
    /// 1×1 conv + BN projection.
    B,
}

impl std::str::FromStr for ShortcutOption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "a" => Ok(Self::A),
            "b" => Ok(Self::B),
            other => Err(format!("unknown shortcut `{other}`: a (zero-padded identity) or b (1×1 projection)")),
        }
    }
}

impl From<ShortcutOption> for fedolf_models::Shortcut {
    fn from(option: ShortcutOption) -> Self {
        match option {
            ShortcutOption::A => Self::A,
            ShortcutOption::B => Self::B,
        }
    }
}

impl ModelConfig {
    pub fn options(&self) -> fedolf_models::ModelOptions {
        fedolf_models::ModelOptions { cnn_hidden: self.cnn_hidden, shortcut: self.shortcut.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// K, the client population.
    pub clients: usize,
    /// |C_t|, clients sampled per round.
    pub clients_per_round: usize,
    /// T.
    pub rounds: usize,
    /// c capacity clusters; cluster i (1..c) freezes l = c − i layers.
    pub clusters: usize,
    pub eval_every: usize,
    /// Clients trained at once, each on its own thread with its own model copy (0 = the
    /// device's default: one per core on the CPU). Results are bit-identical for every value.
    #[serde(default)]
    pub workers: usize,
    /// `clusters` (the fixed table above) or `memory` (budgets choose each round).
    #[serde(default)]
    pub capacity: Capacity,
    /// With `capacity = "memory"`: device profiles in MB, dealt to the clients at random
    /// like clusters (client k gets profile `cluster_k` of `budgets_mb.len()`).
    #[serde(default)]
    pub budgets_mb: Vec<f64>,
    /// With `capacity = "memory"`: each round a client's budget is its profile × (1 + u),
    /// u uniform in [−jitter, jitter] (the paper's "real-time memory limit"); 0 = fixed.
    #[serde(default)]
    pub budget_jitter: f64,
}

impl FederationConfig {
    /// Capacity groups the clients are dealt into: the clusters, or the budget profiles.
    pub fn capacity_groups(&self) -> usize {
        match self.capacity {
            Capacity::Clusters => self.clusters,
            Capacity::Memory => self.budgets_mb.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// E, local epochs.
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// With E > 1: compute the frozen prefix's outputs once per round and reuse them every
    /// epoch (equal results up to float summation order). Off by default: the cache is
    /// counted in the client's memory (a device would need it), and it can exceed the
    /// training peak itself on a client with many samples.
    #[serde(default)]
    pub cache_frozen: bool,
    /// A client's NaN/inf loss or upload: `stop` the run (default) or `skip` the client.
    #[serde(default)]
    pub nonfinite: NonFinite,
    /// BatchNorm in a frozen prefix outside the graph: `running` statistics (default) or each
    /// `batch`'s own (PyTorch's train mode under `no_grad`).
    #[serde(default)]
    pub frozen_norm: crate::local::training::FrozenNorm,
}

impl TrainConfig {
    /// The local-training settings every client of the run uses.
    pub fn local_training(&self) -> crate::local::training::LocalTraining {
        crate::local::training::LocalTraining {
            epochs: self.epochs,
            batch_size: self.batch_size,
            sgd: crate::local::training::SgdSettings { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay },
            cache_frozen: self.cache_frozen,
            frozen_norm: self.frozen_norm,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToaConfig {
    /// Fraction of tensors kept per sparsified frozen layer; 1 = TOA off.
    pub s: f64,
    pub mode: ToaMode,
}

/// Energy model (paper Figs. 7–9): compute = power × seconds; communication = link power ×
/// bytes ÷ bandwidth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyConfig {
    /// Watts drawn by a client while training (default 5 W: a Jetson-Nano-class edge board).
    pub device_power_w: f64,
    /// Watts drawn by the radio while transmitting or receiving (default 1 W, Wi-Fi class).
    pub link_power_w: f64,
    /// Link bandwidth in megabits per second (default 20 Mbit/s).
    pub bandwidth_mbps: f64,
}

/// serde's and toml's messages flattened to one line: errors print as one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The top-level tables `Config` itself declares; any other table is a method's section.
pub(crate) const OWN_SECTIONS: &[&str] = &["data", "model", "federation", "train", "toa", "qsgd", "energy"];

/// The built-in default experiment (`experiments/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../experiments/default.toml");

impl Config {
    /// Parse TOML text, apply `key=value` overrides, check ranges, then check the method and
    /// its sections with `methods`, which may fill them in (the registry above this file passes its own:
    /// `Config::from_toml` is `strategy/`'s, so every config read is checked whole).
    /// `origin` names the source in error messages.
    pub fn parse_with(text: &str, origin: &str, overrides: &[String], methods: &dyn Fn(&mut Config) -> Result<(), ConfigError>) -> Result<Self, ConfigError> {
        let mut tree: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: origin.into(),
                message: one_line(&e.to_string()),
            })?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        // Top-level tables that are not this file's sections are methods' sections.
        let options: BTreeMap<String, toml::Table> = tree
            .iter()
            .filter(|(key, value)| value.is_table() && !OWN_SECTIONS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.as_table().cloned().unwrap_or_default()))
            .collect();
        tree.retain(|key, _| !options.contains_key(key));
        let value = toml::Value::Table(tree);
        let mut cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = one_line(&e.into_inner().to_string());
            ConfigError::Parse { path: format!("{}: field `{path}`", blamed(origin, overrides, &path)), message }
        })?;
        cfg.options = options;
        cfg.validate().and_then(|()| methods(&mut cfg)).map_err(|e| match e {
            ConfigError::Parse { path, message } => ConfigError::Parse { path: format!("{}: field `{path}`", blamed(origin, overrides, &path)), message },
            ConfigError::Invalid { field, .. } => ConfigError::InConfig { origin: blamed(origin, overrides, field), error: Box::new(e) },
            e => ConfigError::InConfig { origin: origin.to_string(), error: Box::new(e) },
        })?;
        Ok(cfg)
    }

    /// The seeds of the run's trials (`seeds`, or `[seed]`).
    pub fn trial_seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.seed]
        } else {
            self.seeds.clone()
        }
    }

    /// Whether a checkpoint follows `round`: every `checkpoint_every` rounds, and the last.
    pub fn checkpoint_due(&self, round: usize) -> bool {
        (self.checkpoint_every > 0 && round % self.checkpoint_every == 0) || round == self.federation.rounds
    }

    /// The config of one trial of a multi-seed run: this run with `seed`, as a single run.
    pub fn trial(&self, seed: u64) -> Config {
        Config { seed, seeds: Vec::new(), ..self.clone() }
    }

    pub fn to_toml(&self) -> String {
        let sections: toml::Table = self.options.iter().map(|(name, table)| (name.clone(), toml::Value::Table(table.clone()))).collect();
        toml::to_string_pretty(self).expect("a Config always serialises") + &toml::to_string_pretty(&sections).expect("TOML tables serialise")
    }

    /// Method `method`'s options: its section parsed as `T` (absent = `T::default()`); the
    /// error's path is the dotted field inside the section.
    pub fn options_of<T: DeserializeOwned + Default>(&self, method: &str) -> Result<T, ConfigError> {
        let Some(section) = self.options.get(method) else { return Ok(T::default()) };
        serde_path_to_error::deserialize(toml::Value::Table(section.clone())).map_err(|e| {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() { method.to_string() } else { format!("{method}.{inner}") };
            ConfigError::Parse { path, message: one_line(&e.into_inner().to_string()) }
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn bad(field: &'static str, value: impl std::fmt::Display, problem: &str) -> ConfigError {
            ConfigError::Invalid { field, value: value.to_string(), problem: problem.into() }
        }
        if let Some(dup) = self.seeds.iter().enumerate().find_map(|(i, s)| self.seeds[..i].contains(s).then_some(*s)) {
            return Err(bad("seeds", dup, "appears twice: each trial needs its own seed"));
        }
        let f = &self.federation;
        if f.clients == 0 {
            return Err(bad("federation.clients", f.clients, "need at least one client"));
        }
        if f.clients_per_round == 0 || f.clients_per_round > f.clients {
            return Err(bad("federation.clients_per_round", f.clients_per_round, &format!("must be in 1..={} (federation.clients)", f.clients)));
        }
        if f.rounds == 0 {
            return Err(bad("federation.rounds", f.rounds, "must be at least 1"));
        }
        if f.clusters == 0 || f.clusters > f.clients {
            return Err(bad("federation.clusters", f.clusters, &format!("must be in 1..={} (federation.clients)", f.clients)));
        }
        if f.capacity == Capacity::Memory {
            if f.budgets_mb.is_empty() || f.budgets_mb.len() > f.clients {
                return Err(bad("federation.budgets_mb", format!("{:?}", f.budgets_mb), &format!("capacity = \"memory\" needs 1..={} budgets in MB (federation.clients)", f.clients)));
            }
            if let Some(b) = f.budgets_mb.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
                return Err(bad("federation.budgets_mb", b, "every budget must be a finite number of MB > 0"));
            }
            if !(f.budget_jitter.is_finite() && (0.0..1.0).contains(&f.budget_jitter)) {
                return Err(bad("federation.budget_jitter", f.budget_jitter, "must be in [0, 1)"));
            }
        } else if !f.budgets_mb.is_empty() || f.budget_jitter != 0.0 {
            let field = if f.budgets_mb.is_empty() { "federation.budget_jitter" } else { "federation.budgets_mb" };
            return Err(bad(field, "set", "applies only with federation.capacity = \"memory\""));
        }
        if f.eval_every == 0 {
            return Err(bad("federation.eval_every", f.eval_every, "must be at least 1"));
        }
        let t = &self.train;
        if t.epochs == 0 {
            return Err(bad("train.epochs", t.epochs, "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(bad("train.batch_size", t.batch_size, "must be at least 1"));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(bad("train.lr", t.lr, "must be finite and > 0"));
        }
        if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
            return Err(bad("train.momentum", t.momentum, "must be in [0, 1)"));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(bad("train.weight_decay", t.weight_decay, "must be finite and ≥ 0"));
        }
        if t.cache_frozen && t.frozen_norm == crate::local::training::FrozenNorm::Batch {
            return Err(bad("train.cache_frozen", t.cache_frozen, "needs train.frozen_norm = \"running\": with each batch's statistics the frozen prefix's output depends on its batch, so it cannot be computed once for the round"));
        }
        if !(self.toa.s.is_finite() && self.toa.s > 0.0 && self.toa.s <= 1.0) {
            return Err(bad("toa.s", self.toa.s, "must be in (0, 1] (1 = TOA off)"));
        }
        if self.qsgd.bits != 0 {
            if !(2..=16).contains(&self.qsgd.bits) {
                return Err(bad("qsgd.bits", self.qsgd.bits, "must be 0 (off) or in 2..=16"));
            }
            if self.qsgd.bucket == 0 {
                return Err(bad("qsgd.bucket", self.qsgd.bucket, "must be at least 1"));
            }
            if self.toa.s < 1.0 {
                return Err(bad("qsgd.bits", self.qsgd.bits, "QSGD and TOA both compress the frozen layers: set toa.s = 1 or qsgd.bits = 0"));
            }
        }
        if self.data.partition == PartitionKind::Dirichlet && !(self.data.alpha.is_finite() && self.data.alpha > 0.0) {
            return Err(bad("data.alpha", self.data.alpha, "must be finite and > 0"));
        }
        let e = &self.energy;
        for (field, v) in [("energy.device_power_w", e.device_power_w), ("energy.link_power_w", e.link_power_w)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(field, v, "must be finite and ≥ 0"));
            }
        }
        if !(e.bandwidth_mbps.is_finite() && e.bandwidth_mbps > 0.0) {
            return Err(bad("energy.bandwidth_mbps", e.bandwidth_mbps, "must be finite and > 0"));
        }
        Ok(())
    }
}

/// `a.b.c=value`: value parsed as a TOML literal (number, bool, string in quotes), else taken
/// as a bare string.
/// Where the value of config field `field` (a dotted path) came from: the last `--set` that
/// names it, or a table above or below it; else the config file `origin`.
fn blamed(origin: &str, overrides: &[String], field: &str) -> String {
    let touches = |key: &str| key == field || key.starts_with(&format!("{field}.")) || field.starts_with(&format!("{key}."));
    overrides
        .iter()
        .rev()
        .find(|o| o.split_once('=').is_some_and(|(key, _)| !field.is_empty() && touches(key.trim())))
        .map_or_else(|| origin.to_string(), |o| format!("--set {o}"))
}

fn apply_override(tree: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| ConfigError::BadOverride(assignment.into()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigError::BadOverride(assignment.into()));
    }
    let value = format!("v = {}", raw.trim())
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = tree;
    for part in &parts[..parts.len() - 1] {
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::OverrideTarget { key: key.into(), part: part.to_string() })?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
