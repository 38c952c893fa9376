//! Winograd's minimal filtering F(2×2, 3×3) for the 3×3, stride-1, padding-1 convolutions of
//! wide layers (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! The output is cut into 2×2 tiles; tile `t` reads the 4×4 input tile `d_t` around it, and
//!   `Y_t = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d_t B) ] A`
//! with `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`, `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`,
//! `Aᵀ = [1 1 1 0; 0 1 −1 −1]`. Summed over input channels, each of the 16 positions `p` of a
//! transformed tile is one matrix product over all tiles of a chunk of samples:
//!   forward  `Z_p[co, t] = Σ_ci U_p[co, ci] · V_p[ci, t]`, `U = G g Gᵀ`, `V = Bᵀ d B`
//!   weight   `M_p[co, ci] = Σ_t Ŷ_p[co, t] · V_p[ci, t]`, `Ŷ = A dY_t Aᵀ`, `dg = Gᵀ M G`
//! (the weight gradient is the adjoint of the forward's three linear maps). The 16 products do
//! `16·c_in·c_out` multiply-adds a tile where the direct convolution does `36·c_in·c_out`:
//! 2.25× fewer. The stride-1 input gradient is the forward of the flipped filters
//! (`cpu::input_grad`), so it comes here too. The products are `gemm`'s; the transforms are
//! additions and halvings, so the results differ from the direct convolution's in rounding only.
//!
//! Samples go in chunks fixed by the geometry alone (each chunk's transformed tiles sized for
//! the L2), chunks in parallel; the weight gradient sums its chunks as every weight gradient
//! does (`chunks.rs`), so a run is bit-identical for any thread count.

use rayon::prelude::*;

use crate::chunks::sum_over_sample_chunks;
use crate::geometry::ConvGeometry;
use crate::output::written;
use crate::product::{matmul, View};

/// Positions of a transformed 4×4 tile.
const POSITIONS: usize = 16;

/// Whether `g` is a convolution this file computes, and one where it is faster than the direct
/// kernels (`fedolf bench conv`; see `applies_to_channels`).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.padding == [1, 1] && applies_to_channels(g.c_in, g.c_out)
}

/// The channel counts the transforms pay for themselves at: they cost `16·(c_in + c_out)` a
/// tile, the products save `20·c_in·c_out`. `fedolf bench conv`, ratio to PyTorch (forward /
/// input / weight gradient), Winograd against the direct kernels on this Zen 4: AlexNet's
/// 8 × 8 layers 0.81–1.00× against 1.04–1.12×, its 64 → 192 on 16 × 16 0.45 / 0.77 / 1.01×
/// against 0.66 / 1.05 / 1.00×; ResNet's 64 → 64 1.14 / 1.05 / 1.04× against 1.04 / 1.02 /
/// 1.00×, so ResNet's layers stay direct.
fn applies_to_channels(c_in: usize, c_out: usize) -> bool {
    c_in.min(c_out) >= 64 && c_in + c_out >= 256
}

/// The bytes of one chunk's transformed input and output tiles: with the products' packed
/// operands, about a core's L2.
const CHUNK_BYTES: usize = 1024 * 1024;

/// The same for the weight gradient's products, whose inner dimension is the chunk's tiles: a
/// larger chunk makes fewer passes of `M` (`16·c_out·c_in`) through the cache, and more
/// memory (each thread holds one chunk).
const WEIGHT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// The tile grid of `g`'s output: `[rows, columns]` of 2×2 tiles.
fn tile_grid(g: &ConvGeometry) -> [usize; 2] {
    [g.out_height.div_ceil(2), g.out_width.div_ceil(2)]
}

/// Samples per chunk, fixed by the geometry: as many as fit `bytes` of transformed input and
/// output tiles, at least one.
fn samples_per_chunk(g: &ConvGeometry, bytes: usize) -> usize {
    let [th, tw] = tile_grid(g);
    let per_sample = POSITIONS * th * tw * (g.c_in + g.c_out) * std::mem::size_of::<f32>();
    (bytes / per_sample).clamp(1, g.batch)
}

