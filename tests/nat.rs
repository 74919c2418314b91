//! Peers behind home routers: real daemons in Linux network namespaces this test makes.
//!
//! The lab: an "internet" namespace with a bridge on 203.0.113.0/24; one public peer on it
//! (the bootstrap and the relay, offering nothing, so it never holds packs); and homes,
//! each a router namespace (WAN on the bridge, iptables MASQUERADE, unsolicited inbound
//! dropped) with one host behind it on 192.0.2.0/24 — the same LAN range in every home, as
//! real homes have. One router may NAT with `--random-fully` (a symmetric NAT). Only
//! documentation ranges are used and there is no default route out of the lab. Every
//! namespace and daemon is removed when the [`Lab`] is dropped, also when a test fails.
//!
//! These tests need root (CI runs as root). Without it they fail, naming the reason.

use peer::localnet::{compare_trees, run_peer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PUBLIC_IP: &str = "203.0.113.10";
const PORT: u16 = 4001;

/// Which transports the daemons listen on.
#[derive(Clone, Copy)]
enum Transports {
    Tcp,
    Quic,
    /// Both, as a default configuration has.
    Both,
}

struct Daemon {
    ns: String,
    /// When its process was last started.
    started_at: std::time::SystemTime,
    home: PathBuf,
    peer_id: String,
    child: Option<Child>,
}

/// Namespaces and the daemons in them; all removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    daemons: Vec<Daemon>,
    dir: tempfile::TempDir,
    exe: PathBuf,
    homes: usize,
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    /// Makes the internet namespace and its bridge. Panics (the test fails) when namespaces
    /// cannot be made: not root, or no `ip`/`iptables` (`.ci/run` installs iptables).
    fn new(tag: &str) -> Lab {
        let prefix = format!("peert{}{tag}", std::process::id() % 100_000);
        let mut lab = Lab {
            prefix,
            namespaces: vec![],
            daemons: vec![],
            dir: tempfile::tempdir().expect("temp dir"),
            // bench/nat.sh points this at the release binary.
            exe: std::env::var_os("PEER_EXE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_peer"))),
            homes: 0,
        };
        for tool in ["iptables", "conntrack"] {
            sh(&[tool, "--version"])
                .unwrap_or_else(|e| panic!("{tool} is needed for the NAT tests (bash tests/setup.sh): {e}"));
        }
        let wan = lab.ns("wan").unwrap_or_else(|e| {
            panic!("cannot create network namespaces ({e}); the NAT tests must run as root with iproute2")
        });
        lab.ip(&wan, "link add br0 type bridge");
        lab.ip(&wan, "link set br0 up");
        lab
    }

    fn name(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn ns(&mut self, n: &str) -> Result<String, String> {
        let name = self.name(n);
        sh(&["ip", "netns", "add", &name])?;
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn ip(&self, ns: &str, cmd: &str) {
        let mut args = vec!["ip", "-n", ns];
        args.extend(cmd.split_whitespace());
        sh(&args).unwrap_or_else(|e| panic!("{e}"));
    }

    fn exec(&self, ns: &str, cmd: &[&str]) {
        let mut args = vec!["ip", "netns", "exec", ns];
        args.extend(cmd);
        sh(&args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Plugs namespace `ns` into the internet bridge as `wan` with address `ip`.
    fn plug(&self, ns: &str, port: &str, ip: &str) {
        let wan = self.name("wan");
        self.ip(&wan, &format!("link add {port} type veth peer name wan netns {ns}"));
        self.ip(&wan, &format!("link set {port} master br0 up"));
        self.ip(ns, &format!("addr add {ip}/24 dev wan"));
        self.ip(ns, "link set wan up");
    }

    /// A host directly on the internet.
    fn public_host(&mut self, n: &str, ip: &str) -> String {
        let ns = self.ns(n).unwrap_or_else(|e| panic!("{e}"));
        self.plug(&ns, &format!("p{n}"), ip);
        ns
    }

    /// A home: a router with public address `wan_ip` and one host behind it at 192.0.2.2.
    /// Returns the host's namespace.
    fn home(&mut self, wan_ip: &str, symmetric: bool) -> String {
        let i = self.homes;
        self.homes += 1;
        let router = self.ns(&format!("r{i}")).unwrap_or_else(|e| panic!("{e}"));
        let host = self.ns(&format!("h{i}")).unwrap_or_else(|e| panic!("{e}"));
        self.plug(&router, &format!("r{i}"), wan_ip);
        self.ip(&router, &format!("link add lan type veth peer name eth0 netns {host}"));
        self.ip(&router, "addr add 192.0.2.1/24 dev lan");
        self.ip(&router, "link set lan up");
        self.ip(&host, "addr add 192.0.2.2/24 dev eth0");
        self.ip(&host, "link set eth0 up");
        self.ip(&host, "route add default via 192.0.2.1");
        self.exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut masq = vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"];
        if symmetric {
            masq.push("--random-fully");
        }
        self.exec(&router, &masq);
        // Unsolicited traffic from the internet is dropped, both what would be forwarded and
        // what is addressed to the router itself (no RST, no ICMP, as home routers do: a hole
        // punch's early packet is dropped, not refused).
        for chain in ["FORWARD", "INPUT"] {
            let established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"];
            let mut accept = vec!["iptables", "-A", chain, "-i", "wan"];
            accept.extend(established);
            self.exec(&router, &accept);
            self.exec(&router, &["iptables", "-A", chain, "-i", "wan", "-j", "DROP"]);
        }
        host
    }

    /// Gives home `i`'s router a new public address (a DHCP lease change): its NAT state is
    /// lost with the old address.
    fn renumber(&self, i: usize, new_ip: &str) {
        let router = self.name(&format!("r{i}"));
        self.ip(&router, "addr flush dev wan");
        self.ip(&router, &format!("addr add {new_ip}/24 dev wan"));
        // A router that comes back with a new address has forgotten its NAT state.
        self.exec(&router, &["conntrack", "-F"]);
    }

    /// `peer init` + config + offer, then starts the daemon in `ns`; returns its index.
    fn daemon(&mut self, ns: &str, t: Transports, bootstrap: Option<&str>, offer: &str) -> usize {
        let i = self.daemons.len();
        let home = self.dir.path().join(format!("peer{i}"));
        let (tcp, quic) = (format!("/ip4/0.0.0.0/tcp/{PORT}"), format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1"));
        let mut args = vec!["init", "--no-mdns"];
        for (want, a) in [(!matches!(t, Transports::Quic), &tcp), (!matches!(t, Transports::Tcp), &quic)] {
            if want {
                args.extend(["--listen", a.as_str()]);
            }
        }
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap", b]);
        }
        let peer_id = run_peer(&self.exe, &home, &args).unwrap().trim().to_string();
        let file = home.join("config.toml");
        let mut cfg = peer::config::Config::load(&file).unwrap();
        // The documentation ranges are not global addresses (protocol.md §1.10).
        (cfg.network.global_addresses_only, cfg.network.upnp) = (false, false);
        // Long enough for a failed first hole punch to be tried again (30 s later, §1.10).
        cfg.contracts.proposal_wait_secs = 120;
        cfg.save(&file).unwrap();
        run_peer(&self.exe, &home, &["offer-storage", offer]).unwrap();
        self.daemons.push(Daemon {
            ns: ns.to_string(),
            started_at: std::time::SystemTime::now(),
            home,
            peer_id,
            child: None,
        });
        self.start(i);
        i
    }

    fn start(&mut self, i: usize) {
        let d = &self.daemons[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.home.join("daemon.log")).unwrap();
        self.daemons[i].started_at = std::time::SystemTime::now();
        let d = &self.daemons[i];
        let child = Command::new("ip")
            .args(["netns", "exec", &d.ns])
            .arg(&self.exe)
            .arg("--home")
            .arg(&d.home)
            .arg("daemon")
            .env("PEER_LOG", std::env::var("NAT_TEST_LOG").unwrap_or_else(|_| "warn,peer=debug".into()))
            .env_remove("PEER_HOME")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start a daemon");
        self.daemons[i].child = Some(child);
        self.wait(i, 30, "its control socket", |_| true);
    }

    fn home_of(&self, i: usize) -> &Path {
        &self.daemons[i].home
    }

    fn run(&self, i: usize, args: &[&str]) -> Result<String, String> {
        run_peer(&self.exe, self.home_of(i), args)
    }

    fn status(&self, i: usize) -> Option<Value> {
        self.run(i, &["status", "--json"]).ok().and_then(|s| serde_json::from_str(&s).ok())
    }

    /// Waits until daemon `i`'s status satisfies `ok`, up to `secs`; fails the test with the
    /// last status and the daemon's log tail otherwise.
    fn wait(&self, i: usize, secs: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status(i);
            if let Some(s) = &s
                && ok(s)
            {
                return s.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "peer {i} did not reach {what} within {secs} s; status: {}\nlog tail:\n{}",
                    s.map(|v| v.to_string()).unwrap_or_default(),
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.home_of(i).join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every daemon's log lines about hole punching, for a failure's message.
    fn punch_log(&self) -> String {
        let mut out = String::new();
        for i in 0..self.daemons.len() {
            let log = std::fs::read_to_string(self.home_of(i).join("daemon.log")).unwrap_or_default();
            for l in log.lines().filter(|l| l.contains("hole punch")) {
                out.push_str(&format!("peer {i}: {l}\n"));
            }
        }
        out
    }

    fn bootstrap_addr(&self, i: usize, t: Transports) -> String {
        let id = &self.daemons[i].peer_id;
        match t {
            Transports::Tcp | Transports::Both => format!("/ip4/{PUBLIC_IP}/tcp/{PORT}/p2p/{id}"),
            Transports::Quic => format!("/ip4/{PUBLIC_IP}/udp/{PORT}/quic-v1/p2p/{id}"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            if let Some(mut c) = d.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = sh(&["ip", "netns", "del", ns]) {
                eprintln!("could not remove namespace {ns}: {e}");
            }
        }
        if std::thread::panicking() {
            // Keep the homes and daemon logs of a failed run for a look.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("homes and daemon logs kept in {}", dir.keep().display());
        }
    }
}

fn connections<'a>(s: &'a Value, peer: &str) -> Vec<&'a Value> {
    s["connections"].as_array().map(|a| a.iter().filter(|c| c["peer"] == peer).collect()).unwrap_or_default()
}

fn has_direct(s: &Value, peer: &str) -> bool {
    connections(s, peer).iter().any(|c| c["relayed"] == false)
}

fn holders_of_packs(lab: &Lab, i: usize) -> usize {
    let dir = lab.home_of(i).join("store");
    walk_files(&dir).iter().filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() == 64)).count()
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn make_data(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut bytes = vec![0u8; 3 << 20];
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(dir.join("photo.raw"), &bytes).unwrap();
    std::fs::write(dir.join("sub/notes.txt"), b"behind a home router\n".repeat(1000)).unwrap();
}

/// The public peer, then a client and `providers` providers each behind an ordinary NAT,
/// and `symmetric` more behind symmetric NATs. Returns the lab; daemon 0 is the public
/// peer, 1 the client, then the providers in order.
fn world(tag: &str, t: Transports, providers: usize, symmetric: usize) -> Lab {
    let mut lab = Lab::new(tag);
    let public = lab.public_host("pub", PUBLIC_IP);
    lab.daemon(&public, t, None, "0");
    let boot = lab.bootstrap_addr(0, t);
    for k in 0..1 + providers + symmetric {
        let host = lab.home(&format!("203.0.113.{}", 20 + k), k > providers);
        lab.daemon(&host, t, Some(&boot), "2GB");
    }
    lab
}

/// Waits until every home peer is known private and holds a relay reservation.
fn wait_private_with_relay(lab: &Lab) {
    for i in 1..lab.daemons.len() {
        lab.wait(i, 90, "private reachability with a relay reservation", |s| {
            s["reachability"] == "private" && s["relays"].as_array().is_some_and(|r| !r.is_empty())
        });
    }
    let s = lab.wait(0, 30, "public reachability", |s| s["reachability"] == "public");
    assert!(s["external_addrs"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str().unwrap().contains(PUBLIC_IP))));
}

/// Backs `data` up from the client with `--copies 3`. A first hole punch can fail (a dial
/// of the same two ports still under way takes the 4-tuple, and the punch leaves from an
/// ephemeral port; protocol.md §1.10), and the daemon punches again 30 s later while data
/// waits: a backup that finds a provider reachable only through a relay is tried again,
/// for up to 400 s. Fails the test, with every daemon's hole-punch lines, otherwise.
fn backup_through_punches(lab: &Lab, data: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        match lab.run(1, &["backup", data.to_str().unwrap(), "--copies", "3", "--json"]) {
            Ok(out) => return out,
            Err(e) if Instant::now() < deadline && e.contains("only through relays") => {
                std::thread::sleep(Duration::from_secs(5))
            }
            Err(e) => panic!("{e}\nclient log:\n{}\nhole punches:\n{}", lab.log_tail(1), lab.punch_log()),
        }
    }
}

fn backup_and_restore_through_home_routers(t: Transports, tag: &str) {
    let lab = world(tag, t, 3, 0);
    wait_private_with_relay(&lab);
    let data = lab.dir.path().join("data");
    make_data(&data);
    let out = backup_through_punches(&lab, &data);
    assert!(out.contains("\"summary\""), "{out}");
    // Every holder got its packs over a direct connection (hole punched through both NATs).
    let s = lab.status(1).unwrap();
    for p in 2..5 {
        let id = lab.daemons[p].peer_id.clone();
        assert!(holders_of_packs(&lab, p) > 0, "provider {p} holds no pack");
        let conns = connections(&s, &id);
        assert!(has_direct(&s, &id), "no direct connection to provider {p}: {conns:?}");
        let want = match t {
            Transports::Tcp => "tcp",
            Transports::Quic | Transports::Both => "quic",
        };
        assert!(conns.iter().all(|c| c["transport"] == want), "{conns:?}");
        assert!(
            conns.iter().all(|c| !c["addr"].as_str().unwrap().contains("192.0.2.")),
            "a home LAN address was dialed: {conns:?}"
        );
    }
    let back = lab.dir.path().join("back");
    lab.run(1, &["restore", "latest", "--target", back.to_str().unwrap()]).unwrap();
    let diffs = compare_trees(&data, &back.join("data"));
    assert!(diffs.is_empty(), "{diffs:?}");
}

#[test]
fn a_client_and_three_providers_behind_nats_back_up_and_restore_over_tcp() {
    backup_and_restore_through_home_routers(Transports::Tcp, "t");
}

#[test]
fn a_client_and_three_providers_behind_nats_back_up_and_restore_over_quic() {
    backup_and_restore_through_home_routers(Transports::Quic, "q");
}

#[test]
fn a_provider_behind_a_symmetric_nat_gets_no_packs_and_stays_relayed() {
    let lab = world("s", Transports::Tcp, 3, 1);
    wait_private_with_relay(&lab);
    let data = lab.dir.path().join("data");
    make_data(&data);
    let sym = lab.daemons[5].peer_id.clone();
    backup_through_punches(&lab, &data);
    assert_eq!(holders_of_packs(&lab, 5), 0, "the peer behind the symmetric NAT got packs");
    for p in 2..5 {
        assert!(holders_of_packs(&lab, p) > 0, "provider {p} holds no pack");
    }
    let s = lab.status(5).unwrap();
    assert!(!has_direct(&s, &lab.daemons[1].peer_id), "symmetric NAT punched through: {s}");
    // The client's status shows it reachable through the relay only.
    let c = lab.wait(1, 60, "a connection to the peer behind the symmetric NAT", |s| !connections(s, &sym).is_empty());
    assert!(connections(&c, &sym).iter().all(|x| x["relayed"] == true), "{c}");
    let back = lab.dir.path().join("back");
    lab.run(1, &["restore", "latest", "--target", back.to_str().unwrap()]).unwrap();
    assert!(compare_trees(&data, &back.join("data")).is_empty());
}

/// A provider's router comes back with a new public address: it rejoins its relay, and
/// audits and a restore reach it again. The daemons listen on TCP and QUIC, as by default;
/// their bootstrap address is TCP's, so the addresses others observe for them, and the
/// hole punches, are TCP's. After the renumbering the first punches can fail for a few
/// minutes (the socket of the dead connection between the same ports lingers, so a punch
/// cannot leave from the listen port; protocol.md §1.10) and are tried again.
#[test]
fn a_renumbered_router_is_found_again() {
    let lab = world("n", Transports::Both, 3, 0);
    wait_private_with_relay(&lab);
    let data = lab.dir.path().join("data");
    make_data(&data);
    backup_through_punches(&lab, &data);
    // Provider 2's router comes back with a new public address.
    lab.renumber(1, "203.0.113.99");
    let renumbered = Instant::now();
    // Shown with the test's output on failure: how long each step took.
    let step = |what: &str| eprintln!("{:>6.1} s after the renumbering: {what}", renumbered.elapsed().as_secs_f64());
    let p2 = lab.daemons[2].peer_id.clone();
    // It rejoins: the relay sees it at its new address...
    lab.wait(0, 120, "a connection from the renumbered router", |s| {
        connections(s, &p2).iter().any(|c| c["addr"].as_str().unwrap_or_default().contains("203.0.113.99"))
    });
    step("the relay sees the new address");
    lab.wait(2, 120, "a relay reservation again", |s| s["relays"].as_array().is_some_and(|r| !r.is_empty()));
    step("the provider has a relay reservation");
    // ...and the client has noticed that its connection to the old address is dead.
    lab.wait(1, 120, "the connection to the old address closed", |s| {
        !connections(s, &p2).iter().any(|c| c["addr"].as_str().unwrap_or_default().contains("203.0.113.21"))
    });
    step("the client's connection to the old address is closed");
    // Audits reach it again: at first perhaps only through the relay, or not at all for a
    // while (the relay may still hold its dead connection to the old address and fail the
    // circuit until its ping closes it), then directly. What the sockets and the routers'
    // connection tracking showed in runs of this test alone (`ss -tan` in each host,
    // `conntrack -L` in each router, every 4 s): the provider's kernel keeps retransmitting
    // on the dead connection (its port 4001 to the client's router's port 4001), in
    // FIN-WAIT-1 once its ping closed it, for 55 to 100 s after the renumbering; those
    // packets, now sent from the new address, make the provider's router track that very
    // pair of ports as an established connection (mid-stream, 300 s unless it ends). Until
    // that socket is gone, the provider's punch cannot leave from its listen port, and the
    // punches fail. The failure is reported only to the provider, which leads the punch;
    // the client sees silence, and its data requests retry only after a reported failure,
    // so the next punch came with the next relayed connection made for another reason
    // (a contract partner kept connected), and succeeded at once: the direct connection
    // came 158 to 161 s after the renumbering, the whole test took 172 s (up to 370 s in a
    // full test run). Retrying a silent punch every 45 s for data requests made it slower
    // (202 and 337 s): a punch tried while the stale entry exists left both routers
    // tracking a half-open simultaneous open in which the answers were dropped. (Those
    // runs were before TCP connections were closed with SO_LINGER 0, a reset that leaves
    // no socket behind.)
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match lab.run(1, &["check"]) {
            Ok(out) => {
                assert!(out.contains("proved held"), "{out}");
                step("peer check proves the provider holds its packs");
                break;
            }
            Err(e)
                if Instant::now() < deadline
                    && (e.contains("reachable only through a relay") || e.contains("is unreachable")) =>
            {
                let why =
                    e.lines().find(|l| l.contains("reachable") && l.contains("relay") || l.contains("unreachable"));
                step(&format!("peer check: {}", why.unwrap_or_default().trim()));
                std::thread::sleep(Duration::from_secs(5))
            }
            Err(e) => panic!("{e}\nclient log:\n{}", lab.log_tail(1)),
        }
    }
    let s = lab.status(1).unwrap();
    assert!(
        connections(&s, &p2)
            .iter()
            .any(|c| c["relayed"] == false && c["addr"].as_str().unwrap().contains("203.0.113.99")),
        "not reconnected directly to the renumbered provider: {:?}",
        connections(&s, &p2)
    );
    let back = lab.dir.path().join("back");
    lab.run(1, &["restore", "latest", "--target", back.to_str().unwrap()]).unwrap();
    assert!(compare_trees(&data, &back.join("data")).is_empty());
}

