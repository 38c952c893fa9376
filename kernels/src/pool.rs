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
    let mut scratch = Vec::new();
    let argmax = match argmax {
        Some(argmax) => argmax,
        None => &mut scratch,
    };
    argmax.clear();
    argmax.resize(y.len(), 0);
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    y.par_chunks_mut(out_plane).zip(argmax.par_chunks_mut(out_plane)).zip(x.par_chunks(in_plane)).for_each(|((y_p, a_p), x_p)| pool_plane(g, x_p, y_p, a_p));
    y
}

/// One plane, an output row at a time: the row's running maxima live in `y` and `argmax`
/// while the window rows stream past, so the inner loop is a plain pass over an input row.
fn pool_plane(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (size, out_w) = (g.size, g.out_width());
    for (oy, (best_row, at_row)) in y.chunks_exact_mut(out_w).zip(argmax.chunks_exact_mut(out_w)).enumerate() {
        best_row.fill(f32::NEG_INFINITY);
        for (ox, at) in at_row.iter_mut().enumerate() {
            *at = (oy * size * g.width + ox * size) as u32;
        }
        for i in 0..size {
            let start = (oy * size + i) * g.width;
            let row = &x[start..start + out_w * size];
            for (ox, ((best, at), window)) in best_row.iter_mut().zip(at_row.iter_mut()).zip(row.chunks_exact(size)).enumerate() {
                // In registers across the window (through memory each compare would wait on
                // the previous store); selects, not branches: the winner is unpredictable.
                let (mut b, mut a) = (*best, *at);
                for (j, &v) in window.iter().enumerate() {
                    // Row-major window order; the first maximum wins ties, a NaN wins numbers.
                    let take = v > b || (v.is_nan() && !b.is_nan());
                    b = if take { v } else { b };
                    a = if take { (start + ox * size + j) as u32 } else { a };
                }
                (*best, *at) = (b, a);
            }
        }
    }
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
