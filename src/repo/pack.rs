//! Packs (protocol.md §3.3): blobs appended, then an encrypted header, then the header's
//! length as a 4-byte little-endian integer.
//!
//! ```text
//! blob_0 || blob_1 || ... || sealed_header || u32le(len(sealed_header))
//! sealed_header = nonce(24) || XChaCha20-Poly1305(enc-key, nonce, CBOR(PackHeader), aad = "peer/pack-header/v1")
//! ```
//! The header lists every blob (id, kind, offset, stored length, plaintext length), so the
//! index can be rebuilt from packs alone; a provider sees only opaque bytes.

use super::RepoError;
use super::blob::{self, BlobKind};
use super::merkle;
use crate::id::{BlobId, PackId};
use serde::{Deserialize, Serialize};

const HEADER_AAD: &[u8] = b"peer/pack-header/v1";

/// Largest pack a peer accepts, bytes (protocol.md §6): a 24 MiB target plus one 8 MiB
/// chunk's stored form and its header entry, rounded up.
pub const MAX_PACK_SIZE: usize = 34 << 20;

/// Most bytes one entry takes in the CBOR header (field names included; measured ~90).
pub const HEADER_ENTRY_MAX: usize = 112;

/// One blob's place in a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// The blob id.
    pub id: BlobId,
    /// What it holds.
    pub kind: BlobKind,
    /// Offset of the stored blob from the start of the pack, bytes.
    pub offset: u32,
    /// Length of the stored (compressed, encrypted) blob, bytes.
    pub length: u32,
    /// Length of the plaintext, bytes.
    pub raw_length: u32,
}

/// The header, CBOR-encoded before encryption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackHeader {
    /// Format version, 1.
    pub version: u8,
    /// The blobs in pack order.
    pub blobs: Vec<PackEntry>,
}

/// Builds packs in memory, one after the other (the compressor is kept between packs).
pub struct PackWriter {
    enc_key: [u8; 32],
    zstd: zstd::bulk::Compressor<'static>,
    capacity: usize,
    data: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A sealed pack, ready to upload.
pub struct SealedPack {
    /// Its id (Merkle root).
    pub id: PackId,
    /// The whole pack; one buffer shared by every request that sends it to a holder.
    pub bytes: bytes::Bytes,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    /// A new empty pack encrypted under `enc_key`, compressing blobs at zstd `level`;
    /// `capacity` (bytes) is reserved up front for each pack.
    pub fn new(enc_key: [u8; 32], level: i32, capacity: usize) -> Self {
        PackWriter {
            enc_key,
            zstd: blob::compressor(level),
            capacity,
            data: Vec::with_capacity(capacity),
            entries: Vec::new(),
        }
    }

    /// Compresses, encrypts and appends one blob.
    pub fn add(&mut self, kind: BlobKind, id: BlobId, plaintext: &[u8]) {
        let sealed = blob::seal(&self.enc_key, kind, &id, plaintext, &mut self.zstd);
        self.add_sealed(kind, id, &sealed, plaintext.len() as u32);
    }

