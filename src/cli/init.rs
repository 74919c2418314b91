//! `peer init`: create the identity and configuration.

use super::CliResult;
use crate::config::{Config, Home};
use crate::identity::Identity;

/// Arguments of `peer init`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Listen multiaddr (repeatable). Default: TCP and QUIC on all interfaces, any port.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Bootstrap peer multiaddr ending in /p2p/<PeerId> (repeatable).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Disable mDNS discovery on the local network.
    #[arg(long)]
    no_mdns: bool,
}

/// Creates `home` (mode 0700), `identity.key` (0600) and `config.toml`; prints the PeerId.
pub fn run(home: &Home, a: Args) -> CliResult {
    use std::os::unix::fs::PermissionsExt;
    let key = home.key_file();
    if key.exists() {
        return Err(crate::identity::IdentityError::Exists(key.display().to_string()).into());
    }
    let mut config = Config::default();
    if !a.listen.is_empty() {
        config.network.listen = a.listen;
    }
    config.network.bootstrap = a.bootstrap;
    config.network.mdns = !a.no_mdns;
    config.validate()?;
    std::fs::create_dir_all(&home.dir).map_err(|e| format!("cannot create {}: {e}", home.dir.display()))?;
    std::fs::set_permissions(&home.dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", home.dir.display()))?;
    let id = Identity::generate();
    id.save_new(&key)?;
    if !home.config_file().exists() {
        config.save_new(&home.config_file())?;
    }
    println!("{}", id.peer_id());
    Ok(())
}
