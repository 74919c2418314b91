//! A request-response codec for CBOR messages with explicit size caps (protocol.md §2.3).
//!
//! One request or response per stream: the sender writes the CBOR bytes and closes its
//! side; the receiver reads to the end. A message over its cap is refused before it is
//! decoded (the read stops at cap + 1 bytes), so a peer cannot make us buffer more.
//! An optional [`InboundBudget`] bounds the bytes of all inbound requests being read at
//! once, across every connection: past it, a read fails and the stream is closed.

use super::shared::{Encode, Encoded};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A request as read from a stream: decoded, or malformed (over its cap or not CBOR of the
/// expected shape). Malformed input is handed up instead of failing the stream, because
/// only the behaviour knows which peer sent it, and a peer that sends garbage is counted.
#[derive(Debug)]
pub enum Inbound<Req> {
    /// A well-formed request.
    Request(Req),
    /// Bytes that did not decode, with the reason.
    Malformed(String),
}

/// A shared cap on bytes of inbound requests being read at once (all streams together).
#[derive(Debug)]
pub struct InboundBudget {
    used: AtomicU64,
    limit: u64,
}

impl InboundBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(InboundBudget { used: AtomicU64::new(0), limit })
    }
}

/// Bytes taken from a budget, given back on drop.
struct Taken<'a>(Option<&'a InboundBudget>, u64);

impl Taken<'_> {
    fn take(&mut self, n: u64) -> io::Result<()> {
        let Some(b) = self.0 else { return Ok(()) };
        if b.used.fetch_add(n, Ordering::AcqRel) + n > b.limit {
            b.used.fetch_sub(n, Ordering::AcqRel);
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "inbound byte budget exhausted; busy"));
        }
        self.1 += n;
        Ok(())
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.used.fetch_sub(self.1, Ordering::AcqRel);
        }
    }
}

/// CBOR codec for `Req`/`Resp` with a byte cap on each direction.
pub struct CborCodec<Req, Resp> {
    request_max: u64,
    response_max: u64,
    budget: Option<Arc<InboundBudget>>,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    /// A codec refusing requests over `request_max` and responses over `response_max` bytes.
    pub fn new(request_max: u64, response_max: u64) -> Self {
        CborCodec { request_max, response_max, budget: None, _types: PhantomData }
    }

    /// The same codec, also bounding inbound requests being read at once by `budget`.
    pub fn with_budget(mut self, budget: Arc<InboundBudget>) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        CborCodec { budget: self.budget.clone(), ..Self::new(self.request_max, self.response_max) }
    }
}

/// Reads at most `max` bytes to the end of the stream, 64 KiB at a time (each taken from
/// `budget` if given), and decodes them. Errors: over the cap, budget exhausted, bad CBOR.
async fn read_capped<T: DeserializeOwned, R: AsyncRead + Unpin + Send>(
    io: &mut R,
    max: u64,
    budget: Option<&InboundBudget>,
) -> io::Result<T> {
    let mut buf = Vec::new();
    let mut taken = Taken(budget, 0);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if (buf.len() + n) as u64 > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message over the {max}-byte limit")));
        }
        taken.take(n as u64)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.shrink_to_fit(); // a pack's fields are slices of it and keep it alive
    super::shared::from_cbor_shared("message", buf.into())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

async fn write_all<W: AsyncWrite + Unpin + Send>(io: &mut W, msg: Encoded, max: u64) -> io::Result<()> {
    if msg.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("message over the {max}-byte limit")));
    }
    io.write_all(&msg.head).await?;
    if let Some(tail) = &msg.tail {
        io.write_all(tail).await?;
    }
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for CborCodec<Req, Resp>
where
    Req: Encode + DeserializeOwned + Send + 'static,
    Resp: Encode + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Inbound<Req>;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<Req>> {
        match read_capped(io, self.request_max, self.budget.as_deref()).await {
            Ok(r) => Ok(Inbound::Request(r)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Inbound::Malformed(e.to_string())),
            Err(e) => Err(e),
        }
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp> {
        read_capped(io, self.response_max, None).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound<Req>,
    ) -> io::Result<()> {
        match req {
            Inbound::Request(r) => write_all(io, r.encode(), self.request_max).await,
            Inbound::Malformed(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a request")),
        }
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        write_all(io, resp.encode(), self.response_max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_budget_refuse_before_decoding() {
        futures::executor::block_on(async {
            let msg = crate::protocol::to_cbor(&serde_bytes::ByteBuf::from(vec![7u8; 200_000]));
            let ok: serde_bytes::ByteBuf = read_capped(&mut &msg[..], 300_000, None).await.unwrap();
            assert_eq!(ok.len(), 200_000);
            let e = read_capped::<serde_bytes::ByteBuf, _>(&mut &msg[..], 100_000, None).await.unwrap_err();
            assert!(e.to_string().contains("limit"));
            let budget = InboundBudget::new(100_000);
            let e = read_capped::<serde_bytes::ByteBuf, _>(&mut &msg[..], 300_000, Some(&budget)).await.unwrap_err();
            assert!(e.to_string().contains("budget"));
            assert_eq!(budget.used.load(Ordering::Relaxed), 0, "budget given back");
            let junk = [0xffu8, 0x00, 0x13];
            assert!(read_capped::<crate::protocol::DataRequest, _>(&mut &junk[..], 100, None).await.is_err());
        });
    }
}
