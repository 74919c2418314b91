//! The head (protocol.md §5.8): everything a client needs, besides its key, to find and
//! read its backups from a new machine: its snapshots, where each pack is, which packs
//! hold the index (§3.8), and its contracts. The index itself is not in the head: it
//! lives in index packs, so the head grows with the number of packs and snapshots, not
//! with the number of blobs. After every change the daemon seals a new head (zstd, then
//! XChaCha20-Poly1305 under the enc-key), signs the envelope, stores it at every provider
//! it has a contract with, and publishes a signed pointer in Kademlia under its PeerId.
//! Each head carries a sequence number one above the last, so neither a provider nor the
//! DHT can hand back an older one unnoticed: providers refuse a lower `seq`, the DHT
//! keeps only newer pointers, and a recovering client takes the highest it can verify.

use crate::id::{BlobId, ContractId, PackId, SnapshotId};
use crate::identity::{Identity, Signed};
use crate::protocol::{DOMAIN_HEAD, HeadEnvelope, MAX_HEAD, from_cbor, to_cbor};
use crate::repo::blob;
use crate::repo::tree::Snapshot;
use crate::state::{ContractRecord, IndexEntry, PackRecord, State, StateError};
use serde::{Deserialize, Serialize};

/// Associated data of the sealed head (version 2: the index in index packs).
const HEAD_AAD: &[u8] = b"peer/head/v2";
/// Associated data of version-1 heads, which embedded the whole index; still opened.
const HEAD_AAD_V1: &[u8] = b"peer/head/v1";
/// Largest head document once decompressed, bytes.
pub const MAX_HEAD_PLAIN: usize = 512 << 20;

/// The head document (plaintext, CBOR).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadDoc {
    /// Sequence number, as in the envelope.
    pub seq: u64,
    /// When it was made, seconds since the Unix epoch.
    pub time: u64,
    /// Bytes the client offered to others.
    pub offered: u64,
    /// Snapshots, oldest first.
    pub snapshots: Vec<(SnapshotId, Snapshot)>,
    /// Every pack still needed, with its holders (index packs included).
    pub packs: Vec<(PackId, PackRecord)>,
    /// The index packs (§3.8), oldest first; each is also in `packs`.
    pub index: Vec<PackId>,
    /// Live contracts, both roles: as client (where our packs are) and as provider (whose
    /// clients a recovered peer must tell that their packs here are gone).
    pub contracts: Vec<(ContractId, ContractRecord)>,
}

/// A version-1 head document, which carried the whole index (protocol.md §5.8, "Earlier
/// versions"). Read only, so a head published before index packs still recovers.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct HeadDocV1 {
    seq: u64,
    time: u64,
    offered: u64,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    packs: Vec<(PackId, PackRecord)>,
    index: Vec<(BlobId, IndexEntry)>,
    contracts: Vec<(ContractId, ContractRecord)>,
}

/// An opened head: its document, and the index entries a version-1 head carried inline
/// (empty for current heads, whose index is in the packs `doc.index` names).
#[derive(Debug)]
pub struct Opened {
    /// The document.
    pub doc: HeadDoc,
    /// Index entries of a version-1 head.
    pub inline_index: Vec<(BlobId, IndexEntry)>,
}

/// Errors opening a head.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Not signed by the expected client, or not a head envelope.
    #[error("not a head of this peer: {0}")]
    Foreign(String),
    /// The seal does not open with our key, or the content does not decode.
    #[error("corrupt head: {0}")]
    Corrupt(String),
    /// Too large to travel in one message.
    #[error("the head is {0} bytes sealed, over the {MAX_HEAD}-byte limit (too many blobs for one head)")]
    TooLarge(usize),
    /// Local state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Builds the head document of `state` with sequence number `seq`.
