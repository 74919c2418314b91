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
    /// Rebuild a lost peer from its 24-word recovery phrase (`peer key export --mnemonic`),
    /// read from standard input. The daemon then finds its backups through the network.
    #[arg(long)]
    recover: bool,
    /// With --recover: read the identity from this key file (`peer key export --output`)
    /// instead of a phrase.
    #[arg(long, value_name = "FILE", requires = "recover")]
    key_file: Option<std::path::PathBuf>,
}

/// Creates `home` (mode 0700), `identity.key` (0600) and `config.toml`; prints the PeerId.
/// With `--recover` the key comes from the phrase on stdin and the home is marked for recovery.
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
    let id = if let Some(f) = &a.key_file {
        Identity::load(f)?
    } else if a.recover {
        let mut phrase = String::new();
        let stdin = std::io::stdin();
        let read = if std::io::IsTerminal::is_terminal(&stdin) {
            eprintln!("type the 24 words of the recovery phrase, then Enter:");
            stdin.read_line(&mut phrase).map(|_| ())
        } else {
            std::io::Read::read_to_string(&mut stdin.lock(), &mut phrase).map(|_| ())
        };
        read.map_err(|e| format!("cannot read the phrase: {e}"))?;
        Identity::from_mnemonic(&phrase)?
    } else {
        Identity::generate()
    };
    id.save_new(&key)?;
    if a.recover {
        // The daemon looks for the latest head while this file exists (protocol.md §5.8).
        std::fs::write(home.recover_marker(), b"").map_err(|e| format!("{}: {e}", home.dir.display()))?;
    }
    if !home.config_file().exists() {
        config.save_new(&home.config_file())?;
    }
    println!("{}", id.peer_id());
    Ok(())
}
