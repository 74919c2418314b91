//! Portable proof of default (protocol.md §5.10): providers sign their audit answers; a
//! client that receives a signed answer that does not hold keeps it with the contract as
//! evidence, refuses the provider from then on, and shares the evidence on gossip. Every
//! peer checks evidence it hears (the contract's signatures, the provider's signature on
//! the answer, and the Merkle check that fails), records the provider as a defaulter and
//! refuses its proposals and acceptances. A missing answer proves nothing and is never
//! shared.

use super::Inner;
use crate::identity::Signed;
use crate::protocol::{self, AuditAnswer, DOMAIN_AUDIT_ANSWER, DataErrorCode, DataResponse, Evidence, now};
use crate::state::{DefaulterRecord, Role};
use libp2p::PeerId;
use std::sync::Arc;

/// Defaulters remembered at most; evidence about more is checked but not kept.
pub const MAX_DEFAULTERS: usize = 10_000;
/// Evidence messages one forwarder may bring per minute; more are ignored.
pub const EVIDENCE_PER_MINUTE: u32 = 20;
/// Own evidence republished per audit round, so that peers that were away learn it.
pub const REPUBLISH_PER_ROUND: usize = 8;

impl Inner {
    /// Whether verified evidence says `peer` defaulted.
    pub(super) fn is_defaulter(&self, peer: &PeerId) -> bool {
        self.defaulters.lock().unwrap_or_else(|p| p.into_inner()).contains(peer)
    }

