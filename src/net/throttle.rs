//! Bandwidth limits for everything the daemon sends and receives (`network.limit_upload`,
//! `network.limit_download`, in KiB/s as restic's `--limit-upload`).
//!
//! The limit sits under every protocol: each TCP and QUIC connection's muxer is wrapped so
//! that every substream's reads and writes draw on one [`Rate`] per direction, shared by
//! all connections. Relayed connections ride on a direct connection to the relay, so their
//! bytes are counted there once. What is counted is the payload of substreams (requests,
//! responses, gossip, DHT messages); the Noise and Yamux framing around them is not.
//!
//! The wrapper is always in place; with no limit in force a read or write costs two atomic
//! operations more: the limit's load, and the count of bytes moved ([`Rate::moved`], served
//! as `peer_sent_bytes_total` and `peer_received_bytes_total`).
//!
//! A [`Rate`] is a virtual clock: each transfer of `n` bytes moves `next` forward by
//! `n / rate` seconds, and a transfer may start only while `next` is no more than
//! [`BURST`] ahead of now, so over any interval the bytes moved stay within
//! `rate × interval + rate × BURST + CHUNK`.

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use prometheus_client::metrics::counter::Counter;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How far ahead of now the virtual clock may run before transfers wait.
pub const BURST: Duration = Duration::from_millis(100);
/// Largest piece moved in one read or write while a limit is set, bytes.
pub const CHUNK: usize = 16 << 10;

/// One direction's limit, shared by every substream of every connection: the configured
/// rate, lowered while a command asks for less ([`Rate::limit_while`], restic's
/// `--limit-upload` / `--limit-download`).
#[derive(Debug)]
pub struct Rate {
    /// Configured bytes per second; 0 = none.
    base: u64,
    /// Bytes per second in force now; 0 = none.
    effective: AtomicU64,
    /// Lower limits asked for by commands running now, bytes per second.
    overrides: Mutex<Vec<u64>>,
    next: Mutex<Instant>,
    /// Bytes moved in this direction since the start, limited or not.
    moved: Counter,
}

/// Holds a command's lower limit until dropped.
pub struct RateGuard {
    rate: Arc<Rate>,
    bytes_per_sec: u64,
}

impl Drop for RateGuard {
    fn drop(&mut self) {
        if let Ok(mut o) = self.rate.overrides.lock() {
            if let Some(i) = o.iter().position(|b| *b == self.bytes_per_sec) {
                o.swap_remove(i);
            }
            self.rate.recompute(&o);
        }
    }
}

impl Rate {
    /// A limit of `kib_per_sec` KiB/s; 0 = no limit (until a command asks for one).
    pub fn new(kib_per_sec: u64) -> Arc<Rate> {
        let base = kib_per_sec.saturating_mul(1024);
        Arc::new(Rate {
            base,
            effective: AtomicU64::new(base),
            overrides: Mutex::new(Vec::new()),
            next: Mutex::new(Instant::now()),
            moved: Counter::default(),
        })
    }

    /// The count of substream payload bytes moved in this direction since the start (a
    /// handle: clones share the count).
    pub fn moved(&self) -> Counter {
        self.moved.clone()
    }

    /// Bytes per second in force now; 0 = no limit.
    pub fn bytes_per_sec(&self) -> u64 {
        self.effective.load(Ordering::Relaxed)
    }

    /// Holds the rate at most at `kib_per_sec` KiB/s until the guard is dropped (the lowest
    /// of the configured limit and every command's wins); 0 changes nothing.
    pub fn limit_while(self: &Arc<Self>, kib_per_sec: u64) -> Option<RateGuard> {
        let bytes_per_sec = kib_per_sec.saturating_mul(1024);
        if bytes_per_sec == 0 {
            return None;
        }
        let mut o = self.overrides.lock().ok()?;
        o.push(bytes_per_sec);
        self.recompute(&o);
        Some(RateGuard { rate: self.clone(), bytes_per_sec })
    }

    fn recompute(&self, overrides: &[u64]) {
        let e = overrides.iter().copied().chain((self.base > 0).then_some(self.base)).min().unwrap_or(0);
        self.effective.store(e, Ordering::Relaxed);
    }

    /// How long to wait before a transfer may start (zero: now).
    fn delay(&self, now: Instant) -> Duration {
        let next = self.next.lock().map(|n| *n).unwrap_or(now);
        next.saturating_duration_since(now + BURST)
    }

    /// Counts `n` bytes moved at `now`.
    fn charge(&self, n: usize, now: Instant) {
        self.moved.inc_by(n as u64);
        let bps = self.bytes_per_sec();
        if bps == 0 {
            return;
        }
        if let Ok(mut next) = self.next.lock() {
            *next = (*next).max(now) + Duration::from_secs_f64(n as f64 / bps as f64);
        }
    }
}

/// The two limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// What we send.
    pub up: Arc<Rate>,
    /// What we receive.
    pub down: Arc<Rate>,
}

impl Limits {
    /// Limits of `up` and `down` KiB/s (0 = none).
    pub fn new(up: u64, down: u64) -> Self {
        Limits { up: Rate::new(up), down: Rate::new(down) }
    }

    /// Wraps a connection's muxer so that its substreams obey these limits.
    pub fn wrap(&self, m: StreamMuxerBox) -> StreamMuxerBox {
        StreamMuxerBox::new(Throttled { inner: m, limits: self.clone() })
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
        let rate = this.limits.down.clone();
        if rate.bytes_per_sec() == 0 {
            let r = Pin::new(&mut this.inner).poll_read(cx, buf);
            if let Poll::Ready(Ok(k)) = r {
                rate.moved.inc_by(k as u64);
            }
            return r;
        }
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
        let rate = this.limits.up.clone();
        if rate.bytes_per_sec() == 0 {
            let r = Pin::new(&mut this.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(k)) = r {
                rate.moved.inc_by(k as u64);
            }
            return r;
        }
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
        let r = Rate::new(1); // 1024 bytes/s
        let t = Instant::now();
        assert_eq!(r.delay(t), Duration::ZERO);
        r.charge(1024, t); // one second's worth
        let d = r.delay(t);
        assert!(d > Duration::from_millis(850) && d <= Duration::from_millis(900), "{d:?}");
        assert_eq!(r.delay(t + Duration::from_millis(900)), Duration::ZERO);
        // A command's lower limit holds while its guard lives; the lowest one wins.
        let r = Rate::new(0);
        assert_eq!(r.bytes_per_sec(), 0);
        let g1 = r.limit_while(100);
        let g2 = r.limit_while(10);
        assert_eq!(r.bytes_per_sec(), 10 * 1024);
        drop(g2);
        assert_eq!(r.bytes_per_sec(), 100 * 1024);
        drop(g1);
        assert_eq!(r.bytes_per_sec(), 0);
        let c = Rate::new(50);
        let g = c.limit_while(500);
        assert_eq!(c.bytes_per_sec(), 50 * 1024, "the configured limit stays when a command asks for more");
        drop(g);
        // Bytes are counted with or without a limit.
        let m = Rate::new(0);
        m.charge(100, t);
        m.charge(23, t);
        assert_eq!(m.moved().get(), 123);
    }
}
