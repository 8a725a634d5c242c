//! File volumes made through the `reel format` binary.

use std::path::Path;

use crate::{path_str, text, Reel};

impl Reel {
    /// `reel format PATH --size SIZE`, which must succeed.
    pub fn format(&self, path: &Path, size: &str) {
        let out = self.run(&["format", path_str(path), "--size", size]);
        assert!(
            out.status.success(),
            "reel format {} failed: {}",
            path.display(),
            text(&out.stderr)
        );
    }
}
