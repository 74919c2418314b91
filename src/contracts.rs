//! Reciprocity policy (protocol.md §4.4, DESIGN §5): what a provider accepts and what a
//! client may ask for. Pure functions over numbers, so the rules are testable without a
//! network; the daemon applies them to proposals and contracts.
//!
//! Give to get: a peer may hold at most `ratio × offered` bytes at others, each copy
//! counted. A provider refuses a proposal from a peer that offers nothing or asks more
//! than `ratio × offered`, grants at most its own free offer, and contracts at most once
//! per client (copies must land on distinct providers).

/// Smallest grant worth a contract, bytes: two maximum-size packs.
pub const MIN_GRANT: u64 = 2 * crate::repo::pack::MAX_PACK_SIZE as u64;

/// Most providers a backup spreads its packs over ([`spread`]).
pub const MAX_SPREAD: usize = 16;

/// How many providers a client seeks contracts with when each pack needs `required`
/// distinct holders (`--copies N`, or K+M shards): `factor` times as many
/// (`contracts.spread`, default 3), at most [`MAX_SPREAD`], never fewer than `required`.
/// Placement puts each pack on the holders with the fewest of our bytes, so packs spread over all of
/// them: a restore draws on every holder's uplink at once (as a BitTorrent swarm does), and
/// a lost provider takes a smaller share of the packs with it, so repair has less to copy.
/// Only `required` providers must accept for a backup to start; the others are sought
/// while it runs (protocol.md Appendix A.5.3, "Spread").
pub fn spread(required: usize, factor: usize) -> usize {
    required.saturating_mul(factor).min(MAX_SPREAD).max(required)
}

/// Why a provider turns a proposal down.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// This peer offers no storage.
    #[error("this peer offers no storage")]
    NotOffering,
    /// The client offers nothing to others.
    #[error("the client offers no storage (give to get)")]
    FreeRider,
    /// The client asks more than `ratio × offered`.
    #[error("the client asks {asked} bytes but offers only {offered} (ratio {ratio})")]
    OverRatio {
        /// Bytes asked.
        asked: u64,
        /// Bytes the client offers.
        offered: u64,
        /// The ratio in force.
        ratio: f64,
    },
    /// Not enough of our offer is free.
    #[error("only {free} bytes of the offer are free")]
    NoRoom {
        /// Free bytes.
        free: u64,
    },
    /// This client still has room at us (a contract in flight, or live contracts with
    /// room for a largest pack): it needs no second one yet.
    #[error("this client still has room in its contracts here")]
    AlreadyContracted,
}

/// What a provider that offers `offered` bytes, of which `granted` are promised already,
/// grants to a client that asks `asked` and offers `client_offered`; `already`: the client
/// still has room here ([`has_room_for_client`]). Returns the bytes granted.
pub fn provider_grant(
    offered: u64,
    granted: u64,
    asked: u64,
    client_offered: u64,
    ratio: f64,
    already: bool,
) -> Result<u64, Refusal> {
    if offered == 0 {
        return Err(Refusal::NotOffering);
    }
    if client_offered == 0 {
        return Err(Refusal::FreeRider);
    }
    if asked as f64 > ratio * client_offered as f64 {
        return Err(Refusal::OverRatio { asked, offered: client_offered, ratio });
    }
    if already {
        return Err(Refusal::AlreadyContracted);
    }
    let free = offered.saturating_sub(granted);
    let grant = asked.min(free);
    if grant < MIN_GRANT.min(asked) {
        return Err(Refusal::NoRoom { free });
    }
    Ok(grant)
}

/// What a user lowering the offer to `offered` should know, given `granted` (bytes our
/// live provider contracts promise to others), `client_granted` (bytes our live client
/// contracts grant us at others) and `ratio`: existing contracts keep their space until
/// they end, but no new one comes while either side is over. Empty when nothing is over.
pub fn offer_notes(offered: u64, granted: u64, client_granted: u64, ratio: f64) -> Vec<String> {
    let b = |v: u64| bytesize::ByteSize(v).to_string();
    let mut notes = Vec::new();
    if granted > offered {
        notes.push(format!(
            "live contracts already grant {} of your disk to other peers, more than this offer: \
             they keep that space until they end, and no new contract is granted until grants \
             fall below the offer",
            b(granted)
        ));
    }
    let allowance = (ratio * offered as f64) as u64;
    if client_granted > allowance {
        notes.push(format!(
            "your contracts at other peers grant you {}, more than this offer allows ({} = {ratio} × \
             offer, give to get): they stay until they end, but backups get no new contracts \
             until you offer more",
            b(client_granted),
            b(allowance)
        ));
    }
    notes
}

/// Bytes a client asks of each of `missing` new providers, given its offer and the bytes
/// already granted to it: half its remaining allowance `ratio × offered − held`, split
/// evenly, but at least [`MIN_GRANT`] when the allowance covers that. The other half stays
/// for later: providers that replace lost or full ones (repair, placement). `None` when
/// nothing worth a contract is left to ask.
pub fn client_ask(offered: u64, ratio: f64, held: u64, missing: usize) -> Option<u64> {
    let allowance = (ratio * offered as f64) as u64;
    let left = allowance.saturating_sub(held);
    let fair = left / missing.max(1) as u64;
    let each = (fair / 2).max(MIN_GRANT.min(fair));
    (each >= MIN_GRANT.min(left.max(1))).then_some(each).filter(|&e| e > 0)
}

