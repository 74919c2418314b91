//! The daemon: wires identity, local state, the pack store, the network and the control
//! socket together, and plays both roles (DESIGN §1).
//!
//! - As **provider** it answers gossip proposals that its policy accepts
//!   ([`crate::contracts`]), persists countersigned contracts, stores packs inside them and
//!   serves them back to their owner (`transfer`).
//! - As **client** it proposes contracts when a backup needs providers (`contracting`),
//!   places each pack on N distinct holders, and fetches packs for restore, failing over
//!   between holders (`transfer`).
//! - It serves the CLI over the control socket (`ops`).
//!
//! The network task owns the Swarm ([`crate::net`]); this module only dispatches its events.
//! Inbound data work is bounded by a semaphore; excess requests are answered `Busy`.

mod auditing;
mod befriending;
mod claiming;
mod contracting;
mod defaulters;
mod drilling;
mod heads;
mod lifetime;
mod locking;
mod maintenance;
mod ops;
mod repair;
mod scheduling;
mod transfer;
mod web;

pub use heads::REPUBLISH_SECS;
pub use lifetime::{ABANDON_GRACE, SHUTDOWN_GRACE};
pub use ops::{OfferError, check_offer, offer_notes};

use crate::claims::ClaimStore;
use crate::config::{Config, Home};
use crate::id::{ContractId, ProposalId};
use crate::identity::{Identity, Signed};
use crate::net::{self, NetEvent, NetHandle};
use crate::protocol::{self, ContractRequest, DataErrorCode, DataResponse, now};
use crate::provider::PackStore;
use crate::state::{ContractRecord, Role, State};
use crate::store::Store;
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

/// Inbound data requests handled at once.
pub const INBOUND_DATA_LIMIT: usize = 8;
/// Proposals considered at once; more are ignored until one finishes.
pub const PROPOSALS_AT_ONCE: usize = 4;
/// Proposals one author may publish per minute; more are rejected (not forwarded).
pub const PROPOSALS_PER_MINUTE: u32 = 20;
/// Proposals remembered (until their expiry) to reject replays.
pub const SEEN_PROPOSALS_MAX: usize = 100_000;

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Identity, configuration, state or store could not be loaded.
    #[error("{0}")]
    Setup(String),
}

/// Everything the daemon's tasks share.
struct Inner {
    home: Home,
    config: Config,
    id: Identity,
    /// The store actor owning `state.redb` ([`crate::store`]).
    state: Store,
    store: PackStore,
    /// Claim blocks we hold for our providers (protocol.md §4.6).
    claims: ClaimStore,
    net: NetHandle,
    /// Client side: open proposals and the session each belongs to.
    sessions: Mutex<HashMap<ProposalId, Arc<contracting::Session>>>,
    /// Provider side: bytes promised in acceptances not yet countersigned, per client.
    reserved: Mutex<crate::contracts::Reservations>,
    /// Provider side: woken each time a provider contract is recorded and each time a
    /// reservation is released, for a `Store` that arrived before its contract was
    /// recorded (protocol.md §4.3.2).
    released: tokio::sync::Notify,
    /// Provider side: bytes of stores being written, per client.
    inflight: Mutex<HashMap<PeerId, u64>>,
    inbound: Arc<Semaphore>,
    proposals: Arc<Semaphore>,
    /// Gossip hygiene: proposals seen (until expiry) and per-author rates.
    gossip: Mutex<GossipGuard>,
    busy: tokio::sync::Mutex<()>,
    /// One head publication at a time, so two never share a sequence number.
    publishing: tokio::sync::Mutex<()>,
    /// Why the last head publication failed; `None` once one succeeds (protocol.md §5.8).
    head_error: Mutex<Option<String>>,
    /// Scheduled backups and hooks ([`scheduling`]).
    scheduling: scheduling::Scheduling,
    /// The backup or restore running now, with its latest progress.
    activity: Mutex<Option<crate::control::Progress>>,
    /// Metrics served at the dashboard's `/metrics` ([`crate::metrics`]).
    metrics: crate::metrics::Metrics,
    /// The dashboard's URL with its token, once it listens ([`web`]).
    dashboard_url: std::sync::OnceLock<String>,
    /// The last test restore ([`drilling`]).
    drill: Mutex<Option<crate::drill::DrillReport>>,
    /// Friends by PeerId ([`befriending`]), from config.toml and `peer friends add`.
    friends: Mutex<HashMap<PeerId, crate::friends::Friend>>,
    /// Providers with verified evidence of default ([`defaulters`]).
    defaulters: Mutex<std::collections::HashSet<PeerId>>,
    /// Every task the daemon starts, and its shutdown ([`lifetime`]).
    life: lifetime::Lifetime,
}

