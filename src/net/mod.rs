//! The network: one task owns the libp2p `Swarm`; everything else holds a cloneable
//! [`NetHandle`] and receives [`NetEvent`]s (shape of rust-libp2p's file-sharing example).
//!
//! The event loop decides nothing: inbound proposals, contract requests and data requests
//! go out as events to the daemon, which answers through the handle. Every channel is
//! bounded; when the daemon falls behind, inbound requests are dropped (the remote sees a
//! failed request) rather than queued without limit. Protocols: TCP+Noise+Yamux, QUIC,
//! DNS, identify, ping, Kademlia (server mode, [`KAD_PROTOCOL`]), gossipsub (author-signed,
//! strict, validated by us, message id = SHA-256 of the data), two request-response
//! protocols with CBOR and size caps, and optional mDNS. See protocol.md §1.
//!
//! Behind home routers (protocol.md §1.10): AutoNAT v2 (client and server) confirms which of
//! our addresses others can dial; UPnP asks the router for a mapping; a publicly reachable
//! peer serves circuit relay v2 within bounds; a peer that is not keeps reservations on
//! [`reach::RELAYS_WANTED`] relays and advertises its `/p2p-circuit` addresses; DCUtR
//! turns a relayed connection into a direct one. Bulk data (the data protocol) is sent
//! only over direct connections: a data request waits up to [`DIRECT_WAIT`] for one, and a
//! peer that cannot be reached at any known address is looked up by PeerId in Kademlia.
//! [`reach`] holds that state; [`throttle`] the bandwidth limits (and the byte counts).
//!
//! Connections stay bounded by what this peer needs (protocol.md §1.9): it dials toward
//! `[network] target_peers` and, above 1.5 × that, [`trim`] picks the least needed
//! connections to close (never a contract partner's, set by [`NetHandle::keep`]).

mod proposals;
pub mod reach;
pub mod shard;
pub mod throttle;
pub mod trim;

use crate::protocol::codec::{CborCodec, Inbound, InboundBudget};
use crate::protocol::{
    CONTRACT_PROTOCOL, ContractRequest, ContractResponse, DATA_PROTOCOL, DataRequest, DataResponse, IDENTIFY_PROTOCOL,
    KAD_PROTOCOL, MAX_CONTRACT_REQUEST, MAX_CONTRACT_RESPONSE, MAX_DATA_MESSAGE, MAX_GOSSIP,
};
use backon::Retryable;
use futures::StreamExt;
use libp2p::core::{muxing::StreamMuxerBox, transport::OrTransport, upgrade};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, Swarm, Transport, allow_block_list, autonat, connection_limits, dcutr, dns, gossipsub, identify,
    kad, mdns, multiaddr::Protocol, noise, ping, quic, relay, tcp, upnp, yamux,
};
use reach::{ConnInfo, Reach, Reachability};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Timeout of one data request, seconds: a 34 MiB pack sharing a 10 Mbit/s uplink with
/// the other uploads of a backup (4 packs × 3 copies) needs minutes, not seconds.
pub const DATA_TIMEOUT_SECS: u64 = 600;
/// Timeout of one contract request, seconds.
pub const CONTRACT_TIMEOUT_SECS: u64 = 20;
/// Data streams (inbound and outbound) open at once per connection (libp2p request-response).
pub const MAX_CONCURRENT_STREAMS: usize = 4;
/// Attempts of a small request while every stream to the peer is busy.
pub const SATURATED_RETRIES: u32 = 12;
/// First pause before such a retry; it doubles, up to 1 s (about 8 s in all).
pub const SATURATED_PAUSE: Duration = Duration::from_millis(50);

/// The pauses between attempts of a request that found every stream to its peer busy
/// (protocol.md §1.7): [`SATURATED_PAUSE`] doubling to at most 1 s, for `attempts` in all
/// (at least one).
fn saturated_backoff(attempts: u32) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(SATURATED_PAUSE)
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(attempts.saturating_sub(1) as usize)
}
/// Bytes of inbound data requests being read at once, all peers together.
pub const INBOUND_READ_BUDGET: u64 = 256 << 20;
/// Events queued for the daemon at most; past it inbound requests are dropped.
pub const EVENT_QUEUE: usize = 8;
/// Connected peers we dial toward through Kademlia discovery, by default
/// (`[network] target_peers`); above half as many again, connections are trimmed back to
/// it ([`trim`]).
pub const TARGET_PEERS: usize = 16;
/// Malformed inputs (undecodable requests, gossip that fails validation) a peer may send
/// before it is blocked.
pub const STRIKES_TO_BLOCK: u32 = 8;
/// How long a blocked peer stays blocked, seconds.
pub const BLOCK_SECS: u64 = 600;
/// How long a data request waits for a direct connection to its peer (a dial, a hole
/// punch, a Kademlia lookup of the peer's new address) before it fails with
/// [`NetError::NotDirect`].
pub const DIRECT_WAIT: Duration = Duration::from_secs(20);
/// How long one direct dial (connect, Noise, Yamux) may take: shorter than an AutoNAT v2
/// server's 10 s for a dial-back.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(8);
/// Connections to one peer at most.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 8;
/// How long a relayed connection stays open once a direct one to the same peer exists.
pub const RELAYED_GRACE: Duration = Duration::from_secs(3);
/// How often Kademlia refreshes its routing table (libp2p's periodic bootstrap), seconds.
pub const KAD_REFRESH_SECS: u64 = 3600;
/// How often a record held for another peer is replicated to the closest peers, seconds.
pub const KAD_REPLICATION_SECS: u64 = 6 * 3600;
/// First wait between lookups for more peers while the routing table is small (5 s;
/// protocol.md §1.5); the wait doubles up to [`LOOKUP_MOST`].
pub const LOOKUP_FIRST: Duration = Duration::from_secs(5);
/// Longest wait between lookups for more peers while the routing table is small (320 s).
pub const LOOKUP_MOST: Duration = Duration::from_secs(320);
/// Kademlia lookups of one unreachable peer's addresses at most this often.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(10);

type ContractBehaviour = request_response::Behaviour<CborCodec<ContractRequest, ContractResponse>>;
type DataBehaviour = request_response::Behaviour<CborCodec<DataRequest, DataResponse>>;

/// The composed behaviour (private: its generated event enum is an implementation detail).
#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    contract: ContractBehaviour,
    data: DataBehaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    autonat_v1: autonat::v1::Behaviour,
    autonat_client: autonat::v2::client::Behaviour,
    autonat_server: autonat::v2::server::Behaviour,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    upnp: Toggle<upnp::tokio::Behaviour>,
}

/// Errors of network operations.
#[derive(Debug, thiserror::Error, Clone)]
pub enum NetError {
    /// A request to a peer failed: unreachable, timed out (maybe processed), or refused the protocol.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// libp2p's reason.
        reason: String,
    },
    /// Every stream of the connection to the peer is in use (request-response
    /// `max_concurrent_streams`): nothing was sent; try again shortly.
    #[error("all streams to {0} are busy")]
    Saturated(PeerId),
    /// No direct connection to the peer could be had within [`DIRECT_WAIT`]: data goes over
    /// direct connections only (protocol.md §1.10). Nothing was sent.
    #[error("{peer} is {}", if *relayed { "reachable only through a relay (hole punching failed)" } else { "unreachable" })]
    NotDirect {
        /// The peer.
        peer: PeerId,
        /// True when a relayed connection to it is open.
        relayed: bool,
    },
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// Publishing or dialing failed.
    #[error("{0}")]
    Other(String),
}

