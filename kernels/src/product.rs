//! The one matrix product the kernels use: `gemm`'s single-threaded GEMM on views of
//! slices, so `cpu` (the column-matrix path) and `winograd` (its per-position products)
//! share one checked entry.

use std::mem::MaybeUninit;

/// A row-major view of a matrix inside a slice: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> View<'a> {
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major `[rows, cols]` matrix, without moving it.
    pub(crate) fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`, or `dst += …` when `accumulate`; `dst` row-major with
/// row stride `dst_rs` (a block of columns of a wider matrix).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, lhs: View, rhs: View) {
    matmul_strided(m, n, k, dst, [dst_rs, 1], accumulate, lhs, rhs)
}

/// [`matmul`] into `dst` element `(i, j)` at `i·strides[0] + j·strides[1]`, the rows and
/// columns of `dst` not overlapping. GEMM makes the destination's contiguous axis its
/// microkernel's 64-row axis: which axis that is decides its speed (see `cpu::weight_grad`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_strided(m: usize, n: usize, k: usize, dst: &mut [f32], strides: [usize; 2], accumulate: bool, lhs: View, rhs: View) {
    let len = dst.len();
    // SAFETY: `dst` is exclusively borrowed for the call and holds `len` floats.
    unsafe { gemm_into(m, n, k, dst.as_mut_ptr(), len, strides, accumulate, lhs, rhs) }
}

/// [`matmul`] into a kernel's fresh output: without `accumulate` GEMM writes each element
/// of the block and reads none, so a zero fill before it would be a wasted pass; with it,
/// the block must have been written first (the bias).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_fresh(m: usize, n: usize, k: usize, dst: &mut [MaybeUninit<f32>], dst_rs: usize, accumulate: bool, lhs: View, rhs: View) {
    let len = dst.len();
    // SAFETY: `dst` is exclusively borrowed for the call and holds `len` floats; GEMM reads
    // them only with `accumulate`, when the caller has written the block.
    unsafe { gemm_into(m, n, k, dst.as_mut_ptr().cast(), len, [dst_rs, 1], accumulate, lhs, rhs) }
}

/// The body of [`matmul_strided`] on `len` floats at `dst`.
///
/// # Safety
/// `dst` must be valid for reads and writes of `len` floats, alias neither operand, and with
/// `accumulate` hold initialised floats in the block.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(m: usize, n: usize, k: usize, dst: *mut f32, len: usize, strides: [usize; 2], accumulate: bool, lhs: View, rhs: View) {
    let [dst_rs, dst_cs] = strides;
    let disjoint = (dst_cs == 1 && n <= dst_rs) || (dst_rs == 1 && m <= dst_cs);
    let dst_fits = m == 0 || n == 0 || (disjoint && (m - 1) * dst_rs + (n - 1) * dst_cs < len);
    assert!(dst_fits && lhs.fits(m, k) && rhs.fits(k, n), "matmul operands out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside the block asserted above.
                    unsafe { dst.add(i * dst_rs + j * dst_cs).write(0.0) };
                }
            }
        }
        return;
    }
    // SAFETY: the assert above keeps every element gemm reads or writes inside the
    // operands and the `len` floats at `dst`, which alias neither (the caller's contract).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

