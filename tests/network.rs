//! End-to-end tests across real `peer daemon` processes on 127.0.0.1 (see `peer::localnet`).
//! Each test builds its own network in a temporary directory; nothing is mocked.

use peer::config::Config;
use peer::localnet::{LocalNet, compare_trees};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_peer");
const GIB: u64 = 1 << 30;

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough to defeat zstd.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let t = std::time::UNIX_EPOCH + Duration::new(secs as u64, nanos);
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(t).unwrap();
}

/// A tree with thousands of files, empty files, one file over 50 MB, deep nesting,
/// a symlink, names with spaces and non-ASCII, and varied modes and mtimes.
fn make_tree(root: &Path, files: usize) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 40)).join(format!("sub {}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("file {i}.txt"));
        let len = if i % 50 == 0 { 0 } else { (i * 37) % 9000 };
        let body: Vec<u8> = if i % 3 == 0 {
            noise(i as u64, len)
        } else {
            format!("line {i} of a compressible text file\n").into_bytes().repeat(len / 30 + 1)
        };
        std::fs::write(&p, &body).unwrap();
        if i % 5 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if i % 11 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        set_mtime(&p, 1_600_000_000 + i as i64, (i as u32 * 7919) % 1_000_000_000);
    }
    std::fs::write(root.join("big file.bin"), noise(99, 52 * 1024 * 1024 + 12345)).unwrap();
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"at the bottom").unwrap();
    std::fs::write(root.join("ünïcødé ファイル.txt"), "non-ASCII name".as_bytes()).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("big file.bin", root.join("link to big")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling link")).unwrap();
    std::fs::set_permissions(root.join("d3"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

/// Audits every second, repair after 10 s of absence at full speed, 1 MiB packs.
fn fast_repair(_: usize, c: &mut Config) {
    (c.audit.interval_secs, c.audit.timeout_secs) = (1, 5);
    c.backup.pack_size = 1 << 20;
    (c.repair.grace_secs, c.repair.bytes_per_sec) = (10, 1 << 30);
}

fn json_last(out: &str) -> Value {
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn backup(net: &LocalNet, i: usize, path: &Path, copies: u32) -> Value {
    let out = net.run(i, &["backup", path.to_str().unwrap(), "--copies", &copies.to_string(), "--json"]).unwrap();
    json_last(&out)
}

/// The pack files in a provider's store (not the clients' heads).
fn store_files(home: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(home.join("store")) else { return v };
    for client in rd.flatten() {
        for f in std::fs::read_dir(client.path()).unwrap().flatten() {
            if f.file_name().to_str().is_some_and(|n| n.parse::<peer::id::PackId>().is_ok()) {
                v.push(f.path());
            }
        }
    }
    v
}

/// Every file in a provider's store: packs and the heads it keeps.
fn all_store_files(home: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(home.join("store")) else { return v };
    for client in rd.flatten() {
        v.extend(std::fs::read_dir(client.path()).unwrap().flatten().map(|f| f.path()));
    }
    v
}

#[test]
fn five_peers_backup_dedup_and_restore_after_losing_two() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    make_tree(&src, 3000);
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 5, GIB, |_, _| {}).unwrap();
    net.wait_connected(4, Duration::from_secs(60)).unwrap();

    let first = backup(&net, 0, &src, 3);
    assert_eq!(first["message_type"], "summary");
    assert_eq!(first["files"], 3000 + 4);
    assert!(first["packs"].as_u64().unwrap() >= 4, "{first}");
    assert_eq!(first["bytes_uploaded"].as_u64().unwrap() % 3, 0, "every pack counted three times: {first}");
    // Every pack is on three distinct providers, none on the client itself.
    let held: Vec<usize> = (1..5).map(|i| store_files(&net.peers[i].home).len()).collect();
    let objects = first["packs"].as_u64().unwrap() + first["index_packs"].as_u64().unwrap();
    assert_eq!(held.iter().sum::<usize>() as u64, 3 * objects, "{held:?}");
    assert!(store_files(&net.peers[0].home).is_empty());

    // Unchanged: nothing is read again and no data is uploaded (only the new snapshot document).
    let second = backup(&net, 0, &src, 3);
    assert_eq!(second["files_read"], 0, "{second}");
    assert!(second["bytes_new"].as_u64().unwrap() < 4096, "{second}");
    assert!(second["packs"].as_u64().unwrap() <= 1, "{second}");

    // One file changed: only it is read, and little is new.
    let changed = src.join("d1/sub 1/file 1.txt");
    std::fs::write(&changed, b"changed content").unwrap();
    let third = backup(&net, 0, &src, 3);
    assert_eq!(third["files_read"], 1, "{third}");
    assert!(third["bytes_new"].as_u64().unwrap() < 64 * 1024, "{third}");

    let snaps: Value = serde_json::from_str(&net.run(0, &["snapshots", "--json"]).unwrap()).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 3);

    // Providers hold only ciphertext: no file content, no file name.
    for i in 1..5 {
        for f in all_store_files(&net.peers[i].home) {
            let b = std::fs::read(&f).unwrap();
            for marker in ["compressible text file", "ünïcødé", "big file.bin", "bottom.txt"] {
                assert!(!b.windows(marker.len()).any(|w| w == marker.as_bytes()), "{marker} in {}", f.display());
            }
        }
    }

    // Contracts and the index survive a restart of the client daemon.
    assert!(net.stop(0).unwrap().success());
    net.restart(0).unwrap();
    net.wait_connected(4, Duration::from_secs(60)).unwrap();
    let status: Value = serde_json::from_str(&net.run(0, &["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["contracts"].as_array().unwrap().len(), 3, "{status}");

    // Lose two providers: every pack still has a copy.
    net.kill(1);
    net.kill(3);
    let target = tmp.path().join("restored");
    let out = net.run(0, &["restore", "latest", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    let r = json_last(&out);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let diffs = compare_trees(&src, &target.join("data"));
    assert!(diffs.is_empty(), "{} differences, first: {:?}", diffs.len(), &diffs[..diffs.len().min(5)]);
}

#[test]
fn three_peers_reciprocity_corrupt_holder_and_in_place_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    make_tree(&src, 200);
    std::fs::remove_file(src.join("big file.bin")).unwrap();
    std::fs::write(src.join("big file.bin"), noise(5, 20 * 1024 * 1024)).unwrap();
    // Peer 2 listens on QUIC only, so its packs travel over QUIC.
    let configure = |i: usize, c: &mut Config| {
        c.contracts.proposal_wait_secs = 3;
        if i == 2 {
            c.network.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()];
        }
    };
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, configure).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    assert!(net.peers[2].addr.contains("/quic-v1/"), "{}", net.peers[2].addr);

    // Give to get: a peer offering nothing cannot back up, and nothing is uploaded.
    net.run(0, &["offer-storage", "0"]).unwrap();
    let e = net.run(0, &["backup", src.to_str().unwrap(), "--copies", "2"]).unwrap_err();
    assert!(e.contains("offers no storage") && e.contains("peer offer-storage"), "{e}");
    assert!(store_files(&net.peers[1].home).is_empty() && store_files(&net.peers[2].home).is_empty());

    // Fewer providers than copies: refused before any upload, saying how many accepted.
    net.run(0, &["offer-storage", "1GiB"]).unwrap();
    let e = net.run(0, &["backup", src.to_str().unwrap(), "--copies", "3"]).unwrap_err();
    assert!(e.contains("only 2 of the 3"), "{e}");
    assert!(store_files(&net.peers[1].home).is_empty() && store_files(&net.peers[2].home).is_empty());

    let b = backup(&net, 0, &src, 2);
    assert!(b["packs"].as_u64().unwrap() >= 2, "{b}");
    let packs = (b["packs"].as_u64().unwrap() + b["index_packs"].as_u64().unwrap()) as usize;
    let status: Value = serde_json::from_str(&net.run(1, &["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["contracts"][0]["role"], "provider", "{status}");
    assert!(status["used_by_others"].as_u64().unwrap() > 20 << 20, "{status}");

    // A holder returning corrupted bytes: restore fails over to the other copy. Corrupt each
    // holder in turn, so the failover is exercised whichever holder is asked first.
    for bad in [1, 2] {
        let files = store_files(&net.peers[bad].home);
        assert_eq!(files.len(), packs);
        let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        for (f, orig) in files.iter().zip(&originals) {
            let mut c = orig.clone();
            let mid = c.len() / 2;
            c[mid] ^= 0xff;
            std::fs::write(f, c).unwrap();
        }
        let target = tmp.path().join(format!("restored{bad}"));
        let out = net.run(0, &["restore", "--target", target.to_str().unwrap(), "--json"]).unwrap();
        assert_eq!(json_last(&out)["failed"].as_array().unwrap().len(), 0);
        assert!(compare_trees(&src, &target.join("photos")).is_empty());
        for (f, orig) in files.iter().zip(&originals) {
            std::fs::write(f, orig).unwrap();
        }
    }

    // In place: a deleted file comes back; a changed file is kept and listed unless --overwrite.
    let gone = src.join("d2/sub 2/file 2.txt");
    let before = std::fs::read(&gone).unwrap();
    std::fs::remove_file(&gone).unwrap();
    let edited = src.join("d4/sub 4/file 4.txt");
    std::fs::write(&edited, b"edited since the backup").unwrap();
    let out = net.cmd(0, &["restore", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "a kept file is not a silent success");
    let r = json_last(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read(&gone).unwrap(), before);
    assert_eq!(r["skipped"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(std::fs::read(&edited).unwrap(), b"edited since the backup");
    net.run(0, &["restore", "--overwrite"]).unwrap();
    assert_ne!(std::fs::read(&edited).unwrap(), b"edited since the backup");

    // With both holders gone, restore is partial: exit code 3 and the files are named.
    net.kill(1);
    net.kill(2);
    let target = tmp.path().join("partial");
    let out = net.cmd(0, &["restore", "--target", target.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not restore"));

    // SIGTERM: clean exit, control socket removed.
    let st = net.stop(0).unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!net.peers[0].home.join("control.sock").exists());
}

#[test]
fn cli_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    let run = |args: &[&str]| std::process::Command::new(EXE).arg("--home").arg(&home).args(args).output().unwrap();
    let out = run(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no daemon is running for") && err.contains("peer daemon"), "{err}");
    assert!(run(&["init"]).status.success());
    let out = run(&["init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    let out = run(&["offer-storage", "lots"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a size"));
    let out = run(&["offer-storage", "900PB"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("free"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run(&["offer-storage", "1GB"]).status.success());
    let mode = std::fs::metadata(home.join("identity.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

fn status(net: &LocalNet, i: usize) -> Value {
    serde_json::from_str(&net.run(i, &["status", "--json"]).unwrap()).unwrap()
}

/// Polls `peer status --json` of daemon `i` until `ok` holds, up to `secs` seconds.
fn wait_status(net: &LocalNet, i: usize, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(net, i);
        if ok(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "condition not met within {secs} s: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn audit_of<'a>(s: &'a Value, peer: &str) -> Option<&'a Value> {
    s["audits"].as_array()?.iter().find(|a| a["peer"] == peer)
}

#[test]
fn audits_catch_a_bit_flipper_and_a_dropper() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("docs");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("part{i}.bin")), noise(i, 9 << 20)).unwrap();
    }
    let configure = |_: usize, c: &mut Config| {
        (c.audit.interval_secs, c.audit.timeout_secs, c.audit.min_score) = (1, 10, 0.99);
        c.contracts.proposal_wait_secs = 10;
    };
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 5, GIB, configure).unwrap();
    net.wait_connected(4, Duration::from_secs(60)).unwrap();
    // Sized so that the claims the providers place on peer 0 stay small: 68 MiB each.
    net.run(0, &["offer-storage", "240MiB"]).unwrap();
    let b = backup(&net, 0, &src, 3);
    assert!(b["packs"].as_u64().unwrap() >= 2, "{b}");
    // The three providers holding copies: one will flip bits, one drop packs, one stay honest.
    let st = status(&net, 0);
    let holders: Vec<String> =
        st["contracts"].as_array().unwrap().iter().map(|c| c["peer"].as_str().unwrap().to_string()).collect();
    assert_eq!(holders.len(), 3, "{st}");
    let home = |id: &String| net.peers.iter().find(|p| &p.peer_id == id).unwrap().home.clone();
    let (flipper, dropper, honest) = (&holders[0], &holders[1], &holders[2]);

    // Honest holders pass.
    wait_status(&net, 0, 60, |s| {
        holders.iter().all(|h| audit_of(s, h).is_some_and(|a| a["passes"].as_u64() >= Some(1)))
    });

    for f in store_files(&home(flipper)) {
        let mut b = std::fs::read(&f).unwrap();
        for i in (0..b.len()).step_by(64 * 1024) {
            b[i] ^= 0x55;
        }
        std::fs::write(&f, b).unwrap();
    }
    for f in store_files(&home(dropper)) {
        std::fs::remove_file(f).unwrap();
    }
    let s = wait_status(&net, 0, 60, |s| {
        [flipper, dropper].iter().all(|h| audit_of(s, h).is_some_and(|a| a["standing"] == "failed"))
    });
    let a = audit_of(&s, flipper).unwrap();
    assert!(a["last_error"].as_str().unwrap().contains("wrong proof"), "{a}");
    let a = audit_of(&s, dropper).unwrap();
    assert!(a["last_error"].as_str().unwrap().contains("NotFound"), "{a}");
    let contracts: Value = serde_json::from_str(&net.run(0, &["contracts", "--json"]).unwrap()).unwrap();
    for c in contracts.as_array().unwrap() {
        let failed = c["peer"] == *flipper || c["peer"] == *dropper;
        assert_eq!(!c["ended"].is_null(), failed, "{c}");
    }
    assert!(net.run(0, &["contracts"]).unwrap().contains("ended"));
    // The failed providers were told, signed: their side of the contract is ended too.
    for bad in [flipper, dropper] {
        let idx = net.peers.iter().position(|p| &p.peer_id == bad).unwrap();
        wait_status(&net, idx, 30, |s| {
            s["contracts"].as_array().is_some_and(|v| v.iter().all(|c| !c["ended"].is_null()))
        });
    }
    assert_eq!(audit_of(&s, honest).unwrap()["standing"], "good", "{s}");

    // The flipper signed its wrong answers: the evidence reaches peer Y, which never dealt
    // with it, and checks on its own; the dropper's missing answers prove nothing.
    let y = (1..5).find(|&i| !holders.contains(&net.peers[i].peer_id)).unwrap();
    let sy = wait_status(&net, y, 60, |s| s["defaulters"].as_array().is_some_and(|d| !d.is_empty()));
    let d = &sy["defaulters"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{sy}");
    assert_eq!(d[0]["peer"], *flipper, "{sy}");
    let ev: peer::protocol::Evidence =
        peer::protocol::from_cbor("evidence", &hex::decode(d[0]["evidence"].as_str().unwrap()).unwrap()).unwrap();
    let (p, c) = peer::protocol::verify_evidence(&ev).unwrap();
    assert_eq!((p.to_string(), c.to_string()), (flipper.clone(), net.peers[0].peer_id.clone()));
    // Y refuses it even as its only choice: with the flipper as its one friend and
    // contracts with friends only, Y gets no provider (the flipper's acceptance is declined).
    net.stop(y);
    let cfg_file = net.peers[y].home.join("config.toml");
    let mut cfg = Config::load(&cfg_file).unwrap();
    cfg.contracts.only_friends = true;
    let faddr = net.peers.iter().find(|p| &p.peer_id == flipper).unwrap().addr.clone();
    cfg.friends = vec![peer::friends::Friend { peer: flipper.clone(), name: "flipper".into(), addrs: vec![faddr] }];
    cfg.save(&cfg_file).unwrap();
    net.restart(y).unwrap();
    wait_status(&net, y, 60, |s| s["connected"].as_array().is_some_and(|c| c.iter().any(|p| p == flipper.as_str())));
    assert_eq!(status(&net, y)["defaulters"][0]["peer"], *flipper, "the evidence is kept across a restart");
    let ydir = tmp.path().join("ydocs");
    std::fs::create_dir_all(&ydir).unwrap();
    std::fs::write(ydir.join("y.bin"), noise(123, 1 << 20)).unwrap();
    let out = net.cmd(y, &["backup", ydir.to_str().unwrap(), "--copies", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only 0 of the 1"), "{err}");
    let ys = status(&net, y);
    let with_flipper =
        ys["contracts"].as_array().unwrap().iter().any(|c| c["peer"] == *flipper && c["role"] == "client");
    assert!(!with_flipper, "{ys}");

    // Every pack still has an honest copy: restore is whole.
    let target = tmp.path().join("back");
    let out = net.run(0, &["restore", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(json_last(&out)["failed_count"], 0);
    assert!(compare_trees(&src, &target.join("docs")).is_empty());

    // A client cancels its last contract while the provider is down: the signed
    // cancellation is sent again until the provider, back up, takes it and reclaims the space.
    // (one that holds packs: repair may have made a new contract not used yet)
    let live = status(&net, 0)["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ended"].is_null() && c["used"].as_u64() > Some(0))
        .cloned()
        .unwrap();
    let idx = net.peers.iter().position(|p| p.peer_id == live["peer"].as_str().unwrap()).unwrap();
    assert!(!store_files(&net.peers[idx].home).is_empty());
    net.stop(idx);
    net.run(0, &["contracts", "--cancel", &live["id"].as_str().unwrap()[..12], "--reason", "moving on"]).unwrap();
    net.restart(idx).unwrap();
    let s = wait_status(&net, idx, 60, |s| s["used_by_others"] == 0);
    assert!(!s["contracts"][0]["ended"].is_null(), "{s}");
    assert!(s["contracts"][0]["end_reason"].as_str().unwrap().contains("moving on"), "{s}");
    assert!(store_files(&net.peers[idx].home).is_empty());
}

fn claim_files(home: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(home.join("claims")).unwrap().flatten() {
        v.extend(std::fs::read_dir(d.path()).unwrap().flatten().map(|f| f.path()));
    }
    v
}

#[test]
fn claims_are_audited_contracts_renew_and_a_free_rider_loses_its_providers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("docs");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise(7, 3 << 20)).unwrap();
    let configure = |_: usize, c: &mut Config| {
        (c.audit.interval_secs, c.audit.min_score) = (1, 0.99);
        (c.contracts.duration_secs, c.contracts.proposal_wait_secs) = (24, 8);
    };
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, configure).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    // 160 MiB offered: each of the two providers is asked for (and grants) 68 MiB, the
    // smallest contract, so each places four whole 16 MiB claim blocks on peer 0.
    net.run(0, &["offer-storage", "160MiB"]).unwrap();
    backup(&net, 0, &src, 2);
    let c0: Value = serde_json::from_str(&net.run(0, &["contracts", "--json"]).unwrap()).unwrap();
    let first_expiry = c0.as_array().unwrap().iter().map(|c| c["expires"].as_u64().unwrap()).max().unwrap();
    assert_eq!(c0.as_array().unwrap().len(), 2, "{c0}");

    // The providers place their claims and audit them: peer 0 passes.
    let block = 16u64 << 20;
    wait_status(&net, 0, 60, |s| s["claims_held"] == 8 * block);
    for i in [1, 2] {
        let s = wait_status(&net, i, 60, |s| {
            audit_of(s, &net.peers[0].peer_id).is_some_and(|a| a["passes"].as_u64() >= Some(2))
        });
        assert_eq!(s["claims_placed"], 4 * block, "{s}");
    }
    assert_eq!(claim_files(&net.peers[0].home).len(), 8);

    // Contracts renew before they expire, and stay live past their first expiry.
    let renewed = wait_status(&net, 0, 60, |s| {
        s["contracts"].as_array().unwrap().iter().all(|c| c["expires"].as_u64() > Some(first_expiry))
    });
    while peer::protocol::now() <= first_expiry + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = peer::protocol::now();
    let s = status(&net, 0);
    for c in s["contracts"].as_array().unwrap() {
        assert!(c["ended"].is_null() && c["expires"].as_u64().unwrap() > now, "{c} {renewed}");
    }

    // Free rider: peer 0 deletes the claims it holds. Its providers' audits catch it, they
    // end its contracts (saying why), and it cannot get new ones from them.
    for f in claim_files(&net.peers[0].home) {
        std::fs::remove_file(f).unwrap();
    }
    for i in [1, 2] {
        let s =
            wait_status(&net, i, 60, |s| audit_of(s, &net.peers[0].peer_id).is_some_and(|a| a["standing"] == "failed"));
        let a = audit_of(&s, &net.peers[0].peer_id).unwrap();
        assert!(a["last_error"].as_str().unwrap().contains("claim block"), "{a}");
    }
    let s = wait_status(&net, 0, 60, |s| s["contracts"].as_array().unwrap().iter().all(|c| !c["ended"].is_null()));
    for c in s["contracts"].as_array().unwrap() {
        assert!(c["end_reason"].as_str().unwrap().contains("failed audits"), "{c}");
    }
    let e = net.run(0, &["backup", src.to_str().unwrap(), "--copies", "1"]).unwrap_err();
    assert!(e.contains("only 0 of the 1"), "{e}");
}

/// A libp2p client that speaks our protocol ids but sends raw bytes.
mod garbage {
    use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{Multiaddr, PeerId, StreamProtocol, gossipsub, noise, tcp, yamux};
    use std::time::Duration;

    #[derive(Clone, Default)]
    pub struct Raw;

    async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T, cap: u64) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(cap).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_close<T: AsyncWrite + Unpin + Send>(io: &mut T, r: &[u8]) -> std::io::Result<()> {
        io.write_all(r).await?;
        io.close().await
    }

    impl request_response::Codec for Raw {
        type Protocol = StreamProtocol;
        type Request = Vec<u8>;
        type Response = Vec<u8>;
        async fn read_request<T: AsyncRead + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> std::io::Result<Vec<u8>> {
            read_all(io, 1 << 20).await
        }
        async fn read_response<T: AsyncRead + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> std::io::Result<Vec<u8>> {
            read_all(io, 64 << 20).await
        }
        async fn write_request<T: AsyncWrite + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            r: Vec<u8>,
        ) -> std::io::Result<()> {
            write_close(io, &r).await
        }
        async fn write_response<T: AsyncWrite + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            r: Vec<u8>,
        ) -> std::io::Result<()> {
            write_close(io, &r).await
        }
    }

    #[derive(NetworkBehaviour)]
    pub struct Junk {
        contract: request_response::Behaviour<Raw>,
        data: request_response::Behaviour<Raw>,
        gossip: gossipsub::Behaviour,
    }

    /// Sends each input to `target` on the protocol it names, from fresh identities (a new one
    /// every `per_identity` inputs, since the target blocks repeat offenders). Returns how many
    /// inputs went out (answered, refused or dropped: all count as tried).
    pub async fn send_all(
        target: PeerId,
        addr: Multiaddr,
        inputs: Vec<(&'static str, Vec<u8>)>,
        per_identity: usize,
    ) -> usize {
        let mut tried = 0;
        for batch in inputs.chunks(per_identity) {
            let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                .unwrap()
                .with_behaviour(|key| {
                    let cfg = request_response::Config::default().with_request_timeout(Duration::from_secs(20));
                    Junk {
                        contract: request_response::Behaviour::new(
                            [(peer::protocol::CONTRACT_PROTOCOL, ProtocolSupport::Full)],
                            cfg.clone(),
                        ),
                        data: request_response::Behaviour::new(
                            [(peer::protocol::DATA_PROTOCOL, ProtocolSupport::Full)],
                            cfg,
                        ),
                        gossip: gossipsub::Behaviour::new(
                            gossipsub::MessageAuthenticity::Signed(key.clone()),
                            gossipsub::ConfigBuilder::default().max_transmit_size(1 << 20).build().unwrap(),
                        )
                        .unwrap(),
                    }
                })
                .unwrap()
                .build();
            let topic = gossipsub::IdentTopic::new("peer/proposals/1");
            swarm.behaviour_mut().gossip.subscribe(&topic).unwrap();
            swarm.dial(addr.clone()).unwrap();
            // Wait for the connection and the target's subscription, so gossip can go out.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while swarm.behaviour().gossip.all_peers().all(|(p, t)| p != &target || t.is_empty()) {
                if tokio::time::timeout_at(deadline, swarm.select_next_some()).await.is_err() {
                    break;
                }
            }
            let mut pending = 0;
            for (proto, bytes) in batch {
                tried += 1;
                match *proto {
                    "contract" => {
                        swarm.behaviour_mut().contract.send_request_with_addresses(
                            &target,
                            bytes.clone(),
                            vec![addr.clone()],
                        );
                        pending += 1;
                    }
                    "data" => {
                        swarm.behaviour_mut().data.send_request_with_addresses(
                            &target,
                            bytes.clone(),
                            vec![addr.clone()],
                        );
                        pending += 1;
                    }
                    _ => {
                        let _ = swarm.behaviour_mut().gossip.publish(topic.clone(), bytes.clone());
                    }
                }
            }
            // Drive the swarm until every request got an answer or failed.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while pending > 0 {
                let Ok(ev) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else { break };
                use request_response::Event;
                match ev {
                    SwarmEvent::Behaviour(JunkEvent::Contract(
                        Event::Message { .. } | Event::OutboundFailure { .. },
                    ))
                    | SwarmEvent::Behaviour(JunkEvent::Data(Event::Message { .. } | Event::OutboundFailure { .. })) => {
                        pending -= 1
                    }
                    _ => {}
                }
            }
        }
        tried
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn garbage_from_a_raw_libp2p_client_hurts_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("keep");
    make_tree(&src, 100);
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, |_, _| {}).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    backup(&net, 0, &src, 2);

    // Malformed, truncated, oversized, deeply nested and random CBOR, and junk gossip.
    let golden = include_str!("../src/protocol/golden.txt");
    let vectors: Vec<Vec<u8>> =
        golden.lines().filter_map(|l| l.split(' ').nth(1)).map(|h| hex::decode(h).unwrap()).collect();
    let mut inputs: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for (k, v) in vectors.iter().enumerate() {
        for proto in ["contract", "data", "gossip"] {
            inputs.push((proto, v[..v.len() / 2].to_vec())); // truncated
            inputs.push((proto, noise(k as u64 * 7 + proto.len() as u64, 1 + (k * 997) % 5000))); // random
        }
        inputs.push(("data", v.clone())); // valid CBOR of the wrong message or a forged request
    }
    inputs.push(("data", vec![0x81; 100_000])); // nesting far past any decoder's depth
    inputs.push(("contract", vec![0x81; 100_000]));
    inputs.push(("contract", vec![0u8; 70 * 1024])); // over the contract cap
    inputs.push(("data", vec![0x5a, 0xff, 0xff, 0xff, 0xff])); // a 4 GiB byte string announced, none sent
    inputs.push(("data", vec![0u8; 36 << 20])); // over the data cap
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut total = 0;
    for target in 0..3 {
        let peer: libp2p::PeerId = net.peers[target].peer_id.parse().unwrap();
        let addr: libp2p::Multiaddr = net.peers[target].addr.parse().unwrap();
        total += rt.block_on(garbage::send_all(peer, addr, inputs.clone(), 12));
    }
    println!("sent {total} bad inputs to 3 daemons");
    assert!(total >= 3 * inputs.len());
    // Repeat offenders were blocked.
    let logs: String =
        net.peers.iter().map(|p| std::fs::read_to_string(p.home.join("daemon.log")).unwrap_or_default()).collect();
    assert!(logs.contains("malformed inputs"), "no peer was blocked: {}", &logs[logs.len().saturating_sub(3000)..]);

    // Everyone still serves, memory stayed bounded, and nothing stored is lost.
    for i in 0..3 {
        let rss = vm_rss_kib(net.pid(i).unwrap());
        assert!(rss > 0 && rss < 1024 * 1024, "daemon {i} uses {rss} KiB");
        status(&net, i);
    }
    let target = tmp.path().join("back");
    let out = net.run(0, &["restore", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(json_last(&out)["failed_count"], 0);
    assert!(compare_trees(&src, &target.join("keep")).is_empty());
    let again = backup(&net, 0, &src, 2);
    assert_eq!(again["files_read"], 0, "{again}");
}

#[test]
fn eight_peers_repair_lost_copies_from_the_network_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("docs");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("part{i}.bin")), noise(20 + i, 2 << 20)).unwrap();
    }
    let configure = fast_repair;
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 8, GIB, configure).unwrap();
    net.wait_connected(7, Duration::from_secs(60)).unwrap();
    // 210 MiB offered: three providers grant 68 MiB each (small claims on peer 0).
    net.run(0, &["offer-storage", "210MiB"]).unwrap();
    let b = backup(&net, 0, &src, 3);
    assert!(b["packs"].as_u64().unwrap() >= 4, "{b}");
    let holders: Vec<String> = status(&net, 0)["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["peer"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(holders.len(), 3);
    let ids: Vec<String> = net.peers.iter().map(|p| p.peer_id.clone()).collect();
    let idx = |id: &str| ids.iter().position(|p| p == id).unwrap();
    let full = |s: &Value| {
        let h = &s["snapshots"][0];
        h["packs"].as_u64() > Some(0) && h["full"] == h["packs"] && h["reduced"] == 0 && h["zero"] == 0
    };
    assert!(full(&status(&net, 0)), "{}", status(&net, 0));

    // Two holders vanish: past the grace their contracts end, and repair copies every pack
    // from the survivor to two new providers.
    net.stop(idx(&holders[0]));
    net.stop(idx(&holders[1]));
    let s = wait_status(&net, 0, 120, |s| {
        let live: Vec<&Value> = s["contracts"].as_array().unwrap().iter().filter(|c| c["ended"].is_null()).collect();
        let gone = |h: &String| live.iter().all(|c| c["peer"] != h.as_str());
        full(s) && live.len() == 3 && gone(&holders[0]) && gone(&holders[1])
    });
    let new: Vec<String> = s["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ended"].is_null() && !holders.contains(&c["peer"].as_str().unwrap().to_string()))
        .map(|c| c["peer"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(new.len(), 2, "{s}");
    for gone in &holders[..2] {
        let c = s["contracts"].as_array().unwrap().iter().find(|c| c["peer"] == gone.as_str()).unwrap();
        assert!(c["end_reason"].as_str().unwrap().contains("unreachable"), "{c}");
    }
    for n in &new {
        assert!(!store_files(&net.peers[idx(n)].home).is_empty(), "new holder {n} holds nothing");
    }

    // The last original holder and one of the new ones go too: one copy is left, and it
    // is enough for a byte-identical restore.
    net.stop(idx(&holders[2]));
    net.stop(idx(&new[0]));
    let target = tmp.path().join("back");
    let out = net.run(0, &["restore", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(json_last(&out)["failed_count"], 0, "{out}");
    assert!(compare_trees(&src, &target.join("docs")).is_empty());
}

/// Every file (not directory) under `root`, as relative paths.
fn file_list(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn excludes_peerignore_and_partial_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("docs");
    for d in ["a/cache", "b"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    for (f, body) in [
        ("a/x.txt", "x"),
        ("a/y.tmp", "y"),
        ("a/keep.tmp", "keep"),
        ("a/cache/z", "z"),
        ("b/big.iso", "iso"),
        ("b/c.txt", "c"),
        (".peerignore", "*.tmp\ncache/\n"),
        ("a/.peerignore", "!keep.tmp\n"),
    ] {
        std::fs::write(src.join(f), body).unwrap();
    }
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, |_, _| {}).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    let s = src.to_str().unwrap();
    let e = net.run(0, &["backup", s, "--copies", "2", "--exclude", "[z-a]"]).unwrap_err();
    assert!(e.contains("bad --exclude pattern '[z-a]'"), "{e}");
    net.run(0, &["backup", s, "--copies", "2", "--exclude", "*.iso"]).unwrap();

    // The deeper .peerignore re-includes keep.tmp; cache/, *.tmp and *.iso stay out.
    let all = tmp.path().join("all");
    net.run(0, &["restore", "--target", all.to_str().unwrap()]).unwrap();
    assert_eq!(file_list(&all.join("docs")), [".peerignore", "a/.peerignore", "a/keep.tmp", "a/x.txt", "b/c.txt"]);

    // Partial restore: one file by its path from the snapshot root, one directory by its
    // original absolute path.
    let part = tmp.path().join("part");
    let b = src.join("b");
    net.run(
        0,
        &[
            "restore",
            "--target",
            part.to_str().unwrap(),
            "--include",
            "docs/a/keep.tmp",
            "--include",
            b.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(file_list(&part.join("docs")), ["a/keep.tmp", "b/c.txt"]);
    assert_eq!(std::fs::read_to_string(part.join("docs/a/keep.tmp")).unwrap(), "keep");

    // An --include that is in no snapshot is an error, not an empty success.
    let missing = src.join("nowhere");
    let args = ["restore", "--target", part.to_str().unwrap(), "--include", missing.to_str().unwrap()];
    let out = net.cmd(0, &args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not in snapshot"), "{err}");

    // What a restore killed midway left behind is cleared by the next one.
    let stale = all.join("docs/b/.peer-restore-3-deadbeef.tmp");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    net.run(0, &["restore", "--target", all.to_str().unwrap()]).unwrap();
    assert!(!stale.exists());
    assert_eq!(file_list(&all.join("docs")), [".peerignore", "a/.peerignore", "a/keep.tmp", "a/x.txt", "b/c.txt"]);
}

fn dir_bytes(files: &[PathBuf]) -> u64 {
    files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
}

#[test]
fn forget_prune_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("docs");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("old.bin"), noise(31, 3 << 20)).unwrap();
    let configure = |_: usize, c: &mut Config| c.backup.pack_size = 1 << 20;
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, configure).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    backup(&net, 0, &src, 2);
    std::fs::remove_file(src.join("old.bin")).unwrap();
    std::fs::write(src.join("new.bin"), noise(32, 3 << 20)).unwrap();
    backup(&net, 0, &src, 2);
    let holder_files = || -> Vec<PathBuf> { (1..3).flat_map(|i| store_files(&net.peers[i].home)).collect() };

    // Every copy is proved held, and every pack downloads and verifies.
    let c = json_last(&net.run(0, &["check", "--read-data", "--json"]).unwrap());
    assert_eq!(c["snapshots"], 2);
    assert_eq!(c["copies_ok"], c["copies_checked"], "{c}");
    assert_eq!(c["packs_read"], c["packs"], "{c}");

    // The plan comes first; a dry run changes nothing.
    let f = json_last(&net.run(0, &["forget", "--keep-last", "1", "--dry-run", "--json"]).unwrap());
    assert_eq!((f["keep"].as_array().unwrap().len(), f["remove"].as_array().unwrap().len()), (1, 1), "{f}");
    let e = net.run(0, &["forget"]).unwrap_err();
    assert!(e.contains("--keep-last"), "{e}");
    let snaps = |net: &LocalNet| -> Vec<Value> {
        serde_json::from_str::<Value>(&net.run(0, &["snapshots", "--json"]).unwrap())
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(snaps(&net).len(), 2);
    net.run(0, &["forget", "--keep-last", "1"]).unwrap();
    assert_eq!(snaps(&net).len(), 1);

    let before = dir_bytes(&holder_files());
    let plan = json_last(&net.run(0, &["prune", "--dry-run", "--json"]).unwrap());
    assert!(plan["packs_unused"].as_u64() >= Some(3), "{plan}");
    assert_eq!(dir_bytes(&holder_files()), before);
    let st = status(&net, 0);
    let used_before: u64 = st["held_at_others"].as_u64().unwrap();
    // Status shows what no snapshot needs any more (both copies), until prune frees it.
    assert_eq!(st["unreferenced_at_others"].as_u64(), Some(2 * plan["bytes_unused"].as_u64().unwrap()), "{st}");
    let p = json_last(&net.run(0, &["prune", "--json"]).unwrap());
    let freed = p["bytes_freed"].as_u64().unwrap();
    assert_eq!(freed, 2 * plan["bytes_unused"].as_u64().unwrap(), "{p}");
    assert_eq!(dir_bytes(&holder_files()), before - freed, "the holders' stores shrink by what prune freed");
    let st = status(&net, 0);
    assert_eq!(st["held_at_others"].as_u64().unwrap(), used_before - freed);
    assert_eq!(st["unreferenced_at_others"], 0, "{st}");
    assert_eq!(json_last(&net.run(0, &["prune", "--dry-run", "--json"]).unwrap())["packs_unused"], 0);

    // What is left restores, and checks clean.
    let target = tmp.path().join("back");
    net.run(0, &["restore", "--target", target.to_str().unwrap()]).unwrap();
    assert!(compare_trees(&src, &target.join("docs")).is_empty());
    net.run(0, &["check"]).unwrap();

    // A holder that lost a pack is named by check.
    std::fs::remove_file(&store_files(&net.peers[1].home)[0]).unwrap();
    let e = net.run(0, &["check"]).unwrap_err();
    assert!(e.contains("NotFound") && e.contains(&net.peers[1].peer_id), "{e}");
}

#[test]
fn a_lost_home_comes_back_from_the_recovery_phrase_alone() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    make_tree(&src, 60);
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 4, GIB, |_, _| {}).unwrap();
    net.wait_connected(3, Duration::from_secs(60)).unwrap();
    backup(&net, 0, &src, 2);
    // Peer 0 also holds packs for peer 1 (three copies among the three others).
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x.bin"), noise(77, 300_000)).unwrap();
    backup(&net, 1, &other, 3);
    let phrase = net.run(0, &["key", "export", "--mnemonic"]).unwrap();
    assert_eq!(phrase.split_whitespace().count(), 24);
    let before = status(&net, 0);

    // The laptop dies: the daemon is killed and its home is gone.
    net.kill(0);
    let home = net.peers[0].home.clone();
    std::fs::remove_dir_all(&home).unwrap();

    // A wrong phrase is refused; the right one gives back the same PeerId.
    let boot = net.peers[1].addr.clone();
    let init = |words: &str| {
        let mut c =
            net.cmd(0, &["init", "--recover", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", &boot]);
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(words.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let mut words: Vec<&str> = phrase.split_whitespace().collect();
    words.swap(3, 4);
    let bad = init(&words.join(" "));
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("recovery phrase"));
    let _ = std::fs::remove_dir_all(&home);
    let ok = init(&phrase);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), net.peers[0].peer_id);

    // The daemon finds its head through the DHT and its providers, and everything is back.
    net.restart(0).unwrap();
    let s = wait_status(&net, 0, 60, |s| s["recovering"] == false);
    assert_eq!(s["snapshots"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["offered"], before["offered"]);
    // The index came back from the index packs the head names, not from the head itself.
    assert!(before["index_packs"].as_u64() > Some(0), "{before}");
    assert_eq!(s["index_packs"], before["index_packs"], "{s}");
    let live = |s: &Value| -> Vec<String> {
        let mut v: Vec<String> = s["contracts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ended"].is_null() && c["role"] == "client")
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(live(&s), live(&before), "the recovered peer resumes its contracts");
    // The packs it held for peer 1 were on the lost disk: it says so, signed, and peer 1
    // ends that contract without holding it against peer 0.
    let p0 = net.peers[0].peer_id.clone();
    let s1 = wait_status(&net, 1, 30, |s| {
        s["contracts"].as_array().unwrap().iter().any(|c| c["peer"] == p0.as_str() && !c["ended"].is_null())
    });
    let c =
        s1["contracts"].as_array().unwrap().iter().find(|c| c["peer"] == p0.as_str() && !c["ended"].is_null()).unwrap();
    assert!(c["end_reason"].as_str().unwrap().contains("lost its disk"), "{c}");
    assert!(audit_of(&s1, &p0).is_none_or(|a| a["standing"] == "good"), "{s1}");
    let target = tmp.path().join("back");
    let out = net.run(0, &["restore", "latest", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(json_last(&out)["failed_count"], 0, "{out}");
    assert!(compare_trees(&src, &target.join("photos")).is_empty());
    // And it backs up again, on top of what it recovered (dedup: nothing new to send).
    let b = backup(&net, 0, &src, 2);
    assert_eq!(b["files_read"], 0, "{b}");
}

/// Pack files at peers `from..` (every copy counted).
fn held_packs(net: &LocalNet, from: usize) -> usize {
    (from..net.peers.len()).map(|i| store_files(&net.peers[i].home).len()).sum()
}

/// Waits until `cond` holds, checking it once the directories `dirs` are watched and
/// again on every file event under them (inotify); panics after 60 s without it.
fn wait_for_files(dirs: &[PathBuf], what: &str, cond: &dyn Fn() -> bool) {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).unwrap();
    for d in dirs {
        watcher.watch(d, notify::RecursiveMode::Recursive).unwrap_or_else(|e| panic!("watch {}: {e}", d.display()));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) => drop(ev.unwrap_or_else(|e| panic!("watching for {what}: {e}"))),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[test]
fn kill_9_of_client_and_provider_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("docs");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..24 {
        std::fs::write(src.join(format!("f{i:02}.bin")), noise(100 + i, 1 << 20)).unwrap();
    }
    let configure = |_: usize, c: &mut Config| (c.backup.pack_size, c.backup.upload_concurrency) = (1 << 20, 2);
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 4, GIB, configure).unwrap();
    net.wait_connected(3, Duration::from_secs(60)).unwrap();
    let s = src.to_str().unwrap().to_string();
    // The providers' stores, watched: each kill point is found on the file event that
    // reaches it.
    let stores: Vec<PathBuf> = net.peers[1..].iter().map(|p| p.home.join("store")).collect();
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| wait_for_files(&stores, what, cond);

    // The client daemon is killed (SIGKILL) mid-backup at several points. After each, no
    // snapshot points at missing data, and the next run goes on from what was acknowledged.
    let kill_points = [4, 12, 20];
    for (k, &at) in kill_points.iter().enumerate() {
        let mut cli = net
            .cmd(0, &["backup", &s, "--copies", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = held_packs(&net, 1);
        wait_for("uploads", &|| held_packs(&net, 1) >= start + at);
        net.kill(0);
        let _ = cli.wait();
        net.restart(0).unwrap();
        let c = json_last(&net.run(0, &["check", "--json"]).unwrap_or_else(|e| panic!("check after kill {k}: {e}")));
        assert_eq!(c["problems"].as_array().unwrap().len(), 0, "{c}");
        assert_eq!(c["snapshots"], 0, "a killed backup recorded no snapshot: {c}");
    }
    let b = backup(&net, 0, &src, 2);
    let c = json_last(&net.run(0, &["check", "--json"]).unwrap());
    assert_eq!(c["copies_ok"], c["copies_checked"], "{c}");
    // Only packs in flight at a kill (upload_concurrency × copies each time, plus one pack
    // of slack) can be orphans at the holders. Had acknowledged packs been sent again,
    // every copy held before each kill (4 + 12 + 20) would be an orphan.
    let needed = c["packs"].as_u64().unwrap() as usize;
    let orphans = held_packs(&net, 1) - 2 * needed;
    assert!(orphans <= kill_points.len() * (2 + 1) * 2, "{orphans} orphan copies; backup {b}");
    println!("client killed at {} points; {orphans} orphan pack copies at the holders", kill_points.len());

    // A provider is killed (SIGKILL) while it receives packs: after its restart no partial
    // pack is kept, counted or served.
    let more = tmp.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    for i in 0..24 {
        std::fs::write(more.join(format!("g{i:02}.bin")), noise(200 + i, 1 << 20)).unwrap();
    }
    let holders: Vec<usize> = status(&net, 0)["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ended"].is_null())
        .map(|c| net.peers.iter().position(|p| p.peer_id == c["peer"].as_str().unwrap()).unwrap())
        .collect();
    let victim = holders[0];
    let vhome = net.peers[victim].home.clone();
    let partial = || {
        std::fs::read_dir(vhome.join("store")).unwrap().flatten().any(|d| {
            std::fs::read_dir(d.path()).unwrap().flatten().any(|f| f.file_name().to_string_lossy().starts_with(".tmp-"))
        })
    };
    let before = store_files(&vhome).len();
    let mut cli = net
        .cmd(0, &["backup", more.to_str().unwrap(), "--copies", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a pack being written", &|| partial() || store_files(&vhome).len() >= before + 8);
    let caught_tmp = partial();
    net.kill(victim);
    let _ = cli.wait();
    net.restart(victim).unwrap();
    assert!(!partial(), "a temporary file survived the restart");
    let files = store_files(&vhome);
    for f in &files {
        let name: peer::id::PackId = f.file_name().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(peer::repo::merkle::root(&std::fs::read(f).unwrap()), name, "{} is not whole", f.display());
    }
    let on_disk: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert_eq!(status(&net, victim)["used_by_others"].as_u64().unwrap(), on_disk);
    println!("provider killed while writing a pack: {caught_tmp} (else right after one)");
    // The backup goes through on a second try, and everything restores.
    backup(&net, 0, &more, 2);
    let target = tmp.path().join("back");
    net.run(0, &["restore", "--target", target.to_str().unwrap()]).unwrap();
    assert!(compare_trees(&more, &target.join("more")).is_empty());
}

#[test]
fn a_full_provider_refuses_clearly_keeps_its_packs_and_the_client_goes_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (d, seed) in [(&a, 300), (&b, 400)] {
        std::fs::create_dir_all(d).unwrap();
        for i in 0..4 {
            std::fs::write(d.join(format!("f{i}.bin")), noise(seed + i, 1 << 20)).unwrap();
        }
    }
    let configure = |_: usize, c: &mut Config| c.contracts.proposal_wait_secs = 5;
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 4, GIB, configure).unwrap();
    net.wait_connected(3, Duration::from_secs(60)).unwrap();
    // Peer 3 offers nothing for now, so the two first providers are peers 1 and 2.
    net.run(3, &["offer-storage", "0"]).unwrap();
    backup(&net, 0, &a, 2);
    let holders: Vec<usize> = status(&net, 0)["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| net.peers.iter().position(|p| p.peer_id == c["peer"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(holders.len(), 2);
    let full = holders[0];
    let kept = store_files(&net.peers[full].home);

    // Its disk fills up (simulated by a reserve larger than any disk).
    net.stop(full);
    let file = net.peers[full].home.join("config.toml");
    let mut cfg = Config::load(&file).unwrap();
    cfg.provider.min_free_bytes = 1 << 50;
    cfg.save(&file).unwrap();
    net.restart(full).unwrap();
    net.wait_connected(3, Duration::from_secs(60)).unwrap();

    // With nobody else to go to, the backup fails and says why.
    let e = net.run(0, &["backup", b.to_str().unwrap(), "--copies", "2"]).unwrap_err();
    assert!(e.contains("not enough free disk at the provider"), "{e}");
    // Once another peer offers room, the packs go there instead.
    net.run(3, &["offer-storage", "1GiB"]).unwrap();
    backup(&net, 0, &b, 2);
    assert!(!store_files(&net.peers[3].home).is_empty(), "the new provider holds the packs");
    assert_eq!(store_files(&net.peers[full].home), kept, "the full provider's packs are untouched");
    for f in &kept {
        let name: peer::id::PackId = f.file_name().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(peer::repo::merkle::root(&std::fs::read(f).unwrap()), name);
    }
    let snaps: Value = serde_json::from_str(&net.run(0, &["snapshots", "--json"]).unwrap()).unwrap();
    for (k, (src, name)) in [(&a, "a"), (&b, "b")].into_iter().enumerate() {
        let target = tmp.path().join(format!("back-{name}"));
        let id = snaps[k]["id"].as_str().unwrap();
        net.run(0, &["restore", id, "--target", target.to_str().unwrap()]).unwrap();
        assert!(compare_trees(src, &target.join(name)).is_empty());
    }
}

#[test]
fn erasure_4_plus_2_on_8_peers_survives_two_losses_and_rebuilds_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("docs");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("part{i}.bin")), noise(500 + i, 2 << 20)).unwrap();
    }
    let configure = fast_repair;
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 8, GIB, configure).unwrap();
    net.wait_connected(7, Duration::from_secs(60)).unwrap();
    // Six providers at the smallest contract each (68 MiB), so the claims stay small.
    net.run(0, &["offer-storage", "408MiB"]).unwrap();
    let out = net.run(0, &["backup", src.to_str().unwrap(), "--erasure", "4+2", "--json"]).unwrap();
    let b = json_last(&out);
    // 1.5× the packs' size is stored, not 2× or 3×.
    let (new, up) = (b["bytes_new"].as_u64().unwrap() as f64, b["bytes_uploaded"].as_u64().unwrap() as f64);
    assert!(up < 1.6 * new && up > 1.4 * new, "{b}");
    let s = status(&net, 0);
    assert_eq!(s["durability"][0]["scheme"], "erasure 4+2", "{s}");
    let h = &s["snapshots"][0];
    assert!(h["full"] == h["packs"] && h["packs"].as_u64() > Some(0), "{s}");
    let holders: Vec<usize> = s["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| net.peers.iter().position(|p| p.peer_id == c["peer"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(holders.len(), 6, "one shard of each pack per provider: {s}");
    // The snapshot's packs and the index packs that list them.
    let packs = (h["packs"].as_u64().unwrap() + s["index_packs"].as_u64().unwrap()) as usize;
    for &i in &holders {
        assert_eq!(store_files(&net.peers[i].home).len(), packs, "peer {i} holds one shard of each pack");
    }

    // Any two shard holders vanish: the other four give every pack back.
    net.stop(holders[1]);
    net.stop(holders[4]);
    let target = tmp.path().join("back");
    let out = net.run(0, &["restore", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(json_last(&out)["failed_count"], 0, "{out}");
    assert!(compare_trees(&src, &target.join("docs")).is_empty());

    // Past the grace, repair rebuilds lost shards from any four onto the one peer left.
    let spare = (1..8).find(|i| !holders.contains(i)).unwrap();
    let gone = [net.peers[holders[1]].peer_id.clone(), net.peers[holders[4]].peer_id.clone()];
    let s = wait_status(&net, 0, 120, |s| {
        store_files(&net.peers[spare].home).len() == packs
            && s["contracts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| gone.contains(&c["peer"].as_str().unwrap().to_string()))
                .all(|c| !c["ended"].is_null())
    });
    // Five of six shards now: reduced, none lost, and each remaining shard verifies.
    let h = &s["snapshots"][0];
    assert!(h["zero"] == 0 && h["reduced"] == h["packs"], "{s}");
    let c = json_last(&net.run(0, &["check", "--read-data", "--json"]).unwrap());
    assert_eq!(c["copies_checked"].as_u64(), Some(5 * packs as u64), "{c}");
    assert_eq!(c["packs_read"], c["packs"], "{c}");
}

#[test]
fn limit_upload_holds_the_backup_under_its_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("noise.bin"), noise(7, 6 << 20)).unwrap();
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 2, GIB, |_, _| {}).unwrap();
    net.wait_connected(1, Duration::from_secs(60)).unwrap();
    let limit_kib = 1024u64;
    let started = std::time::Instant::now();
    let out = net
        .run(0, &["backup", src.to_str().unwrap(), "--copies", "1", "--json", "--limit-upload", &limit_kib.to_string()])
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let summary = json_last(&out);
    // What reached the provider's disk is what went over the wire (plus framing).
    let stored = dir_bytes(&store_files(&net.peers[1].home));
    assert!(stored >= 6 << 20, "only {stored} bytes reached the provider");
    // The limit lets at most a 100 ms burst and one 16 KiB piece through ahead of the rate.
    let allowed = (limit_kib * 1024) as f64 * (secs + 0.1) + 16384.0;
    assert!(
        (stored as f64) <= allowed,
        "{stored} bytes uploaded in {secs:.1} s: over {limit_kib} KiB/s (summary {summary})"
    );
}

/// SIGTERM while a restore runs: the daemon lets the restore finish (it is work in
/// flight, with a 10 s grace) before it stops, so the command succeeds and the tree is
/// whole; the daemon exits cleanly and starts again on the same home.
#[test]
fn sigterm_lets_a_restore_in_flight_finish() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("noise.bin"), noise(23, 6 << 20)).unwrap();
    // 1 MiB packs: the restore's progress moves pack by pack.
    let configure = |i: usize, c: &mut Config| {
        if i == 0 {
            c.backup.pack_size = 1 << 20;
        }
    };
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 2, GIB, configure).unwrap();
    net.wait_connected(1, Duration::from_secs(60)).unwrap();
    net.run(0, &["backup", src.to_str().unwrap(), "--copies", "1", "--json"]).unwrap();
    let target = tmp.path().join("back");
    // 6 MiB at 1 MiB/s: about 6 s, inside the grace.
    let mut restore = net
        .cmd(0, &["restore", "--target", target.to_str().unwrap(), "--json", "--limit-download", "1024"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(restore.stdout.take().unwrap()).lines();
    // Stop the daemon once the restore is under way, not done.
    loop {
        let line = lines.next().expect("the restore ended before it reported progress").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["message_type"] == "status" && v["bytes_done"].as_u64() > Some(0) {
            assert!(v["bytes_done"].as_u64() < v["bytes_total"].as_u64(), "restore already done: {line}");
            break;
        }
    }
    let stopped = net.stop(0).unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let ended = restore.wait().unwrap();
    assert!(ended.success(), "the restore failed when its daemon stopped: {rest:?}");
    let summary: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(summary["failed_count"], 0, "{summary}");
    assert!(compare_trees(&src, &target.join("data")).is_empty());
    assert!(stopped.success(), "{stopped:?}");
    assert!(!net.peers[0].home.join("control.sock").exists());
    // Nothing left to clean up: the same home starts and has its snapshot.
    net.restart(0).unwrap();
    let snaps: Value = serde_json::from_str(&net.run(0, &["snapshots", "--json"]).unwrap()).unwrap();
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");
}

/// Peer 0 restores its latest snapshot of `src` (named `data`) under `target`: nothing
/// fails and the tree is identical.
fn restores_identically(net: &LocalNet, src: &Path, target: &Path) {
    let out = net.run(0, &["restore", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(json_last(&out)["failed_count"], 0, "{out}");
    assert!(compare_trees(src, &target.join("data")).is_empty());
}

#[test]
fn a_backup_spreads_its_packs_over_more_providers_than_its_copies_need() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("f{i}.bin")), noise(90 + i, 4 << 20)).unwrap();
    }
    // Peer 0 spreads over three times the one holder each pack needs, in 1 MiB packs.
    let configure = |i: usize, c: &mut Config| {
        if i == 0 {
            c.contracts.spread = 3;
            c.backup.pack_size = 1 << 20;
        }
    };
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 4, GIB, configure).unwrap();
    net.wait_connected(3, Duration::from_secs(60)).unwrap();
    // A backup that lasts about 6 s (12 MiB at 2 MiB/s), while the other two providers are
    // sought: longer than one re-proposal (REPROPOSE_SECS = 3), as a proposal that no
    // provider accepted in time is sent again after it.
    let out =
        net.run(0, &["backup", src.to_str().unwrap(), "--copies", "1", "--json", "--limit-upload", "2048"]).unwrap();
    assert!(json_last(&out)["packs"].as_u64() >= Some(6), "{out}");
    let s = status(&net, 0);
    let providers: std::collections::HashSet<&str> = s["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "client")
        .map(|c| c["peer"].as_str().unwrap())
        .collect();
    assert_eq!(providers.len(), 3, "contracts with all three providers: {s}");
    // Packs went to every provider, not only the first.
    for p in 1..4 {
        let held = store_files(&net.peers[p].home).len();
        assert!(held >= 1, "provider {p} holds no pack: {s}");
    }
    restores_identically(&net, &src, &tmp.path().join("back"));
}

#[test]
fn a_backup_whose_head_cannot_be_published_says_so_and_it_is_published_later() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("notes");
    make_tree(&src, 20);
    let configure = |_: usize, c: &mut Config| c.audit.interval_secs = 2;
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, configure).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    let first = backup(&net, 0, &src, 2);
    assert!(first["head"].as_u64() > Some(0) && first["head_error"].is_null(), "{first}");

    // Both holders' head files become directories: a head cannot be written there, while
    // packs still can.
    let heads: Vec<PathBuf> = (1..3)
        .map(|i| std::fs::read_dir(net.peers[i].home.join("store")).unwrap().next().unwrap().unwrap().path())
        .map(|d| d.join("HEAD"))
        .collect();
    for h in &heads {
        std::fs::remove_file(h).unwrap();
        std::fs::create_dir(h).unwrap();
    }
    std::fs::write(src.join("new.txt"), b"a change").unwrap();
    let out = net.cmd(0, &["backup", src.to_str().unwrap(), "--copies", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("not yet published for recovery") && err.contains("no provider took head"), "{err}");
    let s = status(&net, 0);
    assert_eq!(s["head"], first["head"], "{s}");
    assert!(s["head_error"].as_str().is_some_and(|e| e.contains("no provider took head")), "{s}");
    assert_eq!(s["snapshots"].as_array().unwrap().len(), 2, "the snapshot itself is stored: {s}");

    // Once the holders can write again, an audit round publishes the new state.
    for h in &heads {
        std::fs::remove_dir(h).unwrap();
    }
    let s = wait_status(&net, 0, 60, |s| s["head_error"].is_null());
    assert!(s["head"].as_u64() > first["head"].as_u64(), "{s}");
    assert!(heads.iter().all(|h| h.is_file()));
}

#[test]
fn contracts_that_are_full_grow_with_new_ones_at_the_same_providers() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    for (dir, seed) in [(&first, 600), (&second, 700)] {
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join(format!("f{i}.bin")), noise(seed + i, 16 << 20)).unwrap();
        }
    }
    let configure = |_: usize, c: &mut Config| c.contracts.proposal_wait_secs = 10;
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, configure).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    // 400 MiB offered: each of the two providers grants half of 200 MiB, 100 MiB, and the
    // first backup's 80 MiB leaves less than a largest pack in each.
    net.run(0, &["offer-storage", "400MiB"]).unwrap();
    backup(&net, 0, &first, 2);
    let full = status(&net, 0);
    let client_contracts = |s: &Value| -> Vec<Value> {
        s["contracts"].as_array().unwrap().iter().filter(|c| c["role"] == "client").cloned().collect()
    };
    assert_eq!(client_contracts(&full).len(), 2, "{full}");
    // Before, both providers refused a second contract, and this backup failed.
    let b = backup(&net, 0, &second, 2);
    assert!(b["packs"].as_u64() > Some(0), "{b}");
    let s = status(&net, 0);
    let contracts = client_contracts(&s);
    assert_eq!(contracts.len(), 4, "a second contract with each provider: {s}");
    let peers: std::collections::HashSet<&str> = contracts.iter().map(|c| c["peer"].as_str().unwrap()).collect();
    assert_eq!(peers.len(), 2, "{s}");
    let target = tmp.path().join("back");
    net.run(0, &["restore", "--target", target.to_str().unwrap()]).unwrap();
    assert!(compare_trees(&second, &target.join("second")).is_empty());
}

