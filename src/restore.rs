//! Restore: the backup flow backwards (DESIGN §4).
//!
//! The includes and every directory to create are checked first; then the snapshot's
//! trees are walked, in the backup's order, into plans of at most [`BATCH_FILES`] files
//! (directories, files with their content blobs, symlinks), the next planned while one
//! is fetched and written, so memory does not grow with the snapshot. Every file is
//! written to a temporary file beside its destination, created by its first write;
//! the needed blobs are grouped by pack so each pack is fetched once per batch (a pack
//! the next batch continues is carried over), from whichever of its
//! holders has a free slot ([`HolderSlots`]: every holder serves at once),
//! verified against its id by the [`PackSource`], and its blobs written at their offsets.
//! A file is renamed into place only when all its content arrived, so a failure never
//! leaves a half-written file under the real name. Existing files that differ are left
//! alone unless `overwrite`; a file gets its mode and time once complete, directories last,
//! deepest first.
//! The index and the tree cache are read through the store actor ([`crate::store`]);
//! every file-system step runs on a blocking thread.

use crate::control::RestoreSummary;
use crate::id::{BlobId, PackId, SnapshotId};
use crate::identity::Identity;
use crate::repo::pack::{self, PackEntry};
use crate::repo::tree::{self, Node, NodeKind, Snapshot};
use crate::state::{IndexEntry, State, StateError};
use crate::store::Store;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Packs fetched at once when the source gives no better figure ([`PackSource::concurrency`]).
pub const FETCH_CONCURRENCY: usize = 4;
/// Fetches one holder serves at once for one source: two, so a holder's link stays busy
/// while the client verifies the pack it just received.
pub const FETCHES_PER_HOLDER: usize = 2;
/// Most packs a restore fetches at once, whatever the number of holders: each is held in
/// memory until its blobs are written (`backup.pack_size`, 16 MiB by default).
pub const MAX_FETCHES: usize = 12;
/// Most bytes of packs a restore holds at once (96 MiB: six packs of the default 16 MiB;
/// with smaller packs [`MAX_FETCHES`] binds first). Each pack in flight is held whole in
/// memory from its arrival until its blobs are written; this keeps a restore's memory
/// bounded by bytes rather than by a count of packs whose size the client does not choose.
pub const FETCH_BUDGET: usize = 96 << 20;

/// Supplies packs (implemented by the daemon: picks a holder, checks the Merkle root,
/// fails over to the next holder).
#[async_trait::async_trait]
pub trait PackSource: Send + Sync {
    /// The bytes of `pack`, already checked against its id; the error carries what each
    /// holder asked answered.
    async fn fetch(&self, pack: PackId) -> Result<bytes::Bytes, crate::transfer::TransferError>;

    /// The bytes of `pack` as the first holder that answers sent them, *not* checked
    /// against its id, for a caller that checks everything it reads: a restore opens each
    /// blob it needs with its AEAD tag, whose associated data binds the blob's id
    /// (protocol.md §3.2), and on any failure asks [`Self::fetch`], which checks the copy
    /// and fails over to the next holder. This spares the pack's Merkle root on the
    /// common path, a SHA-256 pass over every byte fetched. Same errors as
    /// [`Self::fetch`], which it defaults to.
    async fn fetch_unchecked(&self, pack: PackId) -> Result<bytes::Bytes, crate::transfer::TransferError> {
        self.fetch(pack).await
    }

    /// How many packs to fetch at once; at most [`MAX_FETCHES`] is used.
    fn concurrency(&self) -> usize {
        FETCH_CONCURRENCY
    }
}

/// Fetch slots per holder, so that a restore draws on every holder's uplink at once, as a
/// BitTorrent client draws pieces from every peer that has them.
///
/// Each holder (`K`, a PeerId in the daemon) has `per` slots. A fetch of an object that
/// several holders keep takes a free slot of the least busy of them; when all of them are
/// busy it waits for the first slot any of them frees. A slow holder therefore serves fewer
/// packs and a fast one more, and the restore runs at the sum of the holders' uplinks
/// rather than at the first holder's.
///
/// Holders that failed a fetch of this restore ([`HolderSlots::failed`]) are asked only
/// when no other holder keeps the object, so a dead holder costs one wait, not one per
/// pack; among equally busy holders, the ones the caller calls ready (connected now) go
/// first, so a holder that just went away is not the first one tried.
pub struct HolderSlots<K> {
    per: usize,
    slots: Mutex<HashMap<K, Arc<tokio::sync::Semaphore>>>,
    failed: Mutex<HashSet<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> HolderSlots<K> {
    /// `per` slots for every holder (at least 1).
    pub fn new(per: usize) -> Self {
        HolderSlots { per: per.max(1), slots: Mutex::new(HashMap::new()), failed: Mutex::new(HashSet::new()) }
    }

    fn of(&self, holder: &K) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(holder.clone()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per))).clone()
    }

    /// `holder` failed a fetch: asked last from now on, until it serves one again.
    pub fn failed(&self, holder: &K) {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).insert(holder.clone());
    }

    /// Whether `holder` failed a fetch and has not served one since.
    pub fn has_failed(&self, holder: &K) -> bool {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).contains(holder)
    }

    /// `holder` served a fetch: no longer asked last.
    pub fn served(&self, holder: &K) {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).remove(holder);
    }

    /// A slot of one of `holders`: among those that have not failed (all of them if every
    /// one has), the least busy with a slot free, a `ready` one first on a tie, then the
    /// earlier; else the first to free a slot. `None` when `holders` is empty. The slot is
    /// given back when the permit is dropped.
    pub async fn acquire(
        &self,
        holders: &[K],
        ready: impl Fn(&K) -> bool,
    ) -> Option<(K, tokio::sync::OwnedSemaphorePermit)> {
        if let Some(got) = self.try_acquire(holders, ready) {
            return Some(got);
        }
        let (candidates, sems) = self.candidates(holders);
        if sems.is_empty() {
            return None;
        }
        let waits = sems.iter().map(|s| Box::pin(s.clone().acquire_owned()));
        let (got, j, _) = futures::future::select_all(waits).await;
        // The semaphores are never closed.
        got.ok().map(|p| (holders[candidates[j]].clone(), p))
    }

    /// A free slot of one of `holders`, chosen as [`Self::acquire`] does, without waiting:
    /// `None` when none of them has one free now.
    pub fn try_acquire(
        &self,
        holders: &[K],
        ready: impl Fn(&K) -> bool,
    ) -> Option<(K, tokio::sync::OwnedSemaphorePermit)> {
        let (candidates, sems) = self.candidates(holders);
        let mut order: Vec<usize> = (0..sems.len()).collect();
        order.sort_by_key(|&j| (std::cmp::Reverse(sems[j].available_permits()), !ready(&holders[candidates[j]])));
        for j in order {
            if let Ok(p) = sems[j].clone().try_acquire_owned() {
                return Some((holders[candidates[j]].clone(), p));
            }
        }
        None
    }

    /// The positions in `holders` of those that have not failed (all of them if every one
    /// has), with their semaphores.
    fn candidates(&self, holders: &[K]) -> (Vec<usize>, Vec<Arc<tokio::sync::Semaphore>>) {
        let mut candidates: Vec<usize> = {
            let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            (0..holders.len()).filter(|&i| !failed.contains(&holders[i])).collect()
        };
        if candidates.is_empty() {
            candidates = (0..holders.len()).collect();
        }
        let sems = candidates.iter().map(|&i| self.of(&holders[i])).collect();
        (candidates, sems)
    }
}

/// How long a fetch from a holder that was not connected when it began may go unanswered
/// before the object is also asked of another holder: 3 seconds. A holder that is
/// reachable at all is dialed, hole punch included, well within that (BENCHMARKS.md,
/// "Behind home routers"), while one that went away costs the dial timeout or the wait for
/// a direct connection (`net::DIAL_TIMEOUT`, `net::DIRECT_WAIT`: 8 and 20 seconds).
pub const HEDGE_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// Fetches an object kept by each of `holders` with `fetch`, from the holder
/// [`HolderSlots::acquire`] gives, failing over to the next until one answers, and hedged
/// as [`fetch_some`] says; returns the first answer, or every holder's error (empty when
/// there was no holder).
pub async fn fetch_hedged<K, T, E, Fut>(
    slots: &HolderSlots<K>,
    holders: Vec<K>,
    ready: impl Fn(&K) -> bool,
    hedge_after: std::time::Duration,
    fetch: impl Fn(K) -> Fut,
) -> Result<T, Vec<E>>
where
    K: std::hash::Hash + Eq + Clone,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let items = holders.into_iter().map(|k| ((), k)).collect();
    let (got, errors) = fetch_some(slots, items, 1, ready, hedge_after, |(), k| fetch(k)).await;
    got.into_iter().next().map(|((), v)| v).ok_or(errors)
}

/// Fetches `want` of `items` at once, each `(what, holder)` an object `what` kept by
/// `holder` (the copies of one pack: `want` = 1; the shards of an erasure-coded pack:
/// `want` = K, protocol.md §3.7), preferring the earlier of equally good items; returns
/// the answers (`want` of them unless too many failed) and the errors of the fetches that
/// failed.
///
/// Each fetch takes a slot of its holder ([`HolderSlots::try_acquire`]: the least busy
/// holder that has not failed, one connected now first); while fewer than `want` fetches
/// run or have answered it waits for the first slot any remaining holder frees. A fetch
/// that fails is replaced by the next item at once.
///
/// A hedged request (Dean and Barroso, "The Tail at Scale", CACM 56(2), 2013): when a
/// fetch's holder was not `ready` (not connected when the fetch began: a dial is needed,
/// which waits out a timeout if the holder went away) and it has not answered within
/// `hedge_after`, one more item is fetched from a holder with a free slot (tried again
/// every `hedge_after` while none is free), and the first `want` answers win; the
/// fetches still running then are dropped, and their slots with them. A holder that was
/// connected is not hedged: its answer may take as long as its uplink needs, and if it
/// stops answering its connection is closed by ping (protocol.md §1.10).
pub async fn fetch_some<I, K, T, E, Fut>(
    slots: &HolderSlots<K>,
    mut left: Vec<(I, K)>,
    want: usize,
    ready: impl Fn(&K) -> bool,
    hedge_after: std::time::Duration,
    fetch: impl Fn(I, K) -> Fut,
) -> (Vec<(I, T)>, Vec<E>)
where
    I: Clone,
    K: std::hash::Hash + Eq + Clone,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let (mut got, mut errors) = (Vec::new(), Vec::new());
    let mut running = futures::stream::FuturesUnordered::new();
    // Fetches from holders that were not ready, by the time they may be hedged (in the
    // order they started, so in time order), and the ones of them still running.
    let mut watch: std::collections::VecDeque<(tokio::time::Instant, u64)> = Default::default();
    let mut live: HashSet<u64> = HashSet::new();
    let mut seq = 0u64;
    let begin = |what: I, k: K, n: u64, permit: tokio::sync::OwnedSemaphorePermit| {
        let f = fetch(what.clone(), k.clone());
        async move {
            let r = f.await;
            drop(permit);
            (n, what, k, r)
        }
    };
    // Starts the first remaining item kept by holder `$k`, in the slot `$permit`.
    macro_rules! start {
        ($k:expr, $permit:expr) => {
            let k = $k;
            if let Some(at) = left.iter().position(|(_, h)| *h == k) {
                let (what, k) = left.remove(at);
                seq += 1;
                if !ready(&k) {
                    watch.push_back((tokio::time::Instant::now() + hedge_after, seq));
                    live.insert(seq);
                }
                running.push(begin(what, k, seq, $permit));
            }
        };
    }
    loop {
        if got.len() >= want {
            break;
        }
        let holders: Vec<K> = left.iter().map(|(_, k)| k.clone()).collect();
        if got.len() + running.len() < want {
            if let Some((k, permit)) = slots.try_acquire(&holders, &ready) {
                start!(k, permit);
                continue;
            }
            if running.is_empty() {
                // Nothing runs: wait for a slot, or stop when no item is left.
                let Some((k, permit)) = slots.acquire(&holders, &ready).await else { break };
                start!(k, permit);
                continue;
            }
        }
        while watch.front().is_some_and(|(_, n)| !live.contains(n)) {
            watch.pop_front();
        }
        let hedge_at = watch.front().map(|(t, _)| *t).filter(|_| !left.is_empty());
        let short = got.len() + running.len() < want && !left.is_empty();
        tokio::select! {
            Some((n, what, k, r)) = running.next() => {
                live.remove(&n);
                match r {
                    Ok(v) => {
                        slots.served(&k);
                        got.push((what, v));
                    }
                    Err(e) => {
                        slots.failed(&k);
                        errors.push(e);
                    }
                }
            }
            () = tokio::time::sleep_until(hedge_at.unwrap_or_else(tokio::time::Instant::now)), if hedge_at.is_some() => {
                // Only a free slot: a hedge never waits while fetches run.
                if let Some((_, n)) = watch.pop_front() {
                    match slots.try_acquire(&holders, &ready) {
                        Some((k, permit)) => {
                            live.remove(&n);
                            start!(k, permit);
                        }
                        None => watch.push_back((tokio::time::Instant::now() + hedge_after, n)),
                    }
                }
            }
            Some((k, permit)) = slots.acquire(&holders, &ready), if short => { start!(k, permit); }
        }
    }
    (got, errors)
}

