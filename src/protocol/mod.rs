//! Wire messages, protocol ids and size limits: the code side of protocol.md, in its order.
//!
//! Encoding (protocol.md §2.1): CBOR (RFC 8949) as produced by serde + ciborium: a struct is
//! a map with text keys in field order; an enum variant is a one-entry map `{name: fields}`;
//! ids and byte payloads are byte strings. Every signed body is carried as its exact bytes
//! inside a [`Signed`] envelope (protocol.md §2.2).

pub mod codec;
pub mod fuzz;
pub mod shared;

use crate::id::{ContractId, PackId, ProposalId, sha256};
use crate::identity::{Identity, SignatureError, Signed, peer_id_of};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

/// Kademlia protocol id (protocol.md §1): our own DHT, not the IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/peer/kad/1.0.0");
/// identify protocol id.
pub const IDENTIFY_PROTOCOL: &str = "/peer/id/1.0.0";
/// request-response protocol for contracts (§4).
pub const CONTRACT_PROTOCOL: StreamProtocol = StreamProtocol::new("/peer/contract/2.0.0");
/// request-response protocol for pack transfer (§5).
pub const DATA_PROTOCOL: StreamProtocol = StreamProtocol::new("/peer/data/2.0.0");
/// Prefix of the gossipsub topics that carry proposals (§1.6, §4.1): a shard's topic is
/// `peer/proposals/2/<bits>/<prefix>` (`net::shard::Shard::topic`).
pub const PROPOSAL_TOPIC_PREFIX: &str = "peer/proposals/2";

/// Signature domain of a proposal body.
pub const DOMAIN_PROPOSAL: &str = "peer/proposal/v1";
/// Signature domain of an acceptance body.
pub const DOMAIN_ACCEPTANCE: &str = "peer/acceptance/v1";
/// Signature domain of the client's countersignature (over the acceptance body).
pub const DOMAIN_CONTRACT: &str = "peer/contract/v1";
/// Signature domain of a cancellation.
pub const DOMAIN_CANCEL: &str = "peer/cancel/v1";
/// Signature domain of a head envelope (protocol.md §5.8).
pub const DOMAIN_HEAD: &str = "peer/head/v1";
/// Signature domain of a head pointer, the value of a head record in Kademlia.
pub const DOMAIN_HEAD_RECORD: &str = "peer/head-record/v1";
/// Prefix of a head record's Kademlia key; the client's PeerId bytes follow.
pub const HEAD_RECORD_PREFIX: &[u8] = b"/peer/head/";
/// Most holders a head pointer names.
pub const MAX_HEAD_HOLDERS: usize = 64;
/// Largest sealed head, bytes (it travels in one data message).
pub const MAX_HEAD: usize = crate::repo::pack::MAX_PACK_SIZE;
/// Signature domain of a deletion request.
pub const DOMAIN_DELETE: &str = "peer/delete/v1";
/// Most packs one deletion request names.
pub const MAX_DELETE_PACKS: usize = 1024;
/// Signature domain of a renewal (signed by both parties over the same body).
pub const DOMAIN_RENEWAL: &str = "peer/renewal/v1";
/// Signing domain of a provider's [`AuditAnswer`] (protocol.md §5.10).
pub const DOMAIN_AUDIT_ANSWER: &str = "peer/audit-answer/v1";
/// Gossipsub topic of [`Evidence`] of default (protocol.md §5.10).
pub const EVIDENCE_TOPIC: &str = "peer/evidence/1";

/// Largest gossip message, bytes (gossipsub `max_transmit_size`, protocol.md §6).
pub const MAX_GOSSIP: usize = 64 * 1024;
/// Largest contract request, bytes.
pub const MAX_CONTRACT_REQUEST: u64 = 64 * 1024;
/// Largest contract response, bytes.
pub const MAX_CONTRACT_RESPONSE: u64 = 4 * 1024;
/// Largest data request or response, bytes: one pack plus 64 KiB of framing.
pub const MAX_DATA_MESSAGE: u64 = crate::repo::pack::MAX_PACK_SIZE as u64 + 64 * 1024;
/// Most listen addresses a proposal may carry.
pub const MAX_PROPOSAL_ADDRS: usize = 16;
/// Longest a proposal may stay valid, seconds after it is made.
pub const MAX_PROPOSAL_TTL: u64 = 600;

