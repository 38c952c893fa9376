//! HeteroFL (Diao et al., "HeteroFL: Computation and communication efficient federated
//! learning for heterogeneous clients", ICLR 2021), as the FedOLF paper runs it (§V,
//! baselines): it "prunes the rightmost filters in convolution layers ... but keep[s] the FC
//! layers unchanged". Client width `r_k = i_k / c`: every convolutional channel space keeps
//! its first `⌈r_k·C⌉` channels; hidden FC layers keep all their neurons, and the first FC
//! layer keeps the input columns of the conv channels kept. The client trains the whole
//! sub-model and uploads it; the server averages each element over the clients that held it,
//! `θ ← Σ_k n_k M_k⊙θ̃_k / Σ_k n_k M_k` (MWA), elements nobody held keep their value.
//!
//! Scaler: every conv output is divided by `r_k` while the sub-model trains (identity at
//! evaluation, where the global model has scale 1); FC outputs are not scaled (full width).
//! Static BN (`heterofl.static_bn`, default on): before each evaluation the global model's BN
//! statistics are recomputed with a no-grad pass over the training data
//! ([`recompute_bn_statistics`]); local training uses batch statistics.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fedolf_models::LayeredNet;
use rand_chacha::ChaCha8Rng;

use serde::{Deserialize, Serialize};

use super::{Build, ClientPlan, Method, PlanContext, Strategy};
use crate::local::evaluate::EVAL_BATCH;
use crate::local::error::LocalError;
use crate::local::roles::LayerRole;
use crate::tensor::params::mark_trainable;
use crate::tensor::submodel::WidthSpec;

pub struct HeteroFl {
    /// Recompute the global BN statistics before each evaluation.
    pub static_bn: bool,
}

/// `[heterofl]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Static BN: before each evaluation, recompute the global model's BatchNorm statistics
    /// with a no-grad pass over the training data (HeteroFL's sBN).
    pub static_bn: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { static_bn: true }
    }
}

impl Method for HeteroFl {
    const NAME: &'static str = "heterofl";
    const ABOUT: &'static str = "HeteroFL: width r = i/c prefix of every conv channel space (FC layers full), Scaler 1/r; masked MWA; static BN";
    type Options = Options;

    fn build<M: Backend>(_build: &Build<'_, M>, options: Options) -> Self {
        Self { static_bn: options.static_bn }
    }
}

impl<B: AutodiffBackend> Strategy<B> for HeteroFl {
    fn plan(&self, ctx: &PlanContext<'_>, client: usize, capacity: usize, _rng: &mut ChaCha8Rng) -> Result<ClientPlan, LocalError> {
        let r = ctx.width_ratio(capacity);
        let width = WidthSpec::prefix_conv(ctx.layout, r).with_scaler(r);
        Ok(ClientPlan::new(client, capacity, vec![LayerRole::Trained; ctx.num_layers]).with_width(Some(width)))
    }

    fn before_eval(&self, global: LayeredNet<B>, train: &Tensor<B::InnerBackend, 4>) -> LayeredNet<B> {
        if self.static_bn {
            recompute_bn_statistics(global, train, EVAL_BATCH)
        } else {
            global
        }
    }
}

/// HeteroFL's static BN: one pass over the training data in training mode (batch statistics,
/// running statistics updated) without a backward pass; momentum `1/(t+1)` on batch t makes
/// each running value the mean of the batch statistics. Models without BN are returned as is.
///
/// The passes run with every parameter's gradient off, so no pass records a graph: Burn keeps
/// the nodes of a graph nobody calls `backward` on, and ResNet20's 20 passes of 500 images
/// held over 10 GB that way. The weights come back trainable (`mark_trainable`).
pub fn recompute_bn_statistics<B: AutodiffBackend>(net: LayeredNet<B>, images: &Tensor<B::InnerBackend, 4>, batch: usize) -> LayeredNet<B> {
    if !net.has_batch_norm() {
        return net;
    }
    let mut net = net.no_grad();
    let n = images.dims()[0];
    for (t, start) in (0..n).step_by(batch).enumerate() {
        net.set_bn_momentum(1.0 / (t + 1) as f64);
        // [n, c, h, w] -> [len, c, h, w]
        let x = images.clone().narrow(0, start, batch.min(n - start));
        let _ = net.forward(Tensor::from_inner(x));
    }
    net.set_bn_momentum(0.1); // Burn's default, for the next round's local training
    mark_trainable(net)
}
