//! Process-wide allocator settings that the binary and the benchmarks apply at startup.

/// Keeps freed memory in the process for reuse instead of returning it to the OS at once.
///
/// glibc's defaults hand blocks of a few MB back to the kernel when they are freed (mmap'd
/// blocks, and trimming the top of the heap), so every call that allocates such buffers
/// faults them in afresh. On a VM a fault costs ~10 µs: measured, a 512² direct filter took
/// 13 ms instead of 1.3 ms, an FFT filter 8.3 ms instead of 5.0 ms. Blocks below 32 MB now
/// come from the heap, and up to 128 MB of free heap is kept: memory is reused, not
/// accumulated (peak RSS of a full Fashion-MNIST run: 89 → 100 MB). One arena for all
/// threads: training steps run on the pool's threads, and with glibc's per-thread arenas each
/// kept its own free memory (peak RSS 96 → 127 MB; one arena, measured: no slower). Does
/// nothing off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is thread-safe and only changes settings of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
