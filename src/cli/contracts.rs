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
    /// End this contract now (id or unique prefix) and tell the other side.
    #[arg(long, value_name = "ID")]
    cancel: Option<String>,
    /// Why, with --cancel (sent to the other side).
    #[arg(long, default_value = "cancelled by its owner")]
    reason: String,
}

/// Lists each contract: id, role, the other peer, bytes used of granted, expiry, state;
/// or, with `--cancel`, ends one.
pub fn run(home: &Home, a: Args) -> CliResult {
    if let Some(contract) = a.cancel {
        call(home, Request::Cancel { contract: contract.clone(), reason: a.reason }, |_| {})?;
        println!("contract {contract} ended here; the other side was sent a signed cancellation (if reachable)");
        return Ok(());
    }
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
            Some(_) => format!("ended: {}", c.end_reason),
            None if c.expires <= now => "expired".to_string(),
            None => "live".to_string(),
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
