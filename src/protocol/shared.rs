//! Byte strings decoded as slices of the received message instead of copies, and sent
//! from the buffer they are in instead of from a copy inside the encoding ([`Encode`]).
//!
//! A `Store` request or a `Pack` response (protocol.md §5.2) is one CBOR byte string of up
//! to 16 MiB inside a few bytes of framing. [`from_cbor_shared`] decodes a message held in
//! a [`Bytes`] buffer; a field marked `#[serde(deserialize_with = "shared::bytes")]` then
//! becomes a [`Bytes`] that points into that buffer (`Bytes::slice_ref`), so the pack is
//! never copied between the stream and the disk or the restore. The wire format is the
//! plain CBOR byte string either way (RFC 8949 §3.1, major type 2).

use super::{MessageError, from_cbor};
use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use std::cell::RefCell;

/// A message as written to a stream: CBOR bytes `head`, then `tail` if any, whose
/// concatenation is exactly [`super::to_cbor`] of the message (protocol.md §2.1).
pub struct Encoded {
    /// The encoding up to the last field's byte string content.
    pub head: Vec<u8>,
    /// The content of the last field's byte string, shared with the message.
    pub tail: Option<Bytes>,
}

impl Encoded {
    /// Bytes on the wire.
    pub(super) fn len(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, Bytes::len)
    }
}

/// Byte strings shorter than this are encoded in place (64 KiB).
const SPLIT_MIN: usize = 64 << 10;

/// Encodes a message for a stream. A `Store` request or a `Pack` response carrying a pack
/// (16 MiB by default) keeps the pack out of the encoding: the bytes before it are encoded,
/// the pack is written from its own buffer, so a pack sent to three holders at once is
/// not copied three more times.
pub trait Encode: serde::Serialize + Sized {
    /// The message's CBOR bytes, possibly in two parts (see [`Encoded`]).
    fn encode(&self) -> Encoded {
        Encoded { head: super::to_cbor(self), tail: None }
    }
}

/// `with_empty` is the message with its last field's byte string emptied: its encoding
/// ends with the empty byte string `0x40`, which is replaced by the header of `data`.
fn split(with_empty: Vec<u8>, data: &Bytes) -> Encoded {
    let mut head = with_empty;
    debug_assert_eq!(head.last(), Some(&0x40), "the byte string is the last field");
    head.pop();
    ciborium_ll::Encoder::from(&mut head)
        .push(ciborium_ll::Header::Bytes(Some(data.len())))
        .expect("encoding into a Vec cannot fail");
    Encoded { head, tail: Some(data.clone()) }
}

impl Encode for super::DataRequest {
    fn encode(&self) -> Encoded {
        match self {
            super::DataRequest::Store { contract, pack, data } if data.len() >= SPLIT_MIN => {
                let empty = super::DataRequest::Store { contract: *contract, pack: *pack, data: Bytes::new() };
                split(super::to_cbor(&empty), data)
            }
            _ => Encoded { head: super::to_cbor(self), tail: None },
        }
    }
}

impl Encode for super::DataResponse {
    fn encode(&self) -> Encoded {
        match self {
            super::DataResponse::Pack(data) if data.len() >= SPLIT_MIN => {
                split(super::to_cbor(&super::DataResponse::Pack(Bytes::new())), data)
            }
            _ => Encoded { head: super::to_cbor(self), tail: None },
        }
    }
}

impl Encode for super::ContractRequest {}
impl Encode for super::ContractResponse {}

thread_local! {
    /// The buffer being decoded on this thread by [`from_cbor_shared`], if any.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Clears [`SOURCE`] when decoding ends, however it ends.
struct Clear;

impl Drop for Clear {
    fn drop(&mut self) {
        SOURCE.with(|s| s.borrow_mut().take());
    }
}

/// Decodes a message from `buf` like [`from_cbor`]; byte strings read by `bytes` share
/// `buf` instead of copying it. Errors: [`MessageError::Malformed`] naming `what`.
pub fn from_cbor_shared<T: for<'de> serde::Deserialize<'de>>(
    what: &'static str,
    buf: Bytes,
) -> Result<T, MessageError> {
    SOURCE.with(|s| *s.borrow_mut() = Some(buf.clone()));
    let _clear = Clear;
    from_cbor(what, &buf)
}

/// `deserialize_with` for a [`Bytes`] field: a CBOR byte string, never an array of
/// integers (protocol.md §2.1). Inside [`from_cbor_shared`] it is a slice of the message
/// buffer; anywhere else a copy.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_byte_buf(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(SOURCE.with(|s| match s.borrow().as_ref() {
            Some(src) if within(src, v) => src.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        }))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }
}

