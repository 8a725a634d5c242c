//! The policy on a simulated node: a copy channel of fixed bandwidth, the shards' rate
//! counters and the policy's decisions played out against a trace.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{ratio, PolicyRun, SimConfig, SimRng, Trace, NEVER};
use crate::policy::{Decision, Outcome, Placement, PolicyError, TierPolicy};
use crate::rate::{RateCounters, RateWriter};

/// A background copy on the simulated copy channel.
struct Copy {
    finish_ns: u64,
    decision: Decision,
    fails: bool,
}

/// The simulated node around the policy.
struct Node {
    policy: TierPolicy,
    writer: RateWriter,
    capacity: u64,
    on_primary: Vec<bool>,
    on_secondary: Vec<bool>,
    primary_used: u64,
    copies: VecDeque<Copy>,
    channel_free_ns: u64,
    budget_bytes_per_s: f64,
    copy_bytes_started: u64,
    largest_asset: u64,
    burst_bytes: u64,
    rng: SimRng,
    failure_rate: f64,
    promotions_per_asset: Vec<u64>,
    run: PolicyRun,
    decisions: Vec<Decision>,
}

impl Node {
    fn fails(&mut self) -> bool {
        self.failure_rate > 0.0 && self.rng.f64() < self.failure_rate
    }

    fn account(&mut self) {
        self.run.primary_used_max_bytes = self.run.primary_used_max_bytes.max(self.primary_used);
        if self.primary_used > self.capacity {
            self.run.capacity_violations += 1;
        }
    }

    fn execute(&mut self, now_ns: u64) {
        let decisions = std::mem::take(&mut self.decisions);
        for d in &decisions {
            match *d {
                Decision::Promote { bytes, .. } | Decision::WriteBack { bytes, .. } => {
                    if let Decision::Promote { .. } = d {
                        // The destination is allocated when the copy starts.
                        self.primary_used += bytes;
                        self.account();
                    }
                    self.copy_bytes_started += bytes;
                    // A budget of 0 is unlimited: nothing to violate, and a copy takes no time.
                    let allowed = self.budget_bytes_per_s * now_ns as f64 / 1e9
                        + (self.burst_bytes + self.largest_asset) as f64;
                    if self.budget_bytes_per_s > 0.0 && self.copy_bytes_started as f64 > allowed {
                        self.run.budget_violations += 1;
                    }
                    let start = self.channel_free_ns.max(now_ns);
                    let took_ns = if self.budget_bytes_per_s > 0.0 {
                        (bytes as f64 / self.budget_bytes_per_s * 1e9) as u64
                    } else {
                        0
                    };
                    self.channel_free_ns = start + took_ns.max(1);
                    let fails = self.fails();
                    self.copies.push_back(Copy {
                        finish_ns: self.channel_free_ns,
                        decision: *d,
                        fails,
                    });
                }
                Decision::Demote {
                    ticket,
                    slot,
                    bytes,
                }
                | Decision::Evict {
                    ticket,
                    slot,
                    bytes,
                } => {
                    let outcome = if self.fails() {
                        Outcome::Failed
                    } else {
                        let i = slot as usize;
                        if !self.on_secondary[i] {
                            self.run.unclean_drops += 1;
                        }
                        self.on_primary[i] = false;
                        self.primary_used -= bytes;
                        Outcome::Done
                    };
                    self.policy.finished(now_ns, ticket, outcome);
                }
            }
        }
        self.decisions = decisions;
        self.decisions.clear();
    }

    fn copy_done(&mut self, c: Copy) {
        let now_ns = c.finish_ns;
        let (ticket, slot, bytes) = (c.decision.ticket(), c.decision.slot(), c.decision.bytes());
        let i = slot as usize;
        let outcome = if c.fails {
            self.run.copies_failed += 1;
            if let Decision::Promote { .. } = c.decision {
                self.primary_used -= bytes;
            }
            Outcome::Failed
        } else {
            match c.decision {
                Decision::Promote { .. } => {
                    self.on_primary[i] = true;
                    self.promotions_per_asset[i] += 1;
                }
                _ => self.on_secondary[i] = true,
            }
            Outcome::Done
        };
        self.policy.finished(now_ns, ticket, outcome);
    }
}