/// Index packs not yet stored at holders (none when the state is sound) are left out.
pub fn collect(state: &State, seq: u64, time: u64) -> Result<HeadDoc, StateError> {
    let packs: Vec<(PackId, PackRecord)> = state.packs()?.into_iter().filter(|(_, r)| !r.garbage).collect();
    let live: std::collections::HashSet<PackId> = packs.iter().map(|(id, _)| *id).collect();
    Ok(HeadDoc {
        seq,
        time,
        offered: state.offered()?,
        snapshots: state.snapshots()?,
        index: state.index_packs()?.into_iter().map(|r| r.pack).filter(|p| live.contains(p)).collect(),
        packs,
        contracts: state.contracts()?.into_iter().filter(|(_, c)| c.is_live(time)).collect(),
    })
}

/// Seals and signs a head document.
pub fn seal(id: &Identity, doc: &HeadDoc) -> Result<Signed, HeadError> {
    let plain = to_cbor(doc);
    let packed = zstd::bulk::compress(&plain, 3).map_err(|e| HeadError::Corrupt(e.to_string()))?;
    let sealed = blob::encrypt(&id.enc_key, HEAD_AAD, &packed);
    if sealed.len() > MAX_HEAD {
        return Err(HeadError::TooLarge(sealed.len()));
    }
    // Held while any snapshot it lists is locked (§5.9).
    let lock_until = doc.snapshots.iter().map(|(_, s)| s.lock_until).max().unwrap_or(0);
    Ok(id.sign(DOMAIN_HEAD, to_cbor(&HeadEnvelope { seq: doc.seq, sealed, lock_until })))
}

/// A signed envelope's sequence number and lock end, checking the signature only.
pub fn envelope_info(signed: &Signed, client: &libp2p::PeerId) -> Result<(u64, u64), HeadError> {
    envelope_seq(signed, client)?;
    let env: HeadEnvelope = from_cbor("head envelope", &signed.body).map_err(|e| HeadError::Foreign(e.to_string()))?;
    Ok((env.seq, env.lock_until))
}

/// The sequence number of a signed envelope from `client`, checking the signature only.
pub fn envelope_seq(signed: &Signed, client: &libp2p::PeerId) -> Result<u64, HeadError> {
    match signed.verify(DOMAIN_HEAD) {
        Ok(p) if p == *client => {}
        Ok(p) => return Err(HeadError::Foreign(format!("signed by {p}"))),
        Err(e) => return Err(HeadError::Foreign(e.to_string())),
    }
    let env: HeadEnvelope = from_cbor("head envelope", &signed.body).map_err(|e| HeadError::Foreign(e.to_string()))?;
    Ok(env.seq)
}

