//! Index documents and index packs (protocol.md §3.8): where every blob is, stored in the
//! network like any other data, so that the head (§5.8) lists only the index packs and
//! stays small whatever the number of blobs.
//!
//! As restic writes index files, each backup writes the index of the packs it added (and
//! of any earlier pack no index pack covers yet) as `Index` blobs, at most
//! [`MAX_DOC_ENTRIES`] blob entries each, sealed into index packs of their own. A recovering
//! client fetches the index packs its head names and reads them back with [`read`].

use super::RepoError;
use super::blob::{BlobKind, blob_id};
use super::pack::{self, PackEntry, PackWriter, SealedPack};
use crate::id::{BlobId, PackId};
use serde::{Deserialize, Serialize};

/// Most blob entries in one index document: about 2.3 MB of CBOR, well under a chunk.
pub const MAX_DOC_ENTRIES: usize = 40_000;

/// One blob of a pack, as the index lists it: a CBOR array
/// `[id, kind, offset, length, raw_length]` (§3.8), the fields of a [`PackEntry`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlob(pub BlobId, pub BlobKind, pub u32, pub u32, pub u32);

impl From<&PackEntry> for IndexBlob {
    fn from(e: &PackEntry) -> Self {
        IndexBlob(e.id, e.kind, e.offset, e.length, e.raw_length)
    }
}

impl From<&IndexBlob> for PackEntry {
    fn from(b: &IndexBlob) -> Self {
        PackEntry { id: b.0, kind: b.1, offset: b.2, length: b.3, raw_length: b.4 }
    }
}

/// The blobs of one data pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// The data pack's id.
    pub id: PackId,
    /// Its blobs, in pack order.
    pub blobs: Vec<IndexBlob>,
}

/// An index document (CBOR map `{version: 1, packs: [IndexPack]}`), the plaintext of an
/// `Index` blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDoc {
    /// Format version, 1.
    pub version: u8,
    /// The packs it describes.
    pub packs: Vec<IndexPack>,
}

/// Seals the index of `packs` (data pack id, its blobs) into index packs: documents of at
/// most [`MAX_DOC_ENTRIES`] entries (a pack's entries may be split over two documents),
/// packs sealed once their estimate reaches `pack_size` bytes. Keys: (id-key, enc-key).
/// Returns each index pack with the data packs it lists entries of (a data pack whose
/// entries are split over two index packs is listed with both: only together do they
/// cover it, so a caller stores all of them or none).
pub fn write(
    keys: (&[u8; 32], &[u8; 32]),
    zstd_level: i32,
    pack_size: usize,
    packs: &[(PackId, Vec<PackEntry>)],
) -> Vec<(SealedPack, Vec<PackId>)> {
    let (id_key, enc_key) = keys;
    let mut w = Writer {
        id_key,
        writer: PackWriter::new(*enc_key, zstd_level, 0),
        pack_size,
        doc: IndexDoc { version: 1, packs: Vec::new() },
        entries: 0,
        covers: Vec::new(),
        out: Vec::new(),
    };
    for (id, blobs) in packs {
        for part in blobs.chunks(MAX_DOC_ENTRIES) {
            if w.entries + part.len() > MAX_DOC_ENTRIES {
                w.emit_doc();
            }
            w.doc.packs.push(IndexPack { id: *id, blobs: part.iter().map(IndexBlob::from).collect() });
            w.entries += part.len();
            if w.covers.last() != Some(id) {
                w.covers.push(*id);
            }
        }
        if blobs.is_empty() {
            w.doc.packs.push(IndexPack { id: *id, blobs: vec![] });
            w.covers.push(*id);
        }
    }
    w.emit_doc();
    w.seal();
    w.out
}

struct Writer<'a> {
    id_key: &'a [u8; 32],
    writer: PackWriter,
    pack_size: usize,
    doc: IndexDoc,
    entries: usize,
    /// Data packs with entries in the current index pack.
    covers: Vec<PackId>,
    out: Vec<(SealedPack, Vec<PackId>)>,
}

