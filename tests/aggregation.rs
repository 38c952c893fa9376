//! Layer-wise MWA: identity on identical uploads, n_k weights, untouched layers keep their
//! value, BN running statistics averaged, mismatches are typed errors.

mod common;

use burn::prelude::*;
use common::*;
use fedolf::tensor::aggregate::{aggregate_layerwise, masked_weighted_average, AggregateError, LayerUpload, Upload};
use fedolf::models::ModelKind;
use fedolf::tensor::params::{read_model, write_model, NamedTensor};

fn tensor(name: &str, values: &[f32]) -> NamedTensor<Inner> {
    NamedTensor {
        name: name.into(),
        shape: vec![values.len()],
        value: Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &device()),
    }
}

#[test]
fn identical_uploads_return_that_upload() {
    let global = seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 1);
    let client = seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 2);
    let g = read_model(&global);
    let c = read_model(&client);
    let uploads: Vec<LayerUpload<Inner>> = [3.0, 50.0, 7.0]
        .into_iter()
        .map(|w| LayerUpload::whole(w, c.iter().cloned().enumerate().collect()))
        .collect();
    let out = aggregate_layerwise(&g, &uploads).unwrap();
    for (l, layer) in out.iter().enumerate() {
        let layer = layer.as_ref().expect("everyone trained every layer");
        for (a, b) in host_layer(layer).iter().zip(host_layer(&c[l])) {
            assert!(max_abs_diff(&a.1, &b.1) < 1e-6, "{}", a.0);
        }
    }
}

#[test]
fn weights_follow_sample_counts() {
    // Hand-computed: (1·[0, 4] + 3·[4, 8]) / 4 = [3, 7].
    let old = vec![tensor("w", &[100.0, 100.0])];
    let a = vec![tensor("w", &[0.0, 4.0])];
    let b = vec![tensor("w", &[4.0, 8.0])];
    let out = masked_weighted_average(
        &old,
        &[Upload { weight: 1.0, tensors: &a, masks: None }, Upload { weight: 3.0, tensors: &b, masks: None }],
    )
    .unwrap();
    assert_eq!(to_vec(&out[0].value), vec![3.0, 7.0]);
}

#[test]
fn element_masks_keep_unheld_elements() {
    // Element 0 held by both (w 1, 3), element 1 only by b, element 2 by nobody.
    let old = vec![tensor("w", &[9.0, 9.0, 9.0])];
    let a = vec![tensor("w", &[0.0, 5.0, 5.0])];
    let b = vec![tensor("w", &[4.0, 8.0, 5.0])];
    let ma = vec![Tensor::<Inner, 1>::from_floats([1.0, 0.0, 0.0], &device())];
    let mb = vec![Tensor::<Inner, 1>::from_floats([1.0, 1.0, 0.0], &device())];
    let out = masked_weighted_average(
        &old,
        &[Upload { weight: 1.0, tensors: &a, masks: Some(&ma) }, Upload { weight: 3.0, tensors: &b, masks: Some(&mb) }],
    )
    .unwrap();
    assert_eq!(to_vec(&out[0].value), vec![3.0, 8.0, 9.0]);
}

#[test]
fn layers_nobody_trained_keep_their_value_and_bn_stats_average() {
    let global = seeded::<Inner>(ModelKind::ResNet20, [3, 32, 32], 10, 3);
    let g = read_model(&global);
    // Two clients trained only layer 5; give their BN running means known values.
    let with_mean = |v: f32| -> Vec<NamedTensor<Inner>> {
        g[5].iter()
            .map(|t| {
                let mut t = t.clone();
                if t.name.ends_with("bn1.running_mean") {
                    t.value = t.value.zeros_like() + v;
                }
                t
            })
            .collect()
    };
    let uploads = vec![
        LayerUpload::whole(1.0, vec![(5, with_mean(2.0))]),
        LayerUpload::whole(1.0, vec![(5, with_mean(4.0))]),
    ];
    let out = aggregate_layerwise(&g, &uploads).unwrap();
    for (l, layer) in out.iter().enumerate() {
        assert_eq!(layer.is_some(), l == 5, "layer {l}");
    }
    let merged = out[5].as_ref().unwrap();
    let mean = merged.iter().find(|t| t.name.ends_with("bn1.running_mean")).expect("BN stats are aggregated");
    assert!(to_vec(&mean.value).iter().all(|&v| (v - 3.0).abs() < 1e-6));
    // Writing back changes layer 5 only.
    let before = host_params(&global);
    let updated = write_model(global, &out).unwrap();
    let after = host_params(&updated);
    for l in 0..before.len() {
        assert_eq!(before[l] == after[l], l != 5, "layer {l}");
    }
}

