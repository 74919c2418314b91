//! Parallel packing: blobs are sealed ([`blob::seal`]: zstd, then XChaCha20-Poly1305) on a
//! pool of threads and appended to packs in the order they were added, so every pack holds
//! exactly what one thread would have put in it (protocol.md §3.3).
//!
//! ```text
//! Packer::add(kind, id, plaintext) ─► jobs (bounded) ─► N sealing threads
//!   ─► assembler thread (puts results back in order) ─► PackWriter::add_sealed
//!   ─► pack full? finish (header, Merkle root) ─► deliver(SealedPack)
//! ```
//! The caller (the backup's walker) keeps reading, chunking and hashing while earlier
//! blobs are compressed and encrypted, and compression uses every core. Memory stays
//! bounded: at most [`IN_FLIGHT_BYTES`] of plaintext (or one blob, if it is larger) is
//! between `add` and the assembler, plus the pack being filled.
//!
//! Buffers go round: a blob's plaintext buffer ([`Packer::buffer`]) returns to the walker
//! once sealed, and its sealed buffer to the sealing threads once copied into its pack
//! ([`Pool`]), so the steady state allocates nothing per blob but the packs themselves.

use crate::id::BlobId;
use crate::repo::blob::{self, BlobKind};
use crate::repo::pack::{PackWriter, SealedPack};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Plaintext bytes that may be waiting for or in sealing at once (32 MiB).
pub const IN_FLIGHT_BYTES: usize = 32 << 20;

/// Most sealing threads used, whatever the number of cores.
pub const MAX_THREADS: usize = 8;

/// Why packing stopped before every blob was delivered.
#[derive(Debug, thiserror::Error)]
pub enum PackerError {
    /// `deliver` returned false: whoever takes the packs stopped taking them.
    #[error("the packs are no longer taken (uploads stopped)")]
    Stopped,
    /// A packing thread could not be started or ended abnormally.
    #[error("packing failed: {0}")]
    Thread(String),
}

/// Largest buffer (bytes of capacity) kept for reuse: twice the average chunk. Bigger
/// ones (chunks up to 8 MiB are rare) are freed, so the two pools' idle buffers stay
/// within `2 pools × POOL_PER_THREAD × threads × 2 MiB` (16 MiB with 2 sealing threads).
const POOLED_MAX: usize = 2 * crate::repo::chunker::AVG_CHUNK as usize;

/// Buffers kept for reuse in each [`Pool`], per sealing thread.
const POOL_PER_THREAD: usize = 2;

/// Byte buffers handed back for reuse. A chunk's buffer is about 1 MiB, over glibc's mmap
/// threshold (fixed at 1 MiB by `main`), so a new one per blob was mapped, faulted in page
/// by page, zeroed by the kernel and unmapped again: with a new buffer for each blob's
/// plaintext, compressed bytes and sealed bytes, page faults and page clearing took 4.5 %
/// of the client's CPU samples in a backup, 1.9 % with the pools (BENCHMARKS.md).
#[derive(Clone)]
struct Pool {
    tx: crossbeam_channel::Sender<Vec<u8>>,
    rx: crossbeam_channel::Receiver<Vec<u8>>,
}

impl Pool {
    fn new(len: usize) -> Pool {
        let (tx, rx) = crossbeam_channel::bounded(len);
        Pool { tx, rx }
    }

    /// An empty buffer, reused when one is waiting.
    fn take(&self) -> Vec<u8> {
        let mut v = self.rx.try_recv().unwrap_or_default();
        v.clear();
        v
    }

    /// Keeps `v` for reuse unless the pool is full or `v` is over [`POOLED_MAX`].
    fn give(&self, v: Vec<u8>) {
        if v.capacity() <= POOLED_MAX {
            let _ = self.tx.try_send(v);
        }
    }
}

/// One blob to seal; `seq` is its place in the order of [`Packer::add`].
struct Job {
    seq: u64,
    kind: BlobKind,
    id: BlobId,
    plaintext: Vec<u8>,
}

/// A sealed blob on its way to the assembler.
struct Sealed {
    seq: u64,
    kind: BlobKind,
    id: BlobId,
    sealed: Vec<u8>,
    raw_length: usize,
}

/// A byte budget shared by the caller (takes) and the assembler (gives back).
#[derive(Default)]
struct Budget {
    state: Mutex<(usize, bool)>, // (bytes in flight, closed)
    freed: Condvar,
}

impl Budget {
    /// Waits until `n` more bytes fit (a blob larger than the whole budget waits for an
    /// empty pipeline); false once the assembler has gone.
    fn take(&self, n: usize) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.1 && s.0 > 0 && s.0 + n > IN_FLIGHT_BYTES {
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 += n;
        !s.1
    }

    fn give(&self, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_sub(n);
        self.freed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.freed.notify_all();
    }
}

