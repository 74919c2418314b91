//! `peer friends [list|invite|add|remove]`: peers chosen by hand ([`crate::friends`]).

use super::{CliResult, call, short};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer friends`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// What to do; none lists the friends.
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON (the listing).
    #[arg(long)]
    json: bool,
}

/// `peer friends` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// List friends: connected or not, and live contracts with each.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print this peer's invite code, to give to a friend.
    Invite,
    /// Add a friend from its invite code (written to config.toml; takes effect at once).
    Add {
        /// The friend's invite code ('peer friends invite' on its machine).
        code: String,
        /// A name to recognise it by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Remove a friend, by PeerId or name.
    Remove {
        /// PeerId or name.
        which: String,
    },
}

/// Runs `peer friends …`.
pub fn run(home: &Home, a: Args) -> CliResult {
    match a.action {
        None => list(home, a.json),
        Some(Action::List { json }) => list(home, json || a.json),
        Some(Action::Invite) => {
            let Reply::Invite(code) = call(home, Request::Invite, |_| {})? else {
                return Err("unexpected reply from the daemon".into());
            };
            println!("{code}");
            Ok(())
        }
        Some(Action::Add { code, name }) => {
            call(home, Request::FriendAdd { code, name }, |_| {})?;
            println!("friend added");
            Ok(())
        }
        Some(Action::Remove { which }) => {
            call(home, Request::FriendRemove(which.clone()), |_| {})?;
            println!("friend {which} removed");
            Ok(())
        }
    }
}

fn list(home: &Home, json: bool) -> CliResult {
    let Reply::Friends { only_friends, friends } = call(home, Request::Friends, |_| {})? else {
        return Err("unexpected reply from the daemon".into());
    };
    if json {
        println!("{}", serde_json::json!({"only_friends": only_friends, "friends": friends}));
        return Ok(());
    }
    if friends.is_empty() {
        println!("no friends yet: give yours 'peer friends invite', add theirs with 'peer friends add CODE'");
    }
    for f in &friends {
        let state = if f.connected { "connected" } else { "not connected" };
        let name = if f.friend.name.is_empty() { "-" } else { &f.friend.name };
        println!("{:<16} {}  {state}, {} live contracts", name, short(&f.friend.peer), f.contracts);
    }
    if only_friends {
        println!("contracts are made with friends only (contracts.only_friends)");
    }
    Ok(())
}
