//! Byte strings decoded as slices of the received message instead of copies.
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

/// Decodes a message from `buf` like [`from_cbor`]; byte strings read by [`bytes`] share
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
