//! `fedolf table`: a grid SIGKILLed in the middle of a run and started again ends with the
//! results of an uninterrupted grid; malformed grid files are refused with one line naming
//! the row and field, before anything is written.

mod results_csv;
mod scratch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use results_csv::without_timing;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedolf"))
}

/// A grid of two rows (FedOLF with TOA on a 3-layer CNN, HeteroFL) × two seeds on 600
/// images; every round checkpointed, so a kill lands between checkpoints.
fn tiny_grid(dir: &Path) -> PathBuf {
    let data = fedolf_datasets::shipped_subset_dir();
    let text = format!(
        r#"name = "tiny"
seeds = [1, 2]
column = "none"
set = ['data.data_dir="{}"', "data.train_limit=600", "data.test_limit=300", "data.partition=\"iid\"",
       "federation.clients=6", "federation.clients_per_round=3", "federation.rounds=4",
       "federation.eval_every=1", "federation.clusters=3", "checkpoint_every=1", "train.batch_size=16"]

[[row]]
name = "fedolf-toa"
method = "fedolf"
set = ["toa.s=0.5"]
paper = 50.0

[[row]]
name = "heterofl"
method = "heterofl"
"#,
        data.display().to_string()
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn table(grid: &Path, out: &Path) -> Output {
    bin().args(["table", grid.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap()
}

/// Every results file of the grid folder, timing columns left out.
fn results(grid_dir: &Path) -> Vec<(String, Vec<Vec<String>>)> {
    let mut files = Vec::new();
    for row in ["fedolf-toa", "heterofl"] {
        for seed in [1, 2] {
            for file in ["rounds.csv", "clients.csv"] {
                let path = grid_dir.join(row).join(format!("trial-{seed}")).join(file);
                files.push((format!("{row}/trial-{seed}/{file}"), without_timing(&path)));
            }
        }
    }
    files
}

#[test]
fn a_killed_grid_continues_to_the_results_of_an_uninterrupted_one() {
    let scratch = scratch::tempdir().unwrap();
    let grid = tiny_grid(scratch.path());

    let whole = scratch.path().join("whole");
    let o = table(&grid, &whole);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("| fedolf-toa | fedolf | 2/2 |"), "{stdout}");
    assert!(stdout.contains("| heterofl | heterofl | 2/2 |"), "{stdout}");
    for file in ["table.md", "table.csv", "accuracy.svg", "grid.toml", "heterofl/summary.json"] {
        assert!(whole.join("tiny").join(file).exists(), "{file} missing");
    }

    // SIGKILL once the second run (heterofl, seed 1) has checkpointed a round.
    let killed = scratch.path().join("killed");
    let mut child = bin().args(["table", grid.to_str().unwrap(), "--out", killed.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let in_flight = killed.join("tiny/heterofl/trial-1");
    let started = Instant::now();
    while !in_flight.join("checkpoint").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the grid ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint of heterofl seed 1 after 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let raced = in_flight.join("summary.json").exists();
    assert!(!killed.join("tiny/fedolf-toa/trial-2/summary.json").exists(), "the kill came after the grid's later runs");
    let first_run = std::fs::read(killed.join("tiny/fedolf-toa/trial-1/rounds.csv")).unwrap();

    let o = table(&grid, &killed);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("1 runs already done"), "{stderr}");
    if !raced {
        assert!(stderr.contains("heterofl seed 1: resuming from its checkpoint"), "{stderr}");
    }
    assert_eq!(std::fs::read(killed.join("tiny/fedolf-toa/trial-1/rounds.csv")).unwrap(), first_run, "a finished run was run again");
    let (a, b) = (results(&whole.join("tiny")), results(&killed.join("tiny")));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x, y, "{name} differs from the uninterrupted grid's");
    }
    let table_of = |dir: &Path| std::fs::read_to_string(dir.join("tiny/table.csv")).unwrap();
    let strip = |t: String| t.lines().map(|l| l.split(',').take(11).collect::<Vec<_>>().join(",")).collect::<Vec<_>>();
    assert_eq!(strip(table_of(&whole)), strip(table_of(&killed)), "the tables' accuracy columns differ");

    // Done: a third start runs nothing and reports the same table.
    let o = table(&grid, &killed);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 runs already done"));
}

fn refused(grid_text: &str, wants: &[&str]) {
    let scratch = scratch::tempdir().unwrap();
    let grid = scratch.path().join("bad.toml");
    std::fs::write(&grid, grid_text).unwrap();
    let out = scratch.path().join("out");
    let o = table(&grid, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted:\n{grid_text}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    for w in wants {
        assert!(stderr.contains(w), "`{w}` missing from: {stderr}");
    }
    assert!(!out.exists(), "a refused grid wrote {}", out.display());
}

const HEAD: &str = "name = \"g\"\nseeds = [1, 2]\n";

#[test]
fn malformed_grids_are_refused_with_one_line_before_anything_runs() {
    refused(&format!("{HEAD}[[row]]\nname = \"a\"\nmethod = \"fedolff\"\n"), &["bad.toml", "row `a`", "method", "fedolff"]);
    refused(&format!("{HEAD}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\nlr = 0.1\n"), &["bad.toml", "row", "lr"]);
    refused(&format!("{HEAD}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\nset = [\"train.lr=-1\"]\n"), &["bad.toml", "row `a`", "train.lr"]);
    refused(&format!("{HEAD}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\nset = [\"toa.z=1\"]\n"), &["bad.toml", "row `a`", "toa.z"]);
    refused(&format!("{HEAD}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\n[[row]]\nname = \"a\"\nmethod = \"fedavg\"\n"), &["bad.toml", "row `a`", "name", "two rows"]);
    refused(&format!("{HEAD}[[row]]\nname = \"a/b\"\nmethod = \"fedolf\"\n"), &["bad.toml", "name"]);
    refused(&format!("{HEAD}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\npaper = 120\n"), &["bad.toml", "row `a`", "paper"]);
    refused("name = \"g\"\nseeds = [1, 1]\n[[row]]\nname = \"a\"\nmethod = \"fedolf\"\n", &["bad.toml", "seeds"]);
    refused("name = \"g\"\nseeds = [1]\nrows = 3\n", &["bad.toml", "rows"]);
    refused(&format!("{HEAD}config = \"missing.toml\"\n[[row]]\nname = \"a\"\nmethod = \"fedolf\"\n"), &["bad.toml", "config", "missing.toml"]);
}

/// A grid file may gain rows and comments after its folder has results; a change to a row that
/// has results, or to the seeds, is refused with one line, and nothing is written.
#[test]
fn a_grid_folder_made_from_another_grid_file_is_refused() {
    let scratch = scratch::tempdir().unwrap();
    let out = scratch.path().join("out");
    let data = fedolf_datasets::shipped_subset_dir();
    let head = format!(
        "name = \"g\"\nseeds = [1]\nset = ['data.data_dir=\"{}\"', \"data.train_limit=200\", \"data.test_limit=100\", \"data.partition=\\\"iid\\\"\", \"federation.clients=4\", \"federation.clients_per_round=2\", \"federation.rounds=1\"]\n",
        data.display()
    );
    let write = |name: &str, text: String| {
        let path = scratch.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = write("first.toml", format!("{head}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\n"));
    let o = table(&first, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snapshot = || -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut stack = vec![out.join("g")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p)
                } else if p.file_name().is_some_and(|n| n != fedolf::io::lock::LOCK_FILE) {
                    files.push((p.clone(), std::fs::read(&p).unwrap()))
                }
            }
        }
        files.sort();
        files
    };
    let before = snapshot();
    for (name, text, wants) in [
        ("method.toml", format!("{head}[[row]]\nname = \"a\"\nmethod = \"fedavg\"\n"), "row `a`"),
        ("gone.toml", format!("{head}[[row]]\nname = \"b\"\nmethod = \"fedavg\"\n"), "row `a`"),
        ("seeds.toml", format!("{}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\n", head.replace("seeds = [1]", "seeds = [1, 2]")), "seeds"),
    ] {
        let o = table(&write(name, text), &out);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name} accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("another grid file") && stderr.contains(name) && stderr.contains(wants), "{name}: {stderr}");
        assert_eq!(snapshot(), before, "{name}: the refused grid wrote into the folder");
    }
    // While another process runs the grid, the same grid is refused, naming the holder.
    let lock = fedolf::io::lock::FolderLock::acquire(&out.join("g")).unwrap();
    let o = table(&first, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains(&format!("is being written by process {}", std::process::id())), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(snapshot(), before, "a refused grid wrote into the folder");
    drop(lock);
    // A new row and a comment: accepted, the finished row kept, the new one run.
    let grown = write("grown.toml", format!("# a comment\n{head}[[row]]\nname = \"a\"\nmethod = \"fedolf\"\n[[row]]\nname = \"b\"\nmethod = \"fedavg\"\n"));
    let o = table(&grown, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 runs already done"));
    assert_eq!(std::fs::read_to_string(out.join("g/grid.toml")).unwrap(), std::fs::read_to_string(&grown).unwrap());
}

/// The grid files the project ships read and resolve (every row's config), with the paper's
/// numbers in range.
#[test]
fn the_shipped_grids_resolve() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".toml") && std::fs::read_to_string(&path).unwrap().contains("[[row]]")) {
            continue;
        }
        let grid = fedolf::io::grid::Grid::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(grid.seeds, vec![1, 2, 3], "{name}: the paper's three trials");
        assert!(grid.rows.iter().any(|r| r.config.method == "fedavg"), "{name}: FedAvg, the upper bound, has a row");
        assert!(grid.rows.iter().filter(|r| r.config.method == "fedolf").all(|r| r.config.federation.clusters == 5), "{name}: FedOLF at c = 5");
        found += 1;
    }
    assert!(found >= 3, "the AlexNet and ResNet20 grids, and the momentum check");
}