/// Closes the budget when the assembler ends, however it ends, so `add` never waits for it.
struct CloseOnDrop(Arc<Budget>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Seals blobs on a thread pool and delivers full packs in order. See the module docs.
pub struct Packer {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    /// Plaintext buffers back from the sealing threads, for [`Packer::buffer`].
    plain: Pool,
    budget: Arc<Budget>,
    /// Set when the packer is dropped without [`Packer::finish`]: the last, partial pack
    /// is then discarded rather than delivered.
    abandoned: Arc<AtomicBool>,
    next_seq: u64,
    sealers: Vec<JoinHandle<()>>,
    assembler: Option<JoinHandle<Result<u64, PackerError>>>,
}

impl Packer {
    /// Starts `threads` sealing threads (clamped to 1..=[`MAX_THREADS`]) and the assembler.
    ///
    /// Blobs are compressed at zstd `level` and encrypted under `enc_key`; a pack is
    /// finished once its sealed size reaches `pack_size` bytes (protocol.md §3.3), and
    /// handed to `deliver`, which returns false when it takes no more packs.
    /// Errors: [`PackerError::Thread`] when a thread cannot be started.
    pub fn start(
        enc_key: [u8; 32],
        level: i32,
        pack_size: usize,
        threads: usize,
        mut deliver: impl FnMut(SealedPack) -> bool + Send + 'static,
    ) -> Result<Packer, PackerError> {
        let threads = threads.clamp(1, MAX_THREADS);
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(2 * threads);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Sealed>(2 * threads);
        let budget = Arc::new(Budget::default());
        let abandoned = Arc::new(AtomicBool::new(false));
        let (plain, sealed_pool) = (Pool::new(POOL_PER_THREAD * threads), Pool::new(POOL_PER_THREAD * threads));
        let spawn_err = |e: std::io::Error| PackerError::Thread(format!("cannot start a packing thread: {e}"));
        let mut sealers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (jobs, done) = (jobs_rx.clone(), done_tx.clone());
            let (plain, pool) = (plain.clone(), sealed_pool.clone());
            let handle = std::thread::Builder::new()
                .name(format!("backup-seal-{i}"))
                .spawn(move || {
                    let (mut zstd, mut scratch) = (blob::compressor(level), Vec::new());
                    for j in jobs {
                        let mut sealed = pool.take();
                        blob::seal_into(&enc_key, j.kind, &j.id, &j.plaintext, &mut zstd, &mut scratch, &mut sealed);
                        let raw_length = j.plaintext.len();
                        plain.give(j.plaintext);
                        let out = Sealed { seq: j.seq, kind: j.kind, id: j.id, sealed, raw_length };
                        if done.send(out).is_err() {
                            return; // the assembler has stopped
                        }
                    }
                })
                .map_err(spawn_err)?;
            sealers.push(handle);
        }
        drop(done_tx);
        let (guard, stop) = (CloseOnDrop(budget.clone()), abandoned.clone());
        let capacity = pack_size + crate::repo::chunker::MAX_CHUNK as usize + 4096;
        let assembler = std::thread::Builder::new()
            .name("backup-pack".into())
            .spawn(move || {
                let guard = guard;
                let mut writer = PackWriter::new(enc_key, level, capacity);
                let (mut waiting, mut next, mut bytes_new) = (BTreeMap::new(), 0u64, 0u64);
                for s in done_rx {
                    waiting.insert(s.seq, s);
                    while let Some(s) = waiting.remove(&next) {
                        next += 1;
                        bytes_new += s.sealed.len() as u64;
                        writer.add_sealed(s.kind, s.id, &s.sealed, s.raw_length as u32);
                        sealed_pool.give(s.sealed);
                        guard.0.give(s.raw_length);
                        if writer.sealed_len_estimate() >= pack_size && !deliver(writer.finish()) {
                            return Err(PackerError::Stopped);
                        }
                    }
                }
                if !waiting.is_empty() {
                    return Err(PackerError::Thread("a sealing thread ended early".into()));
                }
                if !writer.is_empty() && !stop.load(Ordering::Acquire) && !deliver(writer.finish()) {
                    return Err(PackerError::Stopped);
                }
                Ok(bytes_new)
            })
            .map_err(spawn_err)?;
        Ok(Packer { jobs: Some(jobs_tx), plain, budget, abandoned, next_seq: 0, sealers, assembler: Some(assembler) })
    }

    /// An empty buffer for the next blob's plaintext, reused from a blob already sealed
    /// when one is back (see [`Pool`]); hand it to [`Packer::add`].
    pub fn buffer(&self) -> Vec<u8> {
        self.plain.take()
    }

    /// Queues one blob; blocks while [`IN_FLIGHT_BYTES`] are already in flight.
    /// Errors: [`PackerError::Stopped`] once packs are no longer taken.
    pub fn add(&mut self, kind: BlobKind, id: BlobId, plaintext: Vec<u8>) -> Result<(), PackerError> {
        let jobs = self.jobs.as_ref().ok_or(PackerError::Stopped)?;
        if !self.budget.take(plaintext.len()) {
            return Err(PackerError::Stopped);
        }
        let job = Job { seq: self.next_seq, kind, id, plaintext };
        self.next_seq += 1;
        jobs.send(job).map_err(|_| PackerError::Stopped)
    }

    /// Seals what is queued, delivers the last pack (if any blob is in it) and waits for
    /// every thread. Returns the bytes of sealed blob data written into packs.
    /// Errors: [`PackerError::Stopped`] when `deliver` refused a pack; [`PackerError::Thread`]
    /// when a thread panicked.
    pub fn finish(mut self) -> Result<u64, PackerError> {
        self.jobs = None;
        for s in self.sealers.drain(..) {
            s.join().map_err(|_| PackerError::Thread("a sealing thread panicked".into()))?;
        }
        let assembler = self.assembler.take().ok_or(PackerError::Stopped)?;
        assembler.join().map_err(|_| PackerError::Thread("the pack assembler panicked".into()))?
    }
}

