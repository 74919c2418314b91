//! Pack transfer (protocol.md §5): the provider's answers to store and fetch requests, and
//! the client's placement of packs on N distinct holders ([`NetSink`]) and verified
//! fetching with failover ([`NetSource`]).

use super::Inner;
use crate::backup::PackSink;
use crate::id::{ContractId, PackId};
use crate::net::NetError;
use crate::protocol::{
    DOMAIN_DELETE, DataErrorCode, DataRequest, DataResponse, Deletion, MAX_DELETE_PACKS, from_cbor, now,
};
use crate::provider::StoreError;
use crate::repo::erasure::Scheme;
use crate::repo::merkle;
use crate::repo::pack::{MAX_PACK_SIZE, SealedPack};
use crate::restore::{FETCHES_PER_HOLDER, HEDGE_AFTER, HolderSlots, PackSource, fetch_hedged, fetch_some};
use crate::state::{Holder, PackRecord, Placement, Role, Shard};
use crate::transfer::{HolderError, TransferError};
use backon::Retryable;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tries of one store or fetch at a busy provider before giving up on it.
pub const BUSY_RETRIES: u32 = 5;

/// The record `lookup` finds, waiting while `pending` says it may still come: each time
/// `woken` is notified the lookup is tried again, until it finds the record, `pending` turns
/// false, or `limit` passes. For a `Store` that arrived before its contract was recorded
/// (protocol.md §4.3.2: the client stores as soon as it has countersigned).
async fn await_record<T>(
    lookup: impl Fn() -> Option<T>,
    pending: impl Fn() -> bool,
    woken: &tokio::sync::Notify,
    limit: Duration,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Registered before the checks, so a notification between them is not lost.
        let notified = woken.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(t) = lookup() {
            return Some(t);
        }
        if !pending() || tokio::time::timeout_at(deadline, notified).await.is_err() {
            return lookup();
        }
    }
}

/// The pauses between tries of a store or a fetch that a provider answered `Busy`
/// (protocol.md §5.3): 250 ms, doubling, [`BUSY_RETRIES`] tries in all.
fn busy_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(60))
        .with_max_times(BUSY_RETRIES as usize - 1)
}

fn describe(peer: &PeerId, e: &NetError) -> HolderError {
    let reason = match e {
        NetError::Request { reason, .. } => format!("provider {peer} unreachable or too slow ({reason})"),
        other => other.to_string(),
    };
    HolderError::Unreachable { peer: *peer, reason }
}

impl Inner {
    /// Provider side: answers one data request from `peer`.
    pub(super) async fn on_data(&self, peer: PeerId, req: DataRequest) -> DataResponse {
        match req {
            r
            @ (DataRequest::StoreClaim { .. } | DataRequest::AuditClaim { .. } | DataRequest::ReleaseClaim { .. }) => {
                self.on_claim(peer, r).await
            }
            DataRequest::PutHead(signed) => self.on_put_head(peer, signed).await,
            DataRequest::GetHead => self.on_get_head(peer).await,
            DataRequest::GetHeads => self.on_get_heads(peer).await,
            DataRequest::AuditSigned { pack, leaf } => self.on_audit_signed(peer, pack, leaf).await,
            DataRequest::Lock { packs, until } => self.on_lock(peer, packs, until).await,
            DataRequest::ClaimsLost => self.on_claims_lost(peer).await,
            DataRequest::Delete(signed) => self.on_delete(peer, signed).await,
            DataRequest::Store { contract, pack, data } => self.on_store(peer, contract, pack, data).await,
            DataRequest::Audit { pack, leaf } => self.on_audit(peer, pack, leaf).await,
            DataRequest::Fetch { pack } => self.on_fetch(peer, pack).await,
        }
    }

