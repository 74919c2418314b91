//! Bandwidth limits for everything the daemon sends and receives (`network.limit_upload`,
//! `network.limit_download`, in KiB/s as restic's `--limit-upload`).
//!
//! The limit sits under every protocol: each TCP and QUIC connection's muxer is wrapped so
//! that every substream's reads and writes draw on one [`Rate`] per direction, shared by
//! all connections. Relayed connections ride on a direct connection to the relay, so their
//! bytes are counted there once. What is counted is the payload of substreams (requests,
//! responses, gossip, DHT messages); the Noise and Yamux framing around them is not.
//!
//! A [`Rate`] is a virtual clock: each transfer of `n` bytes moves `next` forward by
//! `n / rate` seconds, and a transfer may start only while `next` is no more than
//! [`BURST`] ahead of now, so over any interval the bytes moved stay within
//! `rate × interval + rate × BURST + CHUNK`.

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How far ahead of now the virtual clock may run before transfers wait.
pub const BURST: Duration = Duration::from_millis(100);
/// Largest piece moved in one read or write while a limit is set, bytes.
pub const CHUNK: usize = 16 << 10;

/// One direction's limit, shared by every substream of every connection.
#[derive(Debug)]
pub struct Rate {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Rate {
    /// A limit of `kib_per_sec` KiB/s; `None` for 0 (no limit).
    pub fn new(kib_per_sec: u64) -> Option<Arc<Rate>> {
        (kib_per_sec > 0)
            .then(|| Arc::new(Rate { bytes_per_sec: kib_per_sec as f64 * 1024.0, next: Mutex::new(Instant::now()) }))
    }

    /// How long to wait before a transfer may start (zero: now).
    fn delay(&self, now: Instant) -> Duration {
        let next = self.next.lock().map(|n| *n).unwrap_or(now);
        next.saturating_duration_since(now + BURST)
    }

    /// Counts `n` bytes moved at `now`.
    fn charge(&self, n: usize, now: Instant) {
        if let Ok(mut next) = self.next.lock() {
            *next = (*next).max(now) + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        }
    }
}

/// The two limits, either of which may be absent.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// What we send.
    pub up: Option<Arc<Rate>>,
    /// What we receive.
    pub down: Option<Arc<Rate>>,
}

impl Limits {
    /// True when neither direction is limited.
    pub fn is_none(&self) -> bool {
        self.up.is_none() && self.down.is_none()
    }

    /// Wraps a connection's muxer so that its substreams obey these limits.
    pub fn wrap(&self, m: StreamMuxerBox) -> StreamMuxerBox {
        if self.is_none() { m } else { StreamMuxerBox::new(Throttled { inner: m, limits: self.clone() }) }
    }
}

/// A muxer whose substreams are [`ThrottledStream`]s.
struct Throttled {
    inner: StreamMuxerBox,
    limits: Limits,
}

impl StreamMuxer for Throttled {
    type Substream = ThrottledStream;
    type Error = io::Error;

    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, Self::Error>> {
        let limits = self.limits.clone();
        Pin::new(&mut self.inner).poll_inbound(cx).map_ok(|s| ThrottledStream::new(s, limits))
    }

    fn poll_outbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, Self::Error>> {
        let limits = self.limits.clone();
        Pin::new(&mut self.inner).poll_outbound(cx).map_ok(|s| ThrottledStream::new(s, limits))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// A substream that waits for its direction's [`Rate`] before each read and write.
pub struct ThrottledStream {
    inner: SubstreamBox,
    limits: Limits,
    read_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    write_wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ThrottledStream {
    fn new(inner: SubstreamBox, limits: Limits) -> Self {
        ThrottledStream { inner, limits, read_wait: None, write_wait: None }
    }
}

/// Ready when `rate` admits a transfer now; otherwise arms `wait` and is pending.
fn admit(rate: &Rate, wait: &mut Option<Pin<Box<tokio::time::Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        let now = Instant::now();
        let d = rate.delay(now);
        if d.is_zero() {
            *wait = None;
            return Poll::Ready(());
        }
        let deadline = tokio::time::Instant::from_std(now + d);
        match wait {
            Some(s) => s.as_mut().reset(deadline),
            None => *wait = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        if let Some(s) = wait
            && s.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
    }
}

impl AsyncRead for ThrottledStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(rate) = this.limits.down.clone() else { return Pin::new(&mut this.inner).poll_read(cx, buf) };
        if admit(&rate, &mut this.read_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let n = buf.len().min(CHUNK);
        let r = Pin::new(&mut this.inner).poll_read(cx, &mut buf[..n]);
        if let Poll::Ready(Ok(k)) = r {
            rate.charge(k, Instant::now());
        }
        r
    }
}

impl AsyncWrite for ThrottledStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(rate) = this.limits.up.clone() else { return Pin::new(&mut this.inner).poll_write(cx, buf) };
        if admit(&rate, &mut this.write_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let n = buf.len().min(CHUNK);
        let r = Pin::new(&mut this.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(k)) = r {
            rate.charge(k, Instant::now());
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_ahead_by_what_was_moved() {
        let r = Rate::new(1).unwrap(); // 1024 bytes/s
        let t = Instant::now();
        assert_eq!(r.delay(t), Duration::ZERO);
        r.charge(1024, t); // one second's worth
        let d = r.delay(t);
        assert!(d > Duration::from_millis(850) && d <= Duration::from_millis(900), "{d:?}");
        assert_eq!(r.delay(t + Duration::from_millis(900)), Duration::ZERO);
        assert!(Rate::new(0).is_none());
    }
}
