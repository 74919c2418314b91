//! The home directory layout and the TOML configuration (`home/config.toml`).
//!
//! A home holds one peer: `identity.key` (0600), `config.toml`, `state.redb` (local
//! state, see [`crate::state`]), `store/` (packs held for other clients, see
//! [`crate::provider`]) and `control.sock` (0600, the daemon's control socket).
//! Units: sizes are bytes, durations are seconds.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Paths inside one home directory.
#[derive(Clone, Debug)]
pub struct Home {
    /// The home directory itself.
    pub dir: PathBuf,
}

impl Home {
    /// The home at `dir`, or the platform default (`$XDG_DATA_HOME/peer`, usually `~/.local/share/peer`).
    pub fn resolve(dir: Option<PathBuf>) -> Result<Self, ConfigError> {
        match dir {
            Some(d) => Ok(Home { dir: d }),
            None => directories::ProjectDirs::from("", "", "peer")
                .map(|p| Home { dir: p.data_dir().to_path_buf() })
                .ok_or(ConfigError::NoDefaultHome),
        }
    }
    /// `identity.key`: the ed25519 secret, 64 hex digits, mode 0600.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("identity.key")
    }
    /// `dashboard.token`: the dashboard's access token, 64 hex digits, mode 0600, made at
    /// the daemon's first start.
    pub fn dashboard_token(&self) -> PathBuf {
        self.dir.join("dashboard.token")
    }
    /// `config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// `state.redb`: local state.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.redb")
    }
    /// `store/`: packs held for other peers, one subdirectory per client PeerId.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }
    /// `claims/`: claim blocks held for our providers, one subdirectory per provider PeerId
    /// (protocol.md §4.6).
    pub fn claims_dir(&self) -> PathBuf {
        self.dir.join("claims")
    }
    /// `RECOVER`: present after `peer init --recover` until the daemon has restored the
    /// head (snapshots, index, contracts) from the network.
    pub fn recover_marker(&self) -> PathBuf {
        self.dir.join("RECOVER")
    }
    /// `head.record`: the last head record we published, put again into the DHT after a
    /// restart and every [`crate::daemon::REPUBLISH_SECS`] (records expire).
    pub fn head_record(&self) -> PathBuf {
        self.dir.join("head.record")
    }
    /// `control.sock`: the daemon's Unix control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
}

/// Errors reading or writing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `--home` and no platform data directory.
    #[error("cannot find a default home directory; pass --home DIR or set PEER_HOME")]
    NoDefaultHome,
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The config file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is missing or empty in a home that should have one.
    #[error(
        "{0} is missing or empty: the daemon will not guess its listen addresses, bootstrap \
         peers or mDNS setting. Restore it from a copy, or write it again (every key is described \
         in README 'Configuration'; 'peer init' in a scratch home writes a complete one)"
    )]
    Missing(String),
    /// The TOML does not parse or has a wrong key or value.
    #[error("{path} is not a valid configuration: {message}")]
    Invalid {
        /// The config file.
        path: String,
        /// What is wrong, from the TOML parser.
        message: String,
    },
}

/// The whole configuration. Every key has a default, so an empty file is valid.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Networking.
    pub network: NetworkConfig,
    /// Contracts and reciprocity.
    pub contracts: ContractsConfig,
    /// Backup.
    pub backup: BackupConfig,
    /// Audits of the peers holding our packs.
    pub audit: AuditConfig,
    /// Repair of packs below their target copies.
    pub repair: RepairConfig,
    /// The store of packs held for others.
    pub provider: ProviderConfig,
    /// Circuit relay served to private peers.
    pub relay: RelayConfig,
    /// Commands run after events (`[hooks]`).
    pub hooks: HooksConfig,
    /// The local web dashboard (`[dashboard]`).
    pub dashboard: DashboardConfig,
    /// Test restores the daemon runs by itself (`[test_restore]`, [`crate::drill`]).
    pub test_restore: TestRestoreConfig,
    /// Friends (`[[friend]]`), see [`crate::friends`].
    #[serde(rename = "friend", skip_serializing_if = "Vec::is_empty")]
    pub friends: Vec<crate::friends::Friend>,
    /// Scheduled backups (`[[schedule]]`), see [`crate::schedule`].
    #[serde(rename = "schedule", skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedule::Schedule>,
}

/// `[test_restore]`: how often and how much the daemon restores, as a test, from the
/// latest snapshot ([`crate::drill`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TestRestoreConfig {
    /// Mean seconds between two test restores (the wait is uniform in [0.5, 1.5] × this);
    /// 0 = never. Default 86400.
    pub interval_secs: u64,
    /// Files restored each time, at most. Default 20.
    pub files: usize,
    /// Bytes restored each time, at most (each file at most this / `files`). Default 32 MiB.
    pub max_bytes: u64,
}

