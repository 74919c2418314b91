//! A local network of real `peer daemon` processes on 127.0.0.1, for `peer demo`, the
//! integration tests and the benchmark: temporary homes, ephemeral ports, mDNS off, every
//! peer bootstrapped to the first. Processes are killed when the [`LocalNet`] is dropped.
//!
//! Waiting is done on events with a deadline (a daemon's printed address, a status that
//! shows enough connections), never on a fixed sleep.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One daemon of the network.
pub struct LocalPeer {
    /// Its home.
    pub home: PathBuf,
    /// Its first multiaddr on 127.0.0.1 (TCP or QUIC, as configured), with `/p2p/<PeerId>`.
    pub addr: String,
    /// Its PeerId.
    pub peer_id: String,
    child: Option<Child>,
}

/// N daemons on this machine.
pub struct LocalNet {
    exe: PathBuf,
    /// Directory holding the homes.
    pub dir: PathBuf,
    /// The daemons, in start order.
    pub peers: Vec<LocalPeer>,
}

/// Runs `exe --home home args…` and returns stdout; errors carry stderr.
pub fn run_peer(exe: &Path, home: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(exe)
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("PEER_HOME")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        // The last line of stdout (with --json, the summary: what failed and why) helps too.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        return Err(format!(
            "peer {} failed ({}): {}{}{last}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if last.is_empty() { "" } else { "\nlast output: " }
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LocalNet {
    /// Starts `n` daemons of binary `exe` with homes under `dir`, each offering `offer` bytes.
    /// `configure` may edit each `config.toml` text before its daemon starts.
    pub fn start(
        exe: &Path,
        dir: &Path,
        n: usize,
        offer: u64,
        configure: impl Fn(usize, &mut crate::config::Config),
    ) -> Result<Self, String> {
        LocalNet::start_where(exe, dir, n, offer, configure, |_, _| true)
    }

    /// [`LocalNet::start`], with peer `i`'s identity made again until `accept(i, peer_id)`
    /// holds (at most 1,000 times; an error after that): for tests that need peers in
    /// given places of the key space.
    pub fn start_where(
        exe: &Path,
        dir: &Path,
        n: usize,
        offer: u64,
        configure: impl Fn(usize, &mut crate::config::Config),
        accept: impl Fn(usize, &libp2p::PeerId) -> bool,
    ) -> Result<Self, String> {
        let mut net = LocalNet { exe: exe.to_path_buf(), dir: dir.to_path_buf(), peers: Vec::new() };
        for i in 0..n {
            let home = dir.join(format!("peer{i}"));
            let mut args = vec!["init", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"];
            let boot = net.peers.first().map(|p| p.addr.clone());
            if let Some(b) = &boot {
                args.extend(["--bootstrap", b.as_str()]);
            }
            let mut tries = 0;
            let peer_id = loop {
                let id = run_peer(exe, &home, &args)?.trim().to_string();
                let parsed: libp2p::PeerId = id.parse().map_err(|e| format!("peer init printed {id:?}: {e}"))?;
                if accept(i, &parsed) {
                    break id;
                }
                tries += 1;
                if tries == 1000 {
                    return Err(format!("no acceptable identity for peer {i} in 1,000 tries"));
                }
                std::fs::remove_dir_all(&home).map_err(|e| format!("cannot remove {}: {e}", home.display()))?;
            };
            let file = home.join("config.toml");
            let mut cfg = crate::config::Config::load(&file).map_err(|e| e.to_string())?;
            // 127.0.0.1 is not a global address: this is a test network (protocol.md §1.10).
            cfg.network.global_addresses_only = false;
            cfg.network.upnp = false;
            // Many daemons on one machine: each dashboard on a free port.
            cfg.dashboard.port = 0;
            // Each backup contracts with as many providers as its packs need, so a test
            // knows which peers hold them; a test of spreading sets its own.
            cfg.contracts.spread = 1;
            configure(i, &mut cfg);
            cfg.save(&file).map_err(|e| e.to_string())?;
            run_peer(exe, &home, &["offer-storage", &offer.to_string()])?;
            let mut p = LocalPeer { home, addr: String::new(), peer_id, child: None };
            net.spawn(&mut p)?;
            net.peers.push(p);
        }
        Ok(net)
    }

    fn spawn(&self, p: &mut LocalPeer) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.home.join("daemon.log"))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.exe)
            .arg("--home")
            .arg(&p.home)
            .arg("daemon")
            .env_remove("PEER_HOME")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start daemon: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("/ip4/127.0.0.1/") {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => {
                p.addr = addr;
                p.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("daemon in {} printed no address; see its daemon.log", p.home.display()))
            }
        }
    }

    /// Starts daemon `i` again (after [`LocalNet::kill`] or [`LocalNet::stop`]) on the same home.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let mut p = LocalPeer {
            home: self.peers[i].home.clone(),
            addr: String::new(),
            peer_id: self.peers[i].peer_id.clone(),
            child: None,
        };
        self.spawn(&mut p)?;
        self.peers[i] = p;
        Ok(())
    }

    /// Runs a `peer` command against daemon `i`.
    pub fn cmd(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--home").arg(&self.peers[i].home).args(args).env_remove("PEER_HOME");
        c
    }

    /// Runs a command against daemon `i` and returns stdout, or an error with stderr.
    pub fn run(&self, i: usize, args: &[&str]) -> Result<String, String> {
        run_peer(&self.exe, &self.peers[i].home, args)
    }

    /// Waits until every daemon is connected to at least `k` others and knows itself
    /// publicly reachable (AutoNAT confirmed an address, which it now advertises), up to
    /// `timeout`.
    pub fn wait_connected(&self, k: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.peers.len() {
            loop {
                let v = self
                    .run(i, &["status", "--json"])
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .unwrap_or_default();
                let n = v["connected"].as_array().map(|a| a.len()).unwrap_or(0);
                let reach = v["reachability"].as_str().unwrap_or("unknown").to_string();
                if n >= k && reach == "public" {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("peer {i} has {n} connections (wanted {k}) and is {reach}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Process id of daemon `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.peers[i].child.as_ref().map(|c| c.id())
    }

    /// Kills daemon `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.peers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops daemon `i` with SIGTERM and waits for it to exit; returns its exit status.
    pub fn stop(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut c = self.peers[i].child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().ok()
    }
}

impl Drop for LocalNet {
    fn drop(&mut self) {
        for i in 0..self.peers.len() {
            self.kill(i);
        }
    }
}

/// Compares two trees: kinds, file bytes, permission bits, and mtimes (to the nanosecond
/// for files and symlinks, to the second for directories' mtimes as well). Returns every
/// difference found, as text; empty means identical.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    compare(a, b, &mut diffs);
    diffs
}

fn compare(a: &Path, b: &Path, d: &mut Vec<String>) {
    let (ma, mb) = match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (_, Err(e)) => return d.push(format!("{}: {e}", b.display())),
        (Err(e), _) => return d.push(format!("{}: {e}", a.display())),
    };
    if ma.file_type() != mb.file_type() {
        return d.push(format!("{}: kind differs", b.display()));
    }
    if !ma.file_type().is_symlink() && ma.permissions().mode() & 0o7777 != mb.permissions().mode() & 0o7777 {
        d.push(format!(
            "{}: mode {:o} != {:o}",
            b.display(),
            ma.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777
        ));
    }
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        d.push(format!("{}: mtime differs", b.display()));
    }
    if ma.is_dir() {
        let names = |p: &Path| -> Vec<std::ffi::OsString> {
            let mut v: Vec<_> =
                std::fs::read_dir(p).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        if na != nb {
            d.push(format!("{}: entries differ ({} vs {})", b.display(), na.len(), nb.len()));
        }
        for n in na.iter().filter(|n| nb.contains(n)) {
            compare(&a.join(n), &b.join(n), d);
        }
    } else if ma.file_type().is_symlink() {
        if std::fs::read_link(a).ok() != std::fs::read_link(b).ok() {
            d.push(format!("{}: link target differs", b.display()));
        }
    } else if ma.len() != mb.len() || !same_bytes(a, b) {
        d.push(format!("{}: content differs", b.display()));
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut ra, mut rb) = (BufReader::new(fa), BufReader::new(fb));
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match ra.read(&mut x) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return rb.read(&mut y).map(|m| m == 0).unwrap_or(false);
        }
        if rb.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}