#[test]
fn mismatched_uploads_are_typed_errors() {
    let old = vec![tensor("w", &[1.0, 2.0])];
    let short = vec![tensor("w", &[1.0])];
    let err = masked_weighted_average(&old, &[Upload { weight: 1.0, tensors: &short, masks: None }]).unwrap_err();
    assert_eq!(err, AggregateError::ShapeMismatch { upload: 0, name: "w".into(), expected: vec![2], got: vec![1] });
    assert!(err.to_string().contains("shape [1]"), "{err}");
    let renamed = vec![tensor("v", &[1.0, 2.0])];
    let err = masked_weighted_average(&old, &[Upload { weight: 1.0, tensors: &renamed, masks: None }]).unwrap_err();
    assert!(matches!(err, AggregateError::NameMismatch { .. }));
    // A weight must be a positive finite number: NaN, infinity, zero and negatives are refused.
    for weight in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
        let err = masked_weighted_average(&old, &[Upload { weight, tensors: &old, masks: None }]).unwrap_err();
        assert!(matches!(err, AggregateError::BadWeight { .. }), "weight {weight}: {err:?}");
    }
    // Writing a wrongly shaped layer into a model fails with the tensor named.
    let net = seeded::<Inner>(ModelKind::Cnn, [1, 28, 28], 10, 4);
    let mut params: Vec<_> = read_model(&net).into_iter().map(Some).collect();
    params[0] = Some(vec![tensor("Conv.conv.weight", &[0.0; 3]), tensor("Conv.conv.bias", &[0.0; 32])]);
    let err = write_model(net, &params).unwrap_err();
    assert!(err.to_string().contains("Conv.conv.weight"), "{err}");
}

/// A full-width sub-model uploads all-ones masks; it must merge exactly as whole tensors do
/// (HeteroFL and FjORD at r = 1 train bit for bit like FedAvg): both take the same f32
/// operations, `Σ_k θ_k · (w_k / Σ_j w_j)` in upload order, whatever the SIMD path.
#[test]
fn all_ones_masks_merge_bit_for_bit_like_whole_tensors() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = 1000;
    let random = |rng: &mut rand_chacha::ChaCha8Rng| tensor("w", &(0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>());
    let old = vec![random(&mut rng)];
    let uploads: Vec<Vec<NamedTensor<Inner>>> = (0..4).map(|_| vec![random(&mut rng)]).collect();
    let ones = vec![Tensor::<Inner, 1>::ones([n], &device())];
    for weights in [[37.0, 120.0, 5.0, 61.0], [0.3, 1.7, 2.9, 0.01]] {
        let whole: Vec<Upload<'_, Inner>> = uploads.iter().zip(weights).map(|(t, weight)| Upload { weight, tensors: t, masks: None }).collect();
        let masked: Vec<Upload<'_, Inner>> = uploads.iter().zip(weights).map(|(t, weight)| Upload { weight, tensors: t, masks: Some(&ones) }).collect();
        let a = to_vec(&masked_weighted_average(&old, &whole).unwrap()[0].value);
        let b = to_vec(&masked_weighted_average(&old, &masked).unwrap()[0].value);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "weights {weights:?}");
    }
}