impl Writer<'_> {
    fn emit_doc(&mut self) {
        if self.doc.packs.is_empty() {
            return;
        }
        let plain = crate::protocol::to_cbor(&self.doc);
        self.writer.add(BlobKind::Index, blob_id(self.id_key, &plain), &plain);
        self.doc.packs.clear();
        self.entries = 0;
        if self.writer.sealed_len_estimate() >= self.pack_size {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if !self.writer.is_empty() {
            let covers = std::mem::take(&mut self.covers);
            self.out.push((self.writer.finish(), covers));
        }
    }
}

/// Reads an index pack: every blob must be an `Index` blob that opens and decodes.
/// Errors name the pack's problem ([`RepoError::CorruptPack`], [`RepoError::CorruptBlob`],
/// [`RepoError::BadDocument`]).
pub fn read(keys: (&[u8; 32], &[u8; 32]), bytes: &[u8]) -> Result<Vec<IndexPack>, RepoError> {
    let mut out = Vec::new();
    for e in pack::read_header(keys.1, bytes)? {
        if e.kind != BlobKind::Index {
            return Err(RepoError::CorruptPack(format!("blob {} of an index pack is not an index document", e.id)));
        }
        let plain = pack::read_blob(keys, bytes, &e)?;
        let doc: IndexDoc = ciborium::from_reader(&plain[..])
            .map_err(|err| RepoError::BadDocument("index document", err.to_string()))?;
        if doc.version != 1 {
            return Err(RepoError::BadDocument("index document", format!("unknown version {}", doc.version)));
        }
        out.extend(doc.packs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pack: u8, n: usize) -> (PackId, Vec<PackEntry>) {
        let blobs = (0..n)
            .map(|i| PackEntry {
                id: blob_id(&[pack; 32], &(i as u64).to_le_bytes()),
                kind: if i % 7 == 0 { BlobKind::Tree } else { BlobKind::Data },
                offset: i as u32 * 100,
                length: 100,
                raw_length: 90 + i as u32,
            })
            .collect();
        (PackId([pack; 32]), blobs)
    }

    #[test]
    fn round_trip_splits_documents_and_packs() {
        let keys = (&[1u8; 32], &[2u8; 32]);
        let packs = vec![entries(1, 3), entries(2, MAX_DOC_ENTRIES + 5), entries(3, 1)];
        let sealed = write(keys, 3, 1 << 20, &packs);
        assert!(sealed.len() >= 2, "{} index packs for {} entries over 1 MiB", sealed.len(), MAX_DOC_ENTRIES + 9);
        let mut back: Vec<IndexPack> = Vec::new();
        let mut covered: Vec<PackId> = sealed.iter().flat_map(|(_, c)| c.clone()).collect();
        covered.dedup();
        assert_eq!(covered, packs.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        for (p, _) in &sealed {
            let docs = pack::read_header(keys.1, &p.bytes).unwrap();
            assert!(docs.iter().all(|e| e.kind == BlobKind::Index && e.raw_length as usize <= 3 << 20));
            back.extend(read(keys, &p.bytes).unwrap());
        }
        // Parts of one pack come back in order; together they are the input.
        let mut joined: Vec<(PackId, Vec<PackEntry>)> = Vec::new();
        for p in back {
            match joined.last_mut() {
                Some((id, v)) if *id == p.id => v.extend(p.blobs.iter().map(PackEntry::from)),
                _ => joined.push((p.id, p.blobs.iter().map(PackEntry::from).collect())),
            }
        }
        assert_eq!(joined, packs);
    }

    #[test]
    fn refuses_data_packs_and_other_keys() {
        let keys = (&[1u8; 32], &[2u8; 32]);
        let sealed = write(keys, 3, 1 << 20, &[entries(1, 10)]);
        assert!(read((&[1; 32], &[9; 32]), &sealed[0].0.bytes).is_err());
        let mut w = PackWriter::new(*keys.1, 3, 0);
        w.add(BlobKind::Data, blob_id(keys.0, b"x"), b"x");
        let err = read(keys, &w.finish().bytes).unwrap_err().to_string();
        assert!(err.contains("not an index document"), "{err}");
        // A document that is not CBOR of an index is named as such.
        let mut w = PackWriter::new(*keys.1, 3, 0);
        w.add(BlobKind::Index, blob_id(keys.0, b"\x01"), b"\x01");
        let err = read(keys, &w.finish().bytes).unwrap_err().to_string();
        assert!(err.contains("index document"), "{err}");
    }
}
