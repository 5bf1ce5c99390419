//! The one place that chooses a convolution's algorithm: what each kernel can compute
//! (`*_fits`), and which one runs (`plan_*`) from the geometry, the batch, the instruction set
//! and the pass, every threshold beside the measurement that set it.
use super::geometry::Conv2dGeometry;
use crate::ops::pool::Pool2dGeometry;
use crate::ops::simd::Isa;

/// Lanes of one f32 vector the kernels work in: one AVX-512 register, two AVX2 ones.
const V: usize = 16;

/// A forward-pass algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Winograd F(2×2, 3×3) over 4×4 patches (`winograd`).
    Winograd,
    /// Winograd F(4×4, 3×3) over 6×6 patches (`winograd`).
    Winograd4,
    /// Winograd F(4, 4) along the rows at stride 2 (`rows_winograd`).
    RowsWinograd,
    /// Direct, output channels across the vector lanes (`direct::forward_by_lanes`).
    DirectLanes,
    /// One GEMM per kernel tap over the padded plane (`taps`).
    Taps,
    /// Direct on the wide (padded-width) plane (`direct::forward_by_wide`).
    DirectWide,
    /// Samples across the lanes (`batch`); planned only with the pooling after it fused
    /// ([`plan_pooled`]), which runs it through its own entry point.
    #[cfg_attr(not(test), allow(dead_code))]
    BatchLanes,
    /// im2col + GEMM: any geometry.
    Im2col,
}

impl Forward {
    #[cfg(test)]
    pub(crate) const ALL: [Forward; 8] = [
        Forward::Winograd,
        Forward::Winograd4,
        Forward::RowsWinograd,
        Forward::DirectLanes,
        Forward::Taps,
        Forward::DirectWide,
        Forward::BatchLanes,
        Forward::Im2col,
    ];
}

/// A backward-pass algorithm (dW and db, and dX where asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backward {
    /// Samples across the lanes (`batch`).
    BatchLanes,
    /// Winograd F(2×2, 3×3) for dX and dW (`winograd`).
    Winograd,
    /// Winograd F(4×4, 3×3) for dX and dW (`winograd`).
    Winograd4,
    /// One GEMM per kernel tap (`taps`).
    Taps,
    /// dW and db at stride 2 by the lanes kernel (`direct::weight_grad_strided`), dX (where
    /// asked) by im2col's column GEMM from dY alone.
    StridedWeightGrad,
    /// dW by the direct kernel on the wide plane, dX as the direct forward pass of the
    /// transposed convolution: no column matrix at all.
    Direct,
    /// dW by the direct kernel on the wide plane, dX by im2col's column GEMM.
    DirectWeightGrad,
    /// im2col + GEMM: any geometry.
    Im2col,
}

impl Backward {
    #[cfg(test)]
    pub(crate) const ALL: [Backward; 8] = [
        Backward::BatchLanes,
        Backward::Winograd,
        Backward::Winograd4,
        Backward::Taps,
        Backward::StridedWeightGrad,
        Backward::Direct,
        Backward::DirectWeightGrad,
        Backward::Im2col,
    ];
}

/// Padding below the kernel size on every side: dX is then a correlation over the padded dY.
fn pad_below_kernel(g: &Conv2dGeometry) -> bool {
    let c = &g.cfg;
    let (kh, kw) = c.kernel;
    c.pad_begin.0 < kh && c.pad_end.0 < kh && c.pad_begin.1 < kw && c.pad_end.1 < kw
}

/// Width of the padded input, the wide plane's row length.
fn padded_width(g: &Conv2dGeometry) -> usize {
    g.in_w + g.cfg.pad_begin.1 + g.cfg.pad_end.1
}

// ---- What each kernel computes ----

/// The batch-lanes kernels: stride 1 without dilation or groups, padding below the kernel.
fn batch_fits(g: &Conv2dGeometry) -> bool {
    g.unit_stride() && g.cfg.groups == 1 && pad_below_kernel(g)
}

/// Winograd F(2×2, 3×3): 3×3 at stride 1 without dilation or groups, padded by at most 2.
fn winograd_fits(g: &Conv2dGeometry) -> bool {
    g.cfg.kernel == (3, 3) && g.unit_stride() && g.cfg.groups == 1 && pad_below_kernel(g)
}