impl Default for TestRestoreConfig {
    fn default() -> Self {
        TestRestoreConfig { interval_secs: 86400, files: 20, max_bytes: 32 << 20 }
    }
}

/// `[dashboard]`: the local web page, JSON API and `/metrics`, served on 127.0.0.1 only
/// and protected by the token in `home/dashboard.token` (README "Dashboard").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Serve it. Default true.
    pub enabled: bool,
    /// TCP port on 127.0.0.1; 0 = any free port (printed at start). Default 7740.
    pub port: u16,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { enabled: true, port: 7740 }
    }
}

/// `[hooks]`: commands the daemon runs through `sh -c`, with the outcome in environment
/// variables (README "Hooks"). A hook's failure is logged and changes nothing else.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Run after every backup, scheduled or not, successful or not. Empty = none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub after_backup: String,
    /// Seconds a hook may run before it is killed. Default 0 = 600.
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout_secs: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `[provider]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Bytes of disk always left free: a pack or claim block that would eat into them is
    /// refused (`NoRoom`, "not enough free disk"), whatever the contracts say. Default 64 MiB.
    pub min_free_bytes: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig { min_free_bytes: 64 << 20 }
    }
}

/// `[repair]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// Seconds a holder may stay unreachable before its copies stop counting as live and
    /// are placed again elsewhere. Default 86400.
    pub grace_secs: u64,
    /// Packs repaired at once. Default 2.
    pub concurrency: usize,
    /// Bytes per second repair may send, all copies counted. Default 4 MiB/s.
    pub bytes_per_sec: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig { grace_secs: 86400, concurrency: 2, bytes_per_sec: 4 << 20 }
    }
}

/// `[audit]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Mean seconds between two audit rounds (each round challenges every holder once);
    /// the actual wait is uniform in [0.5, 1.5] × this. Default 3600.
    pub interval_secs: u64,
    /// Seconds a holder has to answer one challenge. Default 30.
    pub timeout_secs: u64,
    /// Seconds a holder may stay unreachable before that counts as a failure. Default 86400.
    pub grace_secs: u64,
    /// Score below which a peer loses its standing (0..1). Default 0.8.
    pub min_score: f64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { interval_secs: 3600, timeout_secs: 30, grace_secs: 86400, min_score: 0.8 }
    }
}

/// `[network]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Multiaddrs to listen on. Default: TCP and QUIC on all interfaces, port 0 (any free port).
    pub listen: Vec<String>,
    /// Multiaddrs of peers to bootstrap from, each ending in `/p2p/<PeerId>`.
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS. Default true.
    pub mdns: bool,
    /// Connections to keep open at most, in total. Default 256.
    pub max_connections: u32,
    /// Connected peers to look for; above half as many again, the least needed connections
    /// are closed until this many remain (contract partners and relays in use are never
    /// closed; protocol.md §1.9). Default 16.
    pub target_peers: usize,
    /// Peers per proposal shard aimed at: proposals travel on one gossipsub topic per
    /// shard of `shard_peers` to twice as many peers, chosen from the network size this
    /// peer estimates (protocol.md §1.6). Default 1,024. Every peer of a network should
    /// use the same value; test networks set it low to have several shards.
    pub shard_peers: u64,
    /// Treat only globally routable IP addresses as reachable: an address in a private,
    /// loopback, link-local or documentation range is never advertised, confirmed as
    /// external, or added to the routing table. Default true; `false` is for test networks
    /// and closed LANs, where every address counts (protocol.md §1.10).
    pub global_addresses_only: bool,
    /// Ask the router to forward a port to us with UPnP IGD. Default true.
    pub upnp: bool,
    /// Bytes per second (in KiB/s, as restic's `--limit-upload`) everything this daemon
    /// sends may use, serving others included; 0 = no limit. Default 0.
    pub limit_upload: u64,
    /// KiB/s everything this daemon receives may use; 0 = no limit. Default 0.
    pub limit_download: u64,
}

/// `[relay]`: circuit relay v2 (libp2p relay-v2 spec) served to private peers while this
/// peer is publicly reachable. Bounds keep a relay cheap: circuits carry contract messages,
/// never packs (protocol.md §1.10).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Serve relay reservations and circuits. Default true.
    pub serve: bool,
    /// Reservations held at once, all peers together. Default 128.
    pub max_reservations: usize,
    /// Seconds a reservation lasts before it must be renewed. Default 3600.
    pub reservation_secs: u64,
    /// Circuits open at once, all peers together. Default 16.
    pub max_circuits: usize,
    /// Bytes one circuit may carry (both directions) before the relay closes it. Default 1 MiB.
    pub max_circuit_bytes: u64,
    /// Seconds one circuit may stay open. Default 120.
    pub max_circuit_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            serve: true,
            max_reservations: 128,
            reservation_secs: 3600,
            max_circuits: 16,
            max_circuit_bytes: 1 << 20,
            max_circuit_secs: 120,
        }
    }
}

