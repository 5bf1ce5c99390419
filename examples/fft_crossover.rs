//! Where FFT overtakes direct convolution as the kernel grows (the lecture's O(N·K²) against
//! O(N log N)): `cargo run --release --example fft_crossover` times both methods on a 512×512
//! float64 image for square kernels of growing size, and shows what `--method auto` picks and
//! what scipy's cost model (with scipy's constants) would pick.
use convnet::ops::signal::{auto_picks_fft, fft_is_faster, filter, FilterConfig, Method, Mode};
use convnet::Tensor;
use std::time::Instant;

fn median_ms(mut f: impl FnMut(), repeats: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    // The binary's allocator settings: time the arithmetic, not page faults on fresh buffers.
    convnet::alloc::keep_freed_memory();
    let n = 512;
    let x = Tensor::from_vec(
        &[n, n],
        (0..n * n)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0)
            .collect(),
    )
    .expect("shape");
    println!("| kernel | direct (ms) | fft (ms) | faster | auto picks | scipy's model picks |");
    println!("|---:|---:|---:|---|---|---|");
    for k in [1, 3, 5, 7, 9, 11, 15, 21, 31, 45] {
        let kt = Tensor::from_vec(&[k, k], (0..k * k).map(|i| (i % 5) as f64 - 2.0).collect())
            .expect("shape");
        let time = |method| {
            let cfg = FilterConfig {
                method,
                mode: Mode::Full,
                ..Default::default()
            };
            median_ms(|| drop(filter(&x, &kt, &cfg).expect("filter")), 7)
        };
        let (d, f) = (time(Method::Direct), time(Method::Fft));
        let name = |fft: bool| if fft { "fft" } else { "direct" };
        println!(
            "| {k}×{k} | {d:.2} | {f:.2} | {} | {} | {} |",
            name(f < d),
            name(auto_picks_fft(&[n, n], &[k, k], Mode::Full)),
            name(fft_is_faster(&[n, n], &[k, k], Mode::Full)),
        );
    }
}
