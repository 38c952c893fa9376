//! One run's server side, step by step: everything the round loop needs besides its order
//! (ARCHITECTURE.md, "A round"). The simulator ([`crate::engine::round_loop`]) drives it in one process; the
//! Flower server (the `fedolf` Python module) drives the same value from Flower's strategy
//! hooks, so both sample, plan, compress, merge and evaluate with the same code.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::partition::{self, DirichletSettings};
use fedolf_datasets::{DataError, Dataset};
use fedolf_models::{redraw_on_host, LayeredNet};
use rand::seq::index::sample;

use crate::accounting::budget::{Calibration, ProbeRow};
use crate::io::checkpoint::Checkpoint;
use crate::engine::budgets::Budgets;
use crate::engine::round_context::{ClientSetup, RoundContext};
use crate::config::{Capacity, Config, PartitionKind};
use crate::accounting::energy::Energy;
use crate::local::evaluate::{evaluate, evaluate_exits, DeviceSplit, EVAL_BATCH};
use crate::local::error::LocalError;
use crate::tensor::host::{model_to_device, model_to_host, HostLayer, HostSplit, HostUpload};
use crate::runtime::memory::CountingAllocator;
use crate::tensor::params::{read_model, write_model};
use crate::compress::qsgd::QsgdSettings;
use crate::runtime::rng::{stream, Purpose};
use crate::engine::error::SimError;
use crate::records::RoundRecord;
use crate::strategy::{strategy_for, Build, ClientPlan, Download, EvalView, Measure, PlanContext, Strategy};
use crate::tensor::submodel::extract;
use crate::compress::toa::ToaSettings;
use crate::runtime::workers::WorkerLayout;

/// A run's fixed facts and its changing state (global model, strategy state).
pub struct Federation<B: AutodiffBackend> {
    pub cfg: Config,
    /// What every client round shares (architecture, layout, levels, local training).
    pub setup: ClientSetup,
    /// How the frozen prefix travels (FedOLF's TOA or QSGD settings).
    pub download: Download,
    /// Per-channel `(mean, std)` of the training split: every client normalises with these.
    pub stats: Vec<(f32, f32)>,
    pub host_train: HostSplit,
    train: DeviceSplit<B::InnerBackend>,
    test: DeviceSplit<B::InnerBackend>,
    /// Each client's sample indices into the training split.
    pub parts: Vec<Vec<usize>>,
    /// Each client's capacity cluster (0-based); with memory budgets, its budget profile.
    pub clusters: Vec<usize>,
    /// Memory budgets: the peak predictors and the nodes' declared budgets.
    pub(super) budgets: Budgets,
    /// Clients that take part at all (sampled from each round).
    pub eligible: Vec<usize>,
    pub global: LayeredNet<B>,
    pub strategy: Box<dyn Strategy<B>>,
    pub energy: Energy,
    pub(super) device: B::Device,
}

impl<B: AutodiffBackend> Federation<B> {
    /// A run's server side before round 1: the download compressor, the normalised data,
    /// the partition and clusters, the client setup, the seeded global model, and the
    /// method's strategy with the clients it lets take part.
    pub fn new(cfg: &Config, dataset: &Dataset, device: &B::Device) -> Result<Self, SimError> {
        let download = download_compressor(cfg)?;
        let (stats, host_train, train, test) = normalised_splits(dataset, device);
        let (parts, clusters) = partition_clients(cfg, dataset)?;
        let (setup, plain) = ClientSetup::new::<B>(cfg, dataset.train.shape, dataset.num_classes, device)?;
        check_levels(cfg, &setup)?;
        // Seeded on the host, layers before exits: one seed, bit-identical weights on every device.
        let global = redraw_on_host(plain.with_exits(&setup.exit_depths, device)?, &mut stream(cfg.seed, Purpose::Init, 0, 0))?;
        let initial = global.valid();
        let strategy = strategy_for::<B>(&Build { cfg, capacities: setup.capacities, download, model: Some(Measure { global: &initial, layout: &setup.layout, device }) })?;
        let eligible = eligible_clients(cfg, strategy.as_ref(), &clusters);
        Ok(Self {
            cfg: cfg.clone(),
            setup,
            download,
            stats,
            host_train,
            train,
            test,
            parts,
            clusters,
            budgets: Budgets::default(),
            eligible,
            global,
            strategy,
            energy: Energy::from(&cfg.energy),
            device: device.clone(),
        })
    }

