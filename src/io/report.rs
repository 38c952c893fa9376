//! Run results on disk: `config.toml` (fully resolved), `rounds.csv` (one row per round,
//! rewritten atomically after every round so a crash loses nothing), `summary.json`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::io::lock::{FolderLock, LockError};
use crate::records::{mean, mean_last};
use crate::records::{ClientRecord, RoundRecord};

/// Write `bytes` to `path` via a temporary file and a rename (readers never see half a file).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    // The error names the file, so every caller's message does.
    write().map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

pub const CSV_HEADER: &str = "round,accuracy,test_loss,train_loss,clients,bytes_down,bytes_up,frozen_bytes_down,compute_s,wall_s,peak_mem_mb,peak_extra_mb,energy_compute_j,energy_comm_j,accuracy_ensemble,skipped,unfit";

/// A `rounds.csv` read back, its columns by name (for plots and tables).
#[derive(Debug, Clone)]
pub struct RoundsCsv {
    path: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A results file that cannot be read back; names the file (and the line).
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Malformed { path: String, message: String },
}

impl RoundsCsv {
    pub fn read(path: &Path) -> Result<Self, ResultsError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ResultsError::Io { path: name.clone(), error })?;
        let mut lines = text.lines();
        let header: Vec<String> = lines.next().ok_or_else(|| ResultsError::Malformed { path: name.clone(), message: "empty".into() })?.split(',').map(str::to_string).collect();
        let rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(str::to_string).collect()).collect();
        for (n, row) in rows.iter().enumerate() {
            if row.len() < header.len() {
                return Err(ResultsError::Malformed { path: name, message: format!("line {}: {} cells, fewer than the header's {}", n + 2, row.len(), header.len()) });
            }
        }
        Ok(Self { path: name, header, rows })
    }

    /// Column `name`, one value per round; `None` where the cell is empty (a round that was
    /// not evaluated).
    pub fn column(&self, name: &str) -> Result<Vec<Option<f64>>, ResultsError> {
        let bad = |message: String| ResultsError::Malformed { path: self.path.clone(), message };
        let i = self.header.iter().position(|h| h == name).ok_or_else(|| bad(format!("no `{name}` column")))?;
        self.rows
            .iter()
            .enumerate()
            .map(|(n, row)| match row[i].as_str() {
                "" => Ok(None),
                cell => cell.parse::<f64>().map(Some).map_err(|_| bad(format!("line {}: {name} `{cell}` is not a number", n + 2))),
            })
            .collect()
    }

    /// Column `name` where every round has a value.
    pub fn full_column(&self, name: &str) -> Result<Vec<f64>, ResultsError> {
        self.column(name)?
            .into_iter()
            .enumerate()
            .map(|(n, v)| v.ok_or_else(|| ResultsError::Malformed { path: self.path.clone(), message: format!("line {}: {name} is empty", n + 2) }))
            .collect()
    }
}

/// Columns that depend on the machine (speed, allocator), not on the seed.
pub const TIMING_COLUMNS: [&str; 6] = ["compute_s", "wall_s", "peak_mem_mb", "peak_extra_mb", "energy_compute_j", "energy_comm_j"];

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

pub fn rounds_csv(records: &[RoundRecord]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in records {
        out.push_str(&format!(
            "{},{},{},{:.6},{},{},{},{},{:.4},{:.4},{},{},{:.4},{:.4},{},{},{}\n",
            r.round,
            opt(r.accuracy),
            opt(r.test_loss),
            r.train_loss,
            r.clients,
            r.bytes_down,
            r.bytes_up,
            r.frozen_bytes_down,
            r.compute_s,
            r.wall_s,
            opt(r.peak_mem_mb),
            opt(r.peak_extra_mb),
            r.energy_compute_j,
            r.energy_comm_j,
            opt(r.accuracy_ensemble),
            r.skipped_clients,
            r.unfit_clients
        ));
    }
    out
}

pub const CLIENTS_CSV_HEADER: &str = "round,client,cluster,frozen,samples,bytes_down,bytes_up,compute_s,peak_mem_mb,peak_extra_mb,train_loss,budget_mb,predicted_mb,device";

