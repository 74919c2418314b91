//! Retention locks, client side (protocol.md §5.9): after a locked backup every pack the
//! snapshot needs (its own and the ones it shares with earlier snapshots by dedup) and
//! every index pack listing them is locked at each of its holders; the heads that list a
//! locked snapshot carry the lock too, so holders keep them when newer ones arrive.
//! `peer heads` lists the heads the providers keep, and `restore --head SEQ` brings
//! back the state one of them describes.

use super::Inner;
use crate::control::{ErrorKind, Failure, HeadInfo};
use crate::head;
use crate::id::PackId;
use crate::protocol::{DataRequest, DataResponse, MAX_DELETE_PACKS};
use crate::state::{PackRecord, Role, State};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};

/// Peers asked for our heads at most, by `peer heads` and `restore --head`.
pub const MAX_ASKED: usize = 64;

/// The packs snapshot `sid` (hex) needs, and the index packs that list them, with
/// their records.
fn packs_of_snapshot(state: &State, sid: &str) -> Result<Vec<(PackId, PackRecord)>, Failure> {
    let Some((id, snap)) = state.snapshots()?.into_iter().find(|(k, _)| k.to_string() == sid) else {
        return Err(Failure::new(ErrorKind::NotFound, format!("no snapshot {sid}")));
    };
    let (mut packs, missing) = crate::restore::cached_snapshot_packs(state, &id, &snap)?;
    if missing > 0 {
        return Err(Failure::new(ErrorKind::Local, format!("{missing} blobs of the snapshot are in no known pack")));
    }
    for ip in state.index_packs()? {
        if ip.covers.iter().any(|p| packs.contains(p)) {
            packs.insert(ip.pack);
        }
    }
    let mut out = Vec::new();
    for p in packs {
        let Some(rec) = state.pack(&p)? else {
            return Err(Failure::new(ErrorKind::Local, format!("pack {} has no record", p.short())));
        };
        out.push((p, rec));
    }
    Ok(out)
}

impl Inner {
    /// Locks, at each holder, every pack snapshot `sid` needs until `until`, and records
    /// the lock of each pack every holder confirmed. Errors name the holders that did not.
    pub(super) async fn lock_snapshot(&self, sid: &str, until: u64) -> Result<usize, Failure> {
        let id = sid.to_string();
        let packs = self.db(move |s| Ok(packs_of_snapshot(s, &id))).await??;
        // (pack, object: the pack or one shard) per holder.
        let mut by_holder: HashMap<Vec<u8>, Vec<(PackId, PackId)>> = HashMap::new();
        for (id, rec) in packs.iter().filter(|(_, r)| r.lock_until < until) {
            for (object, _, h) in rec.objects(id) {
                by_holder.entry(h.peer.clone()).or_default().push((*id, object));
            }
        }
        let mut failed: HashSet<PackId> = HashSet::new();
        let mut errors = Vec::new();
        for (holder, list) in by_holder {
            let Ok(peer) = PeerId::from_bytes(&holder) else { continue };
            for chunk in list.chunks(MAX_DELETE_PACKS) {
                let req = DataRequest::Lock { packs: chunk.iter().map(|(_, o)| *o).collect(), until };
                match self.net.data_request(peer, self.addrs_of(&peer), req).await {
                    Ok(DataResponse::Locked { packs: n }) if n as usize == chunk.len() => {}
                    Ok(DataResponse::Locked { packs: n }) => {
                        errors.push(format!("{peer} holds and locked only {n} of {} packs", chunk.len()));
                        failed.extend(chunk.iter().map(|(p, _)| *p));
                    }
                    other => {
                        errors.push(format!("{peer} did not lock: {other:?}"));
                        failed.extend(chunk.iter().map(|(p, _)| *p));
                    }
                }
            }
        }
        let locked_ids: Vec<PackId> = packs.iter().map(|(p, _)| *p).filter(|p| !failed.contains(p)).collect();
        let n = locked_ids.len();
        self.persist("pack locks", move |s| s.lock_packs(&locked_ids, until)).await;
        if errors.is_empty() { Ok(n) } else { Err(Failure::new(ErrorKind::Unavailable, errors.join("; "))) }
    }

