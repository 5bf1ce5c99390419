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

/// Asks the kernel to back the buffer's whole 2 MiB pages with transparent huge pages (where the
/// system leaves that to `madvise`, as Debian does). Call it before the buffer is first
/// written: a 32 MB buffer then faults in 16 times instead of 8,192, each fault of a VM costing
/// microseconds. Only a hint: nothing changes where huge pages are off, or off Linux.
pub fn advise_huge_pages<T>(buf: &[T]) {
    const HUGE: usize = 2 << 20;
    let (start, len) = (buf.as_ptr() as usize, std::mem::size_of_val(buf));
    let (begin, end) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
    #[cfg(target_os = "linux")]
    if end > begin {
        // SAFETY: the range lies inside `buf`'s allocation; MADV_HUGEPAGE only changes how the
        // kernel backs those pages, never their contents.
        unsafe {
            libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (begin, end);
}

/// `n` copies of `value` in a buffer advised to use huge pages ([`advise_huge_pages`]).
pub fn filled<T: Clone>(n: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(v.spare_capacity_mut());
    v.resize(n, value);
    v
}
