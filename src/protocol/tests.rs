//! Codec round trips, signature failures, and golden hex vectors that pin the wire bytes
//! of every message (protocol.md §7). A change to any vector is a protocol change.

use super::*;
use crate::id::BlobId;

fn client() -> Identity {
    Identity::from_secret([1; 32])
}
fn provider() -> Identity {
    Identity::from_secret([2; 32])
}

fn proposal() -> Proposal {
    Proposal {
        bytes: 1 << 30,
        duration_secs: 86400,
        offered: 3 << 30,
        free: 3 << 30,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        expires: 1_800_000_000,
        nonce: 42,
    }
}

fn acceptance() -> Signed {
    let a = Acceptance {
        addrs: vec!["/ip4/127.0.0.1/tcp/4002".into()],
        provider: provider().peer_id().to_bytes(),
        proposal: proposal().sign(&client()),
        bytes: 1 << 30,
        expires: 1_800_086_400,
    };
    provider().sign(DOMAIN_ACCEPTANCE, to_cbor(&a))
}

fn contract() -> Contract {
    let acc = acceptance();
    let sig = client().sign_detached(DOMAIN_CONTRACT, &acc.body);
    Contract { acceptance: acc, client_sig: sig }
}

fn cancellation() -> Signed {
    let c = Cancellation { contract: ContractId([3; 32]), reason: "failed audits".into() };
    client().sign(DOMAIN_CANCEL, to_cbor(&c))
}

/// A provider's signed answer claiming a leaf of pack `0x04 × 32` (one leaf of 100
/// bytes) that is not the pack's: evidence against it.
fn wrong_answer() -> Signed {
    let a = AuditAnswer {
        client: client().peer_id().to_bytes(),
        pack: PackId([4; 32]),
        size: 100,
        leaf: 0,
        leaf_hash: crate::repo::merkle::leaf_hash(&[5; 100]).to_vec(),
        path: vec![],
        time: 1_800_000_000,
    };
    provider().sign(DOMAIN_AUDIT_ANSWER, to_cbor(&a))
}

fn locked_head_envelope() -> Signed {
    client().sign(DOMAIN_HEAD, to_cbor(&HeadEnvelope { seq: 4, sealed: vec![7; 8], lock_until: 1_800_000_000 }))
}

fn head_envelope() -> Signed {
    client().sign(DOMAIN_HEAD, to_cbor(&HeadEnvelope { seq: 3, sealed: vec![7; 8], lock_until: 0 }))
}

fn head_record() -> Signed {
    let p = HeadPointer { seq: 3, holders: vec![provider().peer_id().to_bytes().into()] };
    client().sign(DOMAIN_HEAD_RECORD, to_cbor(&p))
}

#[test]
fn head_records_are_checked() {
    let key = head_record_key(&client().peer_id());
    let good = to_cbor(&head_record());
    let (peer, p) = verify_head_record(&key, &good).unwrap();
    assert_eq!((peer, p.seq), (client().peer_id(), 3));
    // under another peer's key, or signed by another peer, or not a head key at all
    assert!(verify_head_record(&head_record_key(&provider().peer_id()), &good).is_err());
    let forged = to_cbor(&provider().sign(DOMAIN_HEAD_RECORD, head_record().body));
    assert!(verify_head_record(&key, &forged).is_err());
    assert!(verify_head_record(b"/other/key", &good).is_err());
    assert!(verify_head_record(&key, b"garbage").is_err());
    let many = HeadPointer { seq: 1, holders: vec![vec![1u8].into(); MAX_HEAD_HOLDERS + 1] };
    let too_many = to_cbor(&client().sign(DOMAIN_HEAD_RECORD, to_cbor(&many)));
    assert!(verify_head_record(&key, &too_many).is_err());
}

fn deletion() -> Signed {
    let d = Deletion { packs: vec![PackId([4; 32]), PackId([5; 32])], time: 1_800_000_000 };
    client().sign(DOMAIN_DELETE, to_cbor(&d))
}

fn renewal() -> Signed {
    let r = Renewal { contract: ContractId([3; 32]), expires: 1_802_678_400 };
    client().sign(DOMAIN_RENEWAL, to_cbor(&r))
}

/// Encodes `m`, asserting it decodes back to itself.
fn rt<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(m: &T) -> Vec<u8> {
    let b = to_cbor(m);
    let back: T = from_cbor("test", &b).unwrap();
    assert_eq!(&back, m);
    b
}

