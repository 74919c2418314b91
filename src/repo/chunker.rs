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

/// Files up to this size (bytes) are read whole and cut in memory; larger ones are streamed.
pub const IN_MEMORY_MAX: u64 = 16 << 20;

/// Calls `f` with each chunk of `reader`, in order. `len_hint` is the expected length
/// (from metadata); it only picks the strategy, the content read is what counts. Errors are
/// the reader's I/O errors and whatever `f` returns.
pub fn for_each_chunk<R: Read, E: From<std::io::Error>>(
    reader: R,
    len_hint: u64,
    f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    for_each_chunk_in(reader, len_hint, &mut Vec::new(), f)
}

/// [`for_each_chunk`] reading a file of at most [`IN_MEMORY_MAX`] bytes into `buf` (its
/// content replaced), so that a caller chunking many files reuses one buffer: a new one
/// per file is mapped and faulted in page by page (glibc maps allocations over its
/// threshold), which cost a backup of many files several percent of its CPU.
pub fn for_each_chunk_in<R: Read, E: From<std::io::Error>>(
    mut reader: R,
    len_hint: u64,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    if len_hint <= IN_MEMORY_MAX {
        // One read, no 8 MiB stream buffer per file: most files are small.
        buf.clear();
        buf.reserve(len_hint as usize + 1);
        reader.read_to_end(buf)?;
        if buf.len() as u64 <= IN_MEMORY_MAX {
            for c in fastcdc::v2020::FastCDC::new(buf, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
                f(&buf[c.offset..c.offset + c.length])?;
            }
            return Ok(());
        }
        // The file grew past the hint while we read it: chunk what we have and the rest as a stream.
        return stream(std::io::Cursor::new(std::mem::take(buf)).chain(reader), f);
    }
    stream(reader, f)
}

fn stream<R: Read, E: From<std::io::Error>>(reader: R, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    for c in fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
        f(&c.data)?;
    }
    Ok(())
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
        let long = vec![5u8; (IN_MEMORY_MAX + 1000) as usize];
        assert_eq!(chunks(&long, 10).concat(), long);
    }
}
