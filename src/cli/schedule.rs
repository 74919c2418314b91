//! `peer schedule [list|add|run|remove]`: backups the daemon runs by itself
//! ([`crate::schedule`]). `add` and `remove` rewrite `config.toml` through the daemon, which
//! applies them at once; with no daemon running they edit the file, for the next start.

use super::{CliError, CliResult, block_on, call, call_with_progress, short, utc};
use crate::config::{Config, Home};
use crate::control::{ControlError, Reply, Request, ScheduleInfo};
use crate::schedule::Schedule;
use std::path::PathBuf;

/// Arguments of `peer schedule`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// What to do; none lists the schedules.
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON (the listing).
    #[arg(long)]
    json: bool,
}

/// `peer schedule` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// List the schedules with their last run, its result, and the next run.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a schedule (or replace the one of the same name); it takes effect at once.
    Add(AddArgs),
    /// Run a schedule now and wait for its outcome.
    Run {
        /// The schedule's name.
        name: String,
        /// Print JSON lines (status lines, then a summary).
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule.
    Remove {
        /// The schedule's name.
        name: String,
    },
}

/// Arguments of `peer schedule add`.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The schedule's name (letters, digits, '-', '_', '.').
    name: String,
    /// Files and directories to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Run at this interval (e.g. 30m, 1h, 1d), the first time within a minute.
    #[arg(long, value_name = "DURATION", required_unless_present = "cron", conflicts_with = "cron")]
    every: Option<String>,
    /// Run at the times of this cron expression, local time (e.g. "0 3 * * *": 03:00 daily).
    #[arg(long, value_name = "EXPR")]
    cron: Option<String>,
    #[command(flatten)]
    placement: super::backup::Placement,
    #[command(flatten)]
    keep: super::forget::KeepArgs,
}

/// Runs `peer schedule …`.
pub fn run(home: &Home, a: Args) -> CliResult {
    match a.action {
        None => list(home, a.json),
        Some(Action::List { json }) => list(home, json || a.json),
        Some(Action::Add(add)) => {
            let spec = spec_of(add)?;
            let name = spec.name.clone();
            edit(home, Request::ScheduleAdd(spec.clone()), move |list| {
                list.retain(|s| s.name != spec.name);
                list.push(spec);
                Ok(())
            })?;
            println!("schedule '{name}' saved");
            Ok(())
        }
        Some(Action::Run { name, json }) => {
            let Reply::Backup(s) = call_with_progress(home, Request::ScheduleRun(name), json)? else {
                return Err("unexpected reply from the daemon".into());
            };
            super::backup::report(&s, json)
        }
        Some(Action::Remove { name }) => {
            let n = name.clone();
            edit(home, Request::ScheduleRemove(name.clone()), move |list| {
                let before = list.len();
                list.retain(|s| s.name != n);
                if list.len() == before {
                    return Err(CliError { message: format!("no schedule is named '{n}'"), code: 1 });
                }
                Ok(())
            })?;
            println!("schedule '{name}' removed");
            Ok(())
        }
    }
}

/// The schedule `add` describes, with its paths made absolute and checked.
fn spec_of(a: AddArgs) -> Result<Schedule, CliError> {
    let mut paths = Vec::new();
    for p in &a.paths {
        let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::symlink_metadata(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
        paths.push(abs);
    }
    let spec = Schedule {
        name: a.name,
        paths,
        every: a.every,
        cron: a.cron,
        copies: a.placement.copies,
        erasure: a.placement.erasure,
        exclude: a.placement.exclude,
        lock: a.placement.lock.map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string()),
        keep: a.keep.policy(),
    };
    spec.validate().map_err(|message| CliError { message, code: super::EXIT_USAGE })?;
    Ok(spec)
}

/// Sends `req` to the daemon; with no daemon running, applies `offline` to config.toml.
fn edit(home: &Home, req: Request, offline: impl FnOnce(&mut Vec<Schedule>) -> Result<(), CliError>) -> CliResult {
    match block_on(crate::control::call(&home.dir, &home.control_socket(), &req, |_| {}))? {
        Ok(reply) => super::answer(reply).map(|_| ()),
        Err(ControlError::NoDaemon(_)) => {
            let path = home.config_file();
            let mut config = Config::load_existing(&path)?;
            offline(&mut config.schedules)?;
            config.save(&path)?;
            eprintln!("peer: no daemon is running; the change applies when 'peer daemon' starts");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn list(home: &Home, json: bool) -> CliResult {
    let Reply::Schedules(list) = call(home, Request::Schedules, |_| {})? else {
        return Err("unexpected reply from the daemon".into());
    };
    if json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no schedules; add one with 'peer schedule add NAME PATH... --every 1h'");
        return Ok(());
    }
    for s in &list {
        print_one(s);
    }
    Ok(())
}

/// A schedule as a few lines of text.
pub(super) fn print_one(s: &ScheduleInfo) {
    let how = match s.spec.erasure {
        Some(e) => format!("erasure {e}"),
        None => format!("{} copies", s.spec.copies),
    };
    let paths: Vec<String> = s.spec.paths.iter().map(|p| p.display().to_string()).collect();
    println!("{}  {}, {}: {}", s.spec.name, s.spec.when_text(), how, paths.join(" "));
    match &s.last {
        None => println!("  last run:  never"),
        Some(l) if l.ok() && l.error.is_empty() => {
            println!("  last run:  {}  ok, snapshot {}", utc(l.started), short(&l.snapshot))
        }
        Some(l) if l.ok() => {
            println!("  last run:  {}  snapshot {}, but {}", utc(l.started), short(&l.snapshot), l.error)
        }
        Some(l) => println!("  last run:  {}  FAILED ({} in a row): {}", utc(l.started), l.failures, l.error),
    }
    if s.running {
        println!("  running now");
    } else {
        println!("  next run:  {}", utc(s.next));
    }
}