/// Errors that stop a restore before it starts writing.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No snapshot matches.
    #[error("{0}")]
    NoSnapshot(String),
    /// The snapshot's trees cannot be loaded.
    #[error("cannot read the snapshot's metadata: {0}")]
    Metadata(#[from] TreeError),
    /// A tree does not fit the snapshot: a root that does not match its paths, a
    /// directory without a tree, an unsafe name.
    #[error("cannot read the snapshot's metadata: {0}")]
    BadTree(String),
    /// The target is unusable.
    #[error("{0}")]
    Target(String),
    /// An `--include` names nothing in the snapshot.
    #[error("{0}")]
    NotInSnapshot(String),
    /// Local state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Finds a snapshot by id prefix, or the latest when `which` is `None` or `"latest"`.
pub fn resolve(state: &State, which: Option<&str>) -> Result<(SnapshotId, Snapshot), RestoreError> {
    let all = state.snapshots()?;
    match which {
        None | Some("latest") => all
            .into_iter()
            .last()
            .ok_or_else(|| RestoreError::NoSnapshot("no snapshot yet; run 'peer backup PATH' first".into())),
        Some(p) => {
            let p = p.to_ascii_lowercase();
            let mut m: Vec<_> = all.into_iter().filter(|(id, _)| id.to_string().starts_with(&p)).collect();
            match m.len() {
                0 => Err(RestoreError::NoSnapshot(format!("no snapshot matches '{p}'; see 'peer snapshots'"))),
                1 => Ok(m.remove(0)),
                n => Err(RestoreError::NoSnapshot(format!("'{p}' matches {n} snapshots; give more digits"))),
            }
        }
    }
}

struct FilePlan {
    dest: PathBuf,
    /// Names its temporary file ([`FilePlan::tmp`]): (number in the restore, random).
    tmp_name: (u64, u32),
    node: Node,
    failed: Option<String>,
}

impl FilePlan {
    /// The temporary file beside `dest` that takes the content until it is complete.
    fn tmp(&self) -> PathBuf {
        let (seq, nonce) = self.tmp_name;
        self.dest.with_file_name(format!(".peer-restore-{seq}-{nonce:x}.tmp"))
    }
}

/// Why a tree document (protocol.md §3.4) could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The index knows no pack that holds it.
    #[error("tree {0} is in no known pack")]
    NotIndexed(String),
    /// It is not in the local tree cache (code that reads only the cache).
    #[error("tree {0} is not cached here")]
    NotCached(String),
    /// Its pack could not be fetched from any holder.
    #[error(transparent)]
    Fetch(#[from] crate::transfer::TransferError),
    /// Its blob does not open or decode (short tree id, what failed).
    #[error("tree {0}: {1}")]
    Bad(String, crate::repo::RepoError),
    /// Local state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Loads tree documents: local cache first, else from their pack.
struct Docs<'a> {
    id: &'a Identity,
    store: &'a Store,
    source: &'a dyn PackSource,
    last: Option<(PackId, bytes::Bytes)>,
}

impl Docs<'_> {
    async fn get(&mut self, blob: &BlobId) -> Result<Vec<u8>, TreeError> {
        let b = *blob;
        let (cached, entry) = self.store.call(move |s| Ok((s.tree(&b)?, s.blob(&b)?))).await?;
        if let Some(d) = cached {
            return Ok(d);
        }
        let e = entry.ok_or_else(|| TreeError::NotIndexed(blob.to_string()))?;
        if self.last.as_ref().map(|(p, _)| *p) != Some(e.pack) {
            let bytes = self.source.fetch(e.pack).await?;
            self.last = Some((e.pack, bytes));
        }
        let bytes = &self.last.as_ref().expect("set just above").1;
        let entry = PackEntry { id: *blob, kind: e.kind, offset: e.offset, length: e.length, raw_length: e.raw_length };
        let doc = pack::read_blob((&self.id.id_key, &self.id.enc_key), bytes, &entry)
            .map_err(|e| TreeError::Bad(blob.short(), e))?;
        let cached = doc.clone();
        if let Err(e) = self.store.call(move |s| s.put_tree(&b, &cached)).await {
            tracing::warn!("cannot cache tree {}: {e}", b.short()); // only a cache: read again next time
        }
        Ok(doc)
    }

    async fn tree(&mut self, blob: &BlobId) -> Result<tree::Tree, RestoreError> {
        let doc = self.get(blob).await?;
        Ok(tree::decode_tree(&doc).map_err(|e| TreeError::Bad(blob.short(), e))?)
    }
}

/// The entries of one directory of a snapshot (restic's `ls`, one level): `path` empty
/// lists the backed-up paths themselves, else it is an original absolute path inside the
/// snapshot. Trees come from the local cache, else from their pack via `source`. Errors:
/// no such snapshot, a path not in the snapshot or not a directory, unreadable trees.
pub async fn ls(
    id: &Identity,
    store: &Store,
    source: &dyn PackSource,
    snapshot: Option<String>,
    path: &str,
) -> Result<(SnapshotId, Vec<crate::control::LsEntry>), RestoreError> {
    let (sid, snap) = store.call(move |s| Ok(resolve(s, snapshot.as_deref()))).await??;
    let mut docs = Docs { id, store, source, last: None };
    let root = docs.tree(&snap.tree).await?;
    let entry = |n: &Node, path: String| crate::control::LsEntry {
        name: String::from_utf8_lossy(&n.name).into_owned(),
        path,
        kind: match n.kind {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Fifo => "fifo",
        }
        .to_string(),
        size: n.size,
        mtime: u64::try_from(n.mtime_ns / 1_000_000_000).unwrap_or(0),
        mode: n.mode,
    };
    let want = Path::new(path);
    if path.is_empty() || path == "/" {
        let list = root.nodes.iter().zip(&snap.paths).map(|(n, p)| entry(n, p.clone())).collect();
        return Ok((sid, list));
    }
    let not_in = || RestoreError::NotInSnapshot(format!("{path} is not a directory in snapshot {}", sid.short()));
    // The backed-up path that holds `want`, then one tree per component below it.
    let (mut node, mut at) = root
        .nodes
        .iter()
        .zip(&snap.paths)
        .find(|(_, p)| want.starts_with(p.as_str()))
        .map(|(n, p)| (n.clone(), PathBuf::from(p)))
        .ok_or_else(not_in)?;
    let rest: Vec<_> = want.strip_prefix(&at).map_err(|_| not_in())?.components().collect();
    for c in rest {
        let sub = node.subtree.filter(|_| node.kind == NodeKind::Dir).ok_or_else(not_in)?;
        let t = docs.tree(&sub).await?;
        let name = c.as_os_str().as_bytes();
        node = t.nodes.into_iter().find(|n| n.name == name).ok_or_else(not_in)?;
        at.push(c);
    }
    let sub = node.subtree.filter(|_| node.kind == NodeKind::Dir).ok_or_else(not_in)?;
    let t = docs.tree(&sub).await?;
    let list =
        t.nodes.iter().map(|n| entry(n, at.join(std::ffi::OsStr::from_bytes(&n.name)).display().to_string())).collect();
    Ok((sid, list))
}

/// Draws up to `n` regular files of at most `max_each` bytes, uniformly, from snapshot
/// `snapshot` (latest when `None`) for a test restore ([`crate::drill`]). Trees come
/// from the local cache, else from their pack via `source`; memory holds the sample only.
pub async fn sample_files(
    id: &Identity,
    store: &Store,
    source: &dyn PackSource,
    snapshot: Option<String>,
    n: usize,
    max_each: u64,
) -> Result<(SnapshotId, Vec<crate::drill::Pick>), RestoreError> {
    let (sid, snap) = store.call(move |s| Ok(resolve(s, snapshot.as_deref()))).await??;
    let mut docs = Docs { id, store, source, last: None };
    let mut sampler = crate::drill::Sampler::new(n, max_each, rand::make_rng::<rand::rngs::StdRng>());
    let root = docs.tree(&snap.tree).await?;
    let mut stack: Vec<(Node, PathBuf, PathBuf)> = root
        .nodes
        .into_iter()
        .zip(&snap.paths)
        .map(|(node, orig)| {
            let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&node.name));
            (node, PathBuf::from(orig), rel)
        })
        .collect();
    while let Some((node, orig, rel)) = stack.pop() {
        match node.kind {
            NodeKind::File => {
                sampler.offer(crate::drill::Pick { orig: orig.display().to_string(), rel, node });
            }
            NodeKind::Dir => {
                let Some(sub) = node.subtree else { continue };
                for child in docs.tree(&sub).await?.nodes {
                    let name = std::ffi::OsStr::from_bytes(&child.name).to_owned();
                    stack.push((child, orig.join(&name), rel.join(&name)));
                }
            }
            NodeKind::Symlink | NodeKind::Fifo => {}
        }
    }
    Ok((sid, sampler.into_picks()))
}

/// Blob ids looked up in the index at once by a [`PackFinder`]: 65,536 (2 MiB of ids),
/// sorted so one read transaction visits the index's pages in order.
const LOOKUP_BATCH: usize = 1 << 16;

/// Finds the packs that snapshots need (for their own documents, their trees and their
/// files' contents), a batch of [`LOOKUP_BATCH`] blob ids at a time, so memory stays
/// bounded whatever the snapshots' size: the ids of the trees seen so far (a tree shared
/// by several snapshots is read once) and one batch, not every blob id (about 900 MB at
/// 10,000,000 files). Driven by [`cached_snapshot_packs`] (store thread, cached trees) and
/// [`snapshot_packs`] (trees fetched when not cached).
#[derive(Default)]
pub struct PackFinder {
    /// The packs found so far.
    pub packs: HashSet<PackId>,
    /// Blob ids in no known pack (a blob listed in several batches counts once in each).
    pub missing: u64,
    seen: HashSet<BlobId>,
    batch: Vec<BlobId>,
}

impl PackFinder {
    /// Queues snapshot `sid`'s own document; returns the stack of trees to visit.
    fn start(&mut self, sid: &SnapshotId, snap: &Snapshot) -> Vec<BlobId> {
        self.batch.push(BlobId(sid.0));
        vec![snap.tree]
    }

    /// Whether tree `t` is to be read (not seen before); if so, queues it.
    fn visit(&mut self, t: BlobId) -> bool {
        let new = self.seen.insert(t);
        if new {
            self.batch.push(t);
        }
        new
    }

    /// Queues a tree's file contents and pushes its subtrees on `stack`; true when the
    /// batch is full and should be looked up.
    fn expand(&mut self, tree: tree::Tree, stack: &mut Vec<BlobId>) -> bool {
        for n in tree.nodes {
            match n.kind {
                NodeKind::Dir => stack.extend(n.subtree),
                NodeKind::File => self.batch.extend(n.content),
                NodeKind::Symlink | NodeKind::Fifo => {}
            }
        }
        self.batch.len() >= LOOKUP_BATCH
    }

