//! Command line: `fedolf run`, `fedolf list` (clap derive). With no subcommand, `run` with the
//! default experiment.

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
}

#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// Experiment config (TOML). Default: the built-in experiments/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config field, e.g. `--set train.lr=0.01 --set method=fedavg`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Random seed (overrides `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
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
