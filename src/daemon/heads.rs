//! The client's head (protocol.md §5.8, [`crate::head`]): published after every change to
//! what it has stored, and recovered from the network on a home made with
//! `peer init --recover`.

use super::Inner;
use crate::head;
use crate::protocol::{self, DOMAIN_HEAD_RECORD, DataErrorCode, DataRequest, DataResponse, HeadPointer, now};
use crate::state::Role;
use futures::StreamExt;
use libp2p::PeerId;
use std::sync::Arc;
use std::time::Duration;

/// Settings counter holding the sequence number of the last head published.
const HEAD_SEQ: &str = "head_seq";
/// Seconds between two republications of our head record (Kademlia keeps records 48 h).
pub const REPUBLISH_SECS: u64 = 6 * 3600;
/// Seconds between two attempts to find our head while recovering.
pub const RECOVER_RETRY_SECS: u64 = 2;

impl Inner {
    /// Seals the current state as a new head, stores it at every provider we have a live
    /// contract with, and points the DHT at the ones that took it. Failures are logged: the
    /// previous head stays valid, and the next change publishes again.
    pub(super) async fn publish_head(&self) {
        if self.home.recover_marker().exists() {
            return; // never overwrite the head we are still looking for
        }
        let _one = self.publishing.lock().await;
        if self.live_contracts(Role::Client).is_empty() {
            return; // nowhere to keep a head: nothing backed up yet
        }
        let seq = self.state.counter(HEAD_SEQ).unwrap_or(0) + 1;
        let signed = match head::collect(&self.state, seq, now())
            .map_err(head::HeadError::from)
            .and_then(|d| head::seal(&self.id, &d))
        {
            Ok(s) => s,
            Err(e) => return tracing::error!("cannot make a head: {e}"),
        };
        if let Err(e) = self.state.set_counter(HEAD_SEQ, seq) {
            return tracing::error!("cannot record the head sequence: {e}");
        }
        let providers: std::collections::HashSet<PeerId> =
            self.live_contracts(Role::Client).iter().filter_map(|(_, c)| c.peer_id()).collect();
        let holders: Vec<PeerId> = futures::stream::iter(providers)
            .map(|p| {
                let req = DataRequest::PutHead(signed.clone());
                async move {
                    match self.net.data_request(p, self.addrs_of(&p), req).await {
                        Ok(DataResponse::Stored) => Some(p),
                        other => {
                            tracing::info!("{p} did not take head {seq}: {other:?}");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .filter_map(|p| async move { p })
            .collect()
            .await;
        if holders.is_empty() {
            return tracing::warn!("no provider took head {seq}");
        }
        let pointer = HeadPointer {
            seq,
            holders: holders.iter().take(protocol::MAX_HEAD_HOLDERS).map(|p| p.to_bytes().into()).collect(),
        };
        let value = protocol::to_cbor(&self.id.sign(DOMAIN_HEAD_RECORD, protocol::to_cbor(&pointer)));
        let path = self.home.head_record();
        if let Err(e) = crate::provider::write_tmp(&path, &value).and_then(|t| crate::provider::commit_tmp(&t, &path)) {
            tracing::warn!("cannot keep the head record at {}: {e}", path.display());
        }
        self.net.put_record(protocol::head_record_key(&self.me()), value).await;
        tracing::info!("head {seq} stored at {} providers", holders.len());
    }

    /// Puts our last head record into the DHT again, a minute after start and then every
    /// [`REPUBLISH_SECS`]: Kademlia drops records after 48 h, and a daemon that published
    /// nothing new since its restart must not let its head become unfindable.
    pub(super) async fn republish_loop(self: Arc<Self>) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        loop {
            if !self.home.recover_marker().exists()
                && let Ok(value) = std::fs::read(self.home.head_record())
            {
                self.net.put_record(protocol::head_record_key(&self.me()), value).await;
                tracing::debug!("head record republished");
            }
            tokio::time::sleep(Duration::from_secs(REPUBLISH_SECS)).await;
        }
    }

    /// On a recovering home: looks for our head until it is found, then imports it, tells
    /// our providers we lost their claims, and resumes as before.
    pub(super) async fn recover_loop(self: Arc<Self>) {
        let marker = self.home.recover_marker();
        while marker.exists() {
            match self.try_recover().await {
                Ok(Some(n)) => {
                    let _ = std::fs::remove_file(&marker);
                    tracing::warn!("recovered head: {n} snapshots; resuming");
                    self.claims_lost().await;
                    self.lost_what_we_held().await;
                    self.publish_head().await;
                    return;
                }
                Ok(None) => tracing::info!("looking for our head in the network…"),
                Err(e) => tracing::warn!("recovery: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(RECOVER_RETRY_SECS)).await;
        }
    }

    /// One attempt: the newest valid pointer in the DHT, then the newest head its holders
    /// have. Returns the number of snapshots imported, or `None` when nothing is found yet.
    async fn try_recover(&self) -> Result<Option<usize>, String> {
        let me = self.me();
        let values = self.net.get_record(protocol::head_record_key(&me)).await.map_err(|e| e.to_string())?;
        let mut holders: Vec<PeerId> = Vec::new();
        let mut best = 0;
        for v in values {
            match protocol::verify_head_record(&protocol::head_record_key(&me), &v) {
                Ok((_, p)) if p.seq >= best => {
                    best = p.seq;
                    for h in p.holders.iter().filter_map(|b| PeerId::from_bytes(b).ok()) {
                        if !holders.contains(&h) {
                            holders.push(h);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::info!("ignored a bad head record: {e}"),
            }
        }
        let mut newest: Option<head::HeadDoc> = None;
        for h in holders {
            match self.net.data_request(h, vec![], DataRequest::GetHead).await {
                Ok(DataResponse::Head(s)) => match head::open(&self.id, &s) {
                    Ok(d) if newest.as_ref().is_none_or(|n| d.seq > n.seq) => newest = Some(d),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{h} returned a bad head: {e}"),
                },
                Ok(DataResponse::Error { code: DataErrorCode::NotFound, .. }) => {}
                other => tracing::info!("{h} did not return our head: {other:?}"),
            }
        }
        let Some(doc) = newest else { return Ok(None) };
        if doc.seq < best {
            return Err(format!("the holders only have head {} but the DHT points at {best}; retrying", doc.seq));
        }
        self.state
            .import(&doc.snapshots, &doc.packs, &doc.index, &doc.contracts)
            .and_then(|_| self.state.set_counter(HEAD_SEQ, doc.seq))
            .and_then(|_| if self.state.offered()? == 0 { self.state.set_offered(doc.offered) } else { Ok(()) })
            .map_err(|e| e.to_string())?;
        Ok(Some(doc.snapshots.len()))
    }

    /// Ends every contract in which we stored packs for others: they were on the lost disk.
    /// The signed cancellation tells each client at once, so it re-places its copies
    /// instead of failing us in its audits.
    async fn lost_what_we_held(&self) {
        for (id, _) in self.live_contracts(Role::Provider) {
            let why = "this peer lost its disk and was recovered from its key; the packs it held for you are gone";
            if let Err(e) = self.cancel(id, why).await {
                tracing::warn!("cannot end contract {}: {e}", id.short());
            }
        }
        // A cancellation that did not get through is retried at every audit round anyway;
        // try a few more times now, so those clients learn of the loss soon.
        for _ in 0..5 {
            if !self.state.contracts().unwrap_or_default().iter().any(|(_, c)| c.unsent_cancel.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(RECOVER_RETRY_SECS)).await;
            self.retry_cancels().await;
        }
    }

    /// Tells every provider we have a contract with that its claims here are gone.
    async fn claims_lost(&self) {
        let providers: std::collections::HashSet<PeerId> =
            self.live_contracts(Role::Client).iter().filter_map(|(_, c)| c.peer_id()).collect();
        for p in providers {
            match self.net.data_request(p, self.addrs_of(&p), DataRequest::ClaimsLost).await {
                Ok(DataResponse::Released) => tracing::info!("{p} will place its claims again"),
                other => tracing::warn!("{p} did not take the loss of its claims: {other:?}"),
            }
        }
    }
}
