//! `peer snapshots`.

use super::{CliError, CliResult, call, human};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer snapshots`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

/// Lists snapshots, oldest first.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Reply::Snapshots(v) = call(home, Request::Snapshots, |_| {})? else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("{:<16}  {:<20}  {:>8}  {:>10}  paths", "id", "time (UTC)", "files", "size");
    for s in v {
        let t = super::utc(s.time);
        println!(
            "{:<16}  {:<20}  {:>8}  {:>10}  {}",
            super::short(&s.id),
            t,
            s.files,
            human(s.bytes),
            s.paths.join(", ")
        );
    }
    Ok(())
}