    /// `GetHead` (protocol.md §5.8): the head held for `peer`.
    async fn on_get_head(&self, peer: PeerId) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.get_head(&peer)).await {
            Ok(Ok(Some(b))) => match from_cbor::<crate::identity::Signed>("head", &b) {
                Ok(s) => DataResponse::Head(s),
                Err(e) => err(DataErrorCode::Internal, format!("the head held is unreadable: {e}")),
            },
            Ok(Ok(None)) => err(DataErrorCode::NotFound, format!("no head held for {peer}")),
            Ok(Err(e)) => err(DataErrorCode::Internal, e.to_string()),
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// `Delete` (protocol.md §5.6): packs of `peer`'s, named in a deletion it signed.
    async fn on_delete(&self, peer: PeerId, signed: crate::identity::Signed) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        match signed.verify(DOMAIN_DELETE) {
            Ok(s) if s == peer => {}
            _ => return err(DataErrorCode::BadPack, "the deletion is not signed by its sender".into()),
        }
        let d: Deletion = match from_cbor("deletion", &signed.body) {
            Ok(d) => d,
            Err(e) => return err(DataErrorCode::BadPack, e.to_string()),
        };
        if d.packs.len() > MAX_DELETE_PACKS {
            return err(DataErrorCode::BadPack, format!("more than {MAX_DELETE_PACKS} packs in one deletion"));
        }
        let store = self.store.clone();
        let t = now();
        let r = tokio::task::spawn_blocking(move || {
            let mut out = (0u64, 0u32);
            for p in &d.packs {
                match store.delete(&peer, p, t)? {
                    Some(b) => out.0 += b,
                    None => out.1 += 1,
                }
            }
            Ok::<_, StoreError>(out)
        })
        .await;
        match r {
            Ok(Ok((bytes, locked))) => {
                tracing::info!("deleted {bytes} bytes of packs at the request of {peer}; {locked} locked packs kept");
                DataResponse::Deleted { bytes, locked }
            }
            Ok(Err(e)) => {
                tracing::error!("delete failed: {e}");
                err(DataErrorCode::Internal, "provider could not delete the packs".into())
            }
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// `Lock` (protocol.md §5.9): retention locks on packs held for `peer`, under a live
    /// contract, at most [`crate::protocol::MAX_LOCK_SECS`] ahead.
    async fn on_lock(&self, peer: PeerId, packs: Vec<PackId>, until: u64) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        if !self.live_contracts(Role::Provider).iter().any(|(_, c)| c.peer_id() == Some(peer)) {
            return err(DataErrorCode::NoContract, format!("no live contract with {peer}"));
        }
        let t = now();
        if until > t + crate::protocol::MAX_LOCK_SECS {
            let days = crate::protocol::MAX_LOCK_SECS / 86400;
            return err(DataErrorCode::Refused, format!("a lock may last {days} days at most"));
        }
        if packs.len() > MAX_DELETE_PACKS {
            return err(DataErrorCode::BadPack, format!("more than {MAX_DELETE_PACKS} packs in one lock"));
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.lock(&peer, &packs, until, t)).await {
            Ok(Ok(n)) => DataResponse::Locked { packs: n },
            Ok(Err(e)) => err(DataErrorCode::Internal, e.to_string()),
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// `GetHeads` (protocol.md §5.9): every head held for `peer`, newest first.
    async fn on_get_heads(&self, peer: PeerId) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.get_heads(&peer)).await {
            Ok(Ok(list)) => DataResponse::Heads(
                list.iter().filter_map(|b| from_cbor::<crate::identity::Signed>("head", b).ok()).collect(),
            ),
            Ok(Err(e)) => err(DataErrorCode::Internal, e.to_string()),
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// `Store` (protocol.md §5.1): a pack under a live contract with room.
    async fn on_store(&self, peer: PeerId, contract: ContractId, pack: PackId, data: bytes::Bytes) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        if data.len() > MAX_PACK_SIZE {
            return err(DataErrorCode::BadPack, format!("pack over {MAX_PACK_SIZE} bytes"));
        }
        let lookup = || self.state.contract(&contract);
        let pending = || self.reserved.lock().unwrap_or_else(|p| p.into_inner()).pending(&peer);
        let limit = Duration::from_secs(crate::net::CONTRACT_TIMEOUT_SECS);
        let Some(c) = await_record(lookup, pending, &self.released, limit).await else {
            return err(DataErrorCode::NoContract, format!("no contract {contract}"));
        };
        if c.role != Role::Provider || c.peer_id() != Some(peer) || !c.is_live(now()) {
            return err(DataErrorCode::NoContract, format!("{contract} is not a live contract with {peer}"));
        }
        if self.store.has(&peer, &pack) {
            return DataResponse::Stored;
        }
        let size = data.len() as u64;
        // The client's packs here fill all its live contracts with us together (one
        // client may hold several: a new one when the others are full).
        let t = now();
        let granted: u64 = self
            .state
            .contracts()
            .iter()
            .filter(|(_, k)| k.role == Role::Provider && k.peer_id() == Some(peer) && k.is_live(t))
            .map(|(_, k)| k.bytes)
            .sum();
        {
            // Check and reserve under one lock, so concurrent stores cannot overrun the contract.
            let Ok(mut inflight) = self.inflight.lock() else {
                return err(DataErrorCode::Internal, "internal error".into());
            };
            let pending = inflight.entry(peer).or_default();
            let used = self.store.used(&peer) + *pending;
            if used + size > granted {
                return err(
                    DataErrorCode::NoRoom,
                    format!("your live contracts here have {used} of {granted} bytes used"),
                );
            }
            *pending += size;
        }
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || store.put(&peer, &pack, &data)).await;
        if let Ok(mut inflight) = self.inflight.lock()
            && let Some(p) = inflight.get_mut(&peer)
        {
            *p = p.saturating_sub(size);
        }
        match r {
            Ok(Ok(())) => DataResponse::Stored,
            Ok(Err(StoreError::Mismatch(p))) => err(DataErrorCode::BadPack, format!("pack {p} does not match its id")),
            Ok(Err(StoreError::DiskFull { need, .. })) => {
                err(DataErrorCode::NoRoom, format!("not enough free disk at the provider for {need} bytes"))
            }
            Ok(Err(e)) => {
                tracing::error!("store failed: {e}");
                err(DataErrorCode::Internal, "provider could not write the pack".into())
            }
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// `Audit` (protocol.md §5.4): one leaf of a held pack and its Merkle path.
    async fn on_audit(&self, peer: PeerId, pack: PackId, leaf: u32) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || {
            store.get(&peer, &pack).map(|d| d.map(|d| crate::audit::prove(&d, leaf)))
        })
        .await;
        match r {
            Ok(Ok(Some(Some((leaf, path))))) => DataResponse::Proof { leaf, path },
            Ok(Ok(Some(None))) => err(DataErrorCode::BadPack, format!("pack {pack} has no leaf {leaf}")),
            Ok(Ok(None)) => err(DataErrorCode::NotFound, format!("no pack {pack} held for {peer}")),
            Ok(Err(e)) => {
                tracing::error!("read failed: {e}");
                err(DataErrorCode::Internal, "provider could not read the pack".into())
            }
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// `Fetch` (protocol.md §5.2): a held pack, whole.
    async fn on_fetch(&self, peer: PeerId, pack: PackId) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        let store = self.store.clone();
        // Read into a reused message buffer: a restore fetches pack after pack.
        let read = move || crate::protocol::codec::pooled(|buf| store.get_into(&peer, &pack, buf));
        match tokio::task::spawn_blocking(read).await.map(|r| r.map(|(held, b)| held.then_some(b))) {
            Ok(Ok(Some(b))) => DataResponse::Pack(b),
            Ok(Ok(None)) => err(DataErrorCode::NotFound, format!("no pack {pack} held for {peer}")),
            Ok(Err(e)) => {
                tracing::error!("read failed: {e}");
                err(DataErrorCode::Internal, "provider could not read the pack".into())
            }
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// Provider side: keeps a client's new head unless it is older than the one held.
    async fn on_put_head(&self, peer: PeerId, signed: crate::identity::Signed) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        if !self.live_contracts(Role::Provider).iter().any(|(_, c)| c.peer_id() == Some(peer)) {
            return err(DataErrorCode::NoContract, format!("no live contract with {peer}"));
        }
        let (seq, lock_until) = match crate::head::envelope_info(&signed, &peer) {
            Ok(v) => v,
            Err(e) => return err(DataErrorCode::BadPack, e.to_string()),
        };
        let t = now();
        if lock_until > t + crate::protocol::MAX_LOCK_SECS {
            return err(DataErrorCode::Refused, "the head's lock is too long".into());
        }
        let bytes = crate::protocol::to_cbor(&signed);
        if bytes.len() > crate::protocol::MAX_HEAD + 4096 {
            return err(DataErrorCode::BadPack, "head too large".into());
        }
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || store.put_head(&peer, &bytes, seq, lock_until, t)).await;
        match r {
            Ok(Ok(())) => DataResponse::Stored,
            Ok(Err(e @ crate::provider::HeadRefusal::Older { .. })) => err(DataErrorCode::Refused, e.to_string()),
            Ok(Err(e @ crate::provider::HeadRefusal::TooMany(_))) => err(DataErrorCode::NoRoom, e.to_string()),
            Ok(Err(e)) => err(DataErrorCode::Internal, e.to_string()),
            Err(e) => err(DataErrorCode::Internal, e.to_string()),
        }
    }

    /// Provider side: a client lost our claim blocks (a recovered disk): place them again,
    /// at most once per [`crate::protocol::CLAIM_RESET_SECS`].
    async fn on_claims_lost(&self, peer: PeerId) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        if !self.live_contracts(Role::Provider).iter().any(|(_, c)| c.peer_id() == Some(peer)) {
            return err(DataErrorCode::NoContract, format!("no live contract with {peer}"));
        }
        let key = peer.to_bytes();
        let t = now();
        // Checked and recorded in one store command, so two requests cannot both pass.
        let reset = self.db(move |s| {
            let mut rec = s.audit(&key)?;
            if let Some(last) = rec.claims_reset
                && t.saturating_sub(last) < crate::protocol::CLAIM_RESET_SECS
            {
                return Ok(Some(last));
            }
            rec.claims_reset = Some(t);
            s.put_audit(&key, &rec)?;
            s.set_claim_placed(&key, 0)?;
            Ok(None)
        });
        match reset.await {
            Ok(Some(last)) => {
                return err(DataErrorCode::Refused, format!("claims were reset at {last}; at most once a week"));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("cannot record the loss of claims of {peer}: {e}");
                return err(DataErrorCode::Internal, "cannot record the reset".into());
            }
        }
        tracing::warn!("{peer} lost the claims we placed; placing them again");
        DataResponse::Released
    }

    /// Addresses recorded for a peer in our live contracts with it, either role.
    pub(super) fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.state.contract_addrs(&peer.to_bytes(), now()).iter().filter_map(|a| a.parse().ok()).collect()
    }
}

