//! Prometheus metrics of one daemon, served at `/metrics` on the dashboard's port (text
//! exposition format 0.0.4, via `prometheus-client`). The network's own metrics come from
//! libp2p's metrics crate (`libp2p_*`: connections, Kademlia, gossipsub, identify, ping,
//! relay, hole punching); this module adds the backup system's (`peer_*`):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `peer_backups_total{result}` | counter | backups ended: `success`, `partial`, `unpublished`, `failure` |
//! | `peer_restores_total{result}` | counter | restores ended: `success`, `partial`, `failure` |
//! | `peer_test_restores_total{result}` | counter | test restores ([`crate::drill`]): `success`, `failure` |
//! | `peer_audits_total{result}` | counter | challenges this peer sent: `pass`, `wrong`, `unreachable` |
//! | `peer_repairs_total` | counter | copies or shards placed again by repair |
//! | `peer_proposals_total` | counter | contract proposals this peer made as a client (protocol.md §4.1, published as §1.6 says) |
//! | `peer_offered_bytes` | gauge | disk offered to others |
//! | `peer_stored_for_others_bytes` | gauge | bytes others store here |
//! | `peer_held_at_others_bytes` | gauge | bytes of our packs at others, all copies counted |
//! | `peer_contracts{role}` | gauge | live contracts as `client` and as `provider` |
//! | `peer_snapshots` | gauge | snapshots in the repository |
//! | `peer_connected_peers` | gauge | peers with an open connection |
//! | `peer_sent_bytes_total`, `peer_received_bytes_total` | counter | payload bytes of every substream, all protocols (Noise and Yamux framing not counted) |
//! | `peer_gossip_messages_total{topic}`, `peer_gossip_bytes_total{topic}` | counter | gossip messages delivered to this peer (each once, duplicates dropped by gossipsub), and their data bytes |
//!
//! Counters count since the daemon started; gauges are read when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: String,
}

/// A `role` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// `client` or `provider`.
    pub role: String,
}

/// A `topic` label: a gossip topic (protocol.md §1.6).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The topic's name.
    pub topic: String,
}

/// The daemon's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Backups ended, by result.
    pub backups: Family<ResultLabel, Counter>,
    /// Restores ended, by result.
    pub restores: Family<ResultLabel, Counter>,
    /// Test restores ended, by result.
    pub test_restores: Family<ResultLabel, Counter>,
    /// Audit challenges sent, by result.
    pub audits: Family<ResultLabel, Counter>,
    /// Copies or shards placed by repair.
    pub repairs: Counter,
    /// Contract proposals made as a client.
    pub proposals: Counter,
    /// Bytes offered.
    pub offered: Gauge,
    /// Bytes others store here.
    pub stored_for_others: Gauge,
    /// Bytes of our packs held at others.
    pub held_at_others: Gauge,
    /// Live contracts by role.
    pub contracts: Family<RoleLabel, Gauge>,
    /// Snapshots.
    pub snapshots: Gauge,
    /// Connected peers.
    pub connected: Gauge,
    /// Gossip messages delivered, by topic.
    pub gossip_messages: Family<TopicLabel, Counter>,
    /// Data bytes of the gossip messages delivered, by topic.
    pub gossip_bytes: Family<TopicLabel, Counter>,
}

