//! 2-D cross-correlation (what deep nets call convolution), forward and backward, with stride,
//! asymmetric padding, dilation and groups: the public entry points. `plan` chooses the
//! algorithm; each kernel file computes one; `naive` is the reference they are tested against.
use crate::ops::pool::Pool2dGeometry;
use crate::ops::simd::Isa;
use crate::tensor::Float;

mod batch;
mod direct;
mod geometry;
mod im2col;
mod naive;
mod parallel;
mod plan;
mod rows_winograd;
mod taps;
mod winograd;

pub use geometry::{Conv2dConfig, Conv2dGeometry};
use im2col::WeightGrad;
pub use naive::{conv2d_backward_naive, conv2d_forward_naive};
pub use parallel::ConvScratch;
pub(crate) use plan::{Backward, Forward};

/// y = conv(x, w) + b for a batch of `n` samples.
/// x: (N, C_in, H, W), w: (C_out, C_in/groups, kh, kw), b: (C_out), y: (N, C_out, H_out, W_out).
pub fn conv2d_forward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    conv2d_forward_with(g, n, x, w, b, y, &mut ConvScratch::default())
}

/// [`conv2d_forward`] with scratch buffers kept by the caller across calls, by the algorithm
/// [`plan::plan_forward`] picks for this geometry, batch and CPU.
pub fn conv2d_forward_with<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    let isa = Isa::detect();
    let algo = plan::plan_forward(g, n, isa);
    run_forward(algo, isa, g, n, x, w, b, Epilogue::default(), y, scratch)
}

/// What a forward pass does to each output value after the bias: adds the value at the same
/// place of `add` (a residual block's shortcut), then a ReLU if `relu`. The lanes kernel
/// applies it in its stores, on the sums in registers, and Winograd's to each sample it has
/// just written, instead of passes of their own over the whole output; the other kernels
/// leave it to such a pass.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a, T> {
    /// (N, C_out, H_out, W_out), as y.
    pub add: Option<&'a [T]>,
    pub relu: bool,
}

impl<T> Default for Epilogue<'_, T> {
    fn default() -> Self {
        Epilogue {
            add: None,
            relu: false,
        }
    }
}

impl<T: Float> Epilogue<'_, T> {
    /// Applies it to `y`, the output's values from element `at` on.
    pub fn apply_at(&self, at: usize, y: &mut [T]) {
        let relu = |v: T| if v < T::zero() { T::zero() } else { v };
        match (self.add, self.relu) {
            (Some(a), true) => y
                .iter_mut()
                .zip(&a[at..])
                .for_each(|(v, &s)| *v = relu(*v + s)),
            (Some(a), false) => y.iter_mut().zip(&a[at..]).for_each(|(v, &s)| *v += s),
            (None, true) => y.iter_mut().for_each(|v| *v = relu(*v)),
            (None, false) => {}
        }
    }
}

/// A convolution's weights for many forward passes: the values, and what a kernel derives
/// from them alone (Winograd's transformed kernels), derived at the first call that needs it
/// and kept for the next (derived per call, it was 3.8 % of ResNet-20's inference).
pub struct PreparedWeights<T> {
    w: Vec<T>,                                  // (C_out, C_in/groups, kh, kw)
    winograd: Option<(winograd::Tile, Vec<T>)>, // the filtering, U (P, C_in', C_out')
}

impl<T: Float> PreparedWeights<T> {
    pub fn new(w: Vec<T>) -> Self {
        PreparedWeights { w, winograd: None }
    }
}

/// [`conv2d_forward_with`] by prepared weights w (of this geometry), followed by `epi` on
/// every output value.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_prepared<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &mut PreparedWeights<T>,
    b: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    let isa = Isa::detect();
    let algo = plan::plan_forward(g, n, isa);
    match winograd_tile(algo) {
        Some(tile) => {
            if w.winograd.as_ref().is_none_or(|(t, _)| *t != tile) {
                w.winograd = Some((tile, winograd::transform_forward(tile, g, &w.w)));
            }
            let u = w.winograd.as_ref().map_or(&[][..], |(_, u)| &u[..]);
            winograd::forward_transformed(isa, tile, g, n, x, u, b, epi, y, scratch)
        }
        None => run_forward(algo, isa, g, n, x, &w.w, b, epi, y, scratch),
    }
}

/// The filtering of a Winograd forward algorithm.
fn winograd_tile(algo: Forward) -> Option<winograd::Tile> {
    match algo {
        Forward::Winograd => Some(winograd::Tile::F2),
        Forward::Winograd4 => Some(winograd::Tile::F4),
        _ => None,
    }
}

/// The forward pass by `algo`, which must [`plan::forward_fits`] this geometry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_forward<T: Float>(
    algo: Forward,
    isa: Isa,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    debug_assert!(plan::forward_fits(algo, g), "{algo:?} for {g:?}");
    match algo {
        Forward::Winograd => {
            return winograd::forward(isa, winograd::Tile::F2, g, n, x, w, b, epi, y, scratch)
        }
        Forward::Winograd4 => {
            return winograd::forward(isa, winograd::Tile::F4, g, n, x, w, b, epi, y, scratch)
        }
        Forward::DirectLanes => return direct::forward_by_lanes(g, n, x, w, b, epi, y),
        Forward::RowsWinograd => rows_winograd::forward(g, n, x, w, b, y),
        Forward::Taps => taps::forward(g, n, x, w, b, y),
        Forward::DirectWide => direct::forward_by_wide(g, n, x, w, b, y),
        Forward::BatchLanes => batch::forward(isa, g, None, n, x, w, b, y, &mut [], scratch),
        Forward::Im2col => im2col::forward_im2col(g, n, x, w, b, y),
    }
    // The other kernels leave it to a pass of its own.
    epi.apply_at(0, &mut y[..n * g.out_len()]);
}

