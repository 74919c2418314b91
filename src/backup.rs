//! The backup pipeline (DESIGN §4, protocol.md §3.6).
//!
//! ```text
//! walk ─► unchanged since parent (size, mtime, inode)? reuse its blob ids
//!      ─► FastCDC ─► blob id ─► known? skip ─► zstd + AEAD ─► pack writer
//!      ─► sealed packs (bounded channel) ─► PackSink::place (N holders, concurrent)
//!      ─► commit pack + index ─► … ─► trees ─► snapshot (last pack)
//!      (tree documents cached in the state in batches of 1 MiB as the walk goes)
//!      (index packs of the new packs, §3.8, written whenever an index pack's worth of
//!      entries gathers, and the rest at the end) ─► snapshot recorded
//! ```
//! The walk, chunking and hashing run on one blocking thread, which asks the kernel for the
//! next files of a directory while it reads one (`READ_AHEAD_FILES`); compression and encryption
//! on one thread per core ([`crate::repo::packer`], which keeps the blobs in walk order);
//! uploads run concurrently on the runtime, at most `upload_concurrency` packs at a time,
//! with the sealed packs queued and uploading held to one byte budget (blob lists
//! included), and the walker remembers only the new blobs not yet recorded, so memory
//! stays bounded whatever the size of the backup. A snapshot is recorded only after every
//! pack it needs is acknowledged by its holders; an error on one file is reported and the
//! file skipped.

use crate::control::BackupSummary;
use crate::id::{BlobId, PackId, SnapshotId};
use crate::identity::Identity;
use crate::repo::blob::{BlobKind, blob_id};
use crate::repo::chunker;
use crate::repo::index;
use crate::repo::pack::{PackEntry, SealedPack};
use crate::repo::packer::{Packer, PackerError};
use crate::repo::tree::{self, Node, NodeKind, Snapshot, Tree, Xattr};
use crate::state::{PackRecord, State, StateError};
use crate::store::Store;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Places one sealed pack on its holders and reports them (implemented by the daemon over
/// the network; by an in-memory store in tests).
#[async_trait::async_trait]
pub trait PackSink: Send + Sync {
    /// Stores `pack` on the required number of distinct holders; the error carries what
    /// each holder tried answered.
    async fn place(&self, pack: Arc<SealedPack>) -> Result<PackRecord, crate::transfer::TransferError>;
}

/// Errors that stop a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A path given on the command line is unusable.
    #[error("{0}")]
    BadPath(String),
    /// A data pack could not be placed.
    #[error("upload failed: {0}")]
    Upload(#[from] crate::transfer::TransferError),
    /// An index pack could not be placed.
    #[error("upload failed: index pack: {0}")]
    IndexUpload(crate::transfer::TransferError),
    /// The run's tree documents could not be kept in the local cache.
    #[error("cannot cache trees: {0}")]
    TreeCache(StateError),
    /// Local state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The pipeline stopped unexpectedly.
    #[error("backup stopped: {0}")]
    Internal(String),
}

/// Backup settings.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Absolute paths to back up.
    pub paths: Vec<PathBuf>,
    /// Holders each pack must have; a blob already stored counts as stored only when its
    /// pack has this many holders under live contracts.
    pub copies: usize,
    /// Target pack size, bytes.
    pub pack_size: usize,
    /// zstd level.
    pub zstd_level: i32,
    /// Packs uploaded at once.
    pub upload_concurrency: usize,
    /// Exclude patterns, gitignore syntax (a leading `/` anchors at the filesystem root).
    pub exclude: Vec<String>,
    /// Erasure-code each pack instead of copying it (`copies` is then unused).
    pub erasure: Option<crate::repo::erasure::Scheme>,
    /// Retention lock of the snapshot, seconds from its start (0: none, protocol.md §5.9).
    pub lock_secs: u64,
}

/// Name of the per-directory exclude file: gitignore syntax, applying to its directory
/// and everything below, deeper files overriding shallower ones.
pub const IGNORE_FILE: &str = ".peerignore";

/// Builds the matcher of `--exclude` patterns; an error names the bad pattern.
pub fn exclude_matcher(patterns: &[String]) -> Result<Gitignore, BackupError> {
    let mut b = GitignoreBuilder::new("/");
    for p in patterns {
        b.add_line(None, p).map_err(|e| BackupError::BadPath(format!("bad --exclude pattern '{p}': {e}")))?;
    }
    b.build().map_err(|e| BackupError::BadPath(format!("bad --exclude patterns: {e}")))
}

/// Live counters a caller can poll for progress.
#[derive(Default, Debug)]
pub struct Counters {
    /// Bytes of file content to go through (from the scan).
    pub total: AtomicU64,
    /// Bytes of file content gone through (read, or skipped as unchanged).
    pub done: AtomicU64,
    /// Bytes sent to holders.
    pub uploaded: AtomicU64,
}

/// Checks the paths: each must exist, and their last components must differ (they name
/// the root tree's entries). Returns them made absolute.
pub fn check_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, BackupError> {
    if paths.is_empty() {
        return Err(BackupError::BadPath("no path to back up".into()));
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| BackupError::BadPath(format!("{}: {e}", p.display())))?;
        std::fs::symlink_metadata(&abs).map_err(|e| BackupError::BadPath(format!("{}: {e}", abs.display())))?;
        let name = abs.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_else(|| b"root".to_vec());
        if !names.insert(name) {
            return Err(BackupError::BadPath(format!(
                "two paths end in the same name as {}; back them up separately",
                abs.display()
            )));
        }
        out.push(abs);
    }
    Ok(out)
}