    /// What the run is about to do, for the log header.
    pub fn info(&self, dataset_source: &str, workers: WorkerLayout) -> RunInfo {
        RunInfo {
            dataset_source: dataset_source.to_string(),
            train_size: self.train.len(),
            test_size: self.test.len(),
            num_layers: self.setup.num_layers,
            model_params: self.setup.model_params,
            cluster_frozen: match self.cfg.federation.capacity {
                Capacity::Clusters => (self.setup.method.frozen_per_cluster)(self.cfg.federation.clusters),
                Capacity::Memory => None,
            },
            calibration: self.calibration(),
            workers,
        }
    }

    pub fn plan_context(&self, round: usize) -> PlanContext<'_> {
        let fed = &self.cfg.federation;
        PlanContext { num_layers: self.setup.num_layers, capacities: self.setup.capacities, round, rounds: fed.rounds, layout: &self.setup.layout }
    }

    /// Step 1: `C_t` clients sampled uniformly without replacement among the eligible ones,
    /// each planned by the strategy (ascending client order); a strategy that selects its
    /// own clients (`Strategy::select`) picks them instead.
    pub fn plans(&self, round: usize) -> Result<Vec<ClientPlan>, SimError> {
        Ok(self.plan_round(round)?.plans)
    }

    /// [`Self::plans`], and the sampled clients whose memory budget fits no plan.
    pub fn plan_round(&self, round: usize) -> Result<RoundPlans, SimError> {
        self.plan_round_among(round, None)
    }

    /// [`Self::plan_round`] among the clients that can be reached (`live`: a Flower
    /// federation's connected nodes; `None`: all of them). With every eligible client live the
    /// draw is the simulator's, so a federation that loses no node samples as `fedolf run`.
    pub fn plan_round_among(&self, round: usize, live: Option<&[usize]>) -> Result<RoundPlans, SimError> {
        let seed = self.cfg.seed;
        let candidates: Vec<usize> = match live {
            Some(live) => self.eligible.iter().copied().filter(|k| live.contains(k)).collect(),
            None => self.eligible.clone(),
        };
        let per_round = self.cfg.federation.clients_per_round.min(candidates.len());
        let mut rng = stream(seed, Purpose::ClientSampling, round as u64, 0);
        if self.cfg.federation.capacity == Capacity::Clusters {
            if let Some(plans) = self.strategy.select(&self.plan_context(round), &candidates, &self.clusters, per_round, &mut rng) {
                let mut plans = plans?;
                plans.sort_unstable_by_key(|p| p.client);
                return Ok(RoundPlans { plans, sat_out: Vec::new() });
            }
        }
        let mut picked: Vec<usize> = sample(&mut rng, candidates.len(), per_round)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        picked.sort_unstable();
        if self.cfg.federation.capacity == Capacity::Clusters {
            let plans = picked.iter().map(|&k| self.plan_at(round, k, self.clusters[k])).collect::<Result<_, _>>()?;
            return Ok(RoundPlans { plans, sat_out: Vec::new() });
        }
        self.plan_within_budgets(round, &picked)
    }

    /// The strategy's plan for `client` at capacity `capacity` (its cluster, or the one its
    /// budget is tried at) in `round`.
    pub(super) fn plan_at(&self, round: usize, client: usize, capacity: usize) -> Result<ClientPlan, LocalError> {
        self.strategy.plan(&self.plan_context(round), client, capacity, &mut stream(self.cfg.seed, Purpose::Plan, round as u64, client as u64))
    }

    /// The start of every run, simulated or federated: continue after the checkpoint in
    /// `resume` (if any), then, with memory budgets, calibrate the peak predictor unless the
    /// checkpoint held it (`on_capacity`: each capacity as it is measured). Returns the rounds the
    /// checkpoint holds.
    pub fn start(&mut self, resume: Option<&Path>, memory: Option<&CountingAllocator>, on_capacity: &mut dyn FnMut(&ProbeRow)) -> Result<Vec<RoundRecord>, SimError> {
        let mut records = Vec::with_capacity(self.cfg.federation.rounds);
        if let Some(run_dir) = resume {
            records = self.resume(Checkpoint::read(run_dir, &self.host_global(), self.setup.num_layers)?)?;
        }
        if self.calibration().is_none() {
            self.calibrate(memory, on_capacity)?;
        }
        Ok(records)
    }

    /// Continue after `ckpt` (this run's checkpoint): its model, strategy state and
    /// calibration replace the fresh ones (the strategy's inputs depend only on shapes, not
    /// on the weights). Returns the records of its rounds.
    pub fn resume(&mut self, ckpt: Checkpoint) -> Result<Vec<RoundRecord>, SimError> {
        if ckpt.round > self.cfg.federation.rounds {
            return Err(SimError::Resume(format!("the checkpoint holds {} rounds, the run has {}", ckpt.round, self.cfg.federation.rounds)));
        }
        self.set_global(&ckpt.model)?;
        self.strategy.restore_state(ckpt.strategy_state).map_err(|e| SimError::Resume(format!("{}: {e}", self.cfg.method)))?;
        if let Some(calibration) = ckpt.calibration {
            self.use_calibration(calibration);
        }
        Ok(ckpt.records)
    }

    /// The global model on the host.
    pub fn host_global(&self) -> Vec<HostLayer> {
        model_to_host(read_model(&self.global.valid()))
    }

    /// Replace the global model (a checkpoint, or the model a Flower strategy holds).
    pub fn set_global(&mut self, model: &[HostLayer]) -> Result<(), SimError> {
        let global = self.global.clone();
        self.global = write_model(global, &model_to_device(model, &self.device))?;
        Ok(())
    }

    /// What client `plan` downloads: the global model, unless its method gives it its own.
    pub fn client_start(&self, plan: &ClientPlan, host_global: &[HostLayer]) -> Option<Vec<HostLayer>> {
        self.strategy.client_start(plan, host_global)
    }

    /// The shared inputs of this round's client rounds.
    pub fn round_context<'a>(&'a self, round: usize, memory: Option<&'a CountingAllocator>) -> RoundContext<'a> {
        self.setup.round(round, &self.host_train, memory)
    }

    /// Step 7: the strategy's merge of `uploads` (in the order of `plans`) into the global
    /// model; layers nobody trained keep their value.
    pub fn merge(&mut self, uploads: &[HostUpload], plans: &[ClientPlan]) -> Result<(), SimError> {
        let global_params = read_model(&self.global.valid());
        let uploads: Vec<_> = uploads.iter().map(|u| u.to_device::<B::InnerBackend>(&self.device)).collect();
        let merged = self.strategy.merge(&global_params, &uploads, plans)?;
        let merged: Vec<_> = merged
            .into_iter()
            .map(|layer| layer.map(|tensors| tensors.into_iter().map(|t| lift::<B>(t)).collect()))
            .collect();
        let global = self.global.clone();
        self.global = write_model(global, &merged)?;
        Ok(())
    }

    /// Step 8: on evaluation rounds (every `eval_every`, and the last) the view the strategy
    /// names, after its pre-evaluation step, scored on the test set; `None` on other rounds.
    pub fn evaluate_round(&mut self, round: usize) -> Result<Option<Evaluation>, SimError> {
        let fed = &self.cfg.federation;
        if round % fed.eval_every != 0 && round != fed.rounds {
            return Ok(None);
        }
        let evaluation = self.evaluate_now(round);
        if !evaluation.test_loss.is_finite() {
            return Err(SimError::Diverged { round, loss: evaluation.test_loss });
        }
        Ok(Some(evaluation))
    }

    /// Evaluate the global model now (also before round 1, for a Flower strategy's round 0).
    pub fn evaluate_now(&mut self, round: usize) -> Evaluation {
        let global = self.global.clone();
        self.global = self.strategy.before_eval(global, &self.train.images);
        let view = self.strategy.eval_view(&self.plan_context(round));
        match view {
            EvalView::Full => Evaluation::single(evaluate(&self.global.valid(), &self.test, EVAL_BATCH)),
            EvalView::Width(spec) => Evaluation::single(evaluate(&extract(self.global.valid(), &self.setup.layout, &spec, &self.device), &self.test, EVAL_BATCH)),
            EvalView::Exits => {
                let (accuracy, test_loss, accuracy_ensemble) = evaluate_exits(&self.global.valid(), &self.test, EVAL_BATCH);
                Evaluation { accuracy, test_loss, accuracy_ensemble }
            }
        }
    }

    /// The checkpoint after `round` with these records.
    pub fn checkpoint(&self, round: usize, records: Vec<RoundRecord>) -> Checkpoint {
        Checkpoint {
            round,
            model: self.host_global(),
            num_layers: self.setup.num_layers,
            strategy_state: self.strategy.state(),
            records,
            calibration: self.calibration(),
        }
    }
}

