//! What can go wrong moving a pack (or an erasure shard) to or from its holders
//! (protocol.md §5.1–§5.3, §3.7): the error of [`crate::backup::PackSink::place`] and of
//! [`crate::restore::PackSource::fetch`]. One holder's failure is a [`HolderError`]; a
//! placement or a fetch that gives up carries every holder's failure, so a caller can
//! tell a full provider from a corrupt copy or an unreachable one without reading text.

use crate::protocol::DataErrorCode;
use libp2p::PeerId;

/// Why one holder did not take or give back a pack.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HolderError {
    /// It answered with an error code (§5.3), e.g. `NoRoom` for a full disk.
    #[error("provider {peer} refused: {code:?}: {message}")]
    Refused {
        /// The holder.
        peer: PeerId,
        /// Its code.
        code: DataErrorCode,
        /// Its message (at most `MAX_REASON` bytes, §6).
        message: String,
    },
    /// It answered `Busy` to every try.
    #[error("provider {peer} stayed busy")]
    Busy {
        /// The holder.
        peer: PeerId,
    },
    /// It answered with a response of another kind than the request calls for.
    #[error("provider {peer} gave an unexpected answer to a {request} request")]
    Unexpected {
        /// The holder.
        peer: PeerId,
        /// `store` or `fetch`.
        request: &'static str,
    },
    /// The request did not reach it or got no answer in time (the network's words).
    #[error("{reason}")]
    Unreachable {
        /// The holder.
        peer: PeerId,
        /// What the network said, naming the peer.
        reason: String,
    },
    /// The bytes it returned do not hash to the id asked for (§3.3.2).
    #[error("provider {peer} returned a corrupt copy")]
    Corrupt {
        /// The holder.
        peer: PeerId,
    },
}

impl HolderError {
    /// The holder it is about.
    pub fn peer(&self) -> PeerId {
        match self {
            HolderError::Refused { peer, .. }
            | HolderError::Busy { peer }
            | HolderError::Unexpected { peer, .. }
            | HolderError::Unreachable { peer, .. }
            | HolderError::Corrupt { peer } => *peer,
        }
    }
}

/// Why a pack could not be placed or fetched.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The pack is larger than any holder accepts (`MAX_PACK_SIZE`, §6).
    #[error("pack {pack} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Short pack id.
        pack: String,
        /// Its size, bytes.
        size: u64,
        /// The limit, bytes.
        limit: usize,
    },
    /// Fewer holders than wanted acknowledged the pack (§5.3).
    #[error("pack {pack} reached {reached} of {wanted} holders: {}", why(errors, extra))]
    TooFewHolders {
        /// Short pack id.
        pack: String,
        /// Holders that acknowledged it.
        reached: usize,
        /// Holders wanted (the copies).
        wanted: usize,
        /// What each tried holder answered.
        errors: Vec<HolderError>,
        /// Why no more providers could be found, if that was tried and failed.
        extra: Option<String>,
    },
    /// One erasure shard found no provider (§3.7).
    #[error("shard {index} of pack {pack} found no provider: {}", why(errors, extra))]
    ShardUnplaced {
        /// Short pack id.
        pack: String,
        /// The shard's index.
        index: usize,
        /// What each tried holder answered.
        errors: Vec<HolderError>,
        /// Why no more providers could be found, if that was tried and failed.
        extra: Option<String>,
    },
    /// No holder of the pack is known.
    #[error("pack {pack} has no known holder")]
    NoHolder {
        /// Short pack id.
        pack: String,
    },
    /// Every holder was asked and none gave a good copy.
    #[error("{}", join(errors))]
    AllHoldersFailed {
        /// What each holder answered.
        errors: Vec<HolderError>,
    },
    /// Fewer than K shards of an erasure-coded pack could be fetched (§3.7).
    #[error("only {have} of the {k} shards needed could be fetched: {}", shard_errors(errors))]
    TooFewShards {
        /// Shards fetched.
        have: usize,
        /// Shards needed.
        k: u8,
        /// Each failed shard's index and what its holder answered.
        errors: Vec<(usize, HolderError)>,
    },
    /// The shards fetched decode to bytes that do not match the pack id.
    #[error("the decoded shards do not match the pack id")]
    BadDecode,
    /// Erasure coding or decoding failed here (§3.7).
    #[error(transparent)]
    Erasure(#[from] crate::repo::erasure::ErasureError),
    /// This peer's own side failed: its state, a stopped task.
    #[error("{0}")]
    Local(String),
}

/// Every holder's failure in one line, `; `-separated.
pub fn join(errors: &[HolderError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

fn shard_errors(errors: &[(usize, HolderError)]) -> String {
    errors.iter().map(|(i, e)| format!("shard {i}: {e}")).collect::<Vec<_>>().join("; ")
}

fn why(errors: &[HolderError], extra: &Option<String>) -> String {
    let mut parts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    parts.extend(extra.iter().cloned());
    if parts.is_empty() {
        "no other contract has room; offer more storage to get more".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_each_holder_and_full_ones_are_told_apart() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let e = TransferError::TooFewHolders {
            pack: "0a0b0c0d".into(),
            reached: 1,
            wanted: 3,
            errors: vec![
                HolderError::Refused { peer: a, code: DataErrorCode::NoRoom, message: "disk full".into() },
                HolderError::Corrupt { peer: b },
            ],
            extra: Some("only 1 provider".into()),
        };
        let text = e.to_string();
        assert!(text.starts_with("pack 0a0b0c0d reached 1 of 3 holders: provider "), "{text}");
        assert!(
            text.contains("refused: NoRoom: disk full")
                && text.contains(&format!("provider {b} returned a corrupt copy"))
        );
        assert!(text.ends_with("; only 1 provider"), "{text}");
        let none = TransferError::ShardUnplaced { pack: "0a".into(), index: 2, errors: vec![], extra: None };
        assert_eq!(
            none.to_string(),
            "shard 2 of pack 0a found no provider: no other contract has room; offer more storage to get more"
        );
        let shards = TransferError::TooFewShards { have: 1, k: 2, errors: vec![(0, HolderError::Busy { peer: a })] };
        assert_eq!(
            shards.to_string(),
            format!("only 1 of the 2 shards needed could be fetched: shard 0: provider {a} stayed busy")
        );
    }
}
