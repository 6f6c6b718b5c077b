//! The geometry of one conv2d call and its shape checks.

/// The sizes of a 2-D convolution over NCHW images: `batch` images of `c_in` channels and
/// `h x w` pixels, convolved with `c_out` filters of `c_in x kh x kw`, with the same `stride`
/// along both axes and `padding` zero pixels on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Number of images N.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels (number of filters).
    pub c_out: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Step between output positions, along both axes (>= 1).
    pub stride: usize,
    /// Zero pixels added on each side, along both axes.
    pub padding: usize,
}

impl Conv2dParams {
    /// Output height `(h + 2 * padding - kh) / stride + 1`.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.kh) / self.stride + 1
    }

    /// Output width `(w + 2 * padding - kw) / stride + 1`.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.kw) / self.stride + 1
    }

    /// Input shape `[batch, c_in, h, w]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.h, self.w]
    }

    /// Weight shape `[c_out, c_in, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }

    /// Output shape `[batch, c_out, out_h, out_w]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.out_h(), self.out_w()]
    }

    /// Multiply-adds times two of one pass (forward, backward-data or backward-weight):
    /// `2 * batch * c_out * c_in * kh * kw * out_h * out_w`.
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.c_out * self.c_in * self.kh * self.kw) as f64
            * (self.out_h() * self.out_w()) as f64
    }

    /// True when the convolution is a plain matrix product per image (1x1, stride 1, no padding).
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Panics, naming `op`, unless the geometry is valid and the slices have the lengths of
    /// `[input, weight, output]` (any of them may be `None` to skip it).
    pub(crate) fn validate(
        &self,
        op: &str,
        input: Option<usize>,
        weight: Option<usize>,
        output: Option<usize>,
    ) {
        assert!(
            self.stride >= 1,
            "{op}: stride must be at least 1, got {} ({self:?})",
            self.stride
        );
        assert!(
            self.kh >= 1
                && self.kw >= 1
                && self.h + 2 * self.padding >= self.kh
                && self.w + 2 * self.padding >= self.kw,
            "{op}: kernel {}x{} does not fit input {}x{} with padding {} ({self:?})",
            self.kh,
            self.kw,
            self.h,
            self.w,
            self.padding
        );
        let check = |what: &str, len: Option<usize>, shape: [usize; 4]| {
            if let Some(len) = len {
                let want: usize = shape.iter().product();
                assert_eq!(
                    len,
                    want,
                    "{op}: {what} has {len} values but shape {shape:?} needs {want} \
                     (input {:?}, weight {:?}, output {:?})",
                    self.input_shape(),
                    self.weight_shape(),
                    self.output_shape()
                );
            }
        };
        check("input", input, self.input_shape());
        check("weight", weight, self.weight_shape());
        check("output", output, self.output_shape());
    }
}