/// Errors validating a message: each names the rule broken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// CBOR did not decode into the expected message.
    #[error("malformed {0}: {1}")]
    Malformed(&'static str, String),
    /// A signature failed.
    #[error("bad signature on {0}: {1}")]
    Signature(&'static str, SignatureError),
    /// Past its expiry time.
    #[error("{0} expired")]
    Expired(&'static str),
    /// A field is out of its allowed range.
    #[error("{0}")]
    Invalid(String),
}

/// Encodes a message as CBOR.
pub fn to_cbor<T: Serialize>(m: &T) -> Vec<u8> {
    let mut v = Vec::new();
    ciborium::into_writer(m, &mut v).expect("CBOR encoding into a Vec cannot fail");
    v
}

/// Decodes a message from CBOR; `what` names it in the error.
///
/// Decoded in place from the received buffer (cbor4ii borrows from the slice), so a byte
/// string such as a 16 MiB pack is copied once into a buffer of its exact size. ciborium,
/// which encodes, reads byte strings 4 KiB at a time into a growing buffer, so that a pack
/// in flight took up to twice its size again. Both read and write RFC 8949 CBOR; the
/// golden vectors (protocol.md Appendix B) are decoded by this function in the tests.
pub fn from_cbor<T: for<'de> Deserialize<'de>>(what: &'static str, b: &[u8]) -> Result<T, MessageError> {
    cbor4ii::serde::from_slice(b).map_err(|e| MessageError::Malformed(what, e.to_string()))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A client's request for storage (protocol.md §4.1), signed by the client under
/// [`DOMAIN_PROPOSAL`] and published on `PROPOSAL_TOPIC`. The signer is the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Bytes wanted from each provider that accepts.
    pub bytes: u64,
    /// Contract length wanted, seconds.
    pub duration_secs: u64,
    /// Bytes the client offers to others.
    pub offered: u64,
    /// Bytes of its offer not yet granted to anyone.
    pub free: u64,
    /// Multiaddrs where providers can reach the client (at most [`MAX_PROPOSAL_ADDRS`]).
    pub addrs: Vec<String>,
    /// Time after which the proposal is void, seconds since the Unix epoch.
    pub expires: u64,
    /// Random number making each proposal unique.
    pub nonce: u64,
}

/// A proposal checked for signature, expiry and ranges.
#[derive(Clone, Debug)]
pub struct VerifiedProposal {
    /// Id: SHA-256 of the signed body.
    pub id: ProposalId,
    /// The client (signer).
    pub client: PeerId,
    /// The decoded body.
    pub proposal: Proposal,
    /// The signed envelope, as received.
    pub signed: Signed,
}

impl Proposal {
    /// Signs the proposal as `client`.
    pub fn sign(&self, client: &Identity) -> Signed {
        client.sign(DOMAIN_PROPOSAL, to_cbor(self))
    }
}

/// Checks a signed proposal received at time `now` (seconds).
pub fn verify_proposal(signed: &Signed, now: u64) -> Result<VerifiedProposal, MessageError> {
    let client = signed.verify(DOMAIN_PROPOSAL).map_err(|e| MessageError::Signature("proposal", e))?;
    let proposal: Proposal = from_cbor("proposal", &signed.body)?;
    if proposal.expires < now {
        return Err(MessageError::Expired("proposal"));
    }
    if proposal.expires > now + MAX_PROPOSAL_TTL {
        return Err(MessageError::Invalid("proposal expiry is too far in the future".into()));
    }
    if proposal.addrs.len() > MAX_PROPOSAL_ADDRS {
        return Err(MessageError::Invalid("proposal lists too many addresses".into()));
    }
    Ok(VerifiedProposal { id: ProposalId(sha256(&signed.body)), client, proposal, signed: signed.clone() })
}

/// A provider's acceptance of a proposal (protocol.md §4.2), signed by the provider under
/// [`DOMAIN_ACCEPTANCE`] and sent to the client in [`ContractRequest::Accept`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptance {
    /// The provider's PeerId (multihash bytes); must match the signer, and makes every
    /// provider's acceptance of one proposal, and so every contract id, distinct.
    #[serde(with = "serde_bytes")]
    pub provider: Vec<u8>,
    /// Multiaddrs where the client can reach the provider (at most [`MAX_PROPOSAL_ADDRS`]).
    pub addrs: Vec<String>,
    /// The client's signed proposal, exactly as received.
    pub proposal: Signed,
    /// Bytes granted (at most the proposal's `bytes`).
    pub bytes: u64,
    /// When the contract ends, seconds since the Unix epoch.
    pub expires: u64,
}

/// A contract (protocol.md §4.3): the provider-signed acceptance and the client's
/// countersignature over the same acceptance body under [`DOMAIN_CONTRACT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    /// The provider's signed acceptance (which embeds the client's signed proposal).
    pub acceptance: Signed,
    /// The client's 64-byte signature over the acceptance body.
    #[serde(with = "serde_bytes")]
    pub client_sig: Vec<u8>,
}

