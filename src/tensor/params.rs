//! The only code that walks Burn parameters: read and replace one layer as named tensors.
//!
//! A layer's parameters come out in visit order as [`NamedTensor`]s, flattened to rank 1 with
//! their shape beside them, so aggregation and transport are rank-agnostic. BatchNorm running
//! statistics are included (names end in `running_mean` / `running_var`) and aggregate like
//! weights (ARCHITECTURE.md, "A round", step 7).

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::{Layer, LayeredNet};
use thiserror::Error;

#[derive(Debug, Clone)]
pub struct NamedTensor<B: Backend> {
    /// Path inside the layer, e.g. `Conv.conv.weight`, `Block.bn1.running_var`.
    pub name: String,
    pub shape: Vec<usize>,
    /// The values, flattened row-major: `shape -> [numel]`.
    pub value: Tensor<B, 1>,
}

impl<B: Backend> NamedTensor<B> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Running statistics travel and aggregate but never receive gradients.
    pub fn is_buffer(&self) -> bool {
        self.name.ends_with("running_mean") || self.name.ends_with("running_var")
    }
}

/// All tensors of one layer, in visit order.
pub type LayerParams<B> = Vec<NamedTensor<B>>;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum ParamError {
    #[error("layer {layer}: expected {expected} tensors, got {got}")]
    CountMismatch { layer: usize, expected: usize, got: usize },
    #[error("layer {layer}: tensor `{name}` has shape {got:?}, the model expects {expected:?}")]
    ShapeMismatch { layer: usize, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("layer {layer}: tensor `{got}` arrived where the model expects `{expected}`")]
    NameMismatch { layer: usize, expected: String, got: String },
    #[error("got parameters for {got} layers, the model has {expected}")]
    LayerCount { expected: usize, got: usize },
}

struct Reader<B: Backend> {
    path: Vec<String>,
    out: LayerParams<B>,
}

impl<B: Backend> ModuleVisitor<B> for Reader<B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        let numel = shape.iter().product::<usize>();
        // [d0, .., dD] -> [numel]
        self.out.push(NamedTensor { name: self.path.join("."), shape, value: value.reshape([numel]) });
    }
}

/// Read layer `layer` of a model (or any part of one, such as an exit head) as named tensors
/// (same device; no host copy).
pub fn read_layer<B: Backend, M: Module<B>>(layer: &M) -> LayerParams<B> {
    let mut reader = Reader { path: Vec::new(), out: Vec::new() };
    layer.visit(&mut reader);
    reader.out
}

/// Every layer's tensors, then every exit head's (multi-exit models): exit `e` is entry
/// `N + e`, so exits travel and aggregate like layers.
pub fn read_model<B: Backend>(net: &LayeredNet<B>) -> Vec<LayerParams<B>> {
    net.layers.iter().map(read_layer).chain(net.exits.iter().map(read_layer)).collect()
}

struct Writer<'a, B: Backend> {
    layer: usize,
    path: Vec<String>,
    source: std::slice::Iter<'a, NamedTensor<B>>,
    error: Option<ParamError>,
    expected: usize,
    /// Accept new dimensions of the same rank (a TOA-sparsified frozen layer).
    resize: bool,
}

impl<B: Backend> ModuleMapper<B> for Writer<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        self.expected += 1;
        if self.error.is_some() {
            return Param::from_mapped_value(id, old, mapper);
        }
        let name = self.path.join(".");
        let Some(new) = self.source.next() else {
            return Param::from_mapped_value(id, old, mapper);
        };
        let shape = old.dims().to_vec();
        if new.name != name {
            self.error = Some(ParamError::NameMismatch { layer: self.layer, expected: name, got: new.name.clone() });
        } else if new.shape.len() != D || (!self.resize && new.shape != shape) {
            self.error = Some(ParamError::ShapeMismatch { layer: self.layer, name, expected: shape.clone(), got: new.shape.clone() });
        }
        if self.error.is_some() {
            return Param::from_mapped_value(id, old, mapper);
        }
        let require_grad = old.is_require_grad();
        let shape = &new.shape;
        // [numel] -> its shape; keep the id so optimizers and records still match.
        // Detached: a parameter must be a graph leaf, whatever op produced the new values.
        let value = new.value.clone().detach().to_device(&old.device()).reshape::<D, _>(dims_array::<D>(shape)).detach();
        Param::from_mapped_value(id, value.set_require_grad(require_grad), mapper)
    }
}

fn dims_array<const D: usize>(shape: &[usize]) -> [usize; D] {
    let mut dims = [0; D];
    dims.copy_from_slice(shape);
    dims
}