    /// The queued blob ids, sorted and without repeats, for one lookup.
    fn take_batch(&mut self) -> Vec<BlobId> {
        let mut b = std::mem::take(&mut self.batch);
        b.sort_unstable();
        b.dedup();
        b
    }

    /// Records the index entries of a batch ([`State::blobs`]).
    fn found(&mut self, entries: Vec<Option<IndexEntry>>) {
        for e in entries {
            match e {
                Some(e) => {
                    self.packs.insert(e.pack);
                }
                None => self.missing += 1,
            }
        }
    }

    fn lookup(&mut self, state: &State) -> Result<(), StateError> {
        let b = self.take_batch();
        self.found(state.blobs(&b)?);
        Ok(())
    }
}

/// Adds to `finder` the packs snapshot `sid` needs. Tree documents come from the local
/// cache, else from their pack via `source`. Errors: a tree in no known pack, one that
/// cannot be fetched or decoded, or the state.
pub async fn snapshot_packs(
    id: &Identity,
    store: &Store,
    source: &dyn PackSource,
    sid: &SnapshotId,
    snap: &Snapshot,
    finder: &mut PackFinder,
) -> Result<(), TreeError> {
    let mut docs = Docs { id, store, source, last: None };
    let mut stack = finder.start(sid, snap);
    loop {
        let next = stack.pop();
        if next.is_none() || finder.batch.len() >= LOOKUP_BATCH {
            let batch = finder.take_batch();
            finder.found(store.call(move |s| s.blobs(&batch)).await?);
        }
        let Some(t) = next else { return Ok(()) };
        if finder.visit(t) {
            let tree = tree::decode_tree(&docs.get(&t).await?).map_err(|e| TreeError::Bad(t.short(), e))?;
            finder.expand(tree, &mut stack);
        }
    }
}

/// The packs snapshot `sid` needs and how many of its blobs are in no known pack
/// ([`PackFinder`]), from the local tree cache alone, for code on the store thread
/// ([`crate::store`]). A snapshot's packs change only when an index entry moves to
/// another pack or leaves the index, so once found with none missing they are recorded
/// ([`State::set_snapshot_packs`]) and read back until the next such move: `peer status`
/// (asked every 2 s by the dashboard) then reads one record instead of the whole index
/// (about 70 s at 10,000,000 blobs). Errors: a tree not cached here, one that does not
/// decode, or the state.
pub fn cached_snapshot_packs(
    state: &State,
    sid: &SnapshotId,
    snap: &Snapshot,
) -> Result<(HashSet<PackId>, u64), TreeError> {
    if let Some(packs) = state.snapshot_packs(sid)? {
        return Ok((packs.into_iter().collect(), 0));
    }
    let moves = state.index_moves()?;
    let (packs, missing) = find_cached_snapshot_packs(state, sid, snap)?;
    if missing == 0
        && let Err(e) = state.set_snapshot_packs(sid, moves, &packs)
    {
        tracing::warn!("cannot record the packs of snapshot {}: {e}", sid.short()); // found again next time
    }
    Ok((packs, missing))
}

/// [`cached_snapshot_packs`] without the record: the trees and the index walked.
fn find_cached_snapshot_packs(
    state: &State,
    sid: &SnapshotId,
    snap: &Snapshot,
) -> Result<(HashSet<PackId>, u64), TreeError> {
    let mut finder = PackFinder::default();
    let mut stack = finder.start(sid, snap);
    while let Some(t) = stack.pop() {
        if !finder.visit(t) {
            continue; // an identical subtree seen already
        }
        let doc = state.tree(&t)?.ok_or_else(|| TreeError::NotCached(t.short()))?;
        if finder.expand(tree::decode_tree(&doc).map_err(|e| TreeError::Bad(t.short(), e))?, &mut stack) {
            finder.lookup(state)?;
        }
    }
    finder.lookup(state)?;
    Ok((finder.packs, finder.missing))
}

/// What to restore and where.
#[derive(Clone, Debug, Default)]
pub struct RestoreWhat {
    /// Snapshot id prefix or `latest`; `None` = latest.
    pub snapshot: Option<String>,
    /// Restore under this directory; `None` = the original paths.
    pub target: Option<PathBuf>,
    /// Replace existing files that differ.
    pub overwrite: bool,
    /// Restore only these paths and what is below them; empty = everything. Each is an
    /// original absolute path or a path starting with a backed-up path's name.
    pub include: Vec<PathBuf>,
}

impl RestoreWhat {
    /// Whether a node at original path `orig` (name path `rel`) is restored: it is at or
    /// under an include, or (for directories) on the way to one.
    fn wants(&self, orig: &Path, rel: &Path, dir: bool) -> bool {
        self.include.is_empty()
            || self.include.iter().any(|i| {
                orig.starts_with(i) || rel.starts_with(i) || (dir && (i.starts_with(orig) || i.starts_with(rel)))
            })
    }
}

/// Most paths listed in `skipped` and `failed`; past it they are counted in the message.
pub const MAX_LISTED: usize = 1000;

fn push_capped(v: &mut Vec<String>, n: &mut u64, s: String) {
    *n += 1;
    if v.len() < MAX_LISTED {
        v.push(s);
    }
}

/// Where the blobs of one pack go: (blob entry, list of (file index, offset)).
type PackPlan = Vec<(PackEntry, Vec<(usize, u64)>)>;

/// Files in one batch of a restore. The next batch is planned while one is fetched and
/// written, so a restore holds two batches' paths, nodes and blob places at most (about
/// 1 KiB per file) whatever the size of the snapshot. A pack with blobs in two batches is
/// fetched once for each; the walk follows the backup's order, so that is rare.
pub const BATCH_FILES: usize = 50_000;
/// Content blobs in one batch at most (each place costs about 100 bytes).
pub const BATCH_BLOBS: usize = 500_000;

/// One batch of a restore worked out before anything of it is written: what goes where,
/// and which pack holds each piece (as rustic plans a restore before it executes it).
#[derive(Default)]
struct Plan {
    /// Directories first met in this batch, shallowest first once prepared.
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<FilePlan>,
    links: Vec<(PathBuf, Node)>,
    /// Named pipes, made empty.
    fifos: Vec<(PathBuf, Node)>,
    /// Further names of a file with several hard links: (name, the first name restored).
    hard_links: Vec<(PathBuf, PathBuf)>,
    /// Bytes of those further names: the snapshot counts them, the restore writes them once.
    linked_bytes: u64,
    /// Per pack, the blobs it supplies and where each goes.
    by_pack: HashMap<PackId, PackPlan>,
    /// Per file, how many blob writes complete it.
    remaining: Vec<usize>,
}

/// A batch's files while their packs are fetched and written, shared by the writers: a
/// file is created by the first write into it and moved into place by the write that
/// completes it, so creating and finishing files overlaps the fetching (on one thread
/// before the first pack and after the last, they took 4.5 s of a 9 s restore of the
/// reference dataset).
struct Writing {
    files: Vec<FilePlan>,
    /// Per file, how many blob writes complete it ([`Plan::remaining`]).
    remaining: Vec<usize>,
    /// Per file, blob writes done.
    written: Vec<AtomicU64>,
    /// Per file, whether its temporary file has been given its length.
    sized: Vec<AtomicBool>,
    /// Per file, how moving it into place went ([`finish_file`]), once complete.
    finished: Vec<OnceLock<Result<bool, String>>>,
    /// Per file, why it cannot be completed.
    failures: Mutex<HashMap<usize, String>>,
    overwrite: bool,
    /// Decryption and decompression buffers free for the next pack ([`write_pack`]), at
    /// most [`KEPT_BUFFERS`] pairs, each as long as the longest blob it held (chunks reach
    /// 8 MiB, protocol.md §3.2). A new pair for every pack would be mapped, faulted in and
    /// unmapped again for each (they pass the allocator's 1 MiB mapping threshold).
    buffers: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Writing {
    fn new(files: Vec<FilePlan>, remaining: Vec<usize>, overwrite: bool) -> Self {
        let n = files.len();
        Writing {
            files,
            remaining,
            written: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sized: (0..n).map(|_| AtomicBool::new(false)).collect(),
            finished: (0..n).map(|_| OnceLock::new()).collect(),
            failures: Mutex::new(HashMap::new()),
            overwrite,
            buffers: Mutex::new(Vec::new()),
        }
    }

    fn fail(&self, i: usize, why: String) {
        if let Ok(mut f) = self.failures.lock() {
            f.entry(i).or_insert(why);
        }
    }

    /// Writes `data` at `off` of file `i`'s temporary file, creating it at its full length
    /// first if need be; the write that completes the file moves it into place. Two
    /// writers may create the same file at once: neither truncates it (no `O_TRUNC`, and
    /// the length set is the final one, past every write), so no written byte is lost.
    /// Blocking.
    fn write(&self, i: usize, data: &[u8], off: u64) -> Result<(), String> {
        let f = &self.files[i];
        let end = off + data.len() as u64;
        if end > f.node.size {
            return Err("write failed: content longer than the recorded size".into());
        }
        let tmp = f.tmp();
        // Created with the recorded permission bits (and the owner's read and write, for
        // the next writes), so that [`finish_file`] seldom has to change them.
        let mode = (f.node.mode & 0o777) | 0o600;
        let h = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(mode).open(&tmp);
        let h = h.map_err(|e| cannot_write_in(&tmp, e))?;
        // A file of one write needs no length set first: the write gives it one.
        let single = self.remaining[i] == 1;
        if !single && !self.sized[i].swap(true, Ordering::AcqRel) {
            h.set_len(f.node.size).map_err(|e| cannot_write_in(&tmp, e))?;
        }
        let ends_in_hole = write_sparse(&h, data, off).map_err(|e| format!("write failed: {e}"))?;
        if single && (ends_in_hole || end < f.node.size) {
            h.set_len(f.node.size).map_err(|e| cannot_write_in(&tmp, e))?;
        }
        if self.written[i].fetch_add(1, Ordering::AcqRel) + 1 == self.remaining[i] as u64 {
            let _ = self.finished[i].set(finish_file(f, self.overwrite, Some(&h)).map_err(|e| e.to_string()));
        }
        Ok(())
    }
}

/// What a restore carries from batch to batch.
struct Progress {
    overwrite: bool,
    summary: RestoreSummary,
    /// Every directory restored, set last (deepest first): its time changes whenever
    /// something is written in it.
    dirs: Vec<(PathBuf, Node)>,
    /// Files with several links restored so far, for their further names.
    linked: HashSet<PathBuf>,
}

/// Restores snapshot `what.snapshot` (see [`resolve`]) under `what.target`, or to its
/// original paths. `total` is set to the bytes to write; `done` counts bytes written.
/// Files that no holder could supply are listed in `failed`; the caller maps a non-empty
/// list to exit code 3. Errors before anything is written: no such snapshot, an include
/// not in it, unreadable root metadata; later, unreadable metadata, or a target path
/// blocked by a symlink or a file where a directory belongs, stop the restore with the
/// batches already written left in place.
///
/// Batch by batch ([`BATCH_FILES`]): the walk plans a batch (trees and index, through
/// the store), its directories are made on a blocking thread, packs are fetched and
/// written a few at a time on blocking threads while the walk plans the next batch (each
/// file moved into place by the write that completes it), and what is left of the batch
/// (failures, links, pipes) is finished on a blocking thread; directories get their
/// modes and times at the end. No file I/O runs on the runtime.
pub async fn run(
    id: &Identity,
    store: &Store,
    source: Arc<dyn PackSource>,
    what: &RestoreWhat,
    total: &AtomicU64,
    done: Arc<AtomicU64>,
) -> Result<RestoreSummary, RestoreError> {
    run_batched(id, store, source, what, (total, done), (BATCH_FILES, BATCH_BLOBS)).await
}

/// [`run`] with batches of at most `batch` = (files, content blobs).
async fn run_batched(
    id: &Identity,
    store: &Store,
    source: Arc<dyn PackSource>,
    what: &RestoreWhat,
    (total, done): (&AtomicU64, Arc<AtomicU64>),
    batch: (usize, usize),
) -> Result<RestoreSummary, RestoreError> {
    let started = std::time::Instant::now();
    let which = what.snapshot.clone();
    let (sid, snap) = store.call(move |s| Ok(resolve(s, which.as_deref()))).await??;
    let mut walk = Walk::start(id, store, source.as_ref(), what, sid, &snap, batch).await?;
    if what.include.is_empty() {
        total.store(snap.bytes, Ordering::Relaxed);
    }
    let mut progress = Progress {
        overwrite: what.overwrite,
        summary: RestoreSummary { snapshot: sid.to_string(), ..Default::default() },
        dirs: Vec::new(),
        linked: HashSet::new(),
    };
    let mut carry = Carry::new();
    let mut next = plan_batch(&mut walk, store, what, total).await?;
    while let Some(plan) = next.take() {
        let (target, dirs_before) = (what.target.clone(), progress.dirs.len());
        let mut plan = blocking(move || prepare(target.as_deref(), plan)).await??;
        progress.dirs.extend(std::mem::take(&mut plan.dirs));
        let writing =
            Writing::new(std::mem::take(&mut plan.files), std::mem::take(&mut plan.remaining), progress.overwrite);
        let keys = (id.id_key, id.enc_key);
        // The next batch is planned (trees walked and decoded, blobs looked up in the
        // index) while this one is fetched and written; an error planning it stops the
        // restore once this batch is finished.
        let fetching = fetch_all(keys, source.clone(), &mut plan, writing, done.clone(), std::mem::take(&mut carry));
        let ((writing, kept), planned) = tokio::join!(fetching, plan_batch(&mut walk, store, what, total));
        carry = kept;
        progress = blocking(move || finish(plan, writing, progress)).await?;
        tracing::debug!("restore: batch done, {} directories new", progress.dirs.len() - dirs_before);
        next = planned?;
    }
    let mut summary = blocking(move || finish_dirs(progress)).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The walk's next batch with every blob located ([`locate`]), `total` adjusted to it;
/// `None` once the walk is over.
async fn plan_batch(
    walk: &mut Walk<'_>,
    store: &Store,
    what: &RestoreWhat,
    total: &AtomicU64,
) -> Result<Option<Plan>, RestoreError> {
    let Some(plan) = walk.next_batch().await? else { return Ok(None) };
    if what.include.is_empty() {
        total.fetch_sub(plan.linked_bytes.min(total.load(Ordering::Relaxed)), Ordering::Relaxed);
    } else {
        total.fetch_add(plan.files.iter().map(|f| f.node.size).sum(), Ordering::Relaxed);
    }
    Ok(Some(locate(store, plan).await?))
}

/// Runs file-system work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| RestoreError::Target(format!("restore worker failed: {e}")))
}

/// A node met by the walk: (destination, original path, path by names from the snapshot
/// root, node).
type Visit = (PathBuf, PathBuf, PathBuf, Node);

/// The snapshot's trees walked depth first, in the order of their entries (the backup's
/// order, so consecutive files share packs), a batch at a time.
struct Walk<'a> {
    docs: Docs<'a>,
    what: &'a RestoreWhat,
    /// Nodes still to visit, the next on top.
    stack: Vec<Visit>,
    /// (device, inode) of files with several links → the first name restored.
    first_names: HashMap<(u64, u64), PathBuf>,
    /// Files planned so far: numbers the temporary files.
    seq: u64,
    /// Most files and content blobs in one batch.
    batch: (usize, usize),
}

