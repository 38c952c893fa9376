//! The shape of one 2-D convolution, checked once, in the terms the kernels loop over.

/// A stride-`s`, zero-padded (`pad` on every side), dilation-1, single-group convolution of
/// an NCHW batch with an `[c_out, c_in, kh, kw]` filter bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub out_height: usize,
    pub out_width: usize,
}

impl ConvGeometry {
    /// `None` where a dimension or stride is zero, the channels disagree, or the output would
    /// be empty (a kernel larger than the padded input): such calls are left to Burn, which
    /// reports or handles them.
    pub fn new(x: [usize; 4], w: [usize; 4], stride: [usize; 2], padding: [usize; 2]) -> Option<Self> {
        let [batch, c_in, height, width] = x;
        let [c_out, w_in, kh, kw] = w;
        if w_in != c_in || stride.contains(&0) || x.contains(&0) || w.contains(&0) {
            return None;
        }
        let out = |size: usize, k: usize, s: usize, p: usize| (size + 2 * p).checked_sub(k).map(|span| span / s + 1);
        Some(Self {
            batch,
            c_in,
            height,
            width,
            c_out,
            kernel: [kh, kw],
            stride,
            padding,
            out_height: out(height, kh, stride[0], padding[0])?,
            out_width: out(width, kw, stride[1], padding[1])?,
        })
    }

    /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
    pub fn col_rows(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// Output pixels per sample (the column matrix's columns).
    pub fn out_pixels(&self) -> usize {
        self.out_height * self.out_width
    }

    pub fn in_sample(&self) -> usize {
        self.c_in * self.height * self.width
    }

    pub fn out_sample(&self) -> usize {
        self.c_out * self.out_pixels()
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.col_rows()
    }

    /// A 1×1, stride-1, unpadded convolution: the sample's `[c_in, h·w]` map already is its
    /// column matrix, so no im2col is needed.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Multiply-adds of the forward pass (the dX and dW passes cost the same).
    pub fn macs(&self) -> u64 {
        (self.batch * self.c_out * self.out_pixels() * self.col_rows()) as u64
    }
}
