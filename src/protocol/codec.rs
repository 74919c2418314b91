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

/// A message this long or longer is read into a pooled buffer ([`take_buffer`]); a
/// shorter one is copied out of it into a buffer of its own length (bytes). 1 MiB: the
/// allocator's mapping threshold (`M_MMAP_THRESHOLD`, set by the binary), above which a
/// buffer of its own is mapped, faulted in page by page, zeroed and unmapped on every
/// message.
pub const POOLED_FROM: usize = 1 << 20;
/// Most free message buffers kept for reuse. Buffers are only ever allocated when none is
/// free, so the pool never holds more buffers than were in use at once before; this
/// bounds what it keeps while nothing is received (each buffer at most twice the last
/// message it held, as a message of [`POOLED_FROM`] bytes or more is given a buffer
/// trimmed to twice its length; packs are 16 MiB by default, protocol.md §3.3).
pub const POOL_MAX: usize = 2;
/// A message is read into a pooled buffer once it is longer than this many bytes (the
/// first read's size): small messages never touch the pool.
const FIRST_READ: usize = 64 * 1024;

/// Free message buffers, emptied, each with the capacity of the largest message it held.
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// An empty buffer from the pool, or a new one.
fn take_buffer() -> Vec<u8> {
    POOL.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default()
}

/// Gives `buf` back to the pool, emptied, unless the pool already holds [`POOL_MAX`]
/// buffers or `buf` is more than twice as long as the message it held (its pages, up to
/// its capacity, stay in memory: a buffer grown for a 16 MiB pack is not kept to hold
/// shards of a quarter of that).
fn give_buffer(mut buf: Vec<u8>) {
    if buf.len().saturating_mul(2) < buf.capacity() {
        return;
    }
    buf.clear();
    if let Ok(mut p) = POOL.lock()
        && p.len() < POOL_MAX
    {
        p.push(buf);
    }
}

/// Frees every pooled message buffer (the binary calls it every 30 seconds, before it
/// hands freed memory back to the kernel), so that a daemon that has stopped receiving
/// large messages does not keep their buffers.
pub fn release_buffers() {
    let free = POOL.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
    drop(free);
}

/// A message body to send, read by `fill` into an emptied buffer from the same pool as
/// received messages (a provider's answer to `Fetch`, a whole pack: protocol.md §5.2), so
/// that a provider serving a restore does not map, fault in and zero a new 16 MiB buffer
/// for every pack. The buffer goes back to the pool when the last clone of the returned
/// [`Bytes`](bytes::Bytes) is dropped, once the response is written. Returns what `fill`
/// returned with the bytes; `fill`'s error as it is.
pub fn pooled<T, E>(fill: impl FnOnce(&mut Vec<u8>) -> Result<T, E>) -> Result<(T, bytes::Bytes), E> {
    let mut buf = take_buffer();
    match fill(&mut buf) {
        Ok(t) => Ok((t, bytes::Bytes::from_owner(Pooled(buf)))),
        Err(e) => {
            give_buffer(buf);
            Err(e)
        }
    }
}

/// A message in a pooled buffer, received or to be sent ([`pooled`]): the slices of
/// [`Bytes`](bytes::Bytes) made from it keep it alive, and the last one dropped gives it
/// back to the pool.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.0));
    }
}