/// A contract with all signatures checked and its terms decoded.
#[derive(Clone, Debug)]
pub struct ContractTerms {
    /// SHA-256 of the acceptance body.
    pub id: ContractId,
    /// The client.
    pub client: PeerId,
    /// The provider.
    pub provider: PeerId,
    /// Bytes the provider stores for the client at most.
    pub bytes: u64,
    /// End, seconds since the Unix epoch.
    pub expires: u64,
    /// The proposal it answers.
    pub proposal: Proposal,
}

/// Checks an acceptance's provider signature, the embedded proposal's signature, and that
/// it grants no more than was asked. Expiry of the proposal is not checked here.
pub fn verify_acceptance(signed: &Signed) -> Result<(PeerId, Acceptance, VerifiedProposal), MessageError> {
    let provider = signed.verify(DOMAIN_ACCEPTANCE).map_err(|e| MessageError::Signature("acceptance", e))?;
    let a: Acceptance = from_cbor("acceptance", &signed.body)?;
    if a.addrs.len() > MAX_PROPOSAL_ADDRS {
        return Err(MessageError::Invalid("acceptance lists too many addresses".into()));
    }
    if a.provider != provider.to_bytes() {
        return Err(MessageError::Invalid("acceptance names another provider than its signer".into()));
    }
    let client = a.proposal.verify(DOMAIN_PROPOSAL).map_err(|e| MessageError::Signature("proposal", e))?;
    let proposal: Proposal = from_cbor("proposal", &a.proposal.body)?;
    if a.bytes == 0 || a.bytes > proposal.bytes {
        return Err(MessageError::Invalid(format!(
            "acceptance grants {} bytes of the {} proposed",
            a.bytes, proposal.bytes
        )));
    }
    if provider == client {
        return Err(MessageError::Invalid("a peer cannot contract with itself".into()));
    }
    let vp =
        VerifiedProposal { id: ProposalId(sha256(&a.proposal.body)), client, proposal, signed: a.proposal.clone() };
    Ok((provider, a, vp))
}

impl Contract {
    /// Checks every signature and returns the terms.
    pub fn verify(&self) -> Result<ContractTerms, MessageError> {
        let (provider, a, vp) = verify_acceptance(&self.acceptance)?;
        let client_key = a.proposal.key;
        crate::identity::verify_detached(&client_key, DOMAIN_CONTRACT, &self.acceptance.body, &self.client_sig)
            .map_err(|e| MessageError::Signature("contract", e))?;
        let client = peer_id_of(&client_key).map_err(|e| MessageError::Signature("contract", e))?;
        Ok(ContractTerms {
            id: ContractId(sha256(&self.acceptance.body)),
            client,
            provider,
            bytes: a.bytes,
            expires: a.expires,
            proposal: vp.proposal,
        })
    }
}

/// A provider's answer to an audit challenge, signed by the provider under
/// [`DOMAIN_AUDIT_ANSWER`] (protocol.md §5.10): a statement anyone can check against the
/// pack id alone. A wrong one is portable evidence of default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnswer {
    /// The client the pack is held for (PeerId bytes).
    #[serde(with = "serde_bytes")]
    pub client: Vec<u8>,
    /// The pack challenged.
    pub pack: PackId,
    /// The pack's length as held, bytes.
    pub size: u64,
    /// The leaf challenged.
    pub leaf: u32,
    /// `SHA-256(0x00 ‖ leaf bytes)` of the leaf served (§3.3).
    #[serde(with = "serde_bytes")]
    pub leaf_hash: Vec<u8>,
    /// Sibling hashes from the leaf up, 32 bytes each, at most 32.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    /// When it was answered, Unix seconds.
    pub time: u64,
}