pub(super) fn run_policy(trace: &Trace, cfg: &SimConfig) -> Result<PolicyRun, PolicyError> {
    let (counters, writers) = RateCounters::new(1);
    let writer = writers
        .into_iter()
        .next()
        .expect("RateCounters::new(1) gives one writer");
    let n = trace.assets.len();
    let mut node = Node {
        policy: TierPolicy::new(cfg.policy.clone(), Arc::clone(&counters))?,
        writer,
        capacity: cfg.policy.primary_capacity_bytes,
        on_primary: vec![false; n],
        on_secondary: vec![false; n],
        primary_used: 0,
        copies: VecDeque::new(),
        channel_free_ns: 0,
        budget_bytes_per_s: cfg.policy.copy_budget_bytes_per_s as f64,
        copy_bytes_started: 0,
        largest_asset: trace.assets.iter().map(|a| a.size_bytes).max().unwrap_or(0),
        burst_bytes: cfg.policy.copy_burst_bytes,
        rng: SimRng::new(cfg.seed ^ 0x5EED_FA17),
        failure_rate: cfg.failure_rate,
        promotions_per_asset: vec![0; n],
        run: PolicyRun {
            byte_hit_ratio: 0.0,
            promoted_bytes: 0,
            promotions: 0,
            demoted_bytes: 0,
            demotions: 0,
            evicted_bytes: 0,
            evictions: 0,
            written_back_bytes: 0,
            uploads_to_primary: 0,
            uploads_to_primary_bytes: 0,
            uploads_to_secondary: 0,
            copies_failed: 0,
            assets_promoted: 0,
            promotions_per_promoted_asset: 0.0,
            promotions_per_asset_max: 0,
            assets_promoted_3_or_more: 0,
            primary_used_max_bytes: 0,
            capacity_violations: 0,
            unclean_drops: 0,
            budget_violations: 0,
            invariant_error: None,
            half_life_s: 0.0,
            tuning: None,
            upload_room_drops: 0,
        },
        decisions: Vec::new(),
    };
    for (i, a) in trace.assets.iter().enumerate() {
        if a.release_ns.is_none() {
            node.on_secondary[i] = true;
            node.policy
                .add_asset(0, i as u32, a.size_bytes, Placement::Secondary);
        }
    }
    let releases = trace.releases();
    let tick_ns = ((cfg.tick_s.max(1e-3)) * 1e9) as u64;
    let mut next_tick_ns = 0u64;
    let mut next_release = 0usize;
    let mut hit_bytes = 0u64;
    let mut all_bytes = 0u64;
    for r in &trace.requests {
        // Everything due before (or at) this request, in order: copy completions, ticks,
        // releases; ties in that order.
        loop {
            let copy_ns = node.copies.front().map_or(NEVER, |c| c.finish_ns);
            let release_ns = releases.get(next_release).map_or(NEVER, |x| x.0);
            let due = copy_ns.min(next_tick_ns).min(release_ns);
            if due > r.at_ns {
                break;
            }
            if copy_ns == due {
                if let Some(c) = node.copies.pop_front() {
                    node.copy_done(c);
                }
            } else if next_tick_ns == due {
                node.policy.tick(due, &mut node.decisions);
                node.execute(due);
                if cfg.check_every_tick && node.run.invariant_error.is_none() {
                    node.run.invariant_error = node.policy.check_invariants().err();
                }
                next_tick_ns += tick_ns;
            } else {
                let (_, asset) = releases[next_release];
                next_release += 1;
                let size = trace.assets[asset as usize].size_bytes;
                let i = asset as usize;
                // As on the node: short of room, the upload first makes room by dropping clean
                // copies colder than a newcomer, else it goes to the secondary.
                let short = (node.policy.used_bytes() + size).saturating_sub(node.capacity);
                if short > 0
                    && node
                        .policy
                        .evict_for_upload(due, short, &mut node.decisions)
                {
                    node.run.upload_room_drops += node.decisions.len() as u64;
                    node.execute(due);
                }
                match node.policy.reserve_upload(size) {
                    Some(ticket) => {
                        node.primary_used += size;
                        node.account();
                        node.on_primary[i] = true;
                        node.policy.upload_committed(due, ticket, asset);
                    }
                    None => {
                        node.on_secondary[i] = true;
                        node.run.uploads_to_secondary += 1;
                        node.policy
                            .add_asset(due, asset, size, Placement::Secondary);
                    }
                }
            }
            if node.primary_used != node.policy.used_bytes() && node.run.invariant_error.is_none() {
                node.run.invariant_error = Some(format!(
                    "the simulated primary holds {} bytes, the policy counts {}",
                    node.primary_used,
                    node.policy.used_bytes()
                ));
            }
        }
        all_bytes += r.bytes;
        if node.on_primary[r.asset as usize] {
            hit_bytes += r.bytes;
        }
        node.writer.record(r.asset, r.bytes);
    }
    let stats = node.policy.stats();
    let mut run = node.run;
    run.half_life_s = node.policy.half_life_s();
    run.tuning = node.policy.tuning();
    run.byte_hit_ratio = ratio(hit_bytes as f64, all_bytes as f64).min(1.0);
    run.promoted_bytes = stats.promoted_bytes;
    run.promotions = stats.promotions;
    run.demoted_bytes = stats.demoted_bytes;
    run.demotions = stats.demotions;
    run.evicted_bytes = stats.evicted_bytes;
    run.evictions = stats.evictions;
    run.written_back_bytes = stats.written_back_bytes;
    run.uploads_to_primary = stats.uploads_to_primary;
    run.uploads_to_primary_bytes = stats.uploads_to_primary_bytes;
    let promoted: Vec<u64> = node
        .promotions_per_asset
        .iter()
        .copied()
        .filter(|&p| p > 0)
        .collect();
    run.assets_promoted = promoted.len() as u64;
    run.promotions_per_promoted_asset =
        ratio(promoted.iter().sum::<u64>() as f64, promoted.len() as f64);
    run.promotions_per_asset_max = promoted.iter().copied().max().unwrap_or(0);
    run.assets_promoted_3_or_more = promoted.iter().filter(|&&p| p >= 3).count() as u64;
    if run.invariant_error.is_none() && cfg.check_every_tick {
        run.invariant_error = node.policy.check_invariants().err();
    }
    Ok(run)
}