/// What the daemon is told.
pub enum NetEvent {
    /// A new listen address, with `/p2p/<PeerId>` appended.
    Listening(Multiaddr),
    /// A gossip message on one of our proposal shards' topics (protocol.md §1.6),
    /// awaiting our validation ([`NetHandle::validate`]).
    Proposal {
        /// gossipsub message id.
        id: gossipsub::MessageId,
        /// The peer that forwarded it.
        source: PeerId,
        /// The topic it came on (`peer/proposals/2/<bits>/<prefix>`).
        topic: String,
        /// The message data.
        data: Vec<u8>,
    },
    /// A gossip message on the evidence topic (protocol.md §5.10), awaiting validation.
    Evidence {
        /// gossipsub message id.
        id: gossipsub::MessageId,
        /// The peer that forwarded it.
        source: PeerId,
        /// The message data.
        data: Vec<u8>,
    },
    /// An inbound contract request.
    Contract {
        /// The requester.
        peer: PeerId,
        /// The request.
        request: ContractRequest,
        /// Where the answer goes ([`NetHandle::respond_contract`]).
        channel: ResponseChannel<ContractResponse>,
    },
    /// An inbound data request.
    Data {
        /// The requester.
        peer: PeerId,
        /// The request.
        request: DataRequest,
        /// Where the answer goes ([`NetHandle::respond_data`]).
        channel: ResponseChannel<DataResponse>,
    },
}

/// A snapshot of the network state for `peer status`.
#[derive(Clone, Debug)]
pub struct NetStatus {
    /// Our listen addresses (without `/p2p`).
    pub listen: Vec<Multiaddr>,
    /// Peers with an open connection, direct or relayed.
    pub connected: Vec<PeerId>,
    /// Peers with a direct connection and no relayed one: bulk data can go to them now.
    pub direct: Vec<PeerId>,
    /// Peers connected only through relays whose hole punch is still under way.
    pub punching: Vec<PeerId>,
    /// Public, private or unknown (AutoNAT v2).
    pub reachability: Reachability,
    /// Our confirmed external addresses (without `/p2p`).
    pub external: Vec<Multiaddr>,
    /// Relays we hold reservations on.
    pub relays: Vec<PeerId>,
    /// Every open connection.
    pub connections: Vec<Connection>,
    /// The network's size as estimated from our routing table (protocol.md §1.6).
    pub estimated_peers: u64,
    /// Our proposal shard at the prefix length that estimate gives.
    pub shard: shard::Shard,
}

/// One open connection, for `peer status`.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The remote peer.
    pub peer: PeerId,
    /// Its address (a circuit address when relayed).
    pub addr: Multiaddr,
    /// Through a relay.
    pub relayed: bool,
    /// TCP or QUIC.
    pub transport: reach::Transport,
}

enum Command {
    Propose(Vec<u8>, u32, oneshot::Sender<Result<(), NetError>>),
    PublishEvidence(Vec<u8>, oneshot::Sender<Result<(), NetError>>),
    Validate(gossipsub::MessageId, PeerId, gossipsub::MessageAcceptance),
    Contract(PeerId, Vec<Multiaddr>, ContractRequest, oneshot::Sender<Result<ContractResponse, NetError>>),
    Data(PeerId, Vec<Multiaddr>, DataRequest, oneshot::Sender<Result<DataResponse, NetError>>),
    RespondContract(ResponseChannel<ContractResponse>, ContractResponse),
    RespondData(ResponseChannel<DataResponse>, DataResponse),
    Status(oneshot::Sender<NetStatus>),
    Sendable(Vec<PeerId>, oneshot::Sender<Vec<PeerId>>),
    Dial(PeerId, Vec<Multiaddr>),
    Keep(Vec<PeerId>),
    PutRecord(Vec<u8>, Vec<u8>),
    GetRecord(Vec<u8>, oneshot::Sender<Vec<Vec<u8>>>),
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable handle to the network task.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    /// This peer's id.
    pub peer_id: PeerId,
    advertised: Arc<RwLock<Vec<Multiaddr>>>,
    limits: throttle::Limits,
    /// The network task, joined by [`NetHandle::shutdown`].
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl NetHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Publishes proposal `data` (protocol.md §4.1), the `attempt`-th (0 first) of one
    /// search for providers: in our own shard first, then in others (§1.6). Errors when no
    /// peer of that shard is known yet (`InsufficientPeers`).
    pub async fn propose(&self, data: Vec<u8>, attempt: u32) -> Result<(), NetError> {
        self.call(|tx| Command::Propose(data, attempt, tx)).await?
    }

    /// Publishes `data` on the evidence topic (protocol.md §5.10).
    pub async fn publish_evidence(&self, data: Vec<u8>) -> Result<(), NetError> {
        self.call(|tx| Command::PublishEvidence(data, tx)).await?
    }

    /// Sets the peers never disconnected to bound the number of connections (the daemon's
    /// contract partners; protocol.md §1.9). Replaces the previous set.
    pub async fn keep(&self, peers: Vec<PeerId>) {
        let _ = self.tx.send(Command::Keep(peers)).await;
    }

    /// Reports our verdict on a gossip message; only accepted ones are forwarded.
    pub async fn validate(&self, id: gossipsub::MessageId, source: PeerId, accept: bool) {
        let a = if accept { gossipsub::MessageAcceptance::Accept } else { gossipsub::MessageAcceptance::Reject };
        let _ = self.tx.send(Command::Validate(id, source, a)).await;
    }

    /// Neither accepts nor rejects a gossip message: it is not forwarded, and its
    /// forwarder gets no strike (used when over a rate, not for bad messages).
    pub async fn ignore(&self, id: gossipsub::MessageId, source: PeerId) {
        let _ = self.tx.send(Command::Validate(id, source, gossipsub::MessageAcceptance::Ignore)).await;
    }

    /// Sends a contract request, dialing `addrs` if not connected.
    pub async fn contract_request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        req: ContractRequest,
    ) -> Result<ContractResponse, NetError> {
        let attempt = || async { self.call(|tx| Command::Contract(peer, addrs.clone(), req.clone(), tx)).await? };
        attempt.retry(saturated_backoff(SATURATED_RETRIES)).when(|e| matches!(e, NetError::Saturated(_))).await
    }

    /// Sends a data request, dialing `addrs` (and addresses known to Kademlia) if not connected.
    pub async fn data_request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        req: DataRequest,
    ) -> Result<DataResponse, NetError> {
        // Small requests wait for a free stream here; the large ones (a pack, a claim block,
        // a head) come back `Saturated` to their caller, which rebuilds them to retry.
        let large = matches!(req, DataRequest::Store { .. } | DataRequest::StoreClaim { .. } | DataRequest::PutHead(_));
        let attempts = if large { 1 } else { SATURATED_RETRIES };
        let attempt = || async { self.call(|tx| Command::Data(peer, addrs.clone(), req.clone(), tx)).await? };
        attempt.retry(saturated_backoff(attempts)).when(|e| matches!(e, NetError::Saturated(_))).await
    }

    /// Answers an inbound contract request.
    pub async fn respond_contract(&self, ch: ResponseChannel<ContractResponse>, resp: ContractResponse) {
        let _ = self.tx.send(Command::RespondContract(ch, resp)).await;
    }

    /// Answers an inbound data request.
    pub async fn respond_data(&self, ch: ResponseChannel<DataResponse>, resp: DataResponse) {
        let _ = self.tx.send(Command::RespondData(ch, resp)).await;
    }

    /// What we tell others to dial (protocol.md §1.10): confirmed external addresses, then
    /// circuit addresses through our relays, each with `/p2p/<our PeerId>`; empty while
    /// neither is known.
    pub fn advertised(&self) -> Vec<Multiaddr> {
        self.advertised.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Holds everything this daemon sends at most at `up_kib` KiB/s and everything it
    /// receives at most at `down_kib` KiB/s (0 = no change) until the guards are dropped:
    /// a command's `--limit-upload` / `--limit-download` (see [`throttle`]).
    pub fn limit_while(
        &self,
        up_kib: u64,
        down_kib: u64,
    ) -> (Option<throttle::RateGuard>, Option<throttle::RateGuard>) {
        (self.limits.up.limit_while(up_kib), self.limits.down.limit_while(down_kib))
    }

    /// Listen addresses and connected peers.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.call(Command::Status).await
    }

    /// Those of `peers` that a data request would reach at once: a direct connection is
    /// open and no relayed one (protocol.md §1.10). Empty when the network task stopped.
    pub async fn sendable(&self, peers: Vec<PeerId>) -> Vec<PeerId> {
        self.call(|tx| Command::Sendable(peers, tx)).await.unwrap_or_default()
    }

    /// Dials `peer` (at `addrs` and the addresses Kademlia knows) unless connected. A peer
    /// connected only through relays whose hole punch failed or never ended a while ago
    /// ([`reach::Reach::retry_punch`]) is given a new relayed connection and a new punch
    /// (for a client waiting for providers, protocol.md §1.10).
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self.tx.send(Command::Dial(peer, addrs)).await;
    }

    /// Stores a record in the DHT (and locally), under `key`, replacing older ones. The
    /// daemon checks it first; peers check it again on arrival (protocol.md §1.5).
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) {
        let _ = self.tx.send(Command::PutRecord(key, value)).await;
    }

    /// Every value the DHT holds under `key` (unchecked; empty when none was found within
    /// the query timeout).
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, NetError> {
        self.call(|tx| Command::GetRecord(key, tx)).await
    }

    /// Stops the network task and waits until it has ended (its Swarm, and with it every
    /// connection and listener, dropped). Later calls return at once.
    pub async fn shutdown(&self) {
        let _ = self.call(Command::Shutdown).await;
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!("the network task failed: {e}");
        }
    }
}

