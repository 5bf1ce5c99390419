//! The speed workloads, timed: `cargo run --release --example workloads [NAME ...]` prints one
//! "name<TAB>median seconds" line per workload (bench/compare.py runs this beside PyTorch/scipy).
//! `benches/workloads.rs` runs the same workloads under criterion.
#[path = "../benches/workloads_def.rs"]
mod workloads_def;

fn main() {
    // The binary's allocator settings, so that both time the same thing.
    convnet::alloc::keep_freed_memory();
    let only: Vec<String> = std::env::args().skip(1).collect();
    for w in workloads_def::all() {
        if !only.is_empty() && !only.iter().any(|o| w.name.contains(o.as_str())) {
            continue;
        }
        let mut run = (w.setup)();
        // Warm up (caches, thread pool, allocator), then take the median of timed repeats.
        for _ in 0..w.warmup {
            run();
        }
        let mut times: Vec<f64> = (0..w.repeats)
            .map(|_| {
                let t = std::time::Instant::now();
                run();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(|a, b| a.total_cmp(b));
        println!("{}\t{:.6}", w.name, times[times.len() / 2]);
    }
}
