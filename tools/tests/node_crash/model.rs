//! The model of what the node acknowledged: every version of every id, and its state.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum VState {
    /// Sent, not answered (yet).
    Pending,
    /// Answered 201.
    Acked,
    /// Refused (507/503), or found not to have landed after a kill.
    Failed,
}

#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub(crate) seed: u64,
    pub(crate) size: usize,
    /// The ETag of the 201 (`"crc32c-sizehex"`).
    pub(crate) etag: Option<String>,
    pub(crate) state: VState,
}

impl Version {
    /// The crc32c the volume records, from the ETag.
    pub(crate) fn checksum(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .map(|e| e.trim_matches('"'))
            .and_then(|e| e.split('-').next())
    }
}

#[derive(Default, Debug)]
pub(crate) struct Entry {
    /// Every version ever sent, in order (the writer sends one at a time).
    pub(crate) versions: Vec<Version>,
    /// The acknowledged current version; `None` before the first 201 or after a 204.
    pub(crate) current: Option<usize>,
    /// A DELETE was sent (acknowledged or not).
    pub(crate) delete_issued: bool,
    /// A DELETE was acknowledged: the id must stay gone (ids are never reused after one).
    pub(crate) deleted: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Put { id: String, ver: usize },
    Delete { id: String },
}

#[derive(Default)]
pub(crate) struct Model {
    pub(crate) entries: BTreeMap<String, Entry>,
    /// The request in flight (at a kill: its outcome is unknown until the restart).
    pub(crate) pending: Option<Op>,
    pub(crate) next_id: u64,
    pub(crate) puts_acked: u64,
    pub(crate) puts_refused: u64,
    pub(crate) deletes_acked: u64,
}

impl Model {
    pub(crate) fn live(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.current.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn current(&self, id: &str) -> Option<&Version> {
        let e = self.entries.get(id)?;
        e.versions.get(e.current?)
    }

    pub(crate) fn live_bytes(&self) -> usize {
        self.live()
            .iter()
            .filter_map(|id| self.current(id))
            .map(|v| v.size)
            .sum()
    }
}
