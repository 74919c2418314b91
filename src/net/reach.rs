//! What this peer knows about reaching and being reached (protocol.md §1.10), as plain
//! state the event loop feeds: which of our addresses AutoNAT confirmed, which relays we
//! hold reservations on, and which connections are direct or relayed. It decides what we
//! advertise, whether we need relays, and whether a peer may be sent bulk data.
//!
//! Reachability follows AutoNAT v2 (libp2p `autonat-v2` spec): *public* once any address
//! of ours was confirmed by a dial-back (or mapped by UPnP), *private* once a candidate
//! failed its dial-back and none succeeded, *unknown* before either.

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Relay reservations a peer that is not publicly reachable keeps.
pub const RELAYS_WANTED: usize = 2;
/// How long a relayed-only connection is given for hole punching (DCUtR) before the peer
/// counts as reachable only through a relay.
pub const PUNCH_WAIT: Duration = Duration::from_secs(15);
/// A failed hole punch to a peer is tried again (on a new relayed connection) once this
/// long has passed and bulk data is waiting for it.
pub const PUNCH_RETRY: Duration = Duration::from_secs(30);
/// A relay that refused a reservation is not asked again for this long; the wait doubles
/// with every refusal in a row, up to [`RELAY_RETRY_MAX`]. (A relay that does not know its
/// own public address yet refuses: it has none to put in the reservation.)
pub const RELAY_RETRY: Duration = Duration::from_secs(5);
/// The longest wait before asking a relay that keeps refusing again.
pub const RELAY_RETRY_MAX: Duration = Duration::from_secs(600);

/// Whether others can dial us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// An address of ours was confirmed by a dial-back or a UPnP mapping.
    Public,
    /// Dial-backs failed and none succeeded: we are behind a NAT or firewall.
    Private,
    /// Not tested yet.
    Unknown,
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reachability::Public => "public",
            Reachability::Private => "private",
            Reachability::Unknown => "unknown",
        })
    }
}

/// The transport a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP (Noise, Yamux).
    Tcp,
    /// QUIC v1.
    Quic,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        })
    }
}

/// One open connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The remote peer.
    pub peer: PeerId,
    /// The remote address (for a relayed connection, the circuit address).
    pub addr: Multiaddr,
    /// Through a relay (`/p2p-circuit`).
    pub relayed: bool,
    /// TCP or QUIC (of the hop to the relay, when relayed).
    pub transport: Transport,
    /// When it was established.
    pub since: Instant,
}

/// The reachability state of one peer.
#[derive(Debug)]
pub struct Reach {
    me: PeerId,
    global_only: bool,
    confirmed: Vec<Multiaddr>,
    failed: HashSet<Multiaddr>,
    /// Relay reservations: relay → our circuit address through it, once listening.
    relays: HashMap<PeerId, Option<Multiaddr>>,
    conns: HashMap<ConnectionId, ConnInfo>,
    /// Peers whose hole punch failed since their last direct connection.
    punch_failed: HashMap<PeerId, Instant>,
    /// When a new hole punch to each peer was last asked for ([`Reach::retry_punch`]).
    punch_retried: HashMap<PeerId, Instant>,
    /// Relays we may reserve on: peers serving relay v2 with a routable direct address.
    relay_candidates: HashMap<PeerId, Multiaddr>,
    /// Configured bootstrap peers and their addresses (without `/p2p`).
    bootstrap: HashMap<PeerId, Multiaddr>,
    /// Relays whose reservation ended, and when.
    relays_lost: HashMap<PeerId, (Instant, Duration)>,
}

impl Reach {
    /// The state of peer `me`; `global_only` is `network.global_addresses_only`.
    pub fn new(me: PeerId, global_only: bool) -> Self {
        Reach {
            me,
            global_only,
            confirmed: vec![],
            failed: HashSet::new(),
            relays: HashMap::new(),
            conns: HashMap::new(),
            punch_failed: HashMap::new(),
            punch_retried: HashMap::new(),
            relay_candidates: HashMap::new(),
            relays_lost: HashMap::new(),
            bootstrap: HashMap::new(),
        }
    }