#[test]
fn damaged_local_state_and_a_missing_config_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    let run = |args: &[&str]| std::process::Command::new(EXE).arg("--home").arg(&home).args(args).output().unwrap();
    assert!(run(&["init", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]).status.success());
    assert!(run(&["offer-storage", "1GiB"]).status.success());
    let state = home.join("state.redb");
    let good = std::fs::read(&state).unwrap();
    let refused = |what: &str| {
        for args in [&["daemon"][..], &["offer-storage", "2GiB"][..]] {
            let out = run(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what}, {args:?}: {err}");
            assert!(err.contains("is damaged") && err.contains("init --recover"), "{what}, {args:?}: {err}");
            assert!(!err.contains("panicked"), "{what}, {args:?}: {err}");
        }
    };
    std::fs::write(&state, b"").unwrap();
    refused("an empty state");
    std::fs::write(&state, &good[..3000]).unwrap();
    refused("a truncated state");
    std::fs::write(&state, noise(9, 8192)).unwrap();
    refused("a state of noise");
    assert_eq!(std::fs::read(&state).unwrap(), noise(9, 8192), "a damaged state is never replaced");

    // A missing or empty config is not silently replaced by defaults.
    std::fs::write(&state, &good).unwrap();
    let config = home.join("config.toml");
    for damage in [None, Some("")] {
        match damage {
            None => std::fs::remove_file(&config).unwrap(),
            Some(text) => std::fs::write(&config, text).unwrap(),
        }
        let out = run(&["daemon"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("config.toml is missing or empty"), "{err}");
    }
}

