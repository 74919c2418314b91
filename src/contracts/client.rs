//! The client's side of a contract (protocol.md §4.3.1, §4.4): how much it asks of each
//! provider, and the session of one search for providers, which decides which
//! acceptances are countersigned (steps 7 and 8) and when the search has what it wanted.
//! No I/O: the daemon tells the session what arrives and what was recorded.

use super::MIN_GRANT;
use libp2p::PeerId;
use std::collections::HashSet;

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

/// Why a session does not countersign an acceptance (protocol.md §4.3.1 steps 7 and 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Turned {
    /// Step 7: the provider already has a contract with us that has room, or this
    /// session already countersigned it.
    #[error("already a contract with this provider")]
    Already,
    /// Step 8: the session countersigned as many acceptances as it wanted.
    #[error("enough providers already")]
    Enough,
}

/// One search for providers (one `ensure_providers` call): every proposal it publishes
/// points at it, so it countersigns at most `wanted` acceptances, one per provider, however
/// often it republishes. A provider counts from the moment it is admitted, so no other is
/// admitted in its place while its contract is being recorded, and counts as accepted
/// once recorded.
#[derive(Debug)]
pub struct Session {
    wanted: usize,
    exclude: HashSet<PeerId>,
    /// Providers whose contract is recorded.
    accepted: Vec<PeerId>,
    /// Providers admitted whose contract is being recorded.
    writing: Vec<PeerId>,
}

impl Session {
    /// A session that wants `wanted` new providers, never one of `exclude` (providers
    /// with which we have a live contract with room).
    pub fn new(wanted: usize, exclude: HashSet<PeerId>) -> Session {
        Session { wanted, exclude, accepted: Vec::new(), writing: Vec::new() }
    }

    /// Steps 7 and 8: admits `provider`'s acceptance for countersigning, or says why not.
    pub fn admit(&mut self, provider: PeerId) -> Result<(), Turned> {
        if self.exclude.contains(&provider) || self.accepted.contains(&provider) || self.writing.contains(&provider) {
            return Err(Turned::Already);
        }
        if self.accepted.len() + self.writing.len() >= self.wanted {
            return Err(Turned::Enough);
        }
        self.writing.push(provider);
        Ok(())
    }

    /// The contract with an admitted `provider` is recorded: it counts as accepted.
    pub fn recorded(&mut self, provider: PeerId) {
        self.writing.retain(|p| *p != provider);
        self.accepted.push(provider);
    }

    /// The contract with an admitted `provider` could not be made or recorded: its place
    /// is free again.
    pub fn abandoned(&mut self, provider: PeerId) {
        self.writing.retain(|p| *p != provider);
    }

    /// Whether as many providers as wanted are recorded.
    pub fn complete(&self) -> bool {
        self.accepted.len() >= self.wanted
    }

    /// How many new providers the session wants.
    pub fn wanted(&self) -> usize {
        self.wanted
    }

    /// The providers whose contract is recorded.
    pub fn accepted(&self) -> &[PeerId] {
        &self.accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: u64 = 1 << 30;

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
    fn a_session_countersigns_at_most_what_it_wants_once_per_provider() {
        let (a, b, c, old) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = Session::new(2, HashSet::from([old]));
        assert_eq!(s.admit(old), Err(Turned::Already), "a provider with room is not asked again");
        assert_eq!(s.admit(a), Ok(()));
        assert_eq!(s.admit(a), Err(Turned::Already), "the same provider while its contract is written");
        assert_eq!(s.admit(b), Ok(()));
        assert_eq!(s.admit(c), Err(Turned::Enough), "two admitted: a third waits");
        assert!(!s.complete(), "admitted is not yet accepted");
        s.abandoned(b);
        assert_eq!(s.admit(c), Ok(()), "b's place is free again");
        s.recorded(a);
        assert_eq!(s.admit(a), Err(Turned::Already), "and once recorded");
        s.recorded(c);
        assert!(s.complete());
        assert_eq!(s.accepted(), [a, c]);
        assert_eq!(s.admit(b), Err(Turned::Enough));
    }
}
