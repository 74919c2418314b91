//! Claims (protocol.md §4.6, DESIGN §5; after Samsara, Cox and Noble, SOSP 2003): the
//! reciprocal space a client keeps for each of its providers, filled with pseudo-random
//! bytes the provider can regenerate and so audit without storing them.
//!
//! A contract in which provider P grants client C `G` bytes makes C owe P `G` bytes. Until
//! P uses that space for its own packs, C holds P's *claim*: blocks `0..n` of
//! [`CLAIM_BLOCK`] bytes each (the last partial block is not placed), where
//! `n = ⌊(owed − used) / CLAIM_BLOCK⌋`, `owed` is the sum of P's live grants to C and
//! `used` the bytes of P's own packs C acknowledged under P's live contracts with C. So
//! the claim shrinks as P's packs arrive, and a peer cannot hold more at others than it
//! really stores for them.
//!
//! Block `i` is the ChaCha20 (RFC 8439) keystream under the key
//! `HMAC-SHA-256(claim-key, C's PeerId bytes)` and the 96-bit nonce `0⁴ ‖ u64be(i)`,
//! from position 0. Only P knows `claim-key` (an HKDF subkey of its identity,
//! protocol.md §3.1), so C cannot regenerate a block it deleted; P can regenerate any
//! [`SAMPLE`]-byte window to check an answer. P alone drives a claim (placing blocks,
//! releasing them as its packs arrive); C never shrinks one on its own, so both sides
//! agree on what C must hold.
//!
//! [`ClaimStore`] keeps the claims a peer holds for its providers at
//! `home/claims/<provider PeerId>/<block index>`, written atomically like packs.

use crate::provider::{commit_tmp, write_tmp};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use hmac::{Hmac, Mac};
use libp2p::PeerId;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes per claim block: 16 MiB.
pub const CLAIM_BLOCK: u64 = 16 << 20;
/// Bytes of one claim audit answer.
pub const SAMPLE: usize = 4096;

/// The per-client claim key `HMAC-SHA-256(claim_key, client PeerId bytes)`.
pub fn client_key(claim_key: &[u8; 32], client: &PeerId) -> [u8; 32] {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(claim_key).expect("HMAC takes any key length");
    m.update(&client.to_bytes());
    m.finalize().into_bytes().into()
}

/// `len` bytes of claim block `index` from byte `offset` on (see the module docs).
pub fn keystream(key: &[u8; 32], index: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&u64::from(index).to_be_bytes());
    let mut c = ChaCha20::new(key.into(), &nonce.into());
    c.seek(offset);
    let mut out = vec![0u8; len];
    c.apply_keystream(&mut out);
    out
}

/// Whole blocks a client owes its provider: `⌊(owed − used) / CLAIM_BLOCK⌋`, bytes in.
pub fn target_blocks(owed: u64, used: u64) -> u32 {
    u32::try_from(owed.saturating_sub(used) / CLAIM_BLOCK).unwrap_or(u32::MAX)
}

/// Errors of the claim store.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A block of the wrong size.
    #[error("a claim block must be {CLAIM_BLOCK} bytes, not {0}")]
    BadSize(usize),
    /// An I/O error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClaimError + '_ {
    move |source| ClaimError::Io { path: path.display().to_string(), source }
}

/// The claims this peer holds for its providers. Cheap to clone; blocking methods.
#[derive(Clone)]
pub struct ClaimStore {
    dir: PathBuf,
}

impl ClaimStore {
    /// Opens the store at `dir`, creating it and removing leftover temporary files.
    pub fn open(dir: &Path) -> Result<Self, ClaimError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for p in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            for f in std::fs::read_dir(p.path()).into_iter().flatten().flatten() {
                if f.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(ClaimStore { dir: dir.to_path_buf() })
    }

    fn pdir(&self, provider: &PeerId) -> PathBuf {
        self.dir.join(provider.to_string())
    }

