//! Friends on the daemon ([`crate::friends`]): the friends of `config.toml`, kept in
//! memory and dialed at start and when added; the invite code of this peer; and the
//! rule of `contracts.only_friends`, applied where contracts are made (a proposal we
//! consider, an acceptance we countersign) and where packs are placed.

use super::Inner;
use super::ops::fail;
use crate::control::{ErrorKind, Failure, FriendInfo, Reply};
use crate::friends::{self, Friend};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;

impl Inner {
    /// Loads the friends of `list` (already validated) and dials each at its addresses.
    pub(super) async fn load_friends(&self, list: &[Friend]) {
        let map: HashMap<PeerId, Friend> =
            list.iter().filter_map(|f| f.peer_id().ok().map(|p| (p, f.clone()))).collect();
        let dial: Vec<(PeerId, Vec<Multiaddr>)> =
            map.iter().map(|(p, f)| (*p, f.addrs.iter().filter_map(|a| a.parse().ok()).collect())).collect();
        *self.friends.lock().unwrap_or_else(|p| p.into_inner()) = map;
        let connected = self.net.status().await.map(|s| s.connected).unwrap_or_default();
        for (p, addrs) in dial {
            if !connected.contains(&p) {
                self.net.dial(p, addrs).await;
            }
        }
    }

    /// Whether contracts with `peer` are allowed: always, unless `contracts.only_friends`
    /// is set and `peer` is no friend.
    pub(super) fn may_contract_with(&self, peer: &PeerId) -> bool {
        !self.config.contracts.only_friends || self.friends.lock().unwrap_or_else(|p| p.into_inner()).contains_key(peer)
    }

    /// How many friends we have.
    pub(super) fn friend_count(&self) -> usize {
        self.friends.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `peer friends invite`: this peer's invite code, with the addresses we advertise
    /// (listen addresses when none is confirmed yet).
    pub(super) async fn invite(&self) -> Reply {
        let mut addrs: Vec<Multiaddr> = self.net.advertised();
        if addrs.is_empty()
            && let Ok(ns) = self.net.status().await
        {
            use libp2p::multiaddr::Protocol;
            let unspecified = |a: &Multiaddr| match a.iter().next() {
                Some(Protocol::Ip4(ip)) => ip.is_unspecified(),
                Some(Protocol::Ip6(ip)) => ip.is_unspecified(),
                _ => false,
            };
            addrs = ns.listen.into_iter().filter(|a| !unspecified(a)).collect();
        }
        // The PeerId is in the code already: the addresses go without `/p2p/…`.
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .map(|a| a.into_iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect())
            .collect();
        match friends::encode(&self.me(), &addrs) {
            Ok(code) => Reply::Invite(code),
            Err(e) => fail(ErrorKind::Local, e.to_string()),
        }
    }

    /// `peer friends add CODE [--name NAME]`: records the friend in config.toml and dials it.
    pub(super) async fn friend_add(&self, code: String, name: String) -> Reply {
        let (peer, addrs) = match friends::decode(&code) {
            Ok(v) => v,
            Err(e) => return fail(ErrorKind::Usage, e.to_string()),
        };
        if peer == self.me() {
            return fail(ErrorKind::Usage, "that is this peer's own invite code");
        }
        let entry = Friend { peer: peer.to_string(), name, addrs: addrs.iter().map(|a| a.to_string()).collect() };
        self.edit_friends(move |list| {
            list.retain(|f| f.peer != entry.peer);
            list.push(entry);
            Ok(())
        })
        .await
    }

    /// `peer friends remove PEER|NAME`.
    pub(super) async fn friend_remove(&self, which: String) -> Reply {
        self.edit_friends(move |list| {
            let before = list.len();
            list.retain(|f| f.peer != which && (f.name.is_empty() || f.name != which));
            if list.len() == before {
                return Err(Failure::new(ErrorKind::NotFound, format!("no friend is '{which}'; see 'peer friends'")));
            }
            Ok(())
        })
        .await
    }

    /// Changes the friends of config.toml and loads the result.
    async fn edit_friends(&self, f: impl FnOnce(&mut Vec<Friend>) -> Result<(), Failure> + Send + 'static) -> Reply {
        match self.edit_config(move |c| f(&mut c.friends)).await {
            Ok(c) => {
                self.load_friends(&c.friends).await;
                Reply::Ok
            }
            Err(f) => Reply::Error(f),
        }
    }

    /// `peer friends`: each friend, whether it is connected, and its live contracts.
    pub(super) async fn friend_list(&self) -> Reply {
        let connected = self.net.status().await.map(|s| s.connected).unwrap_or_default();
        let list: Vec<(PeerId, Friend)> =
            self.friends.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(p, f)| (*p, f.clone())).collect();
        let t = crate::protocol::now();
        let contracts = self.state.contracts();
        let mut out: Vec<FriendInfo> = list
            .into_iter()
            .map(|(p, f)| FriendInfo {
                connected: connected.contains(&p),
                contracts: contracts.iter().filter(|(_, c)| c.is_live(t) && c.peer_id() == Some(p)).count() as u64,
                friend: f,
            })
            .collect();
        out.sort_by(|a, b| (&a.friend.name, &a.friend.peer).cmp(&(&b.friend.name, &b.friend.peer)));
        Reply::Friends { only_friends: self.config.contracts.only_friends, friends: out }
    }
}