fn setup<E: std::fmt::Display>(e: E) -> DaemonError {
    DaemonError::Setup(e.to_string())
}

/// Prints a line on stdout; a closed stdout is not an error for a daemon.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Runs the daemon for `home` until SIGINT or SIGTERM: prints the PeerId, then each listen
/// multiaddr (with `/p2p/<PeerId>`) as it becomes known, one per line.
pub async fn run(home: Home) -> Result<(), DaemonError> {
    let id = Identity::load(&home.key_file()).map_err(setup)?;
    let config = Config::load_existing(&home.config_file()).map_err(setup)?;
    let state = open_state(&home).await?;
    let sticky_ports: Vec<(&str, u64)> =
        ["listen_tcp_port", "listen_quic_port"].into_iter().map(|k| (k, state.counter(k).unwrap_or(0))).collect();
    let (state, state_thread) = Store::start(state).map_err(setup)?;
    let store = PackStore::open(&home.store_dir(), config.provider.min_free_bytes).map_err(setup)?;
    let claims = ClaimStore::open(&home.claims_dir()).map_err(setup)?;
    let limits = net::throttle::Limits::new(config.network.limit_upload, config.network.limit_download);
    let (metrics, net_metrics) = crate::metrics::Metrics::new(&limits);
    let (net, events) = start_network(&id, &config, &state, &sticky_ports, limits, Arc::new(net_metrics))?;
    say(&id.peer_id().to_string());
    let listener = bind_control(&home)?;
    let inner = Arc::new(Inner {
        home,
        config,
        id,
        state,
        store,
        claims,
        net: net.clone(),
        sessions: Mutex::new(HashMap::new()),
        reserved: Mutex::new(Default::default()),
        released: tokio::sync::Notify::new(),
        inflight: Mutex::new(HashMap::new()),
        inbound: Arc::new(Semaphore::new(INBOUND_DATA_LIMIT)),
        proposals: Arc::new(Semaphore::new(PROPOSALS_AT_ONCE)),
        gossip: Mutex::new(GossipGuard::default()),
        busy: tokio::sync::Mutex::new(()),
        publishing: tokio::sync::Mutex::new(()),
        head_error: Mutex::new(None),
        scheduling: scheduling::Scheduling::default(),
        activity: Mutex::new(None),
        metrics,
        dashboard_url: std::sync::OnceLock::new(),
        drill: Mutex::new(None),
        friends: Mutex::new(HashMap::new()),
        defaulters: Mutex::new(Default::default()),
        life: lifetime::Lifetime::default(),
    });
    inner.load_remembered().await?;
    inner.life.spawn_round(serve_control_socket(inner.clone(), listener));
    inner.life.spawn_round(inner.clone().audit_loop());
    inner.life.spawn_round(inner.clone().repair_loop());
    inner.life.spawn_round(inner.clone().recover_loop());
    inner.life.spawn_round(inner.clone().republish_loop());
    inner.life.spawn_round(inner.clone().schedule_loop());
    inner.life.spawn_round(inner.clone().drill_loop());
    inner.life.spawn_round(inner.clone().keep_partners_loop());
    if inner.config.dashboard.enabled {
        start_dashboard(&inner).await;
    }
    // systemd's Type=notify (sd_notify(3)): ready once the control socket takes commands.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot tell the service manager we are ready: {e}");
    }
    let mut events = events;
    dispatch(&inner, &mut events).await?;
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::debug!("cannot tell the service manager we stop: {e}");
    }

    shut_down(&inner, &net, events, state_thread).await;
    Ok(())
}

