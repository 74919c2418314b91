//! Contracts without I/O (protocol.md §4, DESIGN §5): the reciprocity policy, what a
//! provider grants ([`provider`]) and a client asks ([`client`]), and the state machines
//! of negotiation: a client's search session, which decides which acceptances it
//! countersigns, and a provider's reservations, which keep a grant from being promised
//! twice while its acceptance is in flight. Everything here takes events and numbers and
//! returns decisions, so it is unit-tested without a network; `daemon::contracting`
//! feeds it what the network and the store say and carries out what it decides.
//!
//! Give to get: a peer may hold at most `ratio × offered` bytes at others, each copy
//! counted. A provider refuses a proposal from a peer that offers nothing or asks more
//! than `ratio × offered`, grants at most its own free offer, and contracts at most once
//! per client (copies must land on distinct providers).

pub mod client;
pub mod provider;

pub use client::{Session, client_ask};
pub use provider::{Refusal, Reservations, committed_to_others, has_room_for_client, provider_grant};

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

/// What a user lowering the offer to `offered` should know, given `granted` (bytes our
/// live provider contracts promise to others), `client_granted` (bytes our live client
/// contracts grant us at others) and `ratio`: existing contracts keep their space until
/// they end, but no new one comes while either side is over. Empty when nothing is over.
pub fn offer_notes(offered: u64, granted: u64, client_granted: u64, ratio: f64) -> Vec<String> {
    let b = |v: u64| bytesize::ByteSize(v).display().si().to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

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