    /// True when `a` may be advertised, dialed or kept: always with `global_addresses_only`
    /// off; otherwise only when its IP (or, for a circuit, the relay's IP) is globally
    /// routable. DNS names count as routable.
    pub fn routable(&self, a: &Multiaddr) -> bool {
        !self.global_only || is_global(a)
    }

    /// Public, private or unknown.
    pub fn reachability(&self) -> Reachability {
        if !self.confirmed.is_empty() {
            Reachability::Public
        } else if !self.failed.is_empty() {
            Reachability::Private
        } else {
            Reachability::Unknown
        }
    }

    /// An address was confirmed external (AutoNAT dial-back or UPnP). Returns false when
    /// it must not be kept (not routable, or a circuit address, which is ours already).
    pub fn confirm(&mut self, a: &Multiaddr) -> bool {
        if is_circuit(a) {
            return true;
        }
        if !self.routable(a) {
            return false;
        }
        let a = strip_p2p(a);
        self.failed.remove(&a);
        if !self.confirmed.contains(&a) {
            self.confirmed.push(a);
        }
        true
    }

    /// A confirmed address expired (UPnP mapping gone, removed by us).
    pub fn expire(&mut self, a: &Multiaddr) {
        let a = strip_p2p(a);
        self.confirmed.retain(|c| *c != a);
    }

    /// AutoNAT's dial-back to `a` failed.
    pub fn failed(&mut self, a: &Multiaddr) {
        let a = strip_p2p(a);
        if !self.confirmed.contains(&a) {
            self.failed.insert(a);
        }
    }

    /// Confirmed external addresses (not circuits), without `/p2p`.
    pub fn external(&self) -> &[Multiaddr] {
        &self.confirmed
    }

    /// What we tell others to dial: confirmed addresses, then our circuit addresses, each
    /// with `/p2p/<our PeerId>`.
    pub fn advertised(&self) -> Vec<Multiaddr> {
        let mut v: Vec<Multiaddr> = self.confirmed.iter().map(|a| with_p2p(a, self.me)).collect();
        let mut circuits: Vec<&Multiaddr> = self.relays.values().flatten().collect();
        circuits.sort();
        v.extend(circuits.into_iter().map(|a| with_p2p(a, self.me)));
        v
    }

    /// Relays we hold (or are asking for) a reservation on.
    pub fn relays(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.relays.keys().copied().collect();
        v.sort();
        v
    }

    /// Notes what identify told us of `peer`: whether it serves relay v2, and its addresses.
    /// A relay is reserved through a routable direct address: one it advertises, or else
    /// its bootstrap address (a configured bootstrap peer is one everybody dials, whatever
    /// its own AutoNAT has concluded so far).
    pub fn identified(&mut self, peer: PeerId, serves_relay: bool, addrs: &[Multiaddr]) {
        let advertised = addrs.iter().find(|a| !is_circuit(a) && self.routable(a)).map(strip_p2p);
        match advertised.or_else(|| self.bootstrap.get(&peer).cloned()) {
            Some(a) if serves_relay => {
                self.relay_candidates.insert(peer, a);
            }
            _ => {
                self.relay_candidates.remove(&peer);
            }
        }
    }

    /// Notes a configured bootstrap address (`…/p2p/<PeerId>`; others are ignored).
    pub fn bootstrap(&mut self, a: &Multiaddr) {
        if let Some(Protocol::P2p(peer)) = a.iter().last()
            && !is_circuit(a)
        {
            self.bootstrap.insert(peer, strip_p2p(a));
        }
    }

