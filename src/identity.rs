//! The peer's identity: one ed25519 keypair, its PeerId, message signing, and the
//! subkeys derived from its secret with HKDF-SHA-256 (RFC 5869).
//!
//! The key file `home/identity.key` holds the 32-byte ed25519 secret as 64 hex
//! digits and a newline, mode 0600. Everything else a client needs to read its own
//! backups is derived from it (protocol.md §3.1):
//!
//! | subkey   | HKDF info        | use                                         |
//! |----------|------------------|---------------------------------------------|
//! | id-key   | `peer/blob-id`   | HMAC-SHA-256 key for blob ids               |
//! | enc-key  | `peer/blob-enc`  | XChaCha20-Poly1305 key for blobs and headers|
//! | claim-key| `peer/claim`     | seed of the claims it places (protocol.md §4.6)|
//!
//! salt = `peer/keys/v1` for all.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::Write;
use std::path::Path;

/// Errors loading or creating an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file exists already; `peer init` never overwrites it.
    #[error("an identity already exists at {0}; refusing to overwrite it (use another --home)")]
    Exists(String),
    /// The key file is missing.
    #[error("no identity at {0}; run 'peer init' first")]
    Missing(String),
    /// The key file exists but is not 64 hex digits.
    #[error("the key file {0} is corrupt: expected 64 hex digits")]
    Corrupt(String),
    /// A recovery phrase that does not decode.
    #[error("not a valid recovery phrase: {0}")]
    BadPhrase(String),
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A signature check that failed: bad key, bad signature, or a PeerId that does not match the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("invalid ed25519 public key")]
    BadKey,
    /// The signature is not 64 bytes or does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// The identity and its derived keys. Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    keypair: libp2p::identity::Keypair,
    /// HMAC-SHA-256 key for blob ids (32 bytes).
    pub id_key: [u8; 32],
    /// XChaCha20-Poly1305 key for blob and pack-header encryption (32 bytes).
    pub enc_key: [u8; 32],
    /// Seed of the claims this peer places at its clients (32 bytes; protocol.md §4.6).
    pub claim_key: [u8; 32],
}

impl Identity {
    /// Builds the identity from a 32-byte ed25519 secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        let mut s = secret;
        let kp = libp2p::identity::ed25519::Keypair::from(
            libp2p::identity::ed25519::SecretKey::try_from_bytes(&mut s)
                .expect("any 32 bytes are an ed25519 secret key"),
        );
        let hk = Hkdf::<Sha256>::new(Some(b"peer/keys/v1"), &secret);
        let mut id_key = [0u8; 32];
        let mut enc_key = [0u8; 32];
        hk.expand(b"peer/blob-id", &mut id_key).expect("32 bytes is a valid HKDF-SHA-256 output length");
        hk.expand(b"peer/blob-enc", &mut enc_key).expect("32 bytes is a valid HKDF-SHA-256 output length");
        let mut claim_key = [0u8; 32];
        hk.expand(b"peer/claim", &mut claim_key).expect("32 bytes is a valid HKDF-SHA-256 output length");
        Identity { signing, keypair: kp.into(), id_key, enc_key, claim_key }
    }

    /// The 32-byte secret as a 24-word BIP-39 phrase (English word list, checksum included):
    /// with it alone, `peer init --recover` rebuilds this identity and every derived key.
    pub fn mnemonic(&self) -> String {
        bip39::Mnemonic::from_entropy(&self.signing.to_bytes()).expect("32 bytes is valid BIP-39 entropy").to_string()
    }

    /// The identity a 24-word BIP-39 phrase encodes. Errors name the problem: an unknown
    /// word, a wrong word count, or a failed checksum (a mistyped word).
    pub fn from_mnemonic(phrase: &str) -> Result<Self, IdentityError> {
        let words = phrase.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        let m = bip39::Mnemonic::parse_normalized(&words).map_err(|e| IdentityError::BadPhrase(e.to_string()))?;
        let secret: [u8; 32] = m
            .to_entropy()
            .try_into()
            .map_err(|_| IdentityError::BadPhrase("a peer identity phrase has 24 words".into()))?;
        Ok(Self::from_secret(secret))
    }

    /// A fresh random identity: 32 bytes from `rand`'s thread generator (ChaCha12, a
    /// CSPRNG seeded from the operating system's generator).
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut secret);
        Self::from_secret(secret)
    }

    /// Loads the identity from `path` (64 hex digits).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                IdentityError::Missing(p.clone())
            } else {
                IdentityError::Io { path: p.clone(), source: e }
            }
        })?;
        let bytes = hex::decode(text.trim()).map_err(|_| IdentityError::Corrupt(p.clone()))?;
        let secret: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::Corrupt(p))?;
        Ok(Self::from_secret(secret))
    }

    /// Writes the identity to a new file at `path` with mode 0600; refuses to overwrite.
    pub fn save_new(&self, path: &Path) -> Result<(), IdentityError> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(p.clone())
            } else {
                IdentityError::Io { path: p.clone(), source: e }
            }
        })?;
        let line = format!("{}\n", hex::encode(self.signing.to_bytes()));
        f.write_all(line.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| IdentityError::Io { path: p, source: e })
    }

    /// This peer's PeerId (identity multihash of the protobuf-encoded ed25519 public key, libp2p peer-ids spec).
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The libp2p keypair, for the Swarm.
    pub fn keypair(&self) -> libp2p::identity::Keypair {
        self.keypair.clone()
    }

    /// The 32-byte ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `body` under `domain` and wraps both in a [`Signed`] envelope (protocol.md §2.2).
    pub fn sign(&self, domain: &str, body: Vec<u8>) -> Signed {
        let sig = self.signing.sign(&signed_bytes(domain, &body));
        Signed { body, key: self.public_key(), sig: sig.to_bytes().to_vec() }
    }

    /// A detached signature over `domain || 0x00 || body` (64 bytes).
    pub fn sign_detached(&self, domain: &str, body: &[u8]) -> Vec<u8> {
        self.signing.sign(&signed_bytes(domain, body)).to_bytes().to_vec()
    }
}

