//! `peer test-restore [--json]`: restore a random sample of the latest snapshot now,
//! check it against the snapshot, remove it (README "Test restores").

use super::{CliError, CliResult, call, human, print_json, short};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer test-restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one test restore on the daemon and prints its outcome; exit 1 when it failed.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Reply::TestRestore(r) = call(home, Request::TestRestore, |_| {})? else {
        return Err("unexpected reply from the daemon".into());
    };
    if a.json {
        print_json("test_restore", &r)?;
    } else {
        println!("test restore of snapshot {}: {} files, {}", short(&r.snapshot), r.sample.len(), human(r.bytes));
        for f in &r.sample {
            println!("  {f}");
        }
    }
    if r.ok() {
        if !a.json {
            println!("every file came back as the snapshot says ({:.1} s)", r.seconds);
        }
        Ok(())
    } else {
        Err(CliError { message: format!("test restore failed: {}", r.error), code: 1 })
    }
}
