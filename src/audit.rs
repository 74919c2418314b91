//! Audits (protocol.md §5.4, DESIGN §5): a client checks that each holder still has its
//! packs, without keeping the packs. A challenge names a random leaf of a random pack the
//! holder stores; the answer (leaf bytes + Merkle path) is checked against the pack id
//! alone. A holder keeping a fraction `d` of a pack's leaves passes `c` independent
//! challenges with probability `d^c` (Lillibridge et al., 2003): keeping half the data
//! survives 10 audits with probability 1/1024.
//!
//! Each result updates a per-peer record with a score `R = α / (α + β)` with forgetting
//! (Storj's reputation, with `α ← λα + 1` on a pass and `β ← λβ + 1` on a failure,
//! `λ = 0.95`, prior `α = 1`). A wrong answer is a failure at once; an unreachable holder
//! is a failure only once it has been unreachable for longer than the grace period, so a
//! short outage costs nothing. A peer whose score falls below the configured minimum loses
//! its standing: the client ends its contracts with it and counts its copies as lost.

use crate::id::PackId;
use crate::repo::merkle::{self, LEAF_SIZE};
use serde::{Deserialize, Serialize};

/// Forgetting factor λ of the score.
pub const LAMBDA: f64 = 0.95;

/// One peer's audit history, as seen by us.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Audits passed.
    pub passes: u64,
    /// Audits failed (wrong answer, missing pack, or unreachable past the grace period).
    pub failures: u64,
    /// α of the score.
    pub alpha: f64,
    /// β of the score.
    pub beta: f64,
    /// Last pass, seconds since the Unix epoch (0 = never).
    pub last_pass: u64,
    /// Last failure, seconds since the Unix epoch (0 = never).
    pub last_failure: u64,
    /// Why the last failure happened.
    pub last_error: String,
    /// Since when the peer has been unreachable, if it is now.
    pub offline_since: Option<u64>,
    /// False once the score fell below the minimum: contracts with the peer are ended.
    pub good: bool,
    /// Provider side: when this client last declared its claims lost (protocol.md §4.6).
    #[serde(default)]
    pub claims_reset: Option<u64>,
}

impl Default for AuditRecord {
    fn default() -> Self {
        AuditRecord {
            passes: 0,
            failures: 0,
            alpha: 1.0,
            beta: 0.0,
            last_pass: 0,
            last_failure: 0,
            last_error: String::new(),
            offline_since: None,
            good: true,
            claims_reset: None,
        }
    }
}

/// What one audit found.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The proof checks out.
    Pass,
    /// The holder answered wrongly or does not have the pack: that copy is lost.
    Wrong(String),
    /// No answer (offline, timeout).
    Unreachable(String),
}