impl Drop for Packer {
    /// Without [`Packer::finish`] (the caller failed), the threads end on their own once
    /// the queue is closed, and the partial pack is not delivered.
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Release);
        self.jobs = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::read_header;

    fn blobs(n: usize) -> Vec<(BlobId, Vec<u8>)> {
        (0..n)
            .map(|i| {
                // Different sizes and compressibility, so the threads finish out of order.
                // Odd blobs are random (incompressible), even ones repetitive.
                let mut x = i as u64 + 1;
                let data: Vec<u8> = (0..(1000 + (i * 7919) % 200_000))
                    .map(|k| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        if i % 2 == 1 { (x >> 33) as u8 } else { (k % 251) as u8 }
                    })
                    .collect();
                (blob::blob_id(&[7; 32], &data), data)
            })
            .collect()
    }

    fn pack_all(threads: usize, input: &[(BlobId, Vec<u8>)]) -> (Vec<SealedPack>, u64) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let mut p = Packer::start([9; 32], 3, 1 << 20, threads, move |pack| {
            sink.lock().unwrap().push(pack);
            true
        })
        .unwrap();
        for (id, data) in input {
            // Through reused buffers, as a backup does: a blob must not carry bytes of
            // the one whose buffer it got.
            let mut b = p.buffer();
            b.extend_from_slice(data);
            p.add(BlobKind::Data, *id, b).unwrap();
        }
        let bytes = p.finish().unwrap();
        let packs = std::mem::take(&mut *out.lock().unwrap());
        (packs, bytes)
    }

    #[test]
    fn packs_hold_the_blobs_in_the_order_they_were_added_whatever_the_threads() {
        let input = blobs(120);
        let (packs, bytes) = pack_all(4, &input);
        assert!(packs.len() > 3, "expected several 1 MiB packs, got {}", packs.len());
        let mut ids = Vec::new();
        let mut stored = 0u64;
        for p in &packs {
            let entries = read_header(&[9; 32], &p.bytes).unwrap();
            for e in &entries {
                let sealed = &p.bytes[e.offset as usize..(e.offset + e.length) as usize];
                let plain = blob::open((&[7; 32], &[9; 32]), e.kind, &e.id, sealed, e.raw_length).unwrap();
                assert_eq!(blob::blob_id(&[7; 32], &plain), e.id);
                stored += u64::from(e.length);
            }
            ids.extend(entries.iter().map(|e| e.id));
        }
        assert_eq!(ids, input.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        assert_eq!(bytes, stored);
        // One thread cuts the same packs (same blobs in each; nonces differ).
        let (single, _) = pack_all(1, &input);
        let cut = |ps: &[SealedPack]| {
            ps.iter().map(|p| p.entries.iter().map(|e| e.id).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        assert_eq!(cut(&packs), cut(&single));
    }

    #[test]
    fn a_refused_pack_stops_the_caller_and_nothing_hangs() {
        let input = blobs(200);
        let mut p = Packer::start([9; 32], 1, 256 << 10, 2, |_| false).unwrap();
        let mut stopped = false;
        for (id, data) in &input {
            if let Err(e) = p.add(BlobKind::Data, *id, data.clone()) {
                assert!(matches!(e, PackerError::Stopped));
                stopped = true;
                break;
            }
        }
        if !stopped {
            assert!(matches!(p.finish(), Err(PackerError::Stopped)));
        }
    }

    #[test]
    fn a_dropped_packer_delivers_no_partial_pack() {
        let delivered = Arc::new(AtomicBool::new(false));
        let seen = delivered.clone();
        let mut p = Packer::start([9; 32], 1, 16 << 20, 2, move |_| {
            seen.store(true, Ordering::SeqCst);
            true
        })
        .unwrap();
        let (id, data) = blobs(1).remove(0);
        p.add(BlobKind::Data, id, data).unwrap();
        let assembler = p.assembler.take().unwrap();
        drop(p);
        assert!(assembler.join().unwrap().is_ok());
        assert!(!delivered.load(Ordering::SeqCst));
    }
}