/// Replace every tensor of a layer (or exit head). Names and shapes must match exactly.
pub fn write_layer<B: Backend, M: Module<B>>(layer: M, index: usize, params: &LayerParams<B>) -> Result<M, ParamError> {
    write_with(layer, index, params, false)
}

/// [`write_layer`] where each tensor may arrive with other dimensions of the same rank: a
/// frozen layer that TOA kept only some channels of, rebuilt on the node that trains on it.
pub fn write_layer_resized<B: Backend, M: Module<B>>(layer: M, index: usize, params: &LayerParams<B>) -> Result<M, ParamError> {
    write_with(layer, index, params, true)
}

fn write_with<B: Backend, M: Module<B>>(layer: M, index: usize, params: &LayerParams<B>, resize: bool) -> Result<M, ParamError> {
    let mut writer = Writer { layer: index, path: Vec::new(), source: params.iter(), error: None, expected: 0, resize };
    let layer = layer.map(&mut writer);
    if let Some(err) = writer.error {
        return Err(err);
    }
    if writer.expected != params.len() {
        return Err(ParamError::CountMismatch { layer: index, expected: writer.expected, got: params.len() });
    }
    Ok(layer)
}

/// Replace the layers (then exit heads, as in [`read_model`]) of `net` for which
/// `params[i]` is `Some`.
pub fn write_model<B: Backend>(mut net: LayeredNet<B>, params: &[Option<LayerParams<B>>]) -> Result<LayeredNet<B>, ParamError> {
    let n = net.layers.len();
    if params.len() != n + net.exits.len() {
        return Err(ParamError::LayerCount { expected: n + net.exits.len(), got: params.len() });
    }
    fn write_all<B: Backend, M: Module<B>>(parts: Vec<M>, params: &[Option<LayerParams<B>>], first: usize) -> Result<Vec<M>, ParamError> {
        parts
            .into_iter()
            .zip(params)
            .enumerate()
            .map(|(i, (part, p))| match p {
                Some(p) => write_layer(part, first + i, p),
                None => Ok(part),
            })
            .collect()
    }
    net.layers = write_all(std::mem::take(&mut net.layers), &params[..n], 0)?;
    net.exits = write_all(std::mem::take(&mut net.exits), &params[n..], n)?;
    Ok(net)
}

/// A copy that shares nothing with `net`: Burn's `clone` shares BatchNorm running-statistic
/// cells (ARCHITECTURE.md, "Burn behaviours the code relies on"), so a client training a clone would move the server's statistics.
/// `valid()` and `from_inner` both build fresh cells.
pub fn deep_copy<B: AutodiffBackend>(net: &LayeredNet<B>) -> LayeredNet<B> {
    LayeredNet::from_inner(net.valid())
}

/// Elements a layer's (or exit head's) tensors hold (weights, biases, BN affine and running
/// statistics).
pub fn layer_numel<B: Backend, M: Module<B>>(layer: &M) -> usize {
    read_layer(layer).iter().map(NamedTensor::numel).sum()
}

struct IdCollector(Vec<burn::module::ParamId>);

impl<B: Backend> ModuleVisitor<B> for IdCollector {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.id);
    }
}

/// Parameter ids of a layer (to keep only some layers' gradients, as TinyFEL does).
pub fn param_ids<B: Backend, M: Module<B>>(layer: &M) -> Vec<burn::module::ParamId> {
    let mut c = IdCollector(Vec::new());
    layer.visit(&mut c);
    c.0
}

/// The layer with every parameter's `require_grad` off: it stays in the autodiff graph (its
/// activations are kept so gradients flow through it to layers below) but gets no gradient.
pub fn pass_grad_only<B: Backend>(layer: Layer<B>) -> Layer<B> {
    layer.no_grad()
}

struct MarkTrainable {
    path: Vec<String>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for MarkTrainable {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let is_buffer = self.path.last().is_some_and(|n| n == "running_mean" || n == "running_var");
        let (id, value, mapper) = param.consume();
        Param::from_mapped_value(id, value.set_require_grad(!is_buffer), mapper)
    }
}

/// Every weight of `net` requires a gradient again (BN running statistics excepted).
/// Needed after slicing on the inner backend: `Param::map` takes the flag from the tensor,
/// and inner tensors never carry it, so a sliced model lifted with `from_inner` is frozen.
pub fn mark_trainable<B: AutodiffBackend>(net: LayeredNet<B>) -> LayeredNet<B> {
    net.map(&mut MarkTrainable { path: Vec::new() })
}