    /// Appends an already sealed blob (see [`blob::seal`]).
    pub fn add_sealed(&mut self, kind: BlobKind, id: BlobId, sealed: &[u8], raw_length: u32) {
        self.entries.push(PackEntry {
            id,
            kind,
            offset: self.data.len() as u32,
            length: sealed.len() as u32,
            raw_length,
        });
        self.data.extend_from_slice(sealed);
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Upper bound of the sealed pack's size so far: blob data, header and trailer.
    pub fn sealed_len_estimate(&self) -> usize {
        self.data.len() + self.entries.len() * HEADER_ENTRY_MAX + 64
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the header and trailer, computes the pack id, and starts the next pack empty.
    pub fn finish(&mut self) -> SealedPack {
        let header = PackHeader { version: 1, blobs: std::mem::take(&mut self.entries) };
        let mut plain = Vec::new();
        ciborium::into_writer(&header, &mut plain).expect("CBOR encoding into a Vec cannot fail");
        let sealed = blob::encrypt(&self.enc_key, HEADER_AAD, &plain);
        let mut bytes = std::mem::replace(&mut self.data, Vec::with_capacity(self.capacity));
        bytes.extend_from_slice(&sealed);
        bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        SealedPack { id: merkle::root(&bytes), bytes: bytes.into(), entries: header.blobs }
    }
}

/// Decrypts and checks a pack's header: every entry must lie inside the blob area.
pub fn read_header(enc_key: &[u8; 32], pack: &[u8]) -> Result<Vec<PackEntry>, RepoError> {
    let bad = |m: &str| RepoError::CorruptPack(m.to_string());
    if pack.len() < 4 {
        return Err(bad("shorter than its trailer"));
    }
    let (rest, tail) = pack.split_at(pack.len() - 4);
    let hlen = u32::from_le_bytes(tail.try_into().expect("split at 4 bytes")) as usize;
    if hlen > rest.len() {
        return Err(bad("header length past the start of the pack"));
    }
    let (blobs, sealed) = rest.split_at(rest.len() - hlen);
    let plain = blob::decrypt(enc_key, HEADER_AAD, sealed).ok_or(bad("header fails authentication"))?;
    let h: PackHeader = ciborium::from_reader(&plain[..]).map_err(|e| bad(&format!("header: {e}")))?;
    if h.version != 1 {
        return Err(bad(&format!("unknown header version {}", h.version)));
    }
    for e in &h.blobs {
        if e.offset as u64 + e.length as u64 > blobs.len() as u64 {
            return Err(bad(&format!("blob {} lies outside the pack", e.id)));
        }
    }
    Ok(h.blobs)
}

/// Extracts and opens one blob of a pack whose header gave `entry`.
pub fn read_blob(keys: (&[u8; 32], &[u8; 32]), pack: &[u8], entry: &PackEntry) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::new();
    read_blob_into(keys, pack, entry, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// [`read_blob`] into `out`, with `scratch` for the decrypted bytes: both reused from blob
/// to blob (see [`blob::open_into`]).
pub fn read_blob_into(
    keys: (&[u8; 32], &[u8; 32]),
    pack: &[u8],
    entry: &PackEntry,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), RepoError> {
    let start = entry.offset as usize;
    let sealed = pack
        .get(start..start + entry.length as usize)
        .ok_or_else(|| RepoError::CorruptPack(format!("blob {} lies outside the pack", entry.id)))?;
    blob::open_into(keys, entry.kind, &entry.id, sealed, entry.raw_length, scratch, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::blob::blob_id;

    #[test]
    fn write_read_round_trip_and_corruption() {
        let (ik, ek) = ([4u8; 32], [5u8; 32]);
        let mut w = PackWriter::new(ek, 3, 0);
        let blobs: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 1000 * (i + 1)]).collect();
        for b in &blobs {
            w.add(BlobKind::Data, blob_id(&ik, b), b);
        }
        let estimate = w.sealed_len_estimate();
        let p = w.finish();
        assert!(p.bytes.len() <= estimate, "{} > {estimate}", p.bytes.len());
        assert_eq!(p.id, merkle::root(&p.bytes));
        let entries = read_header(&ek, &p.bytes).unwrap();
        assert_eq!(entries, p.entries);
        for (e, b) in entries.iter().zip(&blobs) {
            assert_eq!(&read_blob((&ik, &ek), &p.bytes, e).unwrap(), b);
        }
        // file names and sizes are not visible: the header is encrypted
        assert!(read_header(&[6; 32], &p.bytes).is_err());
        let mut t = p.bytes.to_vec();
        let n = t.len();
        t[n - 10] ^= 1;
        assert!(read_header(&ek, &t).is_err());
        assert!(read_header(&ek, &[1, 2]).is_err());
        assert!(read_header(&ek, &[0xff, 0xff, 0xff, 0xff]).is_err());
        let mut t = p.bytes.to_vec();
        t[3] ^= 1;
        assert!(read_blob((&ik, &ek), &t, &entries[0]).is_err());
    }
}
