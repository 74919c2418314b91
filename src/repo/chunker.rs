//! Content-defined chunking with FastCDC (Xia et al., USENIX ATC 2016; the `fastcdc`
//! crate's 2020 variant). Sizes: min 512 KiB, average 1 MiB, max 8 MiB (protocol.md §3.2),
//! so an insertion shifts only the chunks around it.

use std::io::Read;

/// Smallest chunk, bytes (the last chunk of a file may be smaller).
pub const MIN_CHUNK: u32 = 512 * 1024;
/// Average chunk, bytes.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk, bytes.
pub const MAX_CHUNK: u32 = 8 * 1024 * 1024;

/// Bytes of a file held in memory at once while it is cut: a file up to this size is read
/// whole; a larger one passes through a window of this size (twice [`MAX_CHUNK`], so a
/// refill always has at least [`MAX_CHUNK`] bytes of room).
pub const WINDOW: usize = 16 << 20;

/// Calls `f` with each chunk of `reader`, in order. `len_hint` is the expected length
/// (from metadata); it only sizes the first read, the content read is what counts. Errors
/// are the reader's I/O errors and whatever `f` returns.
pub fn for_each_chunk<R: Read, E: From<std::io::Error>>(
    reader: R,
    len_hint: u64,
    f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    for_each_chunk_in(reader, len_hint, &mut Vec::new(), f)
}

/// [`for_each_chunk`] through `buf`, whose bytes are overwritten and whose length only
/// grows, to the largest window a file has needed (at most [`WINDOW`] bytes): a caller
/// chunking many files reuses one buffer, zeroed once. A new one per file is mapped and
/// faulted in page by page (glibc maps allocations over its threshold), which cost a
/// backup of many files several percent of its CPU.
///
/// The cut points are FastCDC's over the whole content: a cut is only looked for where at
/// least [`MAX_CHUNK`] bytes follow in the window (FastCDC never looks further) or where the
/// file ends, as `fastcdc`'s own `StreamCDC` does. Unlike `StreamCDC`, which moves the
/// rest of its buffer down and allocates a new vector for every chunk, the window's tail
/// is moved down once per refill (under [`MAX_CHUNK`] bytes for every [`WINDOW`] −
/// [`MAX_CHUNK`] bytes read) and each chunk is handed to `f` in place.
pub fn for_each_chunk_in<R: Read, E: From<std::io::Error>>(
    mut reader: R,
    len_hint: u64,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    // Room for the whole file and the read that finds its end, up to a window.
    let first = len_hint.saturating_add(1).min(WINDOW as u64) as usize;
    if buf.len() < first {
        buf.resize(first, 0);
    }
    let mut len = 0; // bytes of `buf` holding the file, from its start
    loop {
        let end_of_file = fill(&mut reader, buf, &mut len)?;
        let window = &buf[..len];
        let cdc = fastcdc::v2020::FastCDC::new(window, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK);
        let mut start = 0;
        while start < len && (end_of_file || len - start >= MAX_CHUNK as usize) {
            let (_, cut) = cdc.cut(start, len - start);
            f(&window[start..cut])?;
            start = cut;
        }
        if end_of_file {
            return Ok(());
        }
        // Fewer than MAX_CHUNK bytes are left uncut: move them to the front and refill.
        buf.copy_within(start..len, 0);
        len -= start;
    }
}

/// Reads into `buf[*len..]` until the window is full (`false`) or the reader ends
/// (`true`), growing `buf` to [`WINDOW`] bytes when it fills before either (a file longer
/// than its hint).
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>, len: &mut usize) -> std::io::Result<bool> {
    loop {
        if *len == buf.len() {
            if buf.len() >= WINDOW {
                return Ok(false);
            }
            buf.resize(WINDOW, 0);
        }
        match reader.read(&mut buf[*len..]) {
            Ok(0) => return Ok(true),
            Ok(n) => *len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_input_and_an_insert_shifts_few() {
        let mut data = vec![0u8; 6 << 20];
        let mut x: u32 = 1;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let chunks = |d: &[u8], hint: u64| {
            let mut v: Vec<Vec<u8>> = Vec::new();
            for_each_chunk(d, hint, |c| {
                v.push(c.to_vec());
                Ok::<(), std::io::Error>(())
            })
            .unwrap();
            v
        };
        let a = chunks(&data, data.len() as u64);
        // streaming (large hint) and in-memory cut the same chunks
        assert_eq!(chunks(&data, u64::MAX), a);
        assert_eq!(a.concat(), data);
        assert!(a.iter().all(|c| c.len() <= MAX_CHUNK as usize));
        let mut edited = data.clone();
        edited.splice(100..100, [1, 2, 3]);
        let b = chunks(&edited, edited.len() as u64);
        let same = b.iter().filter(|c| a.contains(c)).count();
        assert!(same + 1 >= a.len(), "only the first chunk should change");
        assert!(chunks(&[], 0).is_empty());
        // a reader longer than its hint is still cut whole
        let long = vec![5u8; WINDOW + 1000];
        assert_eq!(chunks(&long, 10).concat(), long);
    }

    /// A reader that returns at most `step` bytes per read and is interrupted once in a
    /// while, as a pipe or a network file system may be.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        reads: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            if self.reads.is_multiple_of(7) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = out.len().min(self.step).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_file_larger_than_the_window_is_cut_where_fastcdc_cuts_it_whole() {
        // 2.5 windows of varied bytes, with a long run of one byte (cut at MAX_CHUNK).
        let mut data = vec![0u8; WINDOW * 5 / 2];
        let mut x: u64 = 7;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        data[3 << 20..(3 << 20) + 9 * (1 << 20)].fill(9);
        let whole: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::new(&data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|c| (c.offset, c.length))
            .collect();
        let streamed: Vec<(u64, usize)> = fastcdc::v2020::StreamCDC::new(&data[..], MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|c| c.map(|c| (c.offset, c.length)).unwrap())
            .collect();
        assert_eq!(whole.iter().map(|&(o, l)| (o as u64, l)).collect::<Vec<_>>(), streamed);
        assert!(whole.iter().any(|&(_, l)| l == MAX_CHUNK as usize), "the run is cut at the largest size");
        let mut buf = Vec::new();
        for (step, hint) in [(usize::MAX, data.len() as u64), (300_001, 0), (1 << 20, u64::MAX)] {
            let mut got = Vec::new();
            let mut at = 0;
            let reader = Trickle { data: &data, step, reads: 0 };
            for_each_chunk_in(reader, hint, &mut buf, |c| {
                assert_eq!(c, &data[at..at + c.len()]);
                got.push((at, c.len()));
                at += c.len();
                Ok::<(), std::io::Error>(())
            })
            .unwrap();
            assert_eq!(got, whole, "reads of at most {step} bytes, hint {hint}");
            assert_eq!(buf.len(), WINDOW, "the window is the buffer's size, whatever the hint");
        }
        // A reader's error ends the cutting with that error.
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk gone"))
            }
        }
        let e = for_each_chunk_in(Broken, 10, &mut buf, |_| Ok::<(), std::io::Error>(())).unwrap_err();
        assert_eq!(e.to_string(), "disk gone");
    }
}
