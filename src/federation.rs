//! One run's server side, step by step: everything the round loop needs besides its order
//! (DESIGN.md, "FedOLF round"). The simulator ([`crate::sim`]) drives it in one process; the
//! Flower server (the `fedolf` Python module) drives the same value from Flower's strategy
//! hooks, so both sample, plan, compress, merge and evaluate with the same code.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_datasets::partition::{self, DirichletSettings};
use fedolf_datasets::{DataError, Dataset};
use fedolf_models::{LayeredNet, ModelKind, ModelOptions, SpaceLayout};
use rand::seq::index::sample;

use crate::checkpoint::Checkpoint;
use crate::client_round::ClientRound;
use crate::config::{Config, PartitionKind};
use crate::energy::Energy;
use crate::evaluate::{evaluate, evaluate_exits, DeviceSplit};
use crate::freeze::LocalTraining;
use crate::host::{model_to_device, model_to_host, HostLayer, HostSplit, HostUpload};
use crate::memory::CountingAllocator;
use crate::params::{read_model, write_model};
use crate::qsgd::QsgdSettings;
use crate::report::mean;
use crate::rng::{stream, Purpose};
use crate::sim::{ClientRecord, RoundRecord, RunInfo, SimError};
use crate::strategy::{strategy_for, ClientPlan, Download, EvalView, PlanContext, Strategy, StrategyInputs};
use crate::submodel::extract;
use crate::toa::ToaSettings;
use crate::workers::WorkerLayout;

/// A run's fixed facts and its changing state (global model, strategy state).
pub struct Federation<B: AutodiffBackend> {
    pub cfg: Config,
    pub kind: ModelKind,
    pub options: ModelOptions,
    pub input: [usize; 3],
    pub classes: usize,
    pub num_layers: usize,
    pub model_params: usize,
    pub layout: SpaceLayout,
    pub exit_depths: Vec<usize>,
    pub training: LocalTraining,
    /// Per-channel `(mean, std)` of the training split: every client normalises with these.
    pub stats: Vec<(f32, f32)>,
    pub host_train: HostSplit,
    train: DeviceSplit<B::InnerBackend>,
    test: DeviceSplit<B::InnerBackend>,
    /// Each client's sample indices into the training split.
    pub parts: Vec<Vec<usize>>,
    /// Each client's capacity cluster (0-based).
    pub clusters: Vec<usize>,
    /// Clients that take part at all (sampled from each round).
    pub eligible: Vec<usize>,
    pub global: LayeredNet<B>,
    pub strategy: Box<dyn Strategy<B>>,
    pub energy: Energy,
    device: B::Device,
}

