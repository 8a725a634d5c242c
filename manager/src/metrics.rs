//! The manager's counters and their Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::routing::Reason;

/// Counters, bumped by handlers on any runtime thread.
#[derive(Default)]
pub struct Metrics {
    routes: [AtomicU64; Reason::ALL.len()],
    pub not_found: AtomicU64,
    pub unavailable: AtomicU64,
    pub standby_redirects: AtomicU64,
    pub ingest_redirects: AtomicU64,
    pub deletes: AtomicU64,
    pub delete_fanout_failures: AtomicU64,
    pub registrations: AtomicU64,
    pub reports: AtomicU64,
    pub published: AtomicU64,
    pub tombstones_written: AtomicU64,
    pub unauthorized: AtomicU64,
    pub node_up: AtomicU64,
    pub node_down: AtomicU64,
    pub node_held_down: AtomicU64,
    pub leadership_won: AtomicU64,
    pub placement_copies: AtomicU64,
    pub placement_drops: AtomicU64,
    pub placement_failures: AtomicU64,
    pub leadership_lost: AtomicU64,
    /// Routing decisions: count and total time (ns), for the mean.
    pub decisions: AtomicU64,
    pub decision_ns: AtomicU64,
}

impl Metrics {
    pub fn route(&self, r: Reason) {
        let i = Reason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.routes[i].fetch_add(1, Relaxed);
    }

    pub fn transition(&self, to: &str) {
        match to {
            "up" => &self.node_up,
            "down" => &self.node_down,
            _ => &self.node_held_down,
        }
        .fetch_add(1, Relaxed);
    }

    /// The Prometheus text; `gauges` are rendered after the counters.
    pub fn render(&self, gauges: &[(&str, &str, String, f64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP reel_manager_routes_total Stream requests routed, by reason.\n\
             # TYPE reel_manager_routes_total counter"
        );
        for (i, r) in Reason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "reel_manager_routes_total{{reason=\"{}\"}} {}",
                r.name(),
                self.routes[i].load(Relaxed)
            );
        }
        let relays: u64 = [Reason::RelayPrimary, Reason::RelaySecondary]
            .iter()
            .map(|r| {
                self.routes[Reason::ALL.iter().position(|x| x == r).unwrap_or(0)].load(Relaxed)
            })
            .sum();
        let counters: [(&str, &str, u64); 19] = [
            (
                "reel_manager_placement_copies_total",
                "Copies the placement ordered (pulls to more primaries).",
                self.placement_copies.load(Relaxed),
            ),
            (
                "reel_manager_placement_drops_total",
                "Duplicate primary copies the placement removed.",
                self.placement_drops.load(Relaxed),
            ),
            (
                "reel_manager_placement_failures_total",
                "Placement calls a node refused or missed.",
                self.placement_failures.load(Relaxed),
            ),
            (
                "reel_manager_relays_total",
                "Streams sent through an intervening node.",
                relays,
            ),
            (
                "reel_manager_not_found_total",
                "Stream requests no live node could serve (404).",
                self.not_found.load(Relaxed),
            ),
            (
                "reel_manager_unavailable_total",
                "Stream requests for assets held only by nodes out of routing (503).",
                self.unavailable.load(Relaxed),
            ),
            (
                "reel_manager_standby_redirects_total",
                "Requests a standby sent to the leader.",
                self.standby_redirects.load(Relaxed),
            ),
            (
                "reel_manager_ingest_redirects_total",
                "Uploads redirected to a node.",
                self.ingest_redirects.load(Relaxed),
            ),
            (
                "reel_manager_deletes_total",
                "Deletes acknowledged (tombstone written).",
                self.deletes.load(Relaxed),
            ),
            (
                "reel_manager_delete_fanout_failures_total",
                "Copies a delete could not remove at once (removed when their node reports).",
                self.delete_fanout_failures.load(Relaxed),
            ),
            (
                "reel_manager_registrations_total",
                "Node registrations.",
                self.registrations.load(Relaxed),
            ),
            (
                "reel_manager_reports_total",
                "Node reports taken.",
                self.reports.load(Relaxed),
            ),
            (
                "reel_manager_published_total",
                "Uploads confirmed to nodes before their 201.",
                self.published.load(Relaxed),
            ),
            (
                "reel_manager_tombstones_written_total",
                "Tombstones written (deletes, overwrites).",
                self.tombstones_written.load(Relaxed),
            ),
            (
                "reel_manager_unauthorized_total",
                "Requests refused for a missing or wrong cluster token.",
                self.unauthorized.load(Relaxed),
            ),
            (
                "reel_manager_leadership_won_total",
                "Times this manager took the lead.",
                self.leadership_won.load(Relaxed),
            ),
            (
                "reel_manager_leadership_lost_total",
                "Times this manager lost the lead.",
                self.leadership_lost.load(Relaxed),
            ),
            (
                "reel_manager_decisions_total",
                "Routing decisions made.",
                self.decisions.load(Relaxed),
            ),
            (
                "reel_manager_decision_seconds_total",
                "Time spent deciding routes (divide by decisions for the mean).",
                0,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            if name == "reel_manager_decision_seconds_total" {
                let _ = writeln!(
                    out,
                    "{name} {}",
                    self.decision_ns.load(Relaxed) as f64 / 1e9
                );
            } else {
                let _ = writeln!(out, "{name} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP reel_manager_node_state_changes_total Node liveness changes, by new state.\n\
             # TYPE reel_manager_node_state_changes_total counter"
        );
        for (to, c) in [
            ("up", &self.node_up),
            ("down", &self.node_down),
            ("held-down", &self.node_held_down),
        ] {
            let _ = writeln!(
                out,
                "reel_manager_node_state_changes_total{{to=\"{to}\"}} {}",
                c.load(Relaxed)
            );
        }
        let mut last = "";
        for (name, help, labels, v) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        out
    }
}