impl AuditAnswer {
    /// Whether the answer proves leaf `leaf` of `pack` for a pack of `size` bytes.
    pub fn holds(&self) -> bool {
        let Ok(leaf) = <[u8; 32]>::try_from(self.leaf_hash.as_slice()) else { return false };
        if !self.path.len().is_multiple_of(32) || self.path.len() > 32 * 32 {
            return false;
        }
        let path: Vec<[u8; 32]> = self.path.chunks(32).filter_map(|c| <[u8; 32]>::try_from(c).ok()).collect();
        crate::repo::merkle::verify_hash(&self.pack, self.size, self.leaf as usize, &leaf, &path)
    }
}

/// Portable evidence that a provider defaulted (protocol.md §5.10): the contract signed by
/// both parties, and an [`AuditAnswer`] the provider signed for the client that does not
/// hold. Shared on [`EVIDENCE_TOPIC`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The contract between the client and the provider.
    pub contract: Contract,
    /// The provider's signed wrong answer.
    pub answer: Signed,
}

/// Checks evidence: a valid contract, an answer signed by its provider for its client,
/// and a Merkle check that fails. Returns (provider, client). Errors say why it is not
/// evidence (a correct answer is not).
pub fn verify_evidence(e: &Evidence) -> Result<(PeerId, PeerId), MessageError> {
    let terms = e.contract.verify()?;
    let signer = e.answer.verify(DOMAIN_AUDIT_ANSWER).map_err(|err| MessageError::Signature("audit answer", err))?;
    if signer != terms.provider {
        return Err(MessageError::Invalid("the answer is not signed by the contract's provider".into()));
    }
    let a: AuditAnswer = from_cbor("audit answer", &e.answer.body)?;
    if PeerId::from_bytes(&a.client).ok() != Some(terms.client) {
        return Err(MessageError::Invalid("the answer is not for the contract's client".into()));
    }
    if a.holds() {
        return Err(MessageError::Invalid("the answer is correct: no evidence".into()));
    }
    Ok((terms.provider, terms.client))
}

/// Requests on [`CONTRACT_PROTOCOL`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContractRequest {
    /// "I accept your proposal": a signed [`Acceptance`] (provider to client).
    Accept(Signed),
    /// "This contract ends now": a signed [`Cancellation`] (either party to the other).
    Cancel(Signed),
    /// "Extend this contract": a [`Renewal`] signed by the client (client to provider,
    /// protocol.md §4.7). The provider answers [`ContractResponse::Renewed`] or declines.
    Renew(Signed),
}

/// A contract's new expiry (protocol.md §4.7), signed by the client under
/// [`DOMAIN_RENEWAL`]; the provider's countersignature over the same body completes it.
/// Bytes and parties stay those of the contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// The contract.
    pub contract: ContractId,
    /// New end, seconds since the Unix epoch; later than the current one.
    pub expires: u64,
}

/// The end of a contract before its expiry (protocol.md §4.5), signed by either party under
/// [`DOMAIN_CANCEL`]. The receiver ends the contract and reclaims the space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    /// The contract.
    pub contract: ContractId,
    /// Why, for the other side's status (at most [`MAX_REASON`] bytes).
    pub reason: String,
}

/// Longest cancellation reason, bytes.
pub const MAX_REASON: usize = 256;

