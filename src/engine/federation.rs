//! One run's server side, step by step: everything the round loop needs besides its order
//! (ARCHITECTURE.md, "A round"). The simulator ([`crate::engine::round_loop`]) drives it in one process; the
//! Flower server (the `fedolf` Python module) drives the same value from Flower's strategy
//! hooks, so both sample, plan, compress, merge and evaluate with the same code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::partition::{self, DirichletSettings};
use fedolf_datasets::{DataError, Dataset};
use fedolf_models::{redraw_on_host, LayeredNet};
use rand::seq::index::sample;

use crate::accounting::budget::{mb, round_budget_mb, Calibration, PeakPredictor, PlanFacts, ProbeRow};
use crate::io::checkpoint::Checkpoint;
use crate::engine::round_context::{ClientSetup, RoundContext};
use crate::config::{Capacity, Config, PartitionKind};
use crate::accounting::energy::Energy;
use crate::local::evaluate::{evaluate, evaluate_exits, DeviceSplit, EVAL_BATCH};
use crate::local::error::LocalError;
use crate::local::training::{LocalModel, LocalTraining};
use crate::tensor::host::{model_to_device, model_to_host, HostLayer, HostSplit, HostUpload};
use crate::runtime::memory::CountingAllocator;
use crate::tensor::params::{read_model, write_model};
use crate::compress::qsgd::QsgdSettings;
use crate::runtime::rng::{stream, Purpose};
use crate::engine::error::SimError;
use crate::records::RoundRecord;
use crate::strategy::{strategy_for, MemoryFit, ClientPlan, Download, EvalView, PlanContext, Strategy, StrategyInputs};
use crate::tensor::submodel::extract;
use crate::compress::toa::ToaSettings;
use crate::runtime::workers::{WorkerLayout, Workers};

