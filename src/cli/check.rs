//! `peer check [--read-data]`.

use super::{CliError, CliResult, call, print_json};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also download every pack from a holder and decrypt and verify every blob in it.
    #[arg(long)]
    read_data: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Challenges every holder of every pack the snapshots need; exit code 1 on any problem.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Reply::Check(s) = call(home, Request::Check { read_data: a.read_data }, |_| {})? else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    if a.json {
        print_json("summary", &s)?;
    } else {
        println!("snapshots: {}", s.snapshots);
        println!("packs:     {}", s.packs);
        println!("copies:    {} of {} proved held", s.copies_ok, s.copies_checked);
        if a.read_data {
            println!("read:      {} packs downloaded and verified", s.packs_read);
        }
        for p in &s.problems {
            eprintln!("peer: {p}");
        }
    }
    if s.problems.is_empty() {
        Ok(())
    } else {
        Err(CliError { message: format!("check found {} problems", s.problems.len()), code: 1 })
    }
}
