//! The node's dense asset index: one slot per asset id, whichever tier holds it.
//!
//! A volume's catalog slot is dense per volume, but the request-rate counters and the tiering
//! policy need one index per asset of the node (an asset only on the secondary needs one too, and
//! an asset keeps its history when it moves between tiers). Shards look slots up lock-free
//! (papaya); registering and unregistering take a small lock for the free list. A freed slot is
//! reused; the rate folder starts a reused slot afresh ([`reel_policy::Rates::forget`]).
//!
//! For the uploads this process took, it also keeps where each landed and why (a few bytes per
//! uploaded slot, in a map: most assets of a large library were found at start), for `/info`;
//! a delete or the slot's reuse forgets it, and a restart starts with none.

use std::collections::HashMap;
use std::sync::Mutex;

use reel_http::api::UploadInfo;
use reel_policy::Tier;

/// id → slot, plus each slot's asset size (for folding bytes into views) and where its upload
/// landed (for `/info`; forgotten with the slot).
pub struct NodeIndex {
    map: papaya::HashMap<String, u32>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    free: Vec<u32>,
    /// Size by slot; 0 = free.
    sizes: Vec<u64>,
    /// Id by slot.
    ids: Vec<Option<String>>,
    /// Where the slot's current version was uploaded to and why, for the slots whose upload
    /// this process took (sparse: most assets of a large library were found at start).
    uploads: HashMap<u32, Landing>,
    /// Slots freed since the rate folder last looked (it forgets their history).
    recycled: Vec<u32>,
}