/// Winograd along the rows: stride 2 both ways, no dilation, kernels 7 or 8 columns wide
/// (each phase 4 taps, or 3 and a zero), whole vectors of output channels per group.
fn rows_winograd_fits(g: &Conv2dGeometry) -> bool {
    let c = &g.cfg;
    c.stride == (2, 2)
        && c.dilation == (1, 1)
        && (7..=8).contains(&c.kernel.1)
        && (g.out_channels / c.groups).is_multiple_of(V)
}

/// The direct kernel with the channels across the lanes: whole vectors of output channels per
/// group, stride 1 or 2 both ways, no dilation.
fn lanes_fit(g: &Conv2dGeometry) -> bool {
    let c = &g.cfg;
    (g.out_channels / c.groups).is_multiple_of(V)
        && (c.stride == (1, 1) || c.stride == (2, 2))
        && c.dilation == (1, 1)
}

/// The tap GEMMs: stride 1 without dilation, one group.
fn taps_fit(g: &Conv2dGeometry) -> bool {
    g.unit_stride() && g.cfg.groups == 1
}

/// The lanes kernel of the weight gradient (`direct::weight_grad_lanes`): AVX-512 and whole
/// vectors of output channels.
pub(crate) fn weight_grad_lanes_fits(cout: usize, isa: Isa) -> bool {
    isa.is_avx512() && cout.is_multiple_of(V)
}

/// Whether `forward` can compute this convolution (whether or not it is planned): every
/// forward kernel has a build for each instruction set.
pub(crate) fn forward_fits(forward: Forward, g: &Conv2dGeometry) -> bool {
    match forward {
        Forward::Winograd | Forward::Winograd4 => winograd_fits(g),
        Forward::RowsWinograd => rows_winograd_fits(g),
        Forward::DirectLanes => lanes_fit(g),
        Forward::Taps => taps_fit(g),
        Forward::DirectWide => g.unit_stride(),
        Forward::BatchLanes => batch_fits(g),
        Forward::Im2col => true,
    }
}

/// Whether `backward` can compute this convolution's gradients on `isa`, with or without dX.
pub(crate) fn backward_fits(backward: Backward, g: &Conv2dGeometry, isa: Isa) -> bool {
    match backward {
        Backward::BatchLanes => batch_fits(g),
        Backward::Winograd | Backward::Winograd4 => winograd_fits(g),
        Backward::Taps => taps_fit(g),
        Backward::StridedWeightGrad => {
            g.cfg.stride == (2, 2)
                && g.cfg.dilation == (1, 1)
                && g.cfg.groups == 1
                && weight_grad_lanes_fits(g.out_channels, isa)
        }
        Backward::Direct => g.transposed().is_some(),
        Backward::DirectWeightGrad => g.unit_stride(),
        Backward::Im2col => true,
    }
}

/// Whether a convolution followed by `pool` (with or without a ReLU between) can run as one
/// pass of the batch-lanes kernels, for some batch sizes: 2×2 windows at stride 2 without
/// padding, inside the input (an odd last row or column is left out, as the pooling layer
/// does).
pub(crate) fn pool_fits(g: &Conv2dGeometry, pool: &Pool2dGeometry) -> bool {
    let c = &pool.cfg;
    batch_fits(g)
        && c.kernel == (2, 2)
        && c.stride == (2, 2)
        && c.padding == (0, 0)
        && (pool.channels, pool.in_h, pool.in_w) == (g.out_channels, g.out_h, g.out_w)
        && (pool.out_h, pool.out_w) == (g.out_h / 2, g.out_w / 2)
}

// ---- The choice ----

/// The batch-lanes kernels take a backward pass (and a forward pass with its pooling fused)
/// of `n` samples: they fit, there are samples for at least half the lanes, and at most 32
/// channels in and out. Best of 3 alternating runs at batch 32 against the kernels taken
/// otherwise, backward: LeNet's 6→16 5×5 on 14² 0.39 against 0.68 ms, 16→16 5×5 on 14² 1.04
/// against 1.48, 32→32 3×3 on 8² 0.60 against 1.06, 3→32 on 32² 1.31 against 1.43, 16→32 on
/// 28² 3.12 against 3.33. The forward pass alone loses at those shapes (0.6–0.7×; LeNet's
/// first layer 0.104 against 0.095 ms) and is left to the others.
fn batch_lanes_pay(g: &Conv2dGeometry, n: usize) -> bool {
    batch_fits(g) && n >= V / 2 && g.out_channels <= 32 && g.in_channels <= 32
}