impl<B: AutodiffBackend> Federation<B> {
    /// Partition the data, deal capacity clusters, build the seeded global model and the
    /// method's strategy.
    pub fn new(cfg: &Config, dataset: &Dataset, device: &B::Device) -> Result<Self, SimError> {
        let fed = &cfg.federation;
        let download = if cfg.qsgd.bits > 0 {
            Download::Qsgd(QsgdSettings::new(cfg.qsgd.bits, cfg.qsgd.bucket)?)
        } else {
            Download::Toa(ToaSettings::new(cfg.toa.s, cfg.toa.mode)?)
        };
        let training = cfg.train.local_training();

        // Data normalised on the host (each client puts its own samples on its device); the
        // server's copies on the device (inner backend: data needs no graph).
        let stats = dataset.train.channel_stats();
        let host_train = HostSplit::new(&dataset.train, &stats);
        let train = DeviceSplit::new(&host_train, device);
        let test = DeviceSplit::new(&HostSplit::new(&dataset.test, &stats), device);
        let (parts, clusters) = partition_clients(cfg, dataset)?;

        // The global model: seeded, and touched in a fixed order so lazy init is reproducible.
        // Exit heads (multi-exit methods only) come after the layers.
        let kind = ModelKind::parse(&cfg.model.name)?;
        B::seed(device, cfg.seed);
        let options = cfg.model.options();
        let plain: LayeredNet<B> = kind.init_with(dataset.train.shape, dataset.num_classes, &options, device)?;
        let model_params: usize = read_model(&plain).iter().flatten().map(|t| t.numel()).sum();
        let num_layers = plain.num_layers();
        let layout = plain.channel_spaces();
        let probe = strategy_for::<B>(cfg.method, &StrategyInputs::new(download));
        let exit_depths = probe.exit_depths(num_layers, fed.clusters);
        let global = plain.with_exits(&exit_depths, device)?;
        if probe.uses_levels() && fed.clusters > num_layers {
            return Err(SimError::Config {
                field: "federation.clusters",
                problem: format!(
                    "{} clusters freeze or drop up to {} layers, but {} has only {num_layers} (use at most {num_layers} clusters)",
                    fed.clusters,
                    fed.clusters - 1,
                    kind.name()
                ),
            });
        }
        let strategy = strategy_for::<B>(cfg.method, &StrategyInputs::for_run(cfg, download, &global.valid(), &layout, device));
        let eligible: Vec<usize> = (0..fed.clients).filter(|&k| strategy.eligible(clusters[k], fed.clusters)).collect();
        Ok(Self {
            cfg: cfg.clone(),
            kind,
            options,
            input: dataset.train.shape,
            classes: dataset.num_classes,
            num_layers,
            model_params,
            layout,
            exit_depths,
            training,
            stats,
            host_train,
            train,
            test,
            parts,
            clusters,
            eligible,
            global,
            strategy,
            energy: Energy::from(&cfg.energy),
            device: device.clone(),
        })
    }

    /// Clients sampled per round (`C_t`).
    pub fn per_round(&self) -> usize {
        self.cfg.federation.clients_per_round.min(self.eligible.len())
    }

    /// What the run is about to do, for the log header.
    pub fn info(&self, dataset_source: &str, workers: WorkerLayout) -> RunInfo {
        RunInfo {
            dataset_source: dataset_source.to_string(),
            train_size: self.train.len(),
            test_size: self.test.len(),
            num_layers: self.num_layers,
            model_params: self.model_params,
            cluster_frozen: self.strategy.frozen_per_cluster(self.cfg.federation.clusters),
            workers,
        }
    }

