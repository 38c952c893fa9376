//! A table of experiments (`fedolf table`): a grid file — one base config, rows (a method
//! with its options), seeds — read and checked in full before anything runs, its folder
//! (`<out>/<grid name>/<row>/trial-<seed>/`), and the table of what the folder holds.
//!
//! ```toml
//! name = "paper-table-fmnist-alexnet"
//! config = "paper-fmnist-alexnet.toml"   # relative to the grid file; omitted = the default
//! set = ["federation.rounds=40"]          # `--set` overrides for every row
//! seeds = [1, 2, 3]
//! column = "CIFAR-10 / AlexNet, non-iid (Table III)"
//! [[row]]
//! name = "fedolf-toa0.75"
//! method = "fedolf"
//! set = ["toa.s=0.75"]
//! paper = 66.6                           # the paper's number in `column`, percent
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{one_line, Config, ConfigError, DEFAULT_TOML};
use crate::io::lock::{FolderLock, LockError};
use crate::io::report::{write_atomic, ResultsError, RoundsCsv, Summary};
use crate::io::trials::Spread;

/// The grid file as written. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    name: String,
    #[serde(default)]
    config: Option<String>,
    #[serde(default)]
    set: Vec<String>,
    seeds: Vec<u64>,
    #[serde(default)]
    column: Option<String>,
    #[serde(default)]
    row: Vec<RowFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowFile {
    name: String,
    method: String,
    #[serde(default)]
    set: Vec<String>,
    #[serde(default)]
    paper: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}: row `{row}`: {message}")]
    Row { file: String, row: String, message: String },
    #[error("{file}: row `{row}`: {error}")]
    RowConfig { file: String, row: String, error: ConfigError },
    #[error("{folder}: {message}")]
    Folder { folder: String, message: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Results(#[from] ResultsError),
}

/// One row: its resolved config (the grid's seeds in `seeds`, the row's name as the run's).
#[derive(Debug, Clone)]
pub struct GridRow {
    pub name: String,
    pub config: Config,
    /// The paper's number for this row, percent.
    pub paper: Option<f64>,
}

/// A grid file, read and every row's config resolved.
#[derive(Debug, Clone)]
pub struct Grid {
    pub name: String,
    pub file: PathBuf,
    /// The file's text: a grid folder remembers it (`grid.toml`) to refuse another grid.
    pub text: String,
    pub seeds: Vec<u64>,
    /// What the paper's numbers are (its table and column).
    pub column: Option<String>,
    pub rows: Vec<GridRow>,
}

fn safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Grid {
    /// Read and check a grid file: every row's config must resolve, before anything runs.
    pub fn read(path: &Path) -> Result<Self, GridError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Io { path: file.clone(), error: source })?;
        let bad = |message: String| GridError::File { file: file.clone(), message };
        let parsed: GridFile = serde_path_to_error::deserialize(toml::de::Deserializer::new(&text)).map_err(|e| {
            let field = e.path().to_string();
            let message = one_line(&e.into_inner().to_string());
            bad(if field == "." { message } else { format!("field `{field}`: {message}") })
        })?;
        if !safe_name(&parsed.name) {
            return Err(bad(format!("field `name` = {:?}: use letters, digits, `.`, `_` and `-` (it names the grid's folder)", parsed.name)));
        }
        if parsed.seeds.is_empty() {
            return Err(bad("field `seeds` is empty: list at least one seed".into()));
        }
        if let Some(dup) = parsed.seeds.iter().enumerate().find_map(|(i, s)| parsed.seeds[..i].contains(s).then_some(*s)) {
            return Err(bad(format!("field `seeds`: {dup} appears twice")));
        }
        if parsed.row.is_empty() {
            return Err(bad("no `[[row]]`: a grid needs at least one row".into()));
        }
        let (base, origin) = match &parsed.config {
            Some(rel) => {
                let base_path = path.parent().unwrap_or(Path::new(".")).join(rel);
                let text = std::fs::read_to_string(&base_path).map_err(|e| bad(format!("field `config` = {rel:?}: cannot read {}: {e}", base_path.display())))?;
                (text, base_path.display().to_string())
            }
            None => (DEFAULT_TOML.to_string(), "experiments/default.toml (built in)".to_string()),
        };
        let seeds: Vec<String> = parsed.seeds.iter().map(u64::to_string).collect();
        let mut rows: Vec<GridRow> = Vec::with_capacity(parsed.row.len());
        for (i, r) in parsed.row.iter().enumerate() {
            let row_err = |message: String| GridError::Row { file: file.clone(), row: if r.name.is_empty() { format!("#{}", i + 1) } else { r.name.clone() }, message };
            if !safe_name(&r.name) {
                return Err(row_err(format!("field `name` = {:?}: use letters, digits, `.`, `_` and `-` (it names the row's folder)", r.name)));
            }
            if rows.iter().any(|o| o.name == r.name) {
                return Err(row_err("field `name`: two rows have this name".into()));
            }
            if let Some(p) = r.paper {
                if !(0.0..=100.0).contains(&p) {
                    return Err(row_err(format!("field `paper` = {p}: a percentage, 0..=100")));
                }
            }
            let mut overrides = parsed.set.clone();
            overrides.push(format!("method={}", toml::Value::String(r.method.clone())));
            overrides.extend(r.set.iter().cloned());
            overrides.push(format!("name={}", toml::Value::String(r.name.clone())));
            overrides.push(format!("seeds=[{}]", seeds.join(", ")));
            let config = Config::from_toml(&base, &origin, &overrides).map_err(|error| GridError::RowConfig { file: file.clone(), row: r.name.clone(), error })?;
            rows.push(GridRow { name: r.name.clone(), config, paper: r.paper });
        }
        Ok(Self { name: parsed.name, file: path.to_path_buf(), text, seeds: parsed.seeds, column: parsed.column, rows })
    }

    /// Runs in the grid (rows × seeds) and the rounds they hold.
    pub fn size(&self) -> (usize, usize) {
        let runs = self.rows.len() * self.seeds.len();
        let rounds = self.rows.iter().map(|r| r.config.federation.rounds).sum::<usize>() * self.seeds.len();
        (runs, rounds)
    }
}

