//! fedolf's own convolution, max pooling (with the ReLU before it fused in, where there is
//! one), training-mode BatchNorm and the ResNets' shortcut for the CPU, in Burn.
//!
//! `cpu` holds the kernels on NCHW `f32` slices (im2col straight from NCHW into a reused
//! per-thread buffer, GEMM from the `gemm` crate, a thread-count-independent reduction for the
//! weight gradient, through `product`, the one GEMM entry); it hands the wide 3×3 stride-1
//! layers to `winograd` (F(2×2, 3×3): 16 GEMMs over 2×2 output tiles, on any CPU), and on
//! AVX-512 the layers of 32–64 output channels to `direct`
//! (forward and weight gradient without a column matrix, 16 channels a register) and the
//! stride-1 forward and weight gradient of narrow layers and stems to `rows` (16 pixels of a
//! row a register), and the 3×3 stride-2 input gradient to `strided` (pairs of columns, no
//! `col2im`). `extension` is the backend extension that carries them into Burn —
//! forward on the backend, backward registered on `Autodiff` — and `dispatch::conv2d` is the
//! call the models make for every backend. `pool` and `pool_extension` do the same for max
//! pooling over non-overlapping windows (and a ReLU before it), `norm` and `norm_extension`
//! for training-mode BatchNorm (with the ReLU after it, or a residual block's add and ReLU,
//! fused in), its row work in `norm_rows` and the fixed-order sums in `lanes`; `skip` and
//! `skip_extension` for the ResNets' option-A shortcut (subsampled, zero channels padded).
//! `output` allocates what the direct, row, BatchNorm, shortcut and pool-gradient kernels
//! write in full, without a zero fill first.

mod chunks;
pub mod cpu;
mod direct;
mod dispatch;
mod extension;
#[cfg(feature = "flex")]
mod flex;
pub mod geometry;
mod im2col;
mod lanes;
pub mod norm;
pub mod peak;
mod norm_extension;
mod norm_rows;
mod output;
pub mod pool;
mod pool_extension;
mod product;
#[cfg(test)]
mod reference;
mod rows;
pub mod skip;
mod skip_extension;
mod strided;
mod winograd;

pub use cpu::{Grads, Wanted};
pub use dispatch::{batch_norm_fixed, batch_norm_train, conv2d, forward, has_own_kernels, max_pool2d, padded_skip, pool_forward, relu_max_pool2d, relu_pool_forward};
pub use norm::Then;
pub use norm_extension::{BatchStatistics, NormGradientKernels, NormKernels};
pub use extension::{ConvGradientKernels, ConvGradients, ConvKernels};
pub use geometry::ConvGeometry;
pub use pool_extension::{PoolArgmax, PoolGradientKernels, PoolKernels};
pub use skip_extension::{SkipGradientKernels, SkipKernels};