    /// Relays to reserve on now (at most enough to reach [`RELAYS_WANTED`]), each with the
    /// address to reserve through, `<relay addr>/p2p/<relay>/p2p-circuit`; none while we are
    /// public. The caller starts listening on each and reports it with [`Reach::reserving`].
    pub fn relays_to_reserve(&self) -> Vec<(PeerId, Multiaddr)> {
        let mut cands = self.usable_relays();
        cands.retain(|(p, _)| self.direct(p));
        cands
            .into_iter()
            .take(RELAYS_WANTED - self.relays.len())
            .map(|(p, a)| (*p, a.clone().with(Protocol::P2p(*p)).with(Protocol::P2pCircuit)))
            .collect()
    }

    /// Relays worth dialing so that we can reserve on them: candidates not connected now,
    /// while we have fewer reservations than we want (after an address change, say).
    pub fn relays_to_dial(&self) -> Vec<(PeerId, Multiaddr)> {
        let mut cands = self.usable_relays();
        cands.retain(|(p, _)| !self.direct(p));
        cands.into_iter().map(|(p, a)| (*p, a.clone())).collect()
    }

    /// Candidates not in use and not lost recently, sorted; none while we are public or
    /// have all the reservations we want.
    fn usable_relays(&self) -> Vec<(&PeerId, &Multiaddr)> {
        if self.reachability() == Reachability::Public || self.relays.len() >= RELAYS_WANTED {
            return vec![];
        }
        let mut v: Vec<(&PeerId, &Multiaddr)> = self
            .relay_candidates
            .iter()
            .filter(|(p, _)| !self.relays.contains_key(p))
            .filter(|(p, _)| self.relays_lost.get(p).is_none_or(|(t, wait)| t.elapsed() >= *wait))
            .collect();
        v.sort();
        v
    }

    /// We asked `relay` for a reservation.
    pub fn reserving(&mut self, relay: PeerId) {
        self.relays.entry(relay).or_insert(None);
    }

    /// The reservation on `relay` is up: we listen at `circuit`.
    pub fn reserved(&mut self, relay: PeerId, circuit: Multiaddr) {
        self.relays_lost.remove(&relay);
        self.relays.insert(relay, Some(circuit));
    }

    /// The reservation on `relay` ended; a new relay is chosen at the next tick. A relay
    /// that `refused` it waits [`RELAY_RETRY`], doubling with each refusal in a row; one
    /// whose connection closed (our address changed, say) is asked again as soon as we are
    /// connected to it.
    pub fn unreserved(&mut self, relay: &PeerId, refused: bool) -> Option<Multiaddr> {
        if refused {
            if self.relays_lost.len() > 1000 {
                self.relays_lost.retain(|_, (t, wait)| t.elapsed() < *wait);
            }
            let wait = self.relays_lost.get(relay).map_or(RELAY_RETRY, |(_, w)| (*w * 2).min(RELAY_RETRY_MAX));
            self.relays_lost.insert(*relay, (Instant::now(), wait));
        }
        self.relays.remove(relay).flatten()
    }

    /// Whether we should give up our reservations (we became public).
    pub fn drop_relays(&self) -> bool {
        self.reachability() == Reachability::Public && !self.relays.is_empty()
    }

    /// A connection opened.
    pub fn connected(&mut self, id: ConnectionId, info: ConnInfo) {
        if !info.relayed {
            self.punch_failed.remove(&info.peer);
            self.punch_retried.remove(&info.peer);
        }
        self.conns.insert(id, info);
    }

    /// A connection closed.
    pub fn disconnected(&mut self, id: &ConnectionId) -> Option<ConnInfo> {
        self.conns.remove(id)
    }

    /// DCUtR gave up on `peer`.
    pub fn punch_failed(&mut self, peer: PeerId) {
        if self.punch_failed.len() > 10_000 {
            self.punch_failed.retain(|_, t| t.elapsed() < PUNCH_RETRY);
            self.punch_retried.retain(|_, t| t.elapsed() < PUNCH_RETRY);
        }
        self.punch_failed.insert(peer, Instant::now());
    }

