//! The Flower app for real: a SuperLink and two SuperNodes on loopback run two rounds of
//! FedOLF (flower/run-local-federation.sh), and the Python tests in flower/tests (the
//! strategy's merge against the simulator's aggregation, the bindings against `fedolf run`).
//!
//! They need a Python environment with flwr and the fedolf bindings: `FEDOLF_FLOWER_VENV`
//! (CI makes one with flower/install.sh), else `.venv-flower` at the repository root. Without
//! one they say so and pass, unless `FEDOLF_REQUIRE_FLOWER=1` (set in CI), where a missing
//! environment fails.

mod scratch;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The two tests share the environment (each reinstalls the bindings): one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn venv() -> Option<PathBuf> {
    let candidate = std::env::var_os("FEDOLF_FLOWER_VENV").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-flower"));
    if candidate.join("bin/python").exists() {
        return Some(candidate);
    }
    assert!(
        std::env::var("FEDOLF_REQUIRE_FLOWER").as_deref() != Ok("1"),
        "FEDOLF_REQUIRE_FLOWER=1 but {} has no bin/python (run flower/install.sh {0})",
        candidate.display()
    );
    eprintln!("skipped: no Flower environment at {} (make one with flower/install.sh)", candidate.display());
    None
}

/// Wait for `child` at most `limit`; kill it (and fail) past that.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("the child can be polled") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Process groups still alive among `groups` (read from /proc: field 5 of `stat` is the group).
fn live_groups(groups: &[i64]) -> Vec<(i64, String)> {
    let mut alive = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // after ')': state, ppid, pgrp, ...
        if fields.first() == Some(&"Z") {
            continue;
        }
        if let Some(pgrp) = fields.get(2).and_then(|f| f.parse::<i64>().ok()) {
            if groups.contains(&pgrp) {
                alive.push((pgrp, stat.split(')').next().unwrap_or("").to_string()));
            }
        }
    }
    alive
}

fn json_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter().fold(v, |v, k| &v[*k])
}

#[test]
fn two_nodes_two_rounds_improve_and_match_the_simulator() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(venv) = venv() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = scratch::tempdir().unwrap();
    let child = Command::new(root.join("flower/run-local-federation.sh"))
        .args(["--nodes", "2", "--rounds", "2", "--timeout", "400", "--venv"])
        .arg(&venv)
        .arg("--out")
        .arg(out.path())
        .args(["--set", "federation.clusters=2; data.train_limit=2000; data.test_limit=1000"])
        .spawn()
        .unwrap();
    let status = wait_bounded(child, Duration::from_secs(900), "run-local-federation.sh");
    assert!(status.success(), "the federation failed: {status} (logs in {})", out.path().display());

    // Every process it started is gone.
    let pids: Vec<i64> = std::fs::read_to_string(out.path().join("pids.txt")).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 3, "a SuperLink and two SuperNodes");
    let alive = live_groups(&pids);
    assert!(alive.is_empty(), "still running after the script: {alive:?}");

    // The aggregated model improved on the test set.
    let flower: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("flower.json")).unwrap()).unwrap();
    let initial = flower["initial_accuracy"].as_f64().unwrap();
    let fin = json_at(&flower, &["summary", "final_accuracy"]).as_f64().unwrap();
    assert_eq!(json_at(&flower, &["summary", "rounds_completed"]).as_u64(), Some(2));
    assert!(fin > initial + 0.2, "accuracy {initial} before, {fin} after two rounds");

    // And it is the simulator's run: `fedolf run` with the config the server ran.
    let sim = scratch::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_fedolf"))
        .args(["run", "--quiet", "--config"])
        .arg(out.path().join("config.toml"))
        .arg("--out")
        .arg(sim.path())
        .status()
        .unwrap();
    assert!(status.success());
    let sim_dir = std::fs::read_dir(sim.path()).unwrap().next().unwrap().unwrap().path();
    let columns = |path: &Path| -> Vec<String> {
        // round, accuracy, test_loss, train_loss, clients, bytes_down, bytes_up, frozen_bytes_down
        std::fs::read_to_string(path).unwrap().lines().map(|l| l.split(',').take(8).collect::<Vec<_>>().join(",")).collect()
    };
    assert_eq!(columns(&out.path().join("rounds.csv")), columns(&sim_dir.join("rounds.csv")));
}

#[test]
fn python_tests_of_the_flower_app_and_bindings() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(venv) = venv() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The bindings must be the current sources' (install.sh rebuilds them when stale).
    let install = Command::new(root.join("flower/install.sh")).arg(&venv).spawn().unwrap();
    assert!(wait_bounded(install, Duration::from_secs(1800), "flower/install.sh").success());
    let child = Command::new(venv.join("bin/python"))
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(root.join("flower/tests"))
        .env("FEDOLF_BIN", env!("CARGO_BIN_EXE_fedolf"))
        .spawn()
        .unwrap();
    let status = wait_bounded(child, Duration::from_secs(900), "flower/tests");
    assert!(status.success(), "flower/tests failed: {status}");
}