impl Inner {
    /// Loads what the daemon remembers across restarts from the state store: the known
    /// defaulters, when each schedule last ran, the friends, and the last test restore.
    /// Errors: [`DaemonError::Setup`] when the state store cannot be read.
    async fn load_remembered(&self) -> Result<(), DaemonError> {
        let known = self.db(|s| s.defaulters()).await.map_err(setup)?;
        *self.defaulters.lock().unwrap_or_else(|p| p.into_inner()) =
            known.iter().filter_map(|(k, _)| PeerId::from_bytes(k).ok()).collect();
        let lasts = self.db(|s| s.schedule_runs()).await.map_err(setup)?;
        self.scheduling.load(&self.config, &lasts);
        let friends = self.config.friends.clone();
        self.load_friends(&friends).await;
        let last_drill = self.db(|s| s.record(drilling::RECORD)).await.map_err(setup)?;
        *self.drill.lock().unwrap_or_else(|p| p.into_inner()) = last_drill;
        Ok(())
    }
}

/// Shutdown: stops taking work and ends the rounds, lets work in flight (inbound
/// requests, control commands) finish within [`SHUTDOWN_GRACE`] and abandons what
/// outlasts it ([`lifetime`]), then stops the network and joins its task, then writes
/// every queued state command and joins the state store's thread.
///
/// Network events are still dispatched meanwhile, so the work in flight gets its
/// answers (a provider's acceptance is an inbound request); new inbound data requests
/// are answered `Busy` and new proposals are not considered.
async fn shut_down(
    inner: &Arc<Inner>,
    net: &net::NetHandle,
    mut events: tokio::sync::mpsc::Receiver<NetEvent>,
    state_thread: std::thread::JoinHandle<()>,
) {
    tracing::info!("shutting down");
    let finish = inner.life.finish(SHUTDOWN_GRACE, ABANDON_GRACE);
    tokio::pin!(finish);
    let finished = loop {
        tokio::select! {
            f = &mut finish => break f,
            Some(ev) = events.recv() => inner.clone().on_event(ev).await,
        }
    };
    match finished {
        lifetime::Finished::Joined => tracing::info!("every task ended"),
        lifetime::Finished::Abandoned => {
            tracing::warn!("work still running after {} s was abandoned; every task ended", SHUTDOWN_GRACE.as_secs())
        }
        lifetime::Finished::Stuck(n) => tracing::error!("{n} tasks did not end; stopping anyway"),
    }
    net.shutdown().await;
    if let Err(e) = std::fs::remove_file(inner.home.control_socket()) {
        tracing::debug!("control socket: {e}");
    }
    // Every command queued before this point is written; then the store thread ends.
    inner.state.stop();
    if tokio::task::spawn_blocking(move || state_thread.join()).await.is_err() {
        tracing::error!("the state store thread failed");
    }
}

/// Starts the dashboard on 127.0.0.1 and prints its URL; a port in use or a token that
/// cannot be written leaves the daemon running without it (logged).
async fn start_dashboard(inner: &Arc<Inner>) {
    let path = inner.home.dashboard_token();
    let token = match tokio::task::spawn_blocking(move || web::load_or_make_token(&path)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return tracing::warn!("dashboard off: {e}"),
        Err(e) => return tracing::warn!("dashboard off: {e}"),
    };
    match web::bind(inner.config.dashboard.port).await {
        Ok((listener, port)) => {
            let url = format!("http://127.0.0.1:{port}/#token={token}");
            // Under systemd stdout goes to the journal: the token stays out of it.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                say(&format!("dashboard: http://127.0.0.1:{port}/ ('peer dashboard' prints the URL with its token)"));
            } else {
                say(&format!("dashboard: {url}"));
            }
            let _ = inner.dashboard_url.set(url);
            inner.life.spawn(web::serve(inner.clone(), listener, port, token));
        }
        Err(e) => tracing::warn!(
            "dashboard off: cannot listen on 127.0.0.1:{}: {e} (set [dashboard] port in config.toml)",
            inner.config.dashboard.port
        ),
    }
}

/// Opens `state.redb` off the runtime (errors: another daemon holds it, or it is damaged).
async fn open_state(home: &Home) -> Result<State, DaemonError> {
    let state_file = home.state_file();
    let opened = tokio::task::spawn_blocking(move || State::open(&state_file)).await.map_err(setup)?;
    opened.map_err(setup)
}