/// Opens a head of ours: signature, seal, size and content; the document's `seq` must
/// match the envelope's. A version-1 head (§5.8) opens too, its inline index returned apart.
pub fn open(id: &Identity, signed: &Signed) -> Result<Opened, HeadError> {
    envelope_seq(signed, &id.peer_id())?;
    let env: HeadEnvelope = from_cbor("head envelope", &signed.body).map_err(|e| HeadError::Foreign(e.to_string()))?;
    let plain = |packed: Vec<u8>| {
        zstd::bulk::decompress(&packed, MAX_HEAD_PLAIN).map_err(|e| HeadError::Corrupt(e.to_string()))
    };
    let opened = if let Some(packed) = blob::decrypt(&id.enc_key, HEAD_AAD, &env.sealed) {
        let doc: HeadDoc = from_cbor("head", &plain(packed)?).map_err(|e| HeadError::Corrupt(e.to_string()))?;
        Opened { doc, inline_index: vec![] }
    } else if let Some(packed) = blob::decrypt(&id.enc_key, HEAD_AAD_V1, &env.sealed) {
        let d: HeadDocV1 = from_cbor("head", &plain(packed)?).map_err(|e| HeadError::Corrupt(e.to_string()))?;
        let doc = HeadDoc {
            seq: d.seq,
            time: d.time,
            offered: d.offered,
            snapshots: d.snapshots,
            packs: d.packs,
            index: vec![],
            contracts: d.contracts,
        };
        Opened { doc, inline_index: d.index }
    } else {
        return Err(HeadError::Corrupt("it does not open with this key".into()));
    };
    if opened.doc.seq != env.seq {
        return Err(HeadError::Corrupt("the sealed sequence number differs from the envelope's".into()));
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_forgeries() {
        let me = Identity::from_secret([3; 32]);
        let other = Identity::from_secret([4; 32]);
        let d = tempfile::tempdir().unwrap();
        let state = State::open(&d.path().join("s.redb")).unwrap();
        state.set_offered(1 << 30).unwrap();
        let doc = collect(&state, 7, 1_800_000_000).unwrap();
        let s = seal(&me, &doc).unwrap();
        assert_eq!(envelope_seq(&s, &me.peer_id()).unwrap(), 7);
        let back = open(&me, &s).unwrap().doc;
        assert_eq!((back.seq, back.offered), (7, 1 << 30));
        // someone else's head, or ours opened by someone else
        assert!(matches!(open(&other, &s), Err(HeadError::Foreign(_))));
        assert!(matches!(envelope_seq(&seal(&other, &doc).unwrap(), &me.peer_id()), Err(HeadError::Foreign(_))));
        // a provider that re-signs nothing but swaps the seq breaks the signature
        let mut env: HeadEnvelope = from_cbor("e", &s.body).unwrap();
        env.seq = 99;
        let forged = Signed { body: to_cbor(&env), ..s.clone() };
        assert!(open(&me, &forged).is_err());
        // a seal re-signed by us with another seq is caught by the inner seq
        let resigned = me.sign(DOMAIN_HEAD, to_cbor(&env));
        assert!(matches!(open(&me, &resigned), Err(HeadError::Corrupt(_))));
    }

    fn entry(pack: u8, i: u32) -> IndexEntry {
        IndexEntry { pack: PackId([pack; 32]), kind: blob::BlobKind::Data, offset: i, length: 1, raw_length: 1 }
    }

    fn blob_n(i: u32) -> BlobId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_le_bytes());
        b[4..].copy_from_slice(&[7; 28]);
        BlobId(b)
    }

    #[test]
    fn the_head_does_not_grow_with_the_index() {
        let me = Identity::from_secret([3; 32]);
        let d = tempfile::tempdir().unwrap();
        let state = State::open(&d.path().join("s.redb")).unwrap();
        let rec = PackRecord::copies(1, vec![], 1);
        state.commit_pack(&PackId([1; 32]), &rec, &[]).unwrap();
        state.commit_index_packs(&[(PackId([2; 32]), rec.clone(), vec![PackId([1; 32])])]).unwrap();
        let small = seal(&me, &collect(&state, 1, 5).unwrap()).unwrap().body.len();
        state.import_index((0..100_000).map(|i| (blob_n(i), entry(1, i)))).unwrap();
        let doc = collect(&state, 1, 5).unwrap();
        assert_eq!(doc.index, vec![PackId([2; 32])]);
        let big = seal(&me, &doc).unwrap().body.len();
        assert_eq!(small, big, "100,000 more blobs change nothing in the head");
    }

    #[test]
    fn a_version_1_head_still_opens_with_its_inline_index() {
        let me = Identity::from_secret([3; 32]);
        let doc = HeadDocV1 {
            seq: 4,
            time: 9,
            offered: 10,
            snapshots: vec![],
            packs: vec![],
            index: vec![(blob_n(1), entry(1, 0))],
            contracts: vec![],
        };
        let packed = zstd::bulk::compress(&to_cbor(&doc), 3).unwrap();
        let sealed = blob::encrypt(&me.enc_key, HEAD_AAD_V1, &packed);
        let s = me.sign(DOMAIN_HEAD, to_cbor(&HeadEnvelope { seq: 4, sealed, lock_until: 0 }));
        let o = open(&me, &s).unwrap();
        assert_eq!((o.doc.seq, o.doc.offered, o.doc.index.len()), (4, 10, 0));
        assert_eq!(o.inline_index, vec![(blob_n(1), entry(1, 0))]);
    }
}
