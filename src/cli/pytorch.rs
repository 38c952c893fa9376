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
        let (mut child, script) = self.start("serve")?;
        let stdin = child.stdin.take().context("twin stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("twin stdout")?);
        let mut session = Session { child, stdin: Some(stdin), stdout, script, entries: specs.len() };
        writeln!(session.stdin.as_mut().expect("open until dropped"), "{}", steps_spec(specs))?;
        let ready = session.reply()?;
        if ready["ready"].as_u64() != Some(specs.len() as u64) {
            bail!("the PyTorch twin (serve) built {} of {} models", ready["ready"], specs.len());
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

    /// Median seconds of forward, input gradient and weight gradient per convolution.
    pub fn convs(&self, convs: &[Value]) -> anyhow::Result<Vec<[f64; 3]>> {
        let out = self.call("conv", &json!({ "convs": convs }))?;
        let rows: Vec<[f64; 3]> = serde_json::from_value(out["conv"].clone()).context("twin `conv` output")?;
        if rows.len() != convs.len() {
            bail!("the PyTorch twin timed {} convolutions, expected {}", rows.len(), convs.len());
        }
        Ok(rows)
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
        anyhow::ensure!(i < self.entries, "the PyTorch twin holds {} models, not {}", self.entries, i + 1);
        writeln!(self.stdin.as_mut().expect("open until dropped"), "{}", json!({ "step": i, "untimed": untimed }))?;
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