impl Default for NodeIndex {
    fn default() -> Self {
        NodeIndex {
            map: papaya::HashMap::new(),
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl NodeIndex {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of `id`, if registered. Lock-free.
    pub fn slot(&self, id: &str) -> Option<u32> {
        self.map.pin().get(id).copied()
    }

    /// Registers `id` (or updates its size) and returns its slot.
    pub fn register(&self, id: &str, size: u64) -> u32 {
        let mut g = self.inner();
        if let Some(&s) = self.map.pin().get(id) {
            if let Some(sz) = g.sizes.get_mut(s as usize) {
                *sz = size.max(1);
            }
            return s;
        }
        let slot = match g.free.pop() {
            Some(s) => s,
            None => g.sizes.len() as u32,
        };
        if g.sizes.len() <= slot as usize {
            g.sizes.resize(slot as usize + 1, 0);
            g.ids.resize(slot as usize + 1, None);
        }
        g.sizes[slot as usize] = size.max(1);
        g.ids[slot as usize] = Some(id.to_string());
        g.uploads.remove(&slot);
        self.map.pin().insert(id.to_string(), slot);
        slot
    }

    /// Forgets `id`; its slot is reused later.
    pub fn unregister(&self, id: &str) -> Option<u32> {
        let mut g = self.inner();
        let slot = self.map.pin().remove(id).copied()?;
        if let Some(sz) = g.sizes.get_mut(slot as usize) {
            *sz = 0;
        }
        if let Some(i) = g.ids.get_mut(slot as usize) {
            *i = None;
        }
        g.uploads.remove(&slot);
        g.free.push(slot);
        g.recycled.push(slot);
        Some(slot)
    }

    /// The id registered in `slot`.
    pub fn id_of(&self, slot: u32) -> Option<String> {
        self.inner().ids.get(slot as usize).cloned().flatten()
    }

    /// Records where the upload of `id`'s current version landed (replacing the previous
    /// version's), if `id` still holds `slot` (a delete, or a delete and another id's upload,
    /// may have come in between).
    pub(crate) fn set_upload(&self, id: &str, slot: u32, landing: Landing) {
        let mut g = self.inner();
        if g.ids.get(slot as usize).and_then(Option::as_deref) == Some(id) {
            g.uploads.insert(slot, landing);
        }
    }

    /// Where the upload of `slot`'s current version landed and why (`/info`'s `upload`), if
    /// this process took it.
    pub fn upload(&self, slot: u32) -> Option<UploadInfo> {
        self.inner().uploads.get(&slot).map(|l| l.info())
    }

    /// Sizes by slot (a copy, for one fold).
    pub fn sizes(&self) -> Vec<u64> {
        self.inner().sizes.clone()
    }

    /// Slots freed since the last call.
    pub fn take_recycled(&self) -> Vec<u32> {
        std::mem::take(&mut self.inner().recycled)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Clean copies dropped to make room for an upload, and their bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Room {
    pub(crate) drops: u64,
    pub(crate) bytes: u64,
}

impl Room {
    pub(crate) fn add(&mut self, o: Room) {
        self.drops += o.drops;
        self.bytes += o.bytes;
    }
}

/// Where an upload landed and why (`/info`'s `upload`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Landing {
    HadRoom,
    RoomMade(Room),
    PrimaryFull,
    /// Begun on the primary, moved to the secondary after this many bytes.
    Spilled {
        at: u64,
    },
}

impl Landing {
    pub(crate) fn tier(self) -> Tier {
        match self {
            Landing::HadRoom | Landing::RoomMade(_) => Tier::Primary,
            Landing::PrimaryFull | Landing::Spilled { .. } => Tier::Secondary,
        }
    }

    pub(crate) fn info(self) -> UploadInfo {
        let reason = match self {
            Landing::HadRoom => "the primary had room".to_string(),
            Landing::RoomMade(r) => format!(
                "room made by dropping {} clean {} ({})",
                r.drops,
                if r.drops == 1 { "copy" } else { "copies" },
                mib(r.bytes)
            ),
            Landing::PrimaryFull => "the primary is full of dirty or hot copies".to_string(),
            Landing::Spilled { at } => {
                format!("spilled to the secondary at {at} bytes: the primary filled up mid-upload")
            }
        };
        let tier = match self.tier() {
            Tier::Primary => "primary",
            Tier::Secondary => "secondary",
        };
        UploadInfo {
            tier: tier.to_string(),
            reason,
        }
    }
}

/// `bytes` in MiB for a reason text (`24 MiB`, `1.5 MiB`).
fn mib(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_stable_and_reused() {
        let ix = NodeIndex::default();
        let a = ix.register("a", 10);
        let b = ix.register("b", 20);
        assert_eq!((a, b), (0, 1));
        assert_eq!(ix.register("a", 11), a, "re-registering keeps the slot");
        assert_eq!(ix.sizes(), vec![11, 20]);
        assert_eq!(ix.unregister("a"), Some(a));
        assert_eq!(ix.slot("a"), None);
        assert_eq!(ix.take_recycled(), vec![a]);
        assert_eq!(ix.register("c", 5), a, "a freed slot is reused");
        assert_eq!(ix.slot("c"), Some(a));
        assert_eq!(ix.id_of(a).as_deref(), Some("c"));
        assert_eq!(ix.id_of(b).as_deref(), Some("b"));
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn an_upload_landing_reads_as_its_tier_and_reason() {
        let read = |l: Landing| {
            let i = l.info();
            (i.tier, i.reason)
        };
        let room = |drops, bytes| Landing::RoomMade(Room { drops, bytes });
        for (l, tier, reason) in [
            (Landing::HadRoom, "primary", "the primary had room"),
            (
                room(3, 24 << 20),
                "primary",
                "room made by dropping 3 clean copies (24 MiB)",
            ),
            (
                room(1, 3 << 19),
                "primary",
                "room made by dropping 1 clean copy (1.5 MiB)",
            ),
            (
                Landing::PrimaryFull,
                "secondary",
                "the primary is full of dirty or hot copies",
            ),
            (
                Landing::Spilled { at: 201_326_592 },
                "secondary",
                "spilled to the secondary at 201326592 bytes: the primary filled up mid-upload",
            ),
        ] {
            assert_eq!(read(l), (tier.to_string(), reason.to_string()));
        }
    }

    #[test]
    fn an_upload_note_goes_with_its_slot() {
        let ix = NodeIndex::default();
        let spilled = Landing::Spilled { at: 1 << 20 };
        let had_room = Landing::HadRoom;
        let note = |l: Landing| Some(l.info());
        let a = ix.register("a", 10);
        assert_eq!(ix.upload(a), None);
        ix.set_upload("a", a, spilled);
        assert_eq!(ix.upload(a), note(spilled));
        // A new version of the same id keeps the slot; its upload replaces the note.
        assert_eq!(ix.register("a", 12), a);
        ix.set_upload("a", a, had_room);
        assert_eq!(ix.upload(a), note(had_room));
        // Deleted: forgotten; the slot reused by another id starts without one.
        ix.unregister("a");
        assert_eq!(ix.upload(a), None);
        ix.set_upload("a", a, had_room);
        assert_eq!(ix.upload(a), None, "a free slot takes no note");
        let b = ix.register("b", 5);
        assert_eq!((b, ix.upload(b)), (a, None));
        ix.set_upload("a", b, had_room);
        assert_eq!(ix.upload(b), None, "nor another id's slot");
    }
}
