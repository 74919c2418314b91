//! The network task's side of proposal shards (protocol.md §1.6): keeps its gossipsub
//! subscriptions on the shards [`shard`] names for the network size it estimates, and
//! publishes each proposal in the shard its attempt calls for. The rules are in
//! [`shard`]; this module only acts on them.

use super::shard::{self, Shard};
use super::{EventLoop, NetError};
use libp2p::gossipsub;

/// What the network task knows of its shards.
pub(super) struct Shards {
    /// Our Kademlia key.
    key: [u8; 32],
    /// `[network] shard_peers`.
    shard_peers: u64,
    /// The network size last estimated from the routing table.
    pub(super) estimated: u64,
    /// Our shard at the prefix length that estimate gives.
    pub(super) own: Shard,
    /// The shards whose topics we are subscribed to.
    subscribed: Vec<Shard>,
    /// The shard looked up for the next proposal outside our own, if any.
    next: Option<Shard>,
    /// The routing table changed since the last estimate.
    pub(super) stale: bool,
}

impl Shards {
    /// A peer with Kademlia key `key` that knows no one yet (one shard).
    pub(super) fn new(key: [u8; 32], shard_peers: u64) -> Shards {
        Shards {
            key,
            shard_peers,
            estimated: 1,
            own: Shard::of(&key, 0),
            subscribed: Vec::new(),
            next: None,
            stale: true,
        }
    }
}

impl EventLoop {
    /// Estimates the network's size from the routing table and moves our subscriptions to
    /// the shards it calls for (at start, then when the table changed).
    pub(super) fn reshard(&mut self) {
        if !self.shards.stale {
            return;
        }
        self.shards.stale = false;
        let me = *self.swarm.local_peer_id();
        let mut others = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            others.extend(bucket.iter().map(|e| *e.node.key.preimage()).filter(|p| *p != me).map(|p| shard::key(&p)));
        }
        let s = &mut self.shards;
        s.estimated = shard::estimate_peers(&s.key, &others);
        let bits = shard::bits(s.estimated, s.shard_peers);
        if bits != s.own.bits {
            tracing::info!(
                "about {} peers in the network: proposals in shard {}",
                s.estimated,
                Shard::of(&s.key, bits)
            );
        }
        s.own = Shard::of(&s.key, bits);
        let wanted = shard::subscriptions(&s.key, bits);
        let (gone, kept): (Vec<Shard>, Vec<Shard>) =
            std::mem::take(&mut s.subscribed).into_iter().partition(|x| !wanted.contains(x));
        let new: Vec<Shard> = wanted.into_iter().filter(|x| !kept.contains(x)).collect();
        s.subscribed = kept;
        let g = &mut self.swarm.behaviour_mut().gossipsub;
        for x in gone {
            g.unsubscribe(&gossipsub::IdentTopic::new(x.topic()));
        }
        for x in new {
            match g.subscribe(&gossipsub::IdentTopic::new(x.topic())) {
                Ok(_) => self.shards.subscribed.push(x),
                Err(e) => tracing::warn!("cannot subscribe to shard {x}: {e}"),
            }
        }
    }

    /// Whether `topic` is one of our shards' (a proposal).
    pub(super) fn is_proposal_topic(&self, topic: &gossipsub::TopicHash) -> bool {
        self.shards.subscribed.iter().any(|s| s.topic() == topic.as_str())
    }

    /// Publishes proposal `data`, attempt `attempt` (0 first) of one search for providers:
    /// the first [`shard::OWN_SHARD_ATTEMPTS`] in our own shard, each later one in another
    /// shard, looked up during the attempt before so that we are connected to its members
    /// (protocol.md §1.6).
    pub(super) fn publish_proposal(&mut self, data: Vec<u8>, attempt: u32) -> Result<(), NetError> {
        self.reshard();
        let own = self.shards.own;
        let mut rng = rand::rng();
        let target = if attempt < shard::OWN_SHARD_ATTEMPTS || own.bits == 0 {
            own
        } else {
            self.shards.next.take().filter(|s| s.bits == own.bits && *s != own).unwrap_or_else(|| own.other(&mut rng))
        };
        if attempt.saturating_add(1) >= shard::OWN_SHARD_ATTEMPTS && own.bits > 0 {
            let next = own.other(&mut rng);
            self.swarm.behaviour_mut().kad.get_closest_peers(next.preimage(&mut rng));
            self.shards.next = Some(next);
        }
        tracing::debug!("proposal attempt {attempt} in shard {target}");
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(gossipsub::IdentTopic::new(target.topic()), data)
            .map(|_| ())
            .map_err(|e| NetError::Other(format!("cannot publish in shard {target}: {e}")))
    }
}
