//! Keeping the number of connected peers bounded by what this peer needs (protocol.md
//! §1.9), not by the size of the network.
//!
//! Nothing in libp2p closes an idle connection to a gossipsub peer: gossipsub keeps one
//! stream open each way with every peer that speaks it, and an open stream keeps a
//! connection alive. Left alone, every peer would in time be connected to every peer that
//! ever dialed it. So, as go-libp2p's connection manager does, connections are trimmed
//! between two watermarks: a peer dials for more only while it has fewer than `low`
//! connected peers (`[network] target_peers`), and when more than [`high`] are connected it
//! closes the least needed ones until `low` remain.
//!
//! Never closed: a peer the daemon asked to keep (its contract partners), a relay we hold a
//! reservation on, a peer with data requests waiting for it, a peer connected less than
//! [`GRACE`] ago, and a peer that sent or answered a request less than [`IN_USE`] ago.
//! Among the others, peers outside every gossipsub mesh go first, then mesh peers
//! (gossipsub grafts others in their place at its next heartbeat); within each group the
//! most recently connected go first, so long-lived connections stay.
//!
//! This module decides; the network task acts (`EventLoop::trim`).

use libp2p::PeerId;
use std::time::{Duration, Instant};

/// A new connection is never trimmed within this time (its identify and first requests
/// are under way).
pub const GRACE: Duration = Duration::from_secs(30);
/// A peer that sent or answered a contract or data request within this time is kept.
pub const IN_USE: Duration = Duration::from_secs(120);

/// Connected peers above which trimming starts: `low` and half as many again (at least one
/// more than `low`).
pub fn high(low: usize) -> usize {
    low + (low / 2).max(1)
}

/// What the network task knows of one connected peer.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// When its oldest open connection was established.
    pub since: Instant,
    /// When it last sent or answered a request (contract or data protocol), if ever.
    pub last_used: Option<Instant>,
    /// It is in a gossipsub mesh of ours.
    pub mesh: bool,
    /// Never to be closed: a contract partner, a relay we use, a peer requests wait for.
    pub keep: bool,
}

/// The peers to disconnect from `connected` (every connected peer, once each) so that
/// `low` remain, when more than [`high`]`(low)` are connected; empty otherwise, and never
/// a protected one (so more than `low` may remain).
pub fn to_close(connected: &[Candidate], low: usize, now: Instant) -> Vec<PeerId> {
    if connected.len() <= high(low) {
        return Vec::new();
    }
    let mut open: Vec<&Candidate> = connected
        .iter()
        .filter(|c| !c.keep)
        .filter(|c| now.saturating_duration_since(c.since) >= GRACE)
        .filter(|c| c.last_used.is_none_or(|t| now.saturating_duration_since(t) >= IN_USE))
        .collect();
    // Non-mesh peers first, then the newest connections first.
    open.sort_by_key(|c| (c.mesh, std::cmp::Reverse(c.since)));
    let excess = connected.len() - low;
    open.into_iter().take(excess).map(|c| c.peer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(since_secs_ago: u64, now: Instant) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            since: now - Duration::from_secs(since_secs_ago),
            last_used: None,
            mesh: false,
            keep: false,
        }
    }

    #[test]
    fn nothing_closes_up_to_the_high_watermark() {
        let now = Instant::now() + Duration::from_secs(3600);
        let peers: Vec<_> = (0..high(8)).map(|_| cand(600, now)).collect();
        assert_eq!(high(8), 12);
        assert!(to_close(&peers, 8, now).is_empty());
        assert_eq!(high(1), 2, "at least one above low");
    }

    #[test]
    fn above_it_the_newest_non_mesh_peers_go_until_low_remain() {
        let now = Instant::now() + Duration::from_secs(3600);
        // 13 peers, low 8: 5 go. Ages 100..=1300 s; the two youngest are mesh peers.
        let mut peers: Vec<_> = (1..=13).map(|i| cand(100 * i, now)).collect();
        peers[0].mesh = true;
        peers[1].mesh = true;
        let closed = to_close(&peers, 8, now);
        let want: Vec<PeerId> = peers[2..7].iter().map(|c| c.peer).collect();
        assert_eq!(closed, want, "non-mesh first, newest first");
        // With only mesh peers left to choose from, mesh peers go too.
        for c in &mut peers {
            c.mesh = true;
        }
        assert_eq!(to_close(&peers, 8, now).len(), 5);
    }

    #[test]
    fn protected_peers_stay_even_if_more_than_low_remain() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut peers: Vec<_> = (0..20).map(|_| cand(600, now)).collect();
        for c in &mut peers[..10] {
            c.keep = true;
        }
        peers[10].since = now - Duration::from_secs(5); // within the grace
        peers[11].last_used = Some(now - Duration::from_secs(10)); // in use
        let closed = to_close(&peers, 4, now);
        let kept: Vec<PeerId> = peers[..12].iter().map(|c| c.peer).collect();
        assert_eq!(closed.len(), 8, "only the 8 unprotected ones can go: {closed:?}");
        assert!(closed.iter().all(|p| !kept.contains(p)));
    }
}
