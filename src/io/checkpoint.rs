//! Checkpoints (`<run>/checkpoint/`): everything a run needs to continue — the rounds
//! completed, the global model, the strategy's state and the per-round records so far — so
//! that `fedolf run --resume` gives bit-identical results to the uninterrupted run (every
//! random stream is derived from the seed, the round and the client, never from history).
//!
//! - `model.safetensors`: the global model in PyTorch's names and layouts: layer `i`'s
//!   tensors are `layers.<i>.<path>` (exit heads `exits.<e>.<path>`), with Burn's enum
//!   variant names dropped (`layers.3.conv1.weight`), BatchNorm `gamma`/`beta` as
//!   `weight`/`bias`, and Linear weights transposed to PyTorch's `[out, in]`.
//! - `strategy.safetensors`: the strategy's state (NeFL's BatchNorm banks), when it has any.
//! - `state.json`: the round, the records, the tensor names in model order.
//!
//! The folder is written next to the old one and swapped in by renames, so a crash leaves
//! either the previous checkpoint or the new one, never half of one.

use crate::accounting::budget::Calibration;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::tensor::host::{HostLayer, HostTensor};
use crate::io::report::write_atomic;
use crate::records::RoundRecord;

pub const FOLDER: &str = "checkpoint";
const FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {problem}")]
    Malformed { path: PathBuf, problem: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), error: source }
}

fn malformed(path: &Path, problem: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed { path: path.to_path_buf(), problem: problem.into() }
}

/// A run's state after `round` completed rounds.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub round: usize,
    /// The global model: its layers, then its exit heads (as `read_model` orders them).
    pub model: Vec<HostLayer>,
    pub num_layers: usize,
    /// The strategy's state (named tensors; empty for stateless methods).
    pub strategy_state: Vec<HostTensor>,
    pub records: Vec<RoundRecord>,
    /// Memory budgets: the run's predictor calibration, so a resumed run plans as the
    /// uninterrupted one would (a fresh probe measures slightly different bytes).
    pub calibration: Option<Calibration>,
}

#[derive(Serialize, Deserialize)]
struct State {
    format: u32,
    round: usize,
    num_layers: usize,
    /// `[layer][tensor]` → the name in `model.safetensors`.
    model_names: Vec<Vec<String>>,
    records: Vec<RoundRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calibration: Option<Calibration>,
}

/// The PyTorch name of tensor `name` (Burn's path inside its layer) of entry `index`.
pub fn torch_name(index: usize, num_layers: usize, name: &str) -> String {
    let (group, i) = if index < num_layers { ("layers", index) } else { ("exits", index - num_layers) };
    let parts: Vec<&str> = name
        .split('.')
        .filter(|p| !p.starts_with(|c: char| c.is_ascii_uppercase())) // enum variants
        .collect();
    let mut parts: Vec<String> = parts.into_iter().map(str::to_string).collect();
    if let Some(last) = parts.last_mut() {
        *last = match last.as_str() {
            "gamma" => "weight".into(),
            "beta" => "bias".into(),
            other => other.into(),
        };
    }
    format!("{group}.{i}.{}", parts.join("."))
}

/// Burn's Linear weights are `[d_in, d_out]`; PyTorch's `[d_out, d_in]`.
fn is_linear_weight(t: &HostTensor) -> bool {
    t.shape.len() == 2 && t.name.ends_with("weight")
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The model as safetensors bytes (PyTorch names and layouts), and the names in model order.
pub fn model_safetensors(model: &[HostLayer], num_layers: usize) -> Result<(Vec<u8>, Vec<Vec<String>>), safetensors::SafeTensorError> {
    let mut entries: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut names = Vec::with_capacity(model.len());
    for (index, layer) in model.iter().enumerate() {
        let mut layer_names = Vec::with_capacity(layer.len());
        for t in layer {
            let name = torch_name(index, num_layers, &t.name);
            let (shape, values) = if is_linear_weight(t) {
                (vec![t.shape[1], t.shape[0]], transpose(&t.values, t.shape[0], t.shape[1]))
            } else {
                (t.shape.clone(), t.values.clone())
            };
            layer_names.push(name.clone());
            entries.push((name, shape, f32_bytes(&values)));
        }
        names.push(layer_names);
    }
    let views: Vec<(String, TensorView<'_>)> =
        entries.iter().map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?))).collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok((safetensors::serialize(views, &None)?, names))
}