/// The name of the copy of the grid file in its folder.
pub const GRID_FILE: &str = "grid.toml";

/// A grid's folder: `<out>/<grid name>/`, one folder per row, one trial folder per seed.
pub struct GridDir {
    pub path: PathBuf,
    /// Held while this process runs the grid (`None`: opened to report only).
    _lock: Option<FolderLock>,
}

impl GridDir {
    /// The grid's folder under `out`, created on first use. An existing folder must have been
    /// made from this grid: the same seeds, and every row it holds still in the grid with the
    /// same resolved config (a grid file may gain rows and comments; it may not change a row
    /// that has results). Nothing is written when it was not. A `writer` locks the folder
    /// first, and is refused while another process runs the grid.
    pub fn open(out: &Path, grid: &Grid, writer: bool) -> Result<Self, GridError> {
        let path = out.join(&grid.name);
        let folder = path.display().to_string();
        let kept = path.join(GRID_FILE);
        let lock = |path: &Path| -> Result<Option<FolderLock>, GridError> { if writer { Ok(Some(FolderLock::acquire(path)?)) } else { Ok(None) } };
        let held_lock;
        let refuse = |why: String| GridError::Folder {
            folder: folder.clone(),
            message: format!("made from another grid file than {} ({why}); use another --out, or move the folder away", grid.file.display()),
        };
        if kept.exists() {
            held_lock = lock(&path)?;
            let text = std::fs::read_to_string(&kept).map_err(|source| GridError::Io { path: kept.display().to_string(), error: source })?;
            if text != grid.text {
                let held: toml::Table = text.parse().map_err(|e: toml::de::Error| refuse(format!("its {GRID_FILE} does not parse: {}", e.message())))?;
                let seeds: Vec<u64> = held.get("seeds").and_then(|v| v.clone().try_into().ok()).unwrap_or_default();
                if seeds != grid.seeds {
                    return Err(refuse(format!("its seeds are {seeds:?}, the grid's {:?}", grid.seeds)));
                }
            }
            let entries = std::fs::read_dir(&path).map_err(|source| GridError::Io { path: folder.clone(), error: source })?;
            for entry in entries.filter_map(Result::ok) {
                let config = entry.path().join("config.toml");
                let name = entry.file_name().to_string_lossy().to_string();
                let Ok(held) = std::fs::read_to_string(&config) else { continue };
                // Compared as configs, not text: a field added since (with its default) is
                // the same config.
                let same = |row: &GridRow| Config::from_toml(&held, &config.display().to_string(), &[]).is_ok_and(|c| c == row.config);
                match grid.rows.iter().find(|r| r.name == name) {
                    None => return Err(refuse(format!("it holds row `{name}`, which the grid file does not have"))),
                    Some(row) if !same(row) => {
                        return Err(refuse(format!("row `{name}`: {} differs from the row's config as the grid file resolves it", config.display())))
                    }
                    Some(_) => {}
                }
            }
            if text != grid.text {
                write_atomic(&kept, grid.text.as_bytes()).map_err(|source| GridError::Io { path: kept.display().to_string(), error: source })?;
            }
        } else if path.exists() && std::fs::read_dir(&path).map(|mut d| d.next().is_some()).unwrap_or(true) {
            return Err(GridError::Folder { folder, message: format!("exists and is not a grid folder (no {GRID_FILE}); use another --out") });
        } else {
            std::fs::create_dir_all(&path).map_err(|source| GridError::Io { path: folder.clone(), error: source })?;
            held_lock = lock(&path)?;
            write_atomic(&kept, grid.text.as_bytes()).map_err(|source| GridError::Io { path: kept.display().to_string(), error: source })?;
        }
        Ok(Self { path, _lock: held_lock })
    }

