//! Model contract: output shapes on both input shapes, and split forward == full forward.

mod common;

use common::*;
use fedolf::models::{Features, ModelKind};

const SHAPES: [[usize; 3]; 2] = [[1, 28, 28], [3, 32, 32]];

#[test]
fn every_model_has_the_documented_layer_count() {
    let expected = [(ModelKind::Cnn, 3), (ModelKind::AlexNet, 7), (ModelKind::ResNet20, 10), (ModelKind::ResNet44, 22)];
    for (kind, n) in expected {
        let net = seeded::<Inner>(kind, [3, 32, 32], 10, 1);
        assert_eq!(net.num_layers(), n, "{}", kind.name());
        assert_eq!(kind.num_layers(), n, "{}", kind.name());
    }
}

#[test]
fn output_shapes_on_both_input_shapes() {
    for kind in ModelKind::ALL {
        for shape in SHAPES {
            let net = seeded::<Inner>(kind, shape, 7, 2);
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
            let net = seeded::<Inner>(kind, shape, 10, 3);
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
        let net = seeded::<Inner>(kind, [3, 32, 32], 10, 4);
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
    let net = seeded::<Inner>(ModelKind::Cnn, [1, 28, 28], 10, 5);
    let (x, _) = random_batch::<Inner>(1, [1, 28, 28], 10, 4);
    let err = net.forward_range(Features::Map(x), 0, 4).unwrap_err();
    assert!(err.to_string().contains("0..4"), "{err}");
    let err = ModelKind::AlexNet.init::<Inner>([3, 4, 4], 10, &device()).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    let err = ModelKind::parse("vgg").unwrap_err();
    assert!(err.to_string().contains("vgg"), "{err}");
}

/// Host-drawn initial weights: the same stream gives the same bits, another seed other
/// values, every drawn tensor stays inside Burn's default Kaiming-uniform bound 1/√fan_in
/// (and fills it: no tensor collapses to a constant), BatchNorm starts at γ = 1, β = 0, and
/// exits are drawn after the layers, so adding one never changes a layer.
#[test]
fn initial_weights_are_drawn_on_the_host_from_the_seed_within_burns_bounds() {
    use fedolf::models::ModelOptions;
    use fedolf::runtime::rng::{stream, Purpose};
    let draw = |kind: ModelKind, seed: u64, exits: &[usize]| {
        let input = if kind == ModelKind::Cnn { [1, 28, 28] } else { [3, 32, 32] };
        let net = kind.init_on_host::<Inner, _>(input, 10, &ModelOptions::default(), exits, &mut stream(seed, Purpose::Init, 0, 0), &device()).unwrap();
        host_params(&net)
    };
    for kind in ModelKind::ALL {
        let a = draw(kind, 1, &[]);
        assert_eq!(a, draw(kind, 1, &[]), "{}: same seed, different weights", kind.name());
        assert_ne!(a, draw(kind, 2, &[]), "{}: another seed, the same weights", kind.name());
        let with_exits = draw(kind, 1, &[1, 2]);
        assert_eq!(with_exits[..a.len()], a[..], "{}: attaching exits moved a layer's draws", kind.name());
        let input = if kind == ModelKind::Cnn { [1, 28, 28] } else { [3, 32, 32] };
        let net = kind.init_on_host::<Inner, _>(input, 10, &ModelOptions::default(), &[], &mut stream(1, Purpose::Init, 0, 0), &device()).unwrap();
        for layer in fedolf::tensor::params::read_model(&net) {
            let mut fan_in = 0usize;
            for t in layer {
                let (name, values) = (&t.name, to_vec(&t.value));
                let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                if name.ends_with("gamma") || name.ends_with("running_var") {
                    assert!(values.iter().all(|&v| v == 1.0), "{} {name}: not all ones", kind.name());
                } else if name.ends_with("beta") || name.ends_with("running_mean") {
                    assert!(values.iter().all(|&v| v == 0.0), "{} {name}: not all zeros", kind.name());
                } else {
                    // A convolution's weight is [c_out, c_in, k, k], a linear layer's [d_in, d_out];
                    // a bias uses its layer's fan-in.
                    match t.shape.as_slice() {
                        [_, c_in, kh, kw] => fan_in = c_in * kh * kw,
                        [d_in, _] => fan_in = *d_in,
                        _ => {}
                    }
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    assert!(max <= bound && max > 0.5 * bound, "{} {name}: max |w| {max} vs bound {bound}", kind.name());
                }
            }
        }
    }
}