    /// True when the hole punch to `peer` failed at least [`PUNCH_RETRY`] ago, or, when
    /// `silence` counts, when its newest relayed connection came up over [`PUNCH_WAIT`] +
    /// [`PUNCH_RETRY`] ago and no punch ended on it (the punch is led by the peer that
    /// accepted the relayed connection, and a failure on its side reaches us only as
    /// silence): worth a new relayed connection and a new attempt (what blocked it, such
    /// as a socket of a connection to an address that is gone, may have cleared). Forgets
    /// the failure; the next retry comes [`PUNCH_RETRY`] after this one at the soonest.
    pub fn retry_punch(&mut self, peer: &PeerId, now: Instant, silence: bool) -> bool {
        let failed = match self.punch_failed.get(peer) {
            Some(t) => *t,
            None if !silence => return false,
            None => match self.conns.values().filter(|c| &c.peer == peer && c.relayed).map(|c| c.since).max() {
                Some(since) if !self.direct(peer) => since + PUNCH_WAIT,
                _ => return false,
            },
        };
        let last = self.punch_retried.get(peer).map_or(failed, |t| failed.max(*t));
        if now.saturating_duration_since(last) < PUNCH_RETRY {
            return false;
        }
        self.punch_failed.remove(peer);
        self.punch_retried.insert(*peer, now);
        true
    }

    /// True when `peer` has a direct connection.
    pub fn direct(&self, peer: &PeerId) -> bool {
        self.conns.values().any(|c| &c.peer == peer && !c.relayed)
    }

    /// Relayed connections to `peer`.
    pub fn relayed_conns(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.conns.iter().filter(|(_, c)| &c.peer == peer && c.relayed).map(|(id, _)| *id).collect()
    }

    /// True when bulk data may go to `peer` now: a direct connection and no relayed one that
    /// a request could be put on.
    pub fn sendable(&self, peer: &PeerId) -> bool {
        self.direct(peer) && self.relayed_conns(peer).is_empty()
    }

    /// True when `peer` is connected only through relays and hole punching is still worth
    /// waiting for (it has not failed and the connection is younger than [`PUNCH_WAIT`]).
    pub fn punching(&self, peer: &PeerId, now: Instant) -> bool {
        !self.direct(peer)
            && !self.punch_failed.contains_key(peer)
            && self.conns.values().any(|c| &c.peer == peer && c.relayed && now.duration_since(c.since) < PUNCH_WAIT)
    }

    /// True when hole punching to `peer` failed and it is connected only through relays.
    pub fn relayed_only(&self, peer: &PeerId) -> bool {
        !self.direct(peer) && !self.relayed_conns(peer).is_empty()
    }

    /// Every open connection.
    pub fn connections(&self) -> impl Iterator<Item = &ConnInfo> {
        self.conns.values()
    }
}

