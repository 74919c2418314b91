//! Audits on both sides (protocol.md §5.4): the client's audit rounds over every holder of
//! its packs, and what follows a failure (lost copies, ended contracts, tit for tat). The
//! provider's answer to a challenge lives with the other data requests in `transfer`.

use super::Inner;
use crate::audit::{self, Outcome};
use crate::id::{ContractId, PackId};
use crate::net::NetError;
use crate::protocol::{DataErrorCode, DataRequest, DataResponse, now};
use crate::state::Role;
use futures::StreamExt;
use libp2p::PeerId;
use rand::RngExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Holders challenged at once in a round.
pub const AUDITS_AT_ONCE: usize = 8;

/// The verdict on the answer `r` to a challenge sent with `timeout`: `check` judges the
/// expected kind of answer and hands any other back. Busy or failing answers give no
/// verdict (`None`); other errors and unexpected answers are wrong; silence is unreachable.
pub(super) fn verdict(
    r: Result<Result<DataResponse, NetError>, tokio::time::error::Elapsed>,
    timeout: Duration,
    check: impl FnOnce(DataResponse) -> Result<Outcome, DataResponse>,
) -> Option<Outcome> {
    Some(match r {
        Ok(Ok(resp)) => match check(resp) {
            Ok(o) => o,
            Err(DataResponse::Error { code: DataErrorCode::Busy | DataErrorCode::Internal, .. }) => return None,
            Err(DataResponse::Error { code, message }) => Outcome::Wrong(format!("{code:?}: {message}")),
            Err(_) => Outcome::Wrong("unexpected answer to an audit".into()),
        },
        Ok(Err(e)) => Outcome::Unreachable(e.to_string()),
        Err(_) => Outcome::Unreachable(format!("no answer within {} s", timeout.as_secs())),
    })
}

impl Inner {
    /// Runs audit rounds forever, each after a random wait of 0.5–1.5 × `audit.interval_secs`.
    pub(super) async fn audit_loop(self: Arc<Self>) {
        loop {
            let base = self.config.audit.interval_secs as f64;
            let wait = base * rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.audit_round().await;
            self.claim_round().await;
            self.renew_due().await;
            self.retry_cancels().await;
            self.drop_unowed_claims().await;
            self.drop_data_of_ended().await;
            self.republish_if_failed().await;
            self.republish_evidence().await;
        }
    }

    /// Challenges every holder of our packs once: a random leaf of a random pack it holds.
    async fn audit_round(&self) {
        let packs = match self.db(|s| s.packs()).await {
            Ok(p) => p,
            Err(e) => return tracing::error!("audit round: {e}"),
        };
        let live: HashSet<ContractId> = self.live_contracts(Role::Client).into_iter().map(|(id, _)| id).collect();
        // (pack, object held: the pack or one of its shards, its size) per holder.
        let mut by_holder: HashMap<Vec<u8>, Vec<(PackId, PackId, u64)>> = HashMap::new();
        // Packs marked garbage by prune are being deleted at their holders: not audited.
        for (id, rec) in packs.into_iter().filter(|(_, r)| !r.garbage) {
            for (object, size, h) in rec.objects(&id).into_iter().filter(|(_, _, h)| live.contains(&h.contract)) {
                by_holder.entry(h.peer).or_default().push((id, object, size));
            }
        }
        let results: Vec<(PeerId, PackId, Outcome)> = futures::stream::iter(by_holder)
            .map(|(peer, packs)| async move {
                let peer_id = PeerId::from_bytes(&peer).ok()?;
                let (pack, object, size, leaf) = {
                    let mut rng = rand::rng();
                    let (pack, object, size) = packs[rng.random_range(0..packs.len())];
                    (pack, object, size, rng.random_range(0..audit::leaves(size)))
                };
                Some((peer_id, pack, self.challenge(peer_id, object, size, leaf).await?))
            })
            .buffer_unordered(AUDITS_AT_ONCE)
            .filter_map(|r| async move { r })
            .collect()
            .await;
        // If no holder at all answered, the network that is down is most likely ours:
        // blame nobody for it.
        if results.len() > 1 && results.iter().all(|(_, _, o)| matches!(o, Outcome::Unreachable(_))) {
            tracing::warn!("no holder answered this audit round; is this peer offline?");
            return;
        }
        for (peer, pack, outcome) in results {
            if matches!(outcome, Outcome::Wrong(_)) {
                tracing::warn!("the copy of pack {} at {peer} counts as lost", pack.short());
                let key = peer.to_bytes();
                self.persist("a lost copy", move |s| s.drop_copy(&pack, &key)).await;
            }
            if let Some(why) = self.record(peer, &format!("pack {}", pack.short()), outcome).await {
                self.end_contracts_with(&peer, &why).await;
            }
        }
    }