/// Fewest channels in and out for Winograd's backward pass: below, the transforms cost more
/// than the multiplies saved. Best of 2–4 alternating runs of the backward pass (dX and dW)
/// against the kernels taken otherwise, ms: 64 → 64 on 56² at batch 32 50.8 against 64.8, at
/// batch 1 3.1 against 4.2; 32 → 64 on 14² at batch 64 3.8 against 7.3; 128 → 128 on 28² at
/// batch 8 11.6 against 16.1.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Where both run, Winograd's backward pass beats the batch-lanes one from 32 input channels,
/// or from a 32² output plane. Best of 7, ms, batch lanes against Winograd, AVX-512 (AVX2 in
/// brackets): 32→32 on 16² at batch 128 5.81 against 4.69 (8.19 against 6.07), on 8² at
/// batch 32 0.44 against 0.39, on 32² 5.83 against 4.55; 16→16 on 32² at batch 32 1.63
/// against 1.51 (2.26 against 2.06), on 56² 42.8 against 4.27; but 16→16 on 16² at batch
/// 128 1.60 against 2.13 (2.21 against 2.52), 16→32 on 16² 1.54 against 1.70.
const WINOGRAD_OVER_BATCH_MIN_CHANNELS: usize = 32;
const WINOGRAD_OVER_BATCH_MIN_PLANE: usize = 32 * 32;

/// Winograd's forward pass from 16 channels in and out and 8 samples (one sample is one
/// task). Best of 2 × 15 runs at batch 128, 2 threads, Intel Xeon (AVX-512), ms, against
/// the kernel planned before (the direct lanes one, F(2×2, 3×3) at 64 channels): 16→16 on
/// 32² F(4×4) 1.97–2.01 against 1.96–1.99, on 28² 1.31–1.38 against 1.53–1.55; 32→32 on 16²
/// 1.34 against 1.89–1.95; 64→64 on 8² 1.35–1.37 against F(2×2)'s 1.47–1.48, on 7² 1.31
/// against 1.46–1.55; 32→32 on 14² F(2×2) 1.27–1.33 against 1.45–1.47.
const WINOGRAD_FORWARD_MIN_CHANNELS: usize = 16;
const WINOGRAD_FORWARD_MIN_BATCH: usize = 8;

/// F(4×4, 3×3) unless its whole tiles cover this much more of the plane than F(2×2, 3×3)'s
/// (14²: 16² against 14², 1.31×): 32→32 on 14² at batch 128 forward F(4×4) 1.38 against
/// F(2×2)'s 1.27–1.33 ms, backward (dX and dW) 3.22–3.28 against 2.81–2.89. Where the tiles
/// fit as well, F(4×4) wins or ties (the forward measurements above; backward 16→16 on 32²
/// 4.46 against 6.56–6.85 ms, on 28² 2.93–3.02 against 3.95–3.99, 32→32 on 16² 3.32–3.44
/// against 4.77–4.92, 64→64 on 7² 4.02–4.28 against 4.18–4.54, on 8² 4.23–4.29 against
/// 4.16–4.22).
const WINOGRAD4_MAX_WASTE: f64 = 1.2;

/// Whether F(4×4, 3×3) takes this convolution rather than F(2×2, 3×3).
fn winograd4_pays(g: &Conv2dGeometry) -> bool {
    let cover = |m: usize| (g.out_h.next_multiple_of(m) * g.out_w.next_multiple_of(m)) as f64;
    cover(4) <= WINOGRAD4_MAX_WASTE * cover(2)
}

/// Longest reduction C_g·kh·kw that goes across the lanes: a block's weights (C_g·kh·kw × 2
/// vectors) then stay in L2. Best of 5–10 alternating runs against the path taken before,
/// batch 32–64, stride 2 (against im2col): 3→64 7×7 on 224² 7.8 against 10.4 ms, 64→128 3×3
/// on 56² 17.2 against 25.0, 128→256 on 28² 18.0 against 23.2, but 256→512 on 14² (2,304)
/// 24.4 against 18.0; stride 1 (against the tap GEMMs or the wide plane): 64→64 on 56² 29.0
/// against 33.7, on 28² 6.7 against 8.7, 128→128 on 14² 6.5 against 9.1, 32→64 on 14² 1.8
/// against 2.6.
const LANES_MAX_REDUCTION: usize = 1152;