/// Responses on [`CONTRACT_PROTOCOL`], client to provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContractResponse {
    /// The client's countersignature over the acceptance body: the contract now exists.
    Countersigned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The client does not take this acceptance (enough providers already, unknown
    /// proposal…), or a cancellation was refused (unknown contract, not a party).
    Declined(String),
    /// The cancellation was applied (or the contract had ended already).
    Cancelled,
    /// The provider's 64-byte signature over the renewal body under [`DOMAIN_RENEWAL`]:
    /// the contract now runs to the renewal's expiry.
    Renewed(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Requests on [`DATA_PROTOCOL`]: packs and their audits go client to provider; claims
/// (protocol.md §4.6) go provider to client, the provider placing, auditing and releasing
/// the reciprocal space its client owes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataRequest {
    /// Store a pack under a contract. Idempotent: storing a pack held already succeeds.
    Store {
        /// The contract whose bytes it uses.
        contract: ContractId,
        /// The pack id (Merkle root); the provider checks the bytes against it.
        pack: PackId,
        /// The whole pack, at most [`crate::repo::pack::MAX_PACK_SIZE`] bytes (a CBOR byte
        /// string; shared, not copied, by the requests that send one pack to its holders,
        /// and decoded as a slice of the received message, [`shared`]).
        #[serde(deserialize_with = "shared::bytes")]
        data: bytes::Bytes,
    },
    /// Send back a pack the requester stored.
    Fetch {
        /// The pack id.
        pack: PackId,
    },
    /// Prove possession of a pack the requester stored: send leaf `leaf` (64 KiB leaves,
    /// protocol.md §3.3) and its Merkle path (protocol.md §5.4).
    Audit {
        /// The pack id.
        pack: PackId,
        /// Leaf index, from 0.
        leaf: u32,
    },
    /// Hold claim block `index` for the requester (exactly
    /// [`crate::claims::CLAIM_BLOCK`] bytes). Accepted while the blocks `0..=index` fit in
    /// what the receiver owes the requester under their live contracts.
    StoreClaim {
        /// Block index, from 0.
        index: u32,
        /// The block.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Prove possession of a claim block: send [`crate::claims::SAMPLE`] bytes of block
    /// `index` from byte `offset`.
    AuditClaim {
        /// Block index.
        index: u32,
        /// Byte offset in the block, at most `CLAIM_BLOCK − SAMPLE`.
        offset: u64,
    },
    /// Delete the requester's claim blocks from index `keep` on: its own packs now use
    /// that space.
    ReleaseClaim {
        /// Blocks `0..keep` stay.
        keep: u32,
    },
    /// Keep the requester's latest head: a [`HeadEnvelope`] signed by the requester under
    /// [`DOMAIN_HEAD`] (protocol.md §5.8). Refused when its `seq` is lower than the one held.
    PutHead(Signed),
    /// Send back the requester's head, if held: answered [`DataResponse::Head`].
    GetHead,
    /// The requester lost the claim blocks this provider placed with it (a disk lost and
    /// recovered from the phrase): place them again (protocol.md §4.6). At most once per
    /// [`CLAIM_RESET_SECS`] per client.
    ClaimsLost,
    /// Delete packs the requester no longer needs (`peer prune`): a [`Deletion`] signed by
    /// the requester under [`DOMAIN_DELETE`] (protocol.md §5.6). The provider keeps it as
    /// proof that the client asked.
    Delete(Signed),
    /// Lock packs held for the requester until `until` (protocol.md §5.9): none of them is
    /// deleted before, whatever a later request says. Needs a live contract; `until` at
    /// most [`MAX_LOCK_SECS`] from now; locks only grow. Answered [`DataResponse::Locked`].
    Lock {
        /// Packs (or erasure shards) held for the requester, at most [`MAX_DELETE_PACKS`].
        packs: Vec<PackId>,
        /// Lock end, Unix seconds.
        until: u64,
    },
    /// Send back every head held for the requester: the latest and the locked earlier
    /// ones (protocol.md §5.9). Answered [`DataResponse::Heads`].
    GetHeads,
    /// [`DataRequest::Audit`] answered with a signed statement (protocol.md §5.10):
    /// [`DataResponse::SignedProof`].
    AuditSigned {
        /// The pack id.
        pack: PackId,
        /// Leaf index, from 0.
        leaf: u32,
    },
}

/// Shortest time between two claim resets of one client, seconds (7 days).
pub const CLAIM_RESET_SECS: u64 = 7 * 86400;

/// A client's head as its providers keep it (protocol.md §5.8): the sequence number in
/// clear, so a provider can refuse a rollback, and the head document sealed with the
/// client's enc-key (XChaCha20-Poly1305, AAD `peer/head/v1`) after zstd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadEnvelope {
    /// Increases with every head the client publishes.
    pub seq: u64,
    /// Nonce ‖ ciphertext ‖ tag, at most [`MAX_HEAD`] bytes.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// Retention lock (protocol.md §5.9): until this Unix second a holder keeps this head
    /// even after a newer one replaces it. 0 (absent) = no lock.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lock_until: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// Longest retention lock a provider accepts, seconds from now (protocol.md §5.9).
pub const MAX_LOCK_SECS: u64 = 400 * 86400;
/// Locked earlier heads a provider keeps per client at most (protocol.md §5.9).
pub const MAX_KEPT_HEADS: usize = 64;

/// Where a client's latest head is (protocol.md §5.8): the value of its Kademlia record
/// under [`HEAD_RECORD_PREFIX`] ‖ PeerId, signed by the client under [`DOMAIN_HEAD_RECORD`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadPointer {
    /// The head's sequence number.
    pub seq: u64,
    /// PeerIds (bytes) of the providers that acknowledged it, at most [`MAX_HEAD_HOLDERS`].
    pub holders: Vec<serde_bytes::ByteBuf>,
}

/// The Kademlia key of `client`'s head record.
pub fn head_record_key(client: &PeerId) -> Vec<u8> {
    [HEAD_RECORD_PREFIX, &client.to_bytes()].concat()
}

/// Checks a head record: the key names a PeerId, the value is a [`HeadPointer`] signed by
/// that peer, with at most [`MAX_HEAD_HOLDERS`] holders. Returns the client and the pointer.
pub fn verify_head_record(key: &[u8], value: &[u8]) -> Result<(PeerId, HeadPointer), MessageError> {
    let peer = key
        .strip_prefix(HEAD_RECORD_PREFIX)
        .and_then(|b| PeerId::from_bytes(b).ok())
        .ok_or_else(|| MessageError::Invalid("not a head record key".into()))?;
    let signed: Signed = from_cbor("head record", value)?;
    let signer = signed.verify(DOMAIN_HEAD_RECORD).map_err(|e| MessageError::Signature("head record", e))?;
    if signer != peer {
        return Err(MessageError::Invalid("head record signed by another peer than its key names".into()));
    }
    let p: HeadPointer = from_cbor("head pointer", &signed.body)?;
    if p.holders.len() > MAX_HEAD_HOLDERS {
        return Err(MessageError::Invalid("head record names too many holders".into()));
    }
    Ok((peer, p))
}

/// Packs a client asks its holder to delete (protocol.md §5.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// The packs, at most [`MAX_DELETE_PACKS`].
    pub packs: Vec<PackId>,
    /// When the client asked, seconds since the Unix epoch.
    pub time: u64,
}

