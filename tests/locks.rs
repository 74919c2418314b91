//! Retention locks (protocol.md §5.9) across real daemons on 127.0.0.1: an attacker who
//! holds the key cannot destroy a locked backup, and its owner gets it back from the
//! recovery phrase alone.

use peer::localnet::{LocalNet, compare_trees};
use peer::protocol::{DOMAIN_DELETE, DataRequest, DataResponse, Deletion};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_peer");
const GIB: u64 = 1 << 30;

/// Pack files a provider holds for any client.
fn pack_files(home: &Path) -> Vec<(String, peer::id::PackId)> {
    let mut v = Vec::new();
    for client in std::fs::read_dir(home.join("store")).unwrap().flatten() {
        for f in std::fs::read_dir(client.path()).unwrap().flatten() {
            if let Some(p) = f.file_name().to_str().and_then(|n| n.parse::<peer::id::PackId>().ok()) {
                v.push((client.file_name().to_string_lossy().into_owned(), p));
            }
        }
    }
    v
}

/// The attacker: a client of its own making that speaks the protocol with the stolen
/// key. It publishes an empty head and asks every provider to delete every pack.
fn attack(net: &LocalNet, key_file: &Path, work: &Path) {
    let id = peer::identity::Identity::load(key_file).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = peer::net::NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![],
            known: vec![],
            mdns: false,
            max_connections: 16,
            target_peers: peer::net::TARGET_PEERS,
            shard_peers: peer::net::shard::SHARD_PEERS,
            global_only: false,
            upnp: false,
            relay: None,
            limits: peer::net::throttle::Limits::new(0, 0),
            metrics: None,
        };
        let (handle, mut events) = peer::net::start(id.keypair(), cfg).unwrap();
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        // "Forget every snapshot": a head made from an empty repository, newer than any.
        let empty = peer::state::State::open(&work.join("empty.redb")).unwrap();
        let doc = peer::head::collect(&empty, 1_000, peer::protocol::now()).unwrap();
        let signed = peer::head::seal(&id, &doc).unwrap();
        for p in &net.peers[1..] {
            let provider: libp2p::PeerId = p.peer_id.parse().unwrap();
            let addrs = vec![p.addr.parse().unwrap()];
            let r = handle.data_request(provider, addrs.clone(), DataRequest::PutHead(signed.clone())).await;
            assert!(matches!(r, Ok(DataResponse::Stored)), "{r:?}");
            // "Prune": delete every pack, signed with the owner's key.
            let packs: Vec<_> = pack_files(&p.home).into_iter().map(|(_, id)| id).collect();
            assert!(!packs.is_empty());
            let d = Deletion { packs: packs.clone(), time: peer::protocol::now() };
            let req = DataRequest::Delete(id.sign(DOMAIN_DELETE, peer::protocol::to_cbor(&d)));
            match handle.data_request(provider, addrs, req).await {
                Ok(DataResponse::Deleted { bytes, locked }) => {
                    assert_eq!((bytes, locked as usize), (0, packs.len()), "every pack is locked: kept");
                }
                other => panic!("{other:?}"),
            }
        }
        handle.shutdown().await;
    });
}

#[test]
fn an_attacker_with_the_key_cannot_destroy_a_locked_backup_and_the_phrase_brings_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("thesis");
    std::fs::create_dir_all(src.join("chapters")).unwrap();
    for i in 0..8 {
        std::fs::write(src.join("chapters").join(format!("{i}.tex")), format!("chapter {i}\n").repeat(4000)).unwrap();
    }
    std::fs::write(src.join("data.bin"), (0..600_000u64).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, |_, _| {}).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    let s = src.to_str().unwrap();
    let out = net.run(0, &["backup", s, "--copies", "2", "--lock", "1d", "--json"]).unwrap();
    let sum: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(sum["locked_until"].as_u64() > Some(peer::protocol::now() + 86_000), "{sum}");
    assert!(sum["lock_error"].is_null(), "{sum}");
    let phrase = net.run(0, &["key", "export", "--mnemonic"]).unwrap();
    let heads: Vec<Value> = serde_json::from_str(&net.run(0, &["heads", "--json"]).unwrap()).unwrap();
    let locked_seq = heads[0]["seq"].as_u64().unwrap();
    assert!(heads[0]["lock_until"].as_u64() > Some(0) && heads[0]["snapshots"] == 1, "{heads:?}");
    let held_before: usize = net.peers[1..].iter().map(|p| pack_files(&p.home).len()).sum();

    // The machine is taken over: the attacker holds the key, forgets, prunes.
    let home = net.peers[0].home.clone();
    net.kill(0);
    attack(&net, &home.join("identity.key"), tmp.path());
    let held_after: usize = net.peers[1..].iter().map(|p| pack_files(&p.home).len()).sum();
    assert_eq!(held_after, held_before, "the holders deleted nothing");

    // The owner has only the phrase: a fresh home recovers the attacker's empty head…
    std::fs::remove_dir_all(&home).unwrap();
    let boot = net.peers[1].addr.clone();
    let mut child = net
        .cmd(0, &["init", "--recover", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", &boot])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(phrase.as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let cfg = home.join("config.toml");
    let mut c = peer::config::Config::load(&cfg).unwrap();
    (c.network.global_addresses_only, c.network.upnp, c.dashboard.port) = (false, false, 0);
    c.save(&cfg).unwrap();
    net.restart(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let st: Value = serde_json::from_str(&net.run(0, &["status", "--json"]).unwrap()).unwrap();
        if st["recovering"] == false {
            break st;
        }
        assert!(Instant::now() < deadline, "not recovered: {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["snapshots"].as_array().unwrap().len(), 0, "the latest head is the attacker's: {status}");

    // …but the holders kept the locked head, and the restore from it is byte-identical.
    let heads: Vec<Value> = serde_json::from_str(&net.run(0, &["heads", "--json"]).unwrap()).unwrap();
    let kept = heads.iter().find(|h| h["seq"] == locked_seq).unwrap_or_else(|| panic!("{heads:?}"));
    assert_eq!(kept["snapshots"], 1, "{heads:?}");
    let target = tmp.path().join("back");
    let seq = locked_seq.to_string();
    net.run(0, &["restore", "latest", "--head", &seq, "--target", target.to_str().unwrap()]).unwrap();
    assert!(compare_trees(&src, &target.join("thesis")).is_empty());
    let snaps: Vec<Value> = serde_json::from_str(&net.run(0, &["snapshots", "--json"]).unwrap()).unwrap();
    assert_eq!(snaps.len(), 1, "the snapshot is back in the repository");
}