/// `U_p[co, ci]`, stored `[16, c_in, c_out]` (the products' left operand with its rows
/// contiguous, as GEMM reads it without packing): every filter transformed once.
fn transform_filters(g: &ConvGeometry, w: &[f32]) -> Vec<f32> {
    let plane = g.c_out * g.c_in;
    let mut u = vec![0.0f32; POSITIONS * plane];
    for (k, f) in w.chunks_exact(9).enumerate() {
        let (co, ci) = (k / g.c_in, k % g.c_in);
        // G f (4×3), then (G f) Gᵀ (4×4).
        let columns: [[f32; 4]; 3] = std::array::from_fn(|c| times_g([f[c], f[3 + c], f[6 + c]]));
        for r in 0..4 {
            for (c, v) in times_g([columns[0][r], columns[1][r], columns[2][r]]).into_iter().enumerate() {
                u[(r * 4 + c) * plane + ci * g.c_out + co] = v;
            }
        }
    }
    u
}

/// `G f` of one column (or row) `f` of a 3 × 3 filter: `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`.
#[inline(always)]
fn times_g([f0, f1, f2]: [f32; 3]) -> [f32; 4] {
    [f0, 0.5 * (f0 + f1 + f2), 0.5 * (f0 - f1 + f2), f2]
}

/// `Gᵀ m` of one column (or row) `m` of a transformed tile: the adjoint of [`times_g`].
#[inline(always)]
fn times_gt([m0, m1, m2, m3]: [f32; 4]) -> [f32; 3] {
    [m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3]
}

