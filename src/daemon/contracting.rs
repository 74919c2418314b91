//! Contract formation on both sides (protocol.md §4): the client's proposal sessions and
//! countersigning, and the provider's decision on a gossiped proposal.

use super::Inner;
use crate::contracts;
use crate::contracts::client::{SessionState, Step};
use crate::control::{ErrorKind, Failure};
use crate::id::ProposalId;
use crate::identity::Signed;
use crate::protocol::{
    self, Acceptance, Contract, ContractRequest, ContractResponse, DOMAIN_ACCEPTANCE, DOMAIN_CONTRACT, Proposal, now,
};
use crate::state::{ContractRecord, Lifecycle, Role, State};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a client republishes an unanswered proposal, seconds.
pub const REPROPOSE_SECS: u64 = 3;
/// How soon a search for providers looks again while it waits for hole punches or dials.
const LOOK_AGAIN: Duration = Duration::from_millis(200);
/// Slack allowed between a proposal's duration and an acceptance's expiry, seconds.
pub const EXPIRY_SLACK_SECS: u64 = 3600;

/// One `ensure_providers` call's [`contracts::Session`], shared with the handlers of
/// the acceptances its proposals bring, which wake the call when one is recorded.
pub(super) struct Session {
    state: Mutex<contracts::Session>,
    notify: Notify,
}

impl Session {
    fn new(wanted: usize, exclude: HashSet<PeerId>) -> Arc<Session> {
        Arc::new(Session { state: Mutex::new(contracts::Session::new(wanted, exclude)), notify: Notify::new() })
    }