/// Places packs on `copies` distinct holders among our live contracts.
pub(super) struct NetSink {
    pub(super) inner: Arc<Inner>,
    pub(super) copies: usize,
    /// Bytes of packs in flight per contract, not yet in the state's `used`.
    pub(super) pending: Mutex<HashMap<ContractId, u64>>,
    /// Providers that refused a pack for lack of room (a full disk): skipped from then on.
    pub(super) refused: Mutex<HashSet<PeerId>>,
    /// One search for more providers at a time.
    pub(super) more: tokio::sync::Mutex<()>,
    /// Erasure-code packs with this scheme instead of copying them.
    pub(super) erasure: Option<Scheme>,
}

impl NetSink {
    /// A sink placing each pack on `copies` holders.
    pub(super) fn new(inner: Arc<Inner>, copies: usize) -> Self {
        NetSink {
            inner,
            copies,
            pending: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            more: tokio::sync::Mutex::new(()),
            erasure: None,
        }
    }
}

impl NetSink {
    /// Stores `pack` at `peer` under `contract`, again after a pause while the provider is
    /// busy or every stream to it is (§5.3).
    async fn store_at(&self, peer: PeerId, contract: ContractId, pack: &SealedPack) -> Result<(), HolderError> {
        let addrs = self.inner.addrs_of(&peer);
        let attempt = || async {
            let req = DataRequest::Store { contract, pack: pack.id, data: pack.bytes.clone() };
            self.stored(peer, self.inner.net.data_request(peer, addrs.clone(), req).await)
        };
        attempt.retry(busy_backoff()).when(|e| matches!(e, HolderError::Busy { .. })).await
    }

