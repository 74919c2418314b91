//! What the user runs to keep a repository lean and sound (protocol.md §5.6): `forget`
//! (drop snapshots by a retention policy), `prune` (delete the packs no snapshot needs at
//! their holders, with signed requests, and give the space back to the contracts) and
//! `check` (challenge every holder of every needed pack; with `read_data`, download each
//! pack and verify every blob).

use super::Inner;
use super::ops::fail;
use super::transfer::NetSource;
use crate::audit::{self, Outcome};
use crate::control::{CheckSummary, ErrorKind, Failure, ForgetSummary, PruneSummary, Reply, SnapshotInfo};
use crate::id::{ContractId, PackId};
use crate::protocol::{self, DOMAIN_DELETE, DataRequest, DataResponse, Deletion, MAX_DELETE_PACKS, now};
use crate::repo::pack;
use crate::restore::{self, PackSource};
use crate::retention::{self, Policy};
use futures::StreamExt;
use libp2p::PeerId;
use rand::RngExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Packs checked at once by `check`.
pub const CHECK_CONCURRENCY: usize = 4;

/// A stored object to delete: (pack, object: the pack or a shard, contract, bytes).
type Held = (PackId, PackId, ContractId, u64);

const BUSY: &str = "another backup, restore, forget or prune is running on this daemon";

