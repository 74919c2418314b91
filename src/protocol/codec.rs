//! A request-response codec for CBOR messages with explicit size caps (protocol.md §2.3).
//!
//! One request or response per stream: the sender writes the CBOR bytes and closes its
//! side; the receiver reads to the end. A message over its cap is refused before it is
//! decoded (the read stops at cap + 1 bytes), so a peer cannot make us buffer more.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Serialize, de::DeserializeOwned};
use std::io;
use std::marker::PhantomData;

/// CBOR codec for `Req`/`Resp` with a byte cap on each direction.
pub struct CborCodec<Req, Resp> {
    request_max: u64,
    response_max: u64,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    /// A codec refusing requests over `request_max` and responses over `response_max` bytes.
    pub fn new(request_max: u64, response_max: u64) -> Self {
        CborCodec { request_max, response_max, _types: PhantomData }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.request_max, self.response_max)
    }
}

/// Reads at most `max` bytes to the end of the stream and decodes them.
async fn read_capped<T: DeserializeOwned, R: AsyncRead + Unpin + Send>(io: &mut R, max: u64) -> io::Result<T> {
    let mut buf = Vec::new();
    io.take(max + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message over the {max}-byte limit")));
    }
    ciborium::from_reader(&buf[..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

async fn write_all<W: AsyncWrite + Unpin + Send>(io: &mut W, buf: Vec<u8>, max: u64) -> io::Result<()> {
    if buf.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("message over the {max}-byte limit")));
    }
    io.write_all(&buf).await?;
    io.close().await
}

#[async_trait::async_trait]
impl<Req, Resp> libp2p::request_response::Codec for CborCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req> {
        read_capped(io, self.request_max).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp> {
        read_capped(io, self.response_max).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        write_all(io, super::to_cbor(&req), self.request_max).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        write_all(io, super::to_cbor(&resp), self.response_max).await
    }
}