/// At stride 1 one vector of output channels goes across the lanes from this reduction
/// C_g·kh·kw on. Best of 7, batch 32–128, AVX-512 Xeon, ms, lanes against the wide plane:
/// 16→16 3×3 on 32² at batch 128 2.25 against 3.06, on 16² 0.58 against 0.73, on 56² at
/// batch 32 1.59 against 2.08, 16→32 on 16² 0.50 against 0.67; but 3→16 (27) on 32² 1.11
/// against 0.67, and 8→16 (72) went either way in two runs (0.59 / 1.20 against 0.72).
const LANES_MIN_UNIT_STRIDE_REDUCTION: usize = 128;

/// The forward pass puts output channels across the lanes: with AVX-512 (32 registers),
/// whole vectors of channels per group and a reduction up to [`LANES_MAX_REDUCTION`]; at
/// stride 1 only with two vectors of channels per group, a reduction of at least
/// [`LANES_MIN_UNIT_STRIDE_REDUCTION`], or rows short enough that the wide plane wastes over
/// a fifth of its columns (LeNet's second layer).
fn lanes_pay(g: &Conv2dGeometry, isa: Isa) -> bool {
    let wp = padded_width(g);
    let opg = g.out_channels / g.cfg.groups;
    let shape = g.cfg.stride != (1, 1)
        || opg.is_multiple_of(2 * V)
        || g.k_per_group() >= LANES_MIN_UNIT_STRIDE_REDUCTION
        || 5 * (wp - g.out_w) > wp;
    isa.is_avx512() && lanes_fit(g) && g.k_per_group() <= LANES_MAX_REDUCTION && shape
}

/// Rows-Winograd where the direct lanes kernel would run (AVX-512, a reduction that keeps a
/// block's weights in L2). On the 7×7 stride-2 stem at batch 8, best of 8 alternating
/// processes: 5.56 against 6.33 ms (one thread, best of 4: 12.5 against 14.5 ms). With AVX2
/// only (where the direct lanes kernel does not run), the same reduction limit: the stem in
/// 6.2–6.6 ms against 9.7 ms by im2col + GEMM.
fn rows_winograd_pays(g: &Conv2dGeometry, isa: Isa) -> bool {
    rows_winograd_fits(g)
        && if isa.is_avx2() {
            g.k_per_group() <= LANES_MAX_REDUCTION
        } else {
            lanes_pay(g, isa)
        }
}

/// The tap GEMMs need 16 channels in and out (LeNet's 6→16 stays with the direct kernel and
/// im2col).
const TAPS_MIN_CHANNELS: usize = 16;

/// Forward by the tap GEMMs from this many multiply-adds per tap, C_in·C_out·H_out·Wp. Below
/// it the direct kernel wins (16→32 3×3 on 28², 0.43 M: 2.6 against 3.0 ms at batch 64);
/// above it the taps do (32→64 5×5 on 28², 1.8 M: 13.2 against 18.3 ms; 64→64 3×3 on 56²: 33
/// against 40 ms).
const TAPS_MIN_FORWARD_WORK: usize = 1 << 20;

/// Backward by the tap GEMMs from this many wide columns per tap, H_out·Wp. Every tap's GEMMs
/// are per sample, so tiny planes pay their call overhead nine times over (256→256 3×3 on 7²:
/// 42 against 27 ms by im2col, which batches 16 samples per GEMM); 28² and up win (64→64 3×3
/// on 28², batch 32: 19.6 against 26.1 ms; on 56²: 74 against 80 ms).
const TAPS_MIN_BACKWARD_COLS: usize = 256;

fn taps_eligible(g: &Conv2dGeometry) -> bool {
    taps_fit(g) && g.in_channels >= TAPS_MIN_CHANNELS && g.out_channels >= TAPS_MIN_CHANNELS
}

/// Longest reduction C_in·kh·kw whose stride-2 weight gradient goes to the strided lanes
/// kernel (dX, where asked, then comes from dY's columns alone: no column matrix of x). The
/// 224² stem's (147) was measured first. ResNet-20's stride-2 convolutions at batch 128, AMD
/// EPYC Zen 5, shares of the training step's profile of im2col, col2im, their copies, the
/// GEMMs and the lanes kernel: 18 % when every one went to im2col, 12 % with the 1×1s (16,
/// 32) and the 16→32 3×3 (144) here, 8.8 % with the 32→64 3×3 (288) too. With many channels
/// the im2col GEMM reads its operands from cache more often than this kernel does.
const STRIDED_GRAD_MAX_REDUCTION: usize = 320;

/// Fewest wide output columns per sample for the direct dW kernel: below, the per-block
/// overhead outweighs the multiply-adds.
const DIRECT_GRAD_MIN_COLS: usize = 128;

