//! What the control socket asks of the daemon: status, offer, snapshots, backup, restore
//! (src/control.rs defines the frames). Long operations send progress frames through a
//! small queue drained by a writer task, so a client that stops reading never stalls them.

use super::Inner;
use super::repair::Liveness;
use super::transfer::{NetSink, NetSource};
use crate::backup::{self, BackupOptions, Counters, PackSink};
use crate::config::Home;
use crate::control::{
    self, AuditInfo, BackupSummary, ContractInfo, DurabilityInfo, ErrorKind, Failure, Progress, Reply, Request,
    SnapshotHealth, SnapshotInfo, StatusReport,
};
use crate::id::PackId;
use crate::protocol::now;
use crate::restore::{self, PackSource};
use crate::state::{Role, State, StateError};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Why an offer of storage is refused ([`check_offer`]).
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// The free space of the home's disk could not be read.
    #[error("{path}: {source}")]
    Disk {
        /// The home directory.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The offer is larger than the disk's free space plus what others already store here.
    #[error("cannot offer {}: the disk holding {path} has only {} free", bytesize::ByteSize(*offer).display().si(), bytesize::ByteSize(*room).display().si())]
    TooLarge {
        /// Bytes offered.
        offer: u64,
        /// The home directory.
        path: String,
        /// Free bytes plus the bytes others store here.
        room: u64,
    },
}

impl OfferError {
    /// The control protocol's kind: the disk's failure is `Local`, a too large offer `Refused`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OfferError::Disk { .. } => ErrorKind::Local,
            OfferError::TooLarge { .. } => ErrorKind::Refused,
        }
    }
}

/// Refuses an offer of `bytes` larger than the free disk of the home plus `stored`, the
/// bytes others already store here.
pub fn check_offer(home: &Home, bytes: u64, stored: u64) -> Result<(), OfferError> {
    let path = || home.dir.display().to_string();
    let free = crate::provider::free_space(&home.dir).map_err(|source| OfferError::Disk { path: path(), source })?;
    if bytes > free + stored {
        return Err(OfferError::TooLarge { offer: bytes, path: path(), room: free + stored });
    }
    Ok(())
}

/// [`crate::contracts::offer_notes`] for a new offer, from the live contracts.
pub fn offer_notes(
    contracts: &[(crate::id::ContractId, crate::state::ContractRecord)],
    offered: u64,
    ratio: f64,
) -> Vec<String> {
    let t = now();
    let sum = |r: Role| contracts.iter().filter(|(_, c)| c.role == r && c.is_live(t)).map(|(_, c)| c.bytes).sum();
    crate::contracts::offer_notes(offered, sum(Role::Provider), sum(Role::Client), ratio)
}

/// Copy health of every snapshot (protocol.md §5.5), read in one pass on the store
/// thread: the trees from the local cache, each pack's record from the index. Also the
/// bytes held at others (all copies) of packs no snapshot and no index pack needs: left
/// by a failed or interrupted backup, reused by the next one or freed by `prune`; `None`
/// when some snapshot's trees are not cached here (the figure would be too high).
fn health_of(state: &State, lv: &Liveness) -> Result<(Vec<SnapshotHealth>, Option<u64>), StateError> {
    let mut out = Vec::new();
    let mut referenced: HashSet<PackId> = HashSet::new();
    let mut complete = true;
    for (sid, snap) in state.snapshots()? {
        let mut h = SnapshotHealth { id: sid.to_string(), packs: 0, full: 0, reduced: 0, zero: 0, note: String::new() };
        match restore::cached_snapshot_packs(state, &sid, &snap) {
            Ok((packs, missing)) => {
                if missing > 0 {
                    h.note = format!("{missing} blobs are in no known pack");
                    h.zero += missing;
                }
                for p in packs {
                    h.packs += 1;
                    referenced.insert(p);
                    let Some(rec) = state.pack(&p)? else {
                        h.zero += 1;
                        continue;
                    };
                    match lv.count(&rec) {
                        0 => h.zero += 1,
                        n if n >= rec.target() => h.full += 1,
                        n if n < rec.needed() => h.zero += 1,
                        _ => h.reduced += 1,
                    }
                }
            }
            Err(restore::TreeError::State(e)) => return Err(e),
            Err(e) => {
                h.note = e.to_string();
                complete = false;
            }
        }
        out.push(h);
    }
    // An index pack is needed while it lists a needed pack, as prune keeps it (§3.8).
    for ip in state.index_packs()? {
        if ip.covers.iter().any(|p| referenced.contains(p)) {
            referenced.insert(ip.pack);
        }
    }
    let unreferenced = complete.then(|| {
        state
            .packs()
            .map(|all| {
                all.iter()
                    .filter(|(id, r)| !r.garbage && !referenced.contains(id))
                    .flat_map(|(id, r)| r.objects(id))
                    .map(|(_, size, _)| size)
                    .sum()
            })
            .unwrap_or(0)
    });
    Ok((out, unreferenced))
}