/// Starts the network on the configured addresses, with the ports of the last run where
/// the configuration says "any port" (so that the addresses our contract partners
/// recorded stay valid across restarts), or fresh ones if those are taken.
fn start_network(
    id: &Identity,
    config: &Config,
    state: &Store,
    sticky_ports: &[(&str, u64)],
    limits: net::throttle::Limits,
    metrics: Arc<libp2p::metrics::Metrics>,
) -> Result<(NetHandle, tokio::sync::mpsc::Receiver<NetEvent>), DaemonError> {
    let parse = |v: &[String]| {
        v.iter()
            .map(|a| a.parse::<Multiaddr>().map_err(|e| setup(format!("'{a}': {e}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let t = now();
    let known: Vec<(PeerId, Vec<Multiaddr>)> = state
        .contracts()
        .into_iter()
        .filter(|(_, c)| c.is_live(t))
        .filter_map(|(_, c)| Some((c.peer_id()?, c.addrs.iter().filter_map(|a| a.parse().ok()).collect())))
        .collect();
    let listen = parse(&config.network.listen)?;
    let cfg = |listen: Vec<Multiaddr>| net::NetConfig {
        listen,
        bootstrap: parse(&config.network.bootstrap).unwrap_or_default(),
        known: known.clone(),
        mdns: config.network.mdns,
        max_connections: config.network.max_connections,
        target_peers: config.network.target_peers,
        shard_peers: config.network.shard_peers,
        global_only: config.network.global_addresses_only,
        upnp: config.network.upnp,
        relay: config.relay.serve.then(|| config.relay.clone()),
        limits: limits.clone(),
        metrics: Some(metrics.clone()),
    };
    let sticky: Vec<Multiaddr> = listen.iter().map(|a| with_saved_port(sticky_ports, a)).collect();
    match net::start(id.keypair(), cfg(sticky.clone())) {
        Ok(v) => Ok(v),
        Err(e) if sticky != listen => {
            tracing::info!("the ports of the last run are taken ({e}); listening on new ones");
            net::start(id.keypair(), cfg(listen)).map_err(setup)
        }
        Err(e) => Err(setup(e)),
    }
}

/// Binds `home/control.sock`, readable by the owner only.
fn bind_control(home: &Home) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let sock = home.control_socket();
    // Stale, or absent: we hold the state lock, so no daemon owns it. Binding names the
    // socket if it is still in the way.
    if let Err(e) = std::fs::remove_file(&sock)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove the old control socket {}: {e}", sock.display());
    }
    let listener = UnixListener::bind(&sock).map_err(|e| setup(format!("cannot bind {}: {e}", sock.display())))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(setup)?;
    Ok(listener)
}

/// Serves the control socket, at most 32 connections at once, until shutdown begins;
/// each connection is work of [`lifetime`] (it finishes or answers that it was abandoned).
async fn serve_control_socket(inner: Arc<Inner>, listener: UnixListener) {
    let conns = Arc::new(Semaphore::new(32));
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let Ok(permit) = conns.clone().acquire_owned().await else { return };
                let i = inner.clone();
                inner.life.spawn_answering(async move {
                    i.serve_control(s).await;
                    drop(permit);
                });
            }
            Err(e) => tracing::warn!("control socket: {e}"),
        }
    }
}

/// Hands network events to the daemon until the network stops, SIGINT or SIGTERM.
async fn dispatch(inner: &Arc<Inner>, events: &mut tokio::sync::mpsc::Receiver<NetEvent>) -> Result<(), DaemonError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(setup)?;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => inner.clone().on_event(ev).await,
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

/// The settings key and port of a TCP or QUIC listen address.
fn port_of(a: &Multiaddr) -> Option<(&'static str, u16)> {
    use libp2p::multiaddr::Protocol;
    let mut it = a.iter();
    match (it.nth(1)?, it.next()) {
        (Protocol::Tcp(p), _) => Some(("listen_tcp_port", p)),
        (Protocol::Udp(p), Some(Protocol::QuicV1)) => Some(("listen_quic_port", p)),
        _ => None,
    }
}

/// `a` with port 0 replaced by the port the last run listened on, if any (`saved`: the
/// settings counters of [`port_of`]).
fn with_saved_port(saved: &[(&str, u64)], a: &Multiaddr) -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    let Some((key, 0)) = port_of(a) else { return a.clone() };
    let Some(&(_, saved @ 1..=65535)) = saved.iter().find(|(k, _)| *k == key) else { return a.clone() };
    a.iter()
        .map(|p| match p {
            Protocol::Tcp(0) => Protocol::Tcp(saved as u16),
            Protocol::Udp(0) => Protocol::Udp(saved as u16),
            p => p,
        })
        .collect()
}