/// A node's own memory: its budget, and the peak predictor calibrated on its device.
struct DeclaredMemory {
    budget_mb: f64,
    predictor: Mutex<PeakPredictor>,
}

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
    /// Memory budgets: the calibrated peak predictor (after [`Self::calibrate`]).
    predictor: Option<Mutex<PeakPredictor>>,
    /// Memory budgets: the clients (Flower nodes) that declared their own memory.
    declared: BTreeMap<usize, DeclaredMemory>,
    /// Clients that take part at all (sampled from each round).
    pub eligible: Vec<usize>,
    pub global: LayeredNet<B>,
    pub strategy: Box<dyn Strategy<B>>,
    pub energy: Energy,
    device: B::Device,
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
        check_levels::<B>(cfg, &setup)?;
        // Seeded on the host, layers before exits: one seed, bit-identical weights on every device.
        let global = redraw_on_host(plain.with_exits(&setup.exit_depths, device)?, &mut stream(cfg.seed, Purpose::Init, 0, 0))?;
        let mut level_cfg = cfg.clone();
        level_cfg.federation.clusters = setup.levels;
        let strategy = strategy_for::<B>(cfg.method, &StrategyInputs::for_run(&level_cfg, download, &global.valid(), &setup.layout, device));
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
            predictor: None,
            declared: BTreeMap::new(),
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
                Capacity::Clusters => self.strategy.frozen_per_cluster(self.cfg.federation.clusters),
                Capacity::Memory => None,
            },
            calibration: self.calibration(),
            workers,
        }
    }

    pub fn plan_context(&self, round: usize) -> PlanContext<'_> {
        let fed = &self.cfg.federation;
        PlanContext { num_layers: self.setup.num_layers, levels: self.setup.levels, round, rounds: fed.rounds, layout: &self.setup.layout }
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
        let fed = &self.cfg.federation;
        let mut out = RoundPlans { plans: Vec::with_capacity(picked.len()), sat_out: Vec::new() };
        for &k in &picked {
            // A node that declared its memory is planned from its own budget and its own
            // device's calibration; every other client from its budget profile.
            let (budget_mb, predictor) = match self.declared.get(&k) {
                Some(node) => (node.budget_mb, &node.predictor),
                None => (round_budget_mb(fed.budgets_mb[self.clusters[k]], fed.budget_jitter, seed, round, k), self.predictor()?),
            };
            // The least constrained level first (level c − 1: nothing frozen, full width);
            // the first whose predicted peak fits is the client's plan.
            let mut chosen = None;
            for level in (0..self.setup.levels).rev() {
                let mut candidate = self.plan_at(round, k, level)?;
                let predicted_mb = mb(self.predict_with(predictor, &candidate, level, self.parts[k].len())?);
                if predicted_mb <= budget_mb {
                    candidate.memory = Some(MemoryFit { budget_mb, predicted_mb });
                    chosen = Some(candidate);
                    break;
                }
            }
            match chosen {
                Some(p) => out.plans.push(p),
                None => out.sat_out.push(k),
            }
        }
        Ok(out)
    }

    /// Memory budgets: client `client` (a Flower node) declares its own budget and the
    /// calibration of the peak predictor it measured on its own device; its plans come from
    /// these instead of its budget profile and the server's calibration.
    pub fn declare_memory(&mut self, client: usize, budget_mb: f64, calibration: Calibration) -> Result<(), SimError> {
        if self.cfg.federation.capacity != Capacity::Memory {
            return Err(SimError::Config {
                field: "federation.capacity",
                problem: format!("client {client} declares {budget_mb} MB of memory, but the run plans by clusters; set federation.capacity = \"memory\" to plan from budgets"),
            });
        }
        if client >= self.parts.len() {
            return Err(SimError::Config { field: "federation.clients", problem: format!("client {client} declares its memory, but the run has {} clients", self.parts.len()) });
        }
        if !(budget_mb.is_finite() && budget_mb > 0.0) {
            return Err(SimError::Config { field: "memory-mb", problem: format!("client {client} declares {budget_mb} MB: a budget is a positive number of MB") });
        }
        if calibration.rows.len() != self.setup.levels || calibration.batch != self.setup.training.batch_size {
            return Err(SimError::Config {
                field: "memory-mb",
                problem: format!(
                    "client {client}'s calibration has {} levels at batch {}, the run has {} levels at batch {}",
                    calibration.rows.len(),
                    calibration.batch,
                    self.setup.levels,
                    self.setup.training.batch_size
                ),
            });
        }
        let predictor = Mutex::new(PeakPredictor::new(calibration, self.setup.training.caches_prefix()));
        self.declared.insert(client, DeclaredMemory { budget_mb, predictor });
        Ok(())
    }

    /// The strategy's plan for `client` at capacity level `level` (its cluster, or the level
    /// its budget allows) in `round`.
    fn plan_at(&self, round: usize, client: usize, level: usize) -> Result<ClientPlan, LocalError> {
        self.strategy.plan(&self.plan_context(round), client, level, &mut stream(self.cfg.seed, Purpose::Plan, round as u64, client as u64))
    }

    /// Memory budgets: the plan client `client` trains at capacity level `level` (of
    /// `setup.levels`; the last is the least constrained) in round `round`, and its
    /// predicted training peak in bytes (from the server's calibration).
    pub fn level_plan(&self, round: usize, client: usize, level: usize) -> Result<(ClientPlan, u64), SimError> {
        let plan = self.plan_at(round, client, level)?;
        let predicted = self.predicted_peak(&plan, level, self.parts[client].len())?;
        Ok((plan, predicted))
    }

    /// The predicted training peak (bytes) of `plan`, a plan at capacity `level`, on a client
    /// with `samples`, from the server's calibration.
    pub fn predicted_peak(&self, plan: &ClientPlan, level: usize, samples: usize) -> Result<u64, SimError> {
        self.predict_with(self.predictor()?, plan, level, samples)
    }

    fn predictor(&self) -> Result<&Mutex<PeakPredictor>, SimError> {
        self.predictor.as_ref().ok_or_else(|| SimError::Config {
            field: "federation.capacity",
            problem: "memory budgets need the peak predictor: call Federation::calibrate before planning".into(),
        })
    }

    /// [`Self::predicted_peak`] with `predictor`; the plan's shape facts are worked out once
    /// (by building the client's model as the server would) and cached.
    fn predict_with(&self, predictor: &Mutex<PeakPredictor>, plan: &ClientPlan, level: usize, samples: usize) -> Result<u64, SimError> {
        let mut predictor = predictor.lock().expect("predictor lock");
        if let Some(facts) = predictor.facts(plan) {
            return Ok(predictor.predict(facts, level, samples));
        }
        let facts = self.plan_facts(plan)?;
        predictor.remember(plan, facts);
        Ok(predictor.predict(&facts, level, samples))
    }

    /// What a plan's memory depends on: the model the server builds for it (width
    /// sub-model, compressed prefix) and Eq. 23 of the model it trains.
    pub fn plan_facts(&self, plan: &ClientPlan) -> Result<PlanFacts, SimError> {
        let prepared = self.round_context(0, None).prepare::<B>(plan, &self.host_global(), &self.device)?;
        Ok(self.facts_of(plan, &prepared.local))
    }

    /// [`Self::plan_facts`] of the client model `local` the server built for `plan`.
    fn facts_of(&self, plan: &ClientPlan, local: &LocalModel<B>) -> PlanFacts {
        let infos = match &plan.width {
            Some(spec) => extract(self.global.valid(), &self.setup.layout, spec, &self.device).layer_infos(),
            None => self.global.valid().layer_infos(),
        };
        PlanFacts::new(plan, &infos, local.resident_bytes(), self.setup.training.batch_size, self.setup.training.sgd.momentum > 0.0)
    }

    /// Memory budgets only: measure `ρ` at every capacity level (two SGD steps of the
    /// method's own plan at that level, on the first training samples, on this backend) and
    /// keep the predictor for the run. For FedOLF level `N − 1 − l` is the ordered plan with
    /// `l` frozen. `memory` is the CPU's counting allocator; a GPU reports its own
    /// statistics. `on_level` sees each measurement as it is made.
    pub fn calibrate(&mut self, memory: Option<&CountingAllocator>, on_level: &mut dyn FnMut(&ProbeRow)) -> Result<(), SimError> {
        if self.cfg.federation.capacity != Capacity::Memory {
            return Ok(());
        }
        let batch = self.setup.training.batch_size;
        let rows = self.with_probe(memory, |clients, host_global, indices| {
            let measure = |level: usize| -> Result<ProbeRow, SimError> {
                let plan = self.probe_plan(level)?;
                let start = self.client_start(&plan, host_global);
                let prepared = clients.prepare::<B>(&plan, start.as_deref().unwrap_or(host_global), &self.device)?;
                let facts = self.facts_of(&plan, &prepared.local);
                let trained = clients.train(&plan, prepared.local, prepared.bytes_down, indices, &self.device)?;
                let peak_mb = trained.record.peak_mem_mb.ok_or_else(|| SimError::Config {
                    field: "federation.capacity",
                    problem: "\"memory\" calibrates on measured memory, and this backend measures none (on the CPU the binary must install fedolf::runtime::memory::CountingAllocator as its global allocator)".into(),
                })?;
                let resident = facts.resident_bytes;
                let measured = ((peak_mb * 1e6).round() as u64).saturating_sub(resident);
                Ok(ProbeRow { level, frozen: plan.frozen(), measured_transient: measured, theoretical_transient: facts.transient_bytes(), resident })
            };
            // Warm-up: thread pools and one-time buffers are no client's cost.
            measure(self.setup.levels - 1)?;
            let mut rows = Vec::with_capacity(self.setup.levels);
            for level in (0..self.setup.levels).rev() {
                let row = measure(level)?;
                on_level(&row);
                rows.push(row);
            }
            rows.reverse();
            Ok::<_, SimError>(rows)
        })?;
        self.use_calibration(Calibration { batch, rows });
        Ok(())
    }

    /// Memory budgets: the predictor's calibration (`None` before [`Self::calibrate`]).
    pub fn calibration(&self) -> Option<Calibration> {
        self.predictor.as_ref().map(|p| p.lock().expect("predictor lock").calibration.clone())
    }

    /// Memory budgets: predict with `calibration` (a resumed run's, from its checkpoint)
    /// instead of probing again.
    pub fn use_calibration(&mut self, calibration: Calibration) {
        if self.cfg.federation.capacity == Capacity::Memory {
            self.predictor = Some(Mutex::new(PeakPredictor::new(calibration, self.setup.training.caches_prefix())));
        }
    }

    /// Continue after `ckpt` (this run's checkpoint): its model, strategy state and
    /// calibration replace the fresh ones (the strategy's inputs depend only on shapes, not
    /// on the weights). Returns the records of its rounds.
    /// The start of every run, simulated or federated: continue after the checkpoint in
    /// `resume` (if any), then, with memory budgets, calibrate the peak predictor unless the
    /// checkpoint held it (`on_level`: each level as it is measured). Returns the rounds the
    /// checkpoint holds.
    pub fn start(&mut self, resume: Option<&Path>, memory: Option<&CountingAllocator>, on_level: &mut dyn FnMut(&ProbeRow)) -> Result<Vec<RoundRecord>, SimError> {
        let mut records = Vec::with_capacity(self.cfg.federation.rounds);
        if let Some(run_dir) = resume {
            records = self.resume(Checkpoint::read(run_dir, &self.host_global(), self.setup.num_layers)?)?;
        }
        if self.calibration().is_none() {
            self.calibrate(memory, on_level)?;
        }
        Ok(records)
    }

    pub fn resume(&mut self, ckpt: Checkpoint) -> Result<Vec<RoundRecord>, SimError> {
        if ckpt.round > self.cfg.federation.rounds {
            return Err(SimError::Resume(format!("the checkpoint holds {} rounds, the run has {}", ckpt.round, self.cfg.federation.rounds)));
        }
        self.set_global(&ckpt.model)?;
        self.strategy.restore_state(ckpt.strategy_state).map_err(SimError::Resume)?;
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

    /// Run `probe` with the probe's client round (one epoch, no prefix cache, measured with
    /// `memory`), the global model on the host, and the probe's samples: two batches of the
    /// first training samples.
    fn with_probe<T>(&self, memory: Option<&CountingAllocator>, probe: impl FnOnce(&RoundContext<'_>, &[HostLayer], &[usize]) -> T) -> T {
        let training = LocalTraining { epochs: 1, cache_frozen: false, ..self.setup.training.clone() };
        let indices: Vec<usize> = (0..(2 * self.setup.training.batch_size).min(self.host_train.len())).collect();
        let mut clients = self.round_context(1, memory);
        clients.training = &training;
        probe(&clients, &self.host_global(), &indices)
    }

    /// The method's plan at `level` for client 0 in round 1, at its widest: FjORD's
    /// per-batch widths are dropped, so the probe measures the largest sub-model it may train.
    fn probe_plan(&self, level: usize) -> Result<ClientPlan, SimError> {
        let mut plan = self.plan_at(1, 0, level)?;
        if let Some(width) = &mut plan.width {
            width.per_batch_ratios.clear();
        }
        Ok(plan)
    }

    /// Memory budgets only: one probe step on every worker before the first round, so each
    /// worker's threads make their one-time allocations (kernel scratch buffers, pool
    /// bookkeeping) outside any client's measured peak, as the calibration's own warm-up
    /// did on this thread.
    pub fn warm_up(&self, workers: &Workers, memory: Option<&CountingAllocator>) -> Result<(), SimError> {
        if self.predictor.is_none() {
            return Ok(());
        }
        let plan = self.probe_plan(self.setup.levels - 1)?;
        self.with_probe(memory, |clients, host_global, indices| {
            let start = self.client_start(&plan, host_global);
            let start = start.as_deref().unwrap_or(host_global);
            let device = &self.device;
            workers.on_each(|| clients.run::<B>(&plan, start, indices, device).map(|_| ())).into_iter().collect::<Result<(), _>>()
        })
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
fn check_levels<B: AutodiffBackend>(cfg: &Config, setup: &ClientSetup) -> Result<(), SimError> {
    let fed = &cfg.federation;
    let num_layers = setup.num_layers;
    let uses_levels = strategy_for::<B>(cfg.method, &StrategyInputs::new(Download::Full)).uses_levels();
    if fed.capacity == Capacity::Clusters && uses_levels && fed.clusters > num_layers {
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