    /// One challenge; `None` when the holder was too busy to answer (no verdict).
    /// The answer is signed (`AuditSigned`, protocol.md §5.10): a wrong one becomes
    /// evidence.
    pub(super) async fn challenge(&self, peer: PeerId, pack: PackId, size: u64, leaf: u32) -> Option<Outcome> {
        let timeout = Duration::from_secs(self.config.audit.timeout_secs);
        let addrs = self.addrs_of(&peer);
        let req = DataRequest::AuditSigned { pack, leaf };
        let r = tokio::time::timeout(timeout, self.net.data_request(peer, addrs, req)).await;
        if let Ok(Ok(DataResponse::SignedProof { answer, leaf: bytes })) = r {
            return Some(self.judge_signed(peer, (pack, size, leaf), answer, bytes).await);
        }
        verdict(r, timeout, Err)
    }

    /// Records an outcome; a wrong answer loses that copy. Returns why, when the peer just
    /// lost its standing.
    pub(super) async fn record(&self, peer: PeerId, what: &str, outcome: Outcome) -> Option<String> {
        let outcome = match outcome {
            Outcome::Wrong(why) => Outcome::Wrong(format!("{what}: {why}")),
            o => o,
        };
        let key = peer.to_bytes();
        let (grace, min_score) = (self.config.audit.grace_secs, self.config.audit.min_score);
        let applied = outcome.clone();
        let applied = self
            .persist("an audit outcome", move |s| {
                let mut rec = s.audit(&key)?;
                let lost_standing = rec.apply(&applied, now(), grace, min_score);
                s.put_audit(&key, &rec)?;
                Ok((rec, lost_standing))
            })
            .await;
        let result = match &outcome {
            Outcome::Pass => "pass",
            Outcome::Wrong(_) => "wrong",
            Outcome::Unreachable(_) => "unreachable",
        };
        crate::metrics::Metrics::count(&self.metrics.audits, result);
        let (rec, lost_standing) = applied?;
        match &outcome {
            Outcome::Pass => tracing::debug!("{peer} passed an audit of {what}"),
            Outcome::Wrong(why) => tracing::warn!("{peer} failed an audit of {what}: {why}"),
            Outcome::Unreachable(why) => tracing::info!("{peer} did not answer an audit: {why}"),
        }
        lost_standing.then(|| format!("score {:.2} after: {}", rec.score(), rec.last_error))
    }

    /// Ends every contract with `peer` (both roles), telling it why; its copies count as lost.
    pub(super) async fn end_contracts_with(&self, peer: &PeerId, why: &str) {
        let t = now();
        for (id, c) in self.state.contracts() {
            if c.peer_id().as_ref() == Some(peer)
                && c.is_live(t)
                && let Err(e) = self.cancel(id, &format!("failed audits: {why}")).await
            {
                tracing::warn!("cannot end contract {} with {peer}: {e}", id.short());
            }
        }
        tracing::warn!("{peer} lost its standing ({why})");
    }

    /// Tit for tat: deletes the packs we hold for peers whose contracts we ended more than
    /// `audit.grace_secs` ago.
    async fn drop_data_of_ended(&self) {
        let t = now();
        let contracts = self.state.contracts();
        let serving: HashSet<PeerId> = contracts
            .iter()
            .filter(|(_, c)| c.role == Role::Provider && c.is_live(t))
            .filter_map(|(_, c)| c.peer_id())
            .collect();
        for (_, c) in &contracts {
            if c.role == Role::Provider
                && c.lifecycle.ended_at().is_some_and(|e| t.saturating_sub(e) > self.config.audit.grace_secs)
                && let Some(p) = c.peer_id()
                && !serving.contains(&p)
                && self.store.used(&p) > 0
            {
                match self.reclaim(p).await {
                    Ok(n) => tracing::warn!("dropped {n} bytes held for {p}, whose contract we ended"),
                    Err(e) => tracing::error!("cannot drop data of {p}: {e}"),
                }
            }
        }
    }
}
