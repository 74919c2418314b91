//! Claims on both sides (protocol.md §4.6, [`crate::claims`]): the client holds the claim
//! blocks its providers place, answers their audits and releases blocks on request; the
//! provider places, audits and releases the claims its clients owe it, once per audit
//! round.

use super::Inner;
use crate::audit::Outcome;
use crate::claims::{self, CLAIM_BLOCK, SAMPLE};
use crate::protocol::{DataErrorCode, DataRequest, DataResponse};
use crate::state::Role;
use futures::StreamExt;
use libp2p::PeerId;
use rand::RngExt;
use std::collections::HashMap;
use std::time::Duration;

impl Inner {
    /// Client side: bytes we owe `provider`, the sum of its live grants to us.
    pub(super) fn owed_to(&self, provider: &PeerId) -> u64 {
        self.live_contracts(Role::Client)
            .iter()
            .filter(|(_, c)| c.peer_id().as_ref() == Some(provider))
            .map(|(_, c)| c.bytes)
            .sum()
    }

    /// Client side: answers a claim request from one of our providers.
    pub(super) async fn on_claim(&self, peer: PeerId, req: DataRequest) -> DataResponse {
        let err = |code, message: String| DataResponse::Error { code, message };
        let claims = self.claims.clone();
        match req {
            DataRequest::StoreClaim { index, data } => {
                let owed = self.owed_to(&peer);
                if (u64::from(index) + 1) * CLAIM_BLOCK > owed {
                    return err(
                        DataErrorCode::NoContract,
                        format!("block {index} is beyond the {owed} bytes our live contracts with {peer} owe it"),
                    );
                }
                let free = crate::provider::free_space(&self.home.dir).unwrap_or(0);
                if free < CLAIM_BLOCK + self.config.provider.min_free_bytes {
                    return err(
                        DataErrorCode::NoRoom,
                        format!("only {free} bytes of disk free for claim block {index}"),
                    );
                }
                match tokio::task::spawn_blocking(move || claims.put(&peer, index, &data)).await {
                    Ok(Ok(())) => DataResponse::Stored,
                    Ok(Err(e @ claims::ClaimError::BadSize(_))) => err(DataErrorCode::BadPack, e.to_string()),
                    Ok(Err(e)) => {
                        tracing::error!("cannot store a claim block: {e}");
                        err(DataErrorCode::Internal, "could not write the claim block".into())
                    }
                    Err(e) => err(DataErrorCode::Internal, e.to_string()),
                }
            }
            DataRequest::AuditClaim { index, offset } => {
                match tokio::task::spawn_blocking(move || claims.sample(&peer, index, offset)).await {
                    Ok(Ok(Some(b))) => DataResponse::Sample(b),
                    Ok(Ok(None)) => err(DataErrorCode::NotFound, format!("no claim block {index} held for {peer}")),
                    Ok(Err(e)) => {
                        tracing::error!("cannot read a claim block: {e}");
                        err(DataErrorCode::Internal, "could not read the claim block".into())
                    }
                    Err(e) => err(DataErrorCode::Internal, e.to_string()),
                }
            }
            DataRequest::ReleaseClaim { keep } => {
                match tokio::task::spawn_blocking(move || claims.release(&peer, keep)).await {
                    Ok(Ok(n)) => {
                        tracing::info!("released {n} bytes of claims held for {peer}");
                        DataResponse::Released
                    }
                    Ok(Err(e)) => {
                        tracing::error!("cannot release claim blocks: {e}");
                        err(DataErrorCode::Internal, "could not delete the claim blocks".into())
                    }
                    Err(e) => err(DataErrorCode::Internal, e.to_string()),
                }
            }
            _ => err(DataErrorCode::Internal, "not a claim request".into()),
        }
    }

    /// Provider side: for every client we hold packs for under a live contract, brings its
    /// claim to the target size (placing or releasing blocks) and audits one block.
    pub(super) async fn claim_round(&self) {
        let mut owed: HashMap<PeerId, u64> = HashMap::new();
        for (_, c) in self.live_contracts(Role::Provider) {
            if let Some(p) = c.peer_id() {
                *owed.entry(p).or_default() += c.bytes;
            }
        }
        // A client whose every contract with us expired drops our claim (it owes us
        // nothing): start from zero should a new contract come.
        let clients = self.persist("claim counts", |s| s.claim_clients()).await.unwrap_or_default();
        for c in clients {
            if PeerId::from_bytes(&c).is_ok_and(|p| !owed.contains_key(&p)) {
                self.persist("a dropped claim", move |s| s.set_claim_placed(&c, 0)).await;
            }
        }
        let mut used: HashMap<PeerId, u64> = HashMap::new();
        for (_, c) in self.live_contracts(Role::Client) {
            if let Some(p) = c.peer_id() {
                *used.entry(p).or_default() += c.used;
            }
        }
        let results: Vec<(PeerId, String, Outcome)> = futures::stream::iter(owed)
            .map(|(client, owed)| {
                let target = claims::target_blocks(owed, used.get(&client).copied().unwrap_or(0));
                async move { self.upkeep_claim(client, target).await.map(|(what, o)| (client, what, o)) }
            })
            .buffer_unordered(super::auditing::AUDITS_AT_ONCE)
            .filter_map(|r| async move { r })
            .collect()
            .await;
        if results.len() > 1 && results.iter().all(|(_, _, o)| matches!(o, Outcome::Unreachable(_))) {
            tracing::warn!("no client answered this claim round; is this peer offline?");
            return;
        }
        for (peer, what, outcome) in results {
            if let Some(why) = self.record(peer, &what, outcome).await {
                self.end_contracts_with(&peer, &why).await;
            }
        }
    }

