//! Command line (clap derive): `fedolf run`, `list`, `memory`, `bench`, `export`, `table`,
//! `plot`. With no subcommand, `run` with the default experiment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "fedolf", version, about = "Federated learning with ordered layer freezing (FedOLF) on Burn")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a federated experiment (default: experiments/default.toml).
    Run(RunArgs),
    /// List models, datasets and methods.
    List,
    /// Measured vs theoretical (Eq. 23) memory of one training step per freezing mode.
    Memory(MemoryArgs),
    /// Benchmarks, each measured side by side in one run: memory (measured vs Eq. 23), speed
    /// (fedolf ÷ PyTorch), conv (the CPU kernels' GFLOP/s), parity (a device vs the CPU).
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
    /// Write a run's last checkpointed model as safetensors (PyTorch names and layouts).
    Export {
        /// A run folder (or one trial folder of a multi-seed run).
        run_dir: PathBuf,
        /// Output file (default: RUN_DIR/model.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a grid of experiments (rows × seeds, a TOML file such as
    /// experiments/paper-table-fmnist-alexnet.toml) into one folder, resumably, and print and
    /// write its table (table.md, table.csv) and accuracy plot (accuracy.svg).
    Table(TableArgs),
    /// Plot a finished run: accuracy vs round and vs energy (SVG files in the run folder).
    Plot {
        /// A run folder (holds rounds.csv).
        run_dir: PathBuf,
    },
}

/// `fedolf table`'s options.
#[derive(Debug, Args, Clone)]
pub struct TableArgs {
    /// The grid file (TOML: a base config, `[[row]]`s, seeds).
    pub grid: PathBuf,
    /// Where the grid's folder (named after the grid) goes. Run the same command again to
    /// continue an interrupted grid.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Run nothing: print and write the table of what the grid's folder holds so far.
    #[arg(long)]
    pub report: bool,
    /// No per-run lines (the progress bar and the table remain).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchKind {
    /// ordered ÷ random and TinyFEL ÷ ordered peak at l = 4, measured ÷ theoretical at l ∈ {0, 2, 4}
    /// (ResNet20, CIFAR-100 shape, batch 128).
    Memory {
        #[arg(long, default_value_t = 128)]
        batch: usize,
    },
    /// Seconds per local SGD step of every model at the paper's batch (l = 0 and the largest
    /// l), and per round of the default experiment for several worker settings, with ratios
    /// against the PyTorch twin (benches/pytorch_twin.py) measured in the same run.
    Speed(SpeedArgs),
    /// Seconds and GFLOP/s of every distinct convolution of the four models at their paper
    /// batch — forward, input gradient, weight gradient — through fedolf's kernels and Burn's
    /// own CPU ops, with ratios against PyTorch's conv2d / conv2d_input / conv2d_weight
    /// (benches/pytorch_twin.py) measured in the same run.
    Conv(ConvArgs),
    /// One SGD step of the CNN, AlexNet and ResNet20 (small batches, with and without a frozen
    /// prefix) and TOA on AlexNet's frozen prefix, on `--device` vs the CPU backend from the
    /// same host-drawn weights and batch: a row per check, exit 1 if any is outside the
    /// tolerance (the wgpu tests' checks, for a GPU that has no test runner).
    Parity {
        /// cuda or wgpu (only those compiled in); cpu compares the CPU with itself.
        #[arg(long, default_value = "wgpu")]
        device: String,
    },
}

#[derive(Debug, Args, Clone)]
pub struct ConvArgs {
    /// Timed calls per kernel (after one warm-up call); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Skip Burn's own ops (its generic backward takes seconds on the largest shapes).
    #[arg(long)]
    pub no_burn: bool,
    /// Python with PyTorch installed (default: $FEDOLF_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct SpeedArgs {
    /// cpu, cuda or wgpu (only those compiled in).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed steps per model (after one warm-up step); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Rounds of the default experiment per worker setting.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Python with PyTorch installed (default: $FEDOLF_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Blocks of `repeats` steps per model, fedolf's and PyTorch's steps taking turns one by
    /// one; each step's time is the median of its blocks' medians, and the table shows the
    /// ratio's range over the blocks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub passes: u16,
}

#[derive(Debug, Args, Clone)]
pub struct MemoryArgs {
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// Supplies the input shape and class count (no files are read).
    #[arg(long, default_value = "cifar100")]
    pub dataset: String,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Frozen counts: `0..=9`, `0..4`, `0,2,4` or `3` (default: every count below N).
    #[arg(long)]
    pub frozen: Option<String>,
    /// Random-freezing draws averaged per frozen count.
    #[arg(long, default_value_t = 3)]
    pub draws: usize,
    /// Write one row per (mode, frozen count) here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// SVG plot (default: memory-<model>-b<batch>.svg in the current folder).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// ResNet shortcuts: a (zero-padded identity) or b (1×1 conv + BN projection).
    #[arg(long, default_value = "a")]
    pub shortcut: fedolf::config::ShortcutOption,
    /// CNN hidden FC width (0 = the paper's CNN; 512 = FedAvg's).
    #[arg(long, default_value_t = 0)]
    pub cnn_hidden: usize,
    /// Instead of the probe table: for every model at its paper config's batch, the fewest
    /// frozen layers whose predicted training peak (calibrated Eq. 23) fits this many MB.
    #[arg(long, value_name = "MB")]
    pub budget: Option<f64>,
    /// cpu (the counting allocator's heap peak), cuda or wgpu (the device memory in use on
    /// the probe's stream); only those compiled in.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `fedolf run`'s options. A bare `fedolf` parses as `fedolf run` (same defaults).
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Experiment config (TOML). Default: $FEDOLF_CONFIG, else the built-in
    /// experiments/default.toml.
    #[arg(long, env = "FEDOLF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Continue an interrupted or failed run from its last checkpoint, with the run's own
    /// config.toml (the results are those of an uninterrupted run).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "overrides", "seed", "seeds", "device", "data_dir"])]
    pub resume: Option<PathBuf>,
    /// Override a config field, e.g. `--set train.lr=0.01 --set method=fedavg`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Random seed: one run with this seed (overrides `seed` and clears `seeds`).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Trials: one run per seed into one run folder, with mean ± std (overrides `seeds`),
    /// e.g. `--seeds 1,2,3`.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// cpu, cuda or wgpu (overrides `device`; only those compiled in).
    #[arg(long)]
    pub device: Option<String>,
    /// Dataset folder (overrides `data.data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where run folders go (default: ./runs).
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// No progress bar and no per-round lines.
    #[arg(long, short)]
    pub quiet: bool,
}