#[test]
fn a_restore_brings_back_hard_links_xattrs_owners_sparse_files_and_fifos() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(nix::unistd::geteuid().is_root(), "this test restores owners: run it as root (CI does)");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("home");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/a"), noise(41, 100_000)).unwrap();
    std::fs::hard_link(src.join("dir/a"), src.join("b")).unwrap();
    std::fs::hard_link(src.join("dir/a"), src.join("dir/c")).unwrap();
    xattr::set(src.join("dir/a"), "user.comment", b"tagged\0bytes").unwrap();
    xattr::set(src.join("dir"), "user.dir", b"on a directory").unwrap();
    std::fs::write(src.join("owned"), b"theirs").unwrap();
    std::os::unix::fs::lchown(src.join("owned"), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::lchown(src.join("dir"), Some(1234), Some(4321)).unwrap();
    // 64 MiB apparent, 512 KiB of data in the middle: sparse.
    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(42, 512 << 10), 32 << 20).unwrap();
    drop(sparse);
    nix::unistd::mkfifo(&src.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();

    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, |_, _| {}).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    // A socket is no error: the backup is whole (exit 0).
    let b = backup(&net, 0, &src, 2);
    assert_eq!(b["error_count"], 0, "{b}");
    let target = tmp.path().join("back");
    net.run(0, &["restore", "--target", target.to_str().unwrap()]).unwrap();
    let back = target.join("home");
    assert!(compare_trees(&src.join("dir"), &back.join("dir")).is_empty());

    let meta = |p: &str| std::fs::symlink_metadata(back.join(p)).unwrap();
    assert_eq!((meta("dir/a").ino(), meta("dir/a").nlink()), (meta("b").ino(), 3), "three names, one file");
    assert_eq!(meta("dir/c").ino(), meta("dir/a").ino());
    assert_eq!(xattr::get(back.join("dir/a"), "user.comment").unwrap().unwrap(), b"tagged\0bytes");
    assert_eq!(xattr::get(back.join("dir"), "user.dir").unwrap().unwrap(), b"on a directory");
    assert_eq!((meta("owned").uid(), meta("owned").gid()), (1234, 1234));
    assert_eq!((meta("dir").uid(), meta("dir").gid()), (1234, 4321));
    assert_eq!(std::fs::read(back.join("sparse.img")).unwrap(), std::fs::read(src.join("sparse.img")).unwrap());
    let allocated = meta("sparse.img").blocks() * 512;
    assert!(allocated < 8 << 20, "64 MiB with 512 KiB of data came back with {allocated} bytes allocated");
    assert!(meta("pipe").file_type().is_fifo() && meta("pipe").mode() & 0o777 == 0o640);
    assert!(!back.join("socket").exists());
}