/// True when `a` goes through a relay.
pub fn is_circuit(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The transport of an address: QUIC when it has `/quic-v1`, else TCP.
pub fn transport_of(a: &Multiaddr) -> Transport {
    if a.iter().any(|p| matches!(p, Protocol::QuicV1)) { Transport::Quic } else { Transport::Tcp }
}

fn with_p2p(a: &Multiaddr, me: PeerId) -> Multiaddr {
    match a.iter().last() {
        Some(Protocol::P2p(p)) if p == me => a.clone(),
        _ => a.clone().with(Protocol::P2p(me)),
    }
}

fn strip_p2p(a: &Multiaddr) -> Multiaddr {
    let mut a = a.clone();
    if let Some(Protocol::P2p(_)) = a.iter().last() {
        a.pop();
    }
    a
}

/// True when the address's first IP is globally routable (RFC 6890 special-purpose ranges
/// excluded: private, loopback, link-local, shared, documentation, benchmarking, multicast,
/// unspecified; IPv6 unique-local and link-local too). DNS names count as global.
pub fn is_global(a: &Multiaddr) -> bool {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => is_global_v4(ip),
        Some(Protocol::Ip6(ip)) => is_global_v6(ip),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)) => true,
        _ => false,
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || o[0] >= 240)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn peer(n: u8) -> PeerId {
        crate::identity::Identity::from_secret([n; 32]).peer_id()
    }

    #[test]
    fn global_addresses_exclude_special_ranges() {
        assert!(is_global(&ma("/ip4/8.8.8.8/tcp/1")));
        assert!(is_global(&ma("/dns4/example.org/tcp/1")));
        for s in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/192.168.1.2/tcp/1",
            "/ip4/10.0.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/203.0.113.5/tcp/1",
            "/ip4/198.51.100.5/udp/1/quic-v1",
            "/ip6/::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
        ] {
            assert!(!is_global(&ma(s)), "{s}");
        }
        let strict = Reach::new(peer(0), true);
        let lax = Reach::new(peer(0), false);
        assert!(!strict.routable(&ma("/ip4/203.0.113.5/tcp/1")));
        assert!(lax.routable(&ma("/ip4/203.0.113.5/tcp/1")));
    }

    #[test]
    fn reachability_follows_dial_backs_and_relays_are_kept_while_private() {
        let (me, r1, r2, r3) = (peer(0), peer(1), peer(2), peer(3));
        let mut r = Reach::new(me, false);
        assert_eq!(r.reachability(), Reachability::Unknown);
        r.failed(&ma("/ip4/203.0.113.1/tcp/4001"));
        assert_eq!(r.reachability(), Reachability::Private);
        // Three relays known and connected; two are reserved on.
        for (i, p) in [r1, r2, r3].into_iter().enumerate() {
            let a = ma(&format!("/ip4/198.51.100.{}/tcp/4001", i + 1));
            r.identified(p, true, std::slice::from_ref(&a));
            r.connected(
                ConnectionId::new_unchecked(i),
                ConnInfo { peer: p, addr: a, relayed: false, transport: Transport::Tcp, since: Instant::now() },
            );
        }
        let want = r.relays_to_reserve();
        assert_eq!(want.len(), RELAYS_WANTED);
        assert!(want[0].1.to_string().ends_with("/p2p-circuit"), "{}", want[0].1);
        for (p, a) in &want {
            r.reserving(*p);
            r.reserved(*p, a.clone());
        }
        assert!(r.relays_to_reserve().is_empty());
        assert_eq!(r.advertised().len(), 2);
        assert!(r.advertised().iter().all(|a| a.to_string().ends_with(&format!("/p2p-circuit/p2p/{me}"))));
        // One relay refuses: the third one is chosen.
        r.unreserved(&want[0].0, true);
        let next = r.relays_to_reserve();
        assert_eq!(next.len(), 1);
        assert!(!want.iter().any(|(p, _)| *p == next[0].0));
        // A dial-back succeeds: public, and the reservations are given up.
        assert!(r.confirm(&ma("/ip4/203.0.113.1/tcp/4001")));
        assert!(r.confirm(&ma(&format!("/ip4/203.0.113.1/tcp/4001/p2p/{me}"))));
        assert_eq!(r.external().len(), 1, "the same address with and without /p2p is one");
        assert_eq!(r.reachability(), Reachability::Public);
        assert!(r.drop_relays());
        assert!(r.relays_to_reserve().is_empty());
        // A bootstrap relay that advertises nothing yet is reserved on at its bootstrap address.
        let mut d = Reach::new(me, false);
        d.failed(&ma("/ip4/203.0.113.1/tcp/4001"));
        let a = ma("/ip4/198.51.100.9/udp/4001/quic-v1");
        d.bootstrap(&a.clone().with(Protocol::P2p(r1)));
        let conn =
            ConnInfo { peer: r1, addr: a.clone(), relayed: false, transport: Transport::Quic, since: Instant::now() };
        d.connected(ConnectionId::new_unchecked(9), conn);
        d.identified(r1, true, &[]);
        d.identified(r2, true, &[]);
        assert_eq!(d.relays_to_reserve(), vec![(r1, a.with(Protocol::P2p(r1)).with(Protocol::P2pCircuit))]);
        // A peer that does not serve relay, or shows only private addresses, is no candidate.
        let mut s = Reach::new(me, true);
        s.identified(r1, true, &[ma("/ip4/192.168.1.1/tcp/1")]);
        s.identified(r2, false, &[ma("/ip4/8.8.8.8/tcp/1")]);
        assert!(s.relays_to_reserve().is_empty());
        assert!(!s.confirm(&ma("/ip4/192.168.1.1/tcp/1")));
        assert_eq!(s.reachability(), Reachability::Unknown);
    }

    /// A connection to `p` through a relay, open since `since`.
    fn relayed_conn(p: PeerId, since: Instant) -> ConnInfo {
        ConnInfo {
            peer: p,
            addr: ma("/ip4/198.51.100.1/tcp/1/p2p-circuit"),
            relayed: true,
            transport: Transport::Tcp,
            since,
        }
    }

    #[test]
    fn bulk_data_waits_for_a_direct_connection_without_relayed_ones() {
        let (me, p) = (peer(0), peer(1));
        let mut r = Reach::new(me, false);
        let t = Instant::now();
        let relayed = relayed_conn(p, t);
        r.connected(ConnectionId::new_unchecked(1), relayed);
        assert!(!r.sendable(&p));
        assert!(r.punching(&p, t));
        assert!(!r.punching(&p, t + PUNCH_WAIT));
        r.punch_failed(p);
        assert!(!r.punching(&p, t) && r.relayed_only(&p));
        assert!(!r.retry_punch(&p, Instant::now(), false), "too early to try again");
        assert!(r.retry_punch(&p, Instant::now() + PUNCH_RETRY, false));
        assert!(!r.retry_punch(&p, Instant::now() + PUNCH_RETRY, false), "the failure was forgotten");
        let direct = ConnInfo {
            peer: p,
            addr: ma("/ip4/203.0.113.2/tcp/1"),
            relayed: false,
            transport: Transport::Tcp,
            since: t,
        };
        r.connected(ConnectionId::new_unchecked(2), direct);
        assert!(!r.sendable(&p), "a relayed connection is still open");
        assert_eq!(r.relayed_conns(&p), vec![ConnectionId::new_unchecked(1)]);
        r.disconnected(&ConnectionId::new_unchecked(1));
        assert!(r.sendable(&p) && !r.relayed_only(&p));
    }

    #[test]
    fn a_hole_punch_that_never_ends_is_tried_again() {
        let (me, p) = (peer(0), peer(1));
        let mut r = Reach::new(me, false);
        let t = Instant::now();
        let relayed = relayed_conn(p, t);
        r.connected(ConnectionId::new_unchecked(1), relayed.clone());
        assert!(!r.retry_punch(&p, t + PUNCH_WAIT, true), "the punch may still end");
        assert!(!r.retry_punch(&p, t + PUNCH_WAIT + PUNCH_RETRY / 2, true));
        let first = t + PUNCH_WAIT + PUNCH_RETRY;
        assert!(!r.retry_punch(&p, first, false), "silence counts only when asked");
        assert!(r.retry_punch(&p, first, true), "no punch ended on it: try again");
        assert!(!r.retry_punch(&p, first, true), "asked once until the connection is replaced");
        // The new relayed connection gets its own wait.
        r.disconnected(&ConnectionId::new_unchecked(1));
        let second = ConnInfo { since: first + Duration::from_secs(1), ..relayed };
        r.connected(ConnectionId::new_unchecked(2), second);
        assert!(r.punching(&p, first + Duration::from_secs(2)));
        assert!(!r.retry_punch(&p, first + PUNCH_RETRY, true), "the new connection is still young");
        assert!(r.retry_punch(&p, first + Duration::from_secs(1) + PUNCH_WAIT + PUNCH_RETRY, true));
    }
}
