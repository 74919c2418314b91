//! Friends: peers a user chose by hand (README "Backing up to friends"). An invite code
//! carries a peer's public key (its PeerId) and one of its addresses, short enough to
//! read out; `peer friends add CODE` records the friend in `config.toml` (`[[friend]]`)
//! and dials it. With `contracts.only_friends = true` a peer makes contracts, in both
//! roles, with its friends only; give to get, claims and audits apply to friends as to
//! anyone.
//!
//! Invite code (protocol.md Appendix B): the bytes
//! `0x01 ‖ ed25519 public key (32) ‖ n ‖ (len(addr) ‖ addr)ⁿ ‖ SHA-256(all before)[0..2]`
//! (n ≤ [`MAX_CODE_ADDRS`], lengths one byte, multiaddrs in their binary form), in RFC 4648
//! base32 without padding, in groups of five letters joined by `-`: 58 letters without an
//! address, about 72 with an IPv4 one. Case, spaces and dashes are ignored when reading
//! one; the checksum catches a mistyped letter.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Addresses an invite code carries at most.
pub const MAX_CODE_ADDRS: usize = 1;
const VERSION: u8 = 1;

/// One `[[friend]]` entry of config.toml.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Friend {
    /// The friend's PeerId.
    pub peer: String,
    /// A name to recognise it by (optional).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Multiaddrs it was reachable at (from its invite code); dialed at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
}

impl Friend {
    /// Its PeerId; errors name the entry.
    pub fn peer_id(&self) -> Result<PeerId, String> {
        self.peer.parse().map_err(|e| format!("friend '{}' is not a PeerId: {e}", self.peer))
    }
}

/// Checks `[[friend]]` entries: valid PeerIds and multiaddrs, no PeerId twice.
pub fn validate_all(list: &[Friend]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for f in list {
        let p = f.peer_id()?;
        for a in &f.addrs {
            a.parse::<Multiaddr>().map_err(|e| format!("friend {}: '{a}' is not a multiaddr: {e}", f.peer))?;
        }
        if !seen.insert(p) {
            return Err(format!("friend {} is listed twice", f.peer));
        }
    }
    Ok(())
}

/// Why an invite code could not be made or read (protocol.md Appendix B).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The PeerId carries no ed25519 key, so it fits no invite code.
    #[error("{0} has no ed25519 key inside")]
    NotEd25519(PeerId),
    /// The text given is not an invite code: the code as given and why.
    #[error("'{code}' is not an invite code: {why}")]
    Bad {
        /// The code as given.
        code: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The invite code of `peer` reachable at `addrs` (the first [`MAX_CODE_ADDRS`] that
/// fit). Errors: `peer` is not an ed25519 PeerId (every `peer` identity is).
pub fn encode(peer: &PeerId, addrs: &[Multiaddr]) -> Result<String, InviteError> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    let key = (mh.code() == 0)
        .then(|| libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok())
        .flatten()
        .and_then(|k| k.try_into_ed25519().ok())
        .ok_or(InviteError::NotEd25519(*peer))?;
    let mut b = vec![VERSION];
    b.extend_from_slice(&key.to_bytes());
    let addrs: Vec<Vec<u8>> =
        addrs.iter().map(|a| a.to_vec()).filter(|a| a.len() <= 255).take(MAX_CODE_ADDRS).collect();
    b.push(addrs.len() as u8);
    for a in addrs {
        b.push(a.len() as u8);
        b.extend_from_slice(&a);
    }
    let sum = Sha256::digest(&b);
    b.extend_from_slice(&sum[..2]);
    let text = data_encoding::BASE32_NOPAD.encode(&b);
    Ok(text.as_bytes().chunks(5).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-"))
}

/// Reads an invite code. Errors: not base32, a wrong checksum (a mistyped letter), an
/// unknown version, or a malformed PeerId or address.
pub fn decode(code: &str) -> Result<(PeerId, Vec<Multiaddr>), InviteError> {
    let bad = |why: &str| InviteError::Bad { code: code.to_string(), why: why.to_string() };
    let clean: String = code.chars().filter(|c| !c.is_whitespace() && *c != '-').collect::<String>().to_uppercase();
    let b = data_encoding::BASE32_NOPAD.decode(clean.as_bytes()).map_err(|_| bad("not base32"))?;
    if b.len() < 4 {
        return Err(bad("too short"));
    }
    let (body, sum) = b.split_at(b.len() - 2);
    if Sha256::digest(body)[..2] != *sum {
        return Err(bad("the checksum does not match (a letter is wrong or missing)"));
    }
    let mut it = body.iter().copied();
    let mut take = |n: usize| -> Result<Vec<u8>, InviteError> {
        let v: Vec<u8> = it.by_ref().take(n).collect();
        if v.len() == n { Ok(v) } else { Err(bad("truncated")) }
    };
    if take(1)?[0] != VERSION {
        return Err(bad("an unknown version"));
    }
    let key =
        libp2p::identity::ed25519::PublicKey::try_from_bytes(&take(32)?).map_err(|e| bad(&format!("key: {e}")))?;
    let peer = libp2p::identity::PublicKey::from(key).to_peer_id();
    let count = take(1)?[0] as usize;
    let mut addrs = Vec::with_capacity(count);
    for _ in 0..count {
        let n = take(1)?[0] as usize;
        addrs.push(Multiaddr::try_from(take(n)?).map_err(|e| bad(&format!("address: {e}")))?);
    }
    Ok((peer, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_a_typo_is_caught() {
        let peer = crate::identity::Identity::from_secret([3; 32]).peer_id();
        let addrs: Vec<Multiaddr> =
            vec!["/ip4/203.0.113.7/tcp/4001".parse().unwrap(), "/ip4/203.0.113.7/udp/4001/quic-v1".parse().unwrap()];
        let code = encode(&peer, &addrs).unwrap();
        // The example of protocol.md Appendix B.
        assert_eq!(code, "AHWUS-KGGFD-I4FRX-K5EBT-RECZS-VQSSW-JHHJO-GH6JW-G3AUM-FFMQ4-35CAI-IATFQ-A4IHA-YH2D4-V7");
        assert_eq!(decode(&code).unwrap(), (peer, addrs[..1].to_vec()));
        assert_eq!(decode(&code.to_lowercase().replace('-', " ")).unwrap().0, peer);
        let mut typo: Vec<char> = code.chars().collect();
        typo[10] = if typo[10] == 'A' { 'B' } else { 'A' };
        let e = decode(&typo.into_iter().collect::<String>()).unwrap_err();
        assert!(matches!(&e, InviteError::Bad { why, .. } if why.contains("checksum")), "{e}");
        assert!(decode("hello").is_err());
        let bare = encode(&peer, &[]).unwrap();
        assert!(bare.len() <= 70, "{bare}");
        assert_eq!(decode(&bare).unwrap(), (peer, vec![]));
    }

    #[test]
    fn entries_are_checked() {
        let p = crate::identity::Identity::from_secret([4; 32]).peer_id().to_string();
        let f = Friend { peer: p.clone(), name: "ann".into(), addrs: vec!["/ip4/192.0.2.1/tcp/1".into()] };
        validate_all(std::slice::from_ref(&f)).unwrap();
        assert!(validate_all(&[f.clone(), f.clone()]).unwrap_err().contains("twice"));
        let bad = Friend { peer: "nope".into(), ..f };
        assert!(validate_all(&[bad]).unwrap_err().contains("PeerId"));
    }
}