/// Bytes of regular files under `p`, walked without recursion (any depth).
pub fn scan_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if m.is_file() {
            total += m.len();
        }
    }
    total
}

/// Stack for the walker thread: directories are walked recursively, and a tree may be deep.
const WALKER_STACK: usize = 256 << 20;
/// Most per-file errors kept in a summary; the rest are counted.
pub const MAX_LISTED: usize = 1000;

/// Runs a backup of `opts.paths`; packs go to `sink`. Returns the summary once the
/// snapshot is recorded.
///
/// Four stages: the walk on its own thread (`start_walk`), placing and recording the
/// packs it seals (`upload`), the index packs (`write_index`), and the snapshot.
pub async fn run(
    id: &Identity,
    store: &Store,
    opts: BackupOptions,
    sink: Arc<dyn PackSink>,
    counters: Arc<Counters>,
) -> Result<BackupSummary, BackupError> {
    let started = std::time::Instant::now();
    let (packs_rx, recorded, walked) = start_walk(id, store, &opts, counters.clone()).await?;
    let mut done = Committed { recorded: Some(recorded), ..Default::default() };
    upload(id, store, packs_rx, &sink, &opts, &counters, &mut done).await;
    let walked = walked.await.map_err(|_| BackupError::Internal("the walker stopped".into()))?;
    if let Some(e) = done.failure {
        return Err(e);
    }
    let (snap_id, snapshot, stats, trees) = walked?;
    let (last_packs, last_bytes) = write_index(id, store, &opts, &sink, done.run_index).await?;
    let (index_packs, index_bytes) = (done.index_packs + last_packs, done.index_bytes + last_bytes);
    let (sid, snap) = (snap_id, snapshot.clone());
    store.call(move |s| s.put_trees(&trees).and_then(|_| s.put_snapshot(&sid, &snap))).await?;
    Ok(BackupSummary {
        locked_until: 0,
        lock_error: None,
        snapshot: snap_id.to_string(),
        files: snapshot.files,
        files_read: stats.files_read,
        bytes_read: stats.bytes_read,
        bytes_new: stats.bytes_new,
        packs: done.packs,
        index_packs,
        head: Default::default(),
        bytes_uploaded: done.bytes_uploaded + index_bytes,
        seconds: started.elapsed().as_secs_f64(),
        errors: stats.errors,
        error_count: stats.error_count,
    })
}

/// The walk's result, once it ends.
type WalkResult = tokio::sync::oneshot::Receiver<Result<Walked, BackupError>>;

/// Stage 1: starts the walker thread (walk, chunk, hash, compress, encrypt, seal packs).
/// Returns the queue of sealed packs (bounded by [`start_packer`]'s budget), where to
/// tell the walker which packs are recorded, and the walk's result.
async fn start_walk(
    id: &Identity,
    store: &Store,
    opts: &BackupOptions,
    counters: Arc<Counters>,
) -> Result<(mpsc::Receiver<FromWalk>, std::sync::mpsc::Sender<Recorded>, WalkResult), BackupError> {
    let paths = check_paths(&opts.paths)?;
    let path_strings: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let parent = store.call(|s| s.snapshots()).await?.into_iter().rev().find(|(_, s)| s.paths == path_strings);
    let time = crate::protocol::now();
    let live: HashSet<crate::id::ContractId> = store
        .contracts()
        .into_iter()
        .filter(|(_, c)| c.role == crate::state::Role::Client && c.is_live(time))
        .map(|(id, _)| id)
        .collect();
    let (tx, rx) = mpsc::channel::<FromWalk>(2);
    let (recorded_tx, recorded) = std::sync::mpsc::channel();
    let walker = Walker {
        id_key: id.id_key,
        read_buf: Vec::new(),
        state: store.blocking().clone(),
        opts: opts.clone(),
        counters: counters.clone(),
        packer: start_packer(id.enc_key, opts, tx.clone())?,
        tx,
        in_run: HashSet::new(),
        recorded,
        live,
        packs_ok: HashMap::new(),
        trees: Vec::new(),
        trees_bytes: 0,
        stats: Stats::default(),
        exclude: exclude_matcher(&opts.exclude)?,
        ignores: Vec::new(),
    };
    let (done_tx, walked) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("backup-walker".into())
        .stack_size(WALKER_STACK)
        .spawn(move || {
            counters.total.store(paths.iter().map(|p| scan_size(p)).sum(), Ordering::Relaxed);
            let _ = done_tx.send(walker.run(&paths, parent, time)); // the backup may have failed already
        })
        .map_err(|e| BackupError::Internal(format!("cannot start the walker: {e}")))?;
    Ok((rx, recorded_tx, walked))
}