    /// What one answer to a `Store` at `peer` means: done, busy (try again), or a
    /// failure; a provider out of room or reachable only through a relay is skipped for
    /// the rest of the run.
    fn stored(&self, peer: PeerId, answer: Result<DataResponse, NetError>) -> Result<(), HolderError> {
        match answer {
            Ok(DataResponse::Stored) => Ok(()),
            Ok(DataResponse::Error { code: DataErrorCode::Busy, .. }) | Err(NetError::Saturated(_)) => {
                Err(HolderError::Busy { peer })
            }
            Ok(DataResponse::Error { code, message }) => {
                if code == DataErrorCode::NoRoom
                    && let Ok(mut r) = self.refused.lock()
                {
                    r.insert(peer);
                }
                Err(HolderError::Refused { peer, code, message })
            }
            Ok(_) => Err(HolderError::Unexpected { peer, request: "store" }),
            Err(e) => {
                if matches!(e, NetError::NotDirect { .. })
                    && let Ok(mut r) = self.refused.lock()
                {
                    // Packs never go through a relay: skip it for the rest of this run.
                    r.insert(peer);
                }
                Err(describe(&peer, &e))
            }
        }
    }

    /// Picks up to `need` contracts with room for `size` bytes, one per provider not in
    /// `tried`, and reserves the bytes, all under one lock. The providers holding the
    /// fewest of our bytes come first (so packs spread evenly over every holder, however
    /// large each grant), then the contracts with the most room.
    fn pick(&self, size: u64, need: usize, tried: &HashSet<PeerId>) -> Vec<(PeerId, ContractId)> {
        let refused = self.refused.lock().map(|r| r.clone()).unwrap_or_default();
        let Ok(mut pending) = self.pending.lock() else { return vec![] };
        let live = self.inner.live_contracts(Role::Client);
        let mut held: HashMap<PeerId, u64> = HashMap::new();
        for (id, c) in &live {
            if let Some(p) = c.peer_id() {
                *held.entry(p).or_default() += c.used + pending.get(id).copied().unwrap_or(0);
            }
        }
        let mut cands: Vec<(u64, std::cmp::Reverse<u64>, PeerId, ContractId)> = live
            .into_iter()
            .filter_map(|(id, c)| {
                let free = c.bytes.saturating_sub(c.used + pending.get(&id).copied().unwrap_or(0));
                let peer = c.peer_id()?;
                let allowed = self.inner.may_contract_with(&peer);
                (free >= size && allowed && !tried.contains(&peer) && !refused.contains(&peer)).then_some((
                    held.get(&peer).copied().unwrap_or(0),
                    std::cmp::Reverse(free),
                    peer,
                    id,
                ))
            })
            .collect();
        cands.sort_by_key(|c| (c.0, c.1));
        let mut seen = HashSet::new();
        cands.retain(|(_, _, p, _)| seen.insert(*p));
        cands.truncate(need);
        for (_, _, _, c) in &cands {
            *pending.entry(*c).or_default() += size;
        }
        cands.into_iter().map(|(_, _, p, c)| (p, c)).collect()
    }

