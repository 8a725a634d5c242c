//! Cutting device I/Os into pieces of a bounded size, for devices or paths that handle large
//! requests badly (see [`crate::PutOptions::io_max`]).

use crate::format::BLOCK;

/// Splits `(device offset, buffer offset, len)` I/Os into pieces of at most `io_max` bytes
/// (rounded down to whole blocks, at least one).
pub(crate) fn split_io(
    parts: Vec<(u64, usize, usize)>,
    io_max: Option<usize>,
) -> Vec<(u64, usize, usize)> {
    let Some(max) = io_max else {
        return parts;
    };
    let max = (max / BLOCK as usize).max(1) * BLOCK as usize;
    let mut out = Vec::with_capacity(parts.len());
    for (dev, boff, len) in parts {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(max);
            out.push((dev + done as u64, boff + done, n));
            done += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_io;

    #[test]
    fn split_io_cuts_each_segment_into_whole_block_pieces() {
        let parts = vec![(1 << 20, 0, 10 << 12), (9 << 20, 10 << 12, 3 << 12)];
        assert_eq!(split_io(parts.clone(), None), parts);
        assert_eq!(
            split_io(parts.clone(), Some(17 << 10)),
            vec![
                (1 << 20, 0, 4 << 12),
                ((1 << 20) + (4 << 12), 4 << 12, 4 << 12),
                ((1 << 20) + (8 << 12), 8 << 12, 2 << 12),
                (9 << 20, 10 << 12, 3 << 12),
            ],
            "17 KiB rounds down to 16 KiB"
        );
        assert_eq!(
            split_io(vec![(0, 0, 8192)], Some(1)).len(),
            2,
            "at least a block"
        );
    }
}