/// Each redundancy scheme in use among the packs not marked garbage, with its packs, its
/// overhead and its monthly loss probability without repair.
fn durability_of(packs: &[(crate::id::PackId, crate::state::PackRecord)]) -> Vec<DurabilityInfo> {
    let mut schemes: std::collections::BTreeMap<String, (u64, f64, f64)> = Default::default();
    for (_, r) in packs.iter().filter(|(_, r)| !r.garbage) {
        let (name, n, f) = match r.scheme() {
            Some(s) => (format!("erasure {s}"), s.n() as u32, u32::from(s.m)),
            None => (format!("{} copies", r.target()), r.target() as u32, (r.target() as u32).saturating_sub(1)),
        };
        let overhead = f64::from(n) / (n - f) as f64;
        let loss = crate::durability::loss_probability(n, f, crate::durability::MONTHLY_CHURN);
        schemes.entry(name).or_insert((0, overhead, loss)).0 += 1;
    }
    schemes
        .into_iter()
        .map(|(scheme, (packs, overhead, monthly_loss))| DurabilityInfo { scheme, packs, overhead, monthly_loss })
        .collect()
}

/// A backup to run, as `peer backup` or a schedule gives it.
pub(super) struct BackupJob {
    /// Absolute paths.
    pub paths: Vec<PathBuf>,
    /// Distinct holders per pack (ignored with `erasure`).
    pub copies: u32,
    /// Exclude patterns (gitignore syntax).
    pub exclude: Vec<String>,
    /// Erasure scheme instead of copies.
    pub erasure: Option<crate::repo::erasure::Scheme>,
    /// Retention lock, seconds (0: none, protocol.md §5.9).
    pub lock_secs: u64,
}

/// A failed reply.
pub(super) fn fail(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Reply::Error(Failure::new(kind, message))
}

/// Why commands that change the repository wait on a recovering home.
pub(super) const RECOVERING: &str =
    "this peer is still looking for its head in the network (peer init --recover); see 'peer status'";

impl Inner {
    /// Copy health of every snapshot, from the locally cached trees only.
    async fn snapshot_health(&self) -> Result<(Vec<SnapshotHealth>, Option<u64>), StateError> {
        let lv = self.liveness().await;
        self.db(move |s| health_of(s, &lv)).await
    }

    /// How `peer status` and `peer contracts` show contract `id`: as provider, the bytes
    /// used are those of the client's packs in our store.
    fn contract_info(&self, id: &crate::id::ContractId, c: &crate::state::ContractRecord) -> ContractInfo {
        ContractInfo {
            id: id.to_string(),
            role: match c.role {
                Role::Client => "client".into(),
                Role::Provider => "provider".into(),
            },
            peer: c.peer_id().map(|p| p.to_string()).unwrap_or_default(),
            bytes: c.bytes,
            used: match c.role {
                Role::Provider => c.peer_id().map(|p| self.store.used(&p)).unwrap_or(0),
                Role::Client => c.used,
            },
            expires: c.expires,
            ended: c.lifecycle.ended_at(),
            end_reason: c.lifecycle.end_reason().to_string(),
        }
    }

