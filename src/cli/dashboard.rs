//! `peer dashboard`: prints the local web dashboard's URL, with its token.

use super::{CliResult, call};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Asks the daemon for the dashboard's URL and prints it.
pub fn run(home: &Home) -> CliResult {
    let Reply::Dashboard(url) = call(home, Request::Dashboard, |_| {})? else {
        return Err("unexpected reply from the daemon".into());
    };
    println!("{url}");
    Ok(())
}
