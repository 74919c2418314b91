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
        let t = humantime(s.time);
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

/// `YYYY-MM-DD HH:MM:SS` (UTC) from seconds since the Unix epoch (civil-from-days, H. Hinnant).
fn humantime(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::humantime(0), "1970-01-01 00:00:00");
        assert_eq!(super::humantime(1_795_219_200), "2026-11-21 00:00:00");
    }
}