    /// Block indices held for `provider`.
    pub fn blocks(&self, provider: &PeerId) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.pdir(provider))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// Providers we hold claim blocks for.
    pub fn providers(&self) -> Vec<PeerId> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|p| p.file_name().to_str()?.parse::<PeerId>().ok())
            .collect()
    }

    /// Bytes held for every provider.
    pub fn held_total(&self) -> u64 {
        self.providers().iter().map(|p| self.held(p)).sum()
    }

    /// Bytes held for `provider`.
    pub fn held(&self, provider: &PeerId) -> u64 {
        self.blocks(provider).len() as u64 * CLAIM_BLOCK
    }

    /// Writes block `index` for `provider` atomically (replacing any earlier one).
    pub fn put(&self, provider: &PeerId, index: u32, data: &[u8]) -> Result<(), ClaimError> {
        if data.len() as u64 != CLAIM_BLOCK {
            return Err(ClaimError::BadSize(data.len()));
        }
        let d = self.pdir(provider);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        let dest = d.join(index.to_string());
        let tmp = write_tmp(&dest, data).map_err(io(&dest))?;
        commit_tmp(&tmp, &dest).map_err(io(&dest))
    }

    /// [`SAMPLE`] bytes of block `index` from `offset`; `Ok(None)` when the block is not
    /// held or too short.
    pub fn sample(&self, provider: &PeerId, index: u32, offset: u64) -> Result<Option<Vec<u8>>, ClaimError> {
        let p = self.pdir(provider).join(index.to_string());
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&p)(e)),
        };
        let mut buf = vec![0u8; SAMPLE];
        f.seek(SeekFrom::Start(offset)).map_err(io(&p))?;
        match f.read_exact(&mut buf) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Deletes the blocks of `provider` from index `keep` on; returns the bytes freed.
    pub fn release(&self, provider: &PeerId, keep: u32) -> Result<u64, ClaimError> {
        let mut freed = 0;
        for i in self.blocks(provider).into_iter().filter(|&i| i >= keep) {
            let p = self.pdir(provider).join(i.to_string());
            match std::fs::remove_file(&p) {
                Ok(()) => freed += CLAIM_BLOCK,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        if keep == 0 {
            let _ = std::fs::remove_dir(self.pdir(provider));
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystream_is_seekable_per_block_and_keyed_per_client() {
        let k = client_key(&[7; 32], &PeerId::random());
        let whole = keystream(&k, 3, 0, 3 * SAMPLE);
        assert_eq!(keystream(&k, 3, SAMPLE as u64, SAMPLE), whole[SAMPLE..2 * SAMPLE]);
        assert_ne!(keystream(&k, 4, 0, SAMPLE), whole[..SAMPLE]);
        let other = client_key(&[7; 32], &PeerId::random());
        assert_ne!(keystream(&other, 3, 0, SAMPLE), whole[..SAMPLE]);
        assert_ne!(client_key(&[8; 32], &PeerId::random()), k);
    }

    #[test]
    fn target_shrinks_as_packs_arrive() {
        assert_eq!(target_blocks(100 * CLAIM_BLOCK, 0), 100);
        assert_eq!(target_blocks(100 * CLAIM_BLOCK, CLAIM_BLOCK / 2), 99);
        assert_eq!(target_blocks(100 * CLAIM_BLOCK, 200 * CLAIM_BLOCK), 0);
        assert_eq!(target_blocks(CLAIM_BLOCK - 1, 0), 0);
    }

    #[test]
    fn store_samples_releases_and_refuses_bad_sizes() {
        let d = tempfile::tempdir().unwrap();
        let s = ClaimStore::open(d.path()).unwrap();
        let p = PeerId::random();
        let k = client_key(&[1; 32], &PeerId::random());
        for i in 0..3 {
            s.put(&p, i, &keystream(&k, i, 0, CLAIM_BLOCK as usize)).unwrap();
        }
        assert!(matches!(s.put(&p, 9, b"short"), Err(ClaimError::BadSize(5))));
        assert_eq!(s.blocks(&p), vec![0, 1, 2]);
        assert_eq!(s.held_total(), 3 * CLAIM_BLOCK);
        let off = CLAIM_BLOCK - SAMPLE as u64;
        assert_eq!(s.sample(&p, 1, off).unwrap().unwrap(), keystream(&k, 1, off, SAMPLE));
        assert!(s.sample(&p, 1, off + 1).unwrap().is_none());
        assert!(s.sample(&p, 7, 0).unwrap().is_none());
        assert_eq!(s.release(&p, 1).unwrap(), 2 * CLAIM_BLOCK);
        assert_eq!(s.blocks(&p), vec![0]);
        assert_eq!(s.release(&p, 0).unwrap(), CLAIM_BLOCK);
        assert_eq!(s.held(&p), 0);
    }
}
