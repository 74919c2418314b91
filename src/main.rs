//! The `peer` binary: parses the command line and hands over to [`peer::cli`].
fn main() -> std::process::ExitCode {
    fixed_mmap_threshold();
    peer::cli::main()
}

/// Makes glibc map every allocation of 1 MiB or more on its own and unmap it when freed.
///
/// A daemon moves packs of up to 16 MiB (protocol.md §3.3) through buffers that live for
/// one request. glibc's default threshold is dynamic: once such a buffer is freed it rises
/// to the buffer's size, after which the next ones are carved out of its per-thread arenas,
/// which keep the freed memory. Measured with `bench/run.sh` (BENCHMARKS.md), a fixed
/// threshold took the client's peak RSS from about 500 to about 300 MiB during a restore,
/// and each provider's from about 140 to 90 MiB, with no measurable change in speed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold() {}
