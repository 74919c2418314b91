//! Blobs (protocol.md §3.2): the unit of deduplication.
//!
//! `id = HMAC-SHA-256(id-key, plaintext)`; stored form =
//! `nonce (24 bytes) || XChaCha20-Poly1305(enc-key, nonce, zstd(plaintext), aad = kind || id)`.
//! A keyed id means a provider cannot confirm a guess of the content.

use super::RepoError;
use crate::id::BlobId;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// A chunk of file content.
    Data = 0,
    /// A tree or snapshot document.
    Tree = 1,
    /// An index document (protocol.md §3.8): where the blobs of other packs are.
    Index = 2,
}

/// Bytes a stored blob adds to its compressed plaintext: 24-byte nonce + 16-byte tag.
pub const BLOB_OVERHEAD: usize = 24 + 16;

/// The blob id of `plaintext` under `id_key`.
pub fn blob_id(id_key: &[u8; 32], plaintext: &[u8]) -> BlobId {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(id_key).expect("HMAC takes a key of any length");
    m.update(plaintext);
    BlobId(m.finalize().into_bytes().into())
}

/// AEAD-encrypts `plaintext` with a random 24-byte nonce; returns `nonce || ciphertext`.
pub fn encrypt(enc_key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
    encrypt_with_nonce(enc_key, &nonce, aad, plaintext)
}