/// Stage 2: places each sealed pack (`upload_concurrency` at once, within the byte budget
/// of [`start_packer`]) and records it with its blobs in one store command once placed
/// (§3.6 rule 2); caches the batches of tree documents the walker sends; writes index
/// packs of this run's packs whenever their entries reach one index pack's worth
/// ([`index_flush_entries`]), so the run's index is never held whole. Stops taking packs
/// at the first failure; dropping the queue then stops the walker.
async fn upload(
    id: &Identity,
    store: &Store,
    mut rx: mpsc::Receiver<FromWalk>,
    sink: &Arc<dyn PackSink>,
    opts: &BackupOptions,
    counters: &Arc<Counters>,
    done: &mut Committed,
) {
    let mut uploads = tokio::task::JoinSet::new();
    while let Some(item) = rx.recv().await {
        let (pack, room) = match item {
            FromWalk::Pack(p, room) => (p, room),
            FromWalk::Trees(t) => {
                if let Err(e) = store.call(move |s| s.put_trees(&t)).await {
                    done.failure.get_or_insert(BackupError::TreeCache(e));
                    break;
                }
                continue;
            }
        };
        while uploads.len() >= opts.upload_concurrency {
            if let Some(r) = uploads.join_next().await {
                done.add(commit(store, r).await);
            }
        }
        if done.failure.is_none() && done.run_entries >= index_flush_entries(opts.pack_size) {
            let todo = std::mem::take(&mut done.run_index);
            done.run_entries = 0;
            match place_index(id, store, opts, sink, todo).await {
                Ok((n, bytes)) => {
                    done.index_packs += n;
                    done.index_bytes += bytes;
                }
                Err(e) => done.failure = Some(e),
            }
        }
        if done.failure.is_some() {
            break;
        }
        let (sink, c) = (sink.clone(), counters.clone());
        uploads.spawn(async move {
            let pack = Arc::new(pack);
            let rec = sink.place(pack.clone()).await?;
            c.uploaded.fetch_add(rec.stored_bytes(), Ordering::Relaxed);
            // The bytes go now, with their share of the budget; the blob list stays, for
            // the index.
            let id = pack.id;
            let entries = Arc::try_unwrap(pack).map(|p| p.entries).unwrap_or_else(|p| p.entries.clone());
            drop(room);
            Ok((id, entries, rec))
        });
    }
    drop(rx);
    while let Some(r) = uploads.join_next().await {
        done.add(commit(store, r).await);
    }
}

/// Memory a sealed pack holds while it is uploaded, bytes: its bytes and its blob list.
fn weight(pack: &SealedPack) -> usize {
    pack.bytes.len() + pack.entries.len() * std::mem::size_of::<PackEntry>()
}

/// A pack its holders acknowledged: its id, its blobs and where it is.
type Placed = (PackId, Vec<PackEntry>, PackRecord);

/// Records a placed pack and its blobs; returns its id, entries and bytes stored.
async fn commit(
    store: &Store,
    placed: Result<Result<Placed, crate::transfer::TransferError>, tokio::task::JoinError>,
) -> Result<(PackId, Vec<PackEntry>, u64), BackupError> {
    let (pid, entries, rec) = placed.map_err(|e| BackupError::Internal(format!("an upload stopped: {e}")))??;
    let stored = rec.stored_bytes();
    let entries = store.call(move |s| s.commit_pack(&pid, &rec, &entries).map(|()| entries)).await?;
    Ok((pid, entries, stored))
}

/// Stores the index of every data pack no index pack covers yet — this run's, and any an
/// earlier failed run left — as index packs placed like the data (protocol.md §3.8), and
/// records them all at once. Returns the index packs and the bytes sent.
async fn write_index(
    id: &Identity,
    store: &Store,
    opts: &BackupOptions,
    sink: &Arc<dyn PackSink>,
    mut todo: Vec<(PackId, Vec<PackEntry>)>,
) -> Result<(u64, u64), BackupError> {
    let unindexed = store.call(|s| s.unindexed_packs()).await?;
    todo.retain(|(p, _)| unindexed.contains(p));
    let in_run: HashSet<PackId> = todo.iter().map(|(p, _)| *p).collect();
    let older: HashSet<PackId> = unindexed.into_iter().filter(|p| !in_run.contains(p)).collect();
    if !older.is_empty() {
        let wanted = older.clone();
        let found = store.call(move |s| s.pack_entries(&wanted)).await?;
        let with_entries: HashSet<PackId> = found.iter().map(|(p, _)| *p).collect();
        todo.extend(found);
        // Packs whose blobs all moved to later packs: listed empty, so they count as covered.
        todo.extend(older.into_iter().filter(|p| !with_entries.contains(p)).map(|p| (p, vec![])));
    }
    place_index(id, store, opts, sink, todo).await
}

/// Seals the index of `todo` (data packs no index pack covers yet, with their blobs) into
/// index packs, places them like the data and records them all at once. Returns the index
/// packs and the bytes sent.
async fn place_index(
    id: &Identity,
    store: &Store,
    opts: &BackupOptions,
    sink: &Arc<dyn PackSink>,
    todo: Vec<(PackId, Vec<PackEntry>)>,
) -> Result<(u64, u64), BackupError> {
    if todo.is_empty() {
        return Ok((0, 0));
    }
    let keys = (id.id_key, id.enc_key);
    let (level, size) = (opts.zstd_level, opts.pack_size);
    let sealed = tokio::task::spawn_blocking(move || index::write((&keys.0, &keys.1), level, size, &todo))
        .await
        .map_err(|e| BackupError::Internal(format!("the index writer stopped: {e}")))?;
    let mut placed = Vec::with_capacity(sealed.len());
    let mut bytes = 0;
    for (pack, covers) in sealed {
        let pack = Arc::new(pack);
        let rec = sink.place(pack.clone()).await.map_err(BackupError::IndexUpload)?;
        bytes += rec.stored_bytes();
        placed.push((pack.id, rec, covers));
    }
    let n = placed.len() as u64;
    store.call(move |s| s.commit_index_packs(&placed)).await?;
    Ok((n, bytes))
}

/// Bytes one blob entry takes in an index document, rounded up (a 32-byte id, its kind and
/// three offsets, about 50 bytes of CBOR): `pack_size / INDEX_ENTRY_BYTES` entries fill about
/// one index pack.
const INDEX_ENTRY_BYTES: usize = 64;

/// Blob entries of this run's packs held before their index packs are written mid-run:
/// about one index pack's worth (262,144 at the default 16 MiB packs), so a backup of any
/// number of blobs holds at most this many, plus one data pack's.
fn index_flush_entries(pack_size: usize) -> usize {
    (pack_size / INDEX_ENTRY_BYTES).max(1)
}