impl<'a> Walk<'a> {
    /// Reads the root tree and checks that every include names something in the snapshot
    /// (reading only the trees on the way to each), before anything is written.
    async fn start(
        id: &'a Identity,
        store: &'a Store,
        source: &'a dyn PackSource,
        what: &'a RestoreWhat,
        sid: SnapshotId,
        snap: &Snapshot,
        batch: (usize, usize),
    ) -> Result<Walk<'a>, RestoreError> {
        let mut docs = Docs { id, store, source, last: None };
        let root = docs.tree(&snap.tree).await?;
        if root.nodes.len() != snap.paths.len() {
            return Err(RestoreError::BadTree("the root tree does not match the snapshot's paths".into()));
        }
        let mut stack: Vec<Visit> = Vec::new();
        for (n, path) in root.nodes.into_iter().zip(&snap.paths).rev() {
            let dest = match &what.target {
                Some(t) => t.join(std::ffi::OsStr::from_bytes(&n.name)),
                None => PathBuf::from(path),
            };
            let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&n.name));
            stack.push((dest, PathBuf::from(path), rel, n));
        }
        let mut walk = Walk { docs, what, stack, first_names: HashMap::new(), seq: 0, batch };
        walk.check_includes(sid).await?;
        walk.check_dirs().await?;
        Ok(walk)
    }

    /// Refuses the restore before anything is written when a directory it would create
    /// exists as something else, a symlink included (protocol.md §3.6, restore rule 9):
    /// a walk of the directories alone, checked [`CHECK_DIRS`] at a time on a blocking
    /// thread.
    async fn check_dirs(&mut self) -> Result<(), RestoreError> {
        let mut stack = self.stack.clone();
        let mut dirs = Vec::new();
        while let Some((dest, orig, rel, n)) = stack.pop() {
            if n.kind != NodeKind::Dir || !self.what.wants(&orig, &rel, true) {
                continue;
            }
            stack.extend(self.children(&dest, &orig, &rel, &n).await?);
            dirs.push(dest);
            if dirs.len() >= CHECK_DIRS {
                let some = std::mem::take(&mut dirs);
                blocking(move || refuse_non_dirs(some.iter())).await??;
            }
        }
        blocking(move || refuse_non_dirs(dirs.iter())).await?
    }

    /// [`RestoreError::NotInSnapshot`] for the first include that names nothing.
    async fn check_includes(&mut self, sid: SnapshotId) -> Result<(), RestoreError> {
        let include = &self.what.include;
        let mut matched: HashSet<&PathBuf> = HashSet::new();
        let mut stack = self.stack.clone();
        while let Some((dest, orig, rel, n)) = stack.pop() {
            matched.extend(include.iter().filter(|i| orig.starts_with(i) || rel.starts_with(i)));
            let below = |i: &&PathBuf| (i.starts_with(&orig) && **i != orig) || (i.starts_with(&rel) && **i != rel);
            if n.kind == NodeKind::Dir && include.iter().any(|i| below(&i)) {
                stack.extend(self.children(&dest, &orig, &rel, &n).await?);
            }
        }
        match include.iter().find(|i| !matched.contains(*i)) {
            Some(i) => Err(RestoreError::NotInSnapshot(format!(
                "{} is not in snapshot {}; see 'peer snapshots' for its paths",
                i.display(),
                sid.short()
            ))),
            None => Ok(()),
        }
    }

    /// The entries of directory node `n`, last first (ready to be pushed on a stack).
    async fn children(&mut self, dest: &Path, orig: &Path, rel: &Path, n: &Node) -> Result<Vec<Visit>, RestoreError> {
        let sub =
            n.subtree.ok_or_else(|| RestoreError::BadTree(format!("{}: directory without a tree", dest.display())))?;
        let mut out = Vec::new();
        for c in self.docs.tree(&sub).await?.nodes.into_iter().rev() {
            if c.name.is_empty() || c.name == b"." || c.name == b".." || c.name.contains(&b'/') {
                return Err(RestoreError::BadTree(format!("unsafe name in the tree of {}", dest.display())));
            }
            let name = std::ffi::OsStr::from_bytes(&c.name);
            out.push((dest.join(name), orig.join(name), rel.join(name), c));
        }
        Ok(out)
    }

    /// The next batch: nodes in walk order until `batch` files or content blobs
    /// ([`BATCH_FILES`], [`BATCH_BLOBS`]), a sixteenth of that for the first batch, so
    /// that fetching starts early and the next, full batch is planned meanwhile; `None`
    /// once the walk is over.
    async fn next_batch(&mut self) -> Result<Option<Plan>, RestoreError> {
        if self.stack.is_empty() {
            return Ok(None);
        }
        let (most_files, most_blobs) = match self.seq {
            0 => ((self.batch.0 / 16).max(1), (self.batch.1 / 16).max(1)),
            _ => self.batch,
        };
        let mut plan = Plan::default();
        let mut blobs = 0;
        while plan.files.len() < most_files && blobs < most_blobs {
            let Some((dest, orig, rel, n)) = self.stack.pop() else { break };
            if !self.what.wants(&orig, &rel, n.kind == NodeKind::Dir) {
                continue;
            }
            match n.kind {
                NodeKind::Dir => {
                    let children = self.children(&dest, &orig, &rel, &n).await?;
                    self.stack.extend(children);
                    plan.dirs.push((dest, n));
                }
                NodeKind::File if n.links > 1 && self.first_names.contains_key(&(n.device, n.inode)) => {
                    plan.linked_bytes += n.size;
                    plan.hard_links.push((dest, self.first_names[&(n.device, n.inode)].clone()));
                }
                NodeKind::File => {
                    if n.links > 1 {
                        self.first_names.insert((n.device, n.inode), dest.clone());
                    }
                    blobs += n.content.len();
                    self.seq += 1;
                    let tmp_name = (self.seq, rand::random::<u32>());
                    plan.files.push(FilePlan { dest, tmp_name, node: n, failed: None });
                }
                NodeKind::Symlink => plan.links.push((dest, n)),
                NodeKind::Fifo => plan.fifos.push((dest, n)),
            }
        }
        Ok(Some(plan))
    }
}

/// Where every blob of the plan's files is, from the index, in one store command.
async fn locate(store: &Store, mut plan: Plan) -> Result<Plan, RestoreError> {
    let wanted: Vec<BlobId> = plan.files.iter().flat_map(|f| f.node.content.iter().copied()).collect();
    let mut found = store.call(move |s| s.blobs(&wanted)).await?.into_iter();
    let found: Vec<Vec<Option<IndexEntry>>> =
        plan.files.iter().map(|f| found.by_ref().take(f.node.content.len()).collect()).collect();
    let mut slot: HashMap<BlobId, (PackId, usize)> = HashMap::new();
    plan.remaining = vec![0; plan.files.len()];
    for (i, (f, entries)) in plan.files.iter_mut().zip(found).enumerate() {
        let mut off = 0u64;
        for (b, e) in f.node.content.iter().zip(entries) {
            let Some(e) = e else {
                f.failed = Some(format!("its content (blob {}) is in no known pack", b.short()));
                break;
            };
            let (pack, k) = *slot.entry(*b).or_insert_with(|| {
                let v = plan.by_pack.entry(e.pack).or_default();
                let entry =
                    PackEntry { id: *b, kind: e.kind, offset: e.offset, length: e.length, raw_length: e.raw_length };
                v.push((entry, Vec::new()));
                (e.pack, v.len() - 1)
            });
            if let Some(v) = plan.by_pack.get_mut(&pack) {
                v[k].1.push((i, off));
            }
            plan.remaining[i] += 1;
            off += e.raw_length as u64;
        }
        if f.failed.is_none() && off != f.node.size {
            f.failed = Some(format!("its blobs hold {off} bytes but the tree records {}", f.node.size));
        }
    }
    Ok(plan)
}

/// Creates the batch's directories and the temporary files of its empty files. Refuses
/// to write through a symlink or over a non-directory. Blocking.
fn prepare(target: Option<&Path>, mut plan: Plan) -> Result<Plan, RestoreError> {
    plan.dirs.sort_by_key(|(p, _)| p.components().count());
    refuse_non_dirs(plan.dirs.iter().map(|(d, _)| d))?; // checked first too; things change

    if let Some(t) = target {
        std::fs::create_dir_all(t).map_err(|e| RestoreError::Target(format!("cannot create {}: {e}", t.display())))?;
    }
    for (d, _) in &plan.dirs {
        if let Err(e) = std::fs::create_dir_all(d) {
            return Err(RestoreError::Target(format!("cannot create {}: {e}", d.display())));
        }
        remove_stale_temporaries(d);
    }
    // Files with content are created by their first write ([`write_pack`]), so that
    // fetching starts at once; only empty ones are made here.
    let made = on_threads(&plan.files, |f| {
        if f.failed.is_some() || !f.node.content.is_empty() {
            return None;
        }
        let tmp = f.tmp();
        std::fs::File::create(&tmp).err().map(|e| cannot_write_in(&tmp, e))
    });
    for (f, why) in plan.files.iter_mut().zip(made) {
        if why.is_some() {
            f.failed = why;
        }
    }
    Ok(plan)
}

