//! `peer`: a fully decentralized peer-to-peer backup system.
//!
//! Every user runs the same daemon. It offers some of its disk to other peers and, in
//! return, keeps encrypted copies of its own files on them: give storage to get storage.
//! Peers find each other with a Kademlia DHT, agree on contracts over gossipsub and move
//! packs over libp2p request-response streams. See `protocol.md` for the wire protocol
//! and `README.md` for use.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod backup;
pub mod claims;
pub mod cli;
pub mod config;
pub mod contracts;
pub mod control;
pub mod daemon;
pub mod drill;
pub mod durability;
pub mod friends;
pub mod head;
pub mod hooks;
pub mod id;
pub mod identity;
pub mod localnet;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod provider;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod state;
pub mod store;
pub mod transfer;
