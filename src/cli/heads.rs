//! `peer heads [--json]`: the heads this peer's providers keep (protocol.md §5.9).

use super::{CliResult, call, utc};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer heads`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON: `[{"seq", "time", "snapshots", "lock_until", "holders"}]`.
    #[arg(long)]
    json: bool,
}

/// Lists the heads, newest first.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Reply::Heads(list) = call(home, Request::Heads, |_| {})? else {
        return Err("unexpected reply from the daemon".into());
    };
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no provider keeps a head of this peer");
    }
    for h in &list {
        let lock = if h.lock_until > 0 { format!("locked until {}", utc(h.lock_until)) } else { "not locked".into() };
        println!("head {:>6}  {}  {:>4} snapshots  {lock}  ({} providers)", h.seq, utc(h.time), h.snapshots, h.holders);
    }
    if list.len() > 1 {
        println!("restore from an earlier one with: peer restore latest --head SEQ --target DIR");
    }
    Ok(())
}