/// True when `part` lies inside `whole`'s memory (what `Bytes::slice_ref` requires).
fn within(whole: &Bytes, part: &[u8]) -> bool {
    let (start, end) = (whole.as_ptr() as usize, whole.as_ptr() as usize + whole.len());
    let p = part.as_ptr() as usize;
    !part.is_empty() && p >= start && p + part.len() <= end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ContractId, PackId};
    use crate::protocol::{DataRequest, DataResponse, to_cbor};

    #[test]
    fn a_pack_decodes_as_a_slice_of_the_message() {
        let pack = Bytes::from(vec![7u8; 100_000]);
        let msg = Bytes::from(to_cbor(&DataResponse::Pack(pack.clone())));
        let DataResponse::Pack(got) = from_cbor_shared("r", msg.clone()).unwrap() else { panic!("not a pack") };
        assert_eq!(got, pack);
        assert!(within(&msg, &got), "the pack was copied");
        // Outside from_cbor_shared it is a copy, with the same value.
        let DataResponse::Pack(copied) = from_cbor("r", &msg).unwrap() else { panic!("not a pack") };
        assert_eq!(copied, pack);
        assert!(!within(&msg, &copied));
        let req = DataRequest::Store { contract: ContractId([1; 32]), pack: PackId([2; 32]), data: pack.clone() };
        let msg = Bytes::from(to_cbor(&req));
        let DataRequest::Store { data, .. } = from_cbor_shared("q", msg.clone()).unwrap() else {
            panic!("not a store")
        };
        assert_eq!(data, pack);
        assert!(within(&msg, &data));
    }

    #[test]
    fn a_split_encoding_is_the_encoding() {
        for n in [0usize, 23, 24, 255, 256, 65_535, 65_536, 1 << 20, (16 << 20) + 1] {
            let data = Bytes::from(vec![5u8; n]);
            let msgs = [
                (to_cbor(&DataResponse::Pack(data.clone())), DataResponse::Pack(data.clone()).encode()),
                (
                    to_cbor(&DataRequest::Store {
                        contract: ContractId([1; 32]),
                        pack: PackId([2; 32]),
                        data: data.clone(),
                    }),
                    DataRequest::Store { contract: ContractId([1; 32]), pack: PackId([2; 32]), data: data.clone() }
                        .encode(),
                ),
            ];
            for (whole, e) in msgs {
                assert_eq!(e.tail.is_some(), n >= SPLIT_MIN, "split only large byte strings ({n})");
                assert_eq!(e.len(), whole.len());
                let mut joined = e.head.clone();
                joined.extend_from_slice(e.tail.as_deref().unwrap_or_default());
                assert!(joined == whole, "the parts of a {n}-byte message differ from its encoding");
            }
        }
    }

    #[test]
    fn only_byte_strings_decode_and_a_short_one_is_an_error() {
        // {"Pack": [1, 2, 3]}: an array of small integers is not a byte string (§2.1).
        let arr = hex::decode("a1645061636b83010203").unwrap();
        assert!(from_cbor_shared::<DataResponse>("r", arr.into()).is_err());
        let ok = hex::decode("a1645061636b43010203").unwrap();
        assert_eq!(
            from_cbor_shared::<DataResponse>("r", ok.into()).unwrap(),
            DataResponse::Pack(Bytes::from_static(&[1, 2, 3]))
        );
        let empty = Bytes::from(to_cbor(&DataResponse::Pack(Bytes::new())));
        assert_eq!(from_cbor_shared::<DataResponse>("r", empty).unwrap(), DataResponse::Pack(Bytes::new()));
        // A byte string longer than the message is malformed, not a panic.
        let short = hex::decode("a1645061636b5a00ffffff0102").unwrap();
        assert!(from_cbor_shared::<DataResponse>("r", short.into()).is_err());
    }
}
