//! Entry points for fuzzing (see `fuzz/`): every decoder of network input ([`wire`]) and
//! of on-disk formats ([`disk`]), fed arbitrary bytes. The contract is simple: return,
//! never panic, whatever the input. The committed corpus is replayed by a unit test on the
//! stable toolchain; `cargo fuzz` explores further on nightly.

use super::*;
use crate::repo::{pack, tree};

/// Decodes `data` as every network message and checks what decodes.
pub fn wire(data: &[u8]) {
    if let Ok(s) = from_cbor::<Signed>("signed", data) {
        let _ = verify_proposal(&s, 1_800_000_000);
        let _ = verify_acceptance(&s);
    }
    match from_cbor::<ContractRequest>("contract request", data) {
        Ok(ContractRequest::Accept(s)) => {
            let _ = verify_acceptance(&s);
        }
        Ok(ContractRequest::Cancel(s)) => {
            let _ = s.verify(DOMAIN_CANCEL);
            let _ = from_cbor::<Cancellation>("cancellation", &s.body);
        }
        Ok(ContractRequest::Renew(s)) => {
            let _ = s.verify(DOMAIN_RENEWAL);
            let _ = from_cbor::<Renewal>("renewal", &s.body);
        }
        Err(_) => {}
    }
    let me = Identity::from_secret([1; 32]);
    let _ = verify_head_record(&head_record_key(&me.peer_id()), data);
    if let Ok(DataRequest::PutHead(s)) = from_cbor::<DataRequest>("data request", data) {
        let _ = crate::head::envelope_seq(&s, &me.peer_id());
    }
    if let Ok(DataResponse::Head(s)) = from_cbor::<DataResponse>("data response", data) {
        let _ = crate::head::open(&me, &s);
    }
    let _ = from_cbor::<Cancellation>("cancellation", data);
    let _ = from_cbor::<ContractResponse>("contract response", data);
    if let Ok(c) = from_cbor::<Contract>("contract", data) {
        let _ = c.verify();
    }
    if let Ok(DataRequest::Audit { pack, leaf }) = from_cbor::<DataRequest>("data request", data) {
        let _ = crate::audit::check(&pack, data.len() as u64, leaf, data, data);
    }
    if let Ok(DataRequest::Delete(s)) = from_cbor::<DataRequest>("data request", data) {
        let _ = s.verify(DOMAIN_DELETE);
        let _ = from_cbor::<Deletion>("deletion", &s.body);
    }
    if let Ok(DataResponse::Proof { leaf, path }) = from_cbor::<DataResponse>("data response", data) {
        let _ = crate::audit::check(&PackId::default(), 1 << 20, 3, &leaf, &path);
    }
    let _ = from_cbor::<crate::control::Request>("control request", data);
    let _ = from_cbor::<crate::control::Reply>("control reply", data);
}

/// Decodes `data` as every on-disk format: pack (encrypted header and its plaintext),
/// tree, snapshot, local state records, and the TOML configuration.
pub fn disk(data: &[u8]) {
    let key = [7u8; 32];
    let _ = pack::read_header(&key, data);
    if let Ok(h) = from_cbor::<pack::PackHeader>("pack header", data) {
        for e in h.blobs.iter().take(64) {
            let _ = pack::read_blob((&key, &key), data, e);
        }
    }
    let _ = tree::decode_tree(data);
    let _ = tree::decode_snapshot(data);
    let _ = from_cbor::<crate::state::ContractRecord>("contract record", data);
    let _ = from_cbor::<crate::state::PackRecord>("pack record", data);
    let _ = from_cbor::<crate::state::IndexEntry>("index entry", data);
    let _ = from_cbor::<crate::audit::AuditRecord>("audit record", data);
    let _ = from_cbor::<crate::head::HeadDoc>("head", data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = toml::from_str::<crate::config::Config>(text)
    {
        let _ = c.validate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn replay(target: &str, f: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            f(&data);
            // and every prefix of small inputs, which covers truncation
            if data.len() <= 4096 {
                for k in 0..data.len() {
                    f(&data[..k]);
                }
            }
            n += 1;
        }
        n
    }

    #[test]
    fn corpus_replays_cleanly() {
        assert!(replay("wire", wire) >= 13);
        assert!(replay("disk", disk) >= 4);
    }

    /// A bounded mutation fuzzer on the stable toolchain: bit flips, byte changes,
    /// truncations, duplications and splices of the seeds, deterministic (xorshift).
    #[test]
    fn mutated_seeds_never_panic() {
        for (target, f) in [("wire", wire as fn(&[u8])), ("disk", disk as fn(&[u8]))] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
            let seeds: Vec<Vec<u8>> =
                std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for _ in 0..3000 {
                let mut d = seeds[next() as usize % seeds.len()].clone();
                for _ in 0..1 + next() % 4 {
                    let len = d.len().max(1);
                    let at = next() as usize % len;
                    match next() % 5 {
                        0 if !d.is_empty() => d[at] ^= 1 << (next() % 8),
                        1 if !d.is_empty() => d[at] = next() as u8,
                        2 => d.truncate(at),
                        3 => {
                            let tail = d[at.min(d.len())..].to_vec();
                            d.extend_from_slice(&tail[..tail.len().min(64)]);
                        }
                        _ => {
                            let other = &seeds[next() as usize % seeds.len()];
                            let cut = next() as usize % other.len().max(1);
                            d.truncate(at);
                            d.extend_from_slice(&other[cut.min(other.len())..]);
                        }
                    }
                }
                f(&d);
            }
        }
    }

    /// Writes the seed corpus (the golden vectors and one of each on-disk format).
    #[test]
    #[ignore = "writes fuzz/corpus; run by hand to refresh the seeds"]
    fn write_seed_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        std::fs::create_dir_all(root.join("wire")).unwrap();
        std::fs::create_dir_all(root.join("disk")).unwrap();
        for line in include_str!("golden.txt").lines() {
            let (name, hex) = line.split_once(' ').unwrap();
            std::fs::write(root.join("wire").join(name), hex::decode(hex).unwrap()).unwrap();
        }
        let ik = [7u8; 32];
        let mut w = pack::PackWriter::new(ik, 3, 0);
        w.add(crate::repo::blob::BlobKind::Data, crate::repo::blob::blob_id(&ik, b"hello"), b"hello");
        std::fs::write(root.join("disk/pack"), w.finish().bytes).unwrap();
        let t = tree::Tree {
            nodes: vec![tree::Node {
                name: b"a file".to_vec(),
                kind: tree::NodeKind::File,
                mode: 0o644,
                mtime_ns: 1,
                size: 5,
                inode: 2,
                content: vec![crate::id::BlobId([1; 32])],
                subtree: None,
                target: vec![],
                owner: Some((1000, 1000)),
                device: 0,
                links: 0,
                xattrs: vec![],
            }],
        };
        std::fs::write(root.join("disk/tree"), tree::encode(&t)).unwrap();
        let s = tree::Snapshot {
            time: 1,
            hostname: "h".into(),
            paths: vec!["/x".into()],
            tree: crate::id::BlobId([2; 32]),
            parent: None,
            files: 1,
            bytes: 5,
            lock_until: 0,
        };
        std::fs::write(root.join("disk/snapshot"), tree::encode(&s)).unwrap();
        let toml = toml::to_string(&crate::config::Config::default()).unwrap();
        std::fs::write(root.join("disk/config.toml"), toml).unwrap();
        let a = crate::audit::AuditRecord::default();
        std::fs::write(root.join("disk/audit"), to_cbor(&a)).unwrap();
    }
}