/// Why `peer check --read-data` could not read a pack it downloaded.
#[derive(Debug, thiserror::Error)]
enum ReadDataError {
    /// Its header or a blob is corrupt.
    #[error(transparent)]
    Corrupt(#[from] crate::repo::RepoError),
    /// The reading task stopped.
    #[error("reading stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

impl Inner {
    /// `peer forget`: removes the snapshots `policy` does not keep (none with `dry_run`).
    pub(super) async fn forget(&self, policy: &Policy, dry_run: bool) -> Reply {
        let Ok(_guard) = self.busy.try_lock() else { return fail(ErrorKind::Busy, BUSY) };
        self.forget_locked(policy, dry_run, None).await
    }

    /// [`Inner::forget`] for a caller that holds the busy lock; with `only`, only the
    /// snapshots of exactly these paths (one schedule's) are considered.
    pub(super) async fn forget_locked(&self, policy: &Policy, dry_run: bool, only: Option<Vec<String>>) -> Reply {
        if self.home.recover_marker().exists() {
            return fail(ErrorKind::Busy, super::ops::RECOVERING);
        }
        if policy.is_empty() {
            return fail(
                ErrorKind::Usage,
                "give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly \
                 (forget never removes every snapshot)",
            );
        }
        let snaps = match self.db(|s| s.snapshots()).await {
            Ok(s) => s,
            Err(e) => return Reply::Error(e.into()),
        };
        let snaps: Vec<_> = snaps.into_iter().filter(|(_, s)| only.as_ref().is_none_or(|p| *p == s.paths)).collect();
        let grouped: Vec<(u64, &str, &[String])> =
            snaps.iter().map(|(_, s)| (s.time, s.hostname.as_str(), s.paths.as_slice())).collect();
        let flags = retention::keep_grouped(&grouped, policy);
        let (mut keep, mut remove) = (Vec::new(), Vec::new());
        let t = crate::protocol::now();
        for ((id, s), k) in snaps.iter().zip(flags).rev() {
            // A snapshot under a retention lock stays until its lock ends (§5.9).
            if k || s.lock_until > t {
                keep.push(SnapshotInfo::new(id, s));
            } else {
                let sid = *id;
                if !dry_run && let Err(e) = self.db(move |s| s.remove_snapshot(&sid)).await {
                    return Reply::Error(e.into());
                }
                remove.push(SnapshotInfo::new(id, s));
            }
        }
        if !dry_run && !remove.is_empty() {
            self.publish_head().await;
        }
        Reply::Forget(ForgetSummary { keep, remove, dry_run })
    }

    /// `peer prune`: deletes, at their holders, every pack no remaining snapshot needs.
    /// Packs whose holders cannot be reached stay marked and are deleted by a later prune.
    pub(super) async fn prune(self: Arc<Self>, dry_run: bool) -> Reply {
        let me = self.clone();
        let Ok(_guard) = me.busy.try_lock() else { return fail(ErrorKind::Busy, BUSY) };
        self.prune_locked(dry_run).await
    }

    /// [`Inner::prune`] for a caller that holds the busy lock.
    pub(super) async fn prune_locked(self: Arc<Self>, dry_run: bool) -> Reply {
        if self.home.recover_marker().exists() {
            return fail(ErrorKind::Busy, super::ops::RECOVERING);
        }
        let needed = match self.needed_packs().await {
            Ok((p, _)) => p,
            Err(f) => return fail(f.kind, format!("{}; nothing was deleted", f.message)),
        };
        let packs = match self.db(|s| s.packs()).await {
            Ok(p) => p,
            Err(e) => return Reply::Error(e.into()),
        };
        let total = packs.len() as u64;
        let t = now();
        let (locked, unused): (Vec<_>, Vec<_>) =
            packs.into_iter().filter(|(id, _)| !needed.contains(id)).partition(|(_, r)| r.lock_until > t);
        let mut s = PruneSummary {
            packs_locked: locked.len() as u64,
            packs_kept: total - unused.len() as u64,
            packs_unused: unused.len() as u64,
            bytes_unused: unused.iter().map(|(_, r)| r.size).sum(),
            bytes_freed: 0,
            errors: vec![],
            dry_run,
        };
        if dry_run || unused.is_empty() {
            return Reply::Prune(s);
        }
        let ids: HashSet<PackId> = unused.iter().map(|(id, _)| *id).collect();
        let marked = ids.clone();
        if let Err(e) = self.db(move |s| s.mark_garbage(&marked).and_then(|_| s.remove_index_packs(&marked))).await {
            return Reply::Error(e.into());
        }
        // (pack, object held: the pack or a shard, contract, size) per holder.
        let mut by_holder: HashMap<Vec<u8>, Vec<Held>> = HashMap::new();
        for (id, rec) in &unused {
            for (object, size, h) in rec.objects(id) {
                by_holder.entry(h.peer.clone()).or_default().push((*id, object, h.contract, size));
            }
        }
        for (peer_bytes, list) in by_holder {
            let Ok(peer) = PeerId::from_bytes(&peer_bytes) else { continue };
            for chunk in list.chunks(MAX_DELETE_PACKS) {
                let d = Deletion { packs: chunk.iter().map(|(_, o, _, _)| *o).collect(), time: now() };
                let signed = self.id.sign(DOMAIN_DELETE, protocol::to_cbor(&d));
                match self.net.data_request(peer, self.addrs_of(&peer), DataRequest::Delete(signed)).await {
                    Ok(DataResponse::Deleted { bytes, .. }) => {
                        s.bytes_freed += bytes;
                        let (done, holder) = (chunk.to_vec(), peer_bytes.clone());
                        let freed = move |s: &crate::state::State| {
                            for (pack, _, contract, size) in done {
                                s.drop_copy(&pack, &holder)?;
                                s.update_contract(&contract, |c| c.used = c.used.saturating_sub(size))?;
                            }
                            Ok(())
                        };
                        self.persist("deleted copies", freed).await;
                    }
                    Ok(other) => s.errors.push(format!("{peer} did not delete: {other:?}")),
                    Err(e) => s.errors.push(format!("{peer}: {e}; its packs are deleted by a later prune")),
                }
            }
        }
        let emptied = move |s: &crate::state::State| {
            for id in ids {
                if s.pack(&id)?.is_some_and(|rec| rec.objects(&id).is_empty()) {
                    s.remove_pack(&id)?;
                }
            }
            Ok(())
        };
        self.persist("the records of deleted packs", emptied).await;
        self.publish_head().await;
        Reply::Prune(s)
    }

    /// The packs the snapshots need, with the index packs that list them, and how many
    /// snapshots there are: a snapshot's recorded packs while no index entry has moved
    /// since they were found ([`crate::state::State::snapshot_packs`]), else its trees
    /// walked and its blobs looked up ([`restore::PackFinder`]); tree documents not
    /// cached locally are fetched from their holders.
    /// Errors: the state failed (`Local`), a tree could not be read or a blob is in no
    /// known pack (`Unavailable`).
    async fn needed_packs(self: &Arc<Self>) -> Result<(HashSet<PackId>, u64), Failure> {
        let source = NetSource::new(self.clone());
        let snaps = self.db(|s| s.snapshots()).await?;
        let mut finder = restore::PackFinder::default();
        for (sid, snap) in &snaps {
            let id = *sid;
            if let Some(recorded) = self.db(move |s| s.snapshot_packs(&id)).await? {
                finder.packs.extend(recorded);
                continue;
            }
            restore::snapshot_packs(&self.id, &self.state, &source, sid, snap, &mut finder).await.map_err(|e| {
                let f = Failure::from(e);
                Failure::new(f.kind, format!("cannot read the trees of snapshot {}: {}", sid.short(), f.message))
            })?;
        }
        let (mut packs, missing) = (finder.packs, finder.missing);
        if missing > 0 {
            let why = format!("{missing} blobs the snapshots need are in no known pack; run 'peer check'");
            return Err(Failure::new(ErrorKind::Unavailable, why));
        }
        // An index pack is needed while it lists any needed pack (§3.8); a recovery reads it.
        let index = self.db(|s| s.index_packs()).await?;
        let listing: Vec<PackId> =
            index.into_iter().filter(|r| r.covers.iter().any(|c| packs.contains(c))).map(|r| r.pack).collect();
        packs.extend(listing);
        Ok((packs, snaps.len() as u64))
    }

    /// `peer check`: challenges every holder of every pack the snapshots need; with
    /// `read_data`, also downloads each pack and opens every blob in it.
    pub(super) async fn check(self: Arc<Self>, read_data: bool) -> Reply {
        let (packs, snapshots) = match self.needed_packs().await {
            Ok(v) => v,
            Err(e) => {
                let s = CheckSummary {
                    snapshots: 0,
                    packs: 0,
                    copies_checked: 0,
                    copies_ok: 0,
                    packs_read: 0,
                    problems: vec![e.message],
                };
                return Reply::Check(s);
            }
        };
        let mut s = CheckSummary {
            snapshots,
            packs: packs.len() as u64,
            copies_checked: 0,
            copies_ok: 0,
            packs_read: 0,
            problems: vec![],
        };
        let results: Vec<(u64, u64, bool, Vec<String>)> = futures::stream::iter(packs)
            .map(|id| self.check_pack(id, read_data))
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect()
            .await;
        for (checked, ok, read, problems) in results {
            s.copies_checked += checked;
            s.copies_ok += ok;
            s.packs_read += u64::from(read);
            s.problems.extend(problems);
        }
        Reply::Check(s)
    }

    /// One pack: (copies challenged, copies that passed, read and verified, problems).
    async fn check_pack(self: &Arc<Self>, id: PackId, read_data: bool) -> (u64, u64, bool, Vec<String>) {
        let mut problems = Vec::new();
        let Ok(Some(rec)) = self.db(move |s| s.pack(&id)).await else {
            return (0, 0, false, vec![format!("pack {}: no record of where it is", id.short())]);
        };
        let (mut checked, mut ok) = (0u64, 0u64);
        for (object, size, h) in rec.objects(&id) {
            let Ok(peer) = PeerId::from_bytes(&h.peer) else { continue };
            let leaf = rand::rng().random_range(0..audit::leaves(size));
            checked += 1;
            match self.challenge(peer, object, size, leaf).await {
                Some(Outcome::Pass) => ok += 1,
                Some(Outcome::Wrong(why)) | Some(Outcome::Unreachable(why)) => {
                    problems.push(format!("pack {} at {peer}: {why}", id.short()))
                }
                None => problems.push(format!("pack {} at {peer}: busy, not checked", id.short())),
            }
        }
        if (ok as usize) < rec.needed() {
            problems.push(format!(
                "pack {}: only {ok} of the {} copies or shards needed to read it proved held",
                id.short(),
                rec.needed()
            ));
        }
        let mut read = false;
        if read_data {
            let source = NetSource::new(self.clone());
            match source.fetch(id).await {
                Ok(bytes) => match self.open_every_blob(bytes).await {
                    Ok(()) => read = true,
                    Err(e) => problems.push(format!("pack {}: {e}", id.short())),
                },
                Err(e) => problems.push(format!("pack {}: cannot download it: {e}", id.short())),
            }
        }
        (checked, ok, read, problems)
    }

    /// Decrypts a pack's header and every blob in it, checking each blob's id.
    async fn open_every_blob(&self, bytes: bytes::Bytes) -> Result<(), ReadDataError> {
        let (id_key, enc_key) = (self.id.id_key, self.id.enc_key);
        tokio::task::spawn_blocking(move || {
            for e in &pack::read_header(&enc_key, &bytes)? {
                pack::read_blob((&id_key, &enc_key), &bytes, e)?;
            }
            Ok(())
        })
        .await?
    }
}