/// Whether a convolution followed by `pool` (with or without a ReLU between) can run as one
/// pass, [`conv2d_pool_forward`], for some batch sizes ([`plan::pool_fits`]).
pub fn conv2d_pool_fits(g: &Conv2dGeometry, pool: &Pool2dGeometry) -> bool {
    plan::pool_fits(g, pool)
}

/// Whether [`conv2d_pool_forward`] takes a batch of `n` ([`plan::plan_pooled`]).
pub fn conv2d_pool_applies(g: &Conv2dGeometry, pool: &Pool2dGeometry, n: usize) -> bool {
    plan::plan_pooled(g, pool, n)
}

/// Bytes of the winners' record of [`conv2d_pool_forward`] for `n` samples.
pub fn conv2d_pool_winners_len(g: &Conv2dGeometry, n: usize) -> usize {
    batch::PoolAfter::winners_len(g, n)
}

/// y = maxpool2x2(conv(x, w) + b), or maxpool2x2 then ReLU with `relu` (the same values as the
/// ReLU before the pooling), in one pass: y (N, C_out, H_out / 2, W_out / 2); `winners`
/// ([`conv2d_pool_winners_len`]) records each window's winner for [`conv2d_pool_backward`].
/// Needs [`conv2d_pool_applies`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_pool_forward<T: Float>(
    g: &Conv2dGeometry,
    relu: bool,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    winners: &mut [u8],
    scratch: &mut ConvScratch<T>,
) {
    let pool = Some(batch::PoolAfter { relu });
    batch::forward(Isa::detect(), g, pool, n, x, w, b, y, winners, scratch)
}

/// Gradients of [`conv2d_pool_forward`] from dy (N, C_out, H_out / 2, W_out / 2) and its
/// winners: writes dx (if asked), adds into dw and db.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_pool_backward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    winners: &[u8],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
) {
    batch::backward_pooled(Isa::detect(), g, n, x, w, dy, winners, dx, dw, db, scratch)
}

/// dy: (N, C_out, H_out, W_out), dx: (N, C_in, H, W), dw: (C_out, C_in/groups, kh, kw), db: (C_out).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let mut scratch = ConvScratch::default();
    conv2d_backward_with(g, n, x, w, dy, dx, dw, db, &mut scratch)
}

/// [`conv2d_backward`] with scratch buffers kept by the caller across calls, by the algorithm
/// [`plan::plan_backward`] picks for this geometry, batch, CPU and whether dX is asked for.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
) {
    let isa = Isa::detect();
    let algo = plan::plan_backward(g, n, isa, dx.is_some());
    run_backward(algo, isa, g, n, x, w, dy, dx, dw, db, scratch)
}

