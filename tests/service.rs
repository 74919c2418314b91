//! Running `peer` as a service: scheduled backups and hooks on real daemons (127.0.0.1),
//! completions and man pages from the binary.

use peer::config::Config;
use peer::localnet::{LocalNet, compare_trees};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_peer");
const GIB: u64 = 1 << 30;

fn schedules(net: &LocalNet, i: usize) -> Vec<Value> {
    let out = net.run(i, &["schedule", "--json"]).unwrap();
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn schedule<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|s| s["name"] == name)
}

/// Polls `peer schedule --json` of daemon `i` until `ok` holds, up to `secs` seconds.
fn wait_schedules(net: &LocalNet, i: usize, secs: u64, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = schedules(net, i);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "condition not met within {secs} s: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The hook's reports: one `NAME=value` file per run, by file name order (time).
fn hook_reports(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "env")).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect()
        })
        .collect()
}

/// Calls `f` until it succeeds, up to `secs` seconds; panics with its last error.
fn until<T>(secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("not done within {secs} s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn schedules_run_by_themselves_keep_their_rules_back_off_and_report_to_the_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, gone, hooks) = (tmp.path().join("notes"), tmp.path().join("gone"), tmp.path().join("hooks"));
    for d in [&src, &gone, &hooks] {
        std::fs::create_dir_all(d).unwrap();
    }
    for i in 0..20 {
        std::fs::write(src.join(format!("note {i}.txt")), format!("note {i}\n").repeat(100 + i)).unwrap();
    }
    let hook = format!(
        "f='{}'/$(date +%s%N)-$PEER_RESULT; env | grep '^PEER_' > \"$f.tmp\" && mv \"$f.tmp\" \"$f.env\"",
        hooks.display()
    );
    let configure = move |i: usize, c: &mut Config| {
        if i == 0 {
            c.hooks.after_backup = hook.clone();
        }
    };
    let mut net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, configure).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    let (s, g) = (src.to_str().unwrap(), gone.to_str().unwrap());

    // A schedule every 2 s with keep-last 1 runs by itself, again and again, and keeps one
    // snapshot of its paths.
    let out =
        net.run(0, &["schedule", "add", "notes", s, "--every", "2s", "--copies", "2", "--keep-last", "1"]).unwrap();
    assert!(out.contains("schedule 'notes' saved"), "{out}");
    let config = std::fs::read_to_string(net.peers[0].home.join("config.toml")).unwrap();
    assert!(config.contains("[[schedule]]") && config.contains("name = \"notes\""), "{config}");
    let first =
        wait_schedules(&net, 0, 60, |l| schedule(l, "notes").is_some_and(|n| n["last"]["snapshot"].is_string()));
    assert!(schedule(&first, "notes").unwrap()["last"]["started"].as_u64().is_some());
    std::fs::write(src.join("added later.txt"), b"written between two scheduled runs").unwrap();
    let written = peer::protocol::now();
    let later = wait_schedules(&net, 0, 60, |l| {
        schedule(l, "notes").is_some_and(|n| n["last"]["started"].as_u64() > Some(written))
    });
    let last = &schedule(&later, "notes").unwrap()["last"];
    assert_eq!(last["error"], "", "{last}");
    net.run(0, &["schedule", "remove", "notes"]).unwrap();
    // A run that had started before the removal ends with its own forget.
    let target = tmp.path().join("back");
    let restored = until(60, || net.run(0, &["restore", "latest", "--target", target.to_str().unwrap()]));
    assert!(compare_trees(&src, &target.join("notes")).is_empty(), "{restored}");
    let snaps: Vec<Value> = until(60, || {
        let v: Vec<Value> = serde_json::from_str(&net.run(0, &["snapshots", "--json"])?).map_err(|e| e.to_string())?;
        if v.len() == 1 { Ok(v) } else { Err(format!("{} snapshots, keep-last 1 keeps one", v.len())) }
    });

    // A schedule whose path went away fails; each failure backs off twice as long.
    // A cron time far off: only the runs asked for below happen.
    net.run(0, &["schedule", "add", "broken", g, "--cron", "0 3 1 1 *", "--copies", "2"]).unwrap();
    std::fs::remove_dir(&gone).unwrap();
    for failures in 1..=2u64 {
        let out = net.cmd(0, &["schedule", "run", "broken"]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(g), "the error names the path: {err}");
        let list = wait_schedules(&net, 0, 30, |l| {
            schedule(l, "broken").is_some_and(|b| b["last"]["failures"].as_u64() == Some(failures))
        });
        let b = schedule(&list, "broken").unwrap();
        let finished = b["last"]["finished"].as_u64().unwrap();
        assert_eq!(b["next"].as_u64(), Some(finished + 60 * failures), "retry after 1, then 2 minutes: {b}");
    }
    let st: Value = serde_json::from_str(&net.run(0, &["status", "--json"]).unwrap()).unwrap();
    let failing = st["schedules"].as_array().unwrap().iter().find(|s| s["name"] == "broken").cloned();
    assert!(failing.is_some_and(|f| f["last"]["error"].as_str().is_some_and(|e| e.contains(g))), "{st}");

    // The hook saw the scheduled successes and the failures, with their outcome.
    let reports = until(60, || {
        let r = hook_reports(&hooks);
        let failed = r.iter().filter(|r| r["PEER_RESULT"] == "failure").count();
        let last_ok = r.iter().any(|r| r["PEER_SNAPSHOT"] == snaps[0]["id"].as_str().unwrap_or("?"));
        if failed == 2 && last_ok { Ok(r) } else { Err(format!("{failed} failures, last run seen: {last_ok}: {r:?}")) }
    });
    let ok = reports.iter().find(|r| r["PEER_SNAPSHOT"] == snaps[0]["id"].as_str().unwrap()).unwrap();
    assert_eq!((ok["PEER_RESULT"].as_str(), ok["PEER_SCHEDULE"].as_str()), ("success", "notes"), "{ok:?}");
    assert_eq!(ok["PEER_FILES"], "21", "{ok:?}");
    let failed: Vec<_> = reports.iter().filter(|r| r["PEER_RESULT"] == "failure").collect();
    assert!(failed.iter().all(|r| r["PEER_SCHEDULE"] == "broken" && r["PEER_ERROR"].contains(g)), "{failed:?}");

    // The runs survive a restart; a schedule added while no daemon runs is loaded at start.
    net.stop(0);
    let out = net.cmd(0, &["schedule", "add", "later", s, "--cron", "0 3 * * *"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is running"));
    net.restart(0).unwrap();
    let list = schedules(&net, 0);
    assert_eq!(schedule(&list, "broken").unwrap()["last"]["failures"], 2, "{list:?}");
    let later = schedule(&list, "later").unwrap();
    assert_eq!(later["cron"], "0 3 * * *");
    assert!(later["last"].is_null() && later["next"].as_u64() > Some(peer::protocol::now()), "{later}");
    // A bad entry is refused with the reason, as a usage error.
    let out = net.cmd(0, &["schedule", "add", "bad", s, "--every", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'soon'"));
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(EXE).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["schedule", "offer-storage", "keep-daily", "erasure"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(EXE).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["peer.1", "peer-backup.1", "peer-schedule-add.1", "peer-restore.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is not a man page");
    }
    let add = std::fs::read_to_string(dir.path().join("peer-schedule-add.1")).unwrap();
    assert!(add.contains("keep\\-daily") || add.contains("keep-daily"), "{add}");
}

#[test]
fn test_restores_run_by_themselves_and_catch_a_backup_that_no_longer_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, hooks) = (tmp.path().join("papers"), tmp.path().join("hooks"));
    std::fs::create_dir_all(src.join("inner")).unwrap();
    std::fs::create_dir_all(&hooks).unwrap();
    for i in 0..12 {
        let dir = if i % 2 == 0 { src.clone() } else { src.join("inner") };
        std::fs::write(dir.join(format!("paper {i}.txt")), format!("paper {i}\n").repeat(2000 + i)).unwrap();
    }
    let hook = format!(
        "f='{}'/$(date +%s%N)-$PEER_EVENT; env | grep '^PEER_' > \"$f.tmp\" && mv \"$f.tmp\" \"$f.env\"",
        hooks.display()
    );
    let configure = move |i: usize, c: &mut Config| {
        if i == 0 {
            c.hooks.after_backup = hook.clone();
            (c.test_restore.interval_secs, c.test_restore.files) = (2, 5);
        }
    };
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, configure).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    net.run(0, &["backup", src.to_str().unwrap(), "--copies", "2"]).unwrap();

    // The daemon restores a sample by itself, checks it and removes it.
    let status =
        |net: &LocalNet| -> Value { serde_json::from_str(&net.run(0, &["status", "--json"]).unwrap()).unwrap() };
    let done = until(60, || {
        let s = status(&net);
        if s["test_restore"].is_object() { Ok(s["test_restore"].clone()) } else { Err(format!("none yet: {s}")) }
    });
    assert_eq!(done["error"], "", "{done}");
    let sample: Vec<&str> = done["sample"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(sample.len(), 5, "{done}");
    assert!(sample.iter().all(|p| p.starts_with(src.to_str().unwrap())), "{sample:?}");
    let left: Vec<_> = std::fs::read_dir(&net.peers[0].home)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".test-restore-"))
        .collect();
    assert!(left.is_empty(), "the test restore's directory is removed");

    // Both holders' copies go bad: the next test restore fails, says so, and runs the hook.
    for p in &net.peers[1..] {
        for client in std::fs::read_dir(p.home.join("store")).unwrap().flatten() {
            for f in std::fs::read_dir(client.path()).unwrap().flatten() {
                let mut bytes = std::fs::read(f.path()).unwrap();
                if f.file_name() == "HEAD" || bytes.len() < 64 {
                    continue;
                }
                let n = bytes.len();
                bytes[n / 3..n - 16].iter_mut().for_each(|b| *b ^= 0x5a);
                std::fs::write(f.path(), bytes).unwrap();
            }
        }
    }
    let out = net.cmd(0, &["test-restore"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("test restore failed"), "{err}");
    let s = status(&net);
    assert!(s["test_restore"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
    let report = until(30, || {
        let r = hook_reports(&hooks);
        r.into_iter()
            .find(|r| r.get("PEER_EVENT").is_some_and(|e| e == "test_restore"))
            .ok_or("no hook run".to_string())
    });
    assert_eq!(report["PEER_RESULT"], "failure");
    assert!(!report["PEER_ERROR"].is_empty(), "{report:?}");

    // Lowering an offer below what contracts already grant is accepted, and explained.
    let out = net.cmd(1, &["offer-storage", "1MiB"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("note:") && err.contains("already grant"), "{err}");
    let out = net.cmd(0, &["offer-storage", "1MiB"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("grant you"), "{err}");
}

#[test]
fn with_only_friends_contracts_are_made_with_friends_alone_in_both_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("album");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..5 {
        std::fs::write(src.join(format!("photo {i}.jpg")), format!("pixels {i}\n").repeat(3000)).unwrap();
    }
    let configure = |i: usize, c: &mut Config| {
        c.contracts.proposal_wait_secs = 10;
        c.contracts.only_friends = i == 0;
    };
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 4, GIB, configure).unwrap();
    net.wait_connected(3, Duration::from_secs(60)).unwrap();
    let s = src.to_str().unwrap();

    // Two friends by invite code; a typo is caught as a usage error.
    let codes: Vec<String> = (1..3).map(|i| net.run(i, &["friends", "invite"]).unwrap().trim().to_string()).collect();
    net.run(0, &["friends", "add", &codes[0], "--name", "ann"]).unwrap();
    net.run(0, &["friends", "add", &codes[1], "--name", "bob"]).unwrap();
    let mut typo = codes[0].clone().into_bytes();
    typo[7] = if typo[7] == b'A' { b'B' } else { b'A' };
    let out = net.cmd(0, &["friends", "add", &String::from_utf8(typo).unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_str(&net.run(0, &["friends", "--json"]).unwrap()).unwrap();
    assert_eq!(list["only_friends"], true);
    let names: Vec<&str> = list["friends"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ann", "bob"]);
    let config = std::fs::read_to_string(net.peers[0].home.join("config.toml")).unwrap();
    assert!(config.contains("[[friend]]") && config.contains(&net.peers[1].peer_id), "{config}");

    // As a client: contracts only with the two friends, and a third copy is refused, saying why.
    net.run(0, &["backup", s, "--copies", "2"]).unwrap();
    let contract_peers = |i: usize, role: &str| -> std::collections::BTreeSet<String> {
        let st: Value = serde_json::from_str(&net.run(i, &["status", "--json"]).unwrap()).unwrap();
        st["contracts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["role"] == role)
            .map(|c| c["peer"].as_str().unwrap().to_string())
            .collect()
    };
    let friends: std::collections::BTreeSet<String> = [1, 2].iter().map(|&i| net.peers[i].peer_id.clone()).collect();
    assert_eq!(contract_peers(0, "client"), friends);
    let out = net.cmd(0, &["backup", s, "--copies", "3"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only_friends") && err.contains("2 friends"), "{err}");

    // As a provider: a stranger gets no contract here, and goes to the others.
    let out = net.cmd(3, &["backup", s, "--copies", "3"]).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    net.run(3, &["backup", s, "--copies", "2"]).unwrap();
    assert!(!contract_peers(3, "client").contains(&net.peers[0].peer_id));
    assert!(!contract_peers(0, "provider").contains(&net.peers[3].peer_id));

    net.run(0, &["friends", "remove", "bob"]).unwrap();
    let list: Value = serde_json::from_str(&net.run(0, &["friends", "--json"]).unwrap()).unwrap();
    assert_eq!(list["friends"].as_array().unwrap().len(), 1, "{list}");
}
