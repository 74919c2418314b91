//! The daemon: wires identity, local state, the pack store, the network and the control
//! socket together, and plays both roles (DESIGN §1).
//!
//! - As **provider** it answers gossip proposals that its policy accepts
//!   ([`crate::contracts`]), persists countersigned contracts, stores packs inside them and
//!   serves them back to their owner.
//! - As **client** it proposes contracts when a backup needs providers, countersigns
//!   acceptances, places each pack on N distinct holders, and fetches packs for restore,
//!   failing over between holders.
//!
//! The network task owns the Swarm ([`crate::net`]); this module reacts to its events.
//! Inbound data work is bounded by a semaphore; excess requests are answered "busy".

use crate::backup::{self, BackupOptions, Counters, PackSink};
use crate::config::{Config, Home};
use crate::contracts;
use crate::control::{self, ContractInfo, Progress, Reply, Request, SnapshotInfo, StatusReport};
use crate::id::{ContractId, PackId, ProposalId};
use crate::identity::{Identity, Signed};
use crate::net::{self, NetEvent, NetHandle};
use crate::protocol::{
    self, Acceptance, Contract, ContractRequest, ContractResponse, DOMAIN_ACCEPTANCE, DOMAIN_CONTRACT, DataErrorCode,
    DataRequest, DataResponse, Proposal, now,
};
use crate::provider::PackStore;
use crate::repo::merkle;
use crate::repo::pack::SealedPack;
use crate::restore::{self, PackSource};
use crate::state::{ContractRecord, Holder, PackRecord, Role, State};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};

/// Inbound data requests handled at once.
pub const INBOUND_DATA_LIMIT: usize = 16;
/// How often a client republishes an unanswered proposal, seconds.
pub const REPROPOSE_SECS: u64 = 3;

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Identity, configuration, state or store could not be loaded.
    #[error("{0}")]
    Setup(String),
}

struct Session {
    wanted: usize,
    exclude: HashSet<PeerId>,
    accepted: Mutex<Vec<PeerId>>,
    notify: Notify,
}

struct Inner {
    home: Home,
    config: Config,
    id: Identity,
    state: State,
    store: PackStore,
    net: NetHandle,
    listen: Mutex<Vec<Multiaddr>>,
    sessions: Mutex<HashMap<ProposalId, Arc<Session>>>,
    reserved: Mutex<u64>,
    inbound: Arc<Semaphore>,
    proposals: Arc<Semaphore>,
    busy: tokio::sync::Mutex<()>,
}

fn setup<E: std::fmt::Display>(e: E) -> DaemonError {
    DaemonError::Setup(e.to_string())
}