/// Threads that create, and later finish, a batch's files at once. Each file costs a few
/// system calls that wait on the file system (creating an inode and a directory entry;
/// renaming, owner, mode, times); on one thread, the restore of the reference dataset
/// spent 3 s creating its 52,108 files and 1.5 s finishing them with the other core idle.
const FS_THREADS: usize = 4;

/// `f` of every item, in order, computed on up to [`FS_THREADS`] threads, each taking a
/// run of neighbouring items (in walk order, so mostly files of other directories than
/// the other threads': they seldom wait on one directory's lock). On this thread when
/// the items are few or a thread cannot be started. Blocking.
fn on_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const FEW: usize = 256;
    if items.len() <= FEW {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let runs = items.chunks(items.len().div_ceil(FS_THREADS));
        let started: Vec<_> = runs
            .map(|run| {
                (run, std::thread::Builder::new().spawn_scoped(s, move || run.iter().map(f).collect::<Vec<R>>()))
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for (run, t) in started {
            match t {
                Ok(t) => out.extend(t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
                Err(_) => out.extend(run.iter().map(f)),
            }
        }
        out
    })
}

/// The reason given for a file whose temporary file `tmp` cannot be created or written.
fn cannot_write_in(tmp: &Path, e: std::io::Error) -> String {
    format!("cannot write in {}: {e}", tmp.parent().unwrap_or(Path::new("/")).display())
}

/// Directories checked at once before a restore ([`Walk::check_dirs`]).
const CHECK_DIRS: usize = 4096;

/// [`RestoreError::Target`] for the first of `dirs` that exists as something other than a
/// directory (not following a symlink). Blocking.
fn refuse_non_dirs<'a>(mut dirs: impl Iterator<Item = &'a PathBuf>) -> Result<(), RestoreError> {
    match dirs.find(|d| std::fs::symlink_metadata(d).is_ok_and(|m| !m.is_dir())) {
        Some(d) => Err(RestoreError::Target(format!(
            "{} exists and is not a directory; move it away or restore with --target",
            d.display()
        ))),
        None => Ok(()),
    }
}

/// Removes the temporary files a restore killed midway left in `dir`
/// (`.peer-restore-*.tmp`): they are never a user's files. Blocking; errors are logged.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".peer-restore-")
            && name.ends_with(".tmp")
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!("cannot remove {}: {err}", e.path().display());
        }
    }
}

/// Packs kept from one batch for the next: those holding the batch's last file, which
/// the next batch most likely continues (the walk follows the backup's order).
type Carry = HashMap<PackId, bytes::Bytes>;

/// Fetches each pack of the batch once, [`PackSource::concurrency`] at a time (at most
/// [`MAX_FETCHES`], and at most [`FETCH_BUDGET`] bytes of packs), and writes its blobs
/// where they belong (on blocking threads, [`Writing::write`]). A pack in `carry` (kept
/// from the previous batch) is not fetched again; returns the files' state and the packs
/// to carry to the next batch.
async fn fetch_all(
    keys: ([u8; 32], [u8; 32]),
    source: Arc<dyn PackSource>,
    plan: &mut Plan,
    writing: Writing,
    done: Arc<AtomicU64>,
    carry: Carry,
) -> (Arc<Writing>, Carry) {
    let last = writing.files.len().checked_sub(1);
    let keep: Arc<HashSet<PackId>> = Arc::new(
        plan.by_pack
            .iter()
            .filter(|(_, blobs)| blobs.iter().any(|(_, places)| places.iter().any(|(i, _)| Some(*i) == last)))
            .map(|(p, _)| *p)
            .collect(),
    );
    let (carried, next) = (Arc::new(carry), Arc::new(Mutex::new(Carry::new())));
    let writing = Arc::new(writing);
    let parallel = source.concurrency().clamp(1, MAX_FETCHES);
    let budget = Arc::new(tokio::sync::Semaphore::new(FETCH_BUDGET >> 10)); // KiB
    futures::stream::iter(std::mem::take(&mut plan.by_pack))
        .map(|(pack_id, blobs)| {
            let (source, writing, done, budget) = (source.clone(), writing.clone(), done.clone(), budget.clone());
            let (carried, next, keep) = (carried.clone(), next.clone(), keep.clone());
            async move {
                // The pack's size is at least the end of the last blob it supplies.
                let end = blobs.iter().map(|(e, _)| u64::from(e.offset) + u64::from(e.length)).max().unwrap_or(0);
                let kib = (end >> 10).clamp(1, (FETCH_BUDGET >> 10) as u64) as u32;
                let _room = budget.acquire_many(kib).await; // never closed
                // Fails every place of the blobs in `plan` (the pack could not be had).
                let fail = |plan: &PackPlan, e: crate::transfer::TransferError| {
                    let why = format!("pack {} unavailable: {e}", pack_id.short());
                    for (_, places) in plan {
                        places.iter().for_each(|(i, _)| writing.fail(*i, why.clone()));
                    }
                };
                let fetched = match carried.get(&pack_id) {
                    Some(b) => Ok(b.clone()),
                    None => source.fetch_unchecked(pack_id).await,
                };
                let bytes = match fetched {
                    Ok(b) => b,
                    Err(e) => return fail(&blobs, e),
                };
                // Every blob is checked as it is opened; a copy with a blob that does not
                // open is fetched again, checked against the pack id, from the holders.
                let w = writing.clone();
                let written = tokio::task::spawn_blocking(move || {
                    let bad = write_pack(keys, &bytes, &blobs, &w, &done, false);
                    (bytes, bad, done)
                })
                .await;
                let Ok((bytes, bad, done)) = written.inspect_err(|e| tracing::warn!("restore worker failed: {e}"))
                else {
                    // `blobs` went with the worker: every file of the batch not yet
                    // complete is failed by [`finish`] as incomplete.
                    return;
                };
                let carry = if bad.is_empty() {
                    bytes
                } else {
                    drop(bytes);
                    tracing::warn!(
                        "pack {} came with {} blobs that do not open: fetching a checked copy",
                        pack_id.short(),
                        bad.len()
                    );
                    let bytes = match source.fetch(pack_id).await {
                        Ok(b) => b,
                        Err(e) => return fail(&bad, e),
                    };
                    let (w, b) = (writing.clone(), bytes.clone());
                    let r = tokio::task::spawn_blocking(move || write_pack(keys, &b, &bad, &w, &done, true)).await;
                    if let Err(e) = r {
                        tracing::warn!("restore worker failed: {e}");
                    }
                    bytes
                };
                if keep.contains(&pack_id)
                    && let Ok(mut n) = next.lock()
                {
                    n.insert(pack_id, carry);
                }
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<()>>()
        .await;
    let next = next.lock().map(|mut n| std::mem::take(&mut *n)).unwrap_or_default();
    (writing, next)
}

/// Reports the batch's files, moving into place the complete ones the writers have not
/// (empty files), then makes its hard links, symlinks and pipes. Only files whose every
/// blob was written are kept; the temporary files of the others are removed. Blocking.
fn finish(plan: Plan, writing: Arc<Writing>, mut progress: Progress) -> Progress {
    let overwrite = progress.overwrite;
    let summary = &mut progress.summary;
    let failures = writing.failures.lock().map(|f| f.clone()).unwrap_or_default();
    let indexed: Vec<(usize, &FilePlan)> = writing.files.iter().enumerate().collect();
    // Per file: why it failed before it could be finished, or how finishing it went.
    let outcomes = on_threads(&indexed, |&(i, f)| {
        if let Some(finished) = writing.finished[i].get() {
            return Ok(finished.clone());
        }
        let incomplete = writing.written[i].load(Ordering::Acquire) != writing.remaining[i] as u64;
        let why = f
            .failed
            .clone()
            .or_else(|| failures.get(&i).cloned())
            .or_else(|| incomplete.then(|| "some of its content was not written".to_string()));
        match why {
            Some(why) => {
                let _ = std::fs::remove_file(f.tmp()); // may never have been created
                Err(why)
            }
            None => Ok(finish_file(f, overwrite, None).map_err(|e| e.to_string())),
        }
    });
    for (f, outcome) in writing.files.iter().zip(outcomes) {
        let finished = match outcome {
            Ok(r) => r,
            Err(why) => {
                push_capped(&mut summary.failed, &mut summary.failed_count, format!("{}: {why}", f.dest.display()));
                continue;
            }
        };
        match finished {
            Ok(true) => {
                summary.files += 1;
                summary.bytes += f.node.size;
                if f.node.links > 1 {
                    progress.linked.insert(f.dest.clone());
                }
            }
            Ok(false) => push_capped(&mut summary.skipped, &mut summary.skipped_count, f.dest.display().to_string()),
            Err(e) => {
                let _ = std::fs::remove_file(f.tmp()); // may be gone already
                push_capped(&mut summary.failed, &mut summary.failed_count, format!("{}: {e}", f.dest.display()));
            }
        }
    }
    for (dest, first) in &plan.hard_links {
        if !progress.linked.contains(first) {
            let why = format!("{}: its other name {} was not restored", dest.display(), first.display());
            push_capped(&mut summary.failed, &mut summary.failed_count, why);
            continue;
        }
        match restore_hard_link(dest, first, overwrite) {
            Ok(true) => summary.files += 1,
            Ok(false) => push_capped(&mut summary.skipped, &mut summary.skipped_count, dest.display().to_string()),
            Err(e) => push_capped(&mut summary.failed, &mut summary.failed_count, format!("{}: {e}", dest.display())),
        }
    }
    for (dest, n) in &plan.links {
        match restore_link(dest, n, overwrite) {
            Ok(true) => summary.symlinks += 1,
            Ok(false) => push_capped(&mut summary.skipped, &mut summary.skipped_count, dest.display().to_string()),
            Err(e) => push_capped(&mut summary.failed, &mut summary.failed_count, format!("{}: {e}", dest.display())),
        }
    }
    for (dest, n) in &plan.fifos {
        match restore_fifo(dest, n, overwrite) {
            Ok(true) => summary.files += 1,
            Ok(false) => push_capped(&mut summary.skipped, &mut summary.skipped_count, dest.display().to_string()),
            Err(e) => push_capped(&mut summary.failed, &mut summary.failed_count, format!("{}: {e}", dest.display())),
        }
    }
    progress
}

/// Sets every restored directory's owner, mode, attributes and time, deepest first (a
/// directory's time changes whenever something is written in it). Blocking.
fn finish_dirs(mut progress: Progress) -> RestoreSummary {
    let summary = &mut progress.summary;
    progress.dirs.sort_by_key(|(p, _)| p.components().count());
    for (d, n) in progress.dirs.iter().rev() {
        let r = set_owner(d, n)
            .and_then(|_| std::fs::set_permissions(d, std::fs::Permissions::from_mode(n.mode)))
            .and_then(|_| set_xattrs(d, n))
            .and_then(|_| filetime::set_file_mtime(d, ft(n.mtime_ns)));
        match r {
            Ok(()) => summary.dirs += 1,
            Err(e) => push_capped(&mut summary.failed, &mut summary.failed_count, format!("{}: {e}", d.display())),
        }
    }
    progress.summary
}

/// Most pairs of blob buffers a restore keeps for its next packs ([`write_pack`]): packs
/// are written on blocking threads, several at once, but a few pairs serve them all in
/// turn, and each kept pair holds memory (up to 16 MiB) for the rest of the batch.
const KEPT_BUFFERS: usize = 2;

/// Decrypts the needed blobs of one fetched pack and writes each at its places. A blob
/// that does not open (its AEAD tag, its id or its place in the pack is wrong) fails its
/// files when `last`; else it is returned, with its places, for another copy of the pack.
/// Blocking.
fn write_pack(
    keys: ([u8; 32], [u8; 32]),
    pack: &[u8],
    blobs: &PackPlan,
    writing: &Writing,
    done: &AtomicU64,
    last: bool,
) -> PackPlan {
    // One pair of buffers for all the pack's blobs (`pack::read_blob_into`), left by an
    // earlier pack if one is free.
    let (mut scratch, mut plain) = writing.buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default();
    let mut bad = PackPlan::new();
    for (entry, places) in blobs {
        if let Err(e) = pack::read_blob_into((&keys.0, &keys.1), pack, entry, &mut scratch, &mut plain) {
            if last {
                places.iter().for_each(|(i, _)| writing.fail(*i, e.to_string()));
            } else {
                bad.push((entry.clone(), places.clone()));
            }
            continue;
        }
        for &(i, off) in places {
            if writing.files[i].failed.is_some() {
                continue;
            }
            match writing.write(i, &plain, off) {
                Ok(()) => {
                    done.fetch_add(plain.len() as u64, Ordering::Relaxed);
                }
                Err(why) => writing.fail(i, why),
            }
        }
    }
    if let Ok(mut b) = writing.buffers.lock()
        && b.len() < KEPT_BUFFERS
    {
        b.push((scratch, plain));
    }
    bad
}

/// Writes `data` at `off`, leaving every all-zero 64 KiB piece unwritten: the file is
/// given its full length, so those stay holes and a sparse file comes back sparse.
/// Returns whether the last piece was such a hole (the write did not reach its end).
fn write_sparse(f: &std::fs::File, data: &[u8], off: u64) -> std::io::Result<bool> {
    const PIECE: usize = 64 << 10;
    let mut hole = false;
    for (n, piece) in data.chunks(PIECE).enumerate() {
        hole = piece.iter().all(|b| *b == 0);
        if !hole {
            f.write_all_at(piece, off + (n * PIECE) as u64)?;
        }
    }
    Ok(hole)
}

fn ft(ns: i64) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32)
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Moves a complete temporary file into place, its owner, mode, extended attributes and
/// time set first (through `open`, the handle its last write used, when given: no path
/// lookups). `Ok(false)`: an existing different file was kept. The rename refuses to
/// replace anything (`RENAME_NOREPLACE`), so the common case, nothing at the destination,
/// costs no look at it; only when something is there (or the file system cannot refuse)
/// is it compared and replaced or kept.
fn finish_file(f: &FilePlan, overwrite: bool, open: Option<&std::fs::File>) -> std::io::Result<bool> {
    let tmp = f.tmp();
    let mtime = ft(f.node.mtime_ns);
    // The owner first: changing it clears set-user-id and set-group-id bits.
    match open {
        Some(h) => {
            // Owner and mode are only changed where they differ from what the file was
            // created with: each change is an inode update in the file system's journal.
            let now = h.metadata()?;
            if let Some((uid, gid)) = f.node.owner
                && (now.uid(), now.gid()) != (uid, gid)
                && nix::unistd::geteuid().is_root()
            {
                std::os::unix::fs::fchown(h, Some(uid), Some(gid))?;
            }
            if now.mode() & 0o7777 != f.node.mode & 0o7777 {
                h.set_permissions(std::fs::Permissions::from_mode(f.node.mode))?;
            }
            for x in &f.node.xattrs {
                xattr::FileExt::set_xattr(h, std::ffi::OsStr::from_bytes(&x.name), &x.value)?;
            }
            filetime::set_file_handle_times(h, None, Some(mtime))?;
        }
        None => {
            set_owner(&tmp, &f.node)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.node.mode))?;
            set_xattrs(&tmp, &f.node)?;
            filetime::set_file_mtime(&tmp, mtime)?;
        }
    }
    let cwd = nix::fcntl::AT_FDCWD;
    match nix::fcntl::renameat2(cwd, &tmp, cwd, &f.dest, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => return Ok(true),
        Err(nix::errno::Errno::EEXIST | nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    if let Ok(m) = std::fs::symlink_metadata(&f.dest) {
        let identical = m.is_file() && same_content(&f.dest, &tmp)?;
        if !identical && !overwrite {
            std::fs::remove_file(&tmp)?;
            return Ok(false);
        }
        if m.is_dir() {
            std::fs::remove_file(&tmp)?;
            return Err(std::io::Error::other("a directory is in the way"));
        }
    }
    std::fs::rename(&tmp, &f.dest)?;
    Ok(true)
}

/// Gives `path` (not following a symlink) its recorded owner, when this process may: as
/// root. Others restore as their own user, as restic does.
fn set_owner(path: &Path, n: &Node) -> std::io::Result<()> {
    match n.owner {
        Some((uid, gid)) if nix::unistd::geteuid().is_root() => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
        _ => Ok(()),
    }
}

/// Sets the recorded extended attributes of a file or directory.
fn set_xattrs(path: &Path, n: &Node) -> std::io::Result<()> {
    for x in &n.xattrs {
        xattr::set(path, std::ffi::OsStr::from_bytes(&x.name), &x.value)?;
    }
    Ok(())
}

/// Another name of a file already restored as `first` (a hard link, as in the snapshot).
/// `Ok(false)`: something else is at `dest` and was kept.
fn restore_hard_link(dest: &Path, first: &Path, overwrite: bool) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(first)?;
    if let Ok(m) = std::fs::symlink_metadata(dest) {
        if m.dev() == target.dev() && m.ino() == target.ino() {
            return Ok(true);
        }
        if !overwrite || m.is_dir() {
            return Ok(false);
        }
        std::fs::remove_file(dest)?;
    }
    std::fs::hard_link(first, dest)?;
    Ok(true)
}

/// A named pipe with its owner, mode and time. `Ok(false)`: something else is at `dest`
/// and was kept.
fn restore_fifo(dest: &Path, n: &Node, overwrite: bool) -> std::io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(dest)
        && !m.file_type().is_fifo()
    {
        if !overwrite || m.is_dir() {
            return Ok(false);
        }
        std::fs::remove_file(dest)?;
    }
    if !dest.exists() {
        nix::unistd::mkfifo(dest, nix::sys::stat::Mode::from_bits_truncate(n.mode)).map_err(std::io::Error::from)?;
    }
    set_owner(dest, n)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(n.mode))?;
    // By path, never opening it: opening a pipe waits for a writer.
    filetime::set_symlink_file_times(dest, ft(n.mtime_ns), ft(n.mtime_ns))?;
    Ok(true)
}

