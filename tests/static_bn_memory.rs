//! HeteroFL's static BN recomputes the global model's statistics with forward passes that
//! nobody calls `backward` on: their graphs must not pile up (ResNet20 over 10,000 images went
//! past 10 GB when they did), and the model must come back as trainable as it went in.
//! Its own test binary: the counting allocator sees every thread, so nothing else may run
//! beside it.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use common::*;
use fedolf::models::ModelKind;
use fedolf::runtime::memory::CountingAllocator;
use fedolf::strategy::recompute_bn_statistics;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// Whether each float parameter requires a gradient, in visiting order.
struct Flags(Vec<bool>);

impl ModuleVisitor<Train> for Flags {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Train, D>>) {
        self.0.push(param.val().is_require_grad());
    }
}

fn flags(net: &fedolf::models::LayeredNet<Train>) -> Vec<bool> {
    let mut f = Flags(Vec::new());
    net.visit(&mut f);
    f.0
}

#[test]
fn static_bn_passes_keep_no_graph_and_the_weights_stay_trainable() {
    let shape = [1, 28, 28];
    let batch = 16;
    let passes = 8;
    let (x, _) = random_batch::<Inner>(batch * passes, shape, 10, 3);
    let net = || seeded::<Train>(ModelKind::ResNet20, shape, 10, 1);
    let before = flags(&net());
    assert!(before.iter().any(|&f| f) && before.iter().any(|&f| !f), "weights and running statistics both present");

    let (one, one_peak) = ALLOC.measure(|| recompute_bn_statistics(net(), &x.clone().narrow(0, 0, batch), batch));
    drop(one);
    let (all, all_peak) = ALLOC.measure(|| recompute_bn_statistics(net(), &x, batch));
    // One pass's activations at a time: eight passes need about what one needs, where kept
    // graphs would need eight times as much.
    assert!(all_peak < one_peak * 2, "{passes} passes peaked at {all_peak} B, one pass at {one_peak} B");
    assert_eq!(flags(&all), before, "the weights' require_grad flags changed");
}
