//! Full linear convolution of 2-D arrays by real FFT (`realfft`/`rustfft`), zero-padded to
//! 2·3·5·7-smooth sizes: O(N log N) instead of the direct O(N·K).
use super::signal::SignalFloat;
use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::RealFftPlanner;
use rustfft::FftPlanner;

/// Smallest n' ≥ n whose only prime factors are 2, 3, 5 and 7 (fast for the FFT).
pub fn next_fast_len(n: usize) -> usize {
    let mut m = n.max(1);
    loop {
        let mut r = m;
        for p in [2, 3, 5, 7] {
            while r.is_multiple_of(p) {
                r /= p;
            }
        }
        if r == 1 {
            return m;
        }
        m += 1;
    }
}

/// C = x ∗ k (full linear convolution) for row-major x (xr × xc) and k (kr × kc);
/// returns (xr + kr − 1) × (xc + kc − 1) values.
pub fn fft_convolve_full<T: SignalFloat>(
    x: &[T],
    (xr, xc): (usize, usize),
    k: &[T],
    (kr, kc): (usize, usize),
) -> Vec<T> {
    let (fr, fc) = (xr + kr - 1, xc + kc - 1);
    let (pr, pc) = (
        if fr == 1 { 1 } else { next_fast_len(fr) },
        next_fast_len(fc),
    );
    let hc = pc / 2 + 1; // complex columns of a real row transform
    let r2c = RealFftPlanner::<T>::new().plan_fft_forward(pc);
    let c2r = RealFftPlanner::<T>::new().plan_fft_inverse(pc);
    let mut planner = FftPlanner::<T>::new();
    let (col_fwd, col_inv) = (planner.plan_fft_forward(pr), planner.plan_fft_inverse(pr));

    // Spectrum of a zero-padded array, stored transposed: (hc, pr), so that the column
    // transforms run over contiguous memory. Only the array's own ar rows have row transforms
    // (the padding rows' are zero): for a 31×31 kernel that is 31 rows, not a buffer of the
    // padded size.
    let spectrum = |a: &[T], ar: usize, ac: usize| -> Vec<Complex<T>> {
        let mut rows = crate::alloc::filled(ar * hc, Complex::new(T::zero(), T::zero())); // (ar, hc)
        rows.par_chunks_mut(hc).enumerate().for_each_init(
            || (vec![T::zero(); pc], r2c.make_scratch_vec()),
            |(buf, scratch), (i, out)| {
                buf.fill(T::zero());
                buf[..ac].copy_from_slice(&a[i * ac..(i + 1) * ac]);
                r2c.process_with_scratch(buf, out, scratch)
                    .expect("buffer sizes match the plan");
            },
        );
        let mut t = crate::alloc::filled(hc * pr, Complex::new(T::zero(), T::zero())); // (hc, pr)
        t.par_chunks_mut(pr).enumerate().for_each(|(j, col)| {
            for (i, c) in col[..ar].iter_mut().enumerate() {
                *c = rows[i * hc + j];
            }
            if pr > 1 {
                col_fwd.process(col);
            }
        });
        t
    };
    let mut prod = spectrum(x, xr, xc); // (hc, pr), becomes the product in place
    let sk = spectrum(k, kr, kc);
    let scale = T::one() / T::of((pr * pc) as f64);
    prod.iter_mut()
        .zip(&sk)
        .for_each(|(a, b)| *a = *a * b * scale);
    drop(sk);
    if pr > 1 {
        prod.par_chunks_mut(pr).for_each(|c| col_inv.process(c));
    }
    let mut out = crate::alloc::filled(fr * fc, T::zero());
    out.par_chunks_mut(fc).enumerate().for_each_init(
        || {
            (
                vec![Complex::new(T::zero(), T::zero()); hc],
                vec![T::zero(); pc],
                c2r.make_scratch_vec(),
            )
        },
        |(row, buf, scratch), (i, o)| {
            for j in 0..hc {
                row[j] = prod[j * pr + i];
            }
            // The DC and Nyquist bins of a real signal's spectrum are real; drop rounding residue.
            row[0].im = T::zero();
            if pc % 2 == 0 {
                row[hc - 1].im = T::zero();
            }
            c2r.process_with_scratch(row, buf, scratch)
                .expect("buffer sizes match the plan");
            o.copy_from_slice(&buf[..fc]);
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_lengths() {
        assert_eq!(next_fast_len(542), 560);
        assert_eq!(next_fast_len(512), 512);
        assert_eq!(next_fast_len(11), 12);
        assert_eq!(next_fast_len(1), 1);
    }

    #[test]
    fn small_convolution() {
        // [1 2 3] ∗ [1 1] = [1 3 5 3]
        let c = fft_convolve_full(&[1.0f64, 2.0, 3.0], (1, 3), &[1.0, 1.0], (1, 2));
        let want = [1.0, 3.0, 5.0, 3.0];
        assert!(
            c.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{c:?}"
        );
    }
}
