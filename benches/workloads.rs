//! Criterion benchmarks of the speed workloads (the same definitions bench/compare.py times).
use criterion::{criterion_group, criterion_main, Criterion};

mod workloads_def;

fn bench(c: &mut Criterion) {
    convnet::alloc::keep_freed_memory();
    let mut g = c.benchmark_group("workloads");
    g.sample_size(10);
    for w in workloads_def::all() {
        let mut run = (w.setup)();
        g.bench_function(w.name, |b| b.iter(&mut run));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