/// The direct dW kernel pays: stride 1 and wide columns enough.
fn direct_weight_grad_pays(g: &Conv2dGeometry) -> bool {
    g.unit_stride() && g.out_h * padded_width(g) >= DIRECT_GRAD_MIN_COLS
}

/// The forward pass of `n` samples of `g` on `isa`.
pub(crate) fn plan_forward(g: &Conv2dGeometry, n: usize, isa: Isa) -> Forward {
    if winograd_fits(g)
        && g.in_channels >= WINOGRAD_FORWARD_MIN_CHANNELS
        && g.out_channels >= WINOGRAD_FORWARD_MIN_CHANNELS
        && n >= WINOGRAD_FORWARD_MIN_BATCH
    {
        if winograd4_pays(g) {
            Forward::Winograd4
        } else {
            Forward::Winograd
        }
    } else if rows_winograd_pays(g, isa) {
        Forward::RowsWinograd
    } else if lanes_pay(g, isa) {
        Forward::DirectLanes
    } else if taps_eligible(g)
        && g.in_channels * g.out_channels * g.out_h * padded_width(g) >= TAPS_MIN_FORWARD_WORK
    {
        Forward::Taps
    } else if g.unit_stride() {
        // Where they run, the direct kernels beat im2col + GEMM at every shape measured (best
        // of 3 alternating runs): LeNet's first layer 0.19 against 0.33 ms, its second 0.29
        // against 0.60 ms, 32→64 3×3 on 14² at batch 64 2.7 against 3.1 ms.
        Forward::DirectWide
    } else {
        Forward::Im2col
    }
}

/// The direct forward kernel for `g` (a transposed convolution's dX in [`Backward::Direct`]):
/// across the lanes where that pays, else the wide plane. Needs stride 1.
pub(crate) fn plan_direct_forward(g: &Conv2dGeometry, isa: Isa) -> Forward {
    if lanes_pay(g, isa) {
        Forward::DirectLanes
    } else {
        Forward::DirectWide
    }
}

/// The backward pass of `n` samples of `g` on `isa`, with dX (`need_dx`) or without it (a
/// network's first layer).
pub(crate) fn plan_backward(g: &Conv2dGeometry, n: usize, isa: Isa, need_dx: bool) -> Backward {
    let winograd = winograd_fits(g)
        && g.in_channels >= WINOGRAD_MIN_CHANNELS
        && g.out_channels >= WINOGRAD_MIN_CHANNELS;
    let winograd_first = winograd
        && (g.in_channels >= WINOGRAD_OVER_BATCH_MIN_CHANNELS
            || g.out_plane() >= WINOGRAD_OVER_BATCH_MIN_PLANE);
    if batch_lanes_pay(g, n) && !winograd_first {
        Backward::BatchLanes
    } else if winograd {
        if winograd4_pays(g) {
            Backward::Winograd4
        } else {
            Backward::Winograd
        }
    } else if taps_eligible(g) && g.out_h * padded_width(g) >= TAPS_MIN_BACKWARD_COLS {
        Backward::Taps
    } else if backward_fits(Backward::StridedWeightGrad, g, isa)
        && g.k_per_group() <= STRIDED_GRAD_MAX_REDUCTION
    {
        Backward::StridedWeightGrad
    } else if direct_weight_grad_pays(g) {
        // Direct dW and direct dX: no column matrix at all. Best of 10 alternating runs:
        // LeNet's second layer forward + backward 1.45 → 1.29 ms.
        if need_dx && g.transposed().is_some() {
            Backward::Direct
        } else {
            Backward::DirectWeightGrad
        }
    } else {
        Backward::Im2col
    }
}