/// Runs the daemon for `home` until SIGINT or SIGTERM.
pub async fn run(home: Home) -> Result<(), DaemonError> {
    let id = Identity::load(&home.key_file()).map_err(setup)?;
    let config = Config::load(&home.config_file()).map_err(setup)?;
    let state = State::open(&home.state_file())
        .map_err(|e| DaemonError::Setup(format!("{e} (is a daemon already running for {}?)", home.dir.display())))?;
    let store = PackStore::open(&home.store_dir()).map_err(setup)?;
    let parse = |v: &[String]| {
        v.iter()
            .map(|a| a.parse::<Multiaddr>().map_err(|e| setup(format!("'{a}': {e}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let cfg = net::NetConfig {
        listen: parse(&config.network.listen)?,
        bootstrap: parse(&config.network.bootstrap)?,
        mdns: config.network.mdns,
        max_connections: config.network.max_connections,
    };
    let (net, mut events) = net::start(id.keypair(), cfg).map_err(setup)?;
    println!("{}", id.peer_id());

    let sock = home.control_socket();
    let _ = std::fs::remove_file(&sock); // stale: we hold the state lock, so no daemon owns it
    let listener = UnixListener::bind(&sock).map_err(|e| setup(format!("cannot bind {}: {e}", sock.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(setup)?;
    }

    let inner = Arc::new(Inner {
        home,
        config,
        id,
        state,
        store,
        net: net.clone(),
        listen: Mutex::new(Vec::new()),
        sessions: Mutex::new(HashMap::new()),
        reserved: Mutex::new(0),
        inbound: Arc::new(Semaphore::new(INBOUND_DATA_LIMIT)),
        proposals: Arc::new(Semaphore::new(4)),
        busy: tokio::sync::Mutex::new(()),
    });

    let ctl = inner.clone();
    let control_task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let i = ctl.clone();
                    tokio::spawn(async move { i.serve_control(s).await });
                }
                Err(e) => tracing::warn!("control socket: {e}"),
            }
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(setup)?;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => inner.clone().on_event(ev).await,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("shutting down");
    control_task.abort();
    net.shutdown().await;
    let _ = std::fs::remove_file(inner.home.control_socket());
    Ok(())
}

impl Inner {
    fn me(&self) -> PeerId {
        self.id.peer_id()
    }

    fn live_contracts(&self, role: Role) -> Vec<(ContractId, ContractRecord)> {
        let t = now();
        self.state
            .contracts()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, c)| c.role == role && c.expires > t)
            .collect()
    }

    async fn on_event(self: Arc<Self>, ev: NetEvent) {
        match ev {
            NetEvent::Listening(a) => {
                println!("{a}");
                if let Ok(mut l) = self.listen.lock() {
                    l.push(a);
                }
            }
            NetEvent::Proposal { id, source, data } => {
                let verified = ciborium::from_reader::<Signed, _>(&data[..])
                    .map_err(|e| e.to_string())
                    .and_then(|s| protocol::verify_proposal(&s, now()).map_err(|e| e.to_string()));
                match verified {
                    Ok(vp) => {
                        self.net.validate(id, source, true).await;
                        if let Ok(permit) = self.proposals.clone().try_acquire_owned() {
                            tokio::spawn(async move {
                                self.consider(vp).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        tracing::debug!("rejected gossip from {source}: {e}");
                        self.net.validate(id, source, false).await;
                    }
                }
            }
            NetEvent::Contract { peer, request: ContractRequest::Accept(signed), channel } => {
                let resp = self.on_acceptance(peer, signed);
                self.net.respond_contract(channel, resp).await;
            }
            NetEvent::Data { peer, request, channel } => {
                let Ok(permit) = self.inbound.clone().try_acquire_owned() else {
                    let busy = DataResponse::Error {
                        code: DataErrorCode::Internal,
                        message: "provider busy; retry later".into(),
                    };
                    self.net.respond_data(channel, busy).await;
                    return;
                };
                tokio::spawn(async move {
                    let resp = self.on_data(peer, request).await;
                    self.net.respond_data(channel, resp).await;
                    drop(permit);
                });
            }
        }
    }

    /// Provider side: decide on a proposal, and if we grant, send our acceptance.
    async fn consider(self: Arc<Self>, vp: protocol::VerifiedProposal) {
        if vp.client == self.me() {
            return;
        }
        let offered = self.state.offered().unwrap_or(0);
        let live = self.live_contracts(Role::Provider);
        let already = live.iter().any(|(_, c)| c.peer_id() == Some(vp.client));
        let granted: u64 = live.iter().map(|(_, c)| c.bytes).sum();
        let grant = {
            let Ok(mut reserved) = self.reserved.lock() else {
                return;
            };
            match contracts::provider_grant(
                offered,
                granted + *reserved,
                vp.proposal.bytes,
                vp.proposal.offered,
                self.config.contracts.ratio,
                already,
            ) {
                Ok(g) => {
                    *reserved += g;
                    g
                }
                Err(r) => {
                    tracing::debug!("not accepting proposal from {}: {r}", vp.client);
                    return;
                }
            }
        };
        let duration = vp.proposal.duration_secs.min(self.config.contracts.duration_secs);
        let acc = Acceptance {
            provider: self.me().to_bytes(),
            proposal: vp.signed.clone(),
            bytes: grant,
            expires: now() + duration,
        };
        let signed = self.id.sign(DOMAIN_ACCEPTANCE, protocol::to_cbor(&acc));
        let addrs: Vec<Multiaddr> = vp.proposal.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let resp = self.net.contract_request(vp.client, addrs, ContractRequest::Accept(signed.clone())).await;
        match resp {
            Ok(ContractResponse::Countersigned(sig)) => {
                let contract = Contract { acceptance: signed, client_sig: sig };
                match contract.verify() {
                    Ok(t) if t.client == vp.client && t.provider == self.me() => {
                        let rec = ContractRecord {
                            contract,
                            role: Role::Provider,
                            peer: vp.client.to_bytes(),
                            bytes: t.bytes,
                            used: 0,
                            expires: t.expires,
                            addrs: vp.proposal.addrs.clone(),
                        };
                        match self.state.put_contract(&t.id, &rec) {
                            Ok(()) => tracing::info!(
                                "contract {} as provider for {} ({} bytes)",
                                t.id.short(),
                                vp.client,
                                t.bytes
                            ),
                            Err(e) => tracing::error!("cannot persist contract: {e}"),
                        }
                    }
                    Ok(_) => {
                        tracing::warn!("{} countersigned a contract that is not ours", vp.client)
                    }
                    Err(e) => tracing::warn!("bad countersignature from {}: {e}", vp.client),
                }
            }
            Ok(ContractResponse::Declined(why)) => {
                tracing::debug!("{} declined our acceptance: {why}", vp.client)
            }
            Err(e) => tracing::debug!("acceptance to {} failed: {e}", vp.client),
        }
        if let Ok(mut r) = self.reserved.lock() {
            *r = r.saturating_sub(grant);
        }
    }

    /// Client side: countersign an acceptance of one of our open proposals.
    fn on_acceptance(&self, peer: PeerId, signed: Signed) -> ContractResponse {
        let decline = |s: &str| ContractResponse::Declined(s.to_string());
        let (provider, acc, vp) = match protocol::verify_acceptance(&signed) {
            Ok(v) => v,
            Err(e) => return decline(&e.to_string()),
        };
        if provider != peer {
            return decline("the acceptance is not signed by its sender");
        }
        if vp.client != self.me() {
            return decline("not our proposal");
        }
        let Some(session) = self.sessions.lock().ok().and_then(|s| s.get(&vp.id).cloned()) else {
            return decline("the proposal is no longer open");
        };
        let Ok(mut accepted) = session.accepted.lock() else {
            return decline("internal error");
        };
        if accepted.len() >= session.wanted || session.exclude.contains(&provider) || accepted.contains(&provider) {
            return decline("enough providers already");
        }
        let sig = self.id.sign_detached(DOMAIN_CONTRACT, &signed.body);
        let contract = Contract { acceptance: signed, client_sig: sig.clone() };
        let terms = match contract.verify() {
            Ok(t) => t,
            Err(e) => return decline(&e.to_string()),
        };
        let rec = ContractRecord {
            contract,
            role: Role::Client,
            peer: provider.to_bytes(),
            bytes: acc.bytes,
            used: 0,
            expires: acc.expires,
            addrs: vec![],
        };
        if let Err(e) = self.state.put_contract(&terms.id, &rec) {
            tracing::error!("cannot persist contract: {e}");
            return decline("internal error");
        }
        tracing::info!("contract {} as client with {provider} ({} bytes)", terms.id.short(), acc.bytes);
        accepted.push(provider);
        session.notify.notify_one();
        ContractResponse::Countersigned(sig)
    }

    async fn on_data(&self, peer: PeerId, req: DataRequest) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        match req {
            DataRequest::Store { contract, pack, data } => {
                let Some(c) = self.state.contract(&contract).ok().flatten() else {
                    return err(DataErrorCode::NoContract, format!("no contract {contract}"));
                };
                if c.role != Role::Provider || c.peer_id() != Some(peer) || c.expires <= now() {
                    return err(
                        DataErrorCode::NoContract,
                        format!("contract {contract} is not a live contract with {peer}"),
                    );
                }
                if self.store.has(&peer, &pack) {
                    return DataResponse::Stored;
                }
                let used = self.store.used(&peer);
                if used + data.len() as u64 > c.bytes {
                    return err(
                        DataErrorCode::NoRoom,
                        format!("contract {} has {} of {} bytes used", contract.short(), used, c.bytes),
                    );
                }
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.put(&peer, &pack, &data)).await {
                    Ok(Ok(())) => DataResponse::Stored,
                    Ok(Err(crate::provider::StoreError::Mismatch(p))) => {
                        err(DataErrorCode::BadPack, format!("pack {p} does not match its id"))
                    }
                    Ok(Err(e @ crate::provider::StoreError::DiskFull { .. })) => {
                        err(DataErrorCode::NoRoom, e.to_string())
                    }
                    Ok(Err(e)) => {
                        tracing::error!("store failed: {e}");
                        err(DataErrorCode::Internal, "provider could not write the pack".into())
                    }
                    Err(e) => err(DataErrorCode::Internal, e.to_string()),
                }
            }
            DataRequest::Fetch { pack } => {
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.get(&peer, &pack)).await {
                    Ok(Ok(Some(b))) => DataResponse::Pack(b),
                    Ok(Ok(None)) => err(DataErrorCode::NotFound, format!("no pack {pack} held for {peer}")),
                    Ok(Err(e)) => {
                        tracing::error!("read failed: {e}");
                        err(DataErrorCode::Internal, "provider could not read the pack".into())
                    }
                    Err(e) => err(DataErrorCode::Internal, e.to_string()),
                }
            }
        }
    }

    /// Makes sure `n` distinct providers hold live contracts with room for us, proposing
    /// new contracts on gossip until the configured wait runs out.
    async fn ensure_providers(&self, n: usize) -> Result<(), String> {
        let wait = Duration::from_secs(self.config.contracts.proposal_wait_secs);
        let deadline = tokio::time::Instant::now() + wait;
        let offered = self.state.offered().map_err(|e| e.to_string())?;
        let mut session: Option<Arc<Session>> = None;
        let mut ids = Vec::new();
        let result = loop {
            let live = self.live_contracts(Role::Client);
            let with_room: HashSet<PeerId> = live
                .iter()
                .filter(|(_, c)| c.bytes.saturating_sub(c.used) >= crate::repo::pack::MAX_PACK_SIZE as u64)
                .filter_map(|(_, c)| c.peer_id())
                .collect();
            if with_room.len() >= n {
                break Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(format!(
                    "only {} of the {n} providers needed accepted a contract within {}s; wait for more peers to join or use fewer --copies",
                    with_room.len(),
                    wait.as_secs()
                ));
            }
            let missing = n - with_room.len();
            let held: u64 = live.iter().map(|(_, c)| c.bytes).sum();
            let Some(ask) = contracts::client_ask(offered, self.config.contracts.ratio, held, missing) else {
                break Err(format!(
                    "your offer of {} lets you hold no more at others (ratio {}); give to get: raise it with 'peer offer-storage SIZE'",
                    bytesize::ByteSize(offered),
                    self.config.contracts.ratio
                ));
            };
            let s = Arc::new(Session {
                wanted: missing,
                exclude: live.iter().filter_map(|(_, c)| c.peer_id()).collect(),
                accepted: Mutex::new(vec![]),
                notify: Notify::new(),
            });
            let granted_out: u64 = self.live_contracts(Role::Provider).iter().map(|(_, c)| c.bytes).sum();
            let addrs: Vec<String> = self
                .listen
                .lock()
                .map(|l| l.iter().take(protocol::MAX_PROPOSAL_ADDRS).map(|a| a.to_string()).collect())
                .unwrap_or_default();
            let p = Proposal {
                bytes: ask,
                duration_secs: self.config.contracts.duration_secs,
                offered,
                free: offered.saturating_sub(granted_out),
                addrs,
                expires: now() + 60,
                nonce: rand::random(),
            };
            let signed = p.sign(&self.id);
            let pid = ProposalId(crate::id::sha256(&signed.body));
            if let Ok(mut m) = self.sessions.lock() {
                m.insert(pid, s.clone());
            }
            ids.push(pid);
            if let Err(e) = self.net.publish(protocol::to_cbor(&signed)).await {
                tracing::debug!("proposal not published yet: {e}");
            }
            session = Some(s.clone());
            let step = tokio::time::Instant::now() + Duration::from_secs(REPROPOSE_SECS);
            loop {
                if s.accepted.lock().map(|a| a.len() >= s.wanted).unwrap_or(true) {
                    break;
                }
                if tokio::time::timeout_at(step.min(deadline), s.notify.notified()).await.is_err() {
                    break;
                }
            }
        };
        drop(session);
        if let Ok(mut m) = self.sessions.lock() {
            for i in ids {
                m.remove(&i);
            }
        }
        result
    }

    fn status(&self) -> Result<StatusReport, String> {
        let contracts = self.state.contracts().map_err(|e| e.to_string())?;
        let t = now();
        let live = |r: Role| contracts.iter().filter(move |(_, c)| c.role == r && c.expires > t);
        Ok(StatusReport {
            peer_id: self.me().to_string(),
            listen: self.listen.lock().map(|l| l.iter().map(|a| a.to_string()).collect()).unwrap_or_default(),
            connected: vec![],
            offered: self.state.offered().map_err(|e| e.to_string())?,
            granted: live(Role::Provider).map(|(_, c)| c.bytes).sum(),
            used_by_others: self.store.used_total(),
            held_at_others: live(Role::Client).map(|(_, c)| c.used).sum(),
            contracts: contracts
                .iter()
                .map(|(id, c)| ContractInfo {
                    id: id.to_string(),
                    role: match c.role {
                        Role::Client => "client".into(),
                        Role::Provider => "provider".into(),
                    },
                    peer: c.peer_id().map(|p| p.to_string()).unwrap_or_default(),
                    bytes: c.bytes,
                    used: if c.role == Role::Provider {
                        c.peer_id().map(|p| self.store.used(&p)).unwrap_or(0)
                    } else {
                        c.used
                    },
                    expires: c.expires,
                })
                .collect(),
        })
    }

    fn set_offer(&self, bytes: u64) -> Result<(), String> {
        check_offer(&self.home, bytes, self.store.used_total())?;
        self.state.set_offered(bytes).map_err(|e| e.to_string())
    }

    async fn serve_control(self: Arc<Self>, mut s: UnixStream) {
        let req = match control::read_frame::<Request>(&mut s).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = control::write_frame(&mut s, &Reply::Error(format!("bad control request: {e}"))).await;
                return;
            }
        };
        let reply = match req {
            Request::Status => match self.status() {
                Ok(mut st) => {
                    if let Ok(ns) = self.net.status().await {
                        st.connected = ns.connected.iter().map(|p| p.to_string()).collect();
                    }
                    Reply::Status(st)
                }
                Err(e) => Reply::Error(e),
            },
            Request::Offer(b) => match self.set_offer(b) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error(e),
            },
            Request::Snapshots => match self.state.snapshots() {
                Ok(v) => Reply::Snapshots(
                    v.into_iter()
                        .map(|(id, s)| SnapshotInfo {
                            id: id.to_string(),
                            time: s.time,
                            hostname: s.hostname,
                            paths: s.paths,
                            files: s.files,
                            bytes: s.bytes,
                        })
                        .collect(),
                ),
                Err(e) => Reply::Error(e.to_string()),
            },
            Request::Backup { paths, copies } => self.clone().backup(&mut s, paths, copies).await,
            Request::Restore { snapshot, target, overwrite } => {
                self.clone().restore(&mut s, snapshot, target, overwrite).await
            }
        };
        let _ = control::write_frame(&mut s, &reply).await;
    }

    async fn backup(self: Arc<Self>, s: &mut UnixStream, paths: Vec<PathBuf>, copies: u32) -> Reply {
        let Ok(_guard) = self.busy.try_lock() else {
            return Reply::Error("another backup or restore is running on this daemon".into());
        };
        if copies == 0 {
            return Reply::Error("--copies must be at least 1".into());
        }
        if let Err(e) = backup::check_paths(&paths) {
            return Reply::Error(e.to_string());
        }
        match self.state.offered() {
            Ok(0) => return Reply::Error("this peer offers no storage, so no peer will store for it (give to get); run 'peer offer-storage SIZE' first".into()),
            Ok(_) => {}
            Err(e) => return Reply::Error(e.to_string()),
        }
        let _ =
            control::write_frame(s, &Reply::Progress(Progress { phase: "contracts".into(), done: 0, total: 0 })).await;
        if let Err(e) = self.ensure_providers(copies as usize).await {
            return Reply::Error(e);
        }
        let counters = Arc::new(Counters::default());
        let opts = BackupOptions {
            paths,
            pack_size: self.config.backup.pack_size as usize,
            zstd_level: self.config.backup.zstd_level,
            upload_concurrency: self.config.backup.upload_concurrency,
        };
        let sink: Arc<dyn PackSink> =
            Arc::new(NetSink { inner: self.clone(), copies: copies as usize, pending: Mutex::new(HashMap::new()) });
        let c2 = counters.clone();
        let inner = self.clone();
        let op = async move { backup::run(&inner.id, &inner.state, opts, sink, c2).await };
        let result = with_progress(s, op, || Progress {
            phase: "backup".into(),
            done: counters.done.load(Ordering::Relaxed),
            total: counters.total.load(Ordering::Relaxed),
        })
        .await;
        match result {
            Ok(sum) => Reply::Backup(sum),
            Err(e) => Reply::Error(e.to_string()),
        }
    }

    async fn restore(
        self: Arc<Self>,
        s: &mut UnixStream,
        which: Option<String>,
        target: Option<PathBuf>,
        overwrite: bool,
    ) -> Reply {
        let Ok(_guard) = self.busy.try_lock() else {
            return Reply::Error("another backup or restore is running on this daemon".into());
        };
        let total = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let source: Arc<dyn PackSource> = Arc::new(NetSource { inner: self.clone() });
        let (t2, d2, inner) = (total.clone(), done.clone(), self.clone());
        let op = async move {
            let what = restore::RestoreWhat { snapshot: which, target, overwrite };
            restore::run(&inner.id, &inner.state, source, &what, &t2, d2).await
        };
        let result = with_progress(s, op, || Progress {
            phase: "restore".into(),
            done: done.load(Ordering::Relaxed),
            total: total.load(Ordering::Relaxed),
        })
        .await;
        match result {
            Ok(sum) => Reply::Restore(sum),
            Err(e) => Reply::Error(e.to_string()),
        }
    }
}