impl AuditRecord {
    /// The score `α / (α + β)`, in [0, 1].
    pub fn score(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    /// Applies one outcome at time `now` (seconds); `grace` is how long (seconds) a holder
    /// may be unreachable before that counts as a failure, `min_score` the standing floor.
    /// Returns true when this outcome made the peer lose its standing.
    pub fn apply(&mut self, outcome: &Outcome, now: u64, grace: u64, min_score: f64) -> bool {
        let fail = |r: &mut Self, why: &str| {
            r.failures += 1;
            r.beta = LAMBDA * r.beta + 1.0;
            r.alpha *= LAMBDA;
            r.last_failure = now;
            r.last_error = why.to_string();
        };
        match outcome {
            Outcome::Pass => {
                self.passes += 1;
                self.alpha = LAMBDA * self.alpha + 1.0;
                self.beta *= LAMBDA;
                self.last_pass = now;
                self.offline_since = None;
            }
            Outcome::Wrong(why) => {
                self.offline_since = None;
                fail(self, why);
            }
            Outcome::Unreachable(why) => {
                let since = *self.offline_since.get_or_insert(now);
                if now.saturating_sub(since) > grace {
                    fail(self, &format!("unreachable for {} s: {why}", now - since));
                }
            }
        }
        let was = self.good;
        self.good = self.good && self.score() >= min_score;
        was && !self.good
    }
}

/// Number of 64 KiB leaves of a pack of `len` bytes.
pub fn leaves(len: u64) -> u32 {
    (len as usize).div_ceil(LEAF_SIZE).max(1) as u32
}

/// Checks an audit answer for leaf `leaf` of pack `pack` (of `len` bytes).
pub fn check(pack: &PackId, len: u64, leaf: u32, bytes: &[u8], path: &[u8]) -> Outcome {
    if !path.len().is_multiple_of(32) || path.len() > 32 * 32 || bytes.len() > LEAF_SIZE {
        return Outcome::Wrong("malformed proof".into());
    }
    let hashes: Vec<[u8; 32]> = path.chunks(32).filter_map(|c| <[u8; 32]>::try_from(c).ok()).collect();
    if merkle::verify(pack, len, leaf as usize, bytes, &hashes) {
        Outcome::Pass
    } else {
        Outcome::Wrong(format!("wrong proof for leaf {leaf} of pack {}", pack.short()))
    }
}

/// The answer a holder gives: leaf `leaf` of `data` and its path, concatenated; `None` if out of range.
pub fn prove(data: &[u8], leaf: u32) -> Option<(Vec<u8>, Vec<u8>)> {
    let i = leaf as usize;
    let path = merkle::proof(data, i)?;
    let start = i * LEAF_SIZE;
    let bytes = data.get(start..(start + LEAF_SIZE).min(data.len())).unwrap_or_default().to_vec();
    Some((bytes, path.concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honest_proofs_pass_and_tampering_fails() {
        let data: Vec<u8> = (0..(5 * LEAF_SIZE + 99)).map(|i| (i % 253) as u8).collect();
        let id = merkle::root(&data);
        let n = leaves(data.len() as u64);
        assert_eq!(n, 6);
        for leaf in 0..n {
            let (b, p) = prove(&data, leaf).unwrap();
            assert_eq!(check(&id, data.len() as u64, leaf, &b, &p), Outcome::Pass);
            let mut bad = b.clone();
            bad[0] ^= 1;
            assert!(matches!(check(&id, data.len() as u64, leaf, &bad, &p), Outcome::Wrong(_)));
            assert!(matches!(check(&id, data.len() as u64, (leaf + 1) % n, &b, &p), Outcome::Wrong(_)));
        }
        assert!(prove(&data, n).is_none());
        assert!(matches!(check(&id, data.len() as u64, 0, &[], &[1, 2, 3]), Outcome::Wrong(_)));
    }

    #[test]
    fn score_forgives_outages_within_grace_but_not_wrong_answers() {
        let mut r = AuditRecord::default();
        for t in 0..5 {
            assert!(!r.apply(&Outcome::Pass, t, 100, 0.8));
        }
        // unreachable within grace: no failure
        assert!(!r.apply(&Outcome::Unreachable("timeout".into()), 10, 100, 0.8));
        assert!(!r.apply(&Outcome::Unreachable("timeout".into()), 50, 100, 0.8));
        assert_eq!(r.failures, 0);
        assert!(!r.apply(&Outcome::Pass, 60, 100, 0.8));
        assert_eq!(r.offline_since, None);
        // past grace: a failure
        r.apply(&Outcome::Unreachable("timeout".into()), 200, 100, 0.8);
        r.apply(&Outcome::Unreachable("timeout".into()), 400, 100, 0.8);
        assert_eq!(r.failures, 1);
        // wrong answers sink the score and the standing is lost once
        let mut lost = 0;
        for t in 500..505 {
            lost += r.apply(&Outcome::Wrong("bad".into()), t, 100, 0.8) as u32;
        }
        assert_eq!(lost, 1);
        assert!(!r.good && r.score() < 0.8);
        // standing is not regained by later passes
        r.apply(&Outcome::Pass, 600, 100, 0.8);
        assert!(!r.good);
    }
}