/// Every golden vector: name and wire bytes (each checked to round-trip).
fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("proposal", rt(&proposal())),
        ("signed_proposal", rt(&proposal().sign(&client()))),
        ("contract_request_accept", rt(&ContractRequest::Accept(acceptance()))),
        ("contract_response_countersigned", rt(&ContractResponse::Countersigned(vec![7; 64]))),
        ("contract_response_declined", rt(&ContractResponse::Declined("enough providers already".into()))),
        ("contract", rt(&contract())),
        ("contract_request_cancel", rt(&ContractRequest::Cancel(cancellation()))),
        ("contract_response_cancelled", rt(&ContractResponse::Cancelled)),
        (
            "data_request_store",
            rt(&DataRequest::Store {
                contract: ContractId([3; 32]),
                pack: PackId([4; 32]),
                data: vec![1, 2, 3].into(),
            }),
        ),
        ("data_request_fetch", rt(&DataRequest::Fetch { pack: PackId([4; 32]) })),
        ("data_request_audit", rt(&DataRequest::Audit { pack: PackId([4; 32]), leaf: 7 })),
        ("data_response_proof", rt(&DataResponse::Proof { leaf: vec![1, 2], path: vec![5; 32] })),
        ("data_response_stored", rt(&DataResponse::Stored)),
        ("data_response_pack", rt(&DataResponse::Pack(bytes::Bytes::from_static(&[9, 9])))),
        ("data_response_error", rt(&DataResponse::Error { code: DataErrorCode::NoRoom, message: "full".into() })),
        ("contract_request_renew", rt(&ContractRequest::Renew(renewal()))),
        ("contract_response_renewed", rt(&ContractResponse::Renewed(vec![8; 64]))),
        ("data_request_store_claim", rt(&DataRequest::StoreClaim { index: 2, data: vec![1, 2, 3] })),
        ("data_request_audit_claim", rt(&DataRequest::AuditClaim { index: 2, offset: 4096 })),
        ("data_request_release_claim", rt(&DataRequest::ReleaseClaim { keep: 1 })),
        ("data_response_sample", rt(&DataResponse::Sample(vec![6, 6]))),
        ("data_response_released", rt(&DataResponse::Released)),
        ("data_request_delete", rt(&DataRequest::Delete(deletion()))),
        ("data_request_put_head", rt(&DataRequest::PutHead(head_envelope()))),
        ("data_request_get_head", rt(&DataRequest::GetHead)),
        ("data_request_claims_lost", rt(&DataRequest::ClaimsLost)),
        ("data_response_head", rt(&DataResponse::Head(head_envelope()))),
        ("head_record", rt(&head_record())),
        ("data_response_deleted", rt(&DataResponse::Deleted { bytes: 1 << 20, locked: 0 })),
        ("data_request_lock", rt(&DataRequest::Lock { packs: vec![PackId([4; 32])], until: 1_800_000_000 })),
        ("data_response_locked", rt(&DataResponse::Locked { packs: 1 })),
        ("data_request_get_heads", rt(&DataRequest::GetHeads)),
        ("data_response_heads", rt(&DataResponse::Heads(vec![locked_head_envelope()]))),
        ("data_response_deleted_locked", rt(&DataResponse::Deleted { bytes: 0, locked: 2 })),
        ("data_request_audit_signed", rt(&DataRequest::AuditSigned { pack: PackId([4; 32]), leaf: 7 })),
        ("data_response_signed_proof", rt(&DataResponse::SignedProof { answer: wrong_answer(), leaf: vec![5; 100] })),
        ("evidence", rt(&Evidence { contract: contract(), answer: wrong_answer() })),
    ]
}

#[test]
fn evidence_verifies_and_a_correct_or_foreign_answer_is_not_evidence() {
    let e = Evidence { contract: contract(), answer: wrong_answer() };
    assert_eq!(verify_evidence(&e).unwrap(), (provider().peer_id(), client().peer_id()));
    // A correct answer: the pack whose only leaf is those 100 bytes.
    let data = vec![5u8; 100];
    let mut a: AuditAnswer = from_cbor("audit answer", &wrong_answer().body).unwrap();
    a.pack = crate::repo::merkle::root(&data);
    let correct = Evidence { contract: contract(), answer: provider().sign(DOMAIN_AUDIT_ANSWER, to_cbor(&a)) };
    assert!(verify_evidence(&correct).unwrap_err().to_string().contains("correct"));
    // Signed by someone else than the contract's provider, or under another domain.
    let forged = Evidence { contract: contract(), answer: client().sign(DOMAIN_AUDIT_ANSWER, wrong_answer().body) };
    assert!(verify_evidence(&forged).is_err());
    let other_domain = Evidence { contract: contract(), answer: provider().sign(DOMAIN_DELETE, wrong_answer().body) };
    assert!(verify_evidence(&other_domain).is_err());
}

