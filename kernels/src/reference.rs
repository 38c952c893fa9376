//! The convolution and its weight gradient by their definitions, one output at a time: what
//! the kernels' tests compare against.

use crate::geometry::ConvGeometry;

/// The input row and column that tap `(ky, kx)` of output pixel `(oh, ow)` reads, `None` in
/// the padding.
fn input_at(g: &ConvGeometry, oh: usize, ow: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let r = (oh * g.stride[0] + ky).checked_sub(g.padding[0])?;
    let c = (ow * g.stride[1] + kx).checked_sub(g.padding[1])?;
    (r < g.height && c < g.width).then_some((r, c))
}

/// The convolution by its definition, one output at a time (bias, then the taps in order).
pub(crate) fn naive(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    let mut y = vec![0.0f32; g.batch * g.out_sample()];
    for b in 0..g.batch {
        for co in 0..g.c_out {
            for oh in 0..g.out_height {
                for ow in 0..g.out_width {
                    let mut s = bias.map_or(0.0, |bias| bias[co]);
                    for ci in 0..g.c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let Some((r, c)) = input_at(g, oh, ow, ky, kx) else { continue };
                                let xv = x[((b * g.c_in + ci) * g.height + r) * g.width + c];
                                s += w[((co * g.c_in + ci) * kh + ky) * kw + kx] * xv;
                            }
                        }
                    }
                    y[((b * g.c_out + co) * g.out_height + oh) * g.out_width + ow] = s;
                }
            }
        }
    }
    y
}

pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
    // A fixed pseudo-random sequence in [−1, 1).
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `dW` by its definition.
pub(crate) fn naive_weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    let mut dw = vec![0.0f32; g.weight_len()];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            for ky in 0..kh {
                for kx in 0..kw {
                    let mut s = 0.0f32;
                    for b in 0..g.batch {
                        for oh in 0..g.out_height {
                            for ow in 0..g.out_width {
                                let Some((r, c)) = input_at(g, oh, ow, ky, kx) else { continue };
                                let xv = x[((b * g.c_in + ci) * g.height + r) * g.width + c];
                                s += dy[((b * g.c_out + co) * g.out_height + oh) * g.out_width + ow] * xv;
                            }
                        }
                    }
                    dw[((co * g.c_in + ci) * kh + ky) * kw + kx] = s;
                }
            }
        }
    }
    dw
}

/// The largest `|a − b|`, infinite where either is NaN (`f32::max` would skip a NaN, so an
/// output a kernel never wrote could pass).
fn worst_difference(ours: &[f32], reference: &[f32]) -> f32 {
    ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// Asserts that `forward` is the convolution's definition on every geometry, with and without
/// a bias (to 1e-4; inputs, weights and biases drawn by [`values`]).
pub(crate) fn assert_forward_is_the_definition(geometries: &[ConvGeometry], forward: impl Fn(&ConvGeometry, &[f32], &[f32], Option<&[f32]>) -> Vec<f32>) {
    for (i, g) in geometries.iter().enumerate() {
        let x = values(g.batch * g.in_sample(), 1 + i as u32);
        let w = values(g.weight_len(), 100 + i as u32);
        let bias = values(g.c_out, 200 + i as u32);
        for bias in [None, Some(bias.as_slice())] {
            let (ours, reference) = (forward(g, &x, &w, bias), naive(g, &x, &w, bias));
            assert_eq!(ours.len(), reference.len(), "{g:?}");
            let worst = worst_difference(&ours, &reference);
            assert!(worst <= 1e-4, "{g:?}, bias {}: max |diff| {worst}", bias.is_some());
        }
    }
}

/// Asserts that `weight_grad` is the weight gradient's definition on every geometry (to 1e-4
/// of the largest element).
pub(crate) fn assert_weight_grad_is_the_definition(geometries: &[ConvGeometry], weight_grad: impl Fn(&ConvGeometry, &[f32], &[f32]) -> Vec<f32>) {
    for (i, g) in geometries.iter().enumerate() {
        let x = values(g.batch * g.in_sample(), 300 + i as u32);
        let dy = values(g.batch * g.out_sample(), 400 + i as u32);
        assert_within_scale(g, &weight_grad(g, &x, &dy), &naive_weight_grad(g, &x, &dy));
    }
}

/// Asserts that `ours` is `reference` to 1e-4 of its largest element.
fn assert_within_scale(g: &ConvGeometry, ours: &[f32], reference: &[f32]) {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(ours.len(), reference.len(), "{g:?}");
    let worst = worst_difference(ours, reference);
    assert!(worst <= 1e-4 * scale, "{g:?}: max |diff| {worst} against {scale}");
}

/// `dX` by its definition: every output gradient scattered back along its taps.
pub(crate) fn naive_input_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    let mut dx = vec![0.0f32; g.batch * g.in_sample()];
    for b in 0..g.batch {
        for co in 0..g.c_out {
            for oh in 0..g.out_height {
                for ow in 0..g.out_width {
                    let d = dy[((b * g.c_out + co) * g.out_height + oh) * g.out_width + ow];
                    for ci in 0..g.c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let Some((r, c)) = input_at(g, oh, ow, ky, kx) else { continue };
                                dx[((b * g.c_in + ci) * g.height + r) * g.width + c] += w[((co * g.c_in + ci) * kh + ky) * kw + kx] * d;
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// Asserts that `input_grad` is the input gradient's definition on every geometry (to 1e-4
/// of the largest element).
pub(crate) fn assert_input_grad_is_the_definition(geometries: &[ConvGeometry], input_grad: impl Fn(&ConvGeometry, &[f32], &[f32]) -> Vec<f32>) {
    for (i, g) in geometries.iter().enumerate() {
        let w = values(g.weight_len(), 500 + i as u32);
        let dy = values(g.batch * g.out_sample(), 600 + i as u32);
        assert_within_scale(g, &input_grad(g, &w, &dy), &naive_input_grad(g, &w, &dy));
    }
}
