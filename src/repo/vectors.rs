//! Golden vectors of the data formats (protocol.md §7.2): a sealed blob, a pack with its
//! header, a Merkle proof in a multi-leaf pack, an index document, the head seal, the
//! recovery phrase, the erasure shard layout and FastCDC's cut points. Every value is in
//! `golden.txt`, one `name value` line each; a change to any of them is a format change.
//!
//! Where zstd is involved (blobs, packs, the head) the vector is checked in the reading
//! direction only (it opens to the expected plaintext): another zstd may compress the
//! same input to other bytes, and a reader must accept them all. Everything else is
//! checked byte for byte both ways.

use super::blob::{self, BlobKind, blob_id};
use super::erasure::Scheme;
use super::index::{IndexBlob, IndexDoc, IndexPack};
use super::pack::{self, PackEntry, PackHeader};
use super::{chunker, merkle};
use crate::head::{self, HeadDoc};
use crate::id::{BlobId, PackId};
use crate::identity::Identity;
use crate::protocol::{DOMAIN_HEAD, HeadEnvelope, to_cbor};

/// The client of protocol.md §7: Ed25519 secret of 32 bytes `0x01`.
fn client() -> Identity {
    Identity::from_secret([1; 32])
}

fn keys(id: &Identity) -> (&[u8; 32], &[u8; 32]) {
    (&id.id_key, &id.enc_key)
}

/// A blob sealed with a fixed nonce (`nonce` × 24 bytes), zstd level 3.
fn sealed_blob(id: &Identity, kind: BlobKind, plain: &[u8], nonce: u8) -> Vec<u8> {
    let bid = blob_id(&id.id_key, plain);
    let compressed = zstd::bulk::compress(plain, 3).unwrap();
    blob::encrypt_with_nonce(&id.enc_key, &[nonce; 24], &blob::aad(kind, &bid), &compressed)
}

/// The tree document `{"nodes": []}` (an empty directory, §3.4).
fn empty_tree() -> Vec<u8> {
    to_cbor(&super::tree::Tree { nodes: vec![] })
}

/// Two blobs — Data "hello" (nonce 0x07…) and the empty tree (nonce 0x08…) — and the
/// header sealed with nonce 0x09…, laid out as §3.3.1 says.
fn two_blob_pack(id: &Identity) -> Vec<u8> {
    let (a, b) = (sealed_blob(id, BlobKind::Data, b"hello", 7), sealed_blob(id, BlobKind::Tree, &empty_tree(), 8));
    let entries = vec![
        PackEntry {
            id: blob_id(&id.id_key, b"hello"),
            kind: BlobKind::Data,
            offset: 0,
            length: a.len() as u32,
            raw_length: 5,
        },
        PackEntry {
            id: blob_id(&id.id_key, &empty_tree()),
            kind: BlobKind::Tree,
            offset: a.len() as u32,
            length: b.len() as u32,
            raw_length: empty_tree().len() as u32,
        },
    ];
    let header = to_cbor(&PackHeader { version: 1, blobs: entries });
    let sealed = blob::encrypt_with_nonce(&id.enc_key, &[9; 24], b"peer/pack-header/v1", &header);
    [a, b, sealed.clone(), (sealed.len() as u32).to_le_bytes().to_vec()].concat()
}

/// 3 × 65,536 + 1 bytes, byte i = i mod 251: four leaves, the last one byte long.
fn four_leaves() -> Vec<u8> {
    (0..3 * 65_536 + 1).map(|i| (i % 251) as u8).collect()
}

