//! Initial weights drawn on the host, so one seed starts every device from the same bits.
//!
//! Burn's initialisers draw on the device (`Tensor::random`), and each backend has its own
//! generator: the CPU and wgpu started the same seed from different weights. Here every
//! randomly initialised parameter is redrawn from a caller-supplied host generator, in the
//! module's visit order, from the same distribution Burn's default would use:
//!
//!   Conv2d and Linear (weight and bias): U(−b, b), b = 1/√fan_in
//!
//! (Burn's default `KaimingUniform { gain: 1/√3 }` gives b = gain·√(3/fan_in) = 1/√fan_in.)
//! `fan_in` is `c_in/groups · k_h · k_w` for a convolution's `[c_out, c_in/groups, k_h, k_w]`
//! weight and `d_in` for a linear layer's `[d_in, d_out]` weight; a bias uses its layer's.
//! BatchNorm's γ = 1, β = 0 and running statistics (mean 0, variance 1) are constants,
//! identical on every device already, and are left alone. Any other parameter is an error, so a new layer type
//! cannot silently keep device-drawn values.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use rand::distr::{Distribution, Uniform};
use rand::Rng;

use crate::error::ModelError;

/// `module` with every Conv2d and Linear parameter redrawn from `rng` (see the module docs).
pub fn redraw_on_host<B: Backend, M: Module<B>, R: Rng>(module: M, rng: &mut R) -> Result<M, ModelError> {
    let mut mapper = HostDraw { rng, path: Vec::new(), fan_in: None, error: None };
    let module = module.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

struct HostDraw<'a, R: Rng> {
    rng: &'a mut R,
    /// `(field, owning struct)` from the outermost module in.
    path: Vec<(String, String)>,
    /// The current layer's fan-in, set by its weight (visited before its bias).
    fan_in: Option<usize>,
    error: Option<ModelError>,
}

impl<R: Rng> HostDraw<'_, R> {
    fn path_name(&self) -> String {
        self.path.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(".")
    }

    /// Values for a parameter of `shape`, or `None` to keep it (a constant-initialised one).
    fn draw(&mut self, shape: &[usize]) -> Result<Option<Vec<f32>>, ModelError> {
        let Some((field, owner)) = self.path.last() else {
            return Err(self.unsupported("a parameter outside any module"));
        };
        let fan_in = match (owner.as_str(), field.as_str(), shape) {
            ("Struct:Conv2d", "weight", [_, c_in, kh, kw]) => Some(c_in * kh * kw),
            ("Struct:Linear", "weight", [d_in, _]) => Some(*d_in),
            ("Struct:Conv2d" | "Struct:Linear", "bias", [_]) => None,
            ("Struct:BatchNorm", "gamma" | "beta" | "running_mean" | "running_var", _) => return Ok(None),
            _ => return Err(self.unsupported(&format!("{owner}.{field} of shape {shape:?}"))),
        };
        if let Some(f) = fan_in {
            self.fan_in = Some(f);
        }
        let fan_in = self.fan_in.ok_or_else(|| self.unsupported("a bias before its layer's weight"))?;
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let uniform = Uniform::new(-bound, bound).map_err(|e| self.unsupported(&format!("U(−{bound}, {bound}): {e}")))?;
        let numel: usize = shape.iter().product();
        Ok(Some((0..numel).map(|_| uniform.sample(self.rng)).collect()))
    }

    fn unsupported(&self, what: &str) -> ModelError {
        ModelError::HostInit { path: self.path_name(), what: what.to_string() }
    }
}

impl<B: Backend, R: Rng> ModuleMapper<B> for HostDraw<'_, R> {
    fn enter_module(&mut self, name: &str, container: &str) {
        // Entering a field of any other module starts a new layer: its weight sets the fan-in
        // its bias uses (the fields of one Conv2d/Linear are entered with that container).
        if container != "Struct:Conv2d" && container != "Struct:Linear" {
            self.fan_in = None;
        }
        self.path.push((name.to_string(), container.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        if self.error.is_some() {
            return Param::from_mapped_value(id, old, mapper);
        }
        let shape = old.dims();
        match self.draw(&shape) {
            Ok(None) => Param::from_mapped_value(id, old, mapper),
            Ok(Some(values)) => {
                let require_grad = old.is_require_grad();
                let new = Tensor::<B, D>::from_data(TensorData::new(values, shape), &old.device());
                Param::from_mapped_value(id, new.set_require_grad(require_grad), mapper)
            }
            Err(e) => {
                self.error = Some(e);
                Param::from_mapped_value(id, old, mapper)
            }
        }
    }
}
