//! The client's head (protocol.md §5.8, [`crate::head`]): published after every change to
//! what it has stored, and recovered from the network on a home made with
//! `peer init --recover`.

use super::Inner;
use super::transfer::NetSource;
use crate::head;
use crate::id::PackId;
use crate::protocol::{self, DOMAIN_HEAD_RECORD, DataErrorCode, DataRequest, DataResponse, HeadPointer, now};
use crate::repo::index;
use crate::state::{IndexEntry, IndexPackRecord, PackRecord, Role, StateError};
use futures::StreamExt;
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings counter holding the sequence number of the last head made (protocol.md §3.5).
const HEAD_SEQ: &str = "head_seq";
/// Settings counter holding the sequence number of the last head a provider took.
const HEAD_PUBLISHED: &str = "head_published";
/// Seconds between two republications of our head record (Kademlia keeps records 48 h).
pub const REPUBLISH_SECS: u64 = 6 * 3600;
/// Seconds between two attempts to find our head while recovering.
pub const RECOVER_RETRY_SECS: u64 = 2;

/// Why the current state could not be published as a head (protocol.md §5.8).
#[derive(Debug, thiserror::Error)]
pub(super) enum PublishError {
    /// Sealing failed.
    #[error("cannot make head {seq}: {source}")]
    Make {
        /// The head's sequence number.
        seq: u64,
        /// Why.
        source: head::HeadError,
    },
    /// The local state failed.
    #[error("cannot make a head: {0}")]
    State(#[from] StateError),
    /// Every provider was asked and none stored it.
    #[error("no provider took head {0}")]
    NotTaken(u64),
}

/// Why one attempt to recover the head failed; the next attempt follows
/// [`RECOVER_RETRY_SECS`] later (protocol.md §5.8).
#[derive(Debug, thiserror::Error)]
pub(super) enum RecoverError {
    /// The DHT lookup of our head record failed.
    #[error("cannot look up the head record: {0}")]
    Lookup(#[from] crate::net::NetError),
    /// The holders have an older head than the DHT names (a newer one is on its way).
    #[error("the holders only have head {have} but the DHT points at {want}; retrying")]
    Stale {
        /// The newest head a holder returned.
        have: u64,
        /// The sequence number the DHT names.
        want: u64,
    },
    /// The head names an index pack it lists no record for.
    #[error("the head names index pack {0} but no holder")]
    NoHolder(PackId),
    /// An index pack could not be fetched.
    #[error("index pack {pack}: {source}")]
    Fetch {
        /// Short pack id.
        pack: String,
        /// Why.
        source: crate::transfer::TransferError,
    },
    /// An index pack did not open or decode.
    #[error("index pack {pack}: {source}")]
    Read {
        /// Short pack id.
        pack: String,
        /// Why.
        source: crate::repo::RepoError,
    },
    /// A blocking task stopped before it answered.
    #[error("reading an index pack stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The local state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<RecoverError> for crate::control::Failure {
    /// A failed state is `Local`; anything the network did not give is `Unavailable`.
    fn from(e: RecoverError) -> Self {
        let kind = match &e {
            RecoverError::State(_) | RecoverError::Task(_) => crate::control::ErrorKind::Local,
            _ => crate::control::ErrorKind::Unavailable,
        };
        crate::control::Failure::new(kind, e.to_string())
    }
}

impl Inner {
    /// Seals the current state as a new head, stores it at every provider we have a live
    /// contract with, and points the DHT at the ones that took it. Returns why the state
    /// could not be published, if it could not (also logged and kept for `peer status`):
    /// the previous head stays valid, and the next change or audit round publishes again.
    pub(super) async fn publish_head(&self) -> Option<String> {
        let error = self.try_publish_head().await.err().map(|e| e.to_string());
        if let Some(e) = &error {
            tracing::error!("cannot publish the head: {e}");
        }
        *self.head_error.lock().unwrap_or_else(|p| p.into_inner()) = error.clone();
        error
    }

    /// Publishes again if the last publication failed (each audit round).
    pub(super) async fn republish_if_failed(&self) {
        if self.head_error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            self.publish_head().await;
        }
    }