#[test]
fn golden_vectors() {
    let v = include_str!("golden.txt");
    let all = vectors();
    assert_eq!(v.lines().count(), all.len(), "golden.txt and the vector list differ in length");
    for (name, bytes) in all {
        let expected =
            v.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or_else(|| panic!("no vector {name}"));
        assert_eq!(hex::encode(&bytes), expected, "wire bytes changed for {name}");
    }
    let _ = BlobId::default();
}

#[test]
fn proposal_rules() {
    let s = proposal().sign(&client());
    let vp = verify_proposal(&s, 1_799_999_900).unwrap();
    assert_eq!(vp.client, client().peer_id());
    assert_eq!(verify_proposal(&s, 1_800_000_001).unwrap_err(), MessageError::Expired("proposal"));
    assert!(matches!(verify_proposal(&s, 1_000_000_000), Err(MessageError::Invalid(_))));
    let mut forged = s.clone();
    forged.key = provider().public_key();
    assert!(matches!(verify_proposal(&forged, 1_799_999_900), Err(MessageError::Signature(..))));
    let mut p = proposal();
    p.addrs = vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_PROPOSAL_ADDRS + 1];
    assert!(matches!(verify_proposal(&p.sign(&client()), 1_799_999_900), Err(MessageError::Invalid(_))));
    let garbage = Signed { body: vec![0xff; 10], key: client().public_key(), sig: vec![] };
    assert!(verify_proposal(&garbage, 0).is_err());
}

#[test]
fn contract_signatures() {
    let c = contract();
    let t = c.verify().unwrap();
    assert_eq!(t.client, client().peer_id());
    assert_eq!(t.provider, provider().peer_id());
    assert_eq!(t.bytes, 1 << 30);
    // the countersignature must be the client's
    let mut bad = c.clone();
    bad.client_sig = provider().sign_detached(DOMAIN_CONTRACT, &c.acceptance.body);
    assert!(bad.verify().is_err());
    // a provider cannot grant more than was asked
    assert!(matches!(verify_acceptance(&forged(&provider(), &provider(), 2 << 30)), Err(MessageError::Invalid(_))));
    // the provider field must name the signer
    assert!(matches!(verify_acceptance(&forged(&client(), &provider(), 1)), Err(MessageError::Invalid(_))));
    // nor contract with itself
    assert!(matches!(verify_acceptance(&forged(&client(), &client(), 1)), Err(MessageError::Invalid(_))));
}

/// An acceptance of [`proposal`] naming `named` as provider, granting `bytes`, signed by `signer`.
fn forged(named: &Identity, signer: &Identity, bytes: u64) -> Signed {
    let a = Acceptance {
        addrs: vec![],
        provider: named.peer_id().to_bytes(),
        proposal: proposal().sign(&client()),
        bytes,
        expires: 1,
    };
    signer.sign(DOMAIN_ACCEPTANCE, to_cbor(&a))
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for junk in [&[][..], &[0xff], &[0xa1, 0x65], &[0x5a, 0xff, 0xff, 0xff, 0xff], &[0x9f; 64]] {
        assert!(from_cbor::<DataRequest>("data request", junk).is_err());
        assert!(from_cbor::<ContractRequest>("contract request", junk).is_err());
        assert!(from_cbor::<Signed>("signed", junk).is_err());
    }
}

#[test]
#[ignore = "prints the golden vectors; run by hand after a deliberate protocol change"]
fn print_golden_vectors() {
    for (name, bytes) in vectors() {
        println!("{name} {}", hex::encode(bytes));
    }
}

mod props {
    use super::*;
    use crate::repo::pack::{PackEntry, PackHeader};
    use crate::repo::tree::{Node, NodeKind, Snapshot, Tree};
    use proptest::prelude::*;

    fn id32() -> impl Strategy<Value = [u8; 32]> {
        any::<[u8; 32]>()
    }

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(m: &T) {
        let b = to_cbor(m);
        let back: T = from_cbor("prop", &b).unwrap();
        assert_eq!(&back, m);
    }

