//! Repair (protocol.md §5.5, DESIGN §7): keeps every pack at its target number of live
//! copies without any coordinator.
//!
//! A copy is *live* while its holder's contract is live, the holder is in good audit
//! standing, and it has not been unreachable for longer than `repair.grace_secs`. Each
//! round, packs below their target (fewest live copies first) are fetched from any holder
//! that still answers, verified against their id, and stored on new distinct providers,
//! proposing new contracts when no current one has room. Repair works from the network
//! alone: the original files are not needed. It is bounded: `repair.concurrency` packs at
//! once and `repair.bytes_per_sec` for all uploads together, so a short outage cannot turn
//! into a storm.

use super::Inner;
use super::transfer::{NetSink, NetSource};
use crate::audit::AuditRecord;
use crate::id::{ContractId, PackId};
use crate::protocol::now;
use crate::repo::pack::SealedPack;
use crate::restore::PackSource;
use crate::state::{Holder, PackRecord, Placement, Role};
use futures::StreamExt;
use libp2p::PeerId;
use rand::RngExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Which copies count as live at one moment.
pub(super) struct Liveness {
    contracts: HashSet<ContractId>,
    audits: HashMap<Vec<u8>, AuditRecord>,
    now: u64,
    grace: u64,
}

impl Liveness {
    /// True when the copy at `h` counts: live contract, good standing, not gone too long.
    pub(super) fn live(&self, h: &Holder) -> bool {
        self.contracts.contains(&h.contract)
            && self
                .audits
                .get(&h.peer)
                .is_none_or(|a| a.good && a.offline_since.is_none_or(|s| self.now.saturating_sub(s) <= self.grace))
    }

    /// Live copies (or shards) of a pack.
    pub(super) fn count(&self, rec: &PackRecord) -> usize {
        rec.live_count(|h| self.live(h))
    }
}