/// Why a data request failed (protocol.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataErrorCode {
    /// No live contract between the requester and this provider under that id.
    NoContract,
    /// The pack would exceed the contract's bytes, or this disk is full.
    NoRoom,
    /// The bytes do not hash to the pack id, or exceed [`crate::repo::pack::MAX_PACK_SIZE`].
    BadPack,
    /// This provider holds no such pack (or claim block) for the requester.
    NotFound,
    /// A local failure at the provider (I/O); retry elsewhere.
    Internal,
    /// The provider is serving too many requests; retry after a pause.
    Busy,
    /// A well-formed request that policy refuses (a rolled-back head, a claim reset too soon).
    Refused,
}

/// Responses on [`DATA_PROTOCOL`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataResponse {
    /// The pack or claim block is on disk (written and synced).
    Stored,
    /// Answer to [`DataRequest::AuditClaim`]: the sampled bytes.
    Sample(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer to [`DataRequest::ReleaseClaim`]: the blocks are deleted.
    Released,
    /// Answer to [`DataRequest::GetHead`]: the signed [`HeadEnvelope`] held.
    Head(Signed),
    /// Answer to [`DataRequest::Delete`]: the named packs held are deleted (packs not
    /// held are ignored).
    Deleted {
        /// Bytes freed.
        bytes: u64,
        /// Named packs kept because a retention lock holds them (protocol.md §5.9).
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        locked: u32,
    },
    /// Answer to [`DataRequest::Lock`]: how many of the named packs are held and now
    /// locked until at least the asked time.
    Locked {
        /// Packs locked.
        packs: u32,
    },
    /// Answer to [`DataRequest::GetHeads`]: the signed [`HeadEnvelope`]s held, newest first.
    Heads(Vec<Signed>),
    /// Answer to [`DataRequest::AuditSigned`]: the signed [`AuditAnswer`] and the leaf's
    /// bytes (whose hash it states).
    SignedProof {
        /// [`AuditAnswer`] signed under [`DOMAIN_AUDIT_ANSWER`].
        answer: Signed,
        /// The leaf, at most 64 KiB.
        #[serde(with = "serde_bytes")]
        leaf: Vec<u8>,
    },
    /// The requested pack (a CBOR byte string, decoded as a slice of the received message,
    /// [`shared`]).
    Pack(#[serde(deserialize_with = "shared::bytes")] bytes::Bytes),
    /// Answer to an audit: the leaf's bytes and the sibling hashes from the leaf up to the
    /// root, concatenated (32 bytes each, at most 32 of them).
    Proof {
        /// The leaf, at most 64 KiB.
        #[serde(with = "serde_bytes")]
        leaf: Vec<u8>,
        /// Sibling hashes, leaf level first, 32 bytes each.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// The request failed.
    Error {
        /// Machine-readable reason.
        code: DataErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

#[cfg(test)]
mod tests;