    /// Runs `f` on the session's state (a poisoned lock is taken over: the state is a
    /// few lists, consistent after every step).
    fn with<T>(&self, f: impl FnOnce(&mut contracts::Session) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Why a client declines an acceptance (protocol.md §4.3.1); the text is what its
/// `Declined` answer carries.
#[derive(Debug, thiserror::Error)]
pub(super) enum Decline {
    /// The acceptance or the contract it makes does not verify (§4.2, §4.3).
    #[error("{0}")]
    Invalid(#[from] protocol::MessageError),
    /// Step 2.
    #[error("the acceptance is not signed by its sender")]
    NotSender,
    /// Step 3.
    #[error("not our proposal")]
    NotOurs,
    /// Step 4.
    #[error("the acceptance's expiry does not match the proposed duration")]
    Expiry,
    /// Step 5.
    #[error("the proposal is no longer open")]
    Closed,
    /// Step 6.
    #[error("this provider failed our audits")]
    FailedAudits,
    /// `contracts.only_friends` (Appendix A.4.6).
    #[error("this client makes contracts with its friends only")]
    FriendsOnly,
    /// Verified evidence of default (§5.10).
    #[error("verified evidence says this provider signed a wrong audit answer")]
    Defaulter,
    /// Steps 7 and 8.
    #[error(transparent)]
    Session(#[from] contracts::client::Turned),
    /// Step 9: the contract could not be persisted.
    #[error("internal error")]
    Internal,
}

impl From<Decline> for ContractResponse {
    fn from(d: Decline) -> Self {
        ContractResponse::Declined(d.to_string())
    }
}

impl Inner {
    /// Provider side: decide on a proposal, and if we grant, send our acceptance.
    pub(super) async fn consider(self: Arc<Self>, vp: protocol::VerifiedProposal) {
        if vp.client == self.me() || !self.in_good_standing(&vp.client).await {
            return; // ourselves, or a peer that failed our audits: tit for tat
        }
        if !self.may_contract_with(&vp.client) {
            return; // contracts.only_friends, and the client is no friend
        }
        if self.is_defaulter(&vp.client) {
            return; // verified evidence says it signed a wrong audit answer (§5.10)
        }
        let Some(offered) = self.persist("nothing (reading the offer)", |s| s.offered()).await else { return };
        let Some(grant) = self.reserve_grant(&vp, offered) else { return };
        let duration = vp.proposal.duration_secs.min(self.config.contracts.duration_secs);
        let acc = Acceptance {
            provider: self.me().to_bytes(),
            addrs: self.listen_addrs(),
            proposal: vp.signed.clone(),
            bytes: grant,
            expires: now() + duration,
        };
        let signed = self.id.sign(DOMAIN_ACCEPTANCE, protocol::to_cbor(&acc));
        let addrs: Vec<Multiaddr> = vp.proposal.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let resp = self.net.contract_request(vp.client, addrs, ContractRequest::Accept(signed.clone())).await;
        match resp {
            Ok(ContractResponse::Countersigned(sig)) => self.record_as_provider(&vp, signed, sig).await,
            Ok(ContractResponse::Declined(why)) => tracing::debug!("{} declined our acceptance: {why}", vp.client),
            Ok(other @ (ContractResponse::Cancelled | ContractResponse::Renewed(_))) => {
                tracing::debug!("{} answered an acceptance with {other:?}", vp.client)
            }
            Err(e) => tracing::debug!("acceptance to {} failed: {e}", vp.client),
        }
        self.reserved.lock().unwrap_or_else(|p| p.into_inner()).release(&vp.client);
        self.released.notify_waiters();
    }

    /// What we grant `vp` out of `offered` (protocol.md §4.4), reserved until the client
    /// answers; `None` when the policy declines.
    fn reserve_grant(&self, vp: &protocol::VerifiedProposal, offered: u64) -> Option<u64> {
        // The books are read under the reservations' lock: a contract recorded meanwhile
        // releases its reservation only after it is recorded, so it is counted once, either
        // way (protocol.md §4.3.2 step 2, "under one lock").
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let pairs =
            |role| self.live_contracts(role).into_iter().filter_map(|(_, c)| Some((c.peer_id()?, c.bytes))).collect();
        let books = contracts::provider::Books {
            offered,
            granted: pairs(Role::Provider),
            owed: pairs(Role::Client),
            held: self.store.used(&vp.client),
            ratio: self.config.contracts.ratio,
        };
        match reserved.consider(vp.client, vp.proposal.bytes, vp.proposal.offered, &books) {
            Ok(g) => Some(g),
            Err(r) => {
                tracing::debug!("not accepting proposal from {}: {r}", vp.client);
                None
            }
        }
    }

    /// Records the contract the client countersigned (`sig` over our acceptance `signed`),
    /// then publishes our head, which lists whom we store for (protocol.md §5.8).
    async fn record_as_provider(&self, vp: &protocol::VerifiedProposal, signed: Signed, sig: Vec<u8>) {
        let contract = Contract { acceptance: signed, client_sig: sig };
        let t = match contract.verify() {
            Ok(t) if t.client == vp.client && t.provider == self.me() => t,
            Ok(_) => return tracing::warn!("{} countersigned a contract that is not ours", vp.client),
            Err(e) => return tracing::warn!("bad countersignature from {}: {e}", vp.client),
        };
        let rec =
            ContractRecord::new(contract, Role::Provider, vp.client, t.bytes, t.expires, vp.proposal.addrs.clone());
        let id = t.id;
        match self.db(move |s| s.put_contract(&id, &rec)).await {
            Ok(()) => {
                tracing::info!("contract {} as provider for {} ({} bytes)", t.id.short(), vp.client, t.bytes);
                self.released.notify_waiters();
                self.publish_head().await;
            }
            Err(e) => tracing::error!("cannot persist contract: {e}"),
        }
    }

    /// Client side: checks an acceptance from `peer` (protocol.md §4.2): signed by its
    /// sender, of one of our proposals still open, with a matching expiry, from a provider
    /// in good standing that we may contract with. Returns the provider, the acceptance and
    /// the proposal's session, or why it is declined.
    async fn check_acceptance(
        &self,
        peer: PeerId,
        signed: &Signed,
    ) -> Result<(PeerId, protocol::Acceptance, Arc<Session>), Decline> {
        let (provider, acc, vp) = protocol::verify_acceptance(signed)?;
        if provider != peer {
            return Err(Decline::NotSender);
        }
        if vp.client != self.me() {
            return Err(Decline::NotOurs);
        }
        let t = now();
        if acc.expires <= t || acc.expires > t + vp.proposal.duration_secs + EXPIRY_SLACK_SECS {
            return Err(Decline::Expiry);
        }
        let Some(session) = self.sessions.lock().ok().and_then(|s| s.get(&vp.id).cloned()) else {
            return Err(Decline::Closed);
        };
        if !self.in_good_standing(&provider).await {
            return Err(Decline::FailedAudits);
        }
        if !self.may_contract_with(&provider) {
            return Err(Decline::FriendsOnly);
        }
        if self.is_defaulter(&provider) {
            return Err(Decline::Defaulter);
        }
        Ok((provider, acc, session))
    }

    /// Client side: countersign an acceptance of one of our open proposals.
    pub(super) async fn on_acceptance(&self, peer: PeerId, signed: Signed) -> ContractResponse {
        let (provider, acc, session) = match self.check_acceptance(peer, &signed).await {
            Ok(v) => v,
            Err(why) => return why.into(),
        };
        if let Err(turned) = session.with(|s| s.admit(provider)) {
            return Decline::Session(turned).into();
        }
        let undo = || session.with(|s| s.abandoned(provider));
        let sig = self.id.sign_detached(DOMAIN_CONTRACT, &signed.body);
        let contract = Contract { acceptance: signed, client_sig: sig.clone() };
        let terms = match contract.verify() {
            Ok(t) => t,
            Err(e) => {
                undo();
                return Decline::Invalid(e).into();
            }
        };
        let rec = ContractRecord::new(contract, Role::Client, provider, acc.bytes, acc.expires, acc.addrs.clone());
        let id = terms.id;
        if let Err(e) = self.db(move |s| s.put_contract(&id, &rec)).await {
            tracing::error!("cannot persist contract: {e}");
            undo();
            return Decline::Internal.into();
        }
        tracing::info!("contract {} as client with {provider} ({} bytes)", terms.id.short(), acc.bytes);
        session.with(|s| s.recorded(provider));
        session.notify.notify_one();
        ContractResponse::Countersigned(sig)
    }

    /// Providers we can place a pack on now: directly connected (packs never go through a
    /// relay, protocol.md §1.10), with a live contract that has room for a largest pack.
    /// Also returns what the network looks like (for waiting and for error messages).
    pub(super) async fn ready_providers(&self) -> (HashSet<PeerId>, Reachable) {
        let ns = self.net.status().await.ok();
        let set = |v: Option<&Vec<PeerId>>| v.map(|v| v.iter().copied().collect::<HashSet<_>>()).unwrap_or_default();
        let seen = Reachable {
            connected: set(ns.as_ref().map(|s| &s.connected)),
            direct: set(ns.as_ref().map(|s| &s.direct)),
            punching: set(ns.as_ref().map(|s| &s.punching)),
        };
        let ready = self
            .live_contracts(Role::Client)
            .iter()
            .filter(|(_, c)| has_room(c))
            .filter_map(|(_, c)| c.peer_id())
            .filter(|p| seen.direct.contains(p) && self.may_contract_with(p))
            .collect();
        (ready, seen)
    }

    /// The providers we have a contract with room at but no direct connection to (a
    /// restart, a short outage, a hole punch to try again), with their addresses.
    fn indirect_providers(
        &self,
        live: &[(crate::id::ContractId, ContractRecord)],
        seen: &Reachable,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        live.iter()
            .filter(|(_, c)| has_room(c))
            .filter_map(|(_, c)| c.peer_id().map(|p| (p, c.addrs.iter().filter_map(|a| a.parse().ok()).collect())))
            .filter(|(p, _)| !seen.direct.contains(p) && self.may_contract_with(p))
            .collect()
    }

    /// Where `session` stands for [`contracts::client::next_step`]: what to ask of each
    /// new provider while it is open (our offer `offered`, what `live` contracts hold),
    /// and whether any provider it got is reachable only through a relay once complete.
    fn session_state(
        &self,
        session: Option<&Session>,
        live: &[(crate::id::ContractId, ContractRecord)],
        seen: &Reachable,
        offered: u64,
    ) -> SessionState {
        match session {
            None => SessionState::None,
            Some(s) if s.with(|s| s.complete()) => SessionState::Complete {
                indirect: s.with(|s| s.accepted().iter().any(|p| seen.punching.contains(p) || seen.relayed_only(p))),
            },
            Some(s) => {
                let held: u64 = live.iter().map(|(_, c)| c.bytes).sum();
                let wanted = s.with(|s| s.wanted());
                SessionState::Open { ask: contracts::client_ask(offered, self.config.contracts.ratio, held, wanted) }
            }
        }
    }

    /// Dials `indirect` ([`Inner::indirect_providers`]), so they can count before the
    /// deadline. Peers connected through relays only are dialed too: the network punches
    /// again to those whose hole punch failed or never ended a while ago.
    async fn dial_indirect(&self, indirect: &[(PeerId, Vec<Multiaddr>)]) {
        for (p, addrs) in indirect {
            self.net.dial(*p, addrs.clone()).await;
        }
    }

    /// Publishes a proposal asking `ask` bytes for session `s` (protocol.md §4.1), the
    /// `attempt`-th of this search (which shard it goes to, §1.6), and registers it, so
    /// acceptances of it are countersigned; returns its id.
    async fn propose(&self, s: &Arc<Session>, ask: u64, offered: u64, attempt: u32) -> ProposalId {
        let granted_out: u64 = self.live_contracts(Role::Provider).iter().map(|(_, c)| c.bytes).sum();
        let p = Proposal {
            bytes: ask,
            duration_secs: self.config.contracts.duration_secs,
            offered,
            free: offered.saturating_sub(granted_out),
            addrs: self.listen_addrs(),
            expires: now() + 60,
            nonce: rand::random(),
        };
        let signed = p.sign(&self.id);
        let pid = ProposalId(crate::id::sha256(&signed.body));
        if let Ok(mut m) = self.sessions.lock() {
            m.insert(pid, s.clone());
        }
        self.metrics.proposals.inc();
        if let Err(e) = self.net.propose(protocol::to_cbor(&signed), attempt).await {
            tracing::debug!("proposal not published yet: {e}");
        }
        pid
    }

    /// Makes sure `n` distinct connected providers hold live contracts with room for us,
    /// proposing new contracts on gossip (republished every [`REPROPOSE_SECS`]) until the
    /// configured wait runs out. Errors say how many providers there are and what to do.
    pub(super) async fn ensure_providers(&self, n: usize) -> Result<(), ShortOfProviders> {
        self.ensure_providers_avoiding(n, &HashSet::new()).await
    }

    /// [`Inner::ensure_providers`], not counting the providers in `avoid` (ones that just
    /// refused a pack: a full disk) as ready.
    pub(super) async fn ensure_providers_avoiding(
        &self,
        n: usize,
        avoid: &HashSet<PeerId>,
    ) -> Result<(), ShortOfProviders> {
        let wait = Duration::from_secs(self.config.contracts.proposal_wait_secs);
        let deadline = tokio::time::Instant::now() + wait;
        let offered = self.db(|s| s.offered()).await.map_err(|e| ShortOfProviders::Local(e.to_string()))?;
        let mut session: Option<Arc<Session>> = None;
        // Sessions are forgotten when this ends, also when the caller drops it early.
        let mut ids = Proposals { inner: self, ids: Vec::new() };
        loop {
            let (mut ready, seen) = self.ready_providers().await;
            ready.retain(|p| !avoid.contains(p));
            let live = self.live_contracts(Role::Client);
            let (punching, relayed_only) = seen.indirect(&live, avoid);
            let indirect = self.indirect_providers(&live, &seen);
            let found = contracts::client::Found {
                needed: n,
                ready: ready.len(),
                punching,
                away: indirect.iter().filter(|(p, _)| !seen.connected.contains(p)).count(),
                timed_out: tokio::time::Instant::now() >= deadline,
            };
            let state = self.session_state(session.as_deref(), &live, &seen, offered);
            match contracts::client::next_step(&found, state) {
                Step::Enough => break Ok(()),
                Step::TimedOut => {
                    break Err(ShortOfProviders::Shortfall {
                        needed: n,
                        ready: ready.len(),
                        relayed: relayed_only + punching,
                        wait_secs: wait.as_secs(),
                        connected: seen.connected.len(),
                        only_friends: self.config.contracts.only_friends.then(|| self.friend_count()),
                    });
                }
                Step::AwaitPunches => tokio::time::sleep(LOOK_AGAIN).await,
                Step::Open { wanted } => {
                    // Providers whose contracts are full may be asked for another one.
                    let with_room = live.iter().filter(|(_, c)| has_room(c)).filter_map(|(_, c)| c.peer_id());
                    session = Some(Session::new(wanted, with_room.collect()));
                }
                Step::AskOthers => session = None,
                Step::Unreachable => {
                    let accepted = session.as_ref().map_or(0, |s| s.with(|s| s.accepted().len()));
                    break Err(ShortOfProviders::Unreachable { accepted, ready: ready.len(), needed: n });
                }
                Step::AwaitDials => {
                    self.dial_indirect(&indirect).await;
                    tokio::time::sleep(LOOK_AGAIN).await;
                }
                Step::OverRatio => {
                    break Err(ShortOfProviders::OverRatio { offered, ratio: self.config.contracts.ratio });
                }
                Step::Propose(ask) => {
                    self.dial_indirect(&indirect).await;
                    let Some(s) = session.clone() else { continue };
                    let attempt = u32::try_from(ids.ids.len()).unwrap_or(u32::MAX);
                    ids.ids.push(self.propose(&s, ask, offered, attempt).await);
                    let step = tokio::time::Instant::now() + Duration::from_secs(REPROPOSE_SECS);
                    while !s.with(|s| s.complete()) {
                        if tokio::time::timeout_at(step.min(deadline), s.notify.notified()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Seeks contracts with up to `target` providers ([`contracts::spread`]) while a backup
    /// runs, so that its packs spread over more holders than the copies need and a restore
    /// can draw on all their uplinks at once. Best effort: [`Inner::ensure_providers`]
    /// proposes only when fewer than `target` providers are ready, and the caller drops
    /// this when the backup ends. Packs go to the new contracts as soon as they are written
    /// (placement prefers the providers holding the fewest of our bytes).
    pub(super) async fn widen_providers(&self, target: usize) {
        if let Err(e) = self.ensure_providers(target).await {
            tracing::debug!("spreading over {target} providers: {e}");
        }
    }
}

/// The proposal ids of one [`Inner::ensure_providers_avoiding`] call, removed from the
/// session table when it ends or is dropped.
struct Proposals<'a> {
    inner: &'a Inner,
    ids: Vec<ProposalId>,
}

impl Drop for Proposals<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.inner.sessions.lock() {
            for i in &self.ids {
                m.remove(i);
            }
        }
    }
}

/// Why a client could not get the providers it needs (protocol.md §4.3.1, §4.4).
#[derive(Debug, thiserror::Error)]
pub(super) enum ShortOfProviders {
    /// The wait ran out with fewer providers ready than needed.
    #[error("{}", shortfall(*needed, *ready, *relayed, *wait_secs, *connected, *only_friends))]
    Shortfall {
        /// Providers needed.
        needed: usize,
        /// Providers directly connected with a live contract with room.
        ready: usize,
        /// Providers connected only through relays, or still hole punching.
        relayed: usize,
        /// `[contracts] proposal_wait_secs`.
        wait_secs: u64,
        /// Peers connected.
        connected: usize,
        /// With `contracts.only_friends`: how many friends this peer has.
        only_friends: Option<usize>,
    },
    /// Every provider asked for accepted, yet too few can take packs (unreachable or full).
    #[error("{accepted} providers accepted, but only {ready} of the {needed} needed are reachable with room")]
    Unreachable {
        /// Acceptances countersigned in this session.
        accepted: usize,
        /// Providers ready.
        ready: usize,
        /// Providers needed.
        needed: usize,
    },
    /// Give to get: this peer's offer allows it to hold no more at others (§4.4).
    #[error(
        "your offer of {} lets you hold no more at others (ratio {ratio}); give to get: raise it with \
         'peer offer-storage SIZE'",
        bytesize::ByteSize(*offered).display().si()
    )]
    OverRatio {
        /// Bytes this peer offers.
        offered: u64,
        /// `[contracts] ratio`.
        ratio: f64,
    },
    /// The local state could not be read.
    #[error("{0}")]
    Local(String),
}

impl ShortOfProviders {
    /// The control protocol's kind for it (its exit code): this peer's own rule
    /// (`OverRatio`) is `Refused`, a local failure `Local`, the rest `Unavailable`.
    pub(super) fn kind(&self) -> crate::control::ErrorKind {
        use crate::control::ErrorKind;
        match self {
            ShortOfProviders::OverRatio { .. } => ErrorKind::Refused,
            ShortOfProviders::Local(_) => ErrorKind::Local,
            ShortOfProviders::Shortfall { .. } | ShortOfProviders::Unreachable { .. } => ErrorKind::Unavailable,
        }
    }
}

/// Why placement cannot have `n` providers: `ready` direct ones with room, `relayed` more
/// reachable only through relays (or punching), after waiting `wait_secs`; with
/// `contracts.only_friends`, how many friends count.
fn shortfall(
    n: usize,
    ready: usize,
    relayed: usize,
    wait_secs: u64,
    connected: usize,
    friends: Option<usize>,
) -> String {
    let why = if relayed > 0 {
        format!(
            "only {ready} of the {n} providers needed are reachable directly ({relayed} more only through relays, \
             which carry no packs); forward a port to this peer or to theirs, or wait for more peers \
             (see README 'Behind a home router')"
        )
    } else {
        format!(
            "only {ready} of the {n} providers needed accepted a contract within {wait_secs}s ({connected} peers \
             connected); wait for more peers to join, or use fewer --copies or a smaller --erasure K+M"
        )
    };
    match friends {
        Some(f) => format!(
            "{why}. contracts.only_friends is on: only your {f} friends count; add more with \
             'peer friends add CODE' (their 'peer friends invite')"
        ),
        None => why,
    }
}

/// True when a contract has room left for one largest pack.
fn has_room(c: &ContractRecord) -> bool {
    c.bytes.saturating_sub(c.used) >= crate::repo::pack::MAX_PACK_SIZE as u64
}

/// Which peers we are connected to, and how (from [`crate::net::NetStatus`]).
pub(super) struct Reachable {
    /// Every connected peer.
    pub(super) connected: HashSet<PeerId>,
    /// Peers with a direct connection (bulk data can go to them).
    pub(super) direct: HashSet<PeerId>,
    /// Peers connected through a relay whose hole punch is under way.
    pub(super) punching: HashSet<PeerId>,
}

impl Reachable {
    /// Connected, but only through a relay, with no hole punch under way.
    pub(super) fn relayed_only(&self, p: &PeerId) -> bool {
        self.connected.contains(p) && !self.direct.contains(p) && !self.punching.contains(p)
    }

    /// Among the providers of `live` with room (less `avoid`): how many are being hole
    /// punched (may become direct) and how many are reachable only through a relay.
    pub(super) fn indirect(
        &self,
        live: &[(crate::id::ContractId, ContractRecord)],
        avoid: &HashSet<PeerId>,
    ) -> (usize, usize) {
        let with_room: HashSet<PeerId> = live
            .iter()
            .filter(|(_, c)| has_room(c))
            .filter_map(|(_, c)| c.peer_id())
            .filter(|p| !avoid.contains(p))
            .collect();
        let punching = with_room.iter().filter(|p| self.punching.contains(p)).count();
        (punching, with_room.iter().filter(|p| self.relayed_only(p)).count())
    }
}

impl Inner {
    /// Either side: the other party ends a contract with us (protocol.md §4.5).
    pub(super) async fn on_cancel(&self, peer: PeerId, signed: Signed) -> ContractResponse {
        let decline = |s: &str| ContractResponse::Declined(s.to_string());
        match signed.verify(protocol::DOMAIN_CANCEL) {
            Ok(signer) if signer == peer => {}
            Ok(_) => return decline("the cancellation is not signed by its sender"),
            Err(e) => return decline(&format!("bad signature: {e}")),
        }
        let c: protocol::Cancellation = match protocol::from_cbor("cancellation", &signed.body) {
            Ok(c) => c,
            Err(e) => return decline(&e.to_string()),
        };
        if c.reason.len() > protocol::MAX_REASON {
            return decline("reason too long");
        }
        let Some(rec) = self.state.contract(&c.contract) else {
            return decline("unknown contract");
        };
        if rec.peer_id() != Some(peer) {
            return decline("not a party to this contract");
        }
        if rec.lifecycle == Lifecycle::Live {
            self.end_contract(c.contract, rec, &format!("cancelled by {peer}: {}", c.reason), true).await;
        }
        ContractResponse::Cancelled
    }

    /// Ends a contract here: marks it ended and reclaims the space. As client, the
    /// provider's copies stop counting; as provider, the client's packs are deleted now if
    /// `drop_now` (the client cancelled), else after `audit.grace_secs`.
    pub(super) async fn end_contract(&self, id: crate::id::ContractId, rec: ContractRecord, why: &str, drop_now: bool) {
        let t = now();
        let reason: String = why.chars().take(protocol::MAX_REASON).collect();
        let ended = self.db(move |s| s.update_contract(&id, |r| r.lifecycle.end(t, reason)));
        if let Err(e) = ended.await {
            return tracing::error!("cannot end contract {}: {e}", id.short());
        }
        let Some(peer) = rec.peer_id() else { return };
        match rec.role {
            Role::Client => {
                let holder = rec.peer.clone();
                let lost = self.persist("lost copies", move |s| s.drop_holder(&holder)).await.unwrap_or(0);
                tracing::warn!(
                    "contract {} with provider {peer} ended ({why}); {lost} pack copies count as lost",
                    id.short()
                );
            }
            Role::Provider => {
                tracing::warn!("contract {} with client {peer} ended ({why})", id.short());
                if !self.live_contracts(Role::Provider).iter().any(|(_, c)| c.peer_id() == Some(peer)) {
                    // Nothing is owed to us any more; the client drops our claim on its side.
                    let key = peer.to_bytes();
                    self.persist("a dropped claim", move |s| s.set_claim_placed(&key, 0)).await;
                }
                if drop_now {
                    match self.reclaim(peer).await {
                        Ok(n) => tracing::info!("reclaimed {n} bytes held for {peer}"),
                        Err(e) => tracing::error!("cannot reclaim the space of {peer}: {e}"),
                    }
                }
            }
        }
    }

    /// We end a contract: end it here, then tell the other side (best effort, signed).
    pub(super) async fn cancel(&self, id: crate::id::ContractId, reason: &str) -> Result<(), Failure> {
        let Some(rec) = self.state.contract(&id) else {
            return Err(Failure::new(ErrorKind::NotFound, format!("no contract {id}; see 'peer contracts'")));
        };
        if rec.lifecycle != Lifecycle::Live {
            return Ok(());
        }
        let reason: String = reason.chars().take(protocol::MAX_REASON / 4).collect();
        // End it here first, so our own view never lags behind what we announce.
        self.end_contract(id, rec.clone(), &format!("cancelled by us: {reason}"), false).await;
        if let Some(peer) = rec.peer_id() {
            let c = protocol::Cancellation { contract: id, reason: reason.clone() };
            let signed = self.id.sign(protocol::DOMAIN_CANCEL, protocol::to_cbor(&c));
            if !self.send_cancel(peer, id, &rec, signed.clone()).await {
                let unsent = move |s: &State| s.update_contract(&id, |r| r.lifecycle.owe_cancel(signed));
                self.persist("a cancellation to send again", unsent).await;
            }
        }
        Ok(())
    }

    /// Sends a signed cancellation; true once the other side has answered it (applied, or
    /// refused for good), false when it should be sent again later.
    async fn send_cancel(&self, peer: PeerId, id: crate::id::ContractId, rec: &ContractRecord, signed: Signed) -> bool {
        let mut addrs: Vec<Multiaddr> = rec.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        addrs.extend(self.addrs_of(&peer));
        match self.net.contract_request(peer, addrs, ContractRequest::Cancel(signed)).await {
            Ok(ContractResponse::Cancelled) => {
                tracing::info!("{peer} acknowledged the end of contract {}", id.short());
                true
            }
            Ok(other) => {
                tracing::warn!("{peer} did not take the cancellation of {}: {other:?}", id.short());
                true
            }
            Err(e) => {
                tracing::warn!("could not tell {peer} that contract {} ended (will retry): {e}", id.short());
                false
            }
        }
    }

    /// Sends again every cancellation the other side has not acknowledged, until the
    /// contract would have expired anyway.
    pub(super) async fn retry_cancels(&self) {
        let t = now();
        for (id, rec) in self.state.contracts() {
            let (Some(signed), Some(peer)) = (rec.lifecycle.unsent_cancel().cloned(), rec.peer_id()) else { continue };
            if rec.expires <= t || self.send_cancel(peer, id, &rec, signed).await {
                self.persist("a sent cancellation", move |s| {
                    s.update_contract(&id, |r| r.lifecycle.cancel_delivered())
                })
                .await;
            }
        }
    }

    /// Client side: renews every live contract with less than a quarter of
    /// `contracts.duration_secs` left, to `duration_secs` from now (protocol.md §4.7).
    pub(super) async fn renew_due(&self) {
        let t = now();
        let duration = self.config.contracts.duration_secs;
        for (id, rec) in self.live_contracts(Role::Client) {
            let Some(peer) = rec.peer_id() else { continue };
            if rec.expires.saturating_sub(t) > duration / 4 {
                continue;
            }
            let r = protocol::Renewal { contract: id, expires: t + duration };
            let signed = self.id.sign(protocol::DOMAIN_RENEWAL, protocol::to_cbor(&r));
            let addrs = self.addrs_of(&peer);
            match self.net.contract_request(peer, addrs, ContractRequest::Renew(signed.clone())).await {
                Ok(ContractResponse::Renewed(sig)) => {
                    let key = rec.contract.acceptance.key;
                    if let Err(e) = crate::identity::verify_detached(&key, protocol::DOMAIN_RENEWAL, &signed.body, &sig)
                    {
                        tracing::warn!("{peer} countersigned the renewal of {} badly: {e}", id.short());
                        continue;
                    }
                    let renewed = move |s: &State| {
                        s.update_contract(&id, |c| {
                            c.expires = c.expires.max(r.expires);
                            c.renewal = Some((signed, serde_bytes::ByteBuf::from(sig)));
                        })
                    };
                    if self.persist("a renewal", renewed).await.is_some() {
                        tracing::info!("renewed contract {} with {peer} until {}", id.short(), r.expires);
                    }
                }
                Ok(other) => tracing::warn!("{peer} did not renew contract {}: {other:?}", id.short()),
                Err(e) => tracing::info!("could not renew contract {} with {peer} yet: {e}", id.short()),
            }
        }
    }

    /// Provider side: countersigns a client's renewal of a live contract in good standing.
    pub(super) async fn on_renew(&self, peer: PeerId, signed: Signed) -> ContractResponse {
        let decline = |s: &str| ContractResponse::Declined(s.to_string());
        match signed.verify(protocol::DOMAIN_RENEWAL) {
            Ok(signer) if signer == peer => {}
            Ok(_) => return decline("the renewal is not signed by its sender"),
            Err(e) => return decline(&format!("bad signature: {e}")),
        }
        let r: protocol::Renewal = match protocol::from_cbor("renewal", &signed.body) {
            Ok(r) => r,
            Err(e) => return decline(&e.to_string()),
        };
        let Some(rec) = self.state.contract(&r.contract) else {
            return decline("unknown contract");
        };
        let t = now();
        if rec.role != Role::Provider || rec.peer_id() != Some(peer) {
            return decline("not the client of this contract");
        }
        if !rec.is_live(t) {
            return decline("the contract has ended or expired");
        }
        if !self.in_good_standing(&peer).await {
            return decline("you failed our audits");
        }
        if r.expires <= rec.expires || r.expires > t + self.config.contracts.duration_secs + EXPIRY_SLACK_SECS {
            return decline("the new expiry is not later than the current one, or too far");
        }
        let sig = self.id.sign_detached(protocol::DOMAIN_RENEWAL, &signed.body);
        let renewal = (signed, serde_bytes::ByteBuf::from(sig.clone()));
        let (id, expires) = (r.contract, r.expires);
        let renewed = self.db(move |s| {
            s.update_contract(&id, |c| {
                c.expires = expires;
                c.renewal = Some(renewal);
            })
        });
        match renewed.await {
            Ok(_) => {
                tracing::info!("renewed contract {} for {peer} until {}", r.contract.short(), r.expires);
                ContractResponse::Renewed(sig)
            }
            Err(e) => {
                tracing::error!("cannot renew contract: {e}");
                decline("internal error")
            }
        }
    }
}

/// How often the network task is told who our contract partners are (they are never
/// disconnected to bound the number of connections; protocol.md §1.9), seconds.
pub const KEEP_PARTNERS_SECS: u64 = 30;

impl Inner {
    /// Tells the network task, every [`KEEP_PARTNERS_SECS`], the peers we hold a live
    /// contract with (either role): those connections are never trimmed.
    pub(super) async fn keep_partners_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(KEEP_PARTNERS_SECS));
        loop {
            tick.tick().await;
            let t = now();
            let partners: HashSet<PeerId> = self
                .state
                .contracts()
                .into_iter()
                .filter(|(_, c)| c.is_live(t))
                .filter_map(|(_, c)| c.peer_id())
                .collect();
            self.net.keep(partners.into_iter().collect()).await;
        }
    }
}