/// Settings for [`start`].
pub struct NetConfig {
    /// Multiaddrs to listen on.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap multiaddrs ending in `/p2p/<PeerId>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers known from earlier runs (our contract partners) and their last addresses:
    /// added to Kademlia and dialed at start, so a restarted daemon finds its network again.
    pub known: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Enable mDNS.
    pub mdns: bool,
    /// Total connection cap.
    pub max_connections: u32,
    /// Connected peers to dial toward, and to trim back to ([`trim`]).
    pub target_peers: usize,
    /// Peers per proposal shard aimed at ([`shard`]).
    pub shard_peers: u64,
    /// `network.global_addresses_only`.
    pub global_only: bool,
    /// Try UPnP port mapping.
    pub upnp: bool,
    /// Serve circuit relay v2 with these bounds (`None`: do not serve).
    pub relay: Option<crate::config::RelayConfig>,
    /// Bandwidth limits for everything sent and received.
    pub limits: throttle::Limits,
    /// libp2p's metrics (served at the dashboard's `/metrics`), fed every Swarm event.
    pub metrics: Option<Arc<libp2p::metrics::Metrics>>,
}

/// Builds the Swarm, starts listening, and spawns the event loop.
/// Returns the handle and the event stream (bounded: [`EVENT_QUEUE`] events).
pub fn start(
    keypair: libp2p::identity::Keypair,
    cfg: NetConfig,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let other = |e: &dyn std::fmt::Display| NetError::Other(e.to_string());
    let peer_id = keypair.public().to_peer_id();
    let limits = cfg.limits.clone();
    let metrics = cfg.metrics.clone();
    let (transport, relay_client) = build_transport(&keypair, &limits).map_err(|e| other(&e))?;
    let behaviour = build_behaviour(&keypair, &cfg, relay_client).map_err(|e| other(&e))?;
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(300)),
    );
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    let evidence_topic = gossipsub::IdentTopic::new(crate::protocol::EVIDENCE_TOPIC);
    swarm.behaviour_mut().gossipsub.subscribe(&evidence_topic).map_err(|e| other(&e))?;
    let loopback_only = cfg.listen.iter().all(is_loopback);
    for a in &cfg.listen {
        swarm.listen_on(a.clone()).map_err(|e| NetError::Other(format!("cannot listen on {a}: {e}")))?;
    }
    // Dialed once the listeners they leave from are up (InitialDials).
    let listen_transports: Vec<reach::Transport> = cfg.listen.iter().map(reach::transport_of).collect();
    let mut initial_dials = InitialDials { due: Vec::new(), since: Instant::now(), listen_transports };
    let mut reach = Reach::new(peer_id, cfg.global_only);
    for a in &cfg.bootstrap {
        reach.bootstrap(a);
        let peer = match a.iter().last() {
            Some(Protocol::P2p(peer)) => Some(peer),
            _ => None,
        };
        initial_dials.due.push((peer, vec![a.clone()]));
    }
    for (peer, addrs) in cfg.known {
        initial_dials.due.push((Some(peer), addrs));
    }
    let (tx, rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let advertised = Arc::new(RwLock::new(Vec::new()));
    let lp = EventLoop {
        swarm,
        commands: rx,
        events: ev_tx,
        shards: proposals::Shards::new(shard::key(&peer_id), cfg.shard_peers),
        evidence_topic,
        pending_contract: HashMap::new(),
        pending_data: HashMap::new(),
        pending_get: HashMap::new(),
        strikes: HashMap::new(),
        blocked: HashMap::new(),
        last_lookup: Instant::now().checked_sub(LOOKUP_FIRST).unwrap_or_else(Instant::now),
        lookup_every: LOOKUP_FIRST,
        reach,
        advertised: advertised.clone(),
        waiting: HashMap::new(),
        redial: HashMap::new(),
        lookups: HashMap::new(),
        looked_up: HashMap::new(),
        relay_listeners: HashMap::new(),
        initial_dials,
        closing: Vec::new(),
        loopback_only,
        metrics,
        target_peers: cfg.target_peers.max(1),
        keep: HashSet::new(),
        last_used: HashMap::new(),
    };
    let task = Arc::new(std::sync::Mutex::new(Some(tokio::spawn(lp.run()))));
    Ok((NetHandle { tx, peer_id, advertised, limits, task }, ev_rx))
}

/// The bootstrap and known peers to dial at start, each once its dial can leave from one
/// of our listen ports (libp2p's port reuse): a TCP dial made before the TCP listener has
/// its addresses leaves from an ephemeral port instead, and libp2p's identify then hands
/// hole punching (DCUtR) the address others observe for it, an ephemeral port no punch can
/// reach, as our own (protocol.md §1.10). A QUIC listener coming up first is not enough
/// for a TCP bootstrap address; and Kademlia is told of these peers only when they are
/// dialed, or it would dial them first.
struct InitialDials {
    /// Not dialed yet: a PeerId when known, and its addresses.
    due: Vec<(Option<PeerId>, Vec<Multiaddr>)>,
    /// When the network task started.
    since: Instant,
    /// The transports of our configured listen addresses.
    listen_transports: Vec<reach::Transport>,
}

/// Longest wait for the listeners before the initial dials go anyway (a listener that
/// never comes up must not keep us from the network).
const LISTEN_WAIT: Duration = Duration::from_secs(5);

impl InitialDials {
    /// Takes the dials that may go now: every transport among their addresses that we
    /// listen on has a listen address up (`listening`: the transports of those up), or
    /// [`LISTEN_WAIT`] has passed since the start.
    fn ready(&mut self, listening: &[reach::Transport], now: Instant) -> Vec<(Option<PeerId>, Vec<Multiaddr>)> {
        let late = now.duration_since(self.since) >= LISTEN_WAIT;
        let ok = |a: &Multiaddr| {
            let t = reach::transport_of(a);
            !self.listen_transports.contains(&t) || listening.contains(&t)
        };
        let (go, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.due).into_iter().partition(|(_, addrs)| late || addrs.iter().all(ok));
        self.due = wait;
        go
    }
}

/// True when the address's IP is a loopback one.
fn is_loopback(a: &Multiaddr) -> bool {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

type BoxedTransport = libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>;

/// TCP (Noise, Yamux) and QUIC, with DNS, each connection's muxer under the bandwidth
/// limits; beside them the relay client transport for `/p2p-circuit` addresses (its bytes
/// travel inside a connection to the relay, so they are limited there).
fn build_transport(
    key: &libp2p::identity::Keypair,
    limits: &throttle::Limits,
) -> Result<(BoxedTransport, relay::client::Behaviour), Box<dyn std::error::Error + Send + Sync>> {
    let (l1, l2) = (limits.clone(), limits.clone());
    // SO_LINGER 0 (set on the listening socket, inherited by the accepted ones): closing a
    // TCP connection resets it and frees its pair of ports at once, instead of leaving an
    // orphan socket retransmitting its FIN for minutes, or in TIME-WAIT. A hole punch must
    // leave from the listen port, often towards the very address and port of a connection
    // that just died (a home router renumbered), so that pair must be free (protocol.md
    // §1.10). A connection is closed when idle, dead, trimmed or replaced, and in none of
    // these cases does a byte still unsent matter. go-libp2p's TCP transport sets linger 0
    // for the same reason.
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true).linger(Some(Duration::ZERO)))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(move |(p, m), _| (p, l1.wrap(StreamMuxerBox::new(m))));
    let quic =
        quic::tokio::Transport::new(quic::Config::new(key)).map(move |(p, m), _| (p, l2.wrap(StreamMuxerBox::new(m))));
    // A dial that gets no answer (a NAT dropping it) fails after DIAL_TIMEOUT rather than
    // the OS's minutes, so that an AutoNAT dial-back can report "unreachable" in time.
    let direct = libp2p::core::transport::timeout::TransportTimeout::new(
        dns::tokio::Transport::system(OrTransport::new(quic, tcp).map(|e, _| e.into_inner()))?,
        DIAL_TIMEOUT,
    );
    let (relay_transport, relay_client) = relay::client::new(key.public().to_peer_id());
    let relayed = relay_transport
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
    let all = OrTransport::new(relayed, direct).map(|e, _| e.into_inner()).boxed();
    Ok((all, relay_client))
}

