//! Model contract: output shapes on both input shapes, and split forward == full forward.

mod common;

use common::*;
use fedolf::models::{Features, ModelKind};

const SHAPES: [[usize; 3]; 2] = [[1, 28, 28], [3, 32, 32]];

#[test]
fn every_model_has_the_documented_layer_count() {
    let expected = [(ModelKind::Cnn, 3), (ModelKind::AlexNet, 7), (ModelKind::ResNet20, 10), (ModelKind::ResNet44, 22)];
    for (kind, n) in expected {
        let net = kind.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
        assert_eq!(net.num_layers(), n, "{}", kind.name());
        assert_eq!(kind.num_layers(), n, "{}", kind.name());
    }
}

#[test]
fn output_shapes_on_both_input_shapes() {
    for kind in ModelKind::ALL {
        for shape in SHAPES {
            let net = kind.init::<Inner>(shape, 7, &device()).unwrap();
            let (x, _) = random_batch::<Inner>(2, shape, 7, 1);
            assert_eq!(net.forward(x).dims(), [2, 7], "{} on {shape:?}", kind.name());
            // The static shape walk agrees with what the tensors did.
            let infos = net.layer_infos();
            assert_eq!(infos.last().unwrap().output, fedolf::models::FeatureShape::Flat(7));
        }
    }
}

#[test]
fn split_forward_equals_full_forward() {
    for kind in ModelKind::ALL {
        for shape in SHAPES {
            let net = kind.init::<Inner>(shape, 10, &device()).unwrap();
            let (x, _) = random_batch::<Inner>(3, shape, 10, 2);
            let full = to_vec(&net.forward(x.clone()));
            for l in 0..net.num_layers() {
                let h = net.forward_range(Features::Map(x.clone()), 0, l).unwrap();
                let out = net.forward_range(h, l, net.num_layers()).unwrap().into_flat();
                let diff = max_abs_diff(&full, &to_vec(&out));
                assert!(diff < 1e-5, "{} {shape:?} split at {l}: diff {diff}", kind.name());
            }
        }
    }
}

#[test]
fn layer_infos_match_the_real_intermediate_shapes() {
    for kind in ModelKind::ALL {
        let net = kind.init::<Inner>([3, 32, 32], 10, &device()).unwrap();
        let (x, _) = random_batch::<Inner>(1, [3, 32, 32], 10, 3);
        let mut h = Features::Map(x);
        for (i, info) in net.layer_infos().iter().enumerate() {
            h = net.forward_range(h, i, i + 1).unwrap();
            let dims = h.dims();
            assert_eq!(dims[1..].iter().product::<usize>(), info.output.elems(), "{} layer {i}", kind.name());
        }
    }
}

#[test]
fn bad_ranges_and_inputs_are_typed_errors() {
    let net = ModelKind::Cnn.init::<Inner>([1, 28, 28], 10, &device()).unwrap();
    let (x, _) = random_batch::<Inner>(1, [1, 28, 28], 10, 4);
    let err = net.forward_range(Features::Map(x), 0, 4).unwrap_err();
    assert!(err.to_string().contains("0..4"), "{err}");
    let err = ModelKind::AlexNet.init::<Inner>([3, 4, 4], 10, &device()).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    let err = ModelKind::parse("vgg").unwrap_err();
    assert!(err.to_string().contains("vgg"), "{err}");
}