/// Whether a convolution and its 2×2 max pooling run as one pass for a batch of `n`: it
/// [`pool_fits`] and the batch-lanes kernels are the ones this convolution's backward pass
/// would run on.
pub(crate) fn plan_pooled(g: &Conv2dGeometry, pool: &Pool2dGeometry, n: usize) -> bool {
    pool_fits(g, pool) && batch_lanes_pay(g, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::Conv2dConfig;

    fn geom(c: usize, hw: usize, k: usize, ks: usize, stride: usize, pad: usize) -> Conv2dGeometry {
        let cfg = Conv2dConfig {
            kernel: (ks, ks),
            stride: (stride, stride),
            pad_begin: (pad, pad),
            pad_end: (pad, pad),
            ..Default::default()
        };
        Conv2dGeometry::new([c, hw, hw], k, cfg).unwrap()
    }

    /// The plan as a table: the lecture's and the benchmarks' convolutions, for AVX-512 and
    /// AVX2 (a plan is a pure function of its inputs, so both are checked on any CPU).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_plan_table() {
        use Backward as B;
        use Forward as F;
        let (a512, a2) = (Isa::Avx512, Isa::Avx2Fma);
        // (name, geometry, batch, forward on AVX-512, on AVX2, backward with dX on AVX-512,
        // on AVX2, backward without dX on AVX-512)
        let rows = [
            (
                "LeNet conv1",
                geom(1, 28, 6, 5, 1, 2),
                64,
                F::DirectWide,
                F::DirectWide,
                B::BatchLanes,
                B::BatchLanes,
                B::BatchLanes,
            ),
            (
                "LeNet conv2",
                geom(6, 14, 16, 5, 1, 0),
                64,
                F::DirectLanes,
                F::DirectWide,
                B::BatchLanes,
                B::BatchLanes,
                B::BatchLanes,
            ),
            (
                "7×7/2 stem",
                geom(3, 224, 64, 7, 2, 3),
                8,
                F::RowsWinograd,
                F::RowsWinograd,
                B::StridedWeightGrad,
                B::Im2col,
                B::StridedWeightGrad,
            ),
            (
                "64→64 3×3 56²",
                geom(64, 56, 64, 3, 1, 1),
                32,
                F::Winograd4,
                F::Winograd4,
                B::Winograd4,
                B::Winograd4,
                B::Winograd4,
            ),
            (
                "ResNet-20 stem",
                geom(3, 32, 16, 3, 1, 1),
                128,
                F::DirectWide,
                F::DirectWide,
                B::BatchLanes,
                B::BatchLanes,
                B::BatchLanes,
            ),
            (
                "ResNet-20 16→16 32²",
                geom(16, 32, 16, 3, 1, 1),
                128,
                F::Winograd4,
                F::Winograd4,
                B::Winograd4,
                B::Winograd4,
                B::Winograd4,
            ),
            (
                "ResNet-20 16→32 /2",
                geom(16, 32, 32, 3, 2, 1),
                128,
                F::DirectLanes,
                F::Im2col,
                B::StridedWeightGrad,
                B::Im2col,
                B::StridedWeightGrad,
            ),
            (
                "ResNet-20 1×1 16→32 /2",
                geom(16, 32, 32, 1, 2, 0),
                128,
                F::DirectLanes,
                F::Im2col,
                B::StridedWeightGrad,
                B::Im2col,
                B::StridedWeightGrad,
            ),
            (
                "ResNet-20 32→32 16²",
                geom(32, 16, 32, 3, 1, 1),
                128,
                F::Winograd4,
                F::Winograd4,
                B::Winograd4,
                B::Winograd4,
                B::Winograd4,
            ),
            (
                "ResNet-20 32→64 /2",
                geom(32, 16, 64, 3, 2, 1),
                128,
                F::DirectLanes,
                F::Im2col,
                B::StridedWeightGrad,
                B::Im2col,
                B::StridedWeightGrad,
            ),
            (
                "ResNet-20 64→64 8²",
                geom(64, 8, 64, 3, 1, 1),
                128,
                F::Winograd4,
                F::Winograd4,
                B::Winograd4,
                B::Winograd4,
                B::Winograd4,
            ),
            (
                "Fashion ResNet-20 32→32 14² (F(4×4)'s tiles would cover 16²)",
                geom(32, 14, 32, 3, 1, 1),
                128,
                F::Winograd,
                F::Winograd,
                B::Winograd,
                B::Winograd,
                B::Winograd,
            ),
        ];
        for (name, g, n, f512, f2, b512, b2, b512_no_dx) in rows {
            let got = (
                plan_forward(&g, n, a512),
                plan_forward(&g, n, a2),
                plan_backward(&g, n, a512, true),
                plan_backward(&g, n, a2, true),
                plan_backward(&g, n, a512, false),
            );
            assert_eq!(got, (f512, f2, b512, b2, b512_no_dx), "{name}");
            // Whatever is planned can run.
            assert!(forward_fits(got.0, &g) && forward_fits(got.1, &g), "{name}");
            assert!(backward_fits(got.2, &g, a512), "{name}");
            assert!(backward_fits(got.3, &g, a2), "{name}");
            assert!(backward_fits(got.4, &g, a512), "{name}");
        }
    }
}