/// A peer connected to more than 1.5 × `network.target_peers` peers closes connections
/// until `target_peers` remain (protocol.md §1.9), and still backs up and restores through
/// the peers it kept (and dials the others it needs again).
#[test]
fn a_peer_with_too_many_connections_trims_them_and_still_backs_up() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f.bin"), noise(7, 1 << 20)).unwrap();
    // Peer 0 is everyone's bootstrap, so all six others dial it; it wants 2 (trims above 3).
    let configure = |i: usize, c: &mut Config| {
        if i == 0 {
            c.network.target_peers = 2;
        }
    };
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 7, GIB, configure).unwrap();
    wait_status(&net, 0, 60, |s| s["connected"].as_array().is_some_and(|a| a.len() == 6));
    // Once the new connections are past their 30 s grace, it closes all but 2 (more may come
    // back as the others' lookups reach it, and go again).
    let s = wait_status(&net, 0, 120, |s| s["connected"].as_array().is_some_and(|a| a.len() <= 3));
    assert!(!s["connected"].as_array().unwrap().is_empty(), "it keeps some peers: {s}");
    let b = backup(&net, 0, &src, 2);
    assert!(b["packs"].as_u64() >= Some(1) && b["head_error"].is_null(), "{b}");
    let s = status(&net, 0);
    let providers = s["contracts"].as_array().unwrap().iter().filter(|c| c["role"] == "client").count();
    assert!(providers >= 2, "two copies need two providers: {s}");
    restores_identically(&net, &src, &tmp.path().join("back"));
}

