//! The real `curl` binary against a [`NodeProc`]: responses as curl saw them (its last header
//! block and the body it wrote), and `sha256sum` to compare files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::node::NodeProc;
use crate::{output_ok, path_str, probe, text, Reel};

/// Flags of the nodes that curl drives: loopback clients get plain sends by default; these
/// drive the SEND_ZC path (and plain sends below 4 KiB), which the hostile battery's node does
/// not.
pub const ZERO_COPY_FLAGS: &[&str] = &["--zero-copy-local", "--zero-copy-min", "4K"];

/// curl, sha256sum and io_uring are here; otherwise false, having said why `test` skips.
pub fn runnable(reel: &Reel, test: &str) -> bool {
    probe::runnable(
        test,
        &[&probe::curl, &probe::sha256sum, &|| reel.io_uring()],
    )
}

/// A response as curl saw it.
pub struct CurlResp {
    /// The command, for messages.
    pub described: String,
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The file curl wrote the body to.
    pub body_path: PathBuf,
    pub curl_stderr: String,
}

impl CurlResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl NodeProc {
    /// Runs `curl ARGS URL(path)`, which must succeed.
    pub fn curl(&self, args: &[&str], path: &str) -> CurlResp {
        self.curl_stdin(args, path, None)
    }

    /// [`NodeProc::curl`] with its stdin from the file `stdin`.
    pub fn curl_stdin(&self, args: &[&str], path: &str, stdin: Option<&Path>) -> CurlResp {
        let heads = self.scratch("heads");
        let body = self.scratch("body");
        let url = self.url(path);
        let mut cmd = Command::new("curl");
        // -q: ignore ~/.curlrc; no proxy from the environment; never hang a test.
        cmd.args(["-q", "-sS", "--noproxy", "*", "--max-time", "30"])
            .arg("-D")
            .arg(&heads)
            .arg("-o")
            .arg(&body)
            .args(args)
            .arg(&url);
        if let Some(p) = stdin {
            cmd.stdin(Stdio::from(
                std::fs::File::open(p).expect("open curl's stdin file"),
            ));
        }
        let out: Output = cmd.output().expect("curl runs");
        let described = format!("curl {} {url}", args.join(" "));
        assert!(
            out.status.success(),
            "{described} failed ({}): {}\nnode stderr:\n{}",
            out.status,
            text(&out.stderr),
            self.stderr()
        );
        let dump = std::fs::read_to_string(&heads).unwrap_or_default();
        let (status, headers) = last_header_block(&dump)
            .unwrap_or_else(|| panic!("{described}: no response head in {dump:?}"));
        let bytes = std::fs::read(&body).unwrap_or_default();
        CurlResp {
            described,
            status,
            headers,
            body: bytes,
            body_path: body,
            curl_stderr: text(&out.stderr),
        }
    }

    /// PUTs `bytes` as `id` with `curl -T` (Content-Length); the ETag of the 201.
    pub fn curl_put(&self, id: &str, bytes: &[u8]) -> String {
        let src = self.file_of(bytes);
        let r = self.curl(&["-T", path_str(&src)], &format!("/assets/{id}"));
        assert_eq!(r.status, 201, "{}: {}", r.described, text(&r.body));
        r.header("etag")
            .unwrap_or_else(|| panic!("{}: 201 without ETag: {:?}", r.described, r.headers))
            .to_string()
    }
}

/// The status and fields of the last (final) response head in a `curl -D` dump; earlier
/// blocks are interim (`100 Continue`).
pub fn last_header_block(dump: &str) -> Option<(u16, Vec<(String, String)>)> {
    let mut last = None;
    let mut cur: Option<(u16, Vec<(String, String)>)> = None;
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            if let Some(block) = cur.take() {
                last = Some(block);
            }
            let status = line.split_whitespace().nth(1)?.parse().ok()?;
            cur = Some((status, Vec::new()));
        } else if let Some((name, value)) = line.split_once(':') {
            if let Some((_, fields)) = cur.as_mut() {
                fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    cur.or(last)
}

/// `sha256sum FILE` → the hex digest.
pub fn sha256(path: &Path) -> String {
    let out = output_ok(
        Command::new("sha256sum").arg(path),
        &format!("sha256sum {}", path.display()),
    );
    text(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_header_block_is_the_final_response() {
        let dump = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nETag: \"x\"\r\n\r\n";
        let (status, headers) = last_header_block(dump).expect("a block");
        assert_eq!(status, 201);
        assert_eq!(headers, [("etag".to_string(), "\"x\"".to_string())]);
        assert_eq!(last_header_block("garbage"), None);
    }
}