/// The packs of a run recorded so far, or the first failure.
#[derive(Default)]
struct Committed {
    packs: u64,
    bytes_uploaded: u64,
    /// This run's packs and their blobs whose index packs are not written yet.
    run_index: Vec<(PackId, Vec<PackEntry>)>,
    /// Blob entries in `run_index`.
    run_entries: usize,
    /// Index packs written during the run, and their bytes stored.
    index_packs: u64,
    index_bytes: u64,
    failure: Option<BackupError>,
    /// Tells the walker which of its blobs are recorded now.
    recorded: Option<std::sync::mpsc::Sender<Recorded>>,
}

/// A pack recorded in the state, with its blobs.
type Recorded = (PackId, Vec<BlobId>);

impl Committed {
    fn add(&mut self, r: Result<(PackId, Vec<PackEntry>, u64), BackupError>) {
        match r {
            Ok((pid, entries, stored)) => {
                if let Some(tx) = &self.recorded {
                    // An error means the walker has ended and needs to know no more.
                    let _ = tx.send((pid, entries.iter().map(|e| e.id).collect()));
                }
                self.run_entries += entries.len();
                self.run_index.push((pid, entries));
                self.packs += 1;
                self.bytes_uploaded += stored;
            }
            Err(e) => {
                self.failure.get_or_insert(e);
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    files: u64,
    bytes: u64,
    files_read: u64,
    bytes_read: u64,
    bytes_new: u64,
    errors: Vec<String>,
    error_count: u64,
}

struct Walker {
    id_key: [u8; 32],
    /// The content of the file being chunked, reused from file to file
    /// ([`chunker::for_each_chunk_in`]).
    read_buf: Vec<u8>,
    state: State,
    opts: BackupOptions,
    counters: Arc<Counters>,
    /// Compresses, encrypts and packs new blobs on other threads, in order.
    packer: Packer,
    /// Blobs of this run not yet recorded in the state: those being packed or uploaded
    /// ([`Self::forget_recorded`]), so the set is bounded by the pipeline, not by the run.
    in_run: HashSet<BlobId>,
    /// From the upload stage: this run's packs as they are recorded.
    recorded: std::sync::mpsc::Receiver<Recorded>,
    /// Live client contracts at the start of the backup.
    live: HashSet<crate::id::ContractId>,
    /// Whether a pack already stored has enough live holders.
    packs_ok: HashMap<crate::id::PackId, bool>,
    /// Tree documents not yet sent to be cached ([`TREE_BATCH`] bytes at most).
    trees: Vec<(BlobId, Vec<u8>)>,
    trees_bytes: usize,
    /// To the upload stage: batches of tree documents (the packer sends the packs).
    tx: mpsc::Sender<FromWalk>,
    stats: Stats,
    /// `--exclude` patterns.
    exclude: Gitignore,
    /// `.peerignore` matchers of the directories being walked, outermost first.
    ignores: Vec<Gitignore>,
}

/// Tree documents the walker keeps before sending them to be cached in the state (1 MiB;
/// writing a batch takes the state about five times its size): a run's trees are not held
/// until its end, so memory does not grow with the tree.
const TREE_BATCH: usize = 1 << 20;

/// What the walker's side sends to the upload stage.
enum FromWalk {
    /// A sealed pack to place and record.
    /// With its share of the packs' memory budget ([`start_packer`]), freed with its bytes.
    Pack(SealedPack, tokio::sync::OwnedSemaphorePermit),
    /// Tree documents of this run, cached in the state for later runs and restores (they
    /// are in packs too; a cached tree no snapshot names is never read).
    Trees(Vec<(BlobId, Vec<u8>)>),
}

/// Starts the sealing threads (one per core) that turn new blobs into packs for `tx`.
/// Starts the packer. Each sealed pack first takes its [`weight`] from a budget of
/// (`upload_concurrency` + 1) × 1.125 × `pack_size` bytes, held until its upload ends: the
/// packs queued and uploading are bounded by bytes (their blob lists included, which for
/// packs of tiny blobs are as large as the packs), not only by count.
fn start_packer(enc_key: [u8; 32], opts: &BackupOptions, tx: mpsc::Sender<FromWalk>) -> Result<Packer, BackupError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kib = ((opts.upload_concurrency + 1) * (opts.pack_size + opts.pack_size / 8)) >> 10;
    let budget = Arc::new(tokio::sync::Semaphore::new(kib.max(1)));
    Packer::start(enc_key, opts.zstd_level, opts.pack_size, threads, move |pack| {
        let need = (weight(&pack) >> 10).clamp(1, kib.max(1)) as u32;
        let Ok(room) = futures::executor::block_on(budget.clone().acquire_many_owned(need)) else {
            return false; // never closed
        };
        tx.blocking_send(FromWalk::Pack(pack, room)).is_ok()
    })
    .map_err(packer_error)
}

fn packer_error(e: PackerError) -> BackupError {
    match e {
        PackerError::Stopped => BackupError::Internal("uploads stopped".into()),
        PackerError::Thread(m) => BackupError::Internal(m),
    }
}

type Walked = (SnapshotId, Snapshot, Stats, Vec<(BlobId, Vec<u8>)>);

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())
}