/// The backward pass by `algo`, which must [`plan::backward_fits`] this geometry on `isa`
/// (with dX if `dx` is given).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_backward<T: Float>(
    algo: Backward,
    isa: Isa,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
) {
    debug_assert!(plan::backward_fits(algo, g, isa), "{algo:?} for {g:?}");
    match algo {
        Backward::BatchLanes => batch::backward(isa, g, n, x, w, dy, dx, dw, db, scratch),
        Backward::Winograd => {
            winograd::backward(isa, winograd::Tile::F2, g, n, x, w, dy, dx, dw, db, scratch)
        }
        Backward::Winograd4 => {
            winograd::backward(isa, winograd::Tile::F4, g, n, x, w, dy, dx, dw, db, scratch)
        }
        Backward::Taps => {
            let lanes_dw = plan::weight_grad_lanes_fits(g.out_channels, isa);
            taps::backward(g, n, x, w, dy, dx, dw, db, scratch, lanes_dw)
        }
        Backward::StridedWeightGrad => {
            direct::weight_grad_strided(g, n, x, dy, dw, db, scratch);
            if dx.is_some() {
                // The dW that the column pass adds is all zeros: a buffer of its own.
                let mut none = vec![T::zero(); g.weight_len()];
                let by = WeightGrad::Elsewhere;
                im2col::backward_im2col(g, n, x, w, dy, dx, &mut none, None, scratch, by);
            }
        }
        Backward::Direct => {
            im2col::backward_im2col(g, n, x, w, dy, None, dw, db, scratch, WeightGrad::Direct);
            if let (Some(dx), Some(gt)) = (dx, g.transposed()) {
                let wt = im2col::transposed_weights(g, w);
                run_forward(
                    plan::plan_direct_forward(&gt, isa),
                    isa,
                    &gt,
                    n,
                    dy,
                    &wt,
                    None,
                    Epilogue::default(),
                    dx,
                    scratch,
                );
            }
        }
        Backward::DirectWeightGrad => {
            im2col::backward_im2col(g, n, x, w, dy, dx, dw, db, scratch, WeightGrad::Direct)
        }
        Backward::Im2col => {
            im2col::backward_im2col(g, n, x, w, dy, dx, dw, db, scratch, WeightGrad::Columns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::simd::test_isas;
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut impl Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// Random inputs of `n` samples for `g` (x, w, b and dY, drawn in that order) and what the
    /// naive kernels make of them: the reference the fast kernels are tested against.
    struct Reference {
        x: Vec<f64>,
        w: Vec<f64>,
        b: Vec<f64>,
        dy: Vec<f64>,
        y: Vec<f64>,
        dx: Vec<f64>,
        dw: Vec<f64>,
        db: Vec<f64>,
    }

    fn reference(rng: &mut impl Rng, g: &Conv2dGeometry, n: usize) -> Reference {
        let x = rand_vec(rng, n * g.in_len());
        let w = rand_vec(rng, g.weight_len());
        let b = rand_vec(rng, g.out_channels);
        let dy = rand_vec(rng, n * g.out_len());
        let mut y = vec![0.0; n * g.out_len()];
        conv2d_forward_naive(g, n, &x, &w, Some(&b), &mut y);
        let (mut dx, mut dw, mut db) = (
            vec![0.0; x.len()],
            vec![0.0; w.len()],
            vec![0.0; g.out_channels],
        );
        conv2d_backward_naive(g, n, &x, &w, &dy, &mut dx, &mut dw, &mut db);
        Reference {
            x,
            w,
            b,
            dy,
            y,
            dx,
            dw,
            db,
        }
    }

    #[test]
    fn lecture_5x5_input_2x2_filter_gives_4x4() {
        let x: Vec<f64> = (0..25).map(|v| v as f64).collect();
        let w = vec![1.0, 0.0, 0.0, -1.0];
        let cfg = Conv2dConfig {
            kernel: (2, 2),
            ..Default::default()
        };
        let g = Conv2dGeometry::new([1, 5, 5], 1, cfg).unwrap();
        assert_eq!((g.out_h, g.out_w), (4, 4));
        let mut y = vec![0.0; 16];
        conv2d_forward(&g, 1, &x, &w, None, &mut y);
        // x[i,j] − x[i+1,j+1] = −6 everywhere on a ramp with row step 5.
        assert!(y.iter().all(|&v| v == -6.0));
    }

    /// A backward path: one algorithm run on its own whatever the plan would pick, or the
    /// plan's own choice on this CPU.
    #[derive(Clone, Copy, Debug)]
    enum BackwardPath {
        Algo(Backward),
        Planned,
    }

    impl BackwardPath {
        #[allow(clippy::too_many_arguments)]
        fn run(
            self,
            g: &Conv2dGeometry,
            n: usize,
            x: &[f64],
            w: &[f64],
            dy: &[f64],
            dx: Option<&mut [f64]>,
            dw: &mut [f64],
            db: Option<&mut [f64]>,
            sc: &mut ConvScratch<f64>,
        ) {
            match self {
                BackwardPath::Algo(a) => {
                    run_backward(a, Isa::detect(), g, n, x, w, dy, dx, dw, db, sc)
                }
                BackwardPath::Planned => conv2d_backward_with(g, n, x, w, dy, dx, dw, db, sc),
            }
        }
    }

    /// In f32 the lanes kernel stores through a transpose in registers (with AVX-512), which
    /// the f64 cases of the test below never reach: every run length, 1 and 2 vectors of
    /// channels, both strides, partial last runs, with and without the epilogue.
    #[test]
    fn lanes_f32_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let cases = [
            // (C_in, H, W, C_out, kernel, stride, pad)
            (6, 14, 14, 16, 5, 1, 0),
            (3, 13, 13, 64, 7, 2, 3),
            (5, 11, 30, 32, 3, 1, 1),
            (4, 9, 23, 32, 3, 2, 1),
            (2, 8, 12, 16, 3, 1, 1),
            (2, 8, 20, 16, 3, 2, 2),
            // Runs of 16 (one vector of channels, AVX-512): whole rows of 32, and rows of 31
            // with a partial last run, stride 2.
            (2, 5, 32, 16, 3, 1, 1),
            (2, 5, 61, 16, 3, 2, 1),
        ];
        for (ci, h, w, co, k, s, p) in cases {
            let cfg = Conv2dConfig {
                kernel: (k, k),
                stride: (s, s),
                pad_begin: (p, p),
                pad_end: (p, p),
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            let n = 3;
            let x = rand_vec(&mut rng, n * g.in_len());
            let wt = rand_vec(&mut rng, g.weight_len());
            let b = rand_vec(&mut rng, co);
            let mut want = vec![0.0; n * g.out_len()];
            conv2d_forward_naive(&g, n, &x, &wt, Some(&b), &mut want);
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            // Without an epilogue, then a shortcut added and a ReLU in the same stores.
            let add = rand_vec(&mut rng, n * g.out_len());
            let add32 = f32s(&add);
            for epi in [
                Epilogue::default(),
                Epilogue {
                    add: Some(&add32[..]),
                    relu: true,
                },
            ] {
                let mut y = vec![f32::NAN; n * g.out_len()];
                let (x, wt, b) = (f32s(&x), f32s(&wt), f32s(&b));
                direct::forward_by_lanes(&g, n, &x, &wt, Some(&b), epi, &mut y);
                for (i, &a) in y.iter().enumerate() {
                    let b = match epi.add {
                        Some(_) => (want[i] + add[i]).max(0.0),
                        None => want[i],
                    };
                    assert!(
                        (a as f64 - b).abs() < 1e-4 * b.abs().max(1.0),
                        "{cfg:?} relu {} at {i}",
                        epi.relu
                    );
                }
            }
        }
    }

    /// The batch-lanes kernels in f32 (where AVX-512 packs by register transposes) against the
    /// naive f64 kernels: forward, dX, dW and db; planes wider than one transpose, partial groups.
    #[test]
    fn batch_f32_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let cases = [
            // (C_in, H, W, C_out, kernel, pad_begin, pad_end)
            (1, 28, 28, 6, 5, 2, 2),
            (6, 14, 14, 16, 5, 0, 0),
            (3, 9, 37, 5, 3, 1, 0),
            (2, 17, 5, 10, 4, 3, 1),
        ];
        let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let near = |a: &[f32], b: &[f64], what: &str| {
            for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
                assert!(
                    (a as f64 - b).abs() < 1e-4 * b.abs().max(1.0),
                    "{what} at {i}: {a} vs {b}"
                );
            }
        };
        for (ci, h, w, co, k, pb, pe) in cases {
            let cfg = Conv2dConfig {
                kernel: (k, k),
                pad_begin: (pb, pb),
                pad_end: (pe, pe),
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            for n in [3, 16, 21] {
                let Reference {
                    x,
                    w: wt,
                    b,
                    dy,
                    y: want,
                    dx: dx2,
                    dw: dw2,
                    db: db2,
                } = reference(&mut rng, &g, n);

                let (x, wt, b, dy) = (f32s(&x), f32s(&wt), f32s(&b), f32s(&dy));
                // This CPU's kernels, AVX2's and the baseline build's (the narrow blockings).
                for isa in test_isas() {
                    let mut sc = ConvScratch {
                        slots: vec![std::array::from_fn(|_| vec![f32::NAN; 1 << 18]); 2],
                    };
                    let mut y = vec![f32::NAN; n * g.out_len()];
                    let no_pool = &mut [];
                    batch::forward(
                        isa,
                        &g,
                        None,
                        n,
                        &x,
                        &wt,
                        Some(&b),
                        &mut y,
                        no_pool,
                        &mut sc,
                    );
                    near(&y, &want, &format!("forward {cfg:?} n {n}"));
                    let (mut dx1, mut dw1, mut db1) =
                        (vec![f32::NAN; x.len()], vec![0.0; wt.len()], vec![0.0; co]);
                    let (dxr, dbr) = (Some(&mut dx1[..]), Some(&mut db1[..]));
                    batch::backward(isa, &g, n, &x, &wt, &dy, dxr, &mut dw1, dbr, &mut sc);
                    near(&dx1, &dx2, &format!("dx {cfg:?} n {n}"));
                    near(&dw1, &dw2, &format!("dw {cfg:?} n {n}"));
                    near(&db1, &db2, &format!("db {cfg:?} n {n}"));
                }
            }
        }
    }

    /// The Winograd kernels against the naive ones, in f64 (to rounding) and in f32 with each
    /// instruction set's build, both filterings: forward, dX, dW and db. Channels that fill no
    /// register block, odd and asymmetric planes (no whole number of tiles), padding 0–2 on
    /// each side, several blocks of tile rows, NaN scratch (which the kernels must not read).
    #[test]
    fn winograd_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let cases = [
            // (C_in, H, W, C_out, pad_begin, pad_end)
            (16, 8, 8, 16, (1, 1), (1, 1)),
            (17, 9, 13, 19, (2, 0), (0, 1)),
            (20, 5, 6, 33, (0, 0), (0, 0)),
            (24, 30, 31, 18, (1, 2), (2, 1)),
            (64, 28, 28, 64, (1, 1), (1, 1)),
        ];
        for (ci, h, w, co, pb, pe) in cases {
            let cfg = Conv2dConfig {
                pad_begin: pb,
                pad_end: pe,
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            assert!(matches!(
                plan::plan_backward(&g, 3, Isa::detect(), true),
                Backward::Winograd | Backward::Winograd4
            ));
            for n in [1, 3] {
                let Reference {
                    x,
                    w: wt,
                    b,
                    dy,
                    y: want,
                    dx: dx2,
                    dw: dw2,
                    db: db2,
                } = reference(&mut rng, &g, n);
                let what = |part: &str| format!("{part} {cfg:?} C {ci}→{co} {h}×{w} n {n}");

                let check =
                    |what: &dyn Fn(&str) -> String,
                     isa: Isa,
                     tol: f64,
                     (y, dx, dw, db): (&[f64], &[f64], &[f64], &[f64])| {
                        // Within `tol` of the largest value (or of 1): F(4×4, 3×3)'s transforms
                        // scale by up to 8, so its f32 error follows the tile's largest terms
                        // (worst seen 7.4e-6 of the largest, F(2×2, 3×3)'s 3.7e-7).
                        let near = |a: &[f64], b: &[f64], part: &str| {
                            let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                            for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
                                assert!(
                                    (a - b).abs() < tol * scale,
                                    "{} at {i}: {a} vs {b} ({})",
                                    what(part),
                                    isa_name(isa)
                                );
                            }
                        };
                        near(y, &want, "forward");
                        near(dx, &dx2, "dx");
                        near(dw, &dw2, "dw");
                        near(db, &db2, "db");
                    };
                for (isa, tile) in test_isas().into_iter().flat_map(|i| TILES.map(|t| (i, t))) {
                    let what = |part: &str| format!("{} {tile:?}", what(part));
                    let (y, dx, dw, db) =
                        winograd_pass(isa, tile, &g, n, &x, &wt, &b, &dy, f64::NAN);
                    check(&what, isa, 1e-10, (&y, &dx, &dw, &db));
                    let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                    let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
                    let (x, wt, b, dy) = (f32s(&x), f32s(&wt), f32s(&b), f32s(&dy));
                    let (y, dx, dw, db) =
                        winograd_pass(isa, tile, &g, n, &x, &wt, &b, &dy, f32::NAN);
                    let (y, dx, dw, db) = (f64s(y), f64s(dx), f64s(dw), f64s(db));
                    check(&what, isa, 2e-5, (&y, &dx, &dw, &db));
                }
            }
        }
    }

    /// The stride-2 weight gradient without dX (the lanes kernel over the padded input, taken
    /// where this CPU has AVX-512) against the naive kernel, in f64 and f32: the 7×7 stem's
    /// shape on a small plane, odd planes and asymmetric padding, non-square kernels, one and
    /// two vectors of output channels, scratch left dirty by a first call.
    #[test]
    fn strided_weight_grad_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
        let cases = [
            // (C_in, H, W, C_out, kernel, pad_begin, pad_end)
            (3, 30, 30, 64, (7, 7), (3, 3), (3, 3)),
            (1, 17, 23, 16, (3, 5), (1, 0), (0, 2)),
            (4, 12, 9, 32, (4, 4), (0, 1), (1, 0)),
            // In tiles of output rows (f64: 16 of the 22 rows, then 6), by kernel rows.
            (2, 44, 250, 32, (7, 7), (3, 3), (3, 3)),
        ];
        for (ci, h, w, co, kernel, pb, pe) in cases {
            let cfg = Conv2dConfig {
                kernel,
                stride: (2, 2),
                pad_begin: pb,
                pad_end: pe,
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            #[cfg(target_arch = "x86_64")]
            if Isa::detect() == Isa::Avx512 {
                assert!(plan::backward_fits(
                    Backward::StridedWeightGrad,
                    &g,
                    Isa::detect()
                ));
            }
            for n in [1, 5] {
                let Reference {
                    x,
                    w: wt,
                    dy,
                    dw: dw0,
                    db: db0,
                    ..
                } = reference(&mut rng, &g, n);
                let near = |got: &[f64], want: &[f64], tol: f64, part: &str| {
                    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
                        assert!(
                            (a - b).abs() < tol * b.abs().max(1.0),
                            "{part} {cfg:?} C {ci}→{co} {h}×{w} n {n} at {i}: {a} vs {b}"
                        );
                    }
                };
                let mut scratch = ConvScratch::default();
                for _ in 0..2 {
                    let (mut dw, mut db) = (vec![0.0; wt.len()], vec![0.0; co]);
                    conv2d_backward_with(
                        &g,
                        n,
                        &x,
                        &wt,
                        &dy,
                        None,
                        &mut dw,
                        Some(&mut db),
                        &mut scratch,
                    );
                    near(&dw, &dw0, 1e-10, "dw");
                    near(&db, &db0, 1e-10, "db");
                }
                let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                let (mut dw, mut db) = (vec![0.0f32; wt.len()], vec![0.0f32; co]);
                let mut scratch = ConvScratch::default();
                for _ in 0..2 {
                    dw.fill(0.0);
                    db.fill(0.0);
                    let (xs, ws, dys) = (f32s(&x), f32s(&wt), f32s(&dy));
                    conv2d_backward_with(
                        &g,
                        n,
                        &xs,
                        &ws,
                        &dys,
                        None,
                        &mut dw,
                        Some(&mut db),
                        &mut scratch,
                    );
                }
                let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
                near(&f64s(&dw), &dw0, 1e-4, "dw f32");
                near(&f64s(&db), &db0, 1e-4, "db f32");
            }
        }
    }

    fn isa_name(isa: Isa) -> &'static str {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "AVX-512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "AVX2",
            Isa::Baseline => "baseline",
        }
    }

    /// Both Winograd filterings.
    const TILES: [winograd::Tile; 2] = [winograd::Tile::F2, winograd::Tile::F4];

    /// Winograd forward and backward (dX by `tile`) on scratch and outputs filled with `fill`;
    /// backward once more without dX, which must give the same dW and db.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn winograd_pass<T: Float>(
        isa: Isa,
        tile: winograd::Tile,
        g: &Conv2dGeometry,
        n: usize,
        x: &[T],
        w: &[T],
        b: &[T],
        dy: &[T],
        fill: T,
    ) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
        let mut sc = ConvScratch {
            slots: vec![std::array::from_fn(|_| vec![fill; 1 << 20]); 2],
        };
        let mut y = vec![fill; n * g.out_len()];
        winograd::forward(
            isa,
            tile,
            g,
            n,
            x,
            w,
            Some(b),
            Epilogue::default(),
            &mut y,
            &mut sc,
        );
        let (mut dx, mut dw, mut db) = (
            vec![fill; x.len()],
            vec![T::zero(); w.len()],
            vec![T::zero(); g.out_channels],
        );
        let (dxr, dbr) = (Some(&mut dx[..]), Some(&mut db[..]));
        winograd::backward(isa, tile, g, n, x, w, dy, dxr, &mut dw, dbr, &mut sc);
        // Without dX, dW reads dY from its own packing, not from the input gradient's padded
        // one: the same values in the same order, bit for bit.
        let (mut dw_alone, mut db_alone) = (vec![T::zero(); w.len()], vec![T::zero(); db.len()]);
        let dbr = Some(&mut db_alone[..]);
        winograd::backward(isa, tile, g, n, x, w, dy, None, &mut dw_alone, dbr, &mut sc);
        assert!(
            dw_alone == dw && db_alone == db,
            "dW without dX {tile:?} {g:?}"
        );
        (y, dx, dw, db)
    }

    /// Convolution → [ReLU] → 2×2 max pooling in one pass against the three run apart: the
    /// same convolution kernel, then the pooling and ReLU kernels of the layers, bit for bit
    /// forward; backward against the naive kernels fed the pooling's scatter. A channel of zero
    /// weights makes every window a tie (and its bias decides the ReLU); NaN scratch.
    #[test]
    fn pooled_pass_matches_conv_relu_pool() {
        use crate::ops::activation::{self, Activation};
        use crate::ops::pool::{self, Pool2dConfig};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let cases = [
            // (C_in, H, W, C_out, kernel, pad): LeNet's two; odd conv outputs (7×9).
            (1, 28, 28, 6, 5, 2),
            (6, 14, 14, 16, 5, 0),
            (2, 9, 11, 5, 3, 0),
        ];
        for (ci, h, w, co, k, p) in cases {
            let cfg = Conv2dConfig {
                kernel: (k, k),
                pad_begin: (p, p),
                pad_end: (p, p),
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            let pg = Pool2dGeometry::new([co, g.out_h, g.out_w], Pool2dConfig::default()).unwrap();
            assert!(conv2d_pool_fits(&g, &pg));
            for (n, relu) in [(9, true), (16, false), (21, true)] {
                let x = rand_vec(&mut rng, n * g.in_len());
                let mut wt = rand_vec(&mut rng, g.weight_len());
                let mut b = rand_vec(&mut rng, co);
                let per = g.weight_len() / co;
                wt[..per].fill(0.0);
                b[0] = if relu { -0.5 } else { 0.25 };
                if co > 1 {
                    wt[per..2 * per].fill(0.0);
                    b[1] = 0.5;
                }
                let nan = || ConvScratch {
                    slots: vec![std::array::from_fn(|_| vec![f64::NAN; 1 << 18]); 2],
                };
                // The three apart.
                let mut yc = vec![0.0; n * g.out_len()];
                let isa0 = Isa::detect();
                batch::forward(
                    isa0,
                    &g,
                    None,
                    n,
                    &x,
                    &wt,
                    Some(&b),
                    &mut yc,
                    &mut [],
                    &mut nan(),
                );
                let q = n * co * pg.out_h * pg.out_w;
                let (mut want, mut arg) = (vec![0.0; q], vec![0u32; q]);
                pool::maxpool2d_forward(&pg, &yc, &mut want, &mut arg);
                if relu {
                    activation::forward_inplace(Activation::Relu, &mut want);
                }
                // In one pass: this CPU's kernels, AVX2's and the baseline build's.
                for isa in test_isas() {
                    let mut y = vec![f64::NAN; q];
                    let mut win = vec![9u8; conv2d_pool_winners_len(&g, n)];
                    let mut sc = nan();
                    let pool = Some(batch::PoolAfter { relu });
                    batch::forward(
                        isa,
                        &g,
                        pool,
                        n,
                        &x,
                        &wt,
                        Some(&b),
                        &mut y,
                        &mut win,
                        &mut sc,
                    );
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    if isa == Isa::detect() {
                        assert_eq!(bits(&y), bits(&want), "forward {cfg:?} n {n} relu {relu}");
                    } else {
                        let close = |a: &[f64], b: &[f64]| {
                            a.iter()
                                .zip(b)
                                .all(|(a, b)| (a - b).abs() < 1e-12 * b.abs().max(1.0))
                        };
                        assert!(
                            close(&y, &want),
                            "baseline forward {cfg:?} n {n} relu {relu}"
                        );
                    }

                    let dy = rand_vec(&mut rng, q);
                    let mut dyc = dy.clone();
                    if relu {
                        activation::backward_inplace(Activation::Relu, &want, &mut dyc);
                    }
                    let mut dyconv = vec![0.0; n * g.out_len()];
                    pool::maxpool2d_backward(&pg, &dyc, &arg, &mut dyconv);
                    let (mut dx2, mut dw2, mut db2) =
                        (vec![0.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                    conv2d_backward_naive(&g, n, &x, &wt, &dyconv, &mut dx2, &mut dw2, &mut db2);
                    let (mut dx1, mut dw1, mut db1) =
                        (vec![9.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                    let (dxr, dbr) = (Some(&mut dx1[..]), Some(&mut db1[..]));
                    batch::backward_pooled(
                        isa, &g, n, &x, &wt, &dy, &win, dxr, &mut dw1, dbr, &mut sc,
                    );
                    let close = |a: &[f64], b: &[f64]| {
                        a.iter()
                            .zip(b)
                            .all(|(a, b)| (a - b).abs() < 1e-12 * b.abs().max(1.0))
                    };
                    assert!(close(&dx1, &dx2), "dx {cfg:?} n {n} relu {relu}");
                    assert!(close(&dw1, &dw2), "dw {cfg:?} n {n} relu {relu}");
                    assert!(close(&db1, &db2), "db {cfg:?} n {n} relu {relu}");
                }
            }
        }
    }

    #[test]
    fn fast_matches_naive_for_every_option() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let cases = [
            // (C_in, H, W, C_out, kernel, stride, dilation, pad_begin, pad_end, groups)
            (1, 5, 5, 1, (2, 2), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            (3, 9, 7, 4, (3, 3), (2, 1), (1, 1), (1, 1), (1, 1), 1),
            (4, 8, 8, 6, (3, 2), (1, 2), (2, 1), (2, 0), (2, 1), 2),
            (4, 6, 7, 4, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 4),
            (2, 7, 6, 3, (4, 4), (1, 1), (1, 1), (1, 1), (2, 2), 1),
            (2, 10, 11, 2, (3, 5), (3, 2), (2, 2), (3, 1), (0, 4), 1),
            // A plane large enough to go in row tiles (13 of 4 rows, the last of 2).
            (64, 99, 93, 2, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1),
            // LeNet's two convolutions; a kernel as wide as the padded input; many channels.
            (1, 28, 28, 6, (5, 5), (1, 1), (1, 1), (2, 2), (2, 2), 1),
            (6, 14, 14, 16, (5, 5), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            (3, 4, 9, 5, (2, 11), (1, 1), (1, 1), (0, 1), (1, 1), 1),
            (9, 5, 6, 7, (1, 1), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            // Enough channels for the tap GEMMs: asymmetric padding, a 1×1 kernel.
            (16, 9, 11, 17, (3, 3), (1, 1), (1, 1), (1, 0), (2, 1), 1),
            (20, 6, 5, 16, (2, 4), (1, 1), (1, 1), (0, 2), (1, 1), 1),
            (16, 4, 6, 16, (1, 1), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            // Channels across the lanes: 2 groups of 16, rows of 9 in runs of 10; at stride
            // 2 (rows of 5 in runs of 8); 2 vectors of channels (stride 1 and 2, asymmetric
            // padding, a 7×7 stride-2 stem).
            (4, 7, 9, 32, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 2),
            (4, 9, 9, 32, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 2),
            (5, 6, 9, 32, (3, 3), (1, 1), (1, 1), (1, 0), (0, 2), 1),
            (3, 12, 17, 32, (5, 5), (2, 2), (1, 1), (2, 1), (1, 2), 1),
            (3, 13, 13, 64, (7, 7), (2, 2), (1, 1), (3, 3), (3, 3), 1),
            // Forward across the lanes (2 vectors, rows of 20 in runs of 10), backward by tap GEMMs.
            (32, 12, 20, 32, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
            // The tap GEMMs' dW by kernel rows in tiles of output rows (f64: 32 of 40, then 8).
            (16, 40, 64, 32, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
            // 1-D Winograd along the rows at stride 2: 8 columns wide (no zero tap), rows of
            // 11 and 13 (a tile cut short, runs of 8 and 10 tiles), asymmetric and no
            // padding, 2 groups of 16, a kernel of 3 rows.
            (2, 15, 24, 32, (5, 8), (2, 2), (1, 1), (1, 0), (2, 3), 1),
            (4, 9, 27, 32, (7, 7), (2, 2), (1, 1), (0, 2), (1, 0), 2),
            (3, 20, 32, 16, (3, 7), (2, 2), (1, 1), (0, 0), (0, 0), 1),
            (1, 8, 120, 32, (7, 7), (2, 2), (1, 1), (3, 3), (3, 3), 1),
            // ResNet's stride-2 convolutions: dW by the strided lanes kernel, dX from dY's
            // columns (a 3×3 on an odd plane, a 1×1 projection).
            (16, 9, 11, 32, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1),
            (16, 9, 9, 32, (1, 1), (2, 2), (1, 1), (0, 0), (0, 0), 1),
            // Winograd forward as planned, F(4×4, 3×3) on 8², F(2×2, 3×3) on 6² (where
            // F(4×4)'s tiles would cover 8²): prepared weights keep its transform.
            (64, 8, 8, 64, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
            (16, 6, 6, 16, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
        ];
        // Every algorithm of the plan's enums that can run each case on this CPU, and the
        // plan's own choice.
        let isa = Isa::detect();
        // Relative to the sum of the terms' magnitudes (`mag`: the naive kernel on |x|, |w|,
        // |dy|), which bounds the error of any order of summation: a sum of thousands of terms
        // that cancel (the tiled case's dW, 48,640 terms) can end far smaller than its rounding
        // error in another order, while a term missing or added twice moves it by ~mag / n.
        let close = |a: &[f64], b: &[f64], mag: &[f64]| {
            a.iter()
                .zip(b)
                .zip(mag)
                .all(|((a, b), m)| (a - b).abs() < 1e-12 * m.max(1.0))
        };
        let abs = |v: &[f64]| v.iter().map(|v| v.abs()).collect::<Vec<f64>>();
        for (ci, h, w, co, k, s, d, pb, pe, groups) in cases {
            let cfg = Conv2dConfig {
                kernel: k,
                stride: s,
                dilation: d,
                pad_begin: pb,
                pad_end: pe,
                groups,
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            // 1, a part of a parallel task, and more than one task (conv_direct's CHUNK is 8).
            for n in [1, 5, 19] {
                let x = rand_vec(&mut rng, n * g.in_len());
                let wt = rand_vec(&mut rng, g.weight_len());
                let b = rand_vec(&mut rng, co);
                let mut want = vec![0.0; n * g.out_len()];
                conv2d_forward_naive(&g, n, &x, &wt, Some(&b), &mut want);
                let mut y_mag = vec![0.0; n * g.out_len()];
                conv2d_forward_naive(&g, n, &abs(&x), &abs(&wt), Some(&abs(&b)), &mut y_mag);
                // Each epilogue: none, a ReLU, a shortcut added then a ReLU, a shortcut alone.
                let add = rand_vec(&mut rng, n * g.out_len());
                let epis = [
                    (None, false),
                    (None, true),
                    (Some(&add[..]), true),
                    (Some(&add[..]), false),
                ];
                let paths = Forward::ALL.into_iter().map(Some).chain([None]);
                for algo in paths.filter(|a| a.is_none_or(|a| plan::forward_fits(a, &g))) {
                    for (add, relu) in epis {
                        let epi = Epilogue { add, relu };
                        let (mut want, mut mag) = (want.clone(), y_mag.clone());
                        if let Some(a) = add {
                            want.iter_mut().zip(a).for_each(|(v, s)| *v += s);
                            mag.iter_mut().zip(a).for_each(|(v, s)| *v += s.abs());
                        }
                        if relu {
                            want.iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                        // NaN first: outputs go into recycled buffers, so every value must be
                        // written.
                        let mut y = vec![f64::NAN; n * g.out_len()];
                        let sc = &mut ConvScratch::default();
                        match algo {
                            Some(a) => {
                                run_forward(a, isa, &g, n, &x, &wt, Some(&b), epi, &mut y, sc)
                            }
                            None => {
                                let pw = &mut PreparedWeights::new(wt.clone());
                                conv2d_forward_prepared(&g, n, &x, pw, Some(&b), epi, &mut y, sc);
                                // Again with what the first call derived from the weights.
                                let again = &mut vec![f64::NAN; y.len()];
                                conv2d_forward_prepared(&g, n, &x, pw, Some(&b), epi, again, sc);
                                assert_eq!(&y, again);
                            }
                        }
                        assert!(close(&y, &want, &mag), "{algo:?} forward {cfg:?} {epi:?}");
                    }
                }

                let dy = rand_vec(&mut rng, n * g.out_len());
                let (mut dx2, mut dw2, mut db2) =
                    (vec![0.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                conv2d_backward_naive(&g, n, &x, &wt, &dy, &mut dx2, &mut dw2, &mut db2);
                let (mut dx_mag, mut dw_mag, mut db_mag) =
                    (vec![0.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                let (xa, wa, dya) = (abs(&x), abs(&wt), abs(&dy));
                conv2d_backward_naive(&g, n, &xa, &wa, &dya, &mut dx_mag, &mut dw_mag, &mut db_mag);
                let paths = Backward::ALL.map(BackwardPath::Algo);
                for path in paths.into_iter().chain([BackwardPath::Planned]) {
                    let fits = match path {
                        BackwardPath::Algo(a) => plan::backward_fits(a, &g, isa),
                        BackwardPath::Planned => true,
                    };
                    // Scratch full of NaN: a path must never read what it did not write.
                    let mut sc = ConvScratch {
                        slots: vec![std::array::from_fn(|_| vec![f64::NAN; 1 << 18]); 2],
                    };
                    if fits {
                        // dx starts as junk (it is overwritten); dw and db are added into.
                        let (mut dx1, mut dw1, mut db1) =
                            (vec![9.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                        let (dx1r, dw1r, db1r) =
                            (Some(&mut dx1[..]), &mut dw1[..], Some(&mut db1[..]));
                        path.run(&g, n, &x, &wt, &dy, dx1r, dw1r, db1r, &mut sc);
                        assert!(
                            close(&dx1, &dx2, &dx_mag)
                                && close(&dw1, &dw2, &dw_mag)
                                && close(&db1, &db2, &db_mag),
                            "{path:?} backward {cfg:?}"
                        );
                    }
                    if fits {
                        // Without dx (a network's first layer) the parameter gradients are the
                        // same; the scratch of the call before is reused.
                        let (mut dw3, mut db3) = (vec![0.5; wt.len()], vec![0.5; co]);
                        path.run(&g, n, &x, &wt, &dy, None, &mut dw3, Some(&mut db3), &mut sc);
                        assert!(
                            close(&dw3, &dw2, &dw_mag) && close(&db3, &db2, &db_mag),
                            "{path:?} no-dx {cfg:?}"
                        );
                    }
                }
            }
        }
    }
}