/// Kademlia for `peer_id` (protocol.md §1.5): [`KAD_PROTOCOL`], 30-s queries, slower
/// refresh and replication than libp2p's defaults, and inbound records filtered by us.
fn kademlia(peer_id: PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut kcfg = kad::Config::new(KAD_PROTOCOL);
    kcfg.set_query_timeout(Duration::from_secs(30));
    // The Kademlia paper's bucket refresh interval (libp2p's default is 5 minutes): every
    // lookup of a refresh connects to each peer it asks, which at 100,000 peers would cost
    // each peer far more than the DHT is worth here (protocol.md §1.5).
    kcfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(KAD_REFRESH_SECS)));
    // A head record held for another peer is sent again to the closest peers every 6 hours
    // (libp2p's default: every hour). Each replication is a lookup and 20 puts, and each
    // peer holds about 20 records; the record's publisher puts it again every 6 hours too.
    kcfg.set_replication_interval(Some(Duration::from_secs(KAD_REPLICATION_SECS)));
    // Inbound records are checked by us before they are stored (only head records,
    // correctly signed, newer than the one held): see `EventLoop::accept_record`.
    kcfg.set_record_filtering(kad::StoreInserts::FilterBoth);
    kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kcfg)
}

fn build_behaviour(
    key: &libp2p::identity::Keypair,
    cfg: &NetConfig,
    relay_client: relay::client::Behaviour,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let kad = kademlia(peer_id);
    // Only confirmed external and circuit addresses are told to others (protocol.md §1.10):
    // listen addresses such as 0.0.0.0 or a home LAN's are useless or misleading elsewhere.
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
            .with_agent_version(format!("peer/{}", env!("CARGO_PKG_VERSION")))
            .with_hide_listen_addrs(true),
    );
    let mdns = if cfg.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(cfg.max_connections))
            // A direct connection, a relayed one being replaced, a hole punch's, and the
            // AutoNAT dial-backs (v1 and v2 each open one, kept until idle).
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_pending_incoming(Some(64)),
    );
    let relay_server = cfg.relay.as_ref().map(|r| relay_server(peer_id, r));
    Ok(Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        limits,
        identify,
        // A dead connection (a router that lost its NAT state) is noticed within 20 s.
        ping: ping::Behaviour::new(
            ping::Config::new().with_interval(Duration::from_secs(10)).with_timeout(Duration::from_secs(10)),
        ),
        kad,
        gossipsub: gossip(key)?,
        contract: request_response::Behaviour::with_codec(
            CborCodec::new(MAX_CONTRACT_REQUEST, MAX_CONTRACT_RESPONSE),
            [(CONTRACT_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(CONTRACT_TIMEOUT_SECS)),
        ),
        data: request_response::Behaviour::with_codec(
            CborCodec::new(MAX_DATA_MESSAGE, MAX_DATA_MESSAGE).with_budget(InboundBudget::new(INBOUND_READ_BUDGET)),
            [(DATA_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(DATA_TIMEOUT_SECS))
                .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
        ),
        mdns: mdns.into(),
        // v1 beside v2: v2 asks for dial-backs only over connections we opened, so a public
        // peer that others dial (a bootstrap) would never learn it is public from v2 alone.
        autonat_v1: autonat::v1::Behaviour::new(
            peer_id,
            autonat::v1::Config {
                boot_delay: Duration::from_secs(3),
                retry_interval: Duration::from_secs(20),
                throttle_server_period: Duration::from_secs(10),
                only_global_ips: cfg.global_only,
                ..Default::default()
            },
        ),
        autonat_client: autonat::v2::client::Behaviour::new(
            rand::make_rng::<rand::rngs::StdRng>(),
            autonat::v2::client::Config::default().with_probe_interval(Duration::from_secs(2)),
        ),
        autonat_server: autonat::v2::server::Behaviour::default(),
        relay_client,
        relay_server: relay_server.into(),
        dcutr: dcutr::Behaviour::new(peer_id),
        upnp: cfg.upnp.then(upnp::tokio::Behaviour::default).into(),
    })
}

/// Gossipsub with strict validation (protocol.md §1.6): signed messages only, each checked
/// by us before it is forwarded, ids the SHA-256 of the data.
fn gossip(key: &libp2p::identity::Keypair) -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let gcfg = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP)
        .heartbeat_interval(Duration::from_secs(1))
        .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::from(crate::id::sha256(&m.data).to_vec()))
        .build()?;
    Ok(gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)?)
}

/// Circuit relay v2 server within the `[relay]` bounds (protocol.md §1.10).
fn relay_server(peer_id: PeerId, r: &crate::config::RelayConfig) -> relay::Behaviour {
    relay::Behaviour::new(
        peer_id,
        relay::Config {
            max_reservations: r.max_reservations,
            reservation_duration: Duration::from_secs(r.reservation_secs),
            max_circuits: r.max_circuits,
            max_circuit_duration: Duration::from_secs(r.max_circuit_secs),
            max_circuit_bytes: r.max_circuit_bytes,
            ..Default::default()
        },
    )
}

/// Where the values found by a record lookup go.
type RecordReply = oneshot::Sender<Vec<Vec<u8>>>;
/// Where a data request's answer goes.
type DataReply = oneshot::Sender<Result<DataResponse, NetError>>;

/// A data request waiting for a direct connection to its peer.
struct Parked {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    request: DataRequest,
    reply: DataReply,
    until: Instant,
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    /// Our proposal shards and their topics (protocol.md §1.6).
    shards: proposals::Shards,
    /// The evidence topic (protocol.md §5.10).
    evidence_topic: gossipsub::IdentTopic,
    pending_contract: HashMap<OutboundRequestId, oneshot::Sender<Result<ContractResponse, NetError>>>,
    pending_data: HashMap<OutboundRequestId, DataReply>,
    /// Record lookups under way: values found so far and where the answer goes.
    pending_get: HashMap<kad::QueryId, (Vec<Vec<u8>>, RecordReply)>,
    /// Malformed inputs per peer.
    strikes: HashMap<PeerId, u32>,
    /// Blocked peers and when they were blocked.
    blocked: HashMap<PeerId, Instant>,
    /// When we last started a Kademlia lookup for more peers.
    last_lookup: Instant,
    /// Wait before the next such lookup while the routing table stays small
    /// ([`EventLoop::keep_looking`]).
    lookup_every: Duration,
    /// Reachability, relays, and which connections are direct.
    reach: Reach,
    /// What [`NetHandle::advertised`] reads.
    advertised: Arc<RwLock<Vec<Multiaddr>>>,
    /// Data requests waiting for a direct connection, per peer.
    waiting: HashMap<PeerId, Vec<Parked>>,
    /// Peers whose relayed connections we closed for a new hole punch, with the addresses
    /// to dial them at once they are gone ([`EventLoop::punch_again`]).
    redial: HashMap<PeerId, Vec<Multiaddr>>,
    /// Kademlia lookups of a peer's addresses under way.
    lookups: HashMap<kad::QueryId, PeerId>,
    /// When each peer was last looked up.
    looked_up: HashMap<PeerId, Instant>,
    /// Our listeners on relays (`/p2p-circuit`), by relay.
    relay_listeners: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    /// Relayed connections to close, and when (a direct one to the same peer exists).
    closing: Vec<(ConnectionId, Instant)>,
    /// Bootstrap and known peers, dialed once we listen.
    initial_dials: InitialDials,
    /// Every configured listen address is a loopback one (a local test network).
    loopback_only: bool,
    /// libp2p's metrics, if served.
    metrics: Option<Arc<libp2p::metrics::Metrics>>,
    /// Connected peers to dial toward and trim back to.
    target_peers: usize,
    /// Peers never trimmed: the daemon's contract partners ([`NetHandle::keep`]).
    keep: HashSet<PeerId>,
    /// When each connected peer last sent or answered a request.
    last_used: HashMap<PeerId, Instant>,
}

