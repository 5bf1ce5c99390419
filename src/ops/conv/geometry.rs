//! A convolution's sizes: its options, the geometry derived from an input shape, and the
//! output positions each kernel tap reaches.
use crate::ops::shape::conv_output_size;

/// Options of a convolution, candle-style: `Conv2dConfig { stride: (2, 2), ..Default::default() }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    /// Padding before the first row / column.
    pub pad_begin: (usize, usize),
    /// Padding after the last row / column (differs from `pad_begin` only for "same" with even extents).
    pub pad_end: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig {
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (1, 1),
            pad_begin: (0, 0),
            pad_end: (0, 0),
            groups: 1,
        }
    }
}

/// Every size of one convolution, derived once from the input shape and the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub cfg: Conv2dConfig,
}

impl Conv2dGeometry {
    /// Checks the configuration against the input `[C, H, W]`; the error says what does not fit.
    pub fn new(input: [usize; 3], out_channels: usize, cfg: Conv2dConfig) -> Result<Self, String> {
        let [c, h, w] = input;
        if cfg.groups == 0 || c % cfg.groups != 0 || !out_channels.is_multiple_of(cfg.groups) {
            return Err(format!(
                "groups = {} must divide both the input channels ({c}) and out_channels ({out_channels})",
                cfg.groups
            ));
        }
        let (kh, kw) = cfg.kernel;
        let out_h = conv_output_size(
            h,
            cfg.pad_begin.0 + cfg.pad_end.0,
            kh,
            cfg.stride.0,
            cfg.dilation.0,
        );
        let out_w = conv_output_size(
            w,
            cfg.pad_begin.1 + cfg.pad_end.1,
            kw,
            cfg.stride.1,
            cfg.dilation.1,
        );
        match (out_h, out_w) {
            (Some(out_h), Some(out_w)) => Ok(Conv2dGeometry {
                in_channels: c,
                in_h: h,
                in_w: w,
                out_channels,
                out_h,
                out_w,
                cfg,
            }),
            _ => Err(format!(
                "the kernel {kh}×{kw} (dilation {}×{}) is larger than the padded input {}×{}",
                cfg.dilation.0,
                cfg.dilation.1,
                h + cfg.pad_begin.0 + cfg.pad_end.0,
                w + cfg.pad_begin.1 + cfg.pad_end.1
            )),
        }
    }
    /// Elements of one input sample, C_in·H·W.
    pub fn in_len(&self) -> usize {
        self.in_channels * self.in_h * self.in_w
    }
    /// Elements of one output sample, C_out·H_out·W_out.
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_h * self.out_w
    }
    /// Rows of a group's column matrix, C_in/groups·kh·kw (the GEMM's reduction length).
    pub fn k_per_group(&self) -> usize {
        self.in_channels / self.cfg.groups * self.cfg.kernel.0 * self.cfg.kernel.1
    }
    /// Elements of the weight tensor (C_out, C_in/groups, kh, kw).
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.k_per_group()
    }
    pub(crate) fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }
    /// Stride 1 both ways without dilation: what the wide-plane, tap and batch kernels need.
    pub fn unit_stride(&self) -> bool {
        self.cfg.stride == (1, 1) && self.cfg.dilation == (1, 1)
    }
    /// The geometry whose forward pass is this convolution's input gradient, for stride 1
    /// without dilation or groups: dY (C_out, H_out, W_out) correlated with the flipped kernels,
    /// padded by k − 1 − p on each side (so p ≤ k − 1), gives dX (C_in, H, W).
    pub fn transposed(&self) -> Option<Conv2dGeometry> {
        let c = &self.cfg;
        let (kh, kw) = c.kernel;
        let fits = |p: usize, k: usize| p < k;
        if c.stride != (1, 1) || c.dilation != (1, 1) || c.groups != 1 {
            return None;
        }
        if !(fits(c.pad_begin.0, kh)
            && fits(c.pad_end.0, kh)
            && fits(c.pad_begin.1, kw)
            && fits(c.pad_end.1, kw))
        {
            return None;
        }
        let cfg = Conv2dConfig {
            pad_begin: (kh - 1 - c.pad_begin.0, kw - 1 - c.pad_begin.1),
            pad_end: (kh - 1 - c.pad_end.0, kw - 1 - c.pad_end.1),
            ..*c
        };
        let gt = Conv2dGeometry::new(
            [self.out_channels, self.out_h, self.out_w],
            self.in_channels,
            cfg,
        )
        .ok()?;
        ((gt.out_h, gt.out_w) == (self.in_h, self.in_w)).then_some(gt)
    }
}

/// Output positions `o` in `0..out` whose input index `o·s + off − pad` lies in `0..n`.
pub(crate) fn valid_range(
    n: usize,
    out: usize,
    s: usize,
    off: usize,
    pad: usize,
) -> (usize, usize) {
    // o·s + off ≥ pad  and  o·s + off < n + pad
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(s)
    };
    let hi = if n + pad > off {
        (n + pad - off).div_ceil(s)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Half-open ranges of output positions, one per kernel row or column.
pub(crate) type Ranges = Vec<(usize, usize)>;

/// For each kernel row ki (column kj): the output rows (columns) whose tap lands inside the
/// input, as [`valid_range`] gives them.
pub(crate) fn tap_ranges(g: &Conv2dGeometry) -> (Ranges, Ranges) {
    let c = &g.cfg;
    let rows = (0..c.kernel.0)
        .map(|ki| {
            valid_range(
                g.in_h,
                g.out_h,
                c.stride.0,
                ki * c.dilation.0,
                c.pad_begin.0,
            )
        })
        .collect();
    let cols = (0..c.kernel.1)
        .map(|kj| {
            valid_range(
                g.in_w,
                g.out_w,
                c.stride.1,
                kj * c.dilation.1,
                c.pad_begin.1,
            )
        })
        .collect();
    (rows, cols)
}