/// `[contracts]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ContractsConfig {
    /// A peer may hold at most `ratio × offered` bytes at others, each copy counted. Default 1.0.
    pub ratio: f64,
    /// Length of a new contract, seconds. Default 30 days.
    pub duration_secs: u64,
    /// How long a client waits for acceptances of its proposal, seconds. Default 30.
    pub proposal_wait_secs: u64,
    /// Make contracts, in both roles, with friends only (`[[friend]]`). Default false.
    pub only_friends: bool,
    /// Providers a backup spreads its packs over, as a multiple of the holders each pack
    /// needs (copies, or K+M), at most [`crate::contracts::MAX_SPREAD`]; 1 = only as many as
    /// a pack needs. Default 3 (protocol.md Appendix A.5.3, "Spread").
    pub spread: usize,
}

/// `[backup]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Target pack size, bytes: a pack is sealed once it reaches this. Default 16 MiB; at most 24 MiB.
    pub pack_size: u64,
    /// Packs uploaded at once (each to all its holders). Default 4.
    pub upload_concurrency: usize,
    /// zstd level for blobs, 1 to 19. Default 3.
    pub zstd_level: i32,
}

/// Largest allowed `backup.pack_size`: keeps every pack under the store request cap (protocol.md §6).
pub const MAX_PACK_TARGET: u64 = 24 << 20;

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/0".into(), "/ip4/0.0.0.0/udp/0/quic-v1".into()],
            bootstrap: vec![],
            mdns: true,
            max_connections: 256,
            target_peers: crate::net::TARGET_PEERS,
            shard_peers: crate::net::shard::SHARD_PEERS,
            global_addresses_only: true,
            upnp: true,
            limit_upload: 0,
            limit_download: 0,
        }
    }
}

impl Default for ContractsConfig {
    fn default() -> Self {
        ContractsConfig {
            ratio: 1.0,
            duration_secs: 30 * 24 * 3600,
            proposal_wait_secs: 30,
            only_friends: false,
            spread: 3,
        }
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig { pack_size: 16 << 20, upload_concurrency: 4, zstd_level: 3 }
    }
}

const HEADER: &str = "\
# peer configuration (TOML). Sizes are bytes, durations seconds.
#
# [network]
#   listen            multiaddrs to listen on (port 0 = any free port)
#   bootstrap         multiaddrs of known peers, each ending in /p2p/<PeerId>
#   mdns              find peers on the local network (true/false)
#   max_connections   open connections at most
#   target_peers      peers to stay connected to; above 1.5x that, the least needed are closed
#   shard_peers       peers per proposal shard (the same in the whole network)
#   global_addresses_only  only public IP addresses count as reachable (false: test networks, closed LANs)
#   upnp              ask the router for a port mapping (UPnP IGD)
#   limit_upload      KiB/s all sending may use, serving others included (0 = no limit)
#   limit_download    KiB/s all receiving may use (0 = no limit)
# [contracts]
#   ratio             bytes you may keep at others = ratio x bytes you offer (each copy counted)
#   duration_secs     length of a new contract
#   proposal_wait_secs  how long a backup waits for providers to accept
#   only_friends      make contracts (both roles) with [[friend]] peers only
#   spread            spread packs over this many times the providers a pack needs (1 = no more)
# [backup]
#   pack_size         target pack size (at most 24 MiB)
#   upload_concurrency  packs uploaded at once
#   zstd_level        compression level 1..19
# [audit]
#   interval_secs     mean time between audit rounds of the peers holding your packs
#   timeout_secs      time a holder has to answer one challenge
#   grace_secs        time a holder may be unreachable before that counts as a failure
#   min_score         score (0..1) below which a peer loses its contracts with you
# [repair]
#   grace_secs        time a holder may be unreachable before its copies are placed again elsewhere
#   concurrency       packs repaired at once
#   bytes_per_sec     upload rate repair may use
# [provider]
#   min_free_bytes    disk always left free; packs that would use it are refused
# [relay]             circuit relay v2 for peers behind NAT, served while you are publicly reachable
#   serve             true/false
#   max_reservations, reservation_secs, max_circuits, max_circuit_bytes, max_circuit_secs   its bounds
# [dashboard]         the local web page (and /metrics, /health) on 127.0.0.1; 'peer dashboard' prints its URL
#   enabled           true/false
#   port              TCP port on 127.0.0.1 (0 = any free port)
# [test_restore]      restores of a random sample of the latest snapshot, checked, then removed
#   interval_secs     mean time between two (0 = never)
#   files, max_bytes  how much each restores at most
# [hooks]
#   after_backup      shell command run after each backup and failed test restore; sees PEER_RESULT, PEER_SNAPSHOT,
#                     PEER_FILES, PEER_BYTES_READ, PEER_BYTES_NEW, PEER_ERROR, PEER_SCHEDULE ...
#   timeout_secs      seconds a hook may run (default 600)
# [[friend]]          a peer chosen by hand ('peer friends add CODE' writes these)
#   peer, name, addrs its PeerId, a name, and the addresses from its invite code
# [[schedule]]        a backup the daemon runs by itself ('peer schedule add' writes these)
#   name, paths       its name and the absolute paths to back up
#   every | cron      \"1h\" / \"30m\" / \"1d\", or a cron expression such as \"0 3 * * *\" (local time)
#   copies | erasure  3 / \"4+2\"
#   exclude           gitignore patterns
#   keep              retention after each run, then prune: { last = 7, daily = 14, weekly = 8, monthly = 12 }

