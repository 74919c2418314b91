//! Proposal shards (protocol.md §1.6, §4.1): which gossipsub topics carry a peer's
//! proposals, so that what each peer receives stays bounded as the network grows.
//!
//! A shard is the set of peers whose Kademlia key (SHA-256 of the PeerId's bytes, as
//! libp2p-kad hashes it) starts with the same `bits` bits. `bits` is chosen from the size
//! of the network each peer estimates from its own routing table, so that a shard holds
//! `shard_peers` (default [`SHARD_PEERS`]) to twice as many peers; below twice
//! `shard_peers` there is one shard (`bits` = 0). A peer subscribes to its shard at
//! `bits − 1`, `bits` and `bits + 1`, so that two peers whose estimates differ by one
//! still meet; a client publishes at `bits` in its own shard, then (when that brings too
//! few acceptances) in other shards, each found with one Kademlia lookup of a key inside
//! it, which connects to its members.
//!
//! This module is pure: the network task asks it and acts (`EventLoop::reshard`,
//! `EventLoop::publish_proposal`).

use libp2p::PeerId;
use rand::{Rng, RngExt};

/// Peers per shard aimed at (`[network] shard_peers`): a shard holds this many to twice
/// as many.
pub const SHARD_PEERS: u64 = 1024;
/// The most prefix bits a shard has: 65,536 shards, enough for 134 million peers at
/// [`SHARD_PEERS`].
pub const MAX_BITS: u8 = 16;
/// Kademlia's k (libp2p's `K_VALUE`): the estimate uses the k-th closest peer.
const K: usize = 20;
/// Proposals a client publishes in its own shard before it tries others.
pub const OWN_SHARD_ATTEMPTS: u32 = 2;

/// One shard: the peers whose key starts with the `bits`-bit number `prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// Prefix length in bits, 0 to [`MAX_BITS`].
    pub bits: u8,
    /// The first `bits` bits of the members' keys, as an unsigned number (0 when `bits` = 0).
    pub prefix: u32,
}

impl Shard {
    /// The shard of `key` at `bits` bits.
    pub fn of(key: &[u8; 32], bits: u8) -> Shard {
        let bits = bits.min(MAX_BITS);
        let head = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        let prefix = if bits == 0 { 0 } else { head >> (32 - u32::from(bits)) };
        Shard { bits, prefix }
    }

    /// Its gossipsub topic: `peer/proposals/2/<bits>/<prefix>`, both decimal
    /// (protocol.md §1.6).
    pub fn topic(&self) -> String {
        format!("{}/{}/{}", crate::protocol::PROPOSAL_TOPIC_PREFIX, self.bits, self.prefix)
    }

    /// Whether `key` belongs to this shard.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        Shard::of(key, self.bits) == *self
    }

    /// A random preimage whose Kademlia key falls in this shard: a lookup of it
    /// (`get_closest_peers`, which hashes what it is given) finds and connects to the
    /// shard's members. Takes about 2^`bits` hashes.
    pub fn preimage(&self, rng: &mut impl Rng) -> Vec<u8> {
        loop {
            let candidate: [u8; 32] = rng.random();
            if self.contains(&crate::id::sha256(&candidate)) {
                return candidate.to_vec();
            }
        }
    }

    /// A random shard other than this one with as many bits (this one when there is no
    /// other: `bits` = 0).
    pub fn other(&self, rng: &mut impl Rng) -> Shard {
        let count = 1u64 << self.bits;
        if count == 1 {
            return *self;
        }
        let offset = rng.random_range(1..count);
        Shard { bits: self.bits, prefix: ((u64::from(self.prefix) + offset) % count) as u32 }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.bits, self.prefix)
    }
}

/// A peer's Kademlia key: SHA-256 of its PeerId's bytes (libp2p-kad's `Key::from(PeerId)`).
pub fn key(peer: &PeerId) -> [u8; 32] {
    crate::id::sha256(&peer.to_bytes())
}

/// The size of the network estimated from the keys of the peers in our routing table: with
/// fewer than k of them, the table holds the whole network (`others + 1`); otherwise
/// k divided by the share of the key space within the k-th closest one (XOR distance).
pub fn estimate_peers(own: &[u8; 32], others: &[[u8; 32]]) -> u64 {
    if others.len() < K {
        return others.len() as u64 + 1;
    }
    let mut d: Vec<f64> =
        others.iter().map(|o| own.iter().zip(o).fold(0f64, |acc, (a, b)| acc * 256.0 + f64::from(a ^ b))).collect();
    d.sort_by(f64::total_cmp);
    let share = (d[K - 1] / 2f64.powi(256)).max(f64::MIN_POSITIVE);
    let n = (K as f64 / share).min(u64::MAX as f64) as u64;
    n.max(others.len() as u64 + 1)
}

/// The prefix bits for a network of `peers` with `shard_peers` per shard: the largest b
/// with `peers / 2^b ≥ shard_peers`, 0 when there is no such b, at most [`MAX_BITS`].
pub fn bits(peers: u64, shard_peers: u64) -> u8 {
    let per = shard_peers.max(1);
    let mut b = 0u8;
    while b < MAX_BITS && peers >> (b + 1) >= per {
        b += 1;
    }
    b
}