    async fn try_publish_head(&self) -> Result<(), PublishError> {
        if self.home.recover_marker().exists() {
            return Ok(()); // never overwrite the head we are still looking for
        }
        let _one = self.publishing.lock().await;
        if self.live_contracts(Role::Client).is_empty() {
            return Ok(()); // nowhere to keep a head: nothing backed up yet
        }
        let started = std::time::Instant::now();
        let id = self.id.clone();
        // Made, sealed and its sequence number recorded in one command on the store.
        let made = self.db(move |s| {
            let seq = s.counter(HEAD_SEQ)? + 1;
            let signed = head::collect(s, seq, now()).map_err(head::HeadError::from).and_then(|d| head::seal(&id, &d));
            match signed {
                Ok(signed) => s.set_counter(HEAD_SEQ, seq).map(|_| Ok((seq, signed))),
                Err(source) => Ok(Err(PublishError::Make { seq, source })),
            }
        });
        let (seq, signed) = made.await??;
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
            return Err(PublishError::NotTaken(seq));
        }
        let pointer = HeadPointer {
            seq,
            holders: holders.iter().take(protocol::MAX_HEAD_HOLDERS).map(|p| p.to_bytes().into()).collect(),
        };
        let value = protocol::to_cbor(&self.id.sign(DOMAIN_HEAD_RECORD, protocol::to_cbor(&pointer)));
        let (path, kept) = (self.home.head_record(), value.clone());
        let written = tokio::task::spawn_blocking(move || {
            crate::provider::write_tmp(&path, &kept).and_then(|t| crate::provider::commit_tmp(&t, &path))
        });
        if let Ok(Err(e)) = written.await {
            tracing::warn!("cannot keep the head record at {}: {e}", self.home.head_record().display());
        }
        self.net.put_record(protocol::head_record_key(&self.me()), value).await;
        self.persist("that the head is published", move |s| s.set_counter(HEAD_PUBLISHED, seq)).await;
        let (bytes, secs) = (signed.body.len(), started.elapsed().as_secs_f64());
        tracing::info!("head {seq} ({bytes} bytes sealed) stored at {} providers in {secs:.2} s", holders.len());
        Ok(())
    }

    /// The last head published (its sequence number, 0 for none) and why the state since
    /// could not be published, if so.
    pub(super) async fn head_report(&self) -> crate::control::HeadState {
        let head = self.db(|s| s.counter(HEAD_PUBLISHED)).await.unwrap_or(0);
        crate::control::HeadState {
            head,
            head_error: self.head_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
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
                    if let Err(e) = std::fs::remove_file(&marker) {
                        tracing::error!("cannot remove {}: {e}; remove it by hand", marker.display());
                    }
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
    async fn try_recover(self: &Arc<Self>) -> Result<Option<usize>, RecoverError> {
        let me = self.me();
        let values = self.net.get_record(protocol::head_record_key(&me)).await?;
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
        let mut newest: Option<head::Opened> = None;
        for h in holders {
            match self.net.data_request(h, vec![], DataRequest::GetHead).await {
                Ok(DataResponse::Head(s)) => match head::open(&self.id, &s) {
                    Ok(o) if newest.as_ref().is_none_or(|n| o.doc.seq > n.doc.seq) => newest = Some(o),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{h} returned a bad head: {e}"),
                },
                Ok(DataResponse::Error { code: DataErrorCode::NotFound, .. }) => {}
                other => tracing::info!("{h} did not return our head: {other:?}"),
            }
        }
        let Some(head::Opened { doc, inline_index }) = newest else { return Ok(None) };
        if doc.seq < best {
            return Err(RecoverError::Stale { have: doc.seq, want: best });
        }
        self.db(move |s| s.import_index(inline_index)).await?;
        let index = self.recover_index(&doc).await?;
        let snapshots = doc.snapshots.len();
        self.db(move |s| {
            s.import(&doc.snapshots, &doc.packs, &index, &doc.contracts)?;
            s.set_counter(HEAD_SEQ, doc.seq)?;
            s.set_counter(HEAD_PUBLISHED, doc.seq)?;
            if s.offered()? == 0 { s.set_offered(doc.offered) } else { Ok(()) }
        })
        .await?;
        Ok(Some(snapshots))
    }

    /// Fetches the index packs `doc` names (§3.8) and writes their entries for the packs
    /// the head lists, one index pack per transaction. Returns the index pack records.
    pub(super) async fn recover_index(
        self: &Arc<Self>,
        doc: &head::HeadDoc,
    ) -> Result<Vec<IndexPackRecord>, RecoverError> {
        let records: HashMap<PackId, PackRecord> = doc.packs.iter().cloned().collect();
        let source = NetSource::new(self.clone());
        let mut out = Vec::new();
        for p in &doc.index {
            let rec = records.get(p).cloned().ok_or(RecoverError::NoHolder(*p))?;
            let bytes =
                source.fetch_placed(*p, rec).await.map_err(|source| RecoverError::Fetch { pack: p.short(), source })?;
            let keys = (self.id.id_key, self.id.enc_key);
            let packs = tokio::task::spawn_blocking(move || index::read((&keys.0, &keys.1), &bytes))
                .await?
                .map_err(|source| RecoverError::Read { pack: p.short(), source })?;
            let mut covers: Vec<PackId> = packs.iter().map(|ip| ip.id).collect();
            covers.dedup();
            let entries = packs.iter().filter(|ip| records.contains_key(&ip.id)).flat_map(|ip| {
                ip.blobs.iter().map(|b| {
                    let e = IndexEntry { pack: ip.id, kind: b.1, offset: b.2, length: b.3, raw_length: b.4 };
                    (b.0, e)
                })
            });
            let entries: Vec<_> = entries.collect();
            self.db(move |s| s.import_index(entries)).await?;
            out.push(IndexPackRecord { pack: *p, covers });
        }
        Ok(out)
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
            if !self.state.contracts().iter().any(|(_, c)| c.lifecycle.unsent_cancel().is_some()) {
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