/// The exact bytes an ed25519 signature covers: the domain string, one zero byte, then the body.
pub fn signed_bytes(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + body.len());
    m.extend_from_slice(domain.as_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// PeerId of a 32-byte ed25519 public key.
pub fn peer_id_of(key: &[u8; 32]) -> Result<PeerId, SignatureError> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(key).map_err(|_| SignatureError::BadKey)?;
    Ok(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// Checks a detached signature by `key` over `domain || 0x00 || body`.
pub fn verify_detached(key: &[u8; 32], domain: &str, body: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
    let vk = VerifyingKey::from_bytes(key).map_err(|_| SignatureError::BadKey)?;
    let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| SignatureError::BadSignature)?;
    vk.verify_strict(&signed_bytes(domain, body), &sig).map_err(|_| SignatureError::BadSignature)
}

/// A signed message: the exact CBOR bytes of a body, the signer's ed25519 public key and
/// its signature over `domain || 0x00 || body` (protocol.md §2.2). The body is kept as
/// bytes so the signature stays checkable after gossip and storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The CBOR-encoded body, exactly as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The signer's 32-byte ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
    /// The 64-byte ed25519 signature.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Signed {
    /// Verifies the signature under `domain` and returns the signer's PeerId.
    pub fn verify(&self, domain: &str) -> Result<PeerId, SignatureError> {
        verify_detached(&self.key, domain, &self.body, &self.sig)?;
        peer_id_of(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_forgeries_fail() {
        let a = Identity::from_secret([7; 32]);
        let s = a.sign("peer/test/v1", b"hello".to_vec());
        assert_eq!(s.verify("peer/test/v1").unwrap(), a.peer_id());
        // other domain
        assert_eq!(s.verify("peer/other/v1"), Err(SignatureError::BadSignature));
        // changed body
        let mut t = s.clone();
        t.body[0] ^= 1;
        assert_eq!(t.verify("peer/test/v1"), Err(SignatureError::BadSignature));
        // someone else's key
        let mut u = s.clone();
        u.key = Identity::from_secret([8; 32]).public_key();
        assert_eq!(u.verify("peer/test/v1"), Err(SignatureError::BadSignature));
        // truncated signature
        let mut v = s;
        v.sig.pop();
        assert_eq!(v.verify("peer/test/v1"), Err(SignatureError::BadSignature));
    }

    #[test]
    fn mnemonic_round_trips_and_typos_are_caught() {
        let a = Identity::from_secret([9; 32]);
        let phrase = a.mnemonic();
        assert_eq!(phrase.split(' ').count(), 24);
        let b = Identity::from_mnemonic(&format!("  {}\n", phrase.to_uppercase().replace(' ', "\n  "))).unwrap();
        assert_eq!(b.peer_id(), a.peer_id());
        assert_eq!(b.enc_key, a.enc_key);
        let mut words: Vec<&str> = phrase.split(' ').collect();
        words.swap(0, 1);
        let swapped = words.join(" ");
        if swapped != phrase {
            assert!(matches!(Identity::from_mnemonic(&swapped), Err(IdentityError::BadPhrase(_))));
        }
        assert!(matches!(Identity::from_mnemonic("abandon abandon"), Err(IdentityError::BadPhrase(_))));
        assert!(matches!(
            Identity::from_mnemonic(&phrase.replacen(words[2], "notaword", 1)),
            Err(IdentityError::BadPhrase(_))
        ));
        // 12 valid words (128-bit entropy) are not a peer identity
        let short = bip39::Mnemonic::from_entropy(&[1; 16]).unwrap().to_string();
        assert!(matches!(Identity::from_mnemonic(&short), Err(IdentityError::BadPhrase(_))));
    }

    #[test]
    fn derived_keys_are_stable_and_distinct() {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([1; 32]);
        assert_eq!(a.id_key, b.id_key);
        assert_eq!(a.enc_key, b.enc_key);
        assert_ne!(a.id_key, a.enc_key);
        assert_eq!(a.claim_key, b.claim_key);
        assert_ne!(a.claim_key, a.enc_key);
        assert_eq!(a.peer_id(), peer_id_of(&a.public_key()).unwrap());
    }

    #[test]
    fn key_file_is_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("identity.key");
        let a = Identity::generate();
        a.save_new(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(Identity::generate().save_new(&p), Err(IdentityError::Exists(_))));
        assert_eq!(Identity::load(&p).unwrap().peer_id(), a.peer_id());
        std::fs::write(&p, "nothex").unwrap();
        assert!(matches!(Identity::load(&p), Err(IdentityError::Corrupt(_))));
    }
}
