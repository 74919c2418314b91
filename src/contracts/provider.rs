//! The provider's side of a contract (protocol.md §4.3.2, §4.4, Appendix A.4.4): the
//! policy that decides what a proposal is granted, and the reservation table that holds
//! a grant while its acceptance is in flight (steps 2, 3 and 7). No I/O: the daemon gives
//! it its books and carries out the grant.

use super::MIN_GRANT;
use libp2p::PeerId;
use std::collections::HashMap;

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

/// What a provider's books say when a proposal arrives (protocol.md §4.3.2 step 2).
#[derive(Clone, Debug, Default)]
pub struct Books {
    /// Our offer, bytes.
    pub offered: u64,
    /// Our live provider contracts: (client, bytes granted), one entry per contract.
    pub granted: Vec<(PeerId, u64)>,
    /// Our live client contracts: (provider, bytes it grants us), which we owe back.
    pub owed: Vec<(PeerId, u64)>,
    /// Bytes of packs we hold for the proposing client.
    pub held: u64,
    /// Our `contracts.ratio`.
    pub ratio: f64,
}

/// Grants reserved for clients whose acceptance is in flight: at most one per client
/// (protocol.md §4.3.2 step 3), counted in what the provider has promised until released.
#[derive(Debug, Default)]
pub struct Reservations {
    by_client: HashMap<PeerId, u64>,
}

impl Reservations {
    /// Steps 2 and 3 for a proposal of `client` asking `asked` bytes while offering
    /// `client_offered`: applies [`provider_grant`] to `books` and the reservations, and
    /// on a grant reserves it for `client` until [`Reservations::release`]. Returns the
    /// bytes granted, or why the proposal is refused (silently, on the wire).
    pub fn consider(&mut self, client: PeerId, asked: u64, client_offered: u64, books: &Books) -> Result<u64, Refusal> {
        let with_client: u64 = books.granted.iter().filter(|(p, _)| *p == client).map(|(_, b)| b).sum();
        let already = has_room_for_client(self.by_client.contains_key(&client), with_client, books.held);
        let granted = books.granted.iter().copied().chain(self.by_client.iter().map(|(p, b)| (*p, *b)));
        let committed = committed_to_others(&client, granted, books.owed.iter().copied());
        let grant = provider_grant(books.offered, committed, asked, client_offered, books.ratio, already)?;
        self.by_client.insert(client, grant);
        Ok(grant)
    }

    /// Step 7: the client answered (or did not): its reservation ends, whatever the
    /// answer. A contract it countersigned counts from then on through [`Books::granted`].
    pub fn release(&mut self, client: &PeerId) {
        self.by_client.remove(client);
    }

    /// True while an acceptance to `client` is in flight (between steps 3 and 7): a
    /// `Store` under a contract not recorded yet may be waiting for step 5.
    pub fn pending(&self, client: &PeerId) -> bool {
        self.by_client.contains_key(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: u64 = 1 << 30;

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
    fn a_reservation_holds_the_grant_until_the_client_answers() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let books = Books { offered: 3 * G, ratio: 1.0, ..Default::default() };
        let mut r = Reservations::default();
        assert_eq!(r.consider(a, 2 * G, 2 * G, &books), Ok(2 * G));
        // A republication of a's proposal while its acceptance is in flight: refused.
        assert_eq!(r.consider(a, 2 * G, 2 * G, &books), Err(Refusal::AlreadyContracted));
        // b finds only what a's reservation leaves of the offer.
        assert_eq!(r.consider(b, 2 * G, 2 * G, &books), Ok(G));
        r.release(&a);
        r.release(&b);
        // a countersigned: its contract now counts through the books, not the table.
        let books = Books { granted: vec![(a, 2 * G)], held: 2 * G, ..books };
        assert_eq!(r.consider(b, 2 * G, 2 * G, &books), Ok(G));
        // a's contract is full (it holds all it was granted): it may make another.
        r.release(&b);
        assert_eq!(r.consider(a, G, G, &books), Ok(G));
    }

    #[test]
    fn what_we_owe_a_peer_counts_against_our_offer() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let books = Books { offered: 3 * G, owed: vec![(a, 2 * G)], ratio: 1.0, ..Default::default() };
        let mut r = Reservations::default();
        assert_eq!(r.consider(b, 3 * G, 3 * G, &books), Ok(G), "a's claim may fill 2 G of the offer");
        r.release(&b);
        assert_eq!(r.consider(a, 3 * G, 3 * G, &books), Ok(3 * G), "a's own claim is not counted against a");
    }
}