impl Metrics {
    /// Registers every `peer_*` metric and libp2p's (returned apart, for the network task);
    /// the bytes sent and received are the counts `limits` keeps.
    pub fn new(limits: &crate::net::throttle::Limits) -> (Self, libp2p::metrics::Metrics) {
        let mut registry = Registry::default();
        let network = libp2p::metrics::Metrics::new(&mut registry);
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            backups: Family::default(),
            restores: Family::default(),
            test_restores: Family::default(),
            audits: Family::default(),
            repairs: Counter::default(),
            proposals: Counter::default(),
            offered: Gauge::default(),
            stored_for_others: Gauge::default(),
            held_at_others: Gauge::default(),
            contracts: Family::default(),
            snapshots: Gauge::default(),
            connected: Gauge::default(),
            gossip_messages: Family::default(),
            gossip_bytes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("peer");
        r.register("backups", "Backups ended, by result", m.backups.clone());
        r.register("restores", "Restores ended, by result", m.restores.clone());
        r.register("test_restores", "Test restores ended, by result", m.test_restores.clone());
        r.register("audits", "Audit challenges sent to holders and clients, by result", m.audits.clone());
        r.register("repairs", "Copies or shards placed again by repair", m.repairs.clone());
        r.register("proposals", "Contract proposals made as a client", m.proposals.clone());
        r.register_with_unit(
            "offered",
            "Disk offered to others",
            prometheus_client::registry::Unit::Bytes,
            m.offered.clone(),
        );
        r.register_with_unit(
            "stored_for_others",
            "Bytes other peers store here",
            prometheus_client::registry::Unit::Bytes,
            m.stored_for_others.clone(),
        );
        r.register_with_unit(
            "held_at_others",
            "Bytes of this peer's packs held at others, all copies counted",
            prometheus_client::registry::Unit::Bytes,
            m.held_at_others.clone(),
        );
        r.register("contracts", "Live contracts, by role", m.contracts.clone());
        r.register("snapshots", "Snapshots in the repository", m.snapshots.clone());
        r.register("connected_peers", "Peers with an open connection", m.connected.clone());
        let bytes = prometheus_client::registry::Unit::Bytes;
        r.register_with_unit("sent", "Payload bytes sent, all protocols", bytes.clone(), limits.up.moved());
        r.register_with_unit("received", "Payload bytes received, all protocols", bytes.clone(), limits.down.moved());
        r.register("gossip_messages", "Gossip messages delivered, by topic", m.gossip_messages.clone());
        r.register_with_unit(
            "gossip",
            "Data bytes of gossip messages delivered, by topic",
            bytes,
            m.gossip_bytes.clone(),
        );
        (Metrics { registry: Arc::new(registry), ..m }, network)
    }

    /// Counts one ended operation in `family` under `result`.
    pub fn count(family: &Family<ResultLabel, Counter>, result: &str) {
        family.get_or_create(&ResultLabel { result: result.to_string() }).inc();
    }

    /// Counts one gossip message of `bytes` data bytes delivered on `topic`.
    pub fn gossip(&self, topic: &str, bytes: usize) {
        let label = TopicLabel { topic: topic.to_string() };
        self.gossip_messages.get_or_create(&label).inc();
        self.gossip_bytes.get_or_create(&label).inc_by(bytes as u64);
    }

    /// Sets a gauge from a byte or item count (saturating at `i64::MAX`).
    pub fn set(gauge: &Gauge, v: u64) {
        gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_show_in_the_exposition() {
        let limits = crate::net::throttle::Limits::new(0, 0);
        let (m, _network) = Metrics::new(&limits);
        limits.up.moved().inc_by(77);
        m.gossip("peer/proposals/2/0/0", 300);
        Metrics::count(&m.backups, "success");
        Metrics::count(&m.backups, "success");
        Metrics::count(&m.audits, "wrong");
        Metrics::set(&m.stored_for_others, 1234);
        m.contracts.get_or_create(&RoleLabel { role: "provider".into() }).set(2);
        let text = m.encode();
        for line in [
            "peer_backups_total{result=\"success\"} 2",
            "peer_audits_total{result=\"wrong\"} 1",
            "peer_stored_for_others_bytes 1234",
            "peer_contracts{role=\"provider\"} 2",
            "peer_sent_bytes_total 77",
            "peer_received_bytes_total 0",
            "peer_gossip_messages_total{topic=\"peer/proposals/2/0/0\"} 1",
            "peer_gossip_bytes_total{topic=\"peer/proposals/2/0/0\"} 300",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        assert!(text.contains("libp2p_"), "the network's metrics are registered too:\n{text}");
    }
}