/// Runs `op`, sending a progress frame every 200 ms while it runs. A client that went away
/// does not stop the operation.
async fn with_progress<T>(
    s: &mut UnixStream,
    op: impl std::future::Future<Output = T>,
    progress: impl Fn() -> Progress,
) -> T {
    tokio::pin!(op);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut connected = true;
    loop {
        tokio::select! {
            r = &mut op => return r,
            _ = tick.tick(), if connected => {
                connected = control::write_frame(s, &Reply::Progress(progress())).await.is_ok();
            }
        }
    }
}

/// Refuses an offer larger than the free disk of the home (plus what others already store here).
pub fn check_offer(home: &Home, bytes: u64, stored: u64) -> Result<(), String> {
    let free = crate::provider::free_space(&home.dir).map_err(|e| format!("{}: {e}", home.dir.display()))?;
    if bytes > free + stored {
        return Err(format!(
            "cannot offer {}: the disk holding {} has only {} free",
            bytesize::ByteSize(bytes),
            home.dir.display(),
            bytesize::ByteSize(free + stored)
        ));
    }
    Ok(())
}

/// Places packs on `copies` distinct holders among our live contracts.
struct NetSink {
    inner: Arc<Inner>,
    copies: usize,
    /// Bytes of packs in flight per contract, not yet in the state's `used`.
    pending: Mutex<HashMap<ContractId, u64>>,
}