/// Whether a client still has room at this provider: an acceptance in flight, or live
/// contracts granting it at least one largest pack more than the provider holds for it
/// (`granted` = Σ bytes of its live contracts, `held` = bytes of its packs here). A client
/// whose contracts are full gets another contract, so its backups can grow (protocol.md
/// Appendix A.4.4).
pub fn has_room_for_client(in_flight: bool, granted: u64, held: u64) -> bool {
    in_flight || granted.saturating_sub(held) >= crate::repo::pack::MAX_PACK_SIZE as u64
}

/// Bytes of our offer that peers other than `client` hold (protocol.md §4.4): for each
/// peer, the larger of what we granted it (live provider contracts and acceptances not
/// yet countersigned, `granted`) and what we owe it back (the bytes it grants us in live
/// client contracts, `owed`, which its claim at us would fill).
pub fn committed_to_others(
    client: &libp2p::PeerId,
    granted: impl IntoIterator<Item = (libp2p::PeerId, u64)>,
    owed: impl IntoIterator<Item = (libp2p::PeerId, u64)>,
) -> u64 {
    let mut per_peer: std::collections::HashMap<libp2p::PeerId, (u64, u64)> = Default::default();
    for (p, b) in granted {
        per_peer.entry(p).or_default().0 += b;
    }
    for (p, b) in owed {
        per_peer.entry(p).or_default().1 += b;
    }
    per_peer.iter().filter(|(p, _)| *p != client).map(|(_, (g, o))| *g.max(o)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: u64 = 1 << 30;

    #[test]
    fn packs_spread_over_a_multiple_of_the_holders_they_need_up_to_a_cap() {
        assert_eq!(spread(1, 3), 3);
        assert_eq!(spread(3, 3), 9);
        assert_eq!(spread(3, 1), 3, "1: only the holders a pack needs");
        assert_eq!(spread(6, 3), MAX_SPREAD);
        assert_eq!(spread(20, 3), 20, "never fewer than the holders a pack needs");
        assert_eq!(spread(usize::MAX, usize::MAX), usize::MAX);
    }

    #[test]
    fn providers_refuse_free_riders_and_greed() {
        assert_eq!(provider_grant(0, 0, G, G, 1.0, false), Err(Refusal::NotOffering));
        assert_eq!(provider_grant(10 * G, 0, G, 0, 1.0, false), Err(Refusal::FreeRider));
        assert!(matches!(provider_grant(10 * G, 0, 3 * G, 2 * G, 1.0, false), Err(Refusal::OverRatio { .. })));
        assert_eq!(provider_grant(10 * G, 0, 3 * G, 2 * G, 2.0, false), Ok(3 * G));
        assert_eq!(provider_grant(10 * G, 0, G, G, 1.0, true), Err(Refusal::AlreadyContracted));
        assert_eq!(provider_grant(10 * G, 9 * G, 2 * G, 2 * G, 1.0, false), Ok(G));
        assert!(matches!(provider_grant(10 * G, 10 * G, G, G, 1.0, false), Err(Refusal::NoRoom { .. })));
    }

    #[test]
    fn clients_ask_within_their_allowance() {
        // half the fair share, keeping the rest for replacements
        assert_eq!(client_ask(6 * G, 1.0, 0, 3), Some(G));
        assert_eq!(client_ask(3 * G, 1.0, 3 * G, 1), None);
        assert_eq!(client_ask(0, 1.0, 0, 3), None);
        assert_eq!(client_ask(4 * G, 0.5, G, 1), Some(G / 2));
        // but a whole minimal grant when the allowance affords it
        assert_eq!(client_ask(3 * MIN_GRANT, 1.0, 0, 3), Some(MIN_GRANT));
        assert_eq!(client_ask(2 * MIN_GRANT, 1.0, MIN_GRANT, 1), Some(MIN_GRANT));
        assert_eq!(client_ask(MIN_GRANT, 1.0, MIN_GRANT / 2, 1), Some(MIN_GRANT / 2));
    }

    #[test]
    fn committed_counts_each_other_peer_once_at_its_larger_side() {
        let (a, b, c) = (libp2p::PeerId::random(), libp2p::PeerId::random(), libp2p::PeerId::random());
        // a: granted 10 + 5 (a reservation), owed 12 → 15; b: granted 3, owed 20 → 20;
        // c is the client asking: not counted.
        let granted = [(a, 10), (a, 5), (b, 3), (c, 100)];
        let owed = [(a, 12), (b, 20), (c, 50)];
        assert_eq!(committed_to_others(&c, granted, owed), 35);
        assert_eq!(committed_to_others(&c, [], []), 0);
    }

    #[test]
    fn a_full_client_may_contract_again() {
        let pack = crate::repo::pack::MAX_PACK_SIZE as u64;
        assert!(has_room_for_client(true, 0, 0), "an acceptance in flight");
        assert!(has_room_for_client(false, 3 * pack, pack));
        assert!(!has_room_for_client(false, 3 * pack, 2 * pack + 1), "less than one largest pack left");
        assert!(!has_room_for_client(false, 0, 0), "no contract at all: a first one");
        assert!(!has_room_for_client(false, pack, 5 * pack), "over its grant (an ended contract's packs)");
    }

    #[test]
    fn lowering_the_offer_below_what_is_granted_or_held_is_explained() {
        assert!(offer_notes(100, 100, 100, 1.0).is_empty());
        let n = offer_notes(50, 80, 10, 1.0);
        assert_eq!(n.len(), 1);
        assert!(n[0].contains("already grant 80 B"), "{n:?}");
        let n = offer_notes(50, 0, 90, 1.0);
        assert_eq!(n.len(), 1);
        assert!(n[0].contains("grant you 90 B") && n[0].contains("50 B"), "{n:?}");
        assert_eq!(offer_notes(0, 1, 1, 1.0).len(), 2);
    }
}