impl Walker {
    fn run(
        mut self,
        paths: &[PathBuf],
        parent: Option<(SnapshotId, Snapshot)>,
        time: u64,
    ) -> Result<Walked, BackupError> {
        let parent_root = parent.as_ref().and_then(|(_, s)| self.load_tree(&s.tree));
        let cached_root = parent_root.as_ref().and(parent.as_ref().map(|(_, s)| s.tree));
        let mut nodes = Vec::new();
        for p in paths {
            let name = p.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_else(|| b"root".to_vec());
            let prev = parent_root.as_ref().and_then(|t| t.nodes.iter().find(|n| n.name == name).cloned());
            match self.node(p, name, prev.as_ref(), std::fs::symlink_metadata(p))? {
                Some(n) => nodes.push(n),
                None => {
                    return Err(BackupError::BadPath(format!(
                        "{}: {}",
                        p.display(),
                        self.stats.errors.last().cloned().unwrap_or_default()
                    )));
                }
            }
        }
        let root = self.put_tree(Tree { nodes }, cached_root)?;
        let snapshot = Snapshot {
            time,
            hostname: hostname(),
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
            tree: root,
            parent: parent.map(|(id, _)| id),
            files: self.stats.files,
            bytes: self.stats.bytes,
            lock_until: if self.opts.lock_secs > 0 { time.saturating_add(self.opts.lock_secs) } else { 0 },
        };
        let doc = tree::encode(&snapshot);
        let sid = blob_id(&self.id_key, &doc);
        self.add_blob(BlobKind::Tree, sid, &doc)?;
        self.trees.push((sid, doc));
        let Walker { packer, mut stats, trees, .. } = self;
        stats.bytes_new = packer.finish().map_err(packer_error)?;
        Ok((SnapshotId(sid.0), snapshot, stats, trees))
    }

    /// Starts applying `dir/.peerignore`, if there is one; true when a matcher was pushed.
    fn push_ignore_file(&mut self, dir: &Path) -> bool {
        let file = dir.join(IGNORE_FILE);
        if !file.is_file() {
            return false;
        }
        let mut b = GitignoreBuilder::new(dir);
        if let Some(e) = b.add(&file) {
            self.error(format!("{}: {e}", file.display()));
        }
        match b.build() {
            Ok(g) => {
                self.ignores.push(g);
                true
            }
            Err(e) => {
                self.error(format!("{}: {e}", file.display()));
                false
            }
        }
    }