/// Replay and rate checks for proposals (protocol.md §4.1), bounded in memory.
#[derive(Default)]
struct GossipGuard {
    /// (author, proposal id) → its expiry (seconds). The id covers only the body, so two
    /// authors may sign equal bodies: the author is part of the key.
    seen: HashMap<(PeerId, ProposalId), u64>,
    /// Author → (minute, proposals in that minute).
    rate: HashMap<PeerId, (u64, u32)>,
    /// Forwarder → (minute, evidence messages in that minute).
    evidence_rate: HashMap<PeerId, (u64, u32)>,
}

impl GossipGuard {
    /// Admits one evidence message from forwarder `source` at time `now`: at most
    /// [`defaulters::EVIDENCE_PER_MINUTE`] per forwarder and minute.
    fn admit_evidence(&mut self, source: PeerId, now: u64) -> bool {
        let minute = now / 60;
        if self.evidence_rate.len() >= SEEN_PROPOSALS_MAX {
            self.evidence_rate.retain(|_, (m, _)| *m == minute);
        }
        let (m, n) = self.evidence_rate.entry(source).or_insert((minute, 0));
        if *m != minute {
            (*m, *n) = (minute, 0);
        }
        *n += 1;
        *n <= defaulters::EVIDENCE_PER_MINUTE
    }

    /// Admits a verified proposal at time `now`, or says why not.
    fn admit(&mut self, vp: &protocol::VerifiedProposal, now: u64) -> Result<(), &'static str> {
        if self.seen.len() >= SEEN_PROPOSALS_MAX {
            self.seen.retain(|_, exp| *exp >= now);
            if self.seen.len() >= SEEN_PROPOSALS_MAX {
                return Err("too many live proposals");
            }
        }
        if self.seen.contains_key(&(vp.client, vp.id)) {
            return Err("replayed proposal");
        }
        let minute = now / 60;
        if self.rate.len() >= SEEN_PROPOSALS_MAX {
            self.rate.retain(|_, (m, _)| *m == minute);
        }
        let (m, n) = self.rate.entry(vp.client).or_insert((minute, 0));
        if *m != minute {
            (*m, *n) = (minute, 0);
        }
        *n += 1;
        if *n > PROPOSALS_PER_MINUTE {
            return Err("author over its proposal rate");
        }
        self.seen.insert((vp.client, vp.id), vp.proposal.expires);
        Ok(())
    }
}

impl Inner {
    fn me(&self) -> PeerId {
        self.id.peer_id()
    }