/// `out[t] = f(a[t], b[t])` over a run of tiles.
#[inline(always)]
fn combine(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// `V_p[ci, t]` of one chunk's samples, `[16, c_in, tiles]` (`tiles` = the chunk's tiles,
/// sample-major, then tile row, then tile column).
///
/// Per channel map, the padded map's columns are split into even and odd (`Bᵀ d B`'s column
/// step then reads neighbours, not every other element), the column step runs a padded row at
/// a time, its results kept apart by the row's parity, so that the row step over all the map's
/// tiles is one run of contiguous elements per position: tile row `i` reads padded rows
/// `2i … 2i+3`, which are rows `i` and `i+1` of each parity.
fn transform_inputs(g: &ConvGeometry, x: &[f32], v: &mut Vec<f32>, scratch: &mut Vec<f32>) {
    let [th, tw] = tile_grid(g);
    let (h, w) = (g.height, g.width);
    let samples = x.len() / g.in_sample();
    let tiles = samples * th * tw;
    let map_tiles = th * tw;
    v.resize(POSITIONS * g.c_in * tiles, 0.0);
    // Padded rows 0 … 2·th+1 (row r holds input row r − 1), columns as even (2j, input
    // column 2j − 1) and odd (2j + 1, input column 2j), j = 0 … tw.
    let (rows, n) = (2 * th + 2, tw + 1);
    // The column step's four results per padded row, by parity: e[c][parity][row / 2][j].
    let half = (th + 1) * tw;
    scratch.resize(2 * n + 8 * half, 0.0);
    let (pair, e) = scratch.split_at_mut(2 * n);
    let (even, odd) = pair.split_at_mut(n);
    for s in 0..samples {
        for ci in 0..g.c_in {
            let map = &x[(s * g.c_in + ci) * h * w..][..h * w];
            for r in 0..rows {
                even.fill(0.0);
                odd.fill(0.0);
                if (1..=h).contains(&r) {
                    let row = &map[(r - 1) * w..][..w];
                    // Input column `col` is padded column `col + 1`: even input columns are odd
                    // padded ones.
                    for (k, pair) in row.chunks(2).enumerate() {
                        odd[k] = pair[0];
                        if let Some(&value) = pair.get(1) {
                            even[k + 1] = value;
                        }
                    }
                }
                let at = (r % 2) * half + (r / 2) * tw;
                let (a, b) = (&even[..tw], &even[1..]);
                let (c, d) = (&odd[..tw], &odd[1..]);
                for j in 0..tw {
                    e[at + j] = a[j] - b[j];
                    e[2 * half + at + j] = c[j] + b[j];
                    e[4 * half + at + j] = b[j] - c[j];
                    e[6 * half + at + j] = c[j] - d[j];
                }
            }
            let base = s * map_tiles;
            for c in 0..4 {
                let (ev, od) = e[2 * c * half..][..2 * half].split_at(half);
                // Rows 2i and 2i+2 are even rows i and i+1; 2i+1 and 2i+3 odd rows i and i+1.
                let (e0, e2, o1, o3) = (&ev[..map_tiles], &ev[tw..][..map_tiles], &od[..map_tiles], &od[tw..][..map_tiles]);
                let out = |row: usize| (row * 4 + c) * g.c_in * tiles + ci * tiles + base;
                combine(&mut v[out(0)..][..map_tiles], e0, e2, |a, b| a - b);
                combine(&mut v[out(1)..][..map_tiles], o1, e2, |a, b| a + b);
                combine(&mut v[out(2)..][..map_tiles], e2, o1, |a, b| a - b);
                combine(&mut v[out(3)..][..map_tiles], o1, o3, |a, b| a - b);
            }
        }
    }
}

/// `Ŷ_p[co, t] = (A dY_t Aᵀ)_p` of one chunk's output gradients, `[16, c_out, tiles]`; the rows
/// and columns past an odd map's edge are zero. The tiles' four elements are gathered into
/// four runs over the map's tiles first, so both steps run over contiguous elements.
fn transform_output_grads(g: &ConvGeometry, dy: &[f32], yh: &mut Vec<f32>, scratch: &mut Vec<f32>) {
    let [th, tw] = tile_grid(g);
    let (ho, wo) = (g.out_height, g.out_width);
    let samples = dy.len() / g.out_sample();
    let tiles = samples * th * tw;
    let map_tiles = th * tw;
    yh.resize(POSITIONS * g.c_out * tiles, 0.0);
    scratch.resize(10 * map_tiles, 0.0);
    for s in 0..samples {
        for co in 0..g.c_out {
            let map = &dy[(s * g.c_out + co) * ho * wo..][..ho * wo];
            // y[a][b][t]: element (a, b) of tile t.
            scratch[..4 * map_tiles].fill(0.0);
            for (r, row) in map.chunks_exact(wo).enumerate() {
                let at = (r % 2) * 2 * map_tiles + (r / 2) * tw;
                for (col, &value) in row.iter().enumerate() {
                    scratch[at + (col % 2) * map_tiles + col / 2] = value;
                }
            }
            let base = s * map_tiles;
            let (ys, q) = scratch.split_at_mut(4 * map_tiles);
            let y = |a: usize, b: usize| &ys[(2 * a + b) * map_tiles..][..map_tiles];
            // A y over the rows: q[r][b] = y[0][b], y[0][b] + y[1][b], y[0][b] − y[1][b], −y[1][b].
            for b in 0..2 {
                let (y0, y1) = (y(0, b), y(1, b));
                let (q1, rest) = q[3 * b * map_tiles..][..3 * map_tiles].split_at_mut(map_tiles);
                let (q2, q3) = rest.split_at_mut(map_tiles);
                for t in 0..map_tiles {
                    q1[t] = y0[t] + y1[t];
                    q2[t] = y0[t] - y1[t];
                    q3[t] = -y1[t];
                }
            }
            let q = &*q;
            let row = |r: usize, b: usize| if r == 0 { y(0, b) } else { &q[(3 * b + r - 1) * map_tiles..][..map_tiles] };
            // Then Aᵀ over the columns of each row r: u0, u0 + u1, u0 − u1, −u1.
            for r in 0..4 {
                let (u0, u1) = (row(r, 0), row(r, 1));
                let out = |c: usize| ((r * 4 + c) * g.c_out + co) * tiles + base;
                yh[out(0)..][..map_tiles].copy_from_slice(u0);
                combine(&mut yh[out(1)..][..map_tiles], u0, u1, |a, b| a + b);
                combine(&mut yh[out(2)..][..map_tiles], u0, u1, |a, b| a - b);
                combine(&mut yh[out(3)..][..map_tiles], u0, u1, |_, b| -b);
            }
        }
    }
}

/// `y = Aᵀ Z A (+ bias)` of one chunk's tiles (`z`: `[16, c_out, tiles]`) into its samples'
/// `[c_out, ho, wo]` maps: both steps over runs of a map's tiles, then the four results
/// interleaved into the map.
fn transform_outputs(g: &ConvGeometry, z: &[f32], bias: Option<&[f32]>, y: &mut [std::mem::MaybeUninit<f32>], scratch: &mut Vec<f32>) {
    let [th, tw] = tile_grid(g);
    let (ho, wo) = (g.out_height, g.out_width);
    let samples = y.len() / g.out_sample();
    let tiles = samples * th * tw;
    let map_tiles = th * tw;
    scratch.resize(12 * map_tiles, 0.0);
    let (r, o) = scratch.split_at_mut(8 * map_tiles);
    for s in 0..samples {
        let base = s * map_tiles;
        for co in 0..g.c_out {
            let m = |p: usize| &z[(p * g.c_out + co) * tiles + base..][..map_tiles];
            // Aᵀ m over the rows: r[c][a].
            for c in 0..4 {
                let (m0, m1, m2, m3) = (m(c), m(4 + c), m(8 + c), m(12 + c));
                let (r0, r1) = r[2 * c * map_tiles..][..2 * map_tiles].split_at_mut(map_tiles);
                for t in 0..map_tiles {
                    r0[t] = m0[t] + m1[t] + m2[t];
                    r1[t] = m1[t] - m2[t] - m3[t];
                }
            }
            // Then over the columns: o[a][b].
            for a in 0..2 {
                let rc = |c: usize| &r[(2 * c + a) * map_tiles..][..map_tiles];
                let (c0, c1, c2, c3) = (rc(0), rc(1), rc(2), rc(3));
                let (oa0, oa1) = o[2 * a * map_tiles..][..2 * map_tiles].split_at_mut(map_tiles);
                for t in 0..map_tiles {
                    oa0[t] = c0[t] + c1[t] + c2[t];
                    oa1[t] = c1[t] - c2[t] - c3[t];
                }
            }
            let b = bias.map_or(0.0, |bias| bias[co]);
            let map = &mut y[(s * g.c_out + co) * ho * wo..][..ho * wo];
            for (row, out) in map.chunks_exact_mut(wo).enumerate() {
                let from = &o[(row % 2) * 2 * map_tiles + (row / 2) * tw..];
                for (col, value) in out.iter_mut().enumerate() {
                    value.write(b + from[(col % 2) * map_tiles + col / 2]);
                }
            }
        }
    }
}

/// `y = conv(x, w) + bias`, `[batch, c_out, ho, wo]`, for a geometry [`applies`] takes.
pub(crate) fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    forward_in_chunks(g, x, w, bias, samples_per_chunk(g, CHUNK_BYTES))
}

