//! `peer offer-storage SIZE`: set the bytes offered to others.

use super::{CliResult, human};
use crate::config::Home;
use crate::control::{ControlError, Reply, Request};

/// Arguments of `peer offer-storage`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size to offer: 50GB, 500MiB, 1TB, or 0 to stop offering.
    size: String,
}

/// Parses a size like `50GB` or `500MiB` (bytesize syntax; plain digits are bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("'{s}' is not a size; write e.g. 50GB, 500MiB or 0"))
}

/// Sends the offer to the running daemon, or writes it to the state when none runs.
pub fn run(home: &Home, a: Args) -> CliResult {
    let bytes = parse_size(&a.size)?;
    if !home.key_file().exists() {
        return Err(crate::identity::IdentityError::Missing(home.key_file().display().to_string()).into());
    }
    let sent =
        super::block_on(crate::control::call(&home.dir, &home.control_socket(), &Request::Offer(bytes), |_| {}))?;
    let notes = match sent {
        Ok(reply) => match super::answer(reply)? {
            Reply::Offered(notes) => notes,
            _ => vec![],
        },
        // No daemon runs: the offer goes straight into the state.
        Err(ControlError::NoDaemon(_)) => {
            crate::daemon::check_offer(home, bytes, 0)?;
            let ratio = crate::config::Config::load_existing(&home.config_file())?.contracts.ratio;
            let state = crate::state::State::open(&home.state_file())?;
            state.set_offered(bytes)?;
            crate::daemon::offer_notes(&state.contracts()?, bytes, ratio)
        }
        Err(e) => return Err(e.into()),
    };
    if bytes == 0 {
        println!("this peer offers no storage now (and so cannot back up to others)");
    } else {
        println!("offering {} to other peers", human(bytes));
    }
    for n in notes {
        eprintln!("peer: note: {n}");
    }
    Ok(())
}