    pub fn row(&self, row: &GridRow) -> PathBuf {
        self.path.join(&row.name)
    }

    pub fn trial(&self, row: &GridRow, seed: u64) -> PathBuf {
        self.row(row).join(format!("trial-{seed}"))
    }
}

/// A trial's summary, when it has ended (completed or failed).
pub fn trial_summary(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// `(round, accuracy)` of every evaluated round of a `rounds.csv`, and the client rounds it
/// left out for a NaN/inf (`skipped`, summed over the rounds).
pub fn accuracy_curve(path: &Path) -> Result<(Vec<(usize, f64)>, usize), GridError> {
    let csv = RoundsCsv::read(path)?;
    let (rounds, accuracy, skipped) = (csv.full_column("round")?, csv.column("accuracy")?, csv.full_column("skipped")?);
    let curve = rounds.iter().zip(&accuracy).filter_map(|(&r, a)| a.map(|a| (r as usize, a))).collect();
    Ok((curve, skipped.iter().sum::<f64>() as usize))
}

/// One row of the table: spreads over the row's completed trials.
#[derive(Debug, Clone)]
pub struct TableRow {
    pub name: String,
    pub method: String,
    pub paper: Option<f64>,
    pub completed: usize,
    pub planned: usize,
    /// Why a trial failed, if one did.
    pub failed: Option<String>,
    pub final_accuracy: Option<Spread>,
    pub mean_last_accuracy: Option<Spread>,
    pub peak_mem_mb: Option<Spread>,
    pub down_mb: Option<Spread>,
    pub up_mb: Option<Spread>,
    pub energy_kj: Option<Spread>,
    /// Client rounds left out for a NaN/inf loss or upload (`train.nonfinite = "skip"`),
    /// summed over the completed trials.
    pub skipped: usize,
    /// Per completed trial, its accuracy curve.
    pub curves: Vec<Vec<(usize, f64)>>,
}

/// The table of what a grid folder holds (completed trials only; the others are counted).
pub fn collect(grid: &Grid, dir: &GridDir) -> Result<Vec<TableRow>, GridError> {
    grid.rows
        .iter()
        .map(|row| {
            let mut done: Vec<Summary> = Vec::new();
            let mut curves = Vec::new();
            let mut failed = None;
            let mut skipped = 0;
            for &seed in &grid.seeds {
                let trial = dir.trial(row, seed);
                match trial_summary(&trial) {
                    Some(s) if s.status == "completed" => {
                        let (curve, left_out) = accuracy_curve(&trial.join("rounds.csv"))?;
                        curves.push(curve);
                        skipped += left_out;
                        done.push(s);
                    }
                    Some(s) if s.status == "failed" => failed = Some(format!("seed {seed}: {}", s.error.unwrap_or_default())),
                    _ => {}
                }
            }
            let spread = |f: &dyn Fn(&Summary) -> Option<f64>| Spread::of(done.iter().filter_map(f).collect());
            Ok(TableRow {
                name: row.name.clone(),
                method: row.config.method.clone(),
                paper: row.paper,
                completed: done.len(),
                planned: grid.seeds.len(),
                failed,
                final_accuracy: spread(&|s| s.final_accuracy.map(|a| a * 100.0)),
                mean_last_accuracy: spread(&|s| s.mean_last_accuracy.map(|a| a * 100.0)),
                peak_mem_mb: spread(&|s| s.mean_peak_mem_mb),
                down_mb: spread(&|s| Some(s.total_bytes_down as f64 / 1e6)),
                up_mb: spread(&|s| Some(s.total_bytes_up as f64 / 1e6)),
                energy_kj: spread(&|s| Some(s.energy_compute_kj + s.energy_comm_kj)),
                skipped,
                curves,
            })
        })
        .collect()
}

fn cell(s: &Option<Spread>, digits: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.values.len() < 2 => format!("{:.*}", digits, s.mean),
        Some(s) => format!("{:.*} ± {:.*}", digits, s.mean, digits, s.std),
    }
}