fn named_safetensors(tensors: &[HostTensor]) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| f32_bytes(&t.values)).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| Ok((t.name.clone(), TensorView::new(Dtype::F32, t.shape.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    safetensors::serialize(views, &None)
}

/// Every tensor of a safetensors file as f32 values with its shape, by name.
fn read_safetensors(path: &Path) -> Result<HashMap<String, (Vec<usize>, Vec<f32>)>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| malformed(path, format!("not a safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(malformed(path, format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        // A run never stores a non-finite weight (the merge refuses them), so one here means
        // the file is damaged: refuse it before anything trains from it.
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(malformed(path, format!("tensor `{name}` holds {bad} (a checkpoint holds only finite values: the file is damaged)")));
        }
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

impl Checkpoint {
    /// Write into `<run>/checkpoint/` (atomically: a fresh folder swapped in by renames).
    pub fn write(&self, run: &Path) -> Result<(), CheckpointError> {
        let dir = run.join(FOLDER);
        let fresh = run.join(format!("{FOLDER}.tmp"));
        let old = run.join(format!("{FOLDER}.old"));
        for stale in [&fresh, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(io(stale))?;
            }
        }
        std::fs::create_dir_all(&fresh).map_err(io(&fresh))?;
        let model_path = fresh.join("model.safetensors");
        let (bytes, model_names) = model_safetensors(&self.model, self.num_layers).map_err(|e| malformed(&model_path, e.to_string()))?;
        write_atomic(&model_path, &bytes).map_err(io(&model_path))?;
        if !self.strategy_state.is_empty() {
            let path = fresh.join("strategy.safetensors");
            let bytes = named_safetensors(&self.strategy_state).map_err(|e| malformed(&path, e.to_string()))?;
            write_atomic(&path, &bytes).map_err(io(&path))?;
        }
        let state = State {
            format: FORMAT,
            round: self.round,
            num_layers: self.num_layers,
            model_names,
            records: self.records.clone(),
            calibration: self.calibration.clone(),
        };
        let state_path = fresh.join("state.json");
        let json = serde_json::to_vec(&state).expect("checkpoint state serialises");
        write_atomic(&state_path, &json).map_err(io(&state_path))?;
        if dir.exists() {
            std::fs::rename(&dir, &old).map_err(io(&dir))?;
        }
        std::fs::rename(&fresh, &dir).map_err(io(&dir))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(())
    }

    /// Read `<run>/checkpoint/` for a model shaped like `template` (the run's fresh global
    /// model, host copy): every tensor must be there with its shape.
    pub fn read(run: &Path, template: &[HostLayer], num_layers: usize) -> Result<Self, CheckpointError> {
        let dir = run.join(FOLDER);
        let state_path = dir.join("state.json");
        let text = std::fs::read(&state_path).map_err(io(&state_path))?;
        let state: State = serde_json::from_slice(&text).map_err(|e| malformed(&state_path, format!("not a checkpoint state: {e}")))?;
        if state.format != FORMAT {
            return Err(malformed(&state_path, format!("checkpoint format {} (this build reads {FORMAT})", state.format)));
        }
        if state.num_layers != num_layers || state.records.len() != state.round {
            return Err(malformed(&state_path, format!("{} layers and {} records for round {}; the run's model has {num_layers} layers", state.num_layers, state.records.len(), state.round)));
        }
        let model_path = dir.join("model.safetensors");
        let mut tensors = read_safetensors(&model_path)?;
        let mut model = Vec::with_capacity(template.len());
        for (index, layer) in template.iter().enumerate() {
            let mut restored = Vec::with_capacity(layer.len());
            for t in layer {
                let name = torch_name(index, num_layers, &t.name);
                let (shape, values) = tensors.remove(&name).ok_or_else(|| malformed(&model_path, format!("tensor `{name}` is missing")))?;
                let values = if is_linear_weight(t) {
                    if shape != [t.shape[1], t.shape[0]] {
                        return Err(malformed(&model_path, format!("tensor `{name}` has shape {shape:?}, the model expects {:?}", [t.shape[1], t.shape[0]])));
                    }
                    transpose(&values, t.shape[1], t.shape[0])
                } else {
                    if shape != t.shape {
                        return Err(malformed(&model_path, format!("tensor `{name}` has shape {shape:?}, the model expects {:?}", t.shape)));
                    }
                    values
                };
                restored.push(HostTensor { name: t.name.clone(), shape: t.shape.clone(), values });
            }
            model.push(restored);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(malformed(&model_path, format!("tensor `{extra}` does not belong to this run's model")));
        }
        let strategy_path = dir.join("strategy.safetensors");
        let strategy_state = if strategy_path.exists() {
            let mut named: Vec<HostTensor> =
                read_safetensors(&strategy_path)?.into_iter().map(|(name, (shape, values))| HostTensor { name, shape, values }).collect();
            named.sort_by(|a, b| a.name.cmp(&b.name));
            named
        } else {
            Vec::new()
        };
        Ok(Self { round: state.round, model, num_layers, strategy_state, records: state.records, calibration: state.calibration })
    }

    /// Write the model as `path` (PyTorch names and layouts), then read the file back and
    /// check it holds every tensor of the model with its shape and values.
    pub fn export_model(&self, path: &Path) -> Result<(), CheckpointError> {
        let (bytes, names) = model_safetensors(&self.model, self.num_layers).map_err(|e| malformed(path, e.to_string()))?;
        write_atomic(path, &bytes).map_err(io(path))?;
        let written = read_safetensors(path)?;
        let expected: usize = names.iter().map(Vec::len).sum();
        if written.len() != expected {
            return Err(malformed(path, format!("holds {} tensors after writing, the model has {expected}", written.len())));
        }
        for (layer, layer_names) in self.model.iter().zip(&names) {
            for (t, name) in layer.iter().zip(layer_names) {
                let shape = if is_linear_weight(t) { vec![t.shape[1], t.shape[0]] } else { t.shape.clone() };
                match written.get(name) {
                    Some((s, values)) if *s == shape && values.len() == t.values.len() => {}
                    _ => return Err(malformed(path, format!("tensor `{name}` did not read back as written"))),
                }
            }
        }
        Ok(())
    }

    /// Whether `run` holds a checkpoint.
    pub fn exists(run: &Path) -> bool {
        run.join(FOLDER).join("state.json").exists()
    }
}
