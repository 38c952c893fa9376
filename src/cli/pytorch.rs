//! The PyTorch twin (`benches/pytorch_twin.py`) as a child process: the benchmarks hand it a
//! JSON spec of the same work they time and read back its seconds.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context};
use fedolf::accounting::speed::{StepSpec, BENCH_SGD};
use serde_json::{json, Value};

const TWIN: &str = include_str!("../../benches/pytorch_twin.py");

/// The PyTorch twin, run as a child process.
pub struct PyTorch {
    pub python: PathBuf,
    pub version: String,
    pub threads: usize,
}

impl PyTorch {
    /// `--python`, else `$FEDOLF_PYTHON`, else `python3`; usable if it imports torch.
    pub fn find(python: Option<PathBuf>, threads: usize) -> Result<Self, String> {
        let python = python.or_else(|| std::env::var_os("FEDOLF_PYTHON").map(PathBuf::from)).unwrap_or_else(|| "python3".into());
        let out = Command::new(&python)
            .args(["-c", "import torch; print(torch.__version__)"])
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} cannot import torch (install it in a venv: `python3 -m venv .venv && .venv/bin/pip install torch`, then pass --python .venv/bin/python)",
                python.display()
            ));
        }
        Ok(Self { python, version: String::from_utf8_lossy(&out.stdout).trim().to_string(), threads })
    }

    /// The twin started in `mode` from its script written to a temporary file (removed by the
    /// caller once the child has exited).
    fn start(&self, mode: &str) -> anyhow::Result<(Child, PathBuf)> {
        let script = std::env::temp_dir().join(format!("fedolf-pytorch-twin-{}-{mode}.py", std::process::id()));
        std::fs::write(&script, TWIN).with_context(|| format!("writing {}", script.display()))?;
        let child = Command::new(&self.python)
            .arg(&script)
            .arg(mode)
            .args(["--threads", &self.threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.python.display()))?;
        Ok((child, script))
    }

    fn call(&self, mode: &str, input: &Value) -> anyhow::Result<Value> {
        let (mut child, script) = self.start(mode)?;
        child.stdin.take().context("twin stdin")?.write_all(input.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let _ = std::fs::remove_file(&script);
        if !out.status.success() {
            bail!("the PyTorch twin ({mode}) failed with {}", out.status);
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("the PyTorch twin ({mode}) printed no JSON"))
    }

    /// A twin that keeps every model of `specs` and takes one timed step at a time on request
    /// ([`Session::step`]), so that its steps and fedolf's can alternate one by one.
    pub fn serve(&self, specs: &[StepSpec]) -> anyhow::Result<Session> {
        self.session(steps_spec(specs), specs.len())
    }

    /// A twin that keeps every convolution of `convs` (the `serve` mode's entries) and times
    /// one call of one of them at a time ([`Session::conv`]).
    pub fn serve_convs(&self, convs: &[Value]) -> anyhow::Result<Session> {
        self.session(json!({ "convs": convs }), convs.len())
    }

    fn session(&self, spec: Value, entries: usize) -> anyhow::Result<Session> {
        let (mut child, script) = self.start("serve")?;
        let stdin = child.stdin.take().context("twin stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("twin stdout")?);
        let mut session = Session { child, stdin: Some(stdin), stdout, script, entries };
        writeln!(session.stdin.as_mut().expect("open until dropped"), "{spec}")?;
        let ready = session.reply()?;
        if ready["ready"].as_u64() != Some(entries as u64) {
            bail!("the PyTorch twin (serve) built {} of {entries} entries", ready["ready"]);
        }
        Ok(session)
    }

    /// Mean seconds per round of the replayed workload.
    pub fn round(&self, workload: &Value) -> anyhow::Result<f64> {
        let out = self.call("round", workload)?;
        let rounds: Vec<f64> = serde_json::from_value(out["round_seconds"].clone()).context("twin `round` output")?;
        if rounds.is_empty() {
            bail!("the PyTorch twin timed no rounds");
        }
        Ok(rounds.iter().sum::<f64>() / rounds.len() as f64)
    }
}

/// The `serve` mode's spec of `specs`' models (the warm-up and repeats are fedolf's to run).
fn steps_spec(specs: &[StepSpec]) -> Value {
    json!({
        "sgd": {"lr": BENCH_SGD.lr, "momentum": BENCH_SGD.momentum, "weight_decay": BENCH_SGD.weight_decay},
        "steps": specs.iter().map(|s| json!({
            "model": s.model.name(), "input": s.input, "classes": s.classes, "batch": s.batch, "frozen": s.frozen,
        })).collect::<Vec<_>>(),
    })
}

/// Untimed work at the start of each turn, before the timed call: a call that directly
/// follows the other framework's finds its caches cold, its threads asleep and the other's
/// OpenMP workers still spinning (they busy-wait about 5 ms here after each call). One untimed
/// call was not enough for calls of a few ms: `fedolf bench conv`'s ResNet 16 → 16 forward read
/// 3.26 ms alone and 4.78 ms taking turns after one; after 3 or 6, 3.22 and 3.38 ms. Pausing
/// between turns instead made it worse (5–7 ms: the idle cores slow down).
const WARM_SECONDS: f64 = 0.01;

/// Untimed calls per turn for calls that take `seconds` (the faster side's warm-up call):
/// enough for [`WARM_SECONDS`] of work, at least one, at most eight.
pub fn untimed_calls(seconds: f64) -> usize {
    ((WARM_SECONDS / seconds).ceil() as usize).clamp(1, 8)
}

/// One turn of fedolf's call and the twin's same call (when it runs), fedolf's first when
/// `ours_first`, each side making `untimed` untimed calls before its timed one: the two
/// timed seconds. `theirs` takes the untimed count.
pub fn take_turn(
    ours_first: bool,
    untimed: usize,
    mut ours: impl FnMut() -> f64,
    mut theirs: Option<impl FnMut(usize) -> anyhow::Result<f64>>,
) -> anyhow::Result<(f64, Option<f64>)> {
    let theirs_first = match theirs.as_mut() {
        Some(t) if !ours_first => Some(t(untimed)?),
        _ => None,
    };
    for _ in 0..untimed {
        ours();
    }
    let o = ours();
    let theirs_after = match theirs.as_mut() {
        Some(t) if ours_first => Some(t(untimed)?),
        _ => None,
    };
    Ok((o, theirs_first.or(theirs_after)))
}

/// A running twin in `serve` mode (see [`PyTorch::serve`]); closing its stdin on drop ends it.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    script: PathBuf,
    entries: usize,
}