/// Why one pack could not be repaired this round (protocol.md Appendix A.5.5); the next
/// round tries again.
#[derive(Debug, thiserror::Error)]
enum RepairError {
    /// No holder could supply the pack.
    #[error("no holder could supply it: {0}")]
    Fetch(crate::transfer::TransferError),
    /// Its shards could not be rebuilt.
    #[error(transparent)]
    Erasure(#[from] crate::repo::erasure::ErasureError),
    /// A rebuilt shard does not hash to the id its record names.
    #[error("rebuilt shard {0} does not match its id")]
    ShardMismatch(usize),
    /// Fewer copies or shards than wanted found a new holder.
    #[error("placed {placed} of {wanted} {what}: {}", if errors.is_empty() { "no other provider has room".to_string() } else { crate::transfer::join(errors) })]
    Short {
        /// "new copies" or "shards".
        what: &'static str,
        /// How many were placed.
        placed: usize,
        /// How many were wanted.
        wanted: usize,
        /// What each provider tried answered.
        errors: Vec<crate::transfer::HolderError>,
    },
    /// The rebuilding task stopped.
    #[error("rebuilding stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
    /// The local state failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Spaces repair's uploads so that all of them together stay under a byte rate
/// (`repair.bytes_per_sec`): a token bucket (governor's GCRA) counted in KiB that holds at
/// most one second's worth, so a round starts at once and then keeps to the rate.
struct Pacer {
    limiter: governor::DefaultDirectRateLimiter,
    /// KiB per second, also the most one grant may take.
    per_sec: std::num::NonZeroU32,
}

impl Pacer {
    fn new(bytes_per_sec: u64) -> Pacer {
        let kib = u32::try_from(bytes_per_sec.div_ceil(1024)).unwrap_or(u32::MAX);
        let per_sec = std::num::NonZeroU32::new(kib).unwrap_or(std::num::NonZeroU32::MIN);
        Pacer { limiter: governor::RateLimiter::direct(governor::Quota::per_second(per_sec)), per_sec }
    }

    /// Waits for the turn of an upload of `bytes`, taken from the bucket a second's worth
    /// at a time.
    async fn wait(&self, bytes: u64) {
        let mut left = bytes.div_ceil(1024);
        while let Some(n) = std::num::NonZeroU32::new(left.min(u64::from(self.per_sec.get())) as u32) {
            if let Err(e) = self.limiter.until_n_ready(n).await {
                // n is at most the bucket's size, so the limiter always grants it.
                return tracing::error!("repair pacing: {e}");
            }
            left -= u64::from(n.get());
        }
    }
}

impl Inner {
    /// The current [`Liveness`].
    pub(super) async fn liveness(&self) -> Liveness {
        let audits = match self.db(|s| s.audits()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot read the audit records: {e}");
                vec![]
            }
        };
        Liveness {
            contracts: self.live_contracts(Role::Client).into_iter().map(|(id, _)| id).collect(),
            audits: audits.into_iter().collect(),
            now: now(),
            grace: self.config.repair.grace_secs,
        }
    }

    /// Runs repair rounds forever, one after each random wait of 0.5–1.5 × `audit.interval_secs`.
    pub(super) async fn repair_loop(self: Arc<Self>) {
        loop {
            let base = self.config.audit.interval_secs as f64;
            let wait = base * rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.clone().repair_round().await;
        }
    }

    /// Ends our contracts (as client) with providers unreachable for longer than
    /// `[repair] grace_secs` (protocol.md §4.5); a failed cancellation is logged.
    async fn end_unreachable_contracts(&self) {
        let (t, grace) = (now(), self.config.repair.grace_secs);
        for (id, c) in self.live_contracts(Role::Client) {
            let key = c.peer.clone();
            if let Ok(a) = self.db(move |s| s.audit(&key)).await
                && a.offline_since.is_some_and(|s| t.saturating_sub(s) > grace)
            {
                let why = format!("unreachable for more than {grace} s; its copies are placed elsewhere");
                if let Err(e) = self.cancel(id, &why).await {
                    tracing::warn!("cannot end contract {}: {e}", id.short());
                }
            }
        }
    }

    /// One round: first ends the contracts of providers unreachable for longer than the
    /// grace (their copies no longer count, and the allowance they used is needed for new
    /// providers; the signed cancellation reaches them when they are back), then repairs
    /// every pack below its target, fewest live copies first.
    async fn repair_round(self: Arc<Self>) {
        self.end_unreachable_contracts().await;
        let packs = match self.db(|s| s.packs()).await {
            Ok(p) => p,
            Err(e) => return tracing::error!("repair round: {e}"),
        };
        let lv = self.liveness().await;
        let mut todo: Vec<(usize, PackId, PackRecord)> = packs
            .into_iter()
            .filter(|(id, r)| !r.objects(id).is_empty() && !r.garbage)
            .map(|(id, r)| (lv.count(&r), id, r))
            .filter(|(live, _, r)| *live < r.target())
            .collect();
        if todo.is_empty() {
            return;
        }
        todo.sort_by_key(|(live, _, _)| *live);
        // Enough providers with room for the neediest pack, besides its live holders.
        let (ready, _) = self.ready_providers().await;
        let wanted = todo
            .iter()
            .map(|(live, _, r)| {
                let holding = r.holder_peers().into_iter().filter_map(|p| PeerId::from_bytes(&p).ok());
                holding.filter(|p| ready.contains(p)).count() + r.target() - live
            })
            .max()
            .unwrap_or(0);
        if wanted > ready.len()
            && let Err(e) = self.ensure_providers(wanted).await
        {
            tracing::warn!("repair: {e}");
        }
        tracing::info!("repair: {} packs below their target copies", todo.len());
        let sink = Arc::new(NetSink::new(self.clone(), 0));
        let source = NetSource::new(self.clone());
        let pacer = Pacer::new(self.config.repair.bytes_per_sec);
        let me = &self;
        let lv = &lv;
        let placed = std::sync::atomic::AtomicUsize::new(0);
        let placed = &placed;
        futures::stream::iter(todo)
            .for_each_concurrent(self.config.repair.concurrency, |(live, id, rec)| {
                let (sink, source, pacer) = (sink.clone(), &source, &pacer);
                async move {
                    let need = rec.target() - live;
                    let dead: Vec<usize> = match &rec.placement {
                        Placement::Erasure { shards, .. } => shards
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| !s.holder.as_ref().is_some_and(|h| lv.live(h)))
                            .map(|(i, _)| i)
                            .collect(),
                        Placement::Copies { .. } => Vec::new(),
                    };
                    match me.repair_pack(id, &rec, need, &dead, &sink, source, pacer).await {
                        Ok(n) => {
                            placed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                            me.metrics.repairs.inc_by(n as u64);
                            tracing::info!("repair: pack {} placed on {n} more holders", id.short())
                        }
                        Err(e) => tracing::warn!("repair: pack {}: {e}", id.short()),
                    }
                }
            })
            .await;
        if placed.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            self.publish_head().await; // the holders changed
        }
    }

    /// Copies one pack from a surviving holder to `need` new ones, or for an erasure-coded
    /// pack rebuilds the shards at indices `dead` from any K and places each on a new
    /// provider; returns how many copies or shards were placed.
    #[allow(clippy::too_many_arguments)]
    async fn repair_pack(
        &self,
        id: PackId,
        rec: &PackRecord,
        need: usize,
        dead: &[usize],
        sink: &NetSink,
        source: &NetSource,
        pacer: &Pacer,
    ) -> Result<usize, RepairError> {
        let bytes = source.fetch(id).await.map_err(RepairError::Fetch)?;
        let mut exclude: HashSet<PeerId> =
            rec.holder_peers().into_iter().filter_map(|p| PeerId::from_bytes(&p).ok()).collect();
        if let Placement::Erasure { scheme: s, shards: wanted } = &rec.placement {
            let s = *s;
            let shards = tokio::task::spawn_blocking(move || s.split(&bytes)).await??;
            let mut placed = 0;
            for &i in dead {
                let (Some(b), Some(want)) = (shards.get(i), wanted.get(i)) else { continue };
                let shard = SealedPack { id: crate::repo::merkle::root(b), bytes: b.clone().into(), entries: vec![] };
                if shard.id != want.id {
                    return Err(RepairError::ShardMismatch(i));
                }
                pacer.wait(b.len() as u64).await;
                let (mut added, errors) = sink.place_on(&shard, 1, exclude.clone()).await;
                let Some(h) = added.pop() else {
                    return Err(RepairError::Short { what: "shards", placed, wanted: dead.len(), errors });
                };
                exclude.extend(PeerId::from_bytes(&h.peer).ok());
                self.db(move |s| s.set_shard_holder(&id, i, h)).await?;
                placed += 1;
            }
            return Ok(placed);
        }
        pacer.wait(bytes.len() as u64 * need as u64).await;
        let pack = SealedPack { id, bytes, entries: vec![] };
        let (added, errors) = sink.place_on(&pack, need, exclude).await;
        if !added.is_empty() {
            let new = added.clone();
            self.db(move |s| s.add_holders(&id, &new)).await?;
        }
        if added.len() < need {
            return Err(RepairError::Short { what: "new copies", placed: added.len(), wanted: need, errors });
        }
        Ok(added.len())
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn the_pacer_lets_a_second_s_worth_through_then_keeps_to_the_rate() {
        let pacer = Pacer::new(64 << 10);
        let start = Instant::now();
        pacer.wait(64 << 10).await; // the full bucket
        pacer.wait(32 << 10).await; // half a second's worth more
        pacer.wait(100 << 10).await; // more than the bucket holds: two grants, about 1.56 s
        assert!(start.elapsed() >= Duration::from_millis(1900), "{:?}", start.elapsed());
    }
}