/// How one hole punch between two homes went.
enum Punch {
    /// A direct connection, this long after the second home's daemon process started.
    Direct(Duration),
    /// DCUtR gave up (or nothing direct within the limit).
    Failed,
}

/// Starts the public peer and home A, then home B, and waits for a direct connection
/// between A and B (or DCUtR's failure, from the daemons' logs).
fn punch_once(tag: &str, t: Transports, a_symmetric: bool, b_symmetric: bool) -> Punch {
    let mut lab = Lab::new(tag);
    let public = lab.public_host("pub", PUBLIC_IP);
    lab.daemon(&public, t, None, "0");
    let boot = lab.bootstrap_addr(0, t);
    let ha = lab.home("203.0.113.20", a_symmetric);
    lab.daemon(&ha, t, Some(&boot), "0");
    lab.wait(1, 60, "a relay reservation", |s| s["relays"].as_array().is_some_and(|r| !r.is_empty()));
    let hb = lab.home("203.0.113.21", b_symmetric);
    let started = Instant::now();
    lab.daemon(&hb, t, Some(&boot), "0");
    let (a, b) = (lab.daemons[1].peer_id.clone(), lab.daemons[2].peer_id.clone());
    let log = |i: usize| std::fs::read_to_string(lab.home_of(i).join("daemon.log")).unwrap_or_default();
    let failed = |i: usize, other: &str| {
        log(i).lines().any(|l| l.contains("hole punching to") && l.contains(other) && l.contains("failed"))
    };
    while started.elapsed() < Duration::from_secs(120) {
        if lab.status(1).is_some_and(|s| has_direct(&s, &b)) {
            // When the first direct connection was made, from either side's log, after B's
            // process started.
            let first = [(1, &b), (2, &a)]
                .into_iter()
                .flat_map(|(i, other)| {
                    log(i)
                        .lines()
                        .filter(|l| l.contains(&format!("connected to {other} at /ip4/")) && !l.contains("p2p-circuit"))
                        .filter_map(log_time)
                        .collect::<Vec<_>>()
                })
                .min()
                .expect("a direct connection is logged");
            let since = first.duration_since(lab.daemons[2].started_at).unwrap_or_default();
            return Punch::Direct(since);
        }
        if failed(1, &b) || failed(2, &a) {
            return Punch::Failed;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Punch::Failed
}

/// The time at the start of a daemon log line (RFC 3339, UTC, perhaps in colour codes).
fn log_time(line: &str) -> Option<std::time::SystemTime> {
    let start = line.find("20")?;
    let end = start + line[start..].find('Z')? + 1;
    let t = chrono::DateTime::parse_from_rfc3339(&line[start..end]).ok()?;
    Some(std::time::SystemTime::from(t))
}

/// Seconds of one `backup --copies 1` of `data` from daemon `client`.
fn timed_backup(lab: &Lab, client: usize, data: &Path) -> f64 {
    let started = Instant::now();
    lab.run(client, &["backup", data.to_str().unwrap(), "--copies", "1", "--json"])
        .unwrap_or_else(|e| panic!("{e}\nclient log:\n{}", lab.log_tail(client)));
    started.elapsed().as_secs_f64()
}

/// The figures of BENCHMARKS.md "Behind home routers" (run by `bench/nat.sh`): time from a
/// home daemon's start to its first direct connection, hole-punch outcomes over the NAT
/// matrix for TCP and QUIC, and backup throughput between two NATed peers against two
/// public peers. Prints a table; asserts only that the scenarios ran.
#[test]
#[ignore = "a benchmark: bench/nat.sh runs it"]
fn measure_hole_punching_and_nat_throughput() {
    let runs: usize = std::env::var("NAT_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let trials: usize = std::env::var("NAT_BENCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // 1. Time to the first direct connection, ordinary NATs, TCP.
    let mut times: Vec<f64> = (0..runs)
        .filter_map(|k| match punch_once(&format!("m{k}"), Transports::Tcp, false, false) {
            Punch::Direct(d) => Some(d.as_secs_f64()),
            Punch::Failed => None,
        })
        .collect();
    times.sort_by(f64::total_cmp);
    assert!(!times.is_empty(), "no hole punch succeeded");
    println!(
        "first direct connection (TCP, ordinary x ordinary): {} of {runs} runs, median {:.2} s, min {:.2} s, max {:.2} s",
        times.len(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    // 2. The matrix.
    println!("| NATs | TCP | QUIC |\n|---|---|---|");
    for (name, a, b) in [
        ("ordinary x ordinary", false, false),
        ("ordinary x symmetric", false, true),
        ("symmetric x symmetric", true, true),
    ] {
        let mut cells = vec![];
        for t in [Transports::Tcp, Transports::Quic] {
            let ok = (0..trials).filter(|k| matches!(punch_once(&format!("x{k}"), t, a, b), Punch::Direct(_))).count();
            cells.push(format!("{ok} of {trials}"));
        }
        println!("| {name} | {} | {} |", cells[0], cells[1]);
    }
    // 3. Throughput: client and provider behind ordinary NATs, then both public. The first
    // backup includes finding the provider (proposal, contract, hole punch); the second,
    // of as much new data, only the transfer.
    let size = 256 << 20;
    let mb = size as f64 / 1e6;
    for (name, public) in [("NATed to NATed", false), ("public to public", true)] {
        let (first, second) = pair_backup_secs(if public { "tp" } else { "tn" }, public, size);
        println!(
            "{name}: backup of {mb:.0} MB of random data, --copies 1: first {:.1} MB/s ({first:.2} s), \
             second {:.1} MB/s ({second:.2} s)",
            mb / first,
            mb / second
        );
    }
}

/// Seconds of two `backup --copies 1` runs, each of `size` new random bytes, from a client
/// to its one provider, both behind ordinary NATs or both public, with the public peer as
/// bootstrap.
fn pair_backup_secs(tag: &str, public: bool, size: usize) -> (f64, f64) {
    let mut lab = Lab::new(tag);
    let p = lab.public_host("pub", PUBLIC_IP);
    lab.daemon(&p, Transports::Tcp, None, "0");
    let boot = lab.bootstrap_addr(0, Transports::Tcp);
    for k in 0..2 {
        let ns = if public {
            lab.public_host(&format!("p{k}"), &format!("203.0.113.{}", 30 + k))
        } else {
            lab.home(&format!("203.0.113.{}", 20 + k), false)
        };
        lab.daemon(&ns, Transports::Tcp, Some(&boot), "4GB");
    }
    let want = if public { "public" } else { "private" };
    for i in 1..3 {
        lab.wait(i, 60, want, |s| s["reachability"] == want);
    }
    let data = lab.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut secs = vec![];
    for name in ["first.bin", "second.bin"] {
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(data.join(name), bytes).unwrap();
        secs.push(timed_backup(&lab, 1, &data));
    }
    (secs[0], secs[1])
}
