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

/// Iterates the chunks of `reader`, each as owned bytes. Errors are the reader's I/O errors.
pub fn chunks<R: Read>(reader: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).map(|r| {
        r.map(|c| c.data).map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        })
    })
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
        let a: Vec<Vec<u8>> = chunks(&data[..]).map(|c| c.unwrap()).collect();
        assert_eq!(a.concat(), data);
        assert!(a.iter().all(|c| c.len() <= MAX_CHUNK as usize));
        let mut edited = data.clone();
        edited.splice(100..100, [1, 2, 3]);
        let b: Vec<Vec<u8>> = chunks(&edited[..]).map(|c| c.unwrap()).collect();
        let same = b.iter().filter(|c| a.contains(c)).count();
        assert!(same + 1 >= a.len(), "only the first chunk should change");
        assert!(chunks(&[][..]).next().is_none());
    }
}
