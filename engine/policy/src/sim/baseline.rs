//! The baselines the policy is measured against: LRU, the static oracle and Belady with
//! bypass.

use std::collections::{BTreeMap, BTreeSet};

use super::{ratio, BaselineRun, Trace, NEVER};

/// Events of a baseline run in time order: releases (uploads) before requests at the same time.
enum Event {
    Release(u32),
    Request(usize),
}

fn events(trace: &Trace) -> Vec<Event> {
    let releases = trace.releases();
    let mut out = Vec::with_capacity(trace.requests.len() + releases.len());
    let mut next = 0;
    for (i, r) in trace.requests.iter().enumerate() {
        while next < releases.len() && releases[next].0 <= r.at_ns {
            out.push(Event::Release(releases[next].1));
            next += 1;
        }
        out.push(Event::Request(i));
    }
    out
}

pub(super) fn run_lru(trace: &Trace, capacity: u64) -> BaselineRun {
    let n = trace.assets.len();
    let mut stamp_of = vec![0u64; n];
    let mut order: BTreeMap<u64, u32> = BTreeMap::new();
    let mut clock = 0u64;
    let mut used = 0u64;
    let mut run = BaselineRun {
        byte_hit_ratio: 0.0,
        promotion_bytes: 0,
        promotions: 0,
        upload_bytes: 0,
    };
    let mut hit_bytes = 0u64;
    let mut all_bytes = 0u64;
    for ev in events(trace) {
        let (asset, request_bytes) = match ev {
            Event::Release(a) => (a, None),
            Event::Request(i) => (trace.requests[i].asset, Some(trace.requests[i].bytes)),
        };
        let i = asset as usize;
        let size = trace.assets[i].size_bytes;
        clock += 1;
        if let Some(b) = request_bytes {
            all_bytes += b;
        }
        if stamp_of[i] != 0 {
            if let Some(b) = request_bytes {
                hit_bytes += b;
            }
            order.remove(&stamp_of[i]);
            order.insert(clock, asset);
            stamp_of[i] = clock;
            continue;
        }
        if size > capacity {
            continue;
        }
        while used + size > capacity {
            let Some((_, victim)) = order.pop_first() else {
                break;
            };
            stamp_of[victim as usize] = 0;
            used -= trace.assets[victim as usize].size_bytes;
        }
        used += size;
        order.insert(clock, asset);
        stamp_of[i] = clock;
        if request_bytes.is_some() {
            run.promotion_bytes += size;
            run.promotions += 1;
        } else {
            run.upload_bytes += size;
        }
    }
    run.byte_hit_ratio = ratio(hit_bytes as f64, all_bytes as f64).min(1.0);
    run
}

pub(super) fn run_static(trace: &Trace, capacity: u64, by_views: bool) -> BaselineRun {
    let n = trace.assets.len();
    let mut requested = vec![0u64; n];
    for r in &trace.requests {
        requested[r.asset as usize] += r.bytes;
    }
    let score = |i: usize| {
        if by_views {
            requested[i] as f64 / trace.assets[i].size_bytes.max(1) as f64
        } else {
            requested[i] as f64
        }
    };
    let mut order: Vec<usize> = (0..n).filter(|&i| requested[i] > 0).collect();
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
    let mut placed = vec![false; n];
    let mut used = 0u64;
    let mut run = BaselineRun {
        byte_hit_ratio: 0.0,
        promotion_bytes: 0,
        promotions: 0,
        upload_bytes: 0,
    };
    for i in order {
        let size = trace.assets[i].size_bytes;
        if used + size <= capacity {
            used += size;
            placed[i] = true;
            run.promotion_bytes += size;
            run.promotions += 1;
        }
    }
    let hit: u64 = trace
        .requests
        .iter()
        .filter(|r| placed[r.asset as usize])
        .map(|r| r.bytes)
        .sum();
    run.byte_hit_ratio = ratio(hit as f64, trace.requested_bytes() as f64).min(1.0);
    run
}

pub(super) fn run_belady(trace: &Trace, capacity: u64) -> BaselineRun {
    let n = trace.assets.len();
    // Next request (index) of the same asset after each request, and each asset's first.
    let mut next_use = vec![NEVER; trace.requests.len()];
    let mut first_use = vec![NEVER; n];
    for (i, r) in trace.requests.iter().enumerate().rev() {
        let a = r.asset as usize;
        next_use[i] = first_use[a];
        first_use[a] = i as u64;
    }
    // Cached assets by their next request: (next, asset); `key_of` holds each one's key.
    let mut cached: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut key_of: Vec<Option<u64>> = vec![None; n];
    let mut used = 0u64;
    let mut run = BaselineRun {
        byte_hit_ratio: 0.0,
        promotion_bytes: 0,
        promotions: 0,
        upload_bytes: 0,
    };
    let mut hit_bytes = 0u64;
    let mut all_bytes = 0u64;
    let mut victims = Vec::new();
    for ev in events(trace) {
        let (asset, next, request_bytes) = match ev {
            Event::Release(a) => (a, first_use[a as usize], None),
            Event::Request(i) => {
                let r = trace.requests[i];
                (r.asset, next_use[i], Some(r.bytes))
            }
        };
        let i = asset as usize;
        let size = trace.assets[i].size_bytes;
        if let Some(b) = request_bytes {
            all_bytes += b;
        }
        if let Some(key) = key_of[i] {
            if let Some(b) = request_bytes {
                hit_bytes += b;
            }
            cached.remove(&(key, asset));
            if next == NEVER {
                // Never asked for again: keeping it can only cost room.
                key_of[i] = None;
                used -= size;
            } else {
                cached.insert((next, asset));
                key_of[i] = Some(next);
            }
            continue;
        }
        if next == NEVER || size > capacity {
            continue;
        }
        let free = capacity - used;
        if free < size {
            victims.clear();
            let mut freed = 0u64;
            for &(victim_next, victim) in cached.iter().rev() {
                if free + freed >= size || victim_next <= next {
                    break;
                }
                freed += trace.assets[victim as usize].size_bytes;
                victims.push((victim_next, victim));
            }
            if free + freed < size {
                continue;
            }
            for v in &victims {
                cached.remove(v);
                key_of[v.1 as usize] = None;
                used -= trace.assets[v.1 as usize].size_bytes;
            }
        }
        used += size;
        cached.insert((next, asset));
        key_of[i] = Some(next);
        if request_bytes.is_some() {
            run.promotion_bytes += size;
            run.promotions += 1;
        } else {
            run.upload_bytes += size;
        }
    }
    run.byte_hit_ratio = ratio(hit_bytes as f64, all_bytes as f64).min(1.0);
    run
}