    pub fn plan_context(&self, round: usize) -> PlanContext<'_> {
        let fed = &self.cfg.federation;
        PlanContext { num_layers: self.num_layers, clusters: fed.clusters, round, rounds: fed.rounds, layout: &self.layout }
    }

    /// Step 1: `C_t` clients sampled uniformly without replacement among the eligible ones,
    /// each planned by the strategy (ascending client order).
    pub fn plans(&self, round: usize) -> Result<Vec<ClientPlan>, SimError> {
        let seed = self.cfg.seed;
        let mut picked: Vec<usize> = sample(&mut stream(seed, Purpose::ClientSampling, round as u64, 0), self.eligible.len(), self.per_round())
            .into_iter()
            .map(|i| self.eligible[i])
            .collect();
        picked.sort_unstable();
        let ctx = self.plan_context(round);
        Ok(picked
            .iter()
            .map(|&k| self.strategy.plan(&ctx, k, self.clusters[k], &mut stream(seed, Purpose::Plan, round as u64, k as u64)))
            .collect::<Result<_, _>>()?)
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
    pub fn client_round<'a>(&'a self, round: usize, memory: Option<&'a CountingAllocator>) -> ClientRound<'a> {
        ClientRound {
            round,
            seed: self.cfg.seed,
            model: self.kind,
            exit_depths: &self.exit_depths,
            input: self.input,
            classes: self.classes,
            options: &self.options,
            layout: &self.layout,
            train: &self.host_train,
            training: &self.training,
            memory,
        }
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

    /// Step 8, on evaluation rounds (every `eval_every`, and the last): what the strategy
    /// names, after its pre-evaluation step. `(accuracy, test loss, exit-ensemble accuracy)`.
    pub fn evaluate_round(&mut self, round: usize) -> Result<(Option<f64>, Option<f64>, Option<f64>), SimError> {
        let fed = &self.cfg.federation;
        if round % fed.eval_every != 0 && round != fed.rounds {
            return Ok((None, None, None));
        }
        let (acc, loss, ensemble) = self.evaluate_now(round);
        if !loss.is_finite() {
            return Err(SimError::Diverged { round, loss });
        }
        Ok((Some(acc), Some(loss), ensemble))
    }

    /// Evaluate the global model now (also before round 1, for a Flower strategy's round 0).
    pub fn evaluate_now(&mut self, round: usize) -> (f64, f64, Option<f64>) {
        let global = self.global.clone();
        self.global = self.strategy.before_eval(global, &self.train.images);
        let view = self.strategy.eval_view(&self.plan_context(round));
        match view {
            EvalView::Full => with_no_ensemble(evaluate(&self.global.valid(), &self.test, 500)),
            EvalView::Width(spec) => with_no_ensemble(evaluate(&extract(self.global.valid(), &self.layout, &spec, &self.device), &self.test, 500)),
            EvalView::Exits => evaluate_exits(&self.global.valid(), &self.test, 500),
        }
    }

    /// The checkpoint after `round` with these records.
    pub fn checkpoint(&self, round: usize, records: Vec<RoundRecord>) -> Checkpoint {
        Checkpoint { round, model: self.host_global(), num_layers: self.num_layers, strategy_state: self.strategy.state(), records }
    }
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
            DirichletSettings { alpha: cfg.data.alpha, min_size: cfg.data.min_size, max_retries: 1000 },
            &mut stream(cfg.seed, Purpose::Partition, 0, 0),
        )?,
    };
    let clusters = partition::capacity_clusters(fed.clients, fed.clusters, &mut stream(cfg.seed, Purpose::Clusters, 0, 0))?;
    Ok((parts, clusters))
}

/// Totals of one round from its clients' records (with each one's frozen-layer bytes).
pub fn round_record(
    round: usize,
    (accuracy, test_loss, accuracy_ensemble): (Option<f64>, Option<f64>, Option<f64>),
    wall_s: f64,
    energy: &Energy,
    per_client: Vec<(ClientRecord, u64)>,
) -> RoundRecord {
    let n = per_client.len().max(1) as f64;
    let compute_s: f64 = per_client.iter().map(|(c, _)| c.compute_s).sum();
    let down: u64 = per_client.iter().map(|(c, _)| c.bytes_down).sum();
    let up: u64 = per_client.iter().map(|(c, _)| c.bytes_up).sum();
    let peak_mem_mb = mean(&per_client.iter().filter_map(|(c, _)| c.peak_mem_mb).collect::<Vec<_>>());
    let peak_extra_mb = mean(&per_client.iter().filter_map(|(c, _)| c.peak_extra_mb).collect::<Vec<_>>());
    RoundRecord {
        round,
        accuracy,
        accuracy_ensemble,
        test_loss,
        train_loss: per_client.iter().map(|(c, _)| c.train_loss).sum::<f64>() / n,
        clients: per_client.len(),
        skipped_clients: 0,
        bytes_down: down,
        bytes_up: up,
        frozen_bytes_down: per_client.iter().map(|(_, f)| f).sum(),
        compute_s,
        wall_s,
        peak_mem_mb,
        peak_extra_mb,
        energy_compute_j: energy.compute_joules(compute_s),
        energy_comm_j: energy.comm_joules(down + up),
        per_client: per_client.into_iter().map(|(c, _)| c).collect(),
    }
}

/// Move an aggregated tensor (computed on the inner backend) back to the training backend.
fn lift<B: AutodiffBackend>(t: crate::params::NamedTensor<B::InnerBackend>) -> crate::params::NamedTensor<B> {
    crate::params::NamedTensor { name: t.name, shape: t.shape, value: Tensor::from_inner(t.value) }
}

fn with_no_ensemble((acc, loss): (f64, f64)) -> (f64, f64, Option<f64>) {
    (acc, loss, None)
}