/// Reads at most `max` bytes to the end of the stream, 64 KiB at a time (each taken from
/// `budget` if given), and decodes them. Errors: over the cap, budget exhausted, bad CBOR.
/// A message longer than 64 KiB is read into a pooled buffer; at least [`POOLED_FROM`]
/// bytes long, it is decoded in place and its buffer goes back to the pool once every
/// field sliced from it is dropped.
async fn read_capped<T: DeserializeOwned, R: AsyncRead + Unpin + Send>(
    io: &mut R,
    max: u64,
    budget: Option<&InboundBudget>,
) -> io::Result<T> {
    let mut buf = Vec::new();
    let mut pooled = false;
    let mut taken = Taken(budget, 0);
    let mut chunk = vec![0u8; FIRST_READ];
    let read = async {
        loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            if (buf.len() + n) as u64 > max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message over the {max}-byte limit")));
            }
            taken.take(n as u64)?;
            if !pooled && buf.len() + n > FIRST_READ {
                let mut p = take_buffer();
                p.extend_from_slice(&buf);
                buf = p;
                pooled = true;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    if let Err(e) = read.await {
        if pooled {
            give_buffer(buf);
        }
        return Err(e);
    }
    let bytes = if !pooled {
        buf.shrink_to_fit(); // a message's fields are slices of it and keep it alive
        bytes::Bytes::from(buf)
    } else if buf.len() < POOLED_FROM {
        let own = bytes::Bytes::copy_from_slice(&buf);
        give_buffer(buf);
        own
    } else {
        // A buffer grown for a larger message is trimmed to twice this one (a mapped
        // buffer shrinks in place), so no message holds much more memory than its size.
        buf.shrink_to(buf.len().saturating_mul(2));
        bytes::Bytes::from_owner(Pooled(buf))
    };
    super::shared::from_cbor_shared("message", bytes)
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
    fn a_body_to_send_is_read_into_a_pooled_buffer_given_back_after_its_last_clone() {
        release_buffers();
        let fill = |byte: u8| {
            move |b: &mut Vec<u8>| {
                assert!(b.is_empty(), "a buffer from the pool comes emptied");
                b.extend_from_slice(&vec![byte; 2 << 20]);
                Ok::<_, io::Error>(b.len())
            }
        };
        let (n, a) = pooled(fill(3)).unwrap();
        assert_eq!((n, a.len()), (2 << 20, 2 << 20));
        let (at, slice) = (a.as_ptr(), a.slice(10..20));
        drop(a);
        assert!(POOL.lock().unwrap().is_empty(), "a slice still holds the buffer");
        drop(slice);
        assert_eq!(POOL.lock().unwrap().len(), 1);
        let (_, b) = pooled(fill(4)).unwrap();
        assert_eq!(b.as_ptr(), at, "the same buffer serves the next body");
        assert!(b.iter().all(|&x| x == 4));
        let e = pooled(|b| {
            b.push(1);
            Err::<(), _>(io::Error::other("disk gone"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk gone");
    }

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

    #[test]
    fn large_messages_are_read_into_pooled_buffers_that_stay_theirs_while_sliced() {
        use crate::protocol::DataResponse;
        futures::executor::block_on(async {
            let pack = |b: u8, n: usize| crate::protocol::to_cbor(&DataResponse::Pack(vec![b; n].into()));
            let read = |m: Vec<u8>| async move {
                match read_capped::<DataResponse, _>(&mut &m[..], 64 << 20, None).await.unwrap() {
                    DataResponse::Pack(b) => b,
                    other => panic!("not a pack: {other:?}"),
                }
            };
            let a = read(pack(7, 3 << 20)).await;
            // a is a slice of a pooled buffer: reading more messages must not reuse it
            let b = read(pack(9, 2 << 20)).await;
            let middle = read(pack(5, 300 << 10)).await; // pooled while read, then copied out
            assert!(a.len() == 3 << 20 && a.iter().all(|x| *x == 7));
            assert!(b.len() == 2 << 20 && b.iter().all(|x| *x == 9));
            assert!(middle.len() == 300 << 10 && middle.iter().all(|x| *x == 5));
            let a_at = a.as_ptr() as usize;
            drop(a);
            // once every slice is gone its buffer is the next one taken
            let c = read(pack(3, 1 << 20)).await;
            assert!(c.iter().all(|x| *x == 3));
            // (same head length, so the bytes sit at the same place in it)
            assert_eq!(c.as_ptr() as usize, a_at, "the freed buffer is reused");
            assert!(b.iter().all(|x| *x == 9), "a buffer still sliced is left alone");
            drop((b, c, middle));
            assert!(POOL.lock().unwrap().len() >= 2);
            release_buffers();
            assert!(POOL.lock().unwrap().is_empty());
            // a buffer grown for a larger message is trimmed to twice the next one
            drop(read(pack(2, 6 << 20)).await); // grows a buffer to 8 MiB
            assert!(POOL.lock().unwrap()[0].capacity() >= 6 << 20);
            let d = read(pack(4, (1 << 20) + 1)).await;
            assert!(d.iter().all(|x| *x == 4));
            drop(d);
            let kept = POOL.lock().unwrap().iter().map(Vec::capacity).collect::<Vec<_>>();
            assert!(kept.len() == 1 && kept[0] <= 2 * ((1 << 20) + 1 + 16), "{kept:?}");
            release_buffers();
            // a message cut off by its cap gives its buffer back too
            let e = read_capped::<DataResponse, _>(&mut &pack(1, 2 << 20)[..], 1 << 20, None).await.unwrap_err();
            assert!(e.to_string().contains("limit"));
            assert_eq!(POOL.lock().unwrap().len(), 1);
        });
    }
}