    proptest! {
        #[test]
        fn proposals(bytes: u64, duration_secs: u64, offered: u64, free: u64, expires: u64, nonce: u64,
                     addrs in proptest::collection::vec(".{0,40}", 0..4)) {
            let p = Proposal { bytes, duration_secs, offered, free, addrs, expires, nonce };
            round_trip(&p);
            let s = p.sign(&client());
            round_trip(&s);
            prop_assert_eq!(s.verify(DOMAIN_PROPOSAL).unwrap(), client().peer_id());
        }

        #[test]
        fn data_messages(c in id32(), p in id32(), leaf: u32, data in proptest::collection::vec(any::<u8>(), 0..300),
                         message in ".{0,40}") {
            round_trip(&DataRequest::Store { contract: ContractId(c), pack: PackId(p), data: data.clone().into() });
            round_trip(&DataRequest::Fetch { pack: PackId(p) });
            round_trip(&DataRequest::Audit { pack: PackId(p), leaf });
            round_trip(&DataResponse::Pack(data.clone().into()));
            round_trip(&DataResponse::Proof { leaf: data.clone(), path: data.clone() });
            round_trip(&DataRequest::StoreClaim { index: leaf, data: data.clone() });
            round_trip(&DataRequest::AuditClaim { index: leaf, offset: u64::from(leaf) << 7 });
            round_trip(&DataRequest::ReleaseClaim { keep: leaf });
            round_trip(&DataResponse::Sample(data));
            round_trip(&DataResponse::Released);
            round_trip(&DataResponse::Deleted { bytes: u64::from(leaf), locked: leaf });
            let d = Deletion { packs: vec![PackId(p); (leaf % 5) as usize], time: u64::from(leaf) };
            round_trip(&d);
            round_trip(&DataRequest::Delete(client().sign(DOMAIN_DELETE, to_cbor(&d))));
            for code in [DataErrorCode::NoContract, DataErrorCode::NoRoom, DataErrorCode::BadPack,
                         DataErrorCode::NotFound, DataErrorCode::Internal, DataErrorCode::Busy] {
                round_trip(&DataResponse::Error { code, message: message.clone() });
            }
        }

        #[test]
        fn contract_messages(sig in proptest::collection::vec(any::<u8>(), 0..80), reason in ".{0,60}",
                             bytes in 1u64..(1 << 30), expires: u64,
                             addrs in proptest::collection::vec(".{0,40}", 0..4)) {
            let a = Acceptance { provider: provider().peer_id().to_bytes(), addrs, proposal: proposal().sign(&client()), bytes, expires };
            round_trip(&a);
            let signed = provider().sign(DOMAIN_ACCEPTANCE, to_cbor(&a));
            round_trip(&ContractRequest::Accept(signed.clone()));
            prop_assert!(verify_acceptance(&signed).is_ok());
            round_trip(&ContractResponse::Countersigned(sig.clone()));
            round_trip(&ContractResponse::Declined(reason));
            round_trip(&Contract { acceptance: signed, client_sig: sig.clone() });
            let c = Cancellation { contract: ContractId([bytes as u8; 32]), reason: "r".repeat((bytes % 200) as usize) };
            round_trip(&c);
            let s = client().sign(DOMAIN_CANCEL, to_cbor(&c));
            round_trip(&ContractRequest::Cancel(s.clone()));
            prop_assert_eq!(s.verify(DOMAIN_CANCEL).unwrap(), client().peer_id());
            round_trip(&ContractResponse::Cancelled);
            let r = Renewal { contract: ContractId([bytes as u8; 32]), expires };
            round_trip(&r);
            let s = client().sign(DOMAIN_RENEWAL, to_cbor(&r));
            round_trip(&ContractRequest::Renew(s.clone()));
            prop_assert_eq!(s.verify(DOMAIN_RENEWAL).unwrap(), client().peer_id());
            round_trip(&ContractResponse::Renewed(sig));
        }

        #[test]
        fn documents(name in proptest::collection::vec(any::<u8>(), 1..50), mode: u32, mtime_ns: i64, size: u64,
                     inode: u64, ids in proptest::collection::vec(id32(), 0..5), offset: u32, length: u32,
                     time: u64, hostname in ".{0,20}") {
            let node = Node { name: name.clone(), kind: NodeKind::File, mode, mtime_ns, size, inode,
                              content: ids.iter().map(|i| crate::id::BlobId(*i)).collect(), subtree: None, target: name.clone(),
                              owner: Some((mode, offset)), device: size, links: inode,
                              xattrs: vec![crate::repo::tree::Xattr { name: name.clone(), value: name }] };
            round_trip(&Tree { nodes: vec![node] });
            round_trip(&Snapshot { time, hostname, paths: vec!["/a".into()], tree: crate::id::BlobId([1; 32]),
                                   parent: ids.first().map(|i| crate::id::SnapshotId(*i)), files: size, bytes: size,
                                   lock_until: u64::from(offset) });
            let blobs = ids.iter().map(|i| PackEntry { id: crate::id::BlobId(*i), kind: crate::repo::blob::BlobKind::Data,
                                                       offset, length, raw_length: length }).collect();
            round_trip(&PackHeader { version: 1, blobs });
        }
    }
}