/// A young network finds itself (protocol.md §1.5): peers that knew only their bootstrap
/// peer learn of each other within seconds, not at the 30 s tick, so they stay together
/// when that peer goes away at once (a laptop closed right after setting up the others).
#[test]
fn a_young_network_holds_together_when_its_bootstrap_peer_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 4, GIB, |_, _| {}).unwrap();
    let has = |n: usize| move |s: &Value| s["connected"].as_array().is_some_and(|a| a.len() == n);
    for i in 1..4 {
        wait_status(&net, i, 20, has(3));
    }
    net.kill(0);
    for i in 1..4 {
        wait_status(&net, i, 20, has(2));
    }
}

/// The text of daemon `i`'s `/metrics` (on its dashboard's port), the HTTP response whole.
fn metrics_text(net: &LocalNet, i: usize) -> String {
    use std::io::{Read, Write};
    let url = net.run(i, &["dashboard"]).unwrap().trim().to_string();
    let (base, token) = url.split_once("#token=").unwrap();
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The proposal metrics of daemon `i`: messages received per gossip topic.
fn proposals_by_topic(net: &LocalNet, i: usize) -> Vec<(String, u64)> {
    metrics_text(net, i)
        .lines()
        .filter_map(|l| l.strip_prefix("peer_gossip_messages_total{topic=\""))
        .filter(|l| l.starts_with("peer/proposals/"))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(t, n)| (t.to_string(), n.trim().parse().unwrap()))
        .collect()
}

