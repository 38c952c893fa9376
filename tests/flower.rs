//! The Flower app for real (flower/run-local-federation.sh: a SuperLink and SuperNodes on
//! loopback): a federation against `fedolf run`, a server killed and resumed, nodes on two
//! devices with a declared memory budget and a node killed mid-run; and the Python tests in
//! flower/tests (the strategy's merge against the simulator's aggregation, the bindings
//! against `fedolf run`).
//!
//! They need a Python environment with flwr and the fedolf bindings: `FEDOLF_FLOWER_VENV`
//! (CI makes one with flower/install.sh), else `.venv-flower` at the repository root. Without
//! one they say so and pass, unless `FEDOLF_REQUIRE_FLOWER=1` (set in CI), where a missing
//! environment fails.

mod results_csv;
mod scratch;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use results_csv::without_timing;

/// The tests share the environment (the first reinstalls the bindings) and the CPU: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The environment, its bindings built from the current sources. Every test here drives the
/// bindings and compares them with the `fedolf` binary of this build: a wheel left from older
/// sources computes other bits (a changed kernel moves the fourth decimal), so the first test
/// to get here runs flower/install.sh, which rebuilds the wheel only when it is stale.
fn venv() -> Option<PathBuf> {
    static CURRENT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidate = std::env::var_os("FEDOLF_FLOWER_VENV").map(PathBuf::from).unwrap_or_else(|| root.join(".venv-flower"));
    if candidate.join("bin/python").exists() {
        CURRENT.get_or_init(|| {
            let install = Command::new(root.join("flower/install.sh")).arg(&candidate).spawn().unwrap();
            assert!(wait_bounded(install, Duration::from_secs(1800), "flower/install.sh").success());
        });
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

/// `flower/run-local-federation.sh` with `args`, results in `out`.
fn federation(venv: &Path, out: &Path, args: &[&str]) -> Child {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new(root.join("flower/run-local-federation.sh"))
        .args(["--no-install", "--timeout", "400", "--venv"])
        .arg(venv)
        .arg("--out")
        .arg(out)
        .args(args)
        .spawn()
        .unwrap()
}

/// The process groups the script started (SuperLink first, then SuperNode k at k + 1).
fn groups(out: &Path) -> Vec<i64> {
    std::fs::read_to_string(out.join("pids.txt")).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect()
}

fn kill_group(group: i64) {
    let status = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status().unwrap();
    assert!(status.success(), "kill -KILL -{group}");
}

/// Poll until `ready()` holds (the federation `child` still running), at most `limit`.
fn wait_until(child: &mut Child, limit: Duration, what: &str, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the federation ended ({status}) before {what}");
        }
        assert!(started.elapsed() < limit, "no {what} after {} s", limit.as_secs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A results CSV as maps from column name to value, one per row.
fn rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = text.lines().next().unwrap().split(',').map(String::from).collect();
    text.lines().skip(1).map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

fn data_rows(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count().saturating_sub(1))
}

fn checkpoint_round(run: &Path) -> usize {
    std::fs::read_to_string(run.join("checkpoint/state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["round"].as_u64())
        .unwrap_or(0) as usize
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// One federation of two CPU nodes, four rounds: it learns, it is `fedolf run` (same rows
/// in both results files, timing aside), and every process it started is gone. Then the
/// same federation again, its SuperLink (with the ServerApp) killed after round 2's
/// checkpoint; a new federation resumed from that run folder ends with the same results
/// files as the uninterrupted one.
#[test]
fn a_federation_is_the_simulator_and_resumes_after_its_server_is_killed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(venv) = venv() else { return };
    let settings = ["--nodes", "2", "--rounds", "4", "--set", "federation.clusters=2; data.train_limit=2000; data.test_limit=1000"];
    let whole = scratch::tempdir().unwrap();
    let status = wait_bounded(federation(&venv, whole.path(), &settings), Duration::from_secs(600), "the uninterrupted federation");
    assert!(status.success(), "the federation failed: {status} (logs in {})", whole.path().display());

    // Every process it started is gone.
    let pids = groups(whole.path());
    assert_eq!(pids.len(), 3, "a SuperLink and two SuperNodes");
    let alive = live_groups(&pids);
    assert!(alive.is_empty(), "still running after the script: {alive:?}");

    // The aggregated model improved on the test set.
    let flower = read_json(&whole.path().join("flower.json"));
    let initial = flower["initial_accuracy"].as_f64().unwrap();
    let fin = json_at(&flower, &["summary", "final_accuracy"]).as_f64().unwrap();
    assert_eq!(json_at(&flower, &["summary", "rounds_completed"]).as_u64(), Some(4));
    assert!(fin > initial + 0.2, "accuracy {initial} before, {fin} after four rounds");
    assert_eq!(json_at(&flower, &["nodes", "0", "device"]).as_str(), Some("cpu"));

    // And it is the simulator's run: `fedolf run` with the config the server ran.
    let sim = scratch::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_fedolf"))
        .args(["run", "--quiet", "--config"])
        .arg(whole.path().join("config.toml"))
        .arg("--out")
        .arg(sim.path())
        .status()
        .unwrap();
    assert!(status.success());
    let sim_dir = std::fs::read_dir(sim.path()).unwrap().next().unwrap().unwrap().path();
    for file in ["rounds.csv", "clients.csv"] {
        assert_eq!(without_timing(&whole.path().join(file)), without_timing(&sim_dir.join(file)), "{file}: the federation and `fedolf run` differ");
    }

    // The server dies after round 2: SIGKILL to the SuperLink's process group and to the
    // ServerApp, a process of its own that the SuperLink starts in a session of its own (the
    // run folder's lock names it; while it lives, a new server is refused the folder). The
    // script says so and fails.
    let cut = scratch::tempdir().unwrap();
    let mut child = federation(&venv, cut.path(), &settings);
    wait_until(&mut child, Duration::from_secs(300), "round 2's checkpoint", || checkpoint_round(cut.path()) >= 2);
    kill_group(groups(cut.path())[0]);
    let holder = std::fs::read_to_string(cut.path().join(fedolf::io::lock::LOCK_FILE)).unwrap();
    let server_app = holder.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()).unwrap_or_else(|| panic!("the lock names no process: {holder}"));
    // SAFETY: a plain kill(2) of a process this test's federation started.
    unsafe { libc::kill(server_app, libc::SIGKILL) };
    let status = wait_bounded(child, Duration::from_secs(120), "the federation whose server was killed");
    assert!(!status.success(), "the script succeeded although its SuperLink was killed");
    let kept = checkpoint_round(cut.path());
    assert!((2..4).contains(&kept), "the checkpoint holds {kept} rounds");

    // A new SuperLink and new nodes continue it from its folder.
    let resumed = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("flower/run-local-federation.sh"))
        .args(["--no-install", "--timeout", "400", "--nodes", "2", "--venv"])
        .arg(&venv)
        .arg("--resume")
        .arg(cut.path())
        .spawn()
        .unwrap();
    let status = wait_bounded(resumed, Duration::from_secs(600), "the resumed federation");
    assert!(status.success(), "the resumed federation failed: {status} (logs in {})", cut.path().display());
    let flower = read_json(&cut.path().join("flower.json"));
    assert_eq!(flower["resumed_after_round"].as_u64(), Some(kept as u64));
    assert_eq!(json_at(&flower, &["summary", "rounds_completed"]).as_u64(), Some(4));
    for file in ["rounds.csv", "clients.csv"] {
        assert_eq!(without_timing(&cut.path().join(file)), without_timing(&whole.path().join(file)), "{file}: the resumed federation differs from the uninterrupted one");
    }
}

/// Three nodes: one on the CPU declaring 5.5 MB of memory, one on wgpu (lavapipe in CI), and
/// one on the CPU that is killed (SIGKILL, no goodbye) once round 1 is in. The declared
/// node is planned from its own calibration and budget (with the AVX-512 kernels, and the
/// ReLU fused into the pool, the CNN's full plan is predicted at ~5.7 MB and one frozen layer
/// at ~4.8 MB; it was ~11 MB with im2col convolutions and an unfused ReLU), and its measured
/// peak stays within it; each
/// client round records its device; the killed node is skipped after the round timeout,
/// named in the log, and not sampled again; the run completes.
#[test]
fn nodes_on_two_devices_one_declaring_its_memory_one_killed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(venv) = venv() else { return };
    let devices = Command::new(venv.join("bin/python")).args(["-c", "import fedolf; print(' '.join(fedolf.devices()))"]).output().unwrap();
    let devices = String::from_utf8_lossy(&devices.stdout).to_string();
    if !devices.split_whitespace().any(|d| d == "wgpu") {
        assert!(
            std::env::var("FEDOLF_REQUIRE_FLOWER").as_deref() != Ok("1"),
            "FEDOLF_REQUIRE_FLOWER=1 but the bindings train on `{}` only (FEDOLF_WHEEL_FEATURES=wgpu flower/install.sh)",
            devices.trim()
        );
        eprintln!("skipped: the bindings have no wgpu (FEDOLF_WHEEL_FEATURES=wgpu flower/install.sh)");
        return;
    }
    let out = scratch::tempdir().unwrap();
    // 30 samples a node: lavapipe trains the CNN at ~0.4 s a sample.
    let mut child = federation(
        &venv,
        out.path(),
        &[
            "--devices",
            "cpu,wgpu,cpu",
            "--memory-mb",
            // Between what the CNN predicts at batch 30 with every layer trained (≈ 5.7 MB
            // beyond the resident model) and with its first layer frozen (≈ 4.8 MB; 5.2 MB
            // measured with the model): the node must freeze to fit.
            "5.5,,",
            "--rounds",
            "3",
            "--round-timeout",
            "40",
            "--set",
            r#"data.train_limit=90; data.test_limit=300; data.partition="iid"; federation.capacity="memory"; federation.budgets_mb=[1000.0]"#,
        ],
    );
    wait_until(&mut child, Duration::from_secs(300), "round 1's results", || data_rows(&out.path().join("rounds.csv")) >= 1);
    kill_group(groups(out.path())[3]);
    let status = wait_bounded(child, Duration::from_secs(600), "the federation that lost a node");
    assert!(status.success(), "the federation failed: {status} (logs in {})", out.path().display());

    let flower = read_json(&out.path().join("flower.json"));
    assert_eq!(json_at(&flower, &["summary", "rounds_completed"]).as_u64(), Some(3));
    for (client, device) in [("0", "cpu"), ("1", "wgpu"), ("2", "cpu")] {
        assert_eq!(json_at(&flower, &["nodes", client, "device"]).as_str(), Some(device), "client {client}'s node");
    }
    let killed = json_at(&flower, &["nodes", "2", "node"]).as_u64().unwrap();
    assert_eq!(flower["lost_nodes"], serde_json::json!([killed]));
    let log = std::fs::read_to_string(out.path().join("serverapp.log")).unwrap();
    assert!(log.contains(&format!("lost node {killed} (client 2)")), "the log does not name the lost node:\n{log}");

    // Round 2 skipped the killed node; round 3 did not sample it.
    let rounds = rows(&out.path().join("rounds.csv"));
    let skipped: Vec<&str> = rounds.iter().map(|r| r["skipped"].as_str()).collect();
    assert_eq!(skipped, ["0", "1", "0"], "skipped clients per round");
    let clients = rows(&out.path().join("clients.csv"));
    let in_round = |round: &str| -> Vec<String> { clients.iter().filter(|c| c["round"] == round).map(|c| c["client"].clone()).collect() };
    assert_eq!(in_round("1"), ["0", "1", "2"]);
    assert_eq!(in_round("2"), ["0", "1"]);
    assert_eq!(in_round("3"), ["0", "1"]);

    for c in &clients {
        let expected = if c["client"] == "1" { "wgpu" } else { "cpu" };
        assert_eq!(c["device"], expected, "client {} round {}", c["client"], c["round"]);
        let number = |k: &str| c[k].parse::<f64>().unwrap_or_else(|_| panic!("client {} round {}: {k} = {:?}", c["client"], c["round"], c[k]));
        let (budget, predicted, peak) = (number("budget_mb"), number("predicted_mb"), number("peak_mem_mb"));
        assert!(predicted <= budget, "client {} round {}: predicted {predicted} MB over its budget {budget} MB", c["client"], c["round"]);
        if c["client"] == "0" {
            // The declared node: its own budget, a plan that freezes to fit, a peak within it.
            assert_eq!(budget, 5.5);
            assert!(c["frozen"].parse::<usize>().unwrap() >= 1, "the 5.5 MB node trains everything: {c:?}");
            assert!(peak <= budget, "client 0 round {}: measured {peak} MB over its 5.5 MB", c["round"]);
        } else {
            assert_eq!(c["frozen"], "0", "an unconstrained node froze layers: {c:?}");
        }
    }
}

#[test]
fn python_tests_of_the_flower_app_and_bindings() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(venv) = venv() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let child = Command::new(venv.join("bin/python"))
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(root.join("flower/tests"))
        .env("FEDOLF_BIN", env!("CARGO_BIN_EXE_fedolf"))
        .spawn()
        .unwrap();
    let status = wait_bounded(child, Duration::from_secs(900), "flower/tests");
    assert!(status.success(), "flower/tests failed: {status}");
}