    /// One client's claim: release down to `target` blocks, place up to it, then audit a
    /// random placed block. Returns what was checked and the verdict, or `None` when there
    /// is nothing to judge (nothing placed yet, or the client was busy).
    async fn upkeep_claim(&self, client: PeerId, target: u32) -> Option<(String, Outcome)> {
        let key = client.to_bytes();
        let k = key.clone();
        let mut placed = self.persist("claim counts", move |s| s.claim_placed(&k)).await?;
        let addrs = self.addrs_of(&client);
        let timeout = Duration::from_secs(self.config.audit.timeout_secs);
        let ask = |req: DataRequest| {
            let addrs = addrs.clone();
            async move { tokio::time::timeout(timeout, self.net.data_request(client, addrs, req)).await }
        };
        if placed > target {
            match ask(DataRequest::ReleaseClaim { keep: target }).await {
                Ok(Ok(DataResponse::Released)) => {
                    placed = target;
                    let k = key.clone();
                    self.persist("released claim blocks", move |s| s.set_claim_placed(&k, placed)).await;
                }
                other => tracing::debug!("{client} did not release claim blocks: {other:?}"),
            }
        }
        let ckey = claims::client_key(&self.id.claim_key, &client);
        while placed < target {
            let index = placed;
            let data = tokio::task::spawn_blocking(move || claims::keystream(&ckey, index, 0, CLAIM_BLOCK as usize))
                .await
                .ok()?;
            let what = format!("claim block {index}");
            // No audit timeout here: a 16 MiB block may take a while on a slow link; the
            // data protocol's own timeout bounds it.
            match self.net.data_request(client, addrs.clone(), DataRequest::StoreClaim { index, data }).await {
                Ok(DataResponse::Stored) => {
                    placed += 1;
                    let k = key.clone();
                    self.persist("a placed claim block", move |s| s.set_claim_placed(&k, placed)).await;
                }
                // It owes us this space and refuses it: its offer is not real disk.
                Ok(DataResponse::Error { code: DataErrorCode::NoRoom, message }) => {
                    return Some((what, Outcome::Wrong(format!("refused the space it owes: {message}"))));
                }
                // Our own streams to it are all busy: try again next round.
                Err(crate::net::NetError::Saturated(_)) => break,
                // Silence counts like silence to an audit: a failure once the grace is over.
                Err(e) => return Some((what, Outcome::Unreachable(e.to_string()))),
                Ok(other) => {
                    tracing::debug!("claim block {index} not placed at {client}: {other:?}");
                    break;
                }
            }
        }
        let n = placed.min(target);
        if n == 0 {
            return None;
        }
        let (index, offset) = {
            let mut rng = rand::rng();
            (rng.random_range(0..n), rng.random_range(0..=CLAIM_BLOCK - SAMPLE as u64))
        };
        let what = format!("claim block {index}");
        let outcome =
            super::auditing::verdict(ask(DataRequest::AuditClaim { index, offset }).await, timeout, |r| match r {
                DataResponse::Sample(got) if got == claims::keystream(&ckey, index, offset, SAMPLE) => {
                    Ok(Outcome::Pass)
                }
                DataResponse::Sample(_) => Ok(Outcome::Wrong("wrong claim bytes".into())),
                other => Err(other),
            })?;
        Some((what, outcome))
    }

    /// Client side: drops the claims we hold for providers we owe nothing any more (every
    /// contract with them ended or expired), once they acknowledged any cancellation of
    /// ours: until then they may still audit those claims.
    pub(super) async fn drop_unowed_claims(&self) {
        let claims = self.claims.clone();
        let Ok(held) = tokio::task::spawn_blocking(move || claims.providers()).await else { return };
        let contracts = self.state.contracts();
        for provider in held {
            let pending =
                contracts.iter().any(|(_, c)| c.peer_id() == Some(provider) && c.lifecycle.unsent_cancel().is_some());
            if pending || self.owed_to(&provider) > 0 {
                continue;
            }
            let claims = self.claims.clone();
            match tokio::task::spawn_blocking(move || claims.release(&provider, 0)).await {
                Ok(Ok(n)) => tracing::info!("dropped {n} bytes of claims held for {provider}, owed nothing now"),
                Ok(Err(e)) => tracing::error!("cannot drop the claims of {provider}: {e}"),
                Err(e) => tracing::error!("cannot drop the claims of {provider}: {e}"),
            }
        }
    }
}
