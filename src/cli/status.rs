//! `peer status`.

use super::{CliError, CliResult, call, human};
use crate::config::Home;
use crate::control::{Reply, Request, StatusReport};

/// Arguments of `peer status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Shows PeerId, addresses, connections, offer, contracts.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Reply::Status(s) = call(home, Request::Status, |_| {})? else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    print_identity(&s);
    print_network(&s);
    print_storage(&s);
    print_health(&s);
    match &s.test_restore {
        Some(t) if t.ok() => println!(
            "test restore:     {}  ok: {} files, {} from snapshot {}",
            super::utc(t.time),
            t.sample.len(),
            human(t.bytes),
            super::short(&t.snapshot)
        ),
        Some(t) => println!("test restore:     {}  FAILED: {}", super::utc(t.time), t.error),
        None => println!("test restore:     none yet ('peer test-restore' runs one now)"),
    }
    if !s.schedules.is_empty() {
        println!("schedules:");
        for sc in &s.schedules {
            super::schedule::print_one(sc);
        }
    }
    Ok(())
}

fn print_identity(s: &StatusReport) {
    println!("peer id:          {}", s.peer_id);
    match &s.head.head_error {
        Some(e) => println!("head:             NOT PUBLISHED: {e} (the last published is {})", s.head.head),
        None if s.head.head > 0 => println!("head:             {} ({} index packs)", s.head.head, s.index_packs),
        None => {}
    }
    if s.recovering {
        println!("recovering:       looking for this peer's head in the network (peer init --recover)");
    }
}

fn print_network(s: &StatusReport) {
    for l in &s.listen {
        println!("listening on:     {l}");
    }
    println!(
        "reachability:     {}{}",
        s.reachability,
        match s.reachability.as_str() {
            "private" if s.relays.is_empty() =>
                " (no relay yet: others cannot reach you; see README 'Behind a home router')",
            "private" => " (others reach you through your relays; hole punching makes direct connections)",
            _ => "",
        }
    );
    for a in &s.external_addrs {
        println!("external address: {a}");
    }
    for r in &s.relays {
        println!("relay:            {r}");
    }
    let relayed = s.connections.iter().filter(|c| c.relayed).count();
    println!(
        "connected peers:  {} ({} connections: {} direct, {relayed} relayed)",
        s.connected.len(),
        s.connections.len(),
        s.connections.len() - relayed
    );
    for c in &s.connections {
        println!("  {} {:<7} {:<4} {}", c.peer, if c.relayed { "relayed" } else { "direct" }, c.transport, c.addr);
    }
    if !s.proposal_shard.is_empty() {
        println!("network size:     about {} peers (proposal shard {})", s.estimated_peers, s.proposal_shard);
    }
}

fn print_storage(s: &StatusReport) {
    println!(
        "offered:          {} ({} granted in contracts, {} used by others)",
        human(s.offered),
        human(s.granted),
        human(s.used_by_others)
    );
    println!("held at others:   {}", human(s.held_at_others));
    if let Some(u) = s.unreferenced_at_others.filter(|u| *u > 0) {
        println!(
            "  of which {} in packs no snapshot needs (from an interrupted backup: the next backup \
             reuses them, 'peer prune' frees the rest)",
            human(u)
        );
    }
    println!(
        "claims:           {} held here for your providers, {} held for you by your clients",
        human(s.claims_held),
        human(s.claims_placed)
    );
    println!("contracts:        {}", s.contracts.len());
    for c in &s.contracts {
        if c.ended.is_some() {
            println!("  {} {:<8} {}  ENDED: {}", c.id.get(..8).unwrap_or(&c.id), c.role, c.peer, c.end_reason);
            continue;
        }
        println!(
            "  {} {:<8} {}  {} of {} used",
            c.id.get(..8).unwrap_or(&c.id),
            c.role,
            c.peer,
            human(c.used),
            human(c.bytes)
        );
    }
}

fn print_health(s: &StatusReport) {
    for d in &s.durability {
        println!(
            "durability:       {}: {} packs, {:.2}× stored, P(pack lost) = {:.1e} per month without repair at {:.0}% churn",
            d.scheme,
            d.packs,
            d.overhead,
            d.monthly_loss,
            crate::durability::MONTHLY_CHURN * 100.0
        );
    }
    if !s.snapshots.is_empty() {
        println!("snapshots (packs at full / reduced / zero live copies):");
    }
    for h in &s.snapshots {
        println!(
            "  {}  {} packs: {} full, {} reduced, {} zero{}",
            h.id.get(..8).unwrap_or(&h.id),
            h.packs,
            h.full,
            h.reduced,
            h.zero,
            if h.note.is_empty() { String::new() } else { format!("  ({})", h.note) }
        );
    }
    if !s.audits.is_empty() {
        println!("audit records (peers you store at, and peers whose claims you check):");
    }
    for a in &s.audits {
        println!(
            "  {}  {:<6} score {:.2}  {} passed, {} failed{}",
            a.peer,
            a.standing,
            a.score,
            a.passes,
            a.failures,
            if a.last_error.is_empty() { String::new() } else { format!("  (last failure: {})", a.last_error) }
        );
    }
}