/// Proposals travel in shards of the key space (protocol.md §1.6). With `shard_peers` = 2,
/// five peers make two shards: the client and two providers in one, two providers in the
/// other. Asking for four copies, the client finds two providers in its own shard and the
/// other two by publishing in their shard; each provider hears proposals only on its own
/// shard's topic, none on the single topic every peer still joins (`.../0/0`).
#[test]
fn a_client_finds_providers_in_its_own_shard_and_then_in_another() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f.bin"), noise(11, 1 << 20)).unwrap();
    let first_bit = |p: &libp2p::PeerId| peer::net::shard::Shard::of(&peer::net::shard::key(p), 1).prefix;
    // Peers 0, 1 and 2 in shard 1/0, peers 3 and 4 in shard 1/1; peer 1 is the client.
    let wanted = [0, 0, 0, 1, 1];
    let configure = |_: usize, c: &mut Config| c.network.shard_peers = 2;
    let dir = tmp.path().join("net");
    let net = LocalNet::start_where(EXE.as_ref(), &dir, 5, GIB, configure, |i, p| first_bit(p) == wanted[i]).unwrap();
    for (i, bit) in wanted.iter().enumerate() {
        let shard = format!("1/{bit}");
        wait_status(&net, i, 60, |s| s["estimated_peers"] == 5 && s["proposal_shard"] == shard.as_str());
    }
    let b = backup(&net, 1, &src, 4);
    assert!(b["packs"].as_u64() >= Some(1), "{b}");
    let s = status(&net, 1);
    let providers = s["contracts"].as_array().unwrap().iter().filter(|c| c["role"] == "client").count();
    assert_eq!(providers, 4, "four copies need all four providers, two of them in the other shard: {s}");
    for (i, bit) in wanted.iter().enumerate().filter(|(i, _)| *i != 1) {
        let heard = proposals_by_topic(&net, i);
        let own = format!("peer/proposals/2/1/{bit}");
        assert!(heard.iter().any(|(t, n)| *t == own && *n > 0), "peer {i} heard no proposal in {own}: {heard:?}");
        assert!(heard.iter().all(|(t, _)| *t == own), "peer {i} heard proposals outside {own}: {heard:?}");
    }
    let target = tmp.path().join("back");
    let out = net.run(1, &["restore", "--target", target.to_str().unwrap(), "--json"]).unwrap();
    assert_eq!(json_last(&out)["failed_count"], 0, "{out}");
    assert!(compare_trees(&src, &target.join("data")).is_empty());
}

/// A daemon subscribes to its proposal shards as it starts (protocol.md §1.6), so a client
/// backing up the moment its providers are connected finds them all with its first
/// proposal; before, a provider younger than a second had not subscribed yet, missed it,
/// and the client lost three seconds before proposing again.
#[test]
fn a_backup_made_as_soon_as_its_providers_connect_needs_one_proposal() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f.bin"), noise(12, 1 << 16)).unwrap();
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 4, GIB, |_, _| {}).unwrap();
    wait_status(&net, 0, 60, |s| s["connected"].as_array().map_or(0, |c| c.len()) == 3);
    let b = backup(&net, 0, &src, 3);
    assert!(b["packs"].as_u64() >= Some(1), "{b}");
    let metrics = metrics_text(&net, 0);
    let made: Vec<&str> = metrics.lines().filter(|l| l.starts_with("peer_proposals_total")).collect();
    assert_eq!(made, ["peer_proposals_total 1"], "{metrics}");
}