/// A run that fails on its setup (here: no Dirichlet partition gives 50 clients 20 samples
/// each out of 300 images) stops the grid with one line, and is not kept as failed: the next
/// start meets the same error again, not "failed earlier".
#[test]
fn a_grid_whose_runs_cannot_start_stops_at_the_first() {
    let scratch = scratch::tempdir().unwrap();
    let data = fedolf_datasets::shipped_subset_dir();
    let grid = scratch.path().join("g.toml");
    std::fs::write(
        &grid,
        format!(
            "name = \"g\"\nseeds = [1, 2]\nset = ['data.data_dir=\"{}\"', \"data.train_limit=300\", \"federation.clients=50\", \"data.min_size=20\"]\n[[row]]\nname = \"a\"\nmethod = \"fedolf\"\n[[row]]\nname = \"b\"\nmethod = \"fedavg\"\n",
            data.display()
        ),
    )
    .unwrap();
    let out = scratch.path().join("out");
    for _ in 0..2 {
        let o = table(&grid, &out);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{stderr}");
        let last = stderr.trim().lines().last().unwrap();
        assert!(last.starts_with("Error: a seed 1:") && last.contains("partition") && last.contains("g.toml"), "{stderr}");
        assert!(!stderr.contains("failed earlier") && !stderr.contains("b seed"), "{stderr}");
    }
}

#[test]
fn rounds_csv_is_read_back_by_column_and_bad_lines_are_named() {
    use fedolf::io::grid::accuracy_curve;
    use fedolf::io::report::RoundsCsv;
    let scratch = scratch::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = scratch.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = write("good.csv", "round,accuracy,skipped\n1,,0\n2,0.5,1\n3,0.625,2\n");
    assert_eq!(accuracy_curve(&good).unwrap(), (vec![(2, 0.5), (3, 0.625)], 3), "evaluated rounds only; skips summed");
    assert_eq!(RoundsCsv::read(&good).unwrap().column("accuracy").unwrap(), vec![None, Some(0.5), Some(0.625)]);
    for (name, text, wants) in [
        ("short.csv", "round,accuracy,skipped\n1,0.5\n", "line 2: 2 cells"),
        ("word.csv", "round,accuracy,skipped\n1,high,0\n", "line 2: accuracy `high`"),
        ("nocol.csv", "round,accuracy\n1,0.5\n", "no `skipped` column"),
        ("empty.csv", "", "empty"),
    ] {
        let path = write(name, text);
        let e = accuracy_curve(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains(wants), "{name}: {e}");
    }
}