fn restore_link(dest: &Path, n: &Node, overwrite: bool) -> std::io::Result<bool> {
    let target = std::ffi::OsStr::from_bytes(&n.target);
    if let Ok(m) = std::fs::symlink_metadata(dest) {
        if m.file_type().is_symlink() && std::fs::read_link(dest)?.as_os_str() == target {
            filetime::set_symlink_file_times(dest, ft(n.mtime_ns), ft(n.mtime_ns))?;
            return Ok(true);
        }
        if !overwrite || m.is_dir() {
            return Ok(false);
        }
        std::fs::remove_file(dest)?;
    }
    std::os::unix::fs::symlink(target, dest)?;
    set_owner(dest, n)?;
    filetime::set_symlink_file_times(dest, ft(n.mtime_ns), ft(n.mtime_ns))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::blob::BlobKind;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn file_work_on_threads_keeps_the_order_and_uses_several_threads() {
        let items: Vec<u32> = (0..10_000).collect();
        let threads = Mutex::new(HashSet::new());
        let out = on_threads(&items, |x| {
            if let Ok(mut t) = threads.lock() {
                t.insert(std::thread::current().id());
            }
            u64::from(*x) * 3
        });
        assert_eq!(out, items.iter().map(|x| u64::from(*x) * 3).collect::<Vec<_>>());
        assert_eq!(threads.lock().unwrap().len(), FS_THREADS);
        // A few items stay on the calling thread.
        let here = std::thread::current().id();
        assert!(on_threads(&items[..10], |_| std::thread::current().id()).iter().all(|t| *t == here));
    }

    /// Counts fetches in flight; every fetch fails after yielding a few times.
    #[derive(Default)]
    struct Counting {
        now: AtomicUsize,
        max: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl PackSource for Counting {
        async fn fetch(&self, _: PackId) -> Result<bytes::Bytes, crate::transfer::TransferError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            self.now.fetch_sub(1, Ordering::SeqCst);
            Err(crate::transfer::TransferError::AllHoldersFailed { errors: vec![] })
        }
        fn concurrency(&self) -> usize {
            MAX_FETCHES
        }
    }

    #[test]
    fn files_are_created_by_their_first_write_and_moved_into_place_by_their_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, size: u64, seq: u64| FilePlan {
            dest: dir.path().join(name),
            tmp_name: (seq, 7),
            node: Node { mode: 0o640, mtime_ns: 1_000_000_000, size, ..Node::default() },
            failed: None,
        };
        // "a": four pieces of 64 KiB written from four threads in reverse order (the
        // second piece all zeros: a hole); "b": two pieces, one of which fails.
        let piece = 64 << 10;
        let w = Writing::new(vec![file("a", 4 * piece, 1), file("b", 2 * piece, 2)], vec![4, 2], false);
        let content = |k: u64| vec![if k == 1 { 0 } else { k as u8 + 1 }; piece as usize];
        std::thread::scope(|s| {
            for k in (0..4u64).rev() {
                let w = &w;
                s.spawn(move || w.write(0, &content(k), k * piece).unwrap());
            }
        });
        w.write(1, &content(0), 0).unwrap();
        assert!(w.write(1, &content(0), 2 * piece).is_err(), "a write past the recorded size fails");
        assert_eq!(w.finished[0].get(), Some(&Ok(true)));
        assert_eq!(w.finished[1].get(), None, "an incomplete file is not moved into place");
        let a = std::fs::read(dir.path().join("a")).unwrap();
        assert_eq!(a, (0..4).flat_map(content).collect::<Vec<u8>>());
        let meta = std::fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert!(!w.files[0].tmp().exists());
        assert!(!dir.path().join("b").exists() && w.files[1].tmp().exists());

        // The batch's end reports both and removes the incomplete file's temporary file.
        let progress =
            Progress { overwrite: false, summary: RestoreSummary::default(), dirs: Vec::new(), linked: HashSet::new() };
        let tmp_b = w.files[1].tmp();
        let progress = finish(Plan::default(), Arc::new(w), progress);
        assert_eq!(progress.summary.files, 1);
        assert_eq!(progress.summary.failed_count, 1);
        assert!(progress.summary.failed[0].contains("some of its content was not written"), "{:?}", progress.summary);
        assert!(!tmp_b.exists());
    }

    #[test]
    fn a_restored_file_gets_its_recorded_mode_and_owner_whatever_it_was_created_with() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = nix::unistd::geteuid().is_root();
        // (mode, owner): read-only, set-user-id under another owner, the usual mode, and
        // read-only again in two writes (the second reopens the file to write)
        let cases = [(0o400, None), (0o4755, Some((1234, 5678))), (0o644, Some((0, 0))), (0o444, None)];
        let files = (0..cases.len())
            .map(|k| FilePlan {
                dest: dir.path().join(format!("f{k}")),
                tmp_name: (k as u64, 9),
                node: Node { mode: cases[k].0, owner: cases[k].1, mtime_ns: 2_000_000_000, size: 2, ..Node::default() },
                failed: None,
            })
            .collect();
        let w = Writing::new(files, vec![1, 1, 1, 2], false);
        for k in 0..3 {
            w.write(k, b"ab", 0).unwrap();
        }
        w.write(3, b"a", 0).unwrap();
        w.write(3, b"b", 1).unwrap();
        for (k, (mode, owner)) in cases.iter().enumerate() {
            assert_eq!(w.finished[k].get(), Some(&Ok(true)), "file {k}");
            let meta = std::fs::metadata(dir.path().join(format!("f{k}"))).unwrap();
            assert_eq!(meta.mode() & 0o7777, *mode, "file {k}");
            assert_eq!(meta.mtime(), 2);
            if let (Some((uid, gid)), true) = (owner, root) {
                assert_eq!((meta.uid(), meta.gid()), (*uid, *gid), "file {k}");
            }
            assert_eq!(std::fs::read(dir.path().join(format!("f{k}"))).unwrap(), b"ab");
        }
    }

    #[tokio::test]
    async fn packs_in_flight_stay_within_the_byte_budget() {
        let packs = |size: u32| -> HashMap<PackId, PackPlan> {
            (0..10u8)
                .map(|i| {
                    let e = PackEntry {
                        id: BlobId([i; 32]),
                        kind: BlobKind::Data,
                        offset: 0,
                        length: size,
                        raw_length: size,
                    };
                    (PackId([i; 32]), vec![(e, vec![])])
                })
                .collect()
        };
        let plan = |by_pack| Plan { by_pack, ..Plan::default() };
        // 40 MiB packs: two fit in the 96 MiB budget.
        let big = Arc::new(Counting::default());
        let zero = || Arc::new(AtomicU64::new(0));
        let none = || Writing::new(Vec::new(), Vec::new(), false);
        fetch_all(([1; 32], [2; 32]), big.clone(), &mut plan(packs(40 << 20)), none(), zero(), Carry::new()).await;
        assert_eq!(big.max.load(Ordering::SeqCst), 2);
        // 1 MiB packs: the count cap binds.
        let small = Arc::new(Counting::default());
        fetch_all(([1; 32], [2; 32]), small.clone(), &mut plan(packs(1 << 20)), none(), zero(), Carry::new()).await;
        assert_eq!(small.max.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn fetches_spread_over_the_holders_and_wait_for_a_free_slot() {
        let slots = HolderSlots::new(2);
        let all = ["a", "b", "c"];
        // Six fetches of objects every holder keeps: two at each holder, least busy first.
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(slots.acquire(&all, |_| true).await.expect("a slot is free"));
        }
        let mut per: Vec<&str> = held.iter().map(|(h, _)| *h).collect();
        per.sort();
        assert_eq!(per, ["a", "a", "b", "b", "c", "c"]);
        // Everyone is busy: the seventh waits until a slot of one of its holders frees.
        let seventh = slots.acquire(&["b", "c"], |_| true);
        tokio::pin!(seventh);
        assert!(futures::poll!(seventh.as_mut()).is_pending());
        let i = held.iter().position(|(h, _)| *h == "a").expect("a holds a slot");
        drop(held.remove(i)); // a frees a slot, but the seventh object is not at a
        assert!(futures::poll!(seventh.as_mut()).is_pending());
        let i = held.iter().position(|(h, _)| *h == "c").expect("c holds a slot");
        drop(held.remove(i));
        let (h, _p) = seventh.await.expect("c freed a slot");
        assert_eq!(h, "c");
        // The slot a freed goes to the next object a keeps.
        assert_eq!(slots.acquire(&["c", "a"], |_| true).await.map(|(h, _)| h), Some("a"));
        assert!(slots.acquire(&[], |_| true).await.is_none());
    }

    #[tokio::test]
    async fn the_least_busy_holder_is_chosen() {
        let slots = HolderSlots::new(2);
        let _held = slots.acquire(&["a"], |_| true).await.expect("free");
        let (h, _p) = slots.acquire(&["a", "b"], |_| true).await.expect("free");
        assert_eq!(h, "b", "b has two free slots, a one");
    }

    #[tokio::test]
    async fn a_holder_that_failed_is_asked_last_and_a_ready_one_first() {
        let slots = HolderSlots::new(2);
        // All idle: the one connected now goes first, whatever the order given.
        let (h, p) = slots.acquire(&["gone", "here"], |h| *h == "here").await.expect("free");
        assert_eq!(h, "here");
        drop(p);
        // "here" failed a fetch: "gone" is asked even though it is not ready…
        slots.failed(&"here");
        let (h, p) = slots.acquire(&["here", "gone"], |h| *h == "here").await.expect("free");
        assert_eq!(h, "gone");
        // …and while "gone" is busy, the next fetch waits for it rather than ask "here".
        let (_, q) = slots.acquire(&["here", "gone"], |_| true).await.expect("free");
        let third = slots.acquire(&["here", "gone"], |_| true);
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending());
        drop((p, q));
        assert_eq!(third.await.map(|(h, _)| h), Some("gone"));
        // A failed holder is still asked when no other keeps the object.
        assert_eq!(slots.acquire(&["here"], |_| true).await.map(|(h, _)| h), Some("here"));
        // Once it serves again, it is an ordinary holder.
        slots.served(&"here");
        let (h, _p) = slots.acquire(&["gone", "here"], |h| *h == "here").await.expect("free");
        assert_eq!(h, "here");
    }

    /// Calls of a fake fetch: the holder asked, and when (seconds after the start).
    type Calls = Mutex<Vec<(&'static str, u64)>>;

    /// A fake fetch from `holder`: "gone" fails after 60 s (a dial that waits out its
    /// timeout), "slow" answers after 10 s, "bad"
    /// fails at once, any other answers its own name after 1 s.
    async fn fake_fetch(calls: &Calls, t0: tokio::time::Instant, holder: &'static str) -> Result<&'static str, String> {
        calls.lock().unwrap().push((holder, t0.elapsed().as_secs()));
        match holder {
            "gone" => {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                return Err("gone".into());
            }
            "slow" => tokio::time::sleep(std::time::Duration::from_secs(10)).await,
            "bad" => return Err("bad".into()),
            _ => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
        Ok(holder)
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_not_connected_that_does_not_answer_is_hedged_with_the_next() {
        let (slots, calls, t0) = (HolderSlots::new(2), Calls::default(), tokio::time::Instant::now());
        // Neither is connected: "gone" is asked first, "here" after HEDGE_AFTER, and wins.
        let got: Result<_, Vec<String>> =
            fetch_hedged(&slots, vec!["gone", "here"], |_| false, HEDGE_AFTER, |h| fake_fetch(&calls, t0, h)).await;
        assert_eq!(got, Ok("here"));
        assert_eq!(*calls.lock().unwrap(), vec![("gone", 0), ("here", HEDGE_AFTER.as_secs())]);
        assert_eq!(t0.elapsed().as_secs(), HEDGE_AFTER.as_secs() + 1);
        // The hedged fetch was dropped: both of "gone"'s slots are free again.
        assert_eq!(slots.of(&"gone").available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connected_holder_is_not_hedged_and_a_failure_fails_over_at_once() {
        let (slots, calls, t0) = (HolderSlots::new(2), Calls::default(), tokio::time::Instant::now());
        // A connected holder may take its time: nobody else is asked.
        let got: Result<_, Vec<String>> =
            fetch_hedged(&slots, vec!["slow", "here"], |h| *h == "slow", HEDGE_AFTER, |h| fake_fetch(&calls, t0, h))
                .await;
        assert_eq!(got, Ok("slow"));
        assert_eq!(*calls.lock().unwrap(), vec![("slow", 0)]);
        // A holder that fails is followed by the next at once, and its error kept.
        let (calls, t0) = (Calls::default(), tokio::time::Instant::now());
        let got: Result<_, Vec<String>> =
            fetch_hedged(&slots, vec!["bad", "here"], |_| true, HEDGE_AFTER, |h| fake_fetch(&calls, t0, h)).await;
        assert_eq!(got, Ok("here"));
        assert_eq!(*calls.lock().unwrap(), vec![("bad", 0), ("here", 0)]);
        assert!(slots.has_failed(&"bad"));
        // Every holder failed: every error comes back; no holder at all: none.
        let got: Result<&str, _> =
            fetch_hedged(&slots, vec!["bad"], |_| true, HEDGE_AFTER, |h| fake_fetch(&calls, t0, h)).await;
        assert_eq!(got, Err(vec!["bad".to_string()]));
        let got: Result<&str, Vec<String>> =
            fetch_hedged(&slots, vec![], |_| true, HEDGE_AFTER, |h| fake_fetch(&calls, t0, h)).await;
        assert_eq!(got, Err(vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn k_shards_are_fetched_at_once_and_a_failed_or_silent_one_is_replaced() {
        let slots = HolderSlots::new(2);
        let shards = |hs: &[&'static str]| hs.iter().copied().enumerate().collect::<Vec<_>>();
        // Two of three shards, all connected: both asked at once, the third not at all.
        let (calls, t0) = (Calls::default(), tokio::time::Instant::now());
        let (got, errors): (_, Vec<String>) =
            fetch_some(&slots, shards(&["a", "b", "c"]), 2, |_| true, HEDGE_AFTER, |_, h| fake_fetch(&calls, t0, h))
                .await;
        assert_eq!(got, vec![(0, "a"), (1, "b")]);
        assert!(errors.is_empty());
        assert_eq!(*calls.lock().unwrap(), vec![("a", 0), ("b", 0)]);
        assert_eq!(t0.elapsed().as_secs(), 1);
        // A shard whose holder fails is replaced by the next at once.
        let (calls, t0) = (Calls::default(), tokio::time::Instant::now());
        let (mut got, errors): (Vec<_>, Vec<String>) =
            fetch_some(&slots, shards(&["bad", "a", "b"]), 2, |_| true, HEDGE_AFTER, |_, h| fake_fetch(&calls, t0, h))
                .await;
        got.sort();
        assert_eq!(got, vec![(1, "a"), (2, "b")]);
        assert_eq!(errors, vec!["bad".to_string()]);
        assert_eq!(*calls.lock().unwrap(), vec![("bad", 0), ("a", 0), ("b", 0)]);
        // A holder not connected that stays silent is hedged with the next shard.
        let (calls, t0) = (Calls::default(), tokio::time::Instant::now());
        let (mut got, _): (Vec<_>, Vec<String>) = fetch_some(
            &slots,
            shards(&["gone", "a", "b"]),
            2,
            |_| false,
            HEDGE_AFTER,
            |_, h| fake_fetch(&calls, t0, h),
        )
        .await;
        got.sort();
        assert_eq!(got, vec![(1, "a"), (2, "b")]);
        assert_eq!(*calls.lock().unwrap(), vec![("gone", 0), ("a", 0), ("b", HEDGE_AFTER.as_secs())]);
        assert_eq!(t0.elapsed().as_secs(), HEDGE_AFTER.as_secs() + 1);
        assert_eq!(slots.of(&"gone").available_permits(), 2);
        // Too few answer: the answers and every error come back.
        let (calls, t0) = (Calls::default(), tokio::time::Instant::now());
        let (got, errors): (_, Vec<String>) =
            fetch_some(&slots, shards(&["bad", "a"]), 2, |_| true, HEDGE_AFTER, |_, h| fake_fetch(&calls, t0, h)).await;
        assert_eq!((got, errors), (vec![(1, "a")], vec!["bad".to_string()]));
    }

    /// Packs kept in memory: placed by a backup under one live contract, fetched (and
    /// counted) by a restore.
    struct Memory {
        contract: crate::id::ContractId,
        packs: Mutex<HashMap<PackId, bytes::Bytes>>,
        fetches: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl crate::backup::PackSink for Memory {
        async fn place(
            &self,
            pack: Arc<crate::repo::pack::SealedPack>,
        ) -> Result<crate::state::PackRecord, crate::transfer::TransferError> {
            self.packs.lock().unwrap().insert(pack.id, pack.bytes.clone());
            Ok(crate::state::PackRecord::copies(
                pack.bytes.len() as u64,
                vec![crate::state::Holder { peer: vec![0], contract: self.contract }],
                1,
            ))
        }
    }

    #[async_trait::async_trait]
    impl PackSource for Memory {
        async fn fetch(&self, pack: PackId) -> Result<bytes::Bytes, crate::transfer::TransferError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let none = || crate::transfer::TransferError::NoHolder { pack: pack.short() };
            self.packs.lock().unwrap().get(&pack).cloned().ok_or_else(none)
        }
    }

    /// `photos/`: 150 distinct files in `a/`, each followed by its twin (more blobs than two
    /// 4 KiB packs hold, so the backup prunes its in-run set between a file and its twin),
    /// `a/b/` with the first name of a hard link whose
    /// second name comes last, a symlink, a file of several chunks, and 20 copies of early
    /// files written last (deduplicated only through the index after the prune); the
    /// directories' times set in the past.
    fn make_tree(root: &Path) -> PathBuf {
        let photos = root.join("photos");
        let (a, b) = (photos.join("a"), photos.join("a/b"));
        std::fs::create_dir_all(&b).unwrap();
        let text = |i: usize| format!("file {i}\n").repeat(40 + i);
        for i in 0..150 {
            std::fs::write(a.join(format!("f{i:03}.txt")), text(i)).unwrap();
            std::fs::write(a.join(format!("f{i:03}.txu")), text(i)).unwrap(); // its twin, next in the walk
        }
        for i in 0..20 {
            std::fs::write(a.join(format!("zdup{i:02}.txt")), text(i)).unwrap();
        }
        for i in 0..5 {
            std::fs::write(b.join(format!("g{i}.txt")), text(1000 + i)).unwrap();
        }
        std::fs::hard_link(b.join("g0.txt"), a.join("zz_link")).unwrap();
        std::fs::create_dir(a.join("zz_dir")).unwrap();
        std::fs::write(a.join("zz_dir/last.txt"), text(2000)).unwrap();
        std::os::unix::fs::symlink("f001.txt", a.join("sym")).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(a.join("big.bin"), big).unwrap();
        filetime::set_file_mtime(&b, filetime::FileTime::from_unix_time(1_500_000_000, 0)).unwrap();
        filetime::set_file_mtime(&a, filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
        photos
    }

    /// Every data pack's blobs, from the pack headers: no blob is stored twice.
    fn data_blobs(id: &Identity, packs: &HashMap<PackId, bytes::Bytes>, index: &HashSet<PackId>) -> HashSet<BlobId> {
        let mut all = HashSet::new();
        for (pid, bytes) in packs.iter().filter(|(p, _)| !index.contains(*p)) {
            for e in pack::read_header(&id.enc_key, bytes).unwrap() {
                assert!(all.insert(e.id), "blob {} stored twice (again in pack {})", e.id.short(), pid.short());
            }
        }
        all
    }

    /// [`make_tree`] in `dir`, backed up in 4 KiB packs kept in a [`Memory`]: the tree,
    /// the state store (and its thread), the identity and the packs.
    async fn backed_up(dir: &Path) -> (PathBuf, Store, std::thread::JoinHandle<()>, Identity, Arc<Memory>) {
        let photos = make_tree(dir);
        let (store, thread) = Store::start(State::open(&dir.join("state.redb")).unwrap()).unwrap();
        let contract = crate::id::ContractId([7; 32]);
        store.call(move |s| s.put_contract(&contract, &crate::state::ContractRecord::live_for_tests())).await.unwrap();
        let id = Identity::generate();
        let memory = Arc::new(Memory { contract, packs: Mutex::new(HashMap::new()), fetches: AtomicUsize::new(0) });
        let opts = crate::backup::BackupOptions {
            paths: vec![photos.clone()],
            copies: 1,
            pack_size: 4096,
            zstd_level: 3,
            upload_concurrency: 2,
            exclude: vec![],
            erasure: None,
            lock_secs: 0,
        };
        let summary = crate::backup::run(&id, &store, opts, memory.clone(), Default::default()).await.expect("backup");
        assert_eq!(summary.error_count, 0, "{:?}", summary.errors);
        (photos, store, thread, id, memory)
    }

    #[tokio::test]
    async fn a_backup_indexes_as_it_goes_and_a_restore_in_small_batches_brings_back_everything() {
        let d = tempfile::tempdir().unwrap();
        let (photos, store, _thread, id, memory) = backed_up(d.path()).await;

        // The index went out in several index packs during the run, and they cover every
        // data pack, blob for blob (what a recovery from the phrase reads back).
        let index = store.call(|s| s.index_packs()).await.unwrap();
        assert!(index.len() >= 3, "index packs written as the run went: {}", index.len());
        assert!(store.call(|s| s.unindexed_packs()).await.unwrap().is_empty());
        let packs = memory.packs.lock().unwrap().clone();
        let index_ids: HashSet<PackId> = index.iter().map(|r| r.pack).collect();
        let stored = data_blobs(&id, &packs, &index_ids);
        let mut indexed = HashSet::new();
        for r in &index {
            for p in crate::repo::index::read((&id.id_key, &id.enc_key), &packs[&r.pack]).unwrap() {
                indexed.extend(p.blobs.iter().map(|b| b.0));
            }
        }
        assert_eq!(indexed, stored);
        // The snapshot needs every data pack of its one backup, and no index pack.
        let (needed, missing) = store
            .call(|s| {
                let (sid, snap) = resolve(s, None).map_err(|e| StateError::Corrupt(e.to_string()))?;
                cached_snapshot_packs(s, &sid, &snap).map_err(|e| StateError::Corrupt(e.to_string()))
            })
            .await
            .unwrap();
        let data: HashSet<PackId> = packs.keys().filter(|p| !index_ids.contains(*p)).copied().collect();
        assert_eq!((needed, missing), (data.clone(), 0));
        // Asked again, the same packs come from the record the first call left.
        let again = store
            .call(|s| {
                let (sid, snap) = resolve(s, None).map_err(|e| StateError::Corrupt(e.to_string()))?;
                let recorded = s.snapshot_packs(&sid)?.map(|v| v.into_iter().collect::<HashSet<_>>());
                let found = cached_snapshot_packs(s, &sid, &snap).map_err(|e| StateError::Corrupt(e.to_string()))?;
                Ok((recorded, found))
            })
            .await
            .unwrap();
        assert_eq!(again, (Some(data.clone()), (data, 0)));

        // A restore in batches of 3 files: every file, link and time comes back.
        let out = d.path().join("out");
        let what = RestoreWhat { target: Some(out.clone()), ..Default::default() };
        let (total, done) = (AtomicU64::new(0), Arc::new(AtomicU64::new(0)));
        let r = run_batched(&id, &store, memory.clone(), &what, (&total, done.clone()), (3, 1000)).await.unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!((r.files, r.symlinks, r.dirs), (300 + 20 + 5 + 1 + 1 + 1, 1, 4));
        // Over 100 batches, yet each data pack is fetched once: the pack a batch ends in
        // is carried to the next. Only the copies written last go back to early packs.
        let data_packs = packs.len() - index.len();
        let fetches = memory.fetches.load(Ordering::SeqCst);
        assert!(fetches <= data_packs + 8, "{fetches} fetches of {data_packs} data packs");
        assert_eq!(done.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
        let back = out.join("photos");
        let walk = |p: &Path| ignore::WalkBuilder::new(p).standard_filters(false).build().map(|e| e.unwrap());
        for e in walk(&photos).filter(|e| e.depth() > 0) {
            let rel = e.path().strip_prefix(&photos).unwrap();
            let (m0, m1) = (e.path().symlink_metadata().unwrap(), back.join(rel).symlink_metadata().unwrap());
            assert_eq!(m0.file_type(), m1.file_type(), "{}", rel.display());
            assert_eq!(m0.modified().unwrap(), m1.modified().unwrap(), "time of {}", rel.display());
            if m0.is_file() {
                assert_eq!(std::fs::read(e.path()).unwrap(), std::fs::read(back.join(rel)).unwrap());
            }
        }
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &str| std::fs::metadata(back.join(p)).unwrap().ino();
        assert_eq!(ino("a/b/g0.txt"), ino("a/zz_link"), "the hard link spans two batches");
        let left: Vec<_> =
            walk(&out).filter(|e| e.file_name().to_string_lossy().starts_with(".peer-restore-")).collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");

        // A directory the last batch would create exists as a file: refused before the
        // first batch is written.
        let blocked = d.path().join("blocked");
        std::fs::create_dir_all(blocked.join("photos/a")).unwrap();
        std::fs::write(blocked.join("photos/a/zz_dir"), b"in the way").unwrap();
        let what = RestoreWhat { target: Some(blocked.clone()), ..Default::default() };
        let r = run_batched(&id, &store, memory.clone(), &what, (&total, done.clone()), (3, 1000)).await;
        assert!(matches!(r, Err(RestoreError::Target(ref m)) if m.contains("zz_dir")), "{r:?}");
        assert!(!blocked.join("photos/a/f000.txt").exists(), "nothing written before the refusal");

        // An include that names nothing stops the restore before anything is written.
        let nowhere = d.path().join("nowhere");
        let what = RestoreWhat {
            target: Some(nowhere.clone()),
            include: vec![PathBuf::from("photos/a/b"), PathBuf::from("photos/nope")],
            ..Default::default()
        };
        let r = run_batched(&id, &store, memory.clone(), &what, (&total, done), (3, 1000)).await;
        assert!(matches!(r, Err(RestoreError::NotInSnapshot(ref m)) if m.contains("photos/nope")), "{r:?}");
        assert!(!nowhere.exists());
    }

    /// Copies as a holder that flips every byte sends them, unchecked; checked copies
    /// from [`Memory`], flipped too when `checked_bad` (a pack whose blobs do not open
    /// under its own id).
    struct Tampered {
        memory: Arc<Memory>,
        checked_bad: bool,
        unchecked: Mutex<Vec<PackId>>,
        checked: Mutex<Vec<PackId>>,
    }

    #[async_trait::async_trait]
    impl PackSource for Tampered {
        async fn fetch(&self, pack: PackId) -> Result<bytes::Bytes, crate::transfer::TransferError> {
            self.checked.lock().unwrap().push(pack);
            let b = self.memory.fetch(pack).await?;
            Ok(if self.checked_bad { b.iter().map(|x| !x).collect() } else { b })
        }
        async fn fetch_unchecked(&self, pack: PackId) -> Result<bytes::Bytes, crate::transfer::TransferError> {
            self.unchecked.lock().unwrap().push(pack);
            Ok(self.memory.fetch(pack).await?.iter().map(|x| !x).collect())
        }
    }

    #[tokio::test]
    async fn a_copy_whose_blobs_do_not_open_is_fetched_again_checked_and_only_then_fails_its_files() {
        let d = tempfile::tempdir().unwrap();
        let (photos, store, _thread, id, memory) = backed_up(d.path()).await;
        for checked_bad in [false, true] {
            let source = Arc::new(Tampered {
                memory: memory.clone(),
                checked_bad,
                unchecked: Mutex::default(),
                checked: Mutex::default(),
            });
            let out = d.path().join(format!("out-{checked_bad}"));
            let what = RestoreWhat { target: Some(out.clone()), ..Default::default() };
            let (total, done) = (AtomicU64::new(0), Arc::new(AtomicU64::new(0)));
            let r = run_batched(&id, &store, source.clone(), &what, (&total, done), (1000, 100_000)).await.unwrap();
            // Every data pack came tampered first, then checked (the snapshot's trees are
            // read checked only).
            let unchecked = source.unchecked.lock().unwrap().clone();
            let checked = source.checked.lock().unwrap().clone();
            assert!(unchecked.len() > 3, "{unchecked:?}");
            for p in &unchecked {
                let times = |v: &[PackId]| v.iter().filter(|c| *c == p).count();
                assert!(times(&checked) >= times(&unchecked), "{p:?}: {checked:?}");
            }
            let walk = |p: &Path| ignore::WalkBuilder::new(p).standard_filters(false).build().map(|e| e.unwrap());
            let files: Vec<PathBuf> = walk(&photos)
                .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
                .map(|e| e.path().strip_prefix(&photos).unwrap().to_path_buf())
                .collect();
            if !checked_bad {
                assert!(r.failed.is_empty(), "{:?}", r.failed);
                for f in &files {
                    assert_eq!(
                        std::fs::read(photos.join(f)).unwrap(),
                        std::fs::read(out.join("photos").join(f)).unwrap()
                    );
                }
                continue;
            }
            // No good copy: every file with content fails, naming the blob (a hard link's
            // second name, its first); none is left under its name or as a temporary.
            assert!(r.failed_count >= 300, "{}", r.failed_count);
            let why = |f: &String| f.contains("is corrupt: authentication failed") || f.contains("was not restored");
            assert!(r.failed.iter().all(why), "{:?}", r.failed.iter().filter(|f| !why(f)).collect::<Vec<_>>());
            let left: Vec<_> = walk(&out).filter(|e| e.file_type().is_some_and(|t| t.is_file())).collect();
            assert!(left.iter().all(|e| e.metadata().unwrap().len() == 0), "{left:?}");
        }
    }
}