/// [`forward`], `samples` samples a chunk.
fn forward_in_chunks(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, samples: usize) -> Vec<f32> {
    debug_assert!(g.kernel == [3, 3] && g.stride == [1, 1] && g.padding == [1, 1]);
    let u = transform_filters(g, w);
    let [th, tw] = tile_grid(g);
    let plane_u = g.c_out * g.c_in;
    written(g.batch * g.out_sample(), |y| {
        y.par_chunks_mut(samples * g.out_sample()).zip(x.par_chunks(samples * g.in_sample())).for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(v, z, scratch), (y_c, x_c)| {
                let tiles = x_c.len() / g.in_sample() * th * tw;
                transform_inputs(g, x_c, v, scratch);
                z.resize(POSITIONS * g.c_out * tiles, 0.0);
                for p in 0..POSITIONS {
                    let u_p = &u[p * plane_u..][..plane_u];
                    let v_p = &v[p * g.c_in * tiles..][..g.c_in * tiles];
                    // Z_p [c_out × tiles] = U_p [c_out × c_in] · V_p [c_in × tiles]
                    let z_p = &mut z[p * g.c_out * tiles..][..g.c_out * tiles];
                    matmul(g.c_out, tiles, g.c_in, z_p, tiles, false, View::transposed(u_p, g.c_out), View::rows(v_p, tiles));
                }
                transform_outputs(g, z, bias, y_c, scratch);
            },
        )
    })
}

/// `dW = Σ_b dy[b] ⋆ x[b]`, `[c_out, c_in, 3, 3]`, for a geometry [`applies`] takes.
pub(crate) fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    weight_grad_in_chunks(g, x, dy, samples_per_chunk(g, WEIGHT_CHUNK_BYTES))
}

