//! Deterministic asset content: the bytes of `(seed, len)`, and checking a body against them.
//!
//! Word `i` depends only on `(seed, i)`, so a body (or a range of one) is produced and checked
//! piece by piece without holding the whole asset.

use std::io::Write;
use std::path::Path;

/// SplitMix64's finaliser: a well-mixed 64-bit value of `z`.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `i` (bytes `8i..8i+8`) of the content of `seed`.
pub fn word(seed: u64, i: u64) -> [u8; 8] {
    splitmix(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes()
}

/// Bytes `offset..offset + out.len()` of the content of `seed`, into `out`.
pub fn fill(seed: u64, offset: u64, out: &mut [u8]) {
    for (k, b) in out.iter_mut().enumerate() {
        let at = offset + k as u64;
        *b = word(seed, at / 8)[(at % 8) as usize];
    }
}

/// The first `len` bytes of the content of `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(&word(seed, i));
        i += 1;
    }
    out.truncate(len);
    out
}

/// `body` is exactly the first `size` bytes of the content of `seed`.
pub fn matches(seed: u64, size: usize, body: &[u8]) -> bool {
    body.len() == size
        && body
            .chunks(8)
            .enumerate()
            .all(|(i, c)| c == &word(seed, i as u64)[..c.len()])
}

/// Writes the first `len` bytes of the content of `seed` to a new file at `path`, for real and
/// synced (unwritten extents would read back as zeros without touching the device).
pub fn write_file(path: &Path, seed: u64, len: usize) {
    let mut f = std::fs::File::create(path).expect("create data file");
    let mut block = vec![0u8; 1 << 20];
    let mut at = 0usize;
    while at < len {
        let n = (len - at).min(block.len());
        fill(seed, at as u64, &mut block[..n]);
        f.write_all(&block[..n]).expect("write data file");
        at += n;
    }
    f.sync_all().expect("sync data file");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_fill_and_matches_agree() {
        let c = content(7, 1003);
        let mut part = vec![0u8; 100];
        fill(7, 333, &mut part);
        assert_eq!(part, c[333..433]);
        assert!(matches(7, 1003, &c));
        assert!(!matches(8, 1003, &c));
        let mut bad = c.clone();
        bad[1000] ^= 1;
        assert!(!matches(7, 1003, &bad));
        assert!(!matches(7, 1004, &c));
    }
}
