//! `peer contracts`: the contracts of this peer, both roles.

use super::{CliError, CliResult, call, human};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer contracts`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

/// Lists each contract: id, role, the other peer, bytes used of granted, expiry, state.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Reply::Status(s) = call(home, Request::Status, |_| {})? else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    if a.json {
        println!("{}", serde_json::to_string(&s.contracts)?);
        return Ok(());
    }
    let now = crate::protocol::now();
    println!("{:<8}  {:<8}  {:<52}  {:>21}  {:>8}  state", "id", "role", "peer", "used / granted", "expires");
    for c in &s.contracts {
        let state = match c.ended {
            Some(_) => "ended (failed audits)",
            None if c.expires <= now => "expired",
            None => "live",
        };
        let days = c.expires.saturating_sub(now) as f64 / 86400.0;
        println!(
            "{:<8}  {:<8}  {:<52}  {:>21}  {:>7.1}d  {state}",
            c.id.get(..8).unwrap_or(&c.id),
            c.role,
            c.peer,
            format!("{} / {}", human(c.used), human(c.bytes)),
            days
        );
    }
    Ok(())
}