/// [`weight_grad`], each of the fixed sums' ranges of samples `samples` samples at a time.
fn weight_grad_in_chunks(g: &ConvGeometry, x: &[f32], dy: &[f32], samples: usize) -> Vec<f32> {
    let [th, tw] = tile_grid(g);
    let plane = g.c_out * g.c_in;
    // Each range's `M` (16 positions, 16/9 of the gradient) stays in one per-thread buffer and
    // leaves it as its 3 × 3 filters, so the ranges' partials, all held until their sum, are
    // the gradient's size.
    sum_over_sample_chunks(
        g.batch,
        g.weight_len(),
        || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        |(v, yh, scratch, m), range, dw| {
            m.clear();
            m.resize(POSITIONS * plane, 0.0);
            // The range's samples in chunks of `samples`, each adding its tiles' products.
            for start in range.clone().step_by(samples) {
                let end = (start + samples).min(range.end);
                let tiles = (end - start) * th * tw;
                transform_inputs(g, &x[start * g.in_sample()..end * g.in_sample()], v, scratch);
                transform_output_grads(g, &dy[start * g.out_sample()..end * g.out_sample()], yh, scratch);
                for p in 0..POSITIONS {
                    let yh_p = &yh[p * g.c_out * tiles..][..g.c_out * tiles];
                    let v_p = &v[p * g.c_in * tiles..][..g.c_in * tiles];
                    // M_p [c_out × c_in] += Ŷ_p [c_out × tiles] · V_pᵀ [tiles × c_in]
                    matmul(g.c_out, g.c_in, tiles, &mut m[p * plane..][..plane], g.c_in, true, View::rows(yh_p, tiles), View::transposed(v_p, tiles));
                }
            }
            transform_weight_grads(m, plane, dw);
        },
    )
}

/// `dg = Gᵀ M G` for every (co, ci): `m` `[16, c_out, c_in]` into `dw` `[c_out, c_in, 3, 3]`.
fn transform_weight_grads(m: &[f32], plane: usize, dw: &mut [f32]) {
    for (k, dg) in dw.chunks_exact_mut(9).enumerate() {
        let at = |p: usize| m[p * plane + k];
        // Gᵀ M (3×4), then (Gᵀ M) G (3×3).
        let columns: [[f32; 3]; 4] = std::array::from_fn(|c| times_gt([at(c), at(4 + c), at(8 + c), at(12 + c)]));
        for r in 0..3 {
            dg[r * 3..][..3].copy_from_slice(&times_gt([columns[0][r], columns[1][r], columns[2][r], columns[3][r]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{naive, naive_weight_grad, values};

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 2e-5 * scale, "{what}: element {i}: {x} against {y}");
        }
    }

    /// Even and odd maps (an odd map's last tile is cut), one sample, and chunks of one, two
    /// and all samples (17 samples: the weight gradient's ranges of 2 and 3 samples then split
    /// into chunks of 2 + 1 and 2 + 2 − 1).
    #[test]
    fn forward_and_weight_gradient_are_the_definitions() {
        for (batch, c_in, c_out, h, w) in [(3, 5, 7, 8, 8), (2, 4, 6, 7, 5), (1, 3, 2, 1, 3), (5, 64, 64, 6, 6), (17, 3, 4, 4, 6)] {
            let g = ConvGeometry::new([batch, c_in, h, w], [c_out, c_in, 3, 3], [1, 1], [1, 1]).unwrap();
            let x = values(g.batch * g.in_sample(), 1);
            let wt = values(g.weight_len(), 2);
            let bias = values(c_out, 3);
            let dy = values(g.batch * g.out_sample(), 4);
            for samples in [1, 2, batch] {
                let what = |s: &str| format!("{s}, {batch}×{c_in}×{h}×{w} → {c_out}, chunks of {samples}");
                close(&forward_in_chunks(&g, &x, &wt, Some(&bias), samples), &naive(&g, &x, &wt, Some(&bias)), &what("forward"));
                close(&forward_in_chunks(&g, &x, &wt, None, samples), &naive(&g, &x, &wt, None), &what("forward without bias"));
                close(&weight_grad_in_chunks(&g, &x, &dy, samples), &naive_weight_grad(&g, &x, &dy), &what("weight gradient"));
            }
        }
    }

    #[test]
    fn chunks_are_fixed_by_the_geometry_and_fit_the_budget() {
        let g = ConvGeometry::new([128, 384, 8, 8], [256, 384, 3, 3], [1, 1], [1, 1]).unwrap();
        let s = samples_per_chunk(&g, CHUNK_BYTES);
        assert!(s >= 1 && s * 16 * 16 * (384 + 256) * 4 <= CHUNK_BYTES, "{s}");
        let tiny = ConvGeometry::new([1, 64, 2, 2], [64, 64, 3, 3], [1, 1], [1, 1]).unwrap();
        assert_eq!(samples_per_chunk(&tiny, CHUNK_BYTES), 1);
    }
}
