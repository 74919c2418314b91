//! The client's data model (protocol.md §3): chunks, blobs, packs, trees and snapshots.
//!
//! A file is cut into chunks by FastCDC ([`chunker`]); each chunk or tree becomes a
//! blob ([`blob`]: zstd, then XChaCha20-Poly1305, id = HMAC-SHA-256 of the plaintext);
//! blobs are appended into packs with an encrypted header ([`pack`]); a pack's id is
//! the root of a SHA-256 Merkle tree over its 64 KiB leaves ([`merkle`]). Trees and
//! snapshots ([`tree`]) are CBOR documents stored as blobs; so is the index ([`index`]),
//! in index packs of its own, so that the head stays small.

pub mod blob;
pub mod chunker;
pub mod erasure;
pub mod index;
pub mod merkle;
pub mod pack;
pub mod packer;
pub mod tree;
#[cfg(test)]
mod vectors;

/// Errors reading any client-side format: they name what is corrupt.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A blob failed authentication, did not decompress, or does not match its id.
    #[error("blob {0} is corrupt: {1}")]
    CorruptBlob(String, &'static str),
    /// A pack's trailer or header is malformed or fails authentication.
    #[error("pack is corrupt: {0}")]
    CorruptPack(String),
    /// A tree or snapshot document does not decode.
    #[error("{0} does not decode: {1}")]
    BadDocument(&'static str, String),
}
