//! How the convolution kernels share work between threads: scratch buffers per thread, runs
//! of sample chunks per thread, and the partial gradients added in chunk order.
use super::geometry::Conv2dGeometry;
use crate::ops::gemm::Par;
use crate::ops::reduce::sum_f64;
use crate::tensor::Float;
use rayon::prelude::*;

/// Whether the GEMMs of a convolution over `n` samples in `tasks` parallel tasks use the threads
/// themselves: only when there are too few tasks to keep every thread busy and enough work.
pub(crate) fn gemm_par(g: &Conv2dGeometry, n: usize, tasks: usize) -> Par {
    if tasks < rayon::current_num_threads() && n * g.out_len() * g.k_per_group() >= 1 << 22 {
        Par::Rayon
    } else {
        Par::Seq
    }
}

/// Scratch buffers of the backward pass, one set per worker thread, kept across calls (a layer
/// owns one) so that a training step neither allocates nor clears them: every buffer is fully
/// overwritten before it is read.
pub struct ConvScratch<T> {
    // Per thread, three buffers. im2col path: cols (C_in/groups·kh·kw, chunk·tile) or, with
    // the direct dW, that kernel's padded inputs, wide dY and lane sums; dY gathered
    // (opg, chunk·tile); dcols (C_in/groups·kh·kw, chunk·tile). Tap GEMMs: see conv_taps.
    pub(super) slots: Vec<[Vec<T>; 3]>,
}

impl<T> Default for ConvScratch<T> {
    fn default() -> Self {
        ConvScratch { slots: Vec::new() }
    }
}

impl<T: Float> ConvScratch<T> {
    /// At least `nt` sets, each buffer at least its entry of `sizes` long.
    fn grow(&mut self, nt: usize, sizes: [usize; 3]) {
        if self.slots.len() < nt {
            self.slots.resize_with(nt, Default::default);
        }
        for slot in &mut self.slots {
            for (buf, &size) in slot.iter_mut().zip(&sizes) {
                if buf.len() < size {
                    buf.resize(size, T::zero());
                }
            }
        }
    }
}

/// A chunk's partial bias gradient (C_out) in f64, zero; empty where db is not asked for (a
/// layer without bias), which makes [`add_bias_sums`] free.
pub(super) fn bias_sums(channels: usize, want: bool) -> Vec<f64> {
    vec![0.0; if want { channels } else { 0 }]
}

/// Adds each dY plane of the samples `dys` (S, C_out, plane) into `sums` (C_out), sample by
/// sample: the order [`backward_chunks`] reduces in. Nothing if `sums` is empty.
pub(super) fn add_bias_sums<T: Float>(sums: &mut [f64], dys: &[T], plane: usize) {
    if sums.is_empty() {
        return;
    }
    for ds in dys.chunks_exact(sums.len() * plane) {
        for (b, dc) in sums.iter_mut().zip(ds.chunks_exact(plane)) {
            *b += sum_f64(dc);
        }
    }
}

/// Runs `work(scratch set, first sample, samples, dx of those samples)` on every chunk of
/// `chunk` samples and adds the partial (dw, db) it returns into dw and db in chunk order, so
/// the result is bit-identical whatever the thread count. Each thread takes a contiguous run
/// of chunks and one scratch set, its buffers grown to at least `sizes`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_chunks<T, F>(
    n: usize,
    chunk: usize,
    in_len: usize,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
    sizes: [usize; 3],
    work: F,
) where
    T: Float,
    F: Fn(&mut [Vec<T>; 3], usize, usize, Option<&mut [T]>) -> (Vec<T>, Vec<T>) + Sync,
{
    let chunks = n.div_ceil(chunk);
    if chunks == 0 {
        return;
    }
    // Thread t takes chunks first(t)..first(t + 1).
    let nt = rayon::current_num_threads().clamp(1, chunks);
    let first = |t: usize| t * chunks / nt;
    scratch.grow(nt, sizes);
    let mut dx_runs: Vec<Option<&mut [T]>> = Vec::with_capacity(nt);
    match dx {
        Some(dx) => {
            let mut rest = &mut dx[..n * in_len];
            for t in 0..nt {
                let len = ((first(t + 1) * chunk).min(n) - first(t) * chunk) * in_len;
                let (run, tail) = std::mem::take(&mut rest).split_at_mut(len);
                dx_runs.push(Some(run));
                rest = tail;
            }
        }
        None => dx_runs.resize_with(nt, || None),
    }
    let per_thread: Vec<Vec<(Vec<T>, Vec<T>)>> = scratch.slots[..nt]
        .par_iter_mut()
        .zip(dx_runs.par_iter_mut())
        .enumerate()
        .map(|(t, (bufs, run))| {
            (first(t)..first(t + 1))
                .map(|ci| {
                    let s0 = ci * chunk;
                    let s = chunk.min(n - s0);
                    let d = run.as_deref_mut().map(|r| {
                        let at = (s0 - first(t) * chunk) * in_len;
                        &mut r[at..at + s * in_len]
                    });
                    work(bufs, s0, s, d)
                })
                .collect()
        })
        .collect();
    // Reduce in chunk order: bit-identical whatever the thread count.
    let mut db = db;
    for (pdw, pdb) in per_thread.into_iter().flatten() {
        dw.iter_mut().zip(&pdw).for_each(|(a, &b)| *a += b);
        if let Some(db) = db.as_deref_mut() {
            db.iter_mut().zip(&pdb).for_each(|(a, &b)| *a += b);
        }
    }
}

/// Runs `work(scratch set, first sample, samples, y of those samples, aux of that chunk)` on
/// every chunk of `chunk` samples, each thread on a contiguous run of chunks with one scratch
/// set grown to at least `sizes` (the forward pass's counterpart of [`backward_chunks`]).
/// `aux` is (bytes per chunk, a record the kernel keeps beside y); (0, []) for none.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_chunks<T, F>(
    n: usize,
    chunk: usize,
    out_len: usize,
    y: &mut [T],
    aux: (usize, &mut [u8]),
    scratch: &mut ConvScratch<T>,
    sizes: [usize; 3],
    work: F,
) where
    T: Float,
    F: Fn(&mut [Vec<T>; 3], usize, usize, &mut [T], &mut [u8]) + Sync,
{
    let chunks = n.div_ceil(chunk);
    if chunks == 0 {
        return;
    }
    let nt = rayon::current_num_threads().clamp(1, chunks);
    let first = |t: usize| t * chunks / nt;
    scratch.grow(nt, sizes);
    let (aux_len, aux) = aux;
    let mut runs: Vec<(usize, &mut [T], &mut [u8])> = Vec::with_capacity(nt);
    let (mut rest, mut aux_rest) = (&mut y[..n * out_len], &mut aux[..chunks * aux_len]);
    for t in 0..nt {
        let len = ((first(t + 1) * chunk).min(n) - first(t) * chunk) * out_len;
        let (run, tail) = std::mem::take(&mut rest).split_at_mut(len);
        let alen = (first(t + 1) - first(t)) * aux_len;
        let (arun, atail) = std::mem::take(&mut aux_rest).split_at_mut(alen);
        runs.push((first(t) * chunk, run, arun));
        rest = tail;
        aux_rest = atail;
    }
    scratch.slots[..nt]
        .par_iter_mut()
        .zip(runs)
        .for_each(|(bufs, (s0, run, arun))| {
            for (ci, yc) in run.chunks_mut(chunk * out_len).enumerate() {
                let ac = &mut arun[ci * aux_len..(ci + 1) * aux_len];
                work(bufs, s0 + ci * chunk, yc.len() / out_len, yc, ac);
            }
        });
}