    /// Every head our providers keep, opened with our key: newest first, with how many
    /// providers hold each. Asked: every provider we have a contract with, the holders
    /// our head records in the DHT name (after an attack the repository may list no
    /// contract), and the peers we are connected to, at most [`MAX_ASKED`] in all.
    pub(super) async fn kept_heads(&self) -> Vec<(head::Opened, u64, usize)> {
        let mut providers: HashSet<PeerId> = self
            .state
            .contracts()
            .iter()
            .filter(|(_, c)| c.role == Role::Client)
            .filter_map(|(_, c)| c.peer_id())
            .collect();
        let key = crate::protocol::head_record_key(&self.me());
        for v in self.net.get_record(key.clone()).await.unwrap_or_default() {
            if let Ok((_, pointer)) = crate::protocol::verify_head_record(&key, &v) {
                providers.extend(pointer.holders.iter().filter_map(|b| PeerId::from_bytes(b).ok()));
            }
        }
        if let Ok(ns) = self.net.status().await {
            providers.extend(ns.connected);
        }
        let providers: Vec<PeerId> = providers.into_iter().take(MAX_ASKED).collect();
        let mut found: HashMap<u64, (head::Opened, u64, usize)> = HashMap::new();
        for p in providers {
            let Ok(DataResponse::Heads(list)) =
                self.net.data_request(p, self.addrs_of(&p), DataRequest::GetHeads).await
            else {
                continue;
            };
            for signed in list {
                let lock = head::envelope_info(&signed, &self.me()).map(|(_, l)| l).unwrap_or(0);
                match head::open(&self.id, &signed) {
                    Ok(o) => found.entry(o.doc.seq).or_insert((o, lock, 0)).2 += 1,
                    Err(e) => tracing::warn!("{p} holds a head we cannot open: {e}"),
                }
            }
        }
        let mut v: Vec<_> = found.into_values().collect();
        v.sort_by_key(|h| std::cmp::Reverse(h.0.doc.seq));
        v
    }

    /// `peer heads`.
    pub(super) async fn heads_list(&self) -> Vec<HeadInfo> {
        self.kept_heads()
            .await
            .into_iter()
            .map(|(o, lock_until, holders)| HeadInfo {
                seq: o.doc.seq,
                time: o.doc.time,
                snapshots: o.doc.snapshots.len() as u64,
                lock_until,
                holders: holders as u64,
            })
            .collect()
    }

    /// Brings the state head `seq` describes into this repository: its snapshots, packs,
    /// index packs and contracts that are not here. Returns the id of its newest snapshot.
    pub(super) async fn adopt_head(self: &std::sync::Arc<Self>, seq: u64) -> Result<String, Failure> {
        let heads = self.kept_heads().await;
        let Some((opened, _, _)) = heads.into_iter().find(|(o, _, _)| o.doc.seq == seq) else {
            return Err(Failure::new(ErrorKind::NotFound, format!("no provider keeps head {seq}; see 'peer heads'")));
        };
        let head::Opened { doc, inline_index } = opened;
        let Some(newest) = doc.snapshots.last().map(|(id, _)| id.to_string()) else {
            return Err(Failure::new(ErrorKind::NotFound, format!("head {seq} lists no snapshot")));
        };
        self.db(move |s| s.import_index(inline_index)).await?;
        let index = self.recover_index(&doc).await?;
        let imported = self.db(move |s| {
            let have_snaps: HashSet<_> = s.snapshots()?.into_iter().map(|(id, _)| id).collect();
            let have_index: HashSet<_> = s.index_packs()?.into_iter().map(|r| r.pack).collect();
            let snaps: Vec<_> = doc.snapshots.into_iter().filter(|(id, _)| !have_snaps.contains(id)).collect();
            let mut packs = Vec::new();
            for (id, rec) in doc.packs {
                if s.pack(&id)?.is_none() {
                    packs.push((id, rec));
                }
            }
            let index: Vec<_> = index.into_iter().filter(|r| !have_index.contains(&r.pack)).collect();
            let contracts: Vec<_> =
                doc.contracts.into_iter().filter(|(id, _)| s.contract(id).ok().flatten().is_none()).collect();
            s.import(&snaps, &packs, &index, &contracts)?;
            Ok(snaps.len())
        });
        let n = imported.await?;
        tracing::warn!("head {seq} adopted: {n} snapshots brought back");
        // The state it describes becomes the latest head again.
        self.publish_head().await;
        Ok(newest)
    }
}