    /// True when `path` is excluded: the deepest `.peerignore` with an opinion decides
    /// (a `!pattern` re-includes), then the `--exclude` patterns.
    fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        for g in self.ignores.iter().rev() {
            match g.matched(path, is_dir) {
                ignore::Match::Ignore(_) => return true,
                ignore::Match::Whitelist(_) => return false,
                ignore::Match::None => {}
            }
        }
        self.exclude.matched(path, is_dir).is_ignore()
    }

    fn load_tree(&self, id: &BlobId) -> Option<Tree> {
        self.state.tree(id).ok().flatten().and_then(|b| tree::decode_tree(&b).ok())
    }

    /// True when the blob is in this run's packs, or stored in a pack that still has
    /// `copies` holders under live contracts (else it is stored again).
    fn known(&mut self, id: &BlobId) -> Result<bool, BackupError> {
        if self.in_run.contains(id) {
            return Ok(true);
        }
        self.stored(id)
    }

    /// True when the blob is stored in a pack that has `copies` holders under live
    /// contracts (this run's packs count once recorded).
    fn stored(&mut self, id: &BlobId) -> Result<bool, BackupError> {
        match self.state.blob(id)? {
            Some(e) => self.pack_ok(&e.pack),
            None => Ok(false),
        }
    }

    /// True when `pack` has `copies` holders under live contracts (cached per pack).
    fn pack_ok(&mut self, pack: &PackId) -> Result<bool, BackupError> {
        if let Some(ok) = self.packs_ok.get(pack) {
            return Ok(*ok);
        }
        // Stored means it survives as many losses as this backup asks for: copies − 1, or M.
        let losses = match self.opts.erasure {
            Some(s) => usize::from(s.m),
            None => self.opts.copies.saturating_sub(1),
        };
        let ok = self.state.pack(pack)?.is_some_and(|rec| {
            let live = rec.live_count(|h| self.live.contains(&h.contract));
            live >= rec.needed() + losses
        });
        self.packs_ok.insert(*pack, ok);
        Ok(ok)
    }

    fn error(&mut self, e: String) {
        if self.stats.errors.len() < MAX_LISTED {
            self.stats.errors.push(e);
        }
        self.stats.error_count += 1;
    }

    fn add_blob(&mut self, kind: BlobKind, id: BlobId, plain: &[u8]) -> Result<(), BackupError> {
        self.forget_recorded()?;
        if self.known(&id)? {
            return Ok(());
        }
        let mut buf = self.packer.buffer();
        crate::repo::blob::fresh(&mut buf, plain.len());
        buf.extend_from_slice(plain);
        self.packer.add(kind, id, buf).map_err(packer_error)?;
        self.in_run.insert(id);
        Ok(())
    }

    /// Forgets the blobs of packs recorded since the last call: [`Self::stored`] finds
    /// them in the index from now on. A pack without enough live holders (a contract made
    /// during this run) keeps its blobs here, so they are not stored again.
    fn forget_recorded(&mut self) -> Result<(), BackupError> {
        while let Ok((pack, ids)) = self.recorded.try_recv() {
            self.learn_contracts(&pack)?;
            self.packs_ok.remove(&pack);
            if self.pack_ok(&pack)? {
                for id in &ids {
                    self.in_run.remove(id);
                }
            }
        }
        Ok(())
    }

    /// Adds to the live contracts those of `pack`'s holders that were made during this
    /// run (a first backup makes its contracts while it uploads), so that the pack counts
    /// as stored and its blobs leave the in-run set. Without this a first backup held
    /// every blob id it made to its end: about 50 bytes per blob, 500 MB at 10,000,000.
    fn learn_contracts(&mut self, pack: &PackId) -> Result<(), BackupError> {
        let Some(rec) = self.state.pack(pack)? else { return Ok(()) };
        let now = crate::protocol::now();
        for h in rec.holders() {
            if self.live.contains(&h.contract) {
                continue;
            }
            let c = self.state.contract(&h.contract)?;
            if c.is_some_and(|c| c.role == crate::state::Role::Client && c.is_live(now)) {
                self.live.insert(h.contract);
            }
        }
        Ok(())
    }

    /// Stores the tree `t` (if new) and caches its document for later runs, unless it is
    /// `cached`: the parent snapshot's tree at the same place, read from the cache, when
    /// the directory is unchanged. Returns its id. Without that check an unchanged backup
    /// of 10,000,000 files wrote all its trees (about 1 GB) to the state again.
    fn put_tree(&mut self, t: Tree, cached: Option<BlobId>) -> Result<BlobId, BackupError> {
        let doc = tree::encode(&t);
        let id = blob_id(&self.id_key, &doc);
        self.add_blob(BlobKind::Tree, id, &doc)?;
        if cached == Some(id) {
            return Ok(id);
        }
        self.trees_bytes += doc.len();
        self.trees.push((id, doc));
        if self.trees_bytes >= TREE_BATCH {
            let batch = std::mem::take(&mut self.trees);
            self.trees_bytes = 0;
            self.tx
                .blocking_send(FromWalk::Trees(batch))
                .map_err(|_| BackupError::Internal("uploads stopped".into()))?;
        }
        Ok(id)
    }

    /// The node for `path`, whose `symlink_metadata` is `meta`; `None` (with the reason
    /// recorded) when it cannot be read.
    fn node(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        prev: Option<&Node>,
        meta: std::io::Result<std::fs::Metadata>,
    ) -> Result<Option<Node>, BackupError> {
        let m = match meta {
            Ok(m) => m,
            Err(e) => {
                self.error(format!("{}: {e}", path.display()));
                return Ok(None);
            }
        };
        let mut node = Node {
            name,
            kind: NodeKind::File,
            mode: m.mode() & 0o7777,
            mtime_ns: mtime_ns(&m),
            size: 0,
            inode: m.ino(),
            content: vec![],
            subtree: None,
            target: vec![],
            owner: Some((m.uid(), m.gid())),
            device: 0,
            links: 0,
            xattrs: vec![],
        };
        let ft = m.file_type();
        if ft.is_file() && m.nlink() > 1 {
            (node.device, node.links) = (m.dev(), m.nlink());
        }
        if ft.is_file() || ft.is_dir() {
            node.xattrs = self.xattrs(path);
        }
        let kept = if ft.is_symlink() {
            node.kind = NodeKind::Symlink;
            match std::fs::read_link(path) {
                Ok(t) => {
                    node.target = t.as_os_str().as_bytes().to_vec();
                    true
                }
                Err(e) => {
                    self.error(format!("{}: {e}", path.display()));
                    false
                }
            }
        } else if ft.is_dir() {
            node.kind = NodeKind::Dir;
            self.dir(path, &mut node, prev)?
        } else if ft.is_file() {
            node.size = m.len();
            self.file(path, &mut node, prev)?
        } else if ft.is_fifo() {
            node.kind = NodeKind::Fifo;
            true
        } else if ft.is_socket() {
            // A socket is a live endpoint of a running program: nothing to keep (restic
            // and tar skip them too). Not an error.
            tracing::debug!("{}: a socket; not backed up", path.display());
            false
        } else {
            self.error(format!("{}: a device file; skipped", path.display()));
            false
        };
        Ok(kept.then_some(node))
    }

    /// The extended attributes of `path` (not following a symlink), sorted by name. One
    /// that cannot be read is an error of this file, recorded; the others are kept.
    fn xattrs(&mut self, path: &Path) -> Vec<Xattr> {
        let names = match xattr::list(path) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return vec![],
            Err(e) => {
                self.error(format!("{}: extended attributes: {e}", path.display()));
                return vec![];
            }
        };
        let mut out = Vec::new();
        for name in names {
            match xattr::get(path, &name) {
                Ok(Some(value)) => out.push(Xattr { name: name.as_bytes().to_vec(), value }),
                Ok(None) => {}
                Err(e) => self.error(format!("{}: extended attribute {}: {e}", path.display(), name.to_string_lossy())),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Walks directory `path` into its tree, stored as a blob; false when it cannot be
    /// listed (the reason recorded).
    fn dir(&mut self, path: &Path, node: &mut Node, prev: Option<&Node>) -> Result<bool, BackupError> {
        let prev_id = prev.filter(|p| p.kind == NodeKind::Dir).and_then(|p| p.subtree);
        let prev_tree = prev_id.and_then(|id| self.load_tree(&id));
        let cached = prev_tree.as_ref().and(prev_id);
        let prev_by_name: HashMap<Vec<u8>, Node> =
            prev_tree.map(|t| t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect()).unwrap_or_default();
        let mut entries = match std::fs::read_dir(path).and_then(|rd| rd.collect::<Result<Vec<_>, _>>()) {
            Ok(v) => v,
            Err(e) => {
                self.error(format!("{}: {e}", path.display()));
                return Ok(false);
            }
        };
        entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        let pushed = self.push_ignore_file(path);
        let entries: Vec<(PathBuf, Vec<u8>)> = entries
            .into_iter()
            .filter(|e| !self.excluded(&e.path(), e.file_type().is_ok_and(|t| t.is_dir())))
            .map(|e| (e.path(), e.file_name().as_bytes().to_vec()))
            .collect();
        let mut ahead = ReadAhead::default();
        let mut nodes = Vec::with_capacity(entries.len());
        let mut result = Ok(());
        for i in 0..entries.len() {
            let meta = ahead.next(&entries, i, |n, m| must_read(prev_by_name.get(n), m));
            let (p, n) = &entries[i];
            match self.node(p, n.clone(), prev_by_name.get(n), meta) {
                Ok(Some(child)) => nodes.push(child),
                Ok(None) => {}
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        if pushed {
            self.ignores.pop();
        }
        result?;
        node.subtree = Some(self.put_tree(Tree { nodes }, cached)?);
        Ok(true)
    }

    /// A regular file: its content from the parent snapshot when unchanged (size, mtime,
    /// inode) and still stored, else read and chunked; false when it cannot be read.
    fn file(&mut self, path: &Path, node: &mut Node, prev: Option<&Node>) -> Result<bool, BackupError> {
        self.stats.files += 1;
        self.stats.bytes += node.size;
        if let Some(p) = prev
            && unchanged(p, node.size, node.mtime_ns, node.inode)
            && p.content.iter().all(|c| self.known(c).unwrap_or(false))
        {
            node.content = p.content.clone();
            self.counters.done.fetch_add(node.size, Ordering::Relaxed);
            return Ok(true);
        }
        match self.read_file(path, node) {
            Ok(()) => {
                self.stats.files_read += 1;
                Ok(true)
            }
            Err(ReadError::Io(e)) => {
                self.stats.files -= 1;
                self.stats.bytes -= node.size;
                self.error(format!("{}: {e}", path.display()));
                Ok(false)
            }
            Err(ReadError::Fatal(e)) => Err(e),
        }
    }

    fn read_file(&mut self, path: &Path, node: &mut Node) -> Result<(), ReadError> {
        let f = std::fs::File::open(path).map_err(ReadError::Io)?;
        let mut size = 0u64;
        let len = f.metadata().map_err(ReadError::Io)?.len();
        let mut buf = std::mem::take(&mut self.read_buf);
        let read = chunker::for_each_chunk_in(f, len, &mut buf, |chunk| {
            size += chunk.len() as u64;
            self.stats.bytes_read += chunk.len() as u64;
            self.counters.done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let id = blob_id(&self.id_key, chunk);
            self.add_blob(BlobKind::Data, id, chunk).map_err(ReadError::Fatal)?;
            node.content.push(id);
            Ok::<(), ReadError>(())
        });
        self.read_buf = buf;
        read?;
        // The file may have changed size while read: record what was read.
        self.stats.bytes = self.stats.bytes - node.size + size;
        node.size = size;
        Ok(())
    }
}

/// True when a file whose node in the parent snapshot is `p` still has that size (bytes),
/// mtime (ns) and inode: its content is taken from the parent, not read.
fn unchanged(p: &Node, size: u64, mtime_ns: i64, inode: u64) -> bool {
    p.kind == NodeKind::File && p.size == size && p.mtime_ns == mtime_ns && p.inode == inode
}

/// True when the walk will read the file with metadata `m`, whose node in the parent
/// snapshot is `prev`: a non-empty regular file, changed or new.
fn must_read(prev: Option<&Node>, m: &std::fs::Metadata) -> bool {
    m.is_file() && m.len() > 0 && !prev.is_some_and(|p| unchanged(p, m.len(), mtime_ns(m), m.ino()))
}

/// Files of one directory the walk asks the kernel to start reading before it reaches them
/// (`posix_fadvise(POSIX_FADV_WILLNEED)`), so that the disk works on the next files while
/// the walker chunks and hashes this one: with cold caches a walk of small files
/// otherwise waits for one read at a time.
const READ_AHEAD_FILES: usize = 32;
/// Bytes of each file asked for ahead (1 MiB); the kernel's own read-ahead follows the
/// walker's reads past them.
const READ_AHEAD_BYTES: u64 = 1 << 20;
/// Entries of a directory stat'ed ahead of the walk, at most, to find the files it will
/// read (an unchanged directory has none, and is not held in memory whole).
const READ_AHEAD_ENTRIES: usize = 1024;

/// The entries of one directory stat'ed ahead of the walk, each with whether its read
/// was asked for ahead ([`READ_AHEAD_FILES`]).
#[derive(Default)]
struct ReadAhead {
    stated: std::collections::VecDeque<(std::io::Result<std::fs::Metadata>, bool)>,
    /// The next entry to stat.
    next: usize,
    /// Files among `stated` whose read was asked for.
    asked: usize,
}

impl ReadAhead {
    /// The metadata of `entries[i]` (`i` counts up from 0, one call each), having stat'ed
    /// the entries after it and asked for the first bytes of those `read` says the walk
    /// will read, up to [`READ_AHEAD_FILES`] of them.
    fn next(
        &mut self,
        entries: &[(PathBuf, Vec<u8>)],
        i: usize,
        read: impl Fn(&[u8], &std::fs::Metadata) -> bool,
    ) -> std::io::Result<std::fs::Metadata> {
        while self.next < entries.len()
            && (self.next <= i || (self.asked < READ_AHEAD_FILES && self.next < i + READ_AHEAD_ENTRIES))
        {
            let (path, name) = &entries[self.next];
            let meta = std::fs::symlink_metadata(path);
            let mut asked = false;
            if self.next > i
                && let Ok(m) = &meta
                && read(name, m)
            {
                advise_will_need(path, m.len());
                (asked, self.asked) = (true, self.asked + 1);
            }
            self.stated.push_back((meta, asked));
            self.next += 1;
        }
        match self.stated.pop_front() {
            Some((meta, asked)) => {
                self.asked -= usize::from(asked);
                meta
            }
            None => std::fs::symlink_metadata(&entries[i].0),
        }
    }
}

/// Asks the kernel to start reading the first [`READ_AHEAD_BYTES`] of the `len`-byte file
/// at `path` into the page cache, without waiting. Best effort: an error here is met
/// again, and reported, when the file is read.
fn advise_will_need(path: &Path, len: u64) {
    #[cfg(target_os = "linux")]
    if let Ok(f) = std::fs::File::open(path) {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        // At most READ_AHEAD_BYTES (1 MiB): the cast cannot wrap.
        let _ = posix_fadvise(&f, 0, len.min(READ_AHEAD_BYTES) as i64, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (path, len);
}

enum ReadError {
    Io(std::io::Error),
    Fatal(BackupError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// This machine's host name (from `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else "unknown").
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first backup makes its contracts while it uploads: once a pack placed under such
    /// a contract is recorded, its blobs leave the in-run set (before, every blob of a
    /// first backup stayed there to its end: 500 MB at 10,000,000 blobs).
    #[test]
    fn blobs_of_a_pack_placed_under_a_contract_made_during_the_run_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(&dir.path().join("state.redb")).unwrap();
        let opts = BackupOptions {
            paths: vec![],
            copies: 1,
            pack_size: 4096,
            zstd_level: 3,
            upload_concurrency: 1,
            exclude: vec![],
            erasure: None,
            lock_secs: 0,
        };
        let (tx, _rx) = mpsc::channel(2);
        let (recorded_tx, recorded) = std::sync::mpsc::channel();
        let mut walker = Walker {
            id_key: [1; 32],
            read_buf: Vec::new(),
            state: state.clone(),
            opts: opts.clone(),
            counters: Default::default(),
            packer: start_packer([2; 32], &opts, tx.clone()).unwrap(),
            tx,
            in_run: HashSet::new(),
            recorded,
            live: HashSet::new(), // no contract when the run started
            packs_ok: HashMap::new(),
            trees: Vec::new(),
            trees_bytes: 0,
            stats: Stats::default(),
            exclude: exclude_matcher(&[]).unwrap(),
            ignores: Vec::new(),
        };
        let (blob, pack, contract) = (BlobId([3; 32]), PackId([4; 32]), crate::id::ContractId([5; 32]));
        walker.in_run.insert(blob);
        // A pack checked before its contract existed is remembered as not stored…
        assert!(!walker.pack_ok(&pack).unwrap());
        // …then the contract is made, the pack placed under it and recorded.
        state.put_contract(&contract, &crate::state::ContractRecord::live_for_tests()).unwrap();
        let rec = PackRecord::copies(100, vec![crate::state::Holder { peer: vec![0], contract }], 1);
        let entry = PackEntry { id: blob, kind: BlobKind::Data, offset: 0, length: 50, raw_length: 40 };
        state.commit_pack(&pack, &rec, &[entry]).unwrap();
        recorded_tx.send((pack, vec![blob])).unwrap();
        walker.forget_recorded().unwrap();
        assert!(walker.in_run.is_empty(), "the recorded pack's blob is still held");
        assert!(walker.known(&blob).unwrap(), "and it is found in the index instead");
    }

    /// The read-ahead hands back each entry's own metadata, in order, asks ahead only for
    /// files the walk will read, and never for more than [`READ_AHEAD_FILES`] at once.
    #[test]
    fn read_ahead_keeps_order_and_asks_only_for_files_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for k in 0..100usize {
            let name = format!("f{k:03}");
            let path = dir.path().join(&name);
            // Sizes 0..=99 bytes: the empty file is never read.
            std::fs::write(&path, vec![b'x'; k]).unwrap();
            entries.push((path, name.into_bytes()));
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        entries.push((dir.path().join("sub"), b"sub".to_vec()));
        // Files with an even size count as unchanged since the parent.
        let read = |_: &[u8], m: &std::fs::Metadata| must_read(None, m) && m.len() % 2 == 1;
        let mut ahead = ReadAhead::default();
        let mut most = 0;
        for (i, (path, _)) in entries.iter().enumerate() {
            let m = ahead.next(&entries, i, read).unwrap();
            assert_eq!(m.ino(), std::fs::symlink_metadata(path).unwrap().ino(), "entry {i}");
            let asked: Vec<bool> = ahead.stated.iter().map(|(_, a)| *a).collect();
            assert_eq!(ahead.asked, asked.iter().filter(|a| **a).count());
            for ((m, a), k) in ahead.stated.iter().zip(i + 1..) {
                assert_eq!(*a, k < 100 && k % 2 == 1, "entry {k}: {m:?}");
            }
            most = most.max(ahead.asked);
        }
        assert_eq!(most, READ_AHEAD_FILES);
        assert!(ahead.stated.is_empty());
    }

    #[test]
    fn a_file_is_read_when_new_or_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"hello").unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(must_read(None, &m));
        let mut prev =
            Node { name: b"a".to_vec(), mtime_ns: mtime_ns(&m), size: 5, inode: m.ino(), ..Default::default() };
        assert!(!must_read(Some(&prev), &m));
        prev.size = 4;
        assert!(must_read(Some(&prev), &m));
        std::fs::write(&path, b"").unwrap();
        assert!(!must_read(None, &std::fs::symlink_metadata(&path).unwrap()), "an empty file has nothing to read");
    }
}