    fn unreserve(&self, contract: ContractId, size: u64) {
        if let Ok(mut pm) = self.pending.lock() {
            let e = pm.entry(contract).or_default();
            *e = e.saturating_sub(size);
        }
    }
}

impl NetSink {
    /// Stores `pack` on up to `need` new holders, none of them in `exclude`, trying the
    /// providers holding the fewest of our bytes first and the next ones on failure.
    /// Returns the holders that acknowledged it and the errors of those that did not.
    pub(super) async fn place_on(
        &self,
        pack: &SealedPack,
        need: usize,
        exclude: HashSet<PeerId>,
    ) -> (Vec<Holder>, Vec<HolderError>) {
        let size = pack.bytes.len() as u64;
        let mut holders: Vec<Holder> = Vec::new();
        let mut tried = exclude;
        let mut errors = Vec::new();
        while holders.len() < need {
            let batch = self.pick(size, need - holders.len(), &tried);
            if batch.is_empty() {
                break;
            }
            tried.extend(batch.iter().map(|(p, _)| *p));
            let results = futures::future::join_all(batch.iter().map(|(p, c)| self.store_at(*p, *c, pack))).await;
            for ((p, c), r) in batch.into_iter().zip(results) {
                self.unreserve(c, size);
                match r {
                    Ok(()) => {
                        if let Err(e) = self.inner.db(move |s| s.add_contract_use(&c, size)).await {
                            tracing::error!("cannot record contract use: {e}");
                        }
                        holders.push(Holder { peer: p.to_bytes(), contract: c });
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        (holders, errors)
    }
}

impl NetSink {
    /// [`NetSink::place_on`], and when that falls short because providers failed or
    /// refused (a full disk), proposes contracts until `ready` providers other than the
    /// refusing ones are ready, and tries the new ones. Returns the holders, what the
    /// failed ones answered, and why no more providers were found if that failed.
    async fn place_or_find(
        &self,
        pack: &SealedPack,
        need: usize,
        exclude: HashSet<PeerId>,
        ready: usize,
    ) -> (Vec<Holder>, Vec<HolderError>, Option<String>) {
        let (mut holders, mut errors) = self.place_on(pack, need, exclude.clone()).await;
        let mut extra = None;
        if holders.len() < need {
            let _one = self.more.lock().await;
            let avoid = self.refused.lock().map(|r| r.clone()).unwrap_or_default();
            match self.inner.ensure_providers_avoiding(ready, &avoid).await {
                Ok(()) => {
                    let mut have = exclude;
                    have.extend(holders.iter().filter_map(|h| PeerId::from_bytes(&h.peer).ok()));
                    let (more, errs) = self.place_on(pack, need - holders.len(), have).await;
                    holders.extend(more);
                    errors.extend(errs);
                }
                Err(e) => extra = Some(e.to_string()),
            }
        }
        (holders, errors, extra)
    }

    /// Erasure-codes a pack and places each shard on its own provider.
    async fn place_shards(&self, pack: &SealedPack, s: Scheme) -> Result<PackRecord, TransferError> {
        let bytes = pack.bytes.clone();
        let shards = tokio::task::spawn_blocking(move || {
            s.split(&bytes).map(|v| {
                v.into_iter()
                    .map(|b| SealedPack { id: merkle::root(&b), bytes: b.into(), entries: vec![] })
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(|e| TransferError::Local(format!("erasure coding stopped: {e}")))?
        .map_err(TransferError::Erasure)?;
        let mut used: HashSet<PeerId> = HashSet::new();
        let mut out = Vec::with_capacity(shards.len());
        for (i, sh) in shards.iter().enumerate() {
            let (mut h, errors, extra) = self.place_or_find(sh, 1, used.clone(), s.n()).await;
            let Some(holder) = h.pop() else {
                return Err(TransferError::ShardUnplaced { pack: pack.id.short(), index: i, errors, extra });
            };
            used.extend(PeerId::from_bytes(&holder.peer).ok());
            out.push(Shard { id: sh.id, size: sh.bytes.len() as u64, holder: Some(holder) });
        }
        Ok(PackRecord {
            size: pack.bytes.len() as u64,
            placement: Placement::Erasure { scheme: s, shards: out },
            garbage: false,
            lock_until: 0,
        })
    }
}

#[async_trait::async_trait]
impl PackSink for NetSink {
    async fn place(&self, pack: Arc<SealedPack>) -> Result<PackRecord, TransferError> {
        let size = pack.bytes.len() as u64;
        if pack.bytes.len() > MAX_PACK_SIZE {
            return Err(TransferError::TooLarge { pack: pack.id.short(), size, limit: MAX_PACK_SIZE });
        }
        if let Some(s) = self.erasure {
            return self.place_shards(&pack, s).await;
        }
        let (holders, errors, extra) = self.place_or_find(&pack, self.copies, HashSet::new(), self.copies).await;
        if holders.len() < self.copies {
            let (pack, reached, wanted) = (pack.id.short(), holders.len(), self.copies);
            return Err(TransferError::TooFewHolders { pack, reached, wanted, errors, extra });
        }
        Ok(PackRecord::copies(size, holders, self.copies as u32))
    }
}

/// Fetches packs from their holders, verifying each against its id (but for
/// [`PackSource::fetch_unchecked`]), failing over.
pub(super) struct NetSource {
    inner: Arc<Inner>,
    /// Fetches in flight per holder, shared by every fetch through this source.
    slots: HolderSlots<PeerId>,
}

impl NetSource {
    /// A source that fetches through `inner`'s network, [`FETCHES_PER_HOLDER`] at a time
    /// from each holder.
    pub(super) fn new(inner: Arc<Inner>) -> NetSource {
        NetSource { inner, slots: HolderSlots::new(FETCHES_PER_HOLDER) }
    }

    /// Object `id` (a pack or a shard) from `peer`, checked against its id when `check`
    /// (else as the holder sent it: [`PackSource::fetch_unchecked`]).
    async fn fetch_from(&self, peer: PeerId, id: PackId, check: bool) -> Result<bytes::Bytes, HolderError> {
        let addrs = self.inner.addrs_of(&peer);
        // A busy holder is asked again after a pause, like a store (§5.3).
        let attempt = || async {
            match self.inner.net.data_request(peer, addrs.clone(), DataRequest::Fetch { pack: id }).await {
                Ok(DataResponse::Error { code: DataErrorCode::Busy, message }) => Err(message),
                other => Ok(other),
            }
        };
        let answer = match attempt.retry(busy_backoff()).await {
            Ok(answer) => answer,
            Err(message) => Ok(DataResponse::Error { code: DataErrorCode::Busy, message }),
        };
        match answer {
            Ok(DataResponse::Pack(b)) if !check => Ok(b),
            Ok(DataResponse::Pack(b)) => {
                let checked = tokio::task::spawn_blocking(move || (merkle::root(&b) == id).then_some(b)).await;
                match checked {
                    Ok(Some(b)) => Ok(b),
                    _ => {
                        tracing::warn!("holder {peer} returned a corrupt copy of {}", id.short());
                        Err(HolderError::Corrupt { peer })
                    }
                }
            }
            Ok(DataResponse::Error { code, message }) => Err(HolderError::Refused { peer, code, message }),
            Ok(_) => Err(HolderError::Unexpected { peer, request: "fetch" }),
            Err(e) => Err(describe(&peer, &e)),
        }
    }
}

#[async_trait::async_trait]
impl PackSource for NetSource {
    async fn fetch(&self, pack: PackId) -> Result<bytes::Bytes, TransferError> {
        let rec = self.record(pack).await?;
        self.fetch_placed(pack, rec).await
    }

    /// A whole copy as its holder sent it; a pack placed as shards is joined and checked
    /// as by [`Self::fetch`] (a wrong shard would spoil the decoding).
    async fn fetch_unchecked(&self, pack: PackId) -> Result<bytes::Bytes, TransferError> {
        match self.record(pack).await? {
            PackRecord { placement: Placement::Copies { holders, .. }, .. } => {
                self.fetch_copy(pack, &holders, false).await
            }
            rec => self.fetch_placed(pack, rec).await,
        }
    }

    /// Two fetches per provider we hold contracts with, so every holder serves at once.
    fn concurrency(&self) -> usize {
        let providers: HashSet<Vec<u8>> =
            self.inner.live_contracts(Role::Client).into_iter().map(|(_, c)| c.peer).collect();
        (providers.len() * FETCHES_PER_HOLDER).max(crate::restore::FETCH_CONCURRENCY)
    }
}

impl NetSource {
    /// Where `pack` is placed, from the state.
    async fn record(&self, pack: PackId) -> Result<PackRecord, TransferError> {
        self.inner
            .db(move |s| s.pack(&pack))
            .await
            .map_err(|e| TransferError::Local(e.to_string()))?
            .ok_or_else(|| TransferError::NoHolder { pack: pack.short() })
    }

    /// Pack `pack` from the least busy of `holders` (whole copies), one connected now first
    /// and one that failed in this restore last ([`HolderSlots`]); on failure from the
    /// next, until none is left; a holder not connected now that has not answered within
    /// [`HEDGE_AFTER`] is hedged with the next ([`fetch_hedged`]). Each copy is checked
    /// against the pack id when `check`.
    async fn fetch_copy(&self, pack: PackId, holders: &[Holder], check: bool) -> Result<bytes::Bytes, TransferError> {
        let left: Vec<PeerId> = holders.iter().filter_map(|h| PeerId::from_bytes(&h.peer).ok()).collect();
        let ready: HashSet<PeerId> = self.inner.net.sendable(left.clone()).await.into_iter().collect();
        let fetch = |peer| self.fetch_from(peer, pack, check);
        match fetch_hedged(&self.slots, left, |p| ready.contains(p), HEDGE_AFTER, fetch).await {
            Ok(b) => Ok(b),
            Err(errors) if errors.is_empty() => Err(TransferError::NoHolder { pack: pack.short() }),
            Err(errors) => Err(TransferError::AllHoldersFailed { errors }),
        }
    }

    /// Pack `pack` placed as `rec` says: from any holder of a copy, or from any K shards,
    /// checked against its id.
    pub(super) async fn fetch_placed(&self, pack: PackId, rec: PackRecord) -> Result<bytes::Bytes, TransferError> {
        let (s, shards) = match rec.placement {
            Placement::Erasure { scheme, shards } => (scheme, shards),
            Placement::Copies { holders, .. } => return self.fetch_copy(pack, &holders, true).await,
        };
        // Any K shards at once, each checked against its id, then the pack against its
        // own; shards at holders connected now first, at holders that failed in this
        // restore last, and among equals data shards before parity shards.
        let mut order: Vec<(usize, PeerId)> = shards
            .iter()
            .enumerate()
            .filter_map(|(i, sh)| Some((i, PeerId::from_bytes(&sh.holder.as_ref()?.peer).ok()?)))
            .collect();
        let ready: HashSet<PeerId> =
            self.inner.net.sendable(order.iter().map(|(_, p)| *p).collect()).await.into_iter().collect();
        order.sort_by_key(|(i, p)| (self.slots.has_failed(p), !ready.contains(p), *i));
        let fetch = |i: usize, peer: PeerId| {
            let id = shards[i].id;
            async move { self.fetch_from(peer, id, true).await.map_err(|e| (i, e)) }
        };
        let k = usize::from(s.k);
        let (fetched, shard_errors) =
            fetch_some(&self.slots, order, k, |p| ready.contains(p), HEDGE_AFTER, fetch).await;
        if fetched.len() < k {
            return Err(TransferError::TooFewShards { have: fetched.len(), k: s.k, errors: shard_errors });
        }
        let mut got: Vec<Option<Vec<u8>>> = vec![None; s.n()];
        for (i, b) in fetched {
            got[i] = Some(b.to_vec()); // decoding copies the shards anyway
        }
        let len = rec.size as usize;
        tokio::task::spawn_blocking(move || {
            let b = s.join(len, &got)?;
            if merkle::root(&b) == pack { Ok(b.into()) } else { Err(TransferError::BadDecode) }
        })
        .await
        .map_err(|e| TransferError::Local(format!("erasure decoding stopped: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_store_waits_for_a_contract_being_recorded_and_no_longer() {
        let woken = Arc::new(tokio::sync::Notify::new());
        let limit = Duration::from_secs(20);
        // Nothing in flight: the answer comes at once.
        let t0 = tokio::time::Instant::now();
        assert_eq!(await_record(|| None::<u32>, || false, &woken, limit).await, None);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // Recorded while the store waits: found when the reservation is released.
        let recorded = Arc::new(AtomicBool::new(false));
        let lookups = Arc::new(AtomicU32::new(0));
        let (r, w) = (recorded.clone(), woken.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            r.store(true, Ordering::SeqCst);
            w.notify_waiters();
        });
        let lookup = || {
            lookups.fetch_add(1, Ordering::SeqCst);
            recorded.load(Ordering::SeqCst).then_some(7u32)
        };
        let pending = || !recorded.load(Ordering::SeqCst);
        assert_eq!(await_record(lookup, pending, &woken, limit).await, Some(7));
        assert_eq!(t0.elapsed(), Duration::from_secs(2), "answered when recorded, not by polling");
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        // An acceptance never answered: NoContract after the limit.
        let t1 = tokio::time::Instant::now();
        assert_eq!(await_record(|| None::<u32>, || true, &woken, limit).await, None);
        assert_eq!(t1.elapsed(), limit);
    }
}
