//! What installing `peer` rests on: the systemd units in contrib/systemd/ pass
//! `systemd-analyze verify`, the daemon speaks sd_notify(3) and leaves timestamps to
//! journald, and every nix file parses (nix builds need nixpkgs, which runs elsewhere).
//! `bash tests/setup.sh` installs systemd, man-db and nix-bin; without them these fail.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_peer");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; panics naming the tool when it is missing (run `bash tests/setup.sh`).
fn output(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {:?}: {e}. Install what tests need with 'bash tests/setup.sh'", cmd.get_program())
    })
}

/// `systemd-analyze verify` on `unit` (ExecStart pointed at the built binary), with our
/// man pages on MANPATH so that `Documentation=man:` is checked too. Returns its
/// complaints: any output at all, or a non-zero exit.
fn verify(unit: &Path, user: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man/man1");
    assert!(Command::new(EXE).args(["man", "--dir"]).arg(&man).status().unwrap().success());
    let text = std::fs::read_to_string(unit).unwrap().replace("/usr/bin/peer", EXE);
    let copy = dir.path().join("peer.service");
    std::fs::write(&copy, text).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.env("MANPATH", dir.path().join("man")).env("XDG_RUNTIME_DIR", &run);
    if user {
        cmd.arg("--user");
    }
    let out = output(cmd.arg("verify").arg(&copy));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() { String::new() } else { format!("{}: {said}", out.status) }
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let system = root().join("contrib/systemd/peer.service");
    assert_eq!(verify(&system, false), "", "{}", system.display());
    let user = root().join("contrib/systemd/user/peer.service");
    assert_eq!(verify(&user, true), "", "{}", user.display());
    // The check catches a broken unit: a bad value is only a warning to systemd.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("peer.service");
    let text = std::fs::read_to_string(&system).unwrap().replace("ProtectSystem=strict", "ProtectSystem=stricter");
    std::fs::write(&bad, text).unwrap();
    assert!(verify(&bad, false).contains("stricter"), "a bad unit passed");
}

#[test]
fn every_nix_file_parses() {
    let mut files = vec![root().join("flake.nix")];
    for e in std::fs::read_dir(root().join("nix")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "nix") {
            files.push(e.path());
        }
    }
    assert!(files.len() >= 4, "flake.nix, package, module and test: {files:?}");
    for f in &files {
        let out = output(Command::new("nix-instantiate").arg("--parse").arg(f));
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
    }
    let broken = tempfile::tempdir().unwrap();
    let b = broken.path().join("broken.nix");
    std::fs::write(&b, "{ a = 1; ").unwrap();
    assert!(!output(Command::new("nix-instantiate").arg("--parse").arg(&b)).status.success());
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_and_leaves_timestamps_to_journald() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    peer::localnet::run_peer(EXE.as_ref(), &home, &["init", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut child = Command::new(EXE)
        .arg("--home")
        .arg(&home)
        .arg("daemon")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("JOURNAL_STREAM", "8:12345")
        .env_remove("PEER_HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("no READY=1 from the daemon");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
    // Ready means the control socket answers.
    let st = Command::new(EXE).arg("--home").arg(&home).args(["status", "--json"]).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let n = socket.recv(&mut buf).expect("no STOPPING=1 from the daemon");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    let stop = lines.iter().find(|l| l.contains("shutting down")).unwrap_or_else(|| panic!("{lines:?}"));
    assert!(stop.trim_start().starts_with("INFO"), "no timestamp of its own under journald: {stop}");
}
