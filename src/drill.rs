//! Test restores ("restore drills"): now and then the daemon restores a random sample of
//! files of the latest snapshot from its providers into a temporary directory, checks
//! each against the snapshot, and removes it, so a backup that cannot be restored is
//! found before the day it is needed (README "Test restores").
//!
//! This module holds what needs no network: the sample, drawn while walking the
//! snapshot's trees (reservoir sampling, Vitter's algorithm R, so memory stays bounded
//! by the sample whatever the snapshot's size), and the check of a restored file: its
//! size, then its content cut again into chunks (same FastCDC parameters as the backup)
//! whose blob ids must equal the snapshot's, in order. The daemon side is
//! `daemon/drilling.rs`.

use crate::repo::blob::blob_id;
use crate::repo::chunker;
use crate::repo::tree::Node;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One file drawn for a test restore.
#[derive(Clone, Debug)]
pub struct Pick {
    /// Its original absolute path (what `--include` takes).
    pub orig: String,
    /// Where a restore under a target puts it, relative to the target.
    pub rel: PathBuf,
    /// Its tree entry: size and content blob ids to check against.
    pub node: Node,
}

/// Reservoir of at most `n` files, each at most `max_each` bytes, drawn uniformly from
/// the files offered to it.
pub struct Sampler<R: Rng> {
    n: usize,
    max_each: u64,
    seen: u64,
    picks: Vec<Pick>,
    rng: R,
}

impl<R: Rng> Sampler<R> {
    /// A sampler of `n` files of at most `max_each` bytes each.
    pub fn new(n: usize, max_each: u64, rng: R) -> Self {
        Sampler { n, max_each, seen: 0, picks: Vec::with_capacity(n), rng }
    }

    /// Offers one regular file; larger than `max_each` ones are passed over.
    pub fn offer(&mut self, pick: Pick) {
        if pick.node.size > self.max_each || self.n == 0 {
            return;
        }
        self.seen += 1;
        if self.picks.len() < self.n {
            self.picks.push(pick);
        } else {
            let j = self.rng.random_range(0..self.seen);
            if (j as usize) < self.n {
                self.picks[j as usize] = pick;
            }
        }
    }

    /// The sample.
    pub fn into_picks(self) -> Vec<Pick> {
        self.picks
    }
}

/// How a restored file differs from its tree entry.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// It cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The restored file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Its size is not the snapshot's.
    #[error("{path}: {restored} bytes restored, the snapshot says {expected}")]
    Size {
        /// The restored file.
        path: String,
        /// Its size, bytes.
        restored: u64,
        /// The size the snapshot records, bytes.
        expected: u64,
    },
    /// Its chunks are not the snapshot's.
    #[error("{path}: the restored content differs from the snapshot's")]
    Content {
        /// The restored file.
        path: String,
    },
}

/// Checks a restored file against its tree entry: size, then every chunk's blob id in
/// order. Errors say what differs.
pub fn verify_file(id_key: &[u8; 32], path: &Path, node: &Node) -> Result<(), VerifyError> {
    let io = |source| VerifyError::Io { path: path.display().to_string(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() != node.size {
        let path = path.display().to_string();
        return Err(VerifyError::Size { path, restored: meta.len(), expected: node.size });
    }
    let f = std::fs::File::open(path).map_err(io)?;
    let mut ids = Vec::with_capacity(node.content.len());
    chunker::for_each_chunk::<_, std::io::Error>(f, meta.len(), |chunk| {
        ids.push(blob_id(id_key, chunk));
        Ok(())
    })
    .map_err(io)?;
    if ids != node.content {
        return Err(VerifyError::Content { path: path.display().to_string() });
    }
    Ok(())
}

/// The outcome of one test restore (`peer status`, the dashboard, `state.redb`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    /// Start, Unix seconds.
    pub time: u64,
    /// The snapshot sampled (hex id); empty if none could be chosen.
    pub snapshot: String,
    /// Original paths of the files sampled.
    pub sample: Vec<String>,
    /// Bytes restored and checked.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Empty on success; else what failed (files not restored, content that differs).
    pub error: String,
}

impl DrillReport {
    /// Whether every sampled file came back as the snapshot says.
    pub fn ok(&self) -> bool {
        self.error.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn node(size: u64, content: Vec<crate::id::BlobId>) -> Node {
        Node { name: b"f".to_vec(), mode: 0o644, size, content, ..Default::default() }
    }

    #[test]
    fn the_reservoir_is_bounded_uniform_and_skips_large_files() {
        let mut counts = [0u32; 10];
        for seed in 0..2000 {
            let mut s = Sampler::new(3, 100, rand::rngs::StdRng::seed_from_u64(seed));
            for i in 0..10 {
                s.offer(Pick { orig: i.to_string(), rel: PathBuf::new(), node: node(50, vec![]) });
            }
            s.offer(Pick { orig: "big".into(), rel: PathBuf::new(), node: node(101, vec![]) });
            let picks = s.into_picks();
            assert_eq!(picks.len(), 3);
            for p in picks {
                counts[p.orig.parse::<usize>().expect("the large file is never drawn")] += 1;
            }
        }
        // Each of 10 files is drawn with probability 3/10: 600 of 2000 runs.
        assert!(counts.iter().all(|&c| (480..=720).contains(&c)), "{counts:?}");
    }

    #[test]
    fn a_restored_file_must_match_its_chunks() {
        let key = [7u8; 32];
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut data = vec![0u8; 3_000_000];
        rand::rngs::StdRng::seed_from_u64(5).fill(&mut data[..]);
        std::fs::write(&p, &data).unwrap();
        let mut ids = Vec::new();
        chunker::for_each_chunk::<_, std::io::Error>(&data[..], data.len() as u64, |c| {
            ids.push(blob_id(&key, c));
            Ok(())
        })
        .unwrap();
        assert!(ids.len() > 1);
        verify_file(&key, &p, &node(data.len() as u64, ids.clone())).unwrap();
        let mut flipped = data.clone();
        flipped[1_000_000] ^= 1;
        std::fs::write(&p, &flipped).unwrap();
        let e = verify_file(&key, &p, &node(data.len() as u64, ids.clone())).unwrap_err();
        assert!(matches!(e, VerifyError::Content { .. }), "{e}");
        std::fs::write(&p, &data[..10]).unwrap();
        let e = verify_file(&key, &p, &node(data.len() as u64, ids)).unwrap_err();
        assert!(matches!(e, VerifyError::Size { restored: 10, .. }), "{e}");
    }
}