    /// Provider side: `AuditSigned` — the leaf and its path as [`crate::audit::prove`]
    /// gives them from the copy held, in an [`AuditAnswer`] signed by us.
    pub(super) async fn on_audit_signed(&self, peer: PeerId, pack: crate::id::PackId, leaf: u32) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            store.get(&peer, &pack).map(|d| d.map(|d| (d.len() as u64, crate::audit::prove(&d, leaf))))
        })
        .await;
        let (size, bytes, path) = match read {
            Ok(Ok(Some((size, Some((bytes, path)))))) => (size, bytes, path),
            Ok(Ok(Some((_, None)))) => return err(DataErrorCode::BadPack, format!("pack {pack} has no leaf {leaf}")),
            Ok(Ok(None)) => return err(DataErrorCode::NotFound, format!("no pack {pack} held for {peer}")),
            Ok(Err(e)) => {
                tracing::error!("read failed: {e}");
                return err(DataErrorCode::Internal, "provider could not read the pack".into());
            }
            Err(e) => return err(DataErrorCode::Internal, e.to_string()),
        };
        let answer = AuditAnswer {
            client: peer.to_bytes(),
            pack,
            size,
            leaf,
            leaf_hash: crate::repo::merkle::leaf_hash(&bytes).to_vec(),
            path,
            time: now(),
        };
        DataResponse::SignedProof { answer: self.id.sign(DOMAIN_AUDIT_ANSWER, protocol::to_cbor(&answer)), leaf: bytes }
    }

    /// Client side: judges a signed answer from `peer` to our challenge of leaf `leaf` of
    /// `pack` (`size` bytes). A statement signed by `peer` for us that does not hold is
    /// kept and shared as evidence; one that is not a proper statement is only wrong.
    pub(super) async fn judge_signed(
        &self,
        peer: PeerId,
        challenge: (crate::id::PackId, u64, u32),
        answer: Signed,
        leaf: Vec<u8>,
    ) -> crate::audit::Outcome {
        use crate::audit::Outcome;
        let (pack, size, index) = challenge;
        let wrong = |why: &str| Outcome::Wrong(format!("{why} (leaf {index} of pack {})", pack.short()));
        if answer.verify(DOMAIN_AUDIT_ANSWER).ok() != Some(peer) {
            return wrong("an answer not signed by the holder");
        }
        let Ok(a) = protocol::from_cbor::<AuditAnswer>("audit answer", &answer.body) else {
            return wrong("a malformed signed answer");
        };
        if a.client != self.me().to_bytes() || a.pack != pack || a.leaf != index {
            return wrong("a signed answer to another challenge");
        }
        if a.leaf_hash != crate::repo::merkle::leaf_hash(&leaf) || leaf.len() > crate::repo::merkle::LEAF_SIZE {
            return wrong("a leaf that is not the one the signed answer names");
        }
        if a.holds() && a.size == size {
            return Outcome::Pass;
        }
        if !a.holds() {
            self.caught(peer, answer).await;
            return wrong("a signed wrong proof, kept as evidence");
        }
        wrong("a proof for another pack size")
    }

    /// Records and shares evidence against `provider`, built from its signed answer and
    /// our contract with it.
    async fn caught(&self, provider: PeerId, answer: Signed) {
        let contract = self
            .state
            .contracts()
            .into_iter()
            .filter(|(_, c)| c.role == Role::Client && c.peer_id() == Some(provider))
            .max_by_key(|(_, c)| c.expires)
            .map(|(_, c)| c.contract);
        let Some(contract) = contract else {
            return tracing::warn!("{provider} signed a wrong proof, but no contract with it is left to prove it");
        };
        let evidence = Evidence { contract, answer };
        if let Err(e) = protocol::verify_evidence(&evidence) {
            return tracing::error!("evidence against {provider} does not verify: {e}");
        }
        let bytes = protocol::to_cbor(&evidence);
        tracing::warn!("{provider} signed a wrong audit answer: evidence kept and shared");
        self.record_defaulter(provider, bytes.clone(), true).await;
        if let Err(e) = self.net.publish_evidence(bytes).await {
            tracing::info!("cannot share the evidence now ({e}); it is republished each audit round");
        }
    }

    /// Keeps `provider` as a defaulter with its evidence (`ours`: we caught it).
    async fn record_defaulter(&self, provider: PeerId, evidence: Vec<u8>, ours: bool) {
        {
            let mut set = self.defaulters.lock().unwrap_or_else(|p| p.into_inner());
            if set.contains(&provider) || set.len() >= MAX_DEFAULTERS {
                return;
            }
            set.insert(provider);
        }
        let rec = DefaulterRecord { since: now(), evidence, ours };
        let key = provider.to_bytes();
        self.persist("a defaulter", move |s| s.put_defaulter(&key, &rec)).await;
    }

    /// A gossip message on the evidence topic: accepted (and forwarded) when it is
    /// verified evidence, rejected otherwise.
    pub(super) async fn on_evidence(&self, id: libp2p::gossipsub::MessageId, source: PeerId, data: Vec<u8>) {
        let t = now();
        let admitted = match self.gossip.lock() {
            Ok(mut g) => g.admit_evidence(source, t),
            Err(_) => false,
        };
        if !admitted {
            return self.net.ignore(id, source).await;
        }
        let verified = protocol::from_cbor::<Evidence>("evidence", &data)
            .map_err(|e| e.to_string())
            .and_then(|e| protocol::verify_evidence(&e).map_err(|e| e.to_string()));
        match verified {
            Ok((provider, client)) => {
                self.net.validate(id, source, true).await;
                if provider != self.me() && !self.is_defaulter(&provider) {
                    tracing::warn!("evidence from {client}: {provider} signed a wrong audit answer; refusing it");
                    self.record_defaulter(provider, data, false).await;
                }
            }
            Err(e) => {
                tracing::debug!("rejected evidence from {source}: {e}");
                self.net.validate(id, source, false).await;
            }
        }
    }

    /// Shares again the evidence we caught ourselves (a few per audit round).
    pub(super) async fn republish_evidence(self: &Arc<Self>) {
        let ours = match self.db(|s| s.defaulters()).await {
            Ok(d) => d,
            Err(e) => return tracing::error!("cannot read the defaulters: {e}"),
        };
        for (_, rec) in ours.into_iter().filter(|(_, r)| r.ours).take(REPUBLISH_PER_ROUND) {
            // No peer on the topic yet is the usual cause; the next round tries again.
            if let Err(e) = self.net.publish_evidence(rec.evidence).await {
                tracing::debug!("evidence not republished this round: {e}");
            }
        }
    }

    /// The defaulters for `status`: (PeerId, since, evidence).
    pub(super) async fn defaulter_list(&self) -> Vec<crate::control::DefaulterInfo> {
        let all = self.db(|s| s.defaulters()).await.unwrap_or_default();
        all.into_iter()
            .filter_map(|(k, r)| {
                Some(crate::control::DefaulterInfo {
                    peer: PeerId::from_bytes(&k).ok()?.to_string(),
                    since: r.since,
                    evidence: hex::encode(&r.evidence),
                })
            })
            .collect()
    }
}