pub fn client_rows(records: &[ClientRecord]) -> String {
    records
        .iter()
        .map(|c| {
            format!(
                "{},{},{},{},{},{},{},{:.4},{},{},{:.6},{},{},{}\n",
                c.round,
                c.client,
                c.cluster,
                c.frozen,
                c.samples,
                c.bytes_down,
                c.bytes_up,
                c.compute_s,
                opt(c.peak_mem_mb),
                opt(c.peak_extra_mb),
                c.train_loss,
                opt(c.budget_mb),
                opt(c.predicted_mb),
                c.device
            )
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub method: String,
    pub model: String,
    pub dataset: String,
    pub dataset_source: String,
    pub seed: u64,
    /// "completed" or "failed".
    pub status: String,
    pub error: Option<String>,
    pub rounds_completed: usize,
    /// Accuracy at the last evaluated round, as a fraction (the paper's metric).
    pub final_accuracy: Option<f64>,
    pub best_accuracy: Option<f64>,
    /// Mean accuracy over the last 10 % of evaluations (at least 3, or all if fewer): steadier
    /// than `final_accuracy`, which under non-iid data swings with the clients round T drew.
    pub mean_last_accuracy: Option<f64>,
    /// Multi-exit methods: the ensemble of every exit, at the last evaluation and as the
    /// mean over the last evaluations (same rule as `mean_last_accuracy`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_accuracy_ensemble: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mean_last_accuracy_ensemble: Option<f64>,
    pub total_bytes_down: u64,
    pub total_bytes_up: u64,
    pub total_compute_s: f64,
    pub wall_s: f64,
    /// Mean over rounds of the clients' mean absolute peak: the counting allocator's on the
    /// CPU, the bytes in use on the client's stream on a GPU.
    pub mean_peak_mem_mb: Option<f64>,
    /// Mean over rounds of the clients' mean peak above their resident model (CPU only).
    pub mean_peak_extra_mb: Option<f64>,
    pub energy_compute_kj: f64,
    pub energy_comm_kj: f64,
    /// `federation.capacity = "memory"`: how often the measured peak exceeded the budget
    /// (the predictor's miss rate), by how much, and who sat out.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_budgets: Option<crate::accounting::budget::BudgetSummary>,
}

impl Summary {
    pub fn new(cfg: &Config, source: &str, records: &[RoundRecord], wall_s: f64, error: Option<String>) -> Self {
        let evaluated: Vec<f64> = records.iter().filter_map(|r| r.accuracy).collect();
        let ensemble: Vec<f64> = records.iter().filter_map(|r| r.accuracy_ensemble).collect();
        Self {
            name: cfg.name.clone(),
            method: cfg.method.clone(),
            model: cfg.model.name.clone(),
            dataset: cfg.data.dataset.clone(),
            dataset_source: source.into(),
            seed: cfg.seed,
            status: if error.is_none() { "completed" } else { "failed" }.into(),
            error,
            rounds_completed: records.len(),
            final_accuracy: evaluated.last().copied(),
            best_accuracy: evaluated.iter().copied().reduce(f64::max),
            mean_last_accuracy: mean_last(&evaluated),
            final_accuracy_ensemble: ensemble.last().copied(),
            mean_last_accuracy_ensemble: mean_last(&ensemble),
            total_bytes_down: records.iter().map(|r| r.bytes_down).sum(),
            total_bytes_up: records.iter().map(|r| r.bytes_up).sum(),
            total_compute_s: records.iter().map(|r| r.compute_s).sum(),
            wall_s,
            mean_peak_mem_mb: mean(&records.iter().filter_map(|r| r.peak_mem_mb).collect::<Vec<_>>()),
            mean_peak_extra_mb: mean(&records.iter().filter_map(|r| r.peak_extra_mb).collect::<Vec<_>>()),
            energy_compute_kj: records.iter().map(|r| r.energy_compute_j).sum::<f64>() / 1e3,
            energy_comm_kj: records.iter().map(|r| r.energy_comm_j).sum::<f64>() / 1e3,
            memory_budgets: crate::accounting::budget::BudgetSummary::from_records(records),
        }
    }

    /// The final table's memory line. On a GPU only the absolute figure exists (the device's
    /// bytes in use; no allocator sees the resident model apart from the step's extra).
    pub fn peak_memory_line(&self) -> String {
        match (self.mean_peak_mem_mb, self.mean_peak_extra_mb) {
            (Some(abs), Some(extra)) => format!("{abs:.1} MB (training adds {extra:.1} MB to the resident model)"),
            (Some(abs), None) => format!("{abs:.1} MB (device memory in use on the client's stream)"),
            (None, _) => "n/a".into(),
        }
    }
}

/// A run's output folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Create `<out>/<name>-<timestamp>/`, a folder no other run holds: the folder is made
    /// exclusively, so runs started in the same second take `-2`, `-3`, … in turn.
    pub fn create(out: &Path, name: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(out)?;
        let stamp = timestamp();
        for n in 1.. {
            let path = if n == 1 { out.join(format!("{name}-{stamp}")) } else { out.join(format!("{name}-{stamp}-{n}")) };
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("some suffix is free")
    }

    /// Keep other processes from writing this folder while the returned lock lives.
    pub fn lock(&self) -> Result<FolderLock, LockError> {
        FolderLock::acquire(&self.path)
    }

    /// `<run>/trial-<seed>/`, one trial of a multi-seed run.
    pub fn trial(&self, seed: u64) -> std::io::Result<Self> {
        let path = self.path.join(format!("trial-{seed}"));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The run's own `config.toml`, parsed (errors name the file, and the field).
    pub fn read_config(&self) -> Result<Config, ConfigError> {
        let path = self.path.join("config.toml");
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Io { path: origin.clone(), error })?;
        Config::from_toml(&text, &origin, &[])
    }

    pub fn write_config(&self, cfg: &Config) -> std::io::Result<()> {
        write_atomic(&self.path.join("config.toml"), cfg.to_toml().as_bytes())
    }

    pub fn write_rounds(&self, records: &[RoundRecord]) -> std::io::Result<()> {
        write_atomic(&self.path.join("rounds.csv"), rounds_csv(records).as_bytes())
    }

    /// Rewrite `clients.csv` with every round's client rows (atomically, like every results
    /// file: a crash never leaves half a row).
    pub fn write_clients(&self, records: &[RoundRecord]) -> std::io::Result<()> {
        let mut text = String::from(CLIENTS_CSV_HEADER);
        text.push('\n');
        for r in records {
            text.push_str(&client_rows(&r.per_client));
        }
        write_atomic(&self.path.join("clients.csv"), text.as_bytes())
    }

    /// An existing run folder (to resume or export).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if !path.join("config.toml").exists() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} is not a run folder (no config.toml)", path.display())));
        }
        Ok(Self { path: path.to_path_buf() })
    }

    pub fn write_summary<S: Serialize>(&self, summary: &S) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(summary).expect("summary serialises");
        write_atomic(&self.path.join("summary.json"), json.as_bytes())
    }
}

/// UTC `YYYYmmdd-HHMMSS` from the system clock (civil-from-days, no time-zone crate).
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
