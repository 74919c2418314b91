//! The `peer` binary: parses the command line and hands over to [`peer::cli`].
fn main() -> std::process::ExitCode {
    allocator_settings();
    release_freed_memory();
    peer::cli::main()
}

/// How often freed memory is handed back to the kernel, seconds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RELEASE_MEMORY_SECS: u64 = 30;

/// Every [`RELEASE_MEMORY_SECS`], from a thread of its own, frees the pooled message
/// buffers ([`peer::protocol::codec::release_buffers`]) and returns the memory glibc holds
/// free to the kernel (`malloc_trim(0)`). glibc keeps freed memory in its arenas for reuse;
/// a daemon's connections come and go (Kademlia lookups, trimming: protocol.md §1.9), so
/// without this its RSS stays at the high-water mark of its busiest minute. Measured with
/// `bench/scale.sh` (BENCHMARKS.md), 50 idle daemons: median RSS 55 MiB without, 35 MiB
/// with. (A command other than `daemon` ends long before the first round.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(RELEASE_MEMORY_SECS));
            peer::protocol::codec::release_buffers();
            // SAFETY: malloc_trim only gives free pages back to the kernel, under each
            // arena's lock; it is safe to call from any thread at any time.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// Sets two glibc allocator parameters, before any other thread starts.
///
/// - Every allocation of 1 MiB or more is mapped on its own and unmapped when freed
///   (`M_MMAP_THRESHOLD`). A daemon moves packs of up to 16 MiB (protocol.md §3.3) through
///   buffers that live for one request. glibc's default threshold is dynamic: once such a
///   buffer is freed it rises to the buffer's size, after which the next ones are carved
///   out of its per-thread arenas, which keep the freed memory. Measured with
///   `bench/run.sh` (BENCHMARKS.md), a fixed threshold took the client's peak RSS from
///   about 500 to about 300 MiB during a restore, and each provider's from about 140 to
///   90 MiB, with no measurable change in speed. (Received messages of 1 MiB or more
///   have since been read into a few reused buffers instead, [`peer::protocol::codec::POOL_MAX`],
///   which saves each provider about a fifth of its CPU time during a backup.)
/// - At most one arena per core, and at least 2 (`M_ARENA_MAX`; glibc's default is 8 per
///   core). Each arena keeps what its threads freed for their own reuse, so a backup whose
///   walker, packer, upload and database threads each fill one holds several high-water
///   marks at once. Measured with `bench/head.sh` (BENCHMARKS.md), 1,000,000 small files
///   on 2 cores: the backing-up daemon's peak RSS was 315 and 350 MiB in two runs
///   without, 249, 300 and 301 MiB in three runs with; no change in speed showed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocator_settings() {
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn allocator_settings() {}