impl EventLoop {
    async fn run(mut self) {
        // Our shards' topics from the start, so that peers connecting now learn them with
        // our first subscriptions rather than a tick later.
        self.reshard();
        let mut bootstrap = tokio::time::interval(Duration::from_secs(30));
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(done)) => { let _ = done.send(()); return; }
                    Some(c) => self.on_command(c),
                    None => return,
                },
                _ = bootstrap.tick() => {
                    self.shards.stale = true;
                    self.connect_more();
                    self.unblock_expired();
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn emit(&self, ev: NetEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(ev) {
            tracing::warn!("daemon busy: dropped an inbound message");
        }
    }

    /// Dials the bootstrap and known peers whose dials can now leave from a listen port
    /// ([`InitialDials`]), each once.
    fn initial_dials(&mut self) {
        let listening: Vec<reach::Transport> =
            self.swarm.listeners().filter(|a| self.loopback_only || !is_loopback(a)).map(reach::transport_of).collect();
        for (peer, addrs) in self.initial_dials.ready(&listening, Instant::now()) {
            // Kademlia learns the addresses only now: it would dial them itself at once.
            if let Some(peer) = peer {
                for a in &addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
                }
            }
            let opts = match peer {
                // By PeerId, so that a Kademlia dial of the same peer at the same moment
                // is not a second connection (whose port reuse would fail: same 4-tuple).
                Some(peer) => libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build(),
                None => match addrs.into_iter().next() {
                    Some(a) => libp2p::swarm::dial_opts::DialOpts::unknown_peer_id().address(a).build(),
                    None => continue,
                },
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::warn!("cannot dial a bootstrap or known peer: {e}");
            }
        }
    }

    /// Once a second: relay reservations kept or given up, waiting data requests expired.
    fn on_tick(&mut self) {
        self.initial_dials();
        self.reshard();
        self.keep_looking();
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.closing).into_iter().partition(|(_, t)| *t <= now);
        self.closing = later;
        for (c, _) in due {
            self.swarm.close_connection(c);
        }
        if self.reach.drop_relays() {
            let ids: Vec<_> = self.relay_listeners.keys().copied().collect();
            for id in ids {
                self.swarm.remove_listener(id);
            }
        }
        for (relay, addr) in self.reach.relays_to_dial() {
            if self.swarm.is_connected(&relay) {
                continue;
            }
            self.dial(relay, vec![addr]);
        }
        for (relay, addr) in self.reach.relays_to_reserve() {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    tracing::info!("asking {relay} for a relay reservation");
                    self.relay_listeners.insert(id, relay);
                    self.reach.reserving(relay);
                }
                Err(e) => tracing::debug!("cannot reserve on {addr}: {e}"),
            }
        }
        let now = Instant::now();
        let peers: Vec<PeerId> = self.waiting.keys().copied().collect();
        for peer in peers {
            let relayed = self.reach.relayed_only(&peer);
            // A relayed connection whose hole punch failed will not become direct: fail now.
            let hopeless = relayed && !self.reach.punching(&peer, now);
            if let Some(list) = self.waiting.get_mut(&peer) {
                let (expired, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(list).into_iter().partition(|p| hopeless || p.until <= now);
                *list = kept;
                for p in expired {
                    let _ = p.reply.send(Err(NetError::NotDirect { peer, relayed }));
                }
                if list.is_empty() {
                    self.waiting.remove(&peer);
                }
            }
        }
        self.publish_addresses();
        self.trim();
    }

    /// Closes the connections to the least needed peers once more than
    /// [`trim::high`]`(target_peers)` are connected ([`trim`]).
    fn trim(&mut self) {
        let connected = self.swarm.connected_peers().count();
        if connected <= trim::high(self.target_peers) {
            return;
        }
        let mesh: HashSet<PeerId> = self.swarm.behaviour().gossipsub.all_mesh_peers().copied().collect();
        let relays: HashSet<PeerId> = self.reach.relays().into_iter().collect();
        let mut since: HashMap<PeerId, Instant> = HashMap::new();
        for c in self.reach.connections() {
            let t = since.entry(c.peer).or_insert(c.since);
            *t = (*t).min(c.since);
        }
        let now = Instant::now();
        let candidates: Vec<trim::Candidate> = self
            .swarm
            .connected_peers()
            .map(|p| trim::Candidate {
                peer: *p,
                since: since.get(p).copied().unwrap_or(now),
                last_used: self.last_used.get(p).copied(),
                mesh: mesh.contains(p),
                keep: self.keep.contains(p) || relays.contains(p) || self.waiting.contains_key(p),
            })
            .collect();
        let closing = trim::to_close(&candidates, self.target_peers, now);
        if !closing.is_empty() {
            tracing::debug!("{connected} peers connected: closing the connections to {} of them", closing.len());
        }
        for p in closing {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// Updates what [`NetHandle::advertised`] returns; when it changed, tells every
    /// connected peer at once (identify push), so that relays and contract partners learn
    /// our new addresses without waiting for the next identify round.
    fn publish_addresses(&mut self) {
        let now = self.reach.advertised();
        {
            let Ok(mut a) = self.advertised.write() else { return };
            if *a == now {
                return;
            }
            tracing::info!(
                "reachability {}; advertising {}",
                self.reach.reachability(),
                now.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            );
            *a = now;
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        self.swarm.behaviour_mut().identify.push(peers);
    }

    fn on_command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Propose(data, attempt, reply) => {
                let _ = reply.send(self.publish_proposal(data, attempt));
            }
            Command::PublishEvidence(data, reply) => {
                let r = b
                    .gossipsub
                    .publish(self.evidence_topic.clone(), data)
                    .map(|_| ())
                    .map_err(|e| NetError::Other(format!("cannot publish: {e}")));
                let _ = reply.send(r);
            }
            Command::Validate(id, source, acc) => {
                let rejected = matches!(acc, gossipsub::MessageAcceptance::Reject);
                b.gossipsub.report_message_validation_result(&id, &source, acc);
                if rejected {
                    self.strike(source, "gossip that fails validation");
                }
            }
            Command::Contract(peer, addrs, req, reply) => {
                self.last_used.insert(peer, Instant::now());
                let addrs = self.dialable(addrs);
                let id = self.swarm.behaviour_mut().contract.send_request_with_addresses(
                    &peer,
                    Inbound::Request(req),
                    addrs,
                );
                self.pending_contract.insert(id, reply);
            }
            Command::Data(peer, addrs, request, reply) => {
                self.last_used.insert(peer, Instant::now());
                let addrs = self.dialable(addrs);
                self.send_data(Parked { peer, addrs, request, reply, until: Instant::now() + DIRECT_WAIT });
            }
            Command::RespondContract(ch, r) => {
                let _ = b.contract.send_response(ch, r);
            }
            Command::RespondData(ch, r) => {
                let _ = b.data.send_response(ch, r);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Sendable(peers, reply) => {
                let _ = reply.send(peers.into_iter().filter(|p| self.reach.sendable(p)).collect());
            }
            Command::Dial(peer, addrs) => {
                let addrs = self.dialable(addrs);
                if !self.swarm.is_connected(&peer) {
                    self.dial(peer, addrs);
                } else if self.reach.relayed_only(&peer) && self.reach.retry_punch(&peer, Instant::now(), true) {
                    self.punch_again(peer, addrs);
                }
            }
            Command::Keep(peers) => self.keep = peers.into_iter().collect(),
            Command::PutRecord(key, value) => {
                let record = kad::Record::new(key, value);
                if let Err(e) = b.kad.put_record(record, kad::Quorum::One) {
                    tracing::warn!("cannot store a record: {e}");
                }
            }
            Command::GetRecord(key, reply) => {
                let id = b.kad.get_record(kad::RecordKey::new(&key));
                self.pending_get.insert(id, (Vec::new(), reply));
            }
            Command::Shutdown(_) => {}
        }
    }

    /// The addresses worth dialing among `addrs` (routable ones).
    fn dialable(&self, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        addrs.into_iter().filter(|a| self.reach.routable(a)).collect()
    }

    fn status(&self) -> NetStatus {
        let now = Instant::now();
        let connected: Vec<PeerId> = self.swarm.connected_peers().cloned().collect();
        let mut connections: Vec<Connection> = self
            .reach
            .connections()
            .map(|c| Connection { peer: c.peer, addr: c.addr.clone(), relayed: c.relayed, transport: c.transport })
            .collect();
        connections.sort_by_key(|c| (c.peer, c.relayed));
        NetStatus {
            listen: self.swarm.listeners().cloned().collect(),
            direct: connected.iter().filter(|p| self.reach.sendable(p)).copied().collect(),
            punching: connected.iter().filter(|p| self.reach.punching(p, now)).copied().collect(),
            connected,
            reachability: self.reach.reachability(),
            external: self.reach.external().to_vec(),
            relays: self.reach.relays(),
            connections,
            estimated_peers: self.shards.estimated,
            shard: self.shards.own,
        }
    }

    /// Sends a data request now if `p.peer` has a direct connection; otherwise parks it
    /// until one comes (a dial, a hole punch) or [`DIRECT_WAIT`] passes.
    fn send_data(&mut self, p: Parked) {
        let peer = p.peer;
        if self.reach.sendable(&peer) {
            let id = self.swarm.behaviour_mut().data.send_request_with_addresses(
                &peer,
                Inbound::Request(p.request),
                p.addrs,
            );
            self.pending_data.insert(id, p.reply);
            return;
        }
        if !self.swarm.is_connected(&peer) {
            self.dial(peer, p.addrs.clone());
        } else if self.reach.relayed_only(&peer) && self.reach.retry_punch(&peer, Instant::now(), false) {
            // Only after a reported failure: a new relayed connection every 45 s, for a
            // punch the peer leads, kept a renumbered peer from ever punching through.
            self.punch_again(peer, p.addrs.clone());
        }
        self.waiting.entry(peer).or_default().push(p);
    }

    /// Hole punching to `peer` failed (or never ended) a while ago: its relayed
    /// connections are closed and it is dialed again at `addrs` once they are, so that a
    /// new relayed connection gets a new attempt (protocol.md §1.10).
    fn punch_again(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        tracing::debug!("trying to hole punch to {peer} again");
        for c in self.reach.relayed_conns(&peer) {
            self.swarm.close_connection(c);
        }
        self.redial.insert(peer, addrs);
    }

    /// Sends the data requests parked for `peer` once it is sendable.
    fn flush(&mut self, peer: PeerId) {
        if !self.reach.sendable(&peer) {
            return;
        }
        for p in self.waiting.remove(&peer).unwrap_or_default() {
            self.send_data(p);
        }
    }

    /// Dials `peer` at `addrs` and the addresses Kademlia knows.
    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!("cannot dial {peer}: {e}");
        }
    }

    /// Looks `peer` up by PeerId in Kademlia (its addresses may have changed), at most once
    /// per [`LOOKUP_EVERY`].
    fn look_up(&mut self, peer: PeerId) {
        if self.looked_up.get(&peer).is_some_and(|t| t.elapsed() < LOOKUP_EVERY) {
            return;
        }
        if self.looked_up.len() > 10_000 {
            self.looked_up.retain(|_, t| t.elapsed() < LOOKUP_EVERY);
        }
        self.looked_up.insert(peer, Instant::now());
        let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.lookups.insert(id, peer);
    }

    /// Stores an inbound record only if it is a valid head record newer than the one held.
    fn accept_record(&mut self, source: PeerId, record: kad::Record) {
        use kad::store::RecordStore;
        let (_, new) = match crate::protocol::verify_head_record(record.key.as_ref(), &record.value) {
            Ok(v) => v,
            Err(e) => return self.strike(source, &format!("an invalid Kademlia record ({e})")),
        };
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let held = store
            .get(&record.key)
            .and_then(|r| crate::protocol::verify_head_record(r.key.as_ref(), &r.value).ok())
            .map(|(_, p)| p.seq);
        if held.is_some_and(|s| s > new.seq) {
            tracing::debug!("refused a head record from {source} older than the one held");
            return;
        }
        if let Err(e) = store.put(record) {
            tracing::debug!("cannot keep a record: {e}");
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::RoutingUpdated { peer, is_new_peer, .. } => {
                self.shards.stale = true;
                if is_new_peer {
                    self.lookup_every = LOOKUP_FIRST;
                    self.look_for_more();
                }
                self.dial_if_wanted(peer)
            }
            kad::Event::InboundRequest { request: kad::InboundRequest::PutRecord { source, record: Some(r), .. } } => {
                self.accept_record(source, r)
            }
            kad::Event::OutboundQueryProgressed { id, result: kad::QueryResult::GetRecord(r), step, .. } => {
                let done = step.last || !matches!(r, Ok(kad::GetRecordOk::FoundRecord(_)));
                if let Ok(kad::GetRecordOk::FoundRecord(pr)) = r
                    && let Some((found, _)) = self.pending_get.get_mut(&id)
                {
                    found.push(pr.record.value);
                }
                if done && let Some((found, reply)) = self.pending_get.remove(&id) {
                    let _ = reply.send(found);
                }
            }
            kad::Event::OutboundQueryProgressed { id, result: kad::QueryResult::GetClosestPeers(r), step, .. } => {
                let Some(&target) = self.lookups.get(&id) else { return };
                let found = match &r {
                    Ok(ok) => ok.peers.iter().find(|p| p.peer_id == target).map(|p| p.addrs.clone()),
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                        peers.iter().find(|p| p.peer_id == target).map(|p| p.addrs.clone())
                    }
                };
                if step.last || found.is_some() {
                    self.lookups.remove(&id);
                }
                if let Some(addrs) = found {
                    let addrs = self.dialable(addrs);
                    tracing::debug!("found {target} through the DHT at {addrs:?}");
                    if !addrs.is_empty() && !self.swarm.is_connected(&target) {
                        self.dial(target, addrs);
                    }
                }
            }
            kad::Event::OutboundQueryProgressed { result: kad::QueryResult::PutRecord(Err(e)), .. } => {
                tracing::debug!("record not stored remotely: {e}")
            }
            _ => {}
        }
    }

    /// Every 30 s while fewer than `target_peers` are connected and the routing table knows
    /// at least [`kad::K_VALUE`] peers: dials peers it knows. (Every lookup connects to the
    /// peers it asks, so lookups run for want of connections would only make connections
    /// to be trimmed; the hourly refresh, [`KAD_REFRESH_SECS`], keeps the table fresh.)
    fn connect_more(&mut self) {
        let connected = self.swarm.connected_peers().count();
        if connected >= self.target_peers {
            return;
        }
        if self.knows_few_peers() {
            return; // [`Self::keep_looking`] looks up
        }
        let mut known: Vec<PeerId> = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            known.extend(bucket.iter().map(|e| *e.node.key.preimage()));
        }
        let me = *self.swarm.local_peer_id();
        known.retain(|p| *p != me && !self.swarm.is_connected(p));
        use rand::seq::SliceRandom;
        known.shuffle(&mut rand::rng());
        for p in known.into_iter().take(self.target_peers - connected) {
            let _ = self.swarm.dial(p);
        }
    }

    /// The routing table holds fewer than [`kad::K_VALUE`] peers: lookups are how to find
    /// more (protocol.md §1.5).
    fn knows_few_peers(&mut self) -> bool {
        self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum::<usize>() < kad::K_VALUE.get()
    }

    fn dial_if_wanted(&mut self, peer: PeerId) {
        if peer != *self.swarm.local_peer_id()
            && !self.swarm.is_connected(&peer)
            && self.swarm.connected_peers().count() < self.target_peers
        {
            let _ = self.swarm.dial(peer);
        }
    }

    fn on_identify(&mut self, peer_id: PeerId, info: identify::Info) {
        let routable: Vec<Multiaddr> = info.listen_addrs.into_iter().filter(|a| self.reach.routable(a)).collect();
        self.reach.identified(peer_id, info.protocols.contains(&relay::HOP_PROTOCOL_NAME), &routable);
        if info.protocols.contains(&KAD_PROTOCOL) {
            for a in routable {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
            }
        }
    }

    /// Feeds an event to libp2p's metrics (connections, and each protocol's own events).
    fn record(&self, ev: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        let Some(m) = &self.metrics else { return };
        m.record(ev);
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => m.record(e),
            _ => {}
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.record(&ev);
        match ev {
            SwarmEvent::NewListenAddr { listener_id, address } => self.on_new_listen_addr(listener_id, address),
            // A relay listener closes with Ok when its connection to the relay closed, with
            // an error when the relay refused the reservation.
            SwarmEvent::ListenerClosed { listener_id, reason: Ok(()), .. } => self.on_listener_gone(listener_id, None),
            SwarmEvent::ListenerClosed { listener_id, reason: Err(e), .. } => {
                self.on_listener_gone(listener_id, Some(e.to_string()))
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                self.on_listener_gone(listener_id, Some(error.to_string()))
            }
            SwarmEvent::ExternalAddrConfirmed { address } => self.on_external_confirmed(address),
            SwarmEvent::ExternalAddrExpired { address } => {
                self.reach.expire(&address);
                self.publish_addresses();
            }
            // v1 only confirms: its "private" verdicts also come from throttled or refused
            // probes, and v2's failed dial-backs already say which addresses are unreachable.
            SwarmEvent::Behaviour(BehaviourEvent::AutonatV1(autonat::v1::Event::StatusChanged {
                new: autonat::v1::NatStatus::Public(a),
                ..
            })) => self.swarm.add_external_address(a),
            SwarmEvent::Behaviour(BehaviourEvent::AutonatClient(e)) => self.on_dial_back(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => self.on_dcutr(e),
            // (A peer that does not speak ping at all is no reason.)
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) }))
                if !matches!(e, ping::Failure::Unsupported) =>
            {
                // A connection that stopped answering (a router that lost its NAT state, a
                // changed address) is closed at once, so that the peer is dialed afresh.
                tracing::debug!("ping to {peer} failed ({e}); closing that connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                self.on_identify(peer_id, info)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    self.dial_if_wanted(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Contract(e)) => self.on_contract(e),
            SwarmEvent::Behaviour(BehaviourEvent::Data(e)) => self.on_data(e),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                self.on_connected(peer_id, connection_id, &endpoint);
                if num_established.get() == 1 {
                    self.look_for_more();
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => self.on_closed(peer_id, connection_id),
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. }
                if !self.swarm.is_connected(&peer) && self.waiting.contains_key(&peer) =>
            {
                tracing::debug!("cannot reach {peer} ({error}); looking it up by PeerId");
                self.look_up(peer);
            }
            _ => {}
        }
    }

    /// An address of ours was confirmed (AutoNAT, UPnP): kept and advertised when
    /// [`reach::Reach::confirm`] accepts it (protocol.md §1.10), dropped otherwise.
    fn on_external_confirmed(&mut self, address: Multiaddr) {
        if self.reach.confirm(&address) {
            tracing::info!("confirmed external address {address}");
        } else {
            self.swarm.remove_external_address(&address);
        }
        self.publish_addresses();
    }

    /// An AutoNAT v2 dial-back ended: a failed one marks the tested address unreachable.
    fn on_dial_back(&mut self, e: autonat::v2::client::Event) {
        if let Err(err) = &e.result {
            tracing::debug!("{} cannot dial us back at {}: {err}", e.server, e.tested_addr);
            self.reach.failed(&e.tested_addr);
            self.publish_addresses();
        }
    }

    /// A new listen address: a relay reservation (then advertised), or one of ours.
    fn on_new_listen_addr(&mut self, listener_id: libp2p::core::transport::ListenerId, address: Multiaddr) {
        if let Some(&relay) = self.relay_listeners.get(&listener_id) {
            tracing::info!("relay reservation on {relay}: reachable at {address}");
            self.reach.reserved(relay, address.clone());
            self.swarm.add_external_address(address);
            self.publish_addresses();
        } else {
            // Dial out once the listen addresses the dials leave from are up (port reuse
            // takes a registered address of the same kind: loopback for loopback,
            // otherwise not).
            self.initial_dials();
            let full = address.with(Protocol::P2p(*self.swarm.local_peer_id()));
            self.emit(NetEvent::Listening(full));
        }
    }

    /// A hole punch ended (protocol.md §1.10).
    fn on_dcutr(&mut self, e: dcutr::Event) {
        match e.result {
            Ok(_) => tracing::info!("hole punched to {}: direct connection", e.remote_peer_id),
            // Both sides may punch at once; the loser's failure means nothing once a
            // direct connection exists.
            Err(err) if !self.reach.direct(&e.remote_peer_id) => {
                tracing::info!("hole punching to {} failed: {err}", e.remote_peer_id);
                self.reach.punch_failed(e.remote_peer_id);
            }
            Err(err) => tracing::debug!("a second hole punch to {} failed: {err}", e.remote_peer_id),
        }
    }

    /// A gossip message, handed to the daemon for validation by its topic.
    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let data = message.data;
        if message.topic == self.evidence_topic.hash() {
            self.emit(NetEvent::Evidence { id, source, data });
        } else if self.is_proposal_topic(&message.topic) {
            let topic = message.topic.into_string();
            self.emit(NetEvent::Proposal { id, source, topic, data });
        } else {
            // A topic we left (or never joined): ignored, and not forwarded.
            let acc = gossipsub::MessageAcceptance::Ignore;
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acc);
        }
    }

    /// While fewer than `target_peers` are connected and the routing table is small: a
    /// Kademlia bootstrap [`LOOKUP_FIRST`] after the last lookup, then at doubling waits up
    /// to [`LOOKUP_MOST`]; the wait starts over when a new peer enters the routing table.
    /// A young network finds itself within seconds (a peer that knew only its bootstrap
    /// peer learns the others before that peer may go away), and a small settled one
    /// looks up every few minutes, not every 30 s.
    fn keep_looking(&mut self) {
        if !self.short_of_peers() {
            self.lookup_every = LOOKUP_FIRST;
            return;
        }
        if self.last_lookup.elapsed() >= self.lookup_every && self.bootstrap() {
            self.lookup_every = (self.lookup_every * 2).min(LOOKUP_MOST);
        }
    }

    /// Starts a Kademlia bootstrap; false when the routing table is still empty (the
    /// next new peer or tick tries again).
    fn bootstrap(&mut self) -> bool {
        let started = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
        if started {
            self.last_lookup = Instant::now();
        }
        started
    }

    /// A new peer (connected, or entered in the routing table) knows others: look for
    /// more now rather than at the next tick, while we have fewer than we want and the
    /// routing table is still small (at most one lookup per [`LOOKUP_FIRST`]).
    fn look_for_more(&mut self) {
        if self.last_lookup.elapsed() >= LOOKUP_FIRST && self.short_of_peers() {
            self.bootstrap();
        }
    }

    /// Fewer than `target_peers` connected and a small routing table: lookups are how
    /// to find more.
    fn short_of_peers(&mut self) -> bool {
        self.swarm.connected_peers().count() < self.target_peers && self.knows_few_peers()
    }

    /// A connection closed: requests waiting on it move on; data still waiting for a peer
    /// we lost every connection to dials it again.
    fn on_closed(&mut self, peer_id: PeerId, connection_id: libp2p::swarm::ConnectionId) {
        self.reach.disconnected(&connection_id);
        if !self.swarm.is_connected(&peer_id) {
            self.last_used.remove(&peer_id);
        }
        self.flush(peer_id);
        if self.swarm.is_connected(&peer_id) {
            return;
        }
        let again = self.redial.remove(&peer_id);
        if let Some(addrs) = self.waiting.get(&peer_id).and_then(|w| w.first()).map(|p| p.addrs.clone()).or(again) {
            self.dial(peer_id, addrs);
        }
    }

    /// A listener closed (`refused`: the relay's error, if it refused): when it was a relay
    /// reservation, that relay is replaced at the next tick.
    fn on_listener_gone(&mut self, id: libp2p::core::transport::ListenerId, refused: Option<String>) {
        if let Some(relay) = self.relay_listeners.remove(&id) {
            match &refused {
                Some(e) => tracing::info!("relay {relay} refused or ended our reservation: {e}"),
                None => tracing::info!("relay reservation on {relay} ended with its connection"),
            }
            if let Some(a) = self.reach.unreserved(&relay, refused.is_some()) {
                self.swarm.remove_external_address(&a);
            }
            self.publish_addresses();
        }
    }

    /// Records a new connection. A direct one replaces every relayed one to the same peer,
    /// and a relayed one next to a direct one goes too: each is closed [`RELAYED_GRACE`]
    /// later, so that the contract messages under way on it are answered first, and data
    /// requests to that peer wait until then (they must not be put on a relayed one).
    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &libp2p::core::ConnectedPoint) {
        let (addr, relayed) = (endpoint.get_remote_address().clone(), endpoint.is_relayed());
        tracing::debug!("connected to {peer} at {addr}{}", if relayed { " (relayed)" } else { "" });
        let transport = reach::transport_of(&addr);
        self.reach.connected(id, ConnInfo { peer, addr, relayed, transport, since: Instant::now() });
        let at = Instant::now() + RELAYED_GRACE;
        if relayed && self.reach.direct(&peer) {
            self.closing.push((id, at));
        } else if !relayed {
            self.redial.remove(&peer);
            for c in self.reach.relayed_conns(&peer) {
                self.closing.push((c, at));
            }
        }
        self.flush(peer);
    }

    fn on_contract(&mut self, e: request_response::Event<Inbound<ContractRequest>, ContractResponse>) {
        self.used(&e);
        match route(e, &mut self.pending_contract, "contract") {
            Routed::Request(peer, request, channel) => self.emit(NetEvent::Contract { peer, request, channel }),
            Routed::Malformed(peer) => self.strike(peer, "a malformed contract request"),
            Routed::Nothing => {}
        }
    }

    fn on_data(&mut self, e: request_response::Event<Inbound<DataRequest>, DataResponse>) {
        self.used(&e);
        match route(e, &mut self.pending_data, "data") {
            Routed::Request(peer, request, channel) => self.emit(NetEvent::Data { peer, request, channel }),
            Routed::Malformed(peer) => self.strike(peer, "a malformed data request"),
            Routed::Nothing => {}
        }
    }

    /// Notes that the peer of a request-response event is in use (kept from trimming).
    fn used<Req, Resp>(&mut self, e: &request_response::Event<Req, Resp>) {
        use request_response::Event;
        let peer = match e {
            Event::Message { peer, .. }
            | Event::OutboundFailure { peer, .. }
            | Event::InboundFailure { peer, .. }
            | Event::ResponseSent { peer, .. } => *peer,
        };
        self.last_used.insert(peer, Instant::now());
    }

    /// Counts one malformed input against `peer`; at [`STRIKES_TO_BLOCK`] it is blocked
    /// (disconnected, its connections refused) for [`BLOCK_SECS`].
    fn strike(&mut self, peer: PeerId, what: &str) {
        let n = self.strikes.entry(peer).or_default();
        *n += 1;
        tracing::info!("{peer} sent {what} ({n} strikes)");
        if *n >= STRIKES_TO_BLOCK && !self.blocked.contains_key(&peer) {
            tracing::warn!("blocking {peer} for {BLOCK_SECS} s: {n} malformed inputs, the last {what}");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            self.blocked.insert(peer, std::time::Instant::now());
        }
    }

    fn unblock_expired(&mut self) {
        let expired: Vec<PeerId> =
            self.blocked.iter().filter(|(_, t)| t.elapsed().as_secs() >= BLOCK_SECS).map(|(p, _)| *p).collect();
        for p in expired {
            self.blocked.remove(&p);
            self.strikes.remove(&p);
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
        }
        // Forget old strikes of peers that stopped misbehaving, so the map stays small.
        if self.strikes.len() > 10_000 {
            self.strikes.retain(|_, n| *n >= STRIKES_TO_BLOCK);
        }
    }
}

