//! The parameter-free shortcut of the CIFAR ResNets where a block changes shape (He et al.,
//! CVPR 2016, §4.2, option A), on NCHW `f32`:
//!
//! - `y[b, c, i, j] = x[b, c, i·s, j·s]` for `c < c_in`, `0` for `c_in ≤ c < c_out`
//! - `dx[b, c, i·s, j·s] = dy[b, c, i, j]` for `c < c_in`, `0` at every other pixel
//!
//! with `i < ⌈h/s⌉`, `j < ⌈w/s⌉`. Burn builds it from a stepped slice, a copy to make it
//! contiguous and a concatenation with zeros, and its backward from a zero tensor and a
//! stepped `slice_assign`: on the CPU backend each is a pass on one thread while the other
//! idles (≈ 2.6 % of a ResNet20 step's wall time, `perf` per thread). Here each is one pass,
//! samples in parallel. Only copies: the results equal Burn's bit for bit.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::output::written;

/// `x: [batch, c_in, height, width]` subsampled by `stride` and padded with zero channels to
/// `c_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkipShape {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub stride: usize,
    pub c_out: usize,
}

impl SkipShape {
    /// `None` unless `stride ≥ 1`, `c_out ≥ c_in` and the input has pixels.
    pub fn new([batch, c_in, height, width]: [usize; 4], stride: usize, c_out: usize) -> Option<Self> {
        (stride >= 1 && c_out >= c_in && height * width > 0).then_some(Self { batch, c_in, height, width, stride, c_out })
    }

    pub fn out_height(&self) -> usize {
        self.height.div_ceil(self.stride)
    }

    pub fn out_width(&self) -> usize {
        self.width.div_ceil(self.stride)
    }

    pub fn input(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.height, self.width]
    }

    pub fn output(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.out_height(), self.out_width()]
    }

    fn in_sample(&self) -> usize {
        self.c_in * self.height * self.width
    }

    fn out_sample(&self) -> usize {
        self.c_out * self.out_height() * self.out_width()
    }
}

/// The shortcut's output, `[batch, c_out, ⌈h/s⌉, ⌈w/s⌉]`.
pub fn forward(s: &SkipShape, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), s.batch * s.in_sample(), "shortcut input length");
    let (plane, out_plane) = (s.height * s.width, s.out_height() * s.out_width());
    written(s.batch * s.out_sample(), |y| {
        y.par_chunks_mut(s.out_sample().max(1)).zip(x.par_chunks(s.in_sample().max(1))).for_each(|(y_b, x_b)| {
            let (carried, zeros) = y_b.split_at_mut(s.c_in * out_plane);
            for (y_c, x_c) in carried.chunks_mut(out_plane).zip(x_b.chunks(plane)) {
                for (y_row, i) in y_c.chunks_mut(s.out_width()).zip((0..s.height).step_by(s.stride)) {
                    let x_row = &x_c[i * s.width..][..s.width];
                    for (y, x) in y_row.iter_mut().zip(x_row.iter().step_by(s.stride)) {
                        *y = MaybeUninit::new(*x);
                    }
                }
            }
            zeros.fill(MaybeUninit::new(0.0));
        });
    })
}

/// The input's gradient, `[batch, c_in, h, w]`, from the output's `dy`.
pub fn backward(s: &SkipShape, dy: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), s.batch * s.out_sample(), "shortcut gradient length");
    let (plane, out_plane) = (s.height * s.width, s.out_height() * s.out_width());
    written(s.batch * s.in_sample(), |dx| {
        dx.par_chunks_mut(s.in_sample().max(1)).zip(dy.par_chunks(s.out_sample().max(1))).for_each(|(dx_b, dy_b)| {
            for (dx_c, dy_c) in dx_b.chunks_mut(plane).zip(dy_b.chunks(out_plane)) {
                for (r, dx_row) in dx_c.chunks_mut(s.width).enumerate() {
                    if r % s.stride != 0 {
                        dx_row.fill(MaybeUninit::new(0.0));
                        continue;
                    }
                    let dy_row = &dy_c[r / s.stride * s.out_width()..][..s.out_width()];
                    for (j, dx) in dx_row.iter_mut().enumerate() {
                        *dx = MaybeUninit::new(if j % s.stride == 0 { dy_row[j / s.stride] } else { 0.0 });
                    }
                }
            }
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 + 1.0).collect()
    }

    #[test]
    fn the_shortcut_is_its_definition() {
        for (input, stride, c_out) in [([2, 3, 7, 5], 2, 5), ([1, 2, 4, 4], 1, 4), ([3, 4, 6, 9], 3, 4), ([2, 1, 1, 3], 2, 2)] {
            let s = SkipShape::new(input, stride, c_out).unwrap();
            let [b, c_in, h, w] = input;
            let [_, _, ho, wo] = s.output();
            let x = ramp(b * c_in * h * w);
            let y = forward(&s, &x);
            let dy = ramp(y.len());
            let dx = backward(&s, &dy);
            for (n, c, i, j) in (0..b).flat_map(|n| (0..c_out).flat_map(move |c| (0..ho).flat_map(move |i| (0..wo).map(move |j| (n, c, i, j))))) {
                let want = if c < c_in { x[((n * c_in + c) * h + i * stride) * w + j * stride] } else { 0.0 };
                assert_eq!(y[((n * c_out + c) * ho + i) * wo + j], want, "{input:?} y[{n}, {c}, {i}, {j}]");
            }
            for (n, c, r, q) in (0..b).flat_map(|n| (0..c_in).flat_map(move |c| (0..h).flat_map(move |r| (0..w).map(move |q| (n, c, r, q))))) {
                let on = r % stride == 0 && q % stride == 0;
                let want = if on { dy[((n * c_out + c) * ho + r / stride) * wo + q / stride] } else { 0.0 };
                assert_eq!(dx[((n * c_in + c) * h + r) * w + q], want, "{input:?} dx[{n}, {c}, {r}, {q}]");
            }
        }
    }

    #[test]
    fn impossible_shapes_are_refused() {
        assert!(SkipShape::new([1, 4, 2, 2], 1, 3).is_none());
        assert!(SkipShape::new([1, 4, 2, 2], 0, 4).is_none());
        assert!(SkipShape::new([1, 4, 0, 2], 2, 4).is_none());
    }
}
