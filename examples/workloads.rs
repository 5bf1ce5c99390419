//! The speed workloads, timed: `cargo run --release --example workloads [NAME ...]` prints one
//! "name<TAB>median seconds" line per workload named (or, for a NAME no workload has, per
//! workload whose name contains it) (bench/compare.py runs this beside PyTorch/scipy).
//! `benches/workloads.rs` runs the same workloads under criterion.
#[path = "../benches/workloads_def.rs"]
mod workloads_def;

fn main() {
    // The binary's allocator settings, so that both time the same thing.
    convnet::alloc::keep_freed_memory();
    let only: Vec<String> = std::env::args().skip(1).collect();
    let all = workloads_def::all();
    // A NAME selects the workload of that name, or else every workload whose name contains it.
    let picked = |name: &str| {
        only.is_empty()
            || only.iter().any(|o| {
                name == o || (!all.iter().any(|w| w.name == o) && name.contains(o.as_str()))
            })
    };
    for w in &all {
        if !picked(w.name) {
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