/// What a request-response event means for the event loop.
enum Routed<Req, Resp> {
    /// An inbound request to hand to the daemon.
    Request(PeerId, Req, ResponseChannel<Resp>),
    /// An inbound request that did not decode or was over its cap.
    Malformed(PeerId),
    /// Handled here (a response or failure settled a pending request).
    Nothing,
}

/// Settles outbound requests from a request-response event; says whether it carried an
/// inbound request or a malformed one.
fn route<Req, Resp>(
    e: request_response::Event<Inbound<Req>, Resp>,
    pending: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>,
    what: &str,
) -> Routed<Req, Resp> {
    use request_response::{Event, Message};
    match e {
        Event::Message {
            peer, message: Message::Request { request: Inbound::Request(request), channel, .. }, ..
        } => {
            return Routed::Request(peer, request, channel);
        }
        Event::Message { peer, message: Message::Request { request: Inbound::Malformed(why), .. }, .. } => {
            tracing::debug!("malformed {what} request from {peer}: {why}");
            return Routed::Malformed(peer);
        }
        Event::Message { message: Message::Response { request_id, response }, .. } => {
            if let Some(tx) = pending.remove(&request_id) {
                let _ = tx.send(Ok(response));
            }
        }
        Event::OutboundFailure { peer, request_id, error, .. } => {
            if let Some(tx) = pending.remove(&request_id) {
                let saturated = matches!(&error, request_response::OutboundFailure::Io(e)
                    if e.to_string().contains("max sub-streams"));
                let e = if saturated {
                    NetError::Saturated(peer)
                } else {
                    NetError::Request { peer, reason: error.to_string() }
                };
                let _ = tx.send(Err(e));
            }
        }
        Event::InboundFailure { peer, error, .. } => {
            tracing::debug!("inbound {what} request from {peer} failed: {error}")
        }
        Event::ResponseSent { .. } => {}
    }
    Routed::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP bootstrap address waits for a TCP listen address (a QUIC one coming up first
    /// is not enough), an address of a transport we do not listen on goes at once, and
    /// everything goes after [`LISTEN_WAIT`].
    #[test]
    fn initial_dials_wait_for_a_listener_of_their_transport() {
        let tcp: Multiaddr = "/ip4/203.0.113.10/tcp/4001".parse().unwrap();
        let quic: Multiaddr = "/ip4/203.0.113.10/udp/4001/quic-v1".parse().unwrap();
        let since = Instant::now();
        let mut d = InitialDials {
            due: vec![(None, vec![tcp.clone()]), (None, vec![quic.clone()])],
            since,
            listen_transports: vec![reach::Transport::Tcp, reach::Transport::Quic],
        };
        assert!(d.ready(&[], since).is_empty());
        assert_eq!(d.ready(&[reach::Transport::Quic], since), vec![(None, vec![quic.clone()])]);
        assert_eq!(d.ready(&[reach::Transport::Tcp], since), vec![(None, vec![tcp.clone()])]);
        assert!(d.due.is_empty());

        let mut d = InitialDials {
            due: vec![(None, vec![quic.clone()])],
            since,
            listen_transports: vec![reach::Transport::Tcp],
        };
        assert_eq!(d.ready(&[], since).len(), 1, "no QUIC listener to wait for");

        let mut d = InitialDials {
            due: vec![(None, vec![tcp, quic])],
            since,
            listen_transports: vec![reach::Transport::Tcp, reach::Transport::Quic],
        };
        assert!(d.ready(&[reach::Transport::Tcp], since).is_empty(), "its QUIC address waits too");
        assert_eq!(d.ready(&[], since + LISTEN_WAIT).len(), 1, "the wait is bounded");
    }
}
