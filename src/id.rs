//! Typed 32-byte identifiers: [`BlobId`], [`PackId`], [`SnapshotId`], [`ContractId`], [`ProposalId`].
//!
//! Every id is 32 bytes. It prints as 64 lowercase hex digits, parses back from the
//! same (`FromStr`), has a short 8-digit form for logs, and travels in CBOR as a
//! byte string of length 32 (protocol.md §2 "Identifiers").

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Error parsing an id from hex: wrong length or a non-hex digit.
#[derive(Debug, thiserror::Error)]
#[error("'{input}' is not an id: expected 64 hex digits")]
pub struct ParseIdError {
    /// The text that failed to parse.
    pub input: String,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// First 8 hex digits, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
            /// Builds an id from a byte slice; `None` unless it is exactly 32 bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(b).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || ParseIdError { input: s.to_string() };
                let v = hex::decode(s).map_err(|_| err())?;
                Self::from_slice(&v).ok_or_else(err)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
                Self::from_slice(&b).ok_or_else(|| {
                    serde::de::Error::invalid_length(b.len(), &"32 bytes")
                })
            }
        }
    };
}

id_type!(
    /// Id of a blob: HMAC-SHA-256 of its plaintext under the client's id-key (protocol.md §3.2).
    BlobId
);
id_type!(
    /// Id of a pack: root of the SHA-256 Merkle tree over its 64 KiB leaves (protocol.md §3.3).
    PackId
);
id_type!(
    /// Id of a snapshot: the [`BlobId`] of the snapshot blob.
    SnapshotId
);
id_type!(
    /// Id of a contract: SHA-256 of the signed acceptance body (protocol.md §4.3).
    ContractId
);
id_type!(
    /// Id of a proposal: SHA-256 of the signed proposal body (protocol.md §4.1).
    ProposalId
);

/// SHA-256 of `data`, the hash every id in the protocol is built on (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_cbor_is_a_byte_string() {
        let id = PackId([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<PackId>().unwrap(), id);
        assert_eq!(id.short(), "abababab");
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).unwrap();
        // major type 2 (byte string), length 32 in one extra byte.
        assert_eq!(&buf[..2], &[0x58, 0x20]);
        let back: PackId = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn bad_ids_are_refused() {
        assert!("zz".parse::<BlobId>().is_err());
        assert!("abcd".parse::<BlobId>().is_err());
        let mut buf = Vec::new();
        ciborium::into_writer(&serde_bytes::Bytes::new(&[1, 2, 3]), &mut buf).unwrap();
        assert!(ciborium::from_reader::<BlobId, _>(&buf[..]).is_err());
    }
}
