//! Max pooling over non-overlapping `p×p` windows (stride `p`, no padding, floor mode — the
//! CNN's and AlexNet's pools) on NCHW `f32`, and its backward.
//!
//! `y[n, c, oy, ox] = max_{0≤i,j<p} x[n, c, oy·p + i, ox·p + j]`, the first maximum in
//! row-major window order winning ties and a NaN winning over numbers (as PyTorch and Burn).
//! The backward routes `dy` to the winner: `dx[argmax] = dy`, every other input 0. Windows do
//! not overlap, so each input receives at most one gradient and planes run in parallel with
//! no order to fix. (Flex's own pool goes through a generic 3-D path, ~20 % of a CNN step.)

use rayon::prelude::*;

/// `x: [planes = batch·channels, height, width]` pooled by `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub size: usize,
}

impl PoolGeometry {
    /// `None` for an empty map or a window larger than it (left to Burn).
    pub fn new(x: [usize; 4], size: usize) -> Option<Self> {
        let [batch, channels, height, width] = x;
        let g = Self { planes: batch * channels, height, width, size };
        (size > 0 && g.planes > 0 && height >= size && width >= size).then_some(g)
    }

    pub fn out_height(&self) -> usize {
        self.height / self.size
    }

    pub fn out_width(&self) -> usize {
        self.width / self.size
    }

    fn in_plane(&self) -> usize {
        self.height * self.width
    }

    fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }
}

/// The pooled map, and with `argmax` the winner of each window as an index into its plane.
pub fn forward(g: &PoolGeometry, x: &[f32], argmax: Option<&mut Vec<u32>>) -> Vec<f32> {
    assert_eq!(x.len(), g.planes * g.in_plane(), "pool input length");
    assert!(g.in_plane() <= u32::MAX as usize, "a plane over 2³² pixels");
    let mut y = vec![0.0f32; g.planes * g.out_plane()];
    let window = |plane: &[f32], oy: usize, ox: usize| {
        let (mut best, mut at) = (f32::NEG_INFINITY, oy * g.size * g.width + ox * g.size);
        for i in 0..g.size {
            let row = (oy * g.size + i) * g.width + ox * g.size;
            for (j, &v) in plane[row..row + g.size].iter().enumerate() {
                if v > best || (v.is_nan() && !best.is_nan()) {
                    (best, at) = (v, row + j);
                }
            }
        }
        (best, at as u32)
    };
    let (in_plane, out_plane, out_w) = (g.in_plane(), g.out_plane(), g.out_width());
    match argmax {
        Some(argmax) => {
            argmax.clear();
            argmax.resize(y.len(), 0);
            y.par_chunks_mut(out_plane).zip(argmax.par_chunks_mut(out_plane)).zip(x.par_chunks(in_plane)).for_each(|((y_p, a_p), x_p)| {
                for (o, (y, a)) in y_p.iter_mut().zip(a_p.iter_mut()).enumerate() {
                    (*y, *a) = window(x_p, o / out_w, o % out_w);
                }
            })
        }
        None => y.par_chunks_mut(out_plane).zip(x.par_chunks(in_plane)).for_each(|(y_p, x_p)| {
            for (o, y) in y_p.iter_mut().enumerate() {
                *y = window(x_p, o / out_w, o % out_w).0;
            }
        }),
    }
    y
}

/// `dx`: each window's gradient on its winner, zero elsewhere.
pub fn backward(g: &PoolGeometry, argmax: &[u32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), g.planes * g.out_plane(), "pool output-gradient length");
    assert_eq!(argmax.len(), dy.len(), "pool argmax length");
    let mut dx = vec![0.0f32; g.planes * g.in_plane()];
    dx.par_chunks_mut(g.in_plane()).zip(dy.par_chunks(g.out_plane())).zip(argmax.par_chunks(g.out_plane())).for_each(|((dx_p, dy_p), a_p)| {
        for (&d, &a) in dy_p.iter().zip(a_p) {
            dx_p[a as usize] = d;
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_first_and_nan_wins() {
        let g = PoolGeometry::new([1, 1, 2, 4], 2).unwrap();
        // windows: [1, 3 | 3, 0] and [NaN, 2 | 5, 5]
        let x = [1.0, 3.0, f32::NAN, 2.0, 3.0, 0.0, 5.0, 5.0];
        let mut argmax = Vec::new();
        let y = forward(&g, &x, Some(&mut argmax));
        assert_eq!(y[0], 3.0);
        assert!(y[1].is_nan());
        assert_eq!(argmax, vec![1, 2]);
        assert_eq!(backward(&g, &argmax, &[10.0, 20.0]), vec![0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