    /// What `peer status` shows from the local state alone. Errors: the state failed.
    pub(super) async fn status(&self) -> Result<StatusReport, StateError> {
        let recovering = self.home.recover_marker().exists();
        let (snapshots, unreferenced) = self.snapshot_health().await?;
        let contracts = self.state.contracts();
        let serving: Vec<Vec<u8>> = {
            let t = now();
            let mut v: Vec<Vec<u8>> = contracts
                .iter()
                .filter(|(_, c)| c.role == Role::Provider && c.is_live(t))
                .map(|(_, c)| c.peer.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let local = self.db(move |s| {
            let claims: u64 = serving.iter().map(|p| s.claim_placed(p).map(u64::from)).sum::<Result<u64, _>>()?;
            Ok((s.offered()?, s.audits()?, s.index_packs()?.len() as u64, durability_of(&s.packs()?), claims))
        });
        let (offered, audits, index_packs, durability, claims_placed) = local.await?;
        let head = self.head_report().await;
        let t = now();
        let live = |r: Role| contracts.iter().filter(move |(_, c)| c.role == r && c.is_live(t));
        Ok(StatusReport {
            peer_id: self.me().to_string(),
            listen: vec![],
            connected: vec![],
            reachability: "unknown".into(),
            external_addrs: vec![],
            relays: vec![],
            connections: vec![],
            estimated_peers: 0,
            proposal_shard: String::new(),
            offered,
            granted: live(Role::Provider).map(|(_, c)| c.bytes).sum(),
            used_by_others: self.store.used_total(),
            held_at_others: live(Role::Client).map(|(_, c)| c.used).sum(),
            claims_held: self.claims.held_total(),
            claims_placed: claims_placed * crate::claims::CLAIM_BLOCK,
            contracts: contracts.iter().map(|(id, c)| self.contract_info(id, c)).collect(),
            audits: audits
                .into_iter()
                .map(|(peer, a)| AuditInfo {
                    peer: libp2p::PeerId::from_bytes(&peer).map(|p| p.to_string()).unwrap_or_default(),
                    passes: a.passes,
                    failures: a.failures,
                    score: a.score(),
                    standing: if a.good { "good".into() } else { "failed".into() },
                    last_error: a.last_error,
                    last_pass: a.last_pass,
                })
                .collect(),
            snapshots,
            recovering,
            durability,
            schedules: self.schedule_list(),
            unreferenced_at_others: unreferenced,
            test_restore: self.last_drill(),
            defaulters: self.defaulter_list().await,
            activity: self.activity.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            index_packs,
            head,
        })
    }

    /// The contract whose id starts with `prefix` (hex); none is `NotFound`, several are
    /// `Usage` (more digits needed).
    fn find_contract(&self, prefix: &str) -> Result<crate::id::ContractId, Failure> {
        let p = prefix.to_ascii_lowercase();
        let all = self.state.contracts();
        let m: Vec<_> = all.into_iter().filter(|(id, _)| !p.is_empty() && id.to_string().starts_with(&p)).collect();
        match m.as_slice() {
            [(id, _)] => Ok(*id),
            [] => {
                Err(Failure::new(ErrorKind::NotFound, format!("no contract matches '{prefix}'; see 'peer contracts'")))
            }
            _ => Err(Failure::new(
                ErrorKind::Usage,
                format!("'{prefix}' matches {} contracts; give more digits", m.len()),
            )),
        }
    }

    /// [`Inner::status`] with what the network task knows: addresses, connections,
    /// reachability and relays.
    async fn full_status(&self) -> Result<StatusReport, StateError> {
        let mut st = self.status().await?;
        if let Ok(ns) = self.net.status().await {
            let me = libp2p::multiaddr::Protocol::P2p(self.me());
            st.listen = ns.listen.iter().map(|a| a.clone().with(me.clone()).to_string()).collect();
            st.connected = ns.connected.iter().map(|p| p.to_string()).collect();
            st.reachability = ns.reachability.to_string();
            st.external_addrs = ns.external.iter().map(|a| a.to_string()).collect();
            st.relays = ns.relays.iter().map(|p| p.to_string()).collect();
            st.estimated_peers = ns.estimated_peers;
            st.proposal_shard = ns.shard.to_string();
            st.connections = ns
                .connections
                .iter()
                .map(|c| crate::control::ConnectionInfo {
                    peer: c.peer.to_string(),
                    addr: c.addr.to_string(),
                    relayed: c.relayed,
                    transport: c.transport.to_string(),
                })
                .collect();
        }
        Ok(st)
    }

    pub(super) async fn serve_control(self: Arc<Self>, s: UnixStream) {
        let (mut rd, mut wr) = control::framed(s);
        let req = match tokio::time::timeout(Duration::from_secs(10), control::read_frame::<Request>(&mut rd)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                let _ =
                    control::write_frame(&mut wr, &fail(ErrorKind::Usage, format!("bad control request: {e}"))).await;
                return;
            }
            Err(_) => return,
        };
        let (tx, mut rx) = mpsc::channel::<Reply>(4);
        let writer = tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                if control::write_frame(&mut wr, &r).await.is_err() {
                    // The client went away: drain so senders never block, write nothing more.
                    while rx.recv().await.is_some() {}
                    return;
                }
            }
        });
        let reply = match self.life.or_abandoned(self.clone().handle(req, &tx)).await {
            Some(reply) => reply,
            None => fail(
                ErrorKind::Busy,
                format!(
                    "the daemon is shutting down and stopped this command after {} s; run it again once the daemon is back \
                     (what a backup already uploaded is kept)",
                    super::SHUTDOWN_GRACE.as_secs()
                ),
            ),
        };
        let _ = tx.send(reply).await;
        drop(tx);
        let _ = writer.await;
    }

    /// Answers one control request (from the control socket or the dashboard); progress
    /// frames go to `tx`.
    pub(super) async fn handle(self: Arc<Self>, req: Request, tx: &mpsc::Sender<Reply>) -> Reply {
        match req {
            Request::Status => match self.full_status().await {
                Ok(st) => Reply::Status(Box::new(st)),
                Err(e) => Reply::Error(e.into()),
            },
            Request::Offer(b) => match check_offer(&self.home, b, self.store.used_total()) {
                Ok(()) => match self.db(move |s| s.set_offered(b)).await {
                    Ok(()) => Reply::Offered(offer_notes(&self.state.contracts(), b, self.config.contracts.ratio)),
                    Err(e) => Reply::Error(e.into()),
                },
                Err(e) => fail(e.kind(), e.to_string()),
            },
            Request::Snapshots => match self.db(|s| s.snapshots()).await {
                Ok(v) => Reply::Snapshots(v.iter().map(|(id, s)| SnapshotInfo::new(id, s)).collect()),
                Err(e) => Reply::Error(e.into()),
            },
            Request::Forget { policy, dry_run } => self.forget(&policy, dry_run).await,
            Request::Prune { dry_run } => self.clone().prune(dry_run).await,
            Request::Check { read_data } => self.clone().check(read_data).await,
            Request::Cancel { contract, reason } => match self.find_contract(&contract) {
                Ok(id) => match self.cancel(id, &reason).await {
                    Ok(()) => Reply::Ok,
                    Err(f) => Reply::Error(f),
                },
                Err(f) => Reply::Error(f),
            },
            Request::Backup { paths, copies, exclude, erasure, limits, lock_secs } => {
                let _limits = self.net.limit_while(limits.upload_kib, limits.download_kib);
                self.clone().backup(tx, BackupJob { paths, copies, exclude, erasure, lock_secs }).await
            }
            Request::Schedules => Reply::Schedules(self.schedule_list()),
            Request::Ls { snapshot, path } => {
                let source = NetSource::new(self.clone());
                match restore::ls(&self.id, &self.state, &source, snapshot, &path).await {
                    Ok((sid, entries)) => Reply::Ls { snapshot: sid.to_string(), entries },
                    Err(e) => Reply::Error(e.into()),
                }
            }
            Request::TestRestore => {
                if self.home.recover_marker().exists() {
                    return fail(ErrorKind::Busy, RECOVERING);
                }
                Reply::TestRestore(self.clone().drill().await)
            }
            Request::Invite => self.invite().await,
            Request::FriendAdd { code, name } => self.friend_add(code, name).await,
            Request::FriendRemove(which) => self.friend_remove(which).await,
            Request::Friends => self.friend_list().await,
            Request::Dashboard => match self.dashboard_url.get() {
                Some(url) => Reply::Dashboard(url.clone()),
                None => fail(
                    ErrorKind::Unavailable,
                    "the dashboard is off ([dashboard] enabled = false in config.toml) or could not \
                     bind its port; see the daemon's log",
                ),
            },
            Request::ScheduleAdd(spec) => self.schedule_add(spec).await,
            Request::ScheduleRemove(name) => self.schedule_remove(name).await,
            Request::ScheduleRun(name) => self.clone().schedule_run_now(tx, &name).await,
            Request::Restore { snapshot, target, overwrite, include, limits, head } => {
                let _limits = self.net.limit_while(limits.upload_kib, limits.download_kib);
                let snapshot = match head {
                    Some(seq) => match self.adopt_head(seq).await {
                        // `latest` means the newest snapshot of that head.
                        Ok(newest) if snapshot.as_deref().is_none_or(|s| s == "latest") => Some(newest),
                        Ok(_) => snapshot,
                        Err(f) => return Reply::Error(f),
                    },
                    None => snapshot,
                };
                self.clone().restore(tx, restore::RestoreWhat { snapshot, target, overwrite, include }).await
            }
            Request::Heads => Reply::Heads(self.heads_list().await),
        }
    }

    /// `peer backup`: refused while another backup, restore, forget or prune runs; the
    /// `after_backup` hook runs on its outcome.
    async fn backup(self: Arc<Self>, tx: &mpsc::Sender<Reply>, job: BackupJob) -> Reply {
        let reply = match self.busy.try_lock() {
            Ok(_guard) => self.clone().backup_locked(tx, job).await,
            Err(_) => fail(ErrorKind::Busy, "another backup or restore is running on this daemon"),
        };
        self.after_backup(None, &reply);
        reply
    }

    /// Runs a backup for a caller that holds the busy lock, and publishes the head.
    pub(super) async fn backup_locked(self: Arc<Self>, tx: &mpsc::Sender<Reply>, job: BackupJob) -> Reply {
        let BackupJob { paths, copies, exclude, erasure, lock_secs } = job;
        if copies == 0 {
            return fail(ErrorKind::Usage, "--copies must be at least 1");
        }
        if self.home.recover_marker().exists() {
            return fail(ErrorKind::Busy, RECOVERING);
        }
        if let Err(e) = backup::check_paths(&paths).and_then(|_| backup::exclude_matcher(&exclude)) {
            return Reply::Error(e.into());
        }
        match self.db(|s| s.offered()).await {
            Ok(0) => {
                return fail(
                    ErrorKind::Refused,
                    "this peer offers no storage, so no peer will store for it (give to get); \
                     run 'peer offer-storage SIZE' first",
                );
            }
            Ok(_) => {}
            Err(e) => return Reply::Error(e.into()),
        }
        let _ = tx.try_send(Reply::Progress(Progress { phase: "contracts".into(), done: 0, total: 0 }));
        let providers = erasure.map(|s| s.n()).unwrap_or(copies as usize);
        if let Err(e) = self.ensure_providers(providers).await {
            return fail(e.kind(), e.to_string());
        }
        let counters = Arc::new(Counters::default());
        let opts = BackupOptions {
            paths,
            copies: copies as usize,
            pack_size: self.config.backup.pack_size as usize,
            zstd_level: self.config.backup.zstd_level,
            upload_concurrency: self.config.backup.upload_concurrency,
            exclude,
            erasure,
            lock_secs,
        };
        let sink: Arc<dyn PackSink> = Arc::new(NetSink { erasure, ..NetSink::new(self.clone(), copies as usize) });
        let (c2, inner) = (counters.clone(), self.clone());
        let spread = crate::contracts::spread(providers, self.config.contracts.spread);
        let op = async move {
            // More providers are sought while the packs go up; the search ends with the backup.
            let widen = inner.widen_providers(spread);
            let run = backup::run(&inner.id, &inner.state, opts, sink, c2);
            tokio::pin!(widen, run);
            match futures::future::select(run, widen).await {
                futures::future::Either::Left((done, _)) => done,
                futures::future::Either::Right(((), run)) => run.await,
            }
        };
        let result = with_progress(tx, &self.activity, op, || Progress {
            phase: "backup".into(),
            done: counters.done.load(Ordering::Relaxed),
            total: counters.total.load(Ordering::Relaxed),
        })
        .await;
        match result {
            Ok(sum) => Reply::Backup(self.finish_backup(tx, sum, lock_secs).await),
            Err(e) => Reply::Error(e.into()),
        }
    }

    /// After a backup's packs and snapshot are stored: locks the snapshot at its holders
    /// when `lock_secs` > 0 (protocol.md §5.9), then publishes the head; both outcomes go
    /// into the summary (`lock_error`, `head`), so a backup that could not be published for
    /// recovery says so.
    async fn finish_backup(&self, tx: &mpsc::Sender<Reply>, mut sum: BackupSummary, lock_secs: u64) -> BackupSummary {
        if lock_secs > 0 {
            let _ = tx.try_send(Reply::Progress(Progress { phase: "locking".into(), done: 0, total: 0 }));
            let until = self.db({
                let id = sum.snapshot.clone();
                move |s| Ok(s.snapshots()?.into_iter().find(|(k, _)| k.to_string() == id).map(|(_, v)| v.lock_until))
            });
            let until = until.await.ok().flatten().unwrap_or(0);
            sum.locked_until = until;
            if let Err(e) = self.lock_snapshot(&sum.snapshot, until).await {
                sum.lock_error = Some(e.message);
            }
        }
        let _ = tx.try_send(Reply::Progress(Progress { phase: "head".into(), done: 0, total: 0 }));
        let failed = self.publish_head().await;
        sum.head = self.head_report().await;
        sum.head.head_error = failed;
        sum
    }

    async fn restore(self: Arc<Self>, tx: &mpsc::Sender<Reply>, what: restore::RestoreWhat) -> Reply {
        let Ok(_guard) = self.busy.try_lock() else {
            return fail(ErrorKind::Busy, "another backup or restore is running on this daemon");
        };
        let total = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let source: Arc<dyn PackSource> = Arc::new(NetSource::new(self.clone()));
        let (t2, d2, inner) = (total.clone(), done.clone(), self.clone());
        let op = async move { restore::run(&inner.id, &inner.state, source, &what, &t2, d2).await };
        let result = with_progress(tx, &self.activity, op, || Progress {
            phase: "restore".into(),
            done: done.load(Ordering::Relaxed),
            total: total.load(Ordering::Relaxed),
        })
        .await;
        let outcome = match &result {
            Ok(sum) if sum.failed.is_empty() => "success",
            Ok(_) => "partial",
            Err(_) => "failure",
        };
        crate::metrics::Metrics::count(&self.metrics.restores, outcome);
        match result {
            Ok(sum) => Reply::Restore(sum),
            Err(e) => Reply::Error(e.into()),
        }
    }
}

/// Runs `op`, offering a progress frame every 200 ms; a frame is dropped when the queue is
/// full, so a slow or absent reader never delays the operation. The latest progress is
/// also kept in `activity` (for `status` and the dashboard) until `op` ends.
async fn with_progress<T>(
    tx: &mpsc::Sender<Reply>,
    activity: &std::sync::Mutex<Option<Progress>>,
    op: impl std::future::Future<Output = T>,
    progress: impl Fn() -> Progress,
) -> T {
    tokio::pin!(op);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let set = |p: Option<Progress>| *activity.lock().unwrap_or_else(|e| e.into_inner()) = p;
    let out = loop {
        tokio::select! {
            r = &mut op => break r,
            _ = tick.tick() => {
                let p = progress();
                set(Some(p.clone()));
                let _ = tx.try_send(Reply::Progress(p));
            }
        }
    };
    set(None);
    out
}