";

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(ConfigError::Io { path: p, source: e }),
        };
        let c: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid { path: p.clone(), message: e.to_string() })?;
        c.validate().map_err(|message| ConfigError::Invalid { path: p, message })?;
        Ok(c)
    }

    /// Reads the config of a home that `peer init` made: a missing or empty file is an
    /// error, never silent defaults (which would listen on every interface with mDNS on,
    /// whatever the home was made with). Errors: [`ConfigError::Missing`], or as [`Config::load`].
    pub fn load_existing(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConfigError::Missing(p)),
            Ok(t) if t.trim().is_empty() => Err(ConfigError::Missing(p)),
            _ => Config::load(path),
        }
    }

    /// Checks ranges that TOML types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.contracts.ratio > 0.0 && self.contracts.ratio.is_finite()) {
            return Err("contracts.ratio must be a positive number".into());
        }
        if self.backup.pack_size < 1 << 20 || self.backup.pack_size > MAX_PACK_TARGET {
            return Err(format!("backup.pack_size must be between 1 MiB and {MAX_PACK_TARGET} bytes"));
        }
        if self.audit.interval_secs == 0 || self.audit.timeout_secs == 0 {
            return Err("audit.interval_secs and audit.timeout_secs must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.audit.min_score) {
            return Err("audit.min_score must be between 0 and 1".into());
        }
        if !(1..=19).contains(&self.backup.zstd_level) {
            return Err("backup.zstd_level must be between 1 and 19".into());
        }
        if self.repair.concurrency == 0 || self.repair.bytes_per_sec == 0 {
            return Err("repair.concurrency and repair.bytes_per_sec must be at least 1".into());
        }
        if self.backup.upload_concurrency == 0 {
            return Err("backup.upload_concurrency must be at least 1".into());
        }
        if self.contracts.spread == 0 {
            return Err("contracts.spread must be at least 1 (1 = only the providers a pack needs)".into());
        }
        crate::schedule::validate_all(&self.schedules)?;
        crate::friends::validate_all(&self.friends)?;
        for a in self.network.listen.iter().chain(&self.network.bootstrap) {
            a.parse::<libp2p::Multiaddr>().map_err(|e| format!("'{a}' is not a multiaddr: {e}"))?;
        }
        Ok(())
    }

    /// Replaces the config at `path` with this one (commented header included), atomically:
    /// a temporary file beside it, fsynced, renamed over it. Errors name the file.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let p = path.display().to_string();
        self.validate().map_err(|message| ConfigError::Invalid { path: p.clone(), message })?;
        let body = toml::to_string_pretty(self)
            .map_err(|e| ConfigError::Invalid { path: p.clone(), message: e.to_string() })?;
        let text = format!("{HEADER}{body}");
        crate::provider::write_tmp(path, text.as_bytes())
            .and_then(|t| crate::provider::commit_tmp(&t, path))
            .map_err(|e| ConfigError::Io { path: p, source: e })
    }

    /// Writes the config with a commented header; refuses to overwrite an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), ConfigError> {
        use std::io::Write;
        let p = path.display().to_string();
        let body = toml::to_string_pretty(self)
            .map_err(|e| ConfigError::Invalid { path: p.clone(), message: e.to_string() })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| ConfigError::Io { path: p.clone(), source: e })?;
        f.write_all(HEADER.as_bytes())
            .and_then(|_| f.write_all(body.as_bytes()))
            .and_then(|_| f.sync_all())
            .map_err(|e| ConfigError::Io { path: p, source: e })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_config_reads_back_and_bad_keys_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        let mut c = Config::default();
        c.network.bootstrap.push("/ip4/127.0.0.1/tcp/4001".into());
        c.save_new(&p).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
        assert!(c.save_new(&p).is_err());
        std::fs::write(&p, "[network]\nlisten = [\"not an addr\"]\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("not an addr"), "{e}");
        std::fs::write(&p, "[backup]\nbogus = 1\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        assert_eq!(Config::load(&d.path().join("none")).unwrap(), Config::default());
    }
}