/// The table as Markdown: mean ± sample std over the row's completed trials.
pub fn markdown(grid: &Grid, rows: &[TableRow]) -> String {
    let paper = grid.column.as_deref().map_or("paper".to_string(), |c| format!("paper ({c})"));
    let mut out = format!("| row | method | seeds done | final acc. % | mean of last evals % | {paper} | peak client MB | down MB | up MB | energy kJ | NaN clients skipped |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let done = match &r.failed {
            Some(why) => format!("{}/{} (failed: {})", r.completed, r.planned, why.replace('|', "/")),
            None => format!("{}/{}", r.completed, r.planned),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.method,
            done,
            cell(&r.final_accuracy, 2),
            cell(&r.mean_last_accuracy, 2),
            r.paper.map_or("–".into(), |p| format!("{p:.2}")),
            cell(&r.peak_mem_mb, 1),
            cell(&r.down_mb, 0),
            cell(&r.up_mb, 0),
            cell(&r.energy_kj, 2),
            r.skipped,
        ));
    }
    out
}

/// The table as CSV: one line per row, mean and std of each metric, and the per-seed values.
pub fn csv(rows: &[TableRow]) -> String {
    let metrics = ["final_accuracy", "mean_last_accuracy", "peak_mem_mb", "down_mb", "up_mb", "energy_kj"];
    let mut out = String::from("row,method,paper,seeds_completed,seeds_planned,skipped");
    for m in metrics {
        out.push_str(&format!(",{m}_mean,{m}_std,{m}_values"));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{},{},{},{},{},{}", r.name, r.method, r.paper.map_or(String::new(), |p| p.to_string()), r.completed, r.planned, r.skipped));
        for s in [&r.final_accuracy, &r.mean_last_accuracy, &r.peak_mem_mb, &r.down_mb, &r.up_mb, &r.energy_kj] {
            match s {
                Some(s) => {
                    let values: Vec<String> = s.values.iter().map(f64::to_string).collect();
                    out.push_str(&format!(",{},{},{}", s.mean, s.std, values.join(" ")));
                }
                None => out.push_str(",,,"),
            }
        }
        out.push('\n');
    }
    out
}

/// Per evaluated round: the mean, min and max accuracy over the trials that evaluated it.
pub fn band(curves: &[Vec<(usize, f64)>]) -> Vec<(f64, f64, f64, f64)> {
    let mut rounds: Vec<usize> = curves.iter().flatten().map(|p| p.0).collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
        .into_iter()
        .map(|round| {
            let at: Vec<f64> = curves.iter().filter_map(|c| c.iter().find(|p| p.0 == round).map(|p| p.1 * 100.0)).collect();
            let mean = at.iter().sum::<f64>() / at.len() as f64;
            let (lo, hi) = at.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
            (round as f64, mean, lo, hi)
        })
        .collect()
}
