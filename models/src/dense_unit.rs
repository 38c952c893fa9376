//! Fully connected layers: [`DenseUnit`] (flatten → linear → optional ReLU), AlexNet's FC layers;
//! and [`MlpHead`] (flatten → linear → ReLU → linear), the FedAvg CNN's classifier unit.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::shape::{FeatureShape, LayerInfo};
use crate::slicing;

#[derive(Module, Debug)]
pub struct DenseUnit<B: Backend> {
    pub linear: Linear<B>,
    pub relu: bool,
}

impl<B: Backend> DenseUnit<B> {
    pub fn new(d_in: usize, d_out: usize, relu: bool, device: &B::Device) -> Self {
        Self { linear: LinearConfig::new(d_in, d_out).init(device), relu }
    }

    /// # Shapes
    /// `[b, d_in] -> [b, d_out]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.linear.forward(x);
        if self.relu {
            relu(x)
        } else {
            x
        }
    }

    pub fn info(&self, input: FeatureShape) -> LayerInfo {
        let [_, d_out] = self.linear.weight.dims();
        let relu_elems = if self.relu { d_out } else { 0 };
        LayerInfo {
            input,
            output: FeatureShape::Flat(d_out),
            activation_elems: d_out + relu_elems,
            trainable_params: self.linear.num_params(),
            buffer_elems: 0,
        }
    }

    pub(crate) fn neuron_norms(&self) -> Tensor<B, 1> {
        slicing::linear_neuron_norms(&self.linear)
    }

    pub(crate) fn keep_outputs(mut self, idx: &Tensor<B, 1, Int>) -> Self {
        self.linear = slicing::linear_keep_outputs(self.linear, idx);
        self
    }

    pub(crate) fn scale_inputs(mut self, idx: &Tensor<B, 1, Int>, alpha: &Tensor<B, 1>, prev: usize) -> Self {
        self.linear = slicing::linear_scale_inputs(self.linear, idx, alpha, prev);
        self
    }
}

#[derive(Module, Debug)]
pub struct MlpHead<B: Backend> {
    pub hidden: Linear<B>,
    pub output: Linear<B>,
}

impl<B: Backend> MlpHead<B> {
    pub fn new(d_in: usize, d_hidden: usize, classes: usize, device: &B::Device) -> Self {
        Self {
            hidden: LinearConfig::new(d_in, d_hidden).init(device),
            output: LinearConfig::new(d_hidden, classes).init(device),
        }
    }

    /// # Shapes
    /// `[b, d_in] -> [b, d_hidden] -> [b, classes]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.output.forward(relu(self.hidden.forward(x)))
    }

    pub fn info(&self, input: FeatureShape) -> LayerInfo {
        let [_, hidden] = self.hidden.weight.dims();
        let [_, classes] = self.output.weight.dims();
        LayerInfo {
            input,
            output: FeatureShape::Flat(classes),
            // flatten view + hidden + ReLU + logits
            activation_elems: hidden + hidden + classes,
            trainable_params: self.hidden.num_params() + self.output.num_params(),
            buffer_elems: 0,
        }
    }

    pub(crate) fn scale_inputs(mut self, idx: &Tensor<B, 1, Int>, alpha: &Tensor<B, 1>, prev: usize) -> Self {
        self.hidden = slicing::linear_scale_inputs(self.hidden, idx, alpha, prev);
        self
    }
}