    /// Runs a command on the store actor ([`crate::store`]): no transaction on the runtime.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> Result<T, crate::state::StateError> + Send + 'static,
    ) -> Result<T, crate::state::StateError> {
        self.state.call(f).await
    }

    /// Runs a write on the store actor; a failure is logged naming `what`, and `None`
    /// returned: the caller goes on, as it would had the write been lost in a crash.
    async fn persist<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&State) -> Result<T, crate::state::StateError> + Send + 'static,
    ) -> Option<T> {
        match self.state.call(f).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!("cannot record {what}: {e}");
                None
            }
        }
    }

    /// Deletes every pack and the head held for `client`, off the runtime; returns the
    /// bytes freed.
    async fn reclaim(&self, client: PeerId) -> Result<u64, crate::provider::StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.drop_client(&client, now())).await?
    }

    /// Whether `peer` keeps its standing in our audits (protocol.md §5.4). A local error
    /// counts against it: we do not deal with a peer we cannot judge.
    async fn in_good_standing(&self, peer: &PeerId) -> bool {
        let key = peer.to_bytes();
        match self.db(move |s| s.audit(&key)).await {
            Ok(a) => a.good,
            Err(e) => {
                tracing::error!("cannot read the audit record of {peer}: {e}");
                false
            }
        }
    }

    fn live_contracts(&self, role: Role) -> Vec<(ContractId, ContractRecord)> {
        let t = now();
        self.state.contracts_where(|c| c.role == role && c.is_live(t))
    }

    /// The addresses we advertise (confirmed external, then circuit addresses through our
    /// relays; protocol.md §1.10) as text, at most `MAX_PROPOSAL_ADDRS`.
    fn listen_addrs(&self) -> Vec<String> {
        self.net.advertised().iter().take(protocol::MAX_PROPOSAL_ADDRS).map(|a| a.to_string()).collect()
    }

    async fn on_event(self: Arc<Self>, ev: NetEvent) {
        match ev {
            NetEvent::Listening(a) => {
                say(&a.to_string());
                if let Some((key, port)) = port_of(&a) {
                    self.persist("the listen port", move |s| s.set_counter(key, u64::from(port))).await;
                }
            }
            NetEvent::Proposal { id, source, topic, data } => {
                self.metrics.gossip(&topic, data.len());
                let t = now();
                let verified = protocol::from_cbor::<Signed>("proposal", &data)
                    .map_err(|e| e.to_string())
                    .and_then(|s| protocol::verify_proposal(&s, t).map_err(|e| e.to_string()))
                    .and_then(|vp| match self.gossip.lock() {
                        Ok(mut g) => g.admit(&vp, t).map(|_| vp).map_err(str::to_string),
                        Err(_) => Err("internal error".to_string()),
                    });
                match verified {
                    Ok(vp) => {
                        self.net.validate(id, source, true).await;
                        if !self.life.is_stopping()
                            && let Ok(permit) = self.proposals.clone().try_acquire_owned()
                        {
                            self.life.clone().spawn(async move {
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
            NetEvent::Evidence { id, source, data } => {
                self.metrics.gossip(protocol::EVIDENCE_TOPIC, data.len());
                self.life.clone().spawn(async move { self.on_evidence(id, source, data).await });
            }
            NetEvent::Contract { peer, request: ContractRequest::Accept(signed), channel } => {
                let resp = self.on_acceptance(peer, signed).await;
                self.net.respond_contract(channel, resp).await;
            }
            NetEvent::Contract { peer, request: ContractRequest::Renew(signed), channel } => {
                let resp = self.on_renew(peer, signed).await;
                self.net.respond_contract(channel, resp).await;
            }
            NetEvent::Contract { peer, request: ContractRequest::Cancel(signed), channel } => {
                // A cancellation may drop a client's data (blocking I/O): in its own task
                // while an inbound slot is free, else here, which holds the next events back.
                match self.inbound.clone().try_acquire_owned() {
                    Ok(permit) => self.life.clone().spawn(async move {
                        let resp = self.on_cancel(peer, signed).await;
                        self.net.respond_contract(channel, resp).await;
                        drop(permit);
                    }),
                    Err(_) => {
                        let resp = self.on_cancel(peer, signed).await;
                        self.net.respond_contract(channel, resp).await;
                    }
                }
            }
            NetEvent::Data { peer, request, channel } => {
                let permit = self.inbound.clone().try_acquire_owned().ok().filter(|_| !self.life.is_stopping());
                let Some(permit) = permit else {
                    let busy =
                        DataResponse::Error { code: DataErrorCode::Busy, message: "provider busy; retry later".into() };
                    self.net.respond_data(channel, busy).await;
                    return;
                };
                self.life.clone().spawn(async move {
                    let resp = self.on_data(peer, request).await;
                    self.net.respond_data(channel, resp).await;
                    drop(permit);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::protocol::Proposal;

    fn proposal(id: &Identity, nonce: u64) -> protocol::VerifiedProposal {
        let p = Proposal { bytes: 1, duration_secs: 1, offered: 1, free: 1, addrs: vec![], expires: 1000, nonce };
        protocol::verify_proposal(&p.sign(id), 900).unwrap()
    }

    #[test]
    fn replays_and_floods_are_rejected() {
        let mut g = GossipGuard::default();
        let a = Identity::from_secret([1; 32]);
        let first = proposal(&a, 0);
        assert_eq!(g.admit(&first, 900), Ok(()));
        assert_eq!(g.admit(&first, 901), Err("replayed proposal"));
        for n in 1..PROPOSALS_PER_MINUTE as u64 {
            assert_eq!(g.admit(&proposal(&a, n), 902), Ok(()));
        }
        assert_eq!(g.admit(&proposal(&a, 999), 903), Err("author over its proposal rate"));
        // another author is not affected; the next minute the author may speak again
        assert_eq!(g.admit(&proposal(&Identity::from_secret([2; 32]), 0), 903), Ok(()));
        assert_eq!(g.admit(&proposal(&a, 1000), 960), Ok(()));
    }
}
