//! The policy's self-check: its byte accounting recomputed from the per-asset state.

use super::*;

impl TierPolicy {
    /// Recomputes the byte accounting from the per-asset state and compares; `Err` describes the
    /// first mismatch. Tests and the simulator call it after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut used = 0u64;
        let mut dropping = 0u64;
        let mut copies = 0u32;
        for (slot, e) in self.entries.iter().enumerate() {
            let slot = slot as u32;
            if e.residence.on_primary() || e.residence == Residence::Promoting {
                used += e.size;
            }
            if e.residence == Residence::Dropping {
                dropping += e.size;
            }
            if (e.residence == Residence::Clean) != self.clean.contains(&slot) {
                return Err(format!(
                    "slot {slot}: clean set disagrees with {:?}",
                    e.residence
                ));
            }
            let in_dirty = self.dirty.contains(&(e.dirty_since_ns, slot));
            if (e.residence == Residence::Dirty) != in_dirty {
                return Err(format!(
                    "slot {slot}: dirty set disagrees with {:?}",
                    e.residence
                ));
            }
            if matches!(self.pin(slot), Some(Tier::Primary)) && e.residence == Residence::Dropping {
                return Err(format!("slot {slot}: pinned to primary but being dropped"));
            }
        }
        for op in self.ops.values() {
            if op.orphaned || op.kind == OpKind::Upload {
                used += op.bytes;
                if matches!(op.kind, OpKind::Demote | OpKind::Evict) {
                    dropping += op.bytes;
                }
            }
            if matches!(op.kind, OpKind::Promote | OpKind::WriteBack) {
                copies += 1;
            }
        }
        if used != self.used_bytes {
            return Err(format!(
                "used bytes {} but the assets add up to {used}",
                self.used_bytes
            ));
        }
        if dropping != self.dropping_bytes {
            return Err(format!(
                "dropping bytes {} but the assets add up to {dropping}",
                self.dropping_bytes
            ));
        }
        if copies != self.copies_in_flight {
            return Err(format!(
                "{} copies in flight counted, {copies} found",
                self.copies_in_flight
            ));
        }
        Ok(())
    }
}