/// What a run is about to do, for the log header.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dataset_source: String,
    pub train_size: usize,
    pub test_size: usize,
    pub num_layers: usize,
    pub model_params: usize,
    /// Layers each cluster freezes (weakest first); `None` = it changes per round (SLT stages).
    pub cluster_frozen: Option<Vec<usize>>,
    /// Clients trained at once, and kernel threads each.
    pub workers: WorkerLayout,
    /// Memory budgets: the predictor's measured ratios per frozen count.
    pub calibration: Option<Calibration>,
}

/// One round's plans, and the sampled clients that sat it out (no plan fits their budget).
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPlans {
    pub plans: Vec<ClientPlan>,
    pub sat_out: Vec<usize>,
}

/// Each client's samples and capacity cluster, both fixed for the run by the seed: every
/// process that reads the same data with the same config (a Flower node, the simulator)
/// deals the same partition.
pub fn partition_clients(cfg: &Config, dataset: &Dataset) -> Result<(Vec<Vec<usize>>, Vec<usize>), DataError> {
    let fed = &cfg.federation;
    let parts = match cfg.data.partition {
        PartitionKind::Iid => partition::iid(dataset.train.len(), fed.clients, &mut stream(cfg.seed, Purpose::Partition, 0, 0))?,
        PartitionKind::Dirichlet => partition::dirichlet(
            &dataset.train.labels,
            dataset.num_classes,
            fed.clients,
            DirichletSettings { alpha: cfg.data.alpha, min_size: cfg.data.min_size, max_retries: 20_000 },
            &mut stream(cfg.seed, Purpose::Partition, 0, 0),
        )?,
    };
    let clusters = partition::capacity_clusters(fed.clients, fed.capacity_groups(), &mut stream(cfg.seed, Purpose::Clusters, 0, 0))?;
    Ok((parts, clusters))
}

