//! The client's side of a contract (protocol.md §4.3.1, §4.4): how much it asks of each
//! provider, and the session of one search for providers, which decides which
//! acceptances are countersigned (steps 7 and 8) and when the search has what it wanted,
//! and the steps of that search ([`next_step`]: wait for hole punches, open a session,
//! propose, give up). No I/O: the daemon tells the session what arrives and what was
//! recorded, tells `next_step` what it found, and does what it says.

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

/// What one search for providers knows at a step (protocol.md §4.3.1, §1.10), counted
/// over the providers we hold a live contract with room at, less those the caller avoids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    /// Providers the caller needs ready.
    pub needed: usize,
    /// Providers with a direct connection: data can go to them now.
    pub ready: usize,
    /// Providers connected through a relay whose hole punch is under way.
    pub punching: usize,
    /// Providers with no connection at all (a restart, an outage): dialed again.
    pub away: usize,
    /// The search's deadline (`contracts.proposal_wait_secs`) has passed.
    pub timed_out: bool,
}

/// Where the search's [`Session`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No session yet (or the last one was given up).
    None,
    /// Open and still wanting providers.
    Open {
        /// Bytes to ask of each (from [`client_ask`]); `None` when the allowance has
        /// nothing worth a contract left.
        ask: Option<u64>,
    },
    /// Every provider it wanted has a recorded contract.
    Complete {
        /// Some of them can be reached only through a relay (or are still being hole
        /// punched).
        indirect: bool,
    },
}

/// The search's next step: what the daemon does with the network and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Enough providers are ready: the search succeeds.
    Enough,
    /// The deadline passed first: the search fails, short of providers.
    TimedOut,
    /// Hole punches under way may make enough providers direct: wait a little and look again.
    AwaitPunches,
    /// Open a session, then look again.
    Open {
        /// New providers the session wants: those still missing.
        wanted: usize,
    },
    /// The session got its providers, but some are reachable only through a relay: they
    /// keep their contracts (they may become direct later); give the session up and ask
    /// for others.
    AskOthers,
    /// Everyone asked for has answered, yet too few are usable: the search fails early.
    Unreachable,
    /// Dial the providers that are away, publish a proposal asking this many bytes, and
    /// wait for acceptances (or the next republication).
    Propose(u64),
    /// Nothing is left to ask for, but providers that are away may come back in time:
    /// dial them, wait a little and look again.
    AwaitDials,
    /// Nothing is left to ask for and too few providers could come back: the search fails
    /// (give to get: the offer is too small for what is held).
    OverRatio,
}

/// The next step of a search for providers, from what it knows (`found`) and where its
/// session stands. Pure: the daemon ([`crate::daemon`], `ensure_providers`) observes,
/// calls this, and acts.
pub fn next_step(found: &Found, session: SessionState) -> Step {
    let Found { needed, ready, punching, away, timed_out } = *found;
    if ready >= needed {
        return Step::Enough;
    }
    if timed_out {
        return Step::TimedOut;
    }
    if ready + punching >= needed {
        return Step::AwaitPunches;
    }
    match session {
        SessionState::None => Step::Open { wanted: needed - ready },
        SessionState::Complete { indirect: true } => Step::AskOthers,
        SessionState::Complete { indirect: false } => Step::Unreachable,
        SessionState::Open { ask: Some(ask) } => Step::Propose(ask),
        SessionState::Open { ask: None } if ready + away >= needed => Step::AwaitDials,
        SessionState::Open { ask: None } => Step::OverRatio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: u64 = 1 << 30;

    #[test]
    fn a_search_steps_from_what_it_found() {
        let found = |ready, punching, away, timed_out| Found { needed: 3, ready, punching, away, timed_out };
        let open = SessionState::Open { ask: Some(G) };
        // Enough ready wins over everything, even a passed deadline.
        assert_eq!(next_step(&found(3, 0, 0, true), open), Step::Enough);
        assert_eq!(next_step(&found(1, 0, 0, true), open), Step::TimedOut);
        // Punches under way that would make enough: wait for them rather than ask more.
        assert_eq!(next_step(&found(1, 2, 0, false), open), Step::AwaitPunches);
        // A first session wants what is missing.
        assert_eq!(next_step(&found(1, 1, 0, false), SessionState::None), Step::Open { wanted: 2 });
        assert_eq!(next_step(&found(1, 1, 0, false), open), Step::Propose(G));
        // A complete session with relayed providers: ask others; with none: give up early.
        assert_eq!(next_step(&found(1, 0, 0, false), SessionState::Complete { indirect: true }), Step::AskOthers);
        assert_eq!(next_step(&found(1, 0, 0, false), SessionState::Complete { indirect: false }), Step::Unreachable);
        // Nothing left to ask: wait while away providers could make enough, else over ratio.
        let spent = SessionState::Open { ask: None };
        assert_eq!(next_step(&found(1, 0, 2, false), spent), Step::AwaitDials);
        assert_eq!(next_step(&found(1, 0, 1, false), spent), Step::OverRatio);
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