/// 4 MiB from a xorshift64 generator seeded with 1: FastCDC input.
fn cdc_input() -> Vec<u8> {
    let mut x: u64 = 1;
    let mut v = Vec::with_capacity(4 << 20);
    while v.len() < 4 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn head_doc() -> HeadDoc {
    HeadDoc {
        seq: 3,
        time: 1_800_000_000,
        offered: 1 << 30,
        snapshots: vec![],
        packs: vec![],
        index: vec![PackId([5; 32])],
        contracts: vec![],
    }
}

fn index_doc() -> IndexDoc {
    IndexDoc {
        version: 1,
        packs: vec![IndexPack {
            id: PackId([5; 32]),
            blobs: vec![
                IndexBlob(BlobId([1; 32]), BlobKind::Data, 0, 100, 90),
                IndexBlob(BlobId([2; 32]), BlobKind::Tree, 100, 60, 200),
            ],
        }],
    }
}

/// Every vector as its `golden.txt` value, computed now.
fn computed() -> Vec<(&'static str, String)> {
    let c = client();
    let data = four_leaves();
    let root = merkle::root(&data);
    let proof: Vec<u8> = merkle::proof(&data, 2).unwrap().concat();
    let pack = two_blob_pack(&c);
    let head_plain = to_cbor(&head_doc());
    let head_sealed = blob::encrypt_with_nonce(
        &c.enc_key,
        &[10; 24],
        b"peer/head/v2",
        &zstd::bulk::compress(&head_plain, 3).unwrap(),
    );
    let envelope = c.sign(DOMAIN_HEAD, to_cbor(&HeadEnvelope { seq: 3, sealed: head_sealed.clone(), lock_until: 0 }));
    let shard_input: Vec<u8> = (0..100u8).collect();
    let shards = Scheme { k: 2, m: 1 }.split(&shard_input).unwrap().concat();
    let mut cuts = Vec::new();
    chunker::for_each_chunk(&cdc_input()[..], 4 << 20, |ch| {
        cuts.push(ch.len().to_string());
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    vec![
        ("blob_id_hello", hex::encode(blob_id(&c.id_key, b"hello").0)),
        ("blob_data_hello", hex::encode(sealed_blob(&c, BlobKind::Data, b"hello", 7))),
        ("pack_two_blobs", hex::encode(&pack)),
        ("pack_two_blobs_id", hex::encode(merkle::root(&pack).0)),
        ("merkle_root_four_leaves", hex::encode(root.0)),
        ("merkle_proof_four_leaves_leaf2", hex::encode(proof)),
        ("index_doc", hex::encode(to_cbor(&index_doc()))),
        ("head_doc", hex::encode(&head_plain)),
        ("head_sealed", hex::encode(head_sealed)),
        ("head_envelope_signed", hex::encode(to_cbor(&envelope))),
        ("recovery_phrase", c.mnemonic()),
        ("erasure_2_1_of_0_to_99", hex::encode(shards)),
        ("fastcdc_cuts_xorshift_4mib", cuts.join(",")),
    ]
}

fn golden() -> Vec<(String, String)> {
    include_str!("golden.txt")
        .lines()
        .map(|l| {
            let (n, v) = l.split_once(' ').expect("a line is 'name value'");
            (n.to_string(), v.to_string())
        })
        .collect()
}

fn value(name: &str) -> String {
    golden().into_iter().find(|(n, _)| n == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no vector {name}"))
}

#[test]
fn exact_vectors_match_both_ways() {
    let now = computed();
    let exact = [
        "blob_id_hello",
        "merkle_root_four_leaves",
        "merkle_proof_four_leaves_leaf2",
        "index_doc",
        "head_doc",
        "recovery_phrase",
        "erasure_2_1_of_0_to_99",
        "fastcdc_cuts_xorshift_4mib",
    ];
    assert_eq!(golden().len(), now.len(), "golden.txt and the vector list differ in length");
    for name in exact {
        let v = now.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(v, value(name), "vector {name}");
    }
    // And they read back.
    let doc: IndexDoc = crate::protocol::from_cbor("index", &hex::decode(value("index_doc")).unwrap()).unwrap();
    assert_eq!(doc, index_doc());
    let data = four_leaves();
    let path: Vec<[u8; 32]> = hex::decode(value("merkle_proof_four_leaves_leaf2"))
        .unwrap()
        .chunks(32)
        .map(|c| c.try_into().unwrap())
        .collect();
    let root = PackId(hex::decode(value("merkle_root_four_leaves")).unwrap().try_into().unwrap());
    assert!(merkle::verify(&root, data.len() as u64, 2, &data[2 * 65_536..3 * 65_536], &path));
    assert_eq!(Identity::from_mnemonic(&value("recovery_phrase")).unwrap().public_key(), client().public_key());
    let shards = hex::decode(value("erasure_2_1_of_0_to_99")).unwrap();
    let s: Vec<Option<Vec<u8>>> = shards.chunks(50).map(|c| Some(c.to_vec())).collect();
    let joined = Scheme { k: 2, m: 1 }.join(100, &[None, s[1].clone(), s[2].clone()]).unwrap();
    assert_eq!(joined, (0..100u8).collect::<Vec<_>>(), "any 2 of the 3 shards give the pack back");
}

#[test]
fn sealed_vectors_open_to_their_plaintext() {
    let c = client();
    let hello = hex::decode(value("blob_data_hello")).unwrap();
    let id = BlobId(hex::decode(value("blob_id_hello")).unwrap().try_into().unwrap());
    assert_eq!(hello[..24], [7; 24], "the nonce comes first");
    assert_eq!(blob::open(keys(&c), BlobKind::Data, &id, &hello, 5).unwrap(), b"hello");

    let pack_bytes = hex::decode(value("pack_two_blobs")).unwrap();
    assert_eq!(hex::encode(merkle::root(&pack_bytes).0), value("pack_two_blobs_id"));
    let entries = pack::read_header(&c.enc_key, &pack_bytes).unwrap();
    assert_eq!(entries.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![BlobKind::Data, BlobKind::Tree]);
    assert_eq!(pack::read_blob(keys(&c), &pack_bytes, &entries[0]).unwrap(), b"hello");
    assert_eq!(pack::read_blob(keys(&c), &pack_bytes, &entries[1]).unwrap(), empty_tree());

    let envelope: crate::identity::Signed =
        crate::protocol::from_cbor("head", &hex::decode(value("head_envelope_signed")).unwrap()).unwrap();
    let opened = head::open(&c, &envelope).unwrap();
    assert_eq!(to_cbor(&opened.doc), hex::decode(value("head_doc")).unwrap());
    let env: HeadEnvelope = crate::protocol::from_cbor("env", &envelope.body).unwrap();
    assert_eq!(hex::encode(env.sealed), value("head_sealed"));
}

#[test]
#[ignore = "prints the data-format vectors; run by hand after a deliberate format change"]
fn print_vectors() {
    for (n, v) in computed() {
        println!("{n} {v}");
    }
}
