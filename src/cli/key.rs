//! `peer key export [--mnemonic | --output FILE]`: the identity, for safekeeping.

use super::{CliError, CliResult};
use crate::config::Home;
use crate::identity::Identity;
use std::path::PathBuf;

/// Arguments of `peer key`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The action.
    #[command(subcommand)]
    action: Action,
}

/// `peer key` actions.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Print the identity as a 24-word recovery phrase, or write it to a key file. With it
    /// alone `peer init --recover` gets every backup back on a new machine: keep it offline.
    Export {
        /// Print the 24-word BIP-39 recovery phrase.
        #[arg(long, conflicts_with = "output")]
        mnemonic: bool,
        /// Write a key file (mode 0600, never overwriting) instead.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Runs `peer key export`. Needs no daemon.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Action::Export { mnemonic, output } = a.action;
    let id = Identity::load(&home.key_file())?;
    match (mnemonic, output) {
        (true, _) => {
            println!("{}", id.mnemonic());
            Ok(())
        }
        (false, Some(path)) => {
            id.save_new(&path)?;
            eprintln!("wrote the key of {} to {}", id.peer_id(), path.display());
            Ok(())
        }
        (false, None) => Err(CliError {
            message: "say how: 'peer key export --mnemonic' prints the recovery phrase, \
                      'peer key export --output FILE' writes a key file"
                .into(),
            code: 2,
        }),
    }
}