/// [`encrypt`] with a given nonce, for the test vectors of protocol.md §7.2 (a nonce must
/// never be used twice under one key: everything else takes a random one).
pub fn encrypt_with_nonce(enc_key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(enc_key.into());
    let ct = cipher
        .encrypt(XNonce::from_slice(nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(24 + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens `nonce || ciphertext`; `None` when it is too short or fails authentication.
pub fn decrypt(enc_key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < BLOB_OVERHEAD {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(enc_key.into());
    let (nonce, ct) = sealed.split_at(24);
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
}

/// The associated data of a stored blob: `kind_byte || id` (protocol.md §3.2).
pub(crate) fn aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[0] = kind as u8;
    a[1..].copy_from_slice(id.as_bytes());
    a
}

/// A reusable zstd compressor at `level` (reusing its context avoids re-initialising
/// zstd's tables for every blob).
pub fn compressor(level: i32) -> zstd::bulk::Compressor<'static> {
    zstd::bulk::Compressor::new(level).expect("a zstd context at a valid level (1..=19) can be created")
}

/// Compresses and encrypts a blob's plaintext into its stored form.
pub fn seal(
    enc_key: &[u8; 32],
    kind: BlobKind,
    id: &BlobId,
    plaintext: &[u8],
    zstd: &mut zstd::bulk::Compressor<'static>,
) -> Vec<u8> {
    let mut out = Vec::new();
    seal_into(enc_key, kind, id, plaintext, zstd, &mut Vec::new(), &mut out);
    out
}

/// Empties `v` and gives it room for `n` bytes: a new buffer when it has too little, as
/// growing it would copy its stale bytes along (`realloc` does not know they are unused).
pub(crate) fn fresh(v: &mut Vec<u8>, n: usize) {
    v.clear();
    if v.capacity() < n {
        *v = Vec::with_capacity(n);
    }
}

/// [`seal`] into `out` (replacing what it held), with `scratch` for the compressed bytes:
/// a backup's sealing threads reuse both from blob to blob, so a blob costs no new
/// buffers (each new one over glibc's mmap threshold is mapped, faulted in page by page
/// and unmapped again) and one copy of its compressed bytes, encrypted in place. The
/// stored form is [`seal`]'s: `nonce || ciphertext || tag`.
pub fn seal_into(
    enc_key: &[u8; 32],
    kind: BlobKind,
    id: &BlobId,
    plaintext: &[u8],
    zstd: &mut zstd::bulk::Compressor<'static>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    use chacha20poly1305::aead::AeadInPlace;
    fresh(scratch, zstd::zstd_safe::compress_bound(plaintext.len()));
    zstd.compress_to_buffer(plaintext, scratch).expect("zstd compression into a buffer of its bound cannot fail");
    let mut nonce = [0u8; 24];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
    fresh(out, BLOB_OVERHEAD + scratch.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(scratch);
    let tag = XChaCha20Poly1305::new(enc_key.into())
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad(kind, id), &mut out[24..])
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    out.extend_from_slice(&tag);
}

thread_local! {
    /// This thread's zstd decompression context, made once: making one per blob cost a
    /// restore about 3 % of its CPU time (zstd initialises its tables and buffers anew).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one zstd frame of at most `bound` bytes into `out` (replacing what it
/// held) with this thread's context.
fn decompress_into(compressed: &[u8], bound: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.clear();
    out.reserve(bound);
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(d) => d.decompress_to_buffer(compressed, out).map(|_| ()),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

/// Decrypts, decompresses and checks a stored blob against its id.
///
/// `raw_len` is the plaintext length from the pack header, used as the decompression bound.
/// Errors: [`RepoError::CorruptBlob`] naming the blob when any step fails.
pub fn open(
    keys: (&[u8; 32], &[u8; 32]),
    kind: BlobKind,
    id: &BlobId,
    sealed: &[u8],
    raw_len: u32,
) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::new();
    open_into(keys, kind, id, sealed, raw_len, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// [`open`] into `out` (replacing what it held), with `scratch` for the decrypted, still
/// compressed bytes. A restore reuses both buffers for the blobs of a pack: two new
/// buffers per blob, most of them over glibc's mmap threshold, were each mapped, faulted
/// in page by page and unmapped again (about 8 % of a restore's CPU time). On error `out`
/// holds nothing of use. Errors as [`open`].
pub fn open_into(
    keys: (&[u8; 32], &[u8; 32]),
    kind: BlobKind,
    id: &BlobId,
    sealed: &[u8],
    raw_len: u32,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), RepoError> {
    use chacha20poly1305::aead::AeadInPlace;
    let (id_key, enc_key) = keys;
    let bad = |why| RepoError::CorruptBlob(id.to_string(), why);
    if sealed.len() < BLOB_OVERHEAD {
        return Err(bad("authentication failed"));
    }
    let (nonce, ct) = sealed.split_at(24);
    scratch.clear();
    scratch.extend_from_slice(ct);
    XChaCha20Poly1305::new(enc_key.into())
        .decrypt_in_place(XNonce::from_slice(nonce), &aad(kind, id), scratch)
        .map_err(|_| bad("authentication failed"))?;
    decompress_into(scratch, raw_len as usize, out).map_err(|_| bad("zstd failed"))?;
    if out.len() != raw_len as usize || blob_id(id_key, out) != *id {
        return Err(bad("content does not match its id"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let (ik, ek) = ([1u8; 32], [2u8; 32]);
        let data = b"some file content, some file content".repeat(100);
        let id = blob_id(&ik, &data);
        let s = seal(&ek, BlobKind::Data, &id, &data, &mut compressor(3));
        assert!(s.len() < data.len(), "compressible data shrinks");
        assert_eq!(open((&ik, &ek), BlobKind::Data, &id, &s, data.len() as u32).unwrap(), data);
        let mut t = s.clone();
        t[30] ^= 1;
        assert!(open((&ik, &ek), BlobKind::Data, &id, &t, data.len() as u32).is_err());
        assert!(open((&ik, &ek), BlobKind::Tree, &id, &s, data.len() as u32).is_err());
        assert!(open((&ik, &[3; 32]), BlobKind::Data, &id, &s, data.len() as u32).is_err());
        assert!(open((&ik, &ek), BlobKind::Data, &id, &s[..10], 5).is_err());
        // the id is keyed: another id-key gives another id
        assert_ne!(blob_id(&[9; 32], &data), id);
    }

    #[test]
    fn sealing_into_reused_buffers_gives_blobs_that_open() {
        let (ik, ek) = ([1u8; 32], [2u8; 32]);
        let (mut z, mut scratch, mut out) = (compressor(3), Vec::new(), Vec::new());
        // A large compressible blob, then a small random one into the same buffers: the
        // second must not carry bytes of the first.
        let big = b"0123456789abcdef".repeat(100_000);
        let mut x = 7u64;
        let small: Vec<u8> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 33) as u8
            })
            .collect();
        for data in [&big, &small] {
            let id = blob_id(&ik, data);
            seal_into(&ek, BlobKind::Tree, &id, data, &mut z, &mut scratch, &mut out);
            assert_eq!(open((&ik, &ek), BlobKind::Tree, &id, &out, data.len() as u32).unwrap(), *data);
            assert!(open((&ik, &ek), BlobKind::Data, &id, &out, data.len() as u32).is_err(), "kind is bound");
        }
        assert!(out.len() > small.len(), "random bytes do not shrink: {} of {}", out.len(), small.len());
    }
}
