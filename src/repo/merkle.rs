//! The pack id: root of a binary SHA-256 Merkle tree over fixed 64 KiB leaves (protocol.md §3.3).
//!
//! Leaves are the pack bytes cut every [`LEAF_SIZE`] bytes (the last may be shorter).
//! `leaf = SHA-256(0x00 || bytes)`, `node = SHA-256(0x01 || left || right)`; at a level
//! with an odd count the last node is carried up unchanged. The domain bytes keep a leaf
//! from being passed off as a node (second-preimage defence, as RFC 6962 §2.1).
//! A proof lets an auditor check one leaf against the pack id alone.

use crate::id::PackId;
use sha2::{Digest, Sha256};

/// Leaf size, bytes.
pub const LEAF_SIZE: usize = 64 * 1024;

/// The hash of one leaf, `SHA-256(0x00 || bytes)`.
pub fn leaf_hash(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

fn leaves(data: &[u8]) -> Vec<[u8; 32]> {
    if data.is_empty() {
        return vec![leaf_hash(&[])];
    }
    data.chunks(LEAF_SIZE).map(leaf_hash).collect()
}

fn up(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level.chunks(2).map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] }).collect()
}

/// The pack id of `data`.
pub fn root(data: &[u8]) -> PackId {
    let mut level = leaves(data);
    while level.len() > 1 {
        level = up(&level);
    }
    PackId(level[0])
}

/// The sibling hashes from leaf `index` up to the root; `None` if `index` is out of range.
pub fn proof(data: &[u8], index: usize) -> Option<Vec<[u8; 32]>> {
    let mut level = leaves(data);
    if index >= level.len() {
        return None;
    }
    let mut i = index;
    let mut path = Vec::new();
    while level.len() > 1 {
        let sib = i ^ 1;
        if sib < level.len() {
            path.push(level[sib]);
        }
        level = up(&level);
        i /= 2;
    }
    Some(path)
}

/// Checks that `leaf` is leaf `index` of a pack of `pack_len` bytes with id `root`.
pub fn verify(root: &PackId, pack_len: u64, index: usize, leaf: &[u8], path: &[[u8; 32]]) -> bool {
    verify_hash(root, pack_len, index, &leaf_hash(leaf), path)
}

/// [`verify`] from the leaf's hash ([`leaf_hash`]) instead of its bytes.
pub fn verify_hash(root: &PackId, pack_len: u64, index: usize, leaf: &[u8; 32], path: &[[u8; 32]]) -> bool {
    let n = usize::try_from(pack_len).unwrap_or(usize::MAX).div_ceil(LEAF_SIZE).max(1);
    if index >= n {
        return false;
    }
    let (mut i, mut width, mut h, mut p) = (index, n, *leaf, path.iter());
    while width > 1 {
        let sib = i ^ 1;
        if sib < width {
            let Some(s) = p.next() else { return false };
            h = if i % 2 == 0 { node_hash(&h, s) } else { node_hash(s, &h) };
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    p.next().is_none() && h == root.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_roots() {
        // Pins the tree shape: changing it changes every pack id on the network.
        assert_eq!(root(b"").to_string(), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
        let two_and_a_bit = vec![7u8; 2 * LEAF_SIZE + 1];
        let l0 = leaf_hash(&two_and_a_bit[..LEAF_SIZE]);
        let l2 = leaf_hash(&two_and_a_bit[2 * LEAF_SIZE..]);
        assert_eq!(root(&two_and_a_bit).0, node_hash(&node_hash(&l0, &l0), &l2));
    }

    #[test]
    fn proofs_verify_and_wrong_leaves_fail() {
        for len in [1, LEAF_SIZE, LEAF_SIZE + 1, 5 * LEAF_SIZE + 17, 8 * LEAF_SIZE] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let r = root(&data);
            let n = len.div_ceil(LEAF_SIZE);
            for i in 0..n {
                let leaf = &data[i * LEAF_SIZE..((i + 1) * LEAF_SIZE).min(len)];
                let p = proof(&data, i).unwrap();
                assert!(verify(&r, len as u64, i, leaf, &p), "len {len} leaf {i}");
                let mut bad = leaf.to_vec();
                bad[0] ^= 1;
                assert!(!verify(&r, len as u64, i, &bad, &p));
            }
            assert!(proof(&data, n).is_none());
        }
    }
}
