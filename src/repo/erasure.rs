//! Erasure coding of packs (protocol.md §3.7): a sealed pack is cut into K original
//! shards and M recovery shards are computed with Reed-Solomon over GF(2^16)
//! (reed-solomon-simd, the Leopard algorithm of Lin, Han and Chung). Any K of the K+M
//! shards give the pack back, at a storage cost of (K+M)/K instead of N for N copies.
//!
//! Layout: the pack (`len` bytes) is padded with zeros to `K × S`, where
//! `S = ⌈len / K⌉` rounded up to an even number (the coder works on 16-bit symbols); original
//! shard `i` is bytes `i·S .. (i+1)·S`, recovery shards follow as indices `K .. K+M`. Each
//! shard is stored like a pack, under the Merkle root of its bytes (§3.3.2), so providers
//! verify, hold and prove shards exactly as they do packs.

use serde::{Deserialize, Serialize};

/// Most shards per pack (K+M).
pub const MAX_SHARDS: u8 = 32;

/// Why shards could not be made or read (protocol.md §3.7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErasureError {
    /// `K+M` as given does not name a scheme.
    #[error("'{0}' is not an erasure scheme K+M such as 4+2 (K, M ≥ 1, K+M ≤ {MAX_SHARDS})")]
    BadScheme(String),
    /// The Reed-Solomon coder refused its input (reed-solomon-simd's message).
    #[error("erasure coding failed: {0}")]
    Coding(String),
    /// The shards given are not K+M of one size.
    #[error("expected {count} shards of {size} bytes")]
    Shape {
        /// K+M.
        count: usize,
        /// Bytes each shard must have.
        size: usize,
    },
    /// Fewer than K shards are there.
    #[error("only {have} of the {k} shards needed are available")]
    TooFew {
        /// Shards given.
        have: usize,
        /// Shards needed.
        k: usize,
    },
}

/// An erasure scheme: K original shards, M recovery shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheme {
    /// Shards needed to read the pack.
    pub k: u8,
    /// Extra shards: how many may be lost.
    pub m: u8,
}

impl std::str::FromStr for Scheme {
    type Err = ErasureError;
    /// Parses `K+M`, e.g. `4+2`: K ≥ 1, M ≥ 1, K+M ≤ [`MAX_SHARDS`].
    fn from_str(s: &str) -> Result<Self, ErasureError> {
        let bad = || ErasureError::BadScheme(s.to_string());
        let (k, m) = s.split_once('+').ok_or_else(bad)?;
        let (k, m): (u8, u8) = (k.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
        if k == 0 || m == 0 || u16::from(k) + u16::from(m) > u16::from(MAX_SHARDS) {
            return Err(bad());
        }
        Ok(Scheme { k, m })
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

impl Scheme {
    /// Shards in all, K+M.
    pub fn n(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    /// Bytes per shard for a pack of `len` bytes.
    pub fn shard_len(&self, len: usize) -> usize {
        let s = len.div_ceil(usize::from(self.k)).max(2);
        s + s % 2
    }

    /// The K+M shards of `pack`, originals first.
    pub fn split(&self, pack: &[u8]) -> Result<Vec<Vec<u8>>, ErasureError> {
        let s = self.shard_len(pack.len());
        let mut shards: Vec<Vec<u8>> = (0..usize::from(self.k))
            .map(|i| {
                let mut v = pack.get(i * s..((i + 1) * s).min(pack.len())).unwrap_or(&[]).to_vec();
                v.resize(s, 0);
                v
            })
            .collect();
        let recovery = reed_solomon_simd::encode(usize::from(self.k), usize::from(self.m), &shards)
            .map_err(|e| ErasureError::Coding(e.to_string()))?;
        shards.extend(recovery);
        Ok(shards)
    }

    /// The pack of `len` bytes back from its shards (`None` where missing); any K suffice.
    pub fn join(&self, len: usize, shards: &[Option<Vec<u8>>]) -> Result<Vec<u8>, ErasureError> {
        let (k, m) = (usize::from(self.k), usize::from(self.m));
        let s = self.shard_len(len);
        if shards.len() != k + m || shards.iter().flatten().any(|x| x.len() != s) {
            return Err(ErasureError::Shape { count: k + m, size: s });
        }
        let have = shards.iter().filter(|x| x.is_some()).count();
        if have < k {
            return Err(ErasureError::TooFew { have, k });
        }
        let mut originals: Vec<Option<Vec<u8>>> = shards[..k].to_vec();
        if originals.iter().any(|o| o.is_none()) {
            let given = originals.iter().enumerate().filter_map(|(i, o)| o.as_ref().map(|o| (i, o)));
            let recovery = shards[k..].iter().enumerate().filter_map(|(i, o)| o.as_ref().map(|o| (i, o)));
            let restored =
                reed_solomon_simd::decode(k, m, given, recovery).map_err(|e| ErasureError::Coding(e.to_string()))?;
            for (i, v) in restored {
                if let Some(slot) = originals.get_mut(i) {
                    *slot = Some(v);
                }
            }
        }
        let mut out = Vec::with_capacity(k * s);
        for o in originals {
            out.extend(o.ok_or(ErasureError::TooFew { have, k })?);
        }
        out.truncate(len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_refuse() {
        assert_eq!("4+2".parse::<Scheme>().unwrap(), Scheme { k: 4, m: 2 });
        for bad in ["4", "0+2", "4+0", "30+3", "a+b", "-1+2"] {
            assert!(bad.parse::<Scheme>().is_err(), "{bad}");
        }
    }

    #[test]
    fn any_k_shards_give_the_pack_back() {
        let s = Scheme { k: 4, m: 2 };
        for len in [1usize, 7, 1000, 65_537] {
            let pack: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let shards = s.split(&pack).unwrap();
            assert_eq!(shards.len(), 6);
            // every way of losing two shards
            for a in 0..6 {
                for b in a + 1..6 {
                    let mut v: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
                    v[a] = None;
                    v[b] = None;
                    assert_eq!(s.join(len, &v).unwrap(), pack, "lost {a} and {b}");
                }
            }
            let mut three: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
            three[0] = None;
            three[1] = None;
            three[5] = None;
            assert_eq!(s.join(len, &three).unwrap_err(), ErasureError::TooFew { have: 3, k: 4 });
        }
    }
}