/// Move an aggregated tensor (computed on the inner backend) back to the training backend.
fn lift<B: AutodiffBackend>(t: crate::tensor::params::NamedTensor<B::InnerBackend>) -> crate::tensor::params::NamedTensor<B> {
    crate::tensor::params::NamedTensor { name: t.name, shape: t.shape, value: Tensor::from_inner(t.value) }
}

/// The global model on the test set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Test accuracy as a fraction.
    pub accuracy: f64,
    pub test_loss: f64,
    /// Multi-exit methods: accuracy of the mean of every exit's logits.
    pub accuracy_ensemble: Option<f64>,
}

impl Evaluation {
    fn single((accuracy, test_loss): (f64, f64)) -> Self {
        Self { accuracy, test_loss, accuracy_ensemble: None }
    }
}

/// How the frozen prefix travels down: QSGD when `qsgd.bits` is set, else TOA.
fn download_compressor(cfg: &Config) -> Result<Download, SimError> {
    Ok(if cfg.qsgd.bits > 0 {
        Download::Qsgd(QsgdSettings::new(cfg.qsgd.bits, cfg.qsgd.bucket)?)
    } else {
        Download::Toa(ToaSettings::new(cfg.toa.s, cfg.toa.mode)?)
    })
}

/// The training split's per-channel statistics, the training split normalised with them on
/// the host (each client puts its own samples on its device), and the server's copies of
/// both splits on the device (inner backend: data needs no graph).
fn normalised_splits<B: Backend>(dataset: &Dataset, device: &B::Device) -> (Vec<(f32, f32)>, HostSplit, DeviceSplit<B>, DeviceSplit<B>) {
    let stats = dataset.train.channel_stats();
    let host_train = HostSplit::new(&dataset.train, &stats);
    let train = DeviceSplit::new(&host_train, device);
    let test = DeviceSplit::new(&HostSplit::new(&dataset.test, &stats), device);
    (stats, host_train, train, test)
}

/// Methods whose cluster levels freeze or cut layers need at least one layer left to train
/// in the weakest cluster. (With memory budgets the levels are the model's own.)
fn check_levels(cfg: &Config, setup: &ClientSetup) -> Result<(), SimError> {
    let fed = &cfg.federation;
    let num_layers = setup.num_layers;
    if fed.capacity == Capacity::Clusters && setup.method.uses_levels && fed.clusters > num_layers {
        return Err(SimError::Config {
            field: "federation.clusters",
            problem: format!(
                "{} clusters freeze or drop up to {} layers, but {} has only {num_layers} (use at most {num_layers} clusters)",
                fed.clusters,
                fed.clusters - 1,
                setup.model.name()
            ),
        });
    }
    Ok(())
}

/// The clients that take part at all: the strategy's choice among clusters, or with memory
/// budgets everyone (the budget decides each round).
fn eligible_clients<B: AutodiffBackend>(cfg: &Config, strategy: &dyn Strategy<B>, clusters: &[usize]) -> Vec<usize> {
    let fed = &cfg.federation;
    match fed.capacity {
        Capacity::Clusters => (0..fed.clients).filter(|&k| strategy.eligible(clusters[k], fed.clusters)).collect(),
        Capacity::Memory => (0..fed.clients).collect(),
    }
}
