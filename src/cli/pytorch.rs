//! The PyTorch twin (`benches/pytorch_twin.py`) as a child process: the benchmarks hand it a
//! JSON spec of the same work they time and read back its seconds.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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

    fn call(&self, mode: &str, input: &Value) -> anyhow::Result<Value> {
        let script = std::env::temp_dir().join(format!("fedolf-pytorch-twin-{}.py", std::process::id()));
        std::fs::write(&script, TWIN).with_context(|| format!("writing {}", script.display()))?;
        let mut child = Command::new(&self.python)
            .arg(&script)
            .arg(mode)
            .args(["--threads", &self.threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.python.display()))?;
        child.stdin.take().context("twin stdin")?.write_all(input.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let _ = std::fs::remove_file(&script);
        if !out.status.success() {
            bail!("the PyTorch twin ({mode}) failed with {}", out.status);
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("the PyTorch twin ({mode}) printed no JSON"))
    }

    pub fn steps(&self, specs: &[StepSpec]) -> anyhow::Result<Vec<f64>> {
        let input = json!({
            "sgd": {"lr": BENCH_SGD.lr, "momentum": BENCH_SGD.momentum, "weight_decay": BENCH_SGD.weight_decay},
            "steps": specs.iter().map(|s| json!({
                "model": s.model.name(), "input": s.input, "classes": s.classes, "batch": s.batch,
                "frozen": s.frozen, "warmup": s.warmup, "repeats": s.repeats,
            })).collect::<Vec<_>>(),
        });
        let out = self.call("steps", &input)?;
        let steps: Vec<f64> = serde_json::from_value(out["steps"].clone()).context("twin `steps` output")?;
        if steps.len() != specs.len() {
            bail!("the PyTorch twin timed {} steps, expected {}", steps.len(), specs.len());
        }
        Ok(steps)
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