impl NetSink {
    async fn store_at(&self, peer: PeerId, contract: ContractId, pack: &Arc<SealedPack>) -> Result<(), String> {
        let req = DataRequest::Store { contract, pack: pack.id, data: pack.bytes.clone() };
        match self.inner.net.data_request(peer, req).await {
            Ok(DataResponse::Stored) => Ok(()),
            Ok(DataResponse::Error { code, message }) => Err(format!("{peer}: {code:?}: {message}")),
            Ok(_) => Err(format!("{peer}: unexpected answer to a store request")),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl PackSink for NetSink {
    async fn place(&self, pack: Arc<SealedPack>) -> Result<PackRecord, String> {
        let size = pack.bytes.len() as u64;
        // Candidates: live client contracts with room, most free first, one per provider.
        let mut cands: Vec<(u64, PeerId, ContractId)> = {
            let pending = self.pending.lock().map_err(|e| e.to_string())?;
            let mut seen = HashSet::new();
            let mut v: Vec<_> = self
                .inner
                .live_contracts(Role::Client)
                .into_iter()
                .filter_map(|(id, c)| {
                    let free = c.bytes.saturating_sub(c.used + pending.get(&id).copied().unwrap_or(0));
                    (free >= size).then(|| c.peer_id().map(|p| (free, p, id))).flatten()
                })
                .collect();
            v.sort_by_key(|c| std::cmp::Reverse(c.0));
            v.retain(|(_, p, _)| seen.insert(*p));
            v
        };
        cands.reverse(); // pop() takes the most free first
        let mut holders: Vec<Holder> = Vec::new();
        let mut errors = Vec::new();
        while holders.len() < self.copies {
            let need = self.copies - holders.len();
            let batch: Vec<_> = (0..need).filter_map(|_| cands.pop()).collect();
            if batch.is_empty() {
                break;
            }
            if let Ok(mut p) = self.pending.lock() {
                for (_, _, c) in &batch {
                    *p.entry(*c).or_default() += size;
                }
            }
            let results = futures::future::join_all(batch.iter().map(|(_, p, c)| self.store_at(*p, *c, &pack))).await;
            for ((_, p, c), r) in batch.into_iter().zip(results) {
                if let Ok(mut pm) = self.pending.lock() {
                    let e = pm.entry(c).or_default();
                    *e = e.saturating_sub(size);
                }
                match r {
                    Ok(()) => {
                        let _ = self.inner.state.add_contract_use(&c, size);
                        holders.push(Holder { peer: p.to_bytes(), contract: c });
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        if holders.len() < self.copies {
            return Err(format!(
                "pack {} reached {} of {} holders ({})",
                pack.id.short(),
                holders.len(),
                self.copies,
                if errors.is_empty() {
                    "no contract has room left; offer more storage to get more".to_string()
                } else {
                    errors.join("; ")
                }
            ));
        }
        Ok(PackRecord { size, holders })
    }
}

/// Fetches packs from their holders, verifying each against its id, failing over.
struct NetSource {
    inner: Arc<Inner>,
}

#[async_trait::async_trait]
impl PackSource for NetSource {
    async fn fetch(&self, pack: PackId) -> Result<Vec<u8>, String> {
        let rec = self
            .inner
            .state
            .pack(&pack)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("pack {pack} has no known holder"))?;
        let mut errors = Vec::new();
        for h in rec.holders {
            let Ok(peer) = PeerId::from_bytes(&h.peer) else {
                continue;
            };
            match self.inner.net.data_request(peer, DataRequest::Fetch { pack }).await {
                Ok(DataResponse::Pack(b)) if merkle::root(&b) == pack => return Ok(b),
                Ok(DataResponse::Pack(_)) => {
                    tracing::warn!("holder {peer} returned a corrupt copy of pack {}", pack.short());
                    errors.push(format!("{peer}: corrupt copy"));
                }
                Ok(DataResponse::Error { code, message }) => errors.push(format!("{peer}: {code:?}: {message}")),
                Ok(_) => errors.push(format!("{peer}: unexpected answer to a fetch request")),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(errors.join("; "))
    }
}