/// The shards a peer subscribes to: its own at `bits − 1` (when `bits` ≥ 1), `bits` and
/// `bits + 1` (when at most [`MAX_BITS`]).
pub fn subscriptions(key: &[u8; 32], bits: u8) -> Vec<Shard> {
    let low = bits.saturating_sub(1);
    let high = (bits + 1).min(MAX_BITS);
    (low..=high).map(|b| Shard::of(key, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key_with(first: u8) -> [u8; 32] {
        let mut k = [0x55u8; 32];
        k[0] = first;
        k
    }

    #[test]
    fn a_shard_is_a_key_prefix_and_names_its_topic() {
        let k = key_with(0b1011_0000);
        assert_eq!(Shard::of(&k, 0), Shard { bits: 0, prefix: 0 });
        assert_eq!(Shard::of(&k, 1), Shard { bits: 1, prefix: 1 });
        assert_eq!(Shard::of(&k, 4), Shard { bits: 4, prefix: 0b1011 });
        assert_eq!(Shard::of(&k, 4).topic(), "peer/proposals/2/4/11");
        assert_eq!(Shard::of(&k, 0).topic(), "peer/proposals/2/0/0");
        assert!(Shard::of(&k, 3).contains(&key_with(0b1010_1111)));
        assert!(!Shard::of(&k, 4).contains(&key_with(0b1010_1111)));
        assert_eq!(Shard::of(&k, 40).bits, MAX_BITS, "capped");
    }

    /// The vector of protocol.md §1.6: the client identity of §7 (secret `01`×32).
    #[test]
    fn the_shard_vector_of_protocol_md() {
        let peer = crate::identity::Identity::from_secret([1; 32]).peer_id();
        assert_eq!(peer.to_string(), "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5");
        let k = key(&peer);
        let topics: Vec<String> = (0..=3).chain([6]).map(|b| Shard::of(&k, b).topic()).collect();
        assert_eq!(hex::encode(k), "2ea99e04b7226ebb09856fdd2c3df7aad5dbc53dbcbb110d5e1ff64b7626122e");
        let want = ["0/0", "1/0", "2/0", "3/1", "6/11"].map(|t| format!("peer/proposals/2/{t}"));
        assert_eq!(topics, want);
    }

    #[test]
    fn bits_keep_a_shard_between_shard_peers_and_twice_that() {
        assert_eq!(bits(1, 1024), 0);
        assert_eq!(bits(2047, 1024), 0);
        assert_eq!(bits(2048, 1024), 1);
        assert_eq!(bits(100_000, 1024), 6); // 1,562 peers a shard
        assert_eq!(bits(6, 2), 1);
        assert_eq!(bits(3, 2), 0);
        assert_eq!(bits(u64::MAX, 1), MAX_BITS);
        assert_eq!(bits(5, 0), 2, "0 counts as 1");
    }

    #[test]
    fn subscriptions_span_one_bit_either_way() {
        let k = key_with(0b1100_0000);
        let s = subscriptions(&k, 0);
        assert_eq!(s, vec![Shard { bits: 0, prefix: 0 }, Shard { bits: 1, prefix: 1 }]);
        let s = subscriptions(&k, 2);
        assert_eq!(s.iter().map(|s| (s.bits, s.prefix)).collect::<Vec<_>>(), vec![(1, 1), (2, 3), (3, 6)]);
        assert_eq!(subscriptions(&k, MAX_BITS).len(), 2);
        // A client at b publishes in a topic a provider at b - 1, b or b + 1 joined.
        let provider = key_with(0b1101_0000);
        for b in 1..4 {
            let client_topic = Shard::of(&k, b);
            assert!(subscriptions(&provider, b - 1).contains(&client_topic));
            assert!(subscriptions(&provider, b + 1).contains(&client_topic));
        }
    }

    #[test]
    fn the_estimate_counts_a_small_table_and_scales_a_large_one() {
        let own = [0u8; 32];
        let few: Vec<[u8; 32]> = (1..=5u8).map(key_with).collect();
        assert_eq!(estimate_peers(&own, &few), 6);
        // 100,000 peers spread evenly: the k-th closest is about k / 100,000 of the way out.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let many: Vec<[u8; 32]> = (0..100_000).map(|_| rng.random()).collect();
        let n = estimate_peers(&own, &many);
        assert!((50_000..200_000).contains(&n), "estimated {n}");
        // A routing table keeps only some far peers, but all of the near ones: the
        // estimate depends on the near ones only.
        let mut near: Vec<[u8; 32]> = many.iter().filter(|k| k[0] == 0).copied().collect();
        near.extend(many.iter().filter(|k| k[0] != 0).take(100));
        assert_eq!(estimate_peers(&own, &near), n);
    }

    #[test]
    fn a_preimage_lands_in_its_shard_and_another_shard_differs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for bits in [0u8, 1, 3, 6] {
            let s = Shard::of(&key_with(0xA7), bits);
            assert!(s.contains(&crate::id::sha256(&s.preimage(&mut rng))));
            let o = s.other(&mut rng);
            assert_eq!(o.bits, bits);
            assert_eq!(o == s, bits == 0, "{s} {o}");
        }
    }
}