impl Session {
    /// `untimed` steps of entry `i` of the specs it was started with, then one timed step: its
    /// seconds.
    pub fn step(&mut self, i: usize, untimed: usize) -> anyhow::Result<f64> {
        self.timed(i, json!({ "step": i, "untimed": untimed }))
    }

    /// `untimed` calls of operation `op` (0 forward, 1 input gradient, 2 weight gradient) of
    /// convolution `i`, then one timed call: its seconds.
    pub fn conv(&mut self, i: usize, op: usize, untimed: usize) -> anyhow::Result<f64> {
        self.timed(i, json!({ "conv": i, "op": op, "untimed": untimed }))
    }

    fn timed(&mut self, i: usize, request: Value) -> anyhow::Result<f64> {
        anyhow::ensure!(i < self.entries, "the PyTorch twin holds {} entries, not {}", self.entries, i + 1);
        writeln!(self.stdin.as_mut().expect("open until dropped"), "{request}")?;
        self.reply()?["seconds"].as_f64().context("the PyTorch twin (serve) replied without seconds")
    }

    fn reply(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the PyTorch twin (serve) exited early (its error is above)");
        }
        serde_json::from_str(&line).with_context(|| format!("the PyTorch twin (serve) printed {:?}, not JSON", line.trim()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.script);
    }
}
