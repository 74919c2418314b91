//! The head (protocol.md §5.8): everything a client needs, besides its key, to find and
//! read its backups from a new machine: its snapshots, the index, where each pack is, and
//! its contracts as client. After every change the daemon seals a new head (zstd, then
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

/// Associated data of the sealed head.
const HEAD_AAD: &[u8] = b"peer/head/v1";
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
    /// Every pack still needed, with its holders.
    pub packs: Vec<(PackId, PackRecord)>,
    /// The index: where each blob is.
    pub index: Vec<(BlobId, IndexEntry)>,
    /// Live contracts, both roles: as client (where our packs are) and as provider (whose
    /// clients a recovered peer must tell that their packs here are gone).
    pub contracts: Vec<(ContractId, ContractRecord)>,
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
pub fn collect(state: &State, seq: u64, time: u64) -> Result<HeadDoc, StateError> {
    Ok(HeadDoc {
        seq,
        time,
        offered: state.offered()?,
        snapshots: state.snapshots()?,
        packs: state.packs()?.into_iter().filter(|(_, r)| !r.garbage).collect(),
        index: state.blobs()?,
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
    Ok(id.sign(DOMAIN_HEAD, to_cbor(&HeadEnvelope { seq: doc.seq, sealed })))
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
/// match the envelope's.
pub fn open(id: &Identity, signed: &Signed) -> Result<HeadDoc, HeadError> {
    envelope_seq(signed, &id.peer_id())?;
    let env: HeadEnvelope = from_cbor("head envelope", &signed.body).map_err(|e| HeadError::Foreign(e.to_string()))?;
    let packed = blob::decrypt(&id.enc_key, HEAD_AAD, &env.sealed)
        .ok_or_else(|| HeadError::Corrupt("it does not open with this key".into()))?;
    let plain = zstd::bulk::decompress(&packed, MAX_HEAD_PLAIN).map_err(|e| HeadError::Corrupt(e.to_string()))?;
    let doc: HeadDoc = from_cbor("head", &plain).map_err(|e| HeadError::Corrupt(e.to_string()))?;
    if doc.seq != env.seq {
        return Err(HeadError::Corrupt("the sealed sequence number differs from the envelope's".into()));
    }
    Ok(doc)
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
        let back = open(&me, &s).unwrap();
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
}
