#!/usr/bin/env python3
"""Report of benches/migration_impact.sh's interleaved design (see that script's header).

Usage: interleaved_report.py LATENCY_CSV TOGGLES POLL GUARD_S BUDGET_BPS "COPY_ALONE_MIBPS SPAN_MIBPS"

LATENCY_CSV  `reel load --latency-log`: intended_unix_us,latency_us,ok per measured request
TOGGLES      "unix_s start|resume|pause|end" lines, in order, as the script changed migration
POLL         "unix_s reel_migration_bytes_total reel_promotions_total [commits]" samples every 0.5 s
GUARD_S      seconds after each pause still counted as migrating (and skipped after the start)

Each request is classed by its intended start: migrating from a resume until GUARD_S after the
following pause, idle for the rest of each paused window (the first window from GUARD_S after
the start). Latency percentiles are over all requests of a class, from 1%-wide log buckets.
The spread comes from resampling whole cycles (a cycle = one idle window and the migrating
window after it) with replacement; the A/A line compares the idle windows of odd cycles with
those of even cycles, i.e. how far apart two samples of the same condition land here.
Prints markdown on stdout.
"""
import bisect
import csv
import math
import random
import statistics
import sys

LOG_STEP = math.log(1.01)


def bucket(us):
    return int(math.log(max(us, 1)) / LOG_STEP)


def unbucket(b):
    return math.exp((b + 0.5) * LOG_STEP)


def quantile(hist, q):
    """The q-quantile of a {bucket: count} histogram, in microseconds."""
    n = sum(hist.values())
    if n == 0:
        return float("nan")
    rank = q * (n - 1)
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > rank:
            return unbucket(b)
    return unbucket(max(hist))


def merge(hists):
    out = {}
    for h in hists:
        for b, c in h.items():
            out[b] = out.get(b, 0) + c
    return out


def main():
    log_path, toggles_path, poll_path = sys.argv[1:4]
    guard = float(sys.argv[4])
    budget = int(sys.argv[5])
    alone = [float(x) for x in sys.argv[6].split()]

    rows = []
    with open(log_path) as f:
        rd = csv.reader(f)
        header = next(rd, None)
        if header != ["intended_unix_us", "latency_us", "ok"]:
            sys.exit(f"interleaved_report.py: unexpected latency log header {header}")
        for row in rd:
            rows.append((int(row[0]) / 1e6, int(row[1]), row[2] == "1"))
    if not rows:
        sys.exit("interleaved_report.py: the latency log has no requests")
    rows.sort()
    ev = [(float(t), what) for t, what in (l.split() for l in open(toggles_path) if l.strip())]
    # The load's own schedule bounds the run (reel load starts sending a moment after it was
    # launched, and its last arrivals come before it exits).
    start = max(next(t for t, w in ev if w == "start"), rows[0][0])
    end = min(next(t for t, w in ev if w == "end"), rows[-1][0])
    resumes = [t for t, w in ev if w == "resume"]
    pauses = [t for t, w in ev if w == "pause"]
    if not resumes or len(resumes) != len(pauses):
        sys.exit("interleaved_report.py: the toggles file needs as many pauses as resumes, at least one")
    # Windows: (class, cycle, t0, t1). Cycle k = idle window k (before resume k) + migrating k.
    windows = []
    idle_from = start + guard
    for k, (r, p) in enumerate(zip(resumes, pauses)):
        windows.append(("idle", k, idle_from, r))
        windows.append(("migrating", k, r, p + guard))
        idle_from = p + guard
    windows.append(("idle", len(resumes), idle_from, end))
    n_cycles = len(resumes) + 1

    def window_of(t):
        for w in windows:
            if w[2] <= t < w[3]:
                return w
        return None

    # Per (class, cycle): latency histogram (valid responses), requests, valid responses.
    hist = {}
    count = {}
    ok_count = {}
    windows_sorted = sorted(windows, key=lambda w: w[2])
    starts = [w[2] for w in windows_sorted]
    for t, latency_us, ok in rows:
        i = bisect.bisect_right(starts, t) - 1
        if i < 0:
            continue
        w = windows_sorted[i]
        if not (w[2] <= t < w[3]):
            continue
        key = (w[0], w[1])
        count[key] = count.get(key, 0) + 1
        if ok:
            ok_count[key] = ok_count.get(key, 0) + 1
            h = hist.setdefault(key, {})
            b = bucket(latency_us)
            h[b] = h.get(b, 0) + 1

    dur = {}
    for c, k, t0, t1 in windows:
        dur[(c, k)] = max(t1 - t0, 0.0)

    def pooled(cls, cycles):
        keys = [(cls, k) for k in cycles if (cls, k) in hist]
        h = merge(hist[k] for k in keys)
        secs = sum(dur.get((cls, k), 0) for k in cycles)
        n = sum(count.get((cls, k), 0) for k in cycles)
        ok = sum(ok_count.get((cls, k), 0) for k in cycles)
        return h, secs, n, ok

    cyc = list(range(n_cycles))
    mig_cycles = list(range(len(resumes)))
    figs = {}
    for cls, cs in (("idle", cyc), ("migrating", mig_cycles)):
        h, secs, n, ok = pooled(cls, cs)
        figs[cls] = {
            "secs": secs, "n": n, "ok": ok, "rps": ok / secs if secs else float("nan"),
            "p50": quantile(h, 0.5) / 1000, "p90": quantile(h, 0.9) / 1000,
            "p99": quantile(h, 0.99) / 1000, "p999": quantile(h, 0.999) / 1000,
        }
    a, b = figs["idle"], figs["migrating"]
    tput = b["rps"] / a["rps"]
    p99 = b["p99"] / a["p99"]

    # Spread: resample cycles with replacement (both classes of a cycle together).
    rng = random.Random(1)
    boots = []
    for _ in range(400):
        pick = [rng.choice(mig_cycles) for _ in mig_cycles]
        hi = merge(hist.get(("idle", k), {}) for k in pick)
        hm = merge(hist.get(("migrating", k), {}) for k in pick)
        if hi and hm:
            boots.append(quantile(hm, 0.99) / quantile(hi, 0.99))
    boots.sort()
    lo, hi_ = boots[int(0.05 * len(boots))], boots[int(0.95 * len(boots)) - 1]

    # A/A: idle windows of even cycles against those of odd cycles.
    he = merge(hist.get(("idle", k), {}) for k in cyc if k % 2 == 0)
    ho = merge(hist.get(("idle", k), {}) for k in cyc if k % 2 == 1)
    aa = quantile(he, 0.99) / quantile(ho, 0.99) if he and ho else float("nan")

    per_cycle = []
    for k in mig_cycles:
        hi_k, hm_k = hist.get(("idle", k)), hist.get(("migrating", k))
        if hi_k and hm_k:
            per_cycle.append(quantile(hm_k, 0.99) / quantile(hi_k, 0.99))

    # Copies: bytes copied per class, from the poller (each increment at its samples' midpoint).
    samples = [tuple(map(float, l.split()[:3])) for l in open(poll_path) if l[:1].isdigit()]
    copied = {"idle": 0.0, "migrating": 0.0}
    copied_strict = 0.0  # inside [resume, pause) only
    for (t0, b0, _), (t1, b1, _) in zip(samples, samples[1:]):
        if b1 <= b0:
            continue
        mid = (t0 + t1) / 2
        w = window_of(mid)
        if w:
            copied[w[0]] += b1 - b0
        if any(r <= mid < p for r, p in zip(resumes, pauses)):
            copied_strict += b1 - b0
    on_secs = sum(p - r for r, p in zip(resumes, pauses))
    copy_rate = copied_strict / 2**20 / on_secs if on_secs else 0.0

    # Commits of copies (a device flush pair, which stalls reads here) per migrating window,
    # from the poller's 4th column when it has one.
    rows4 = [l.split() for l in open(poll_path) if l[:1].isdigit()]
    hi_all = merge(hist.get(("idle", k), {}) for k in cyc)
    commit_split = None
    if rows4 and all(len(r) >= 4 for r in rows4):
        cs = [(float(r[0]), int(r[3])) for r in rows4]

        def commits_at(t):
            last = [c for ts, c in cs if ts <= t]
            return last[-1] if last else cs[0][1]

        with_c = [k for k, (r, p) in enumerate(zip(resumes, pauses))
                  if commits_at(p + guard) > commits_at(r)]
        without_c = [k for k in mig_cycles if k not in with_c]

        def ratio(ks):
            hm = merge(hist.get(("migrating", k), {}) for k in ks)
            return quantile(hm, 0.99) / quantile(hi_all, 0.99) if hm and hi_all else float("nan")

        commit_split = (with_c, ratio(with_c), without_c, ratio(without_c))

    # Does the cost grow the longer copies run? Migrating windows split into the first and
    # second half of the copying span and the guard after the pause, each against all idle
    # windows.
    phase = {"first": {}, "second": {}, "after": {}}
    for t, latency_us, ok in rows:
        if not ok:
            continue
        i = bisect.bisect_right(resumes, t) - 1
        if i < 0:
            continue
        r, p = resumes[i], pauses[i]
        name = ("first" if t < (r + p) / 2 else "second") if t < p else ("after" if t < p + guard else None)
        if name:
            b_ = bucket(latency_us)
            phase[name][b_] = phase[name].get(b_, 0) + 1
    phase_p99 = {n: (quantile(h, 0.99) / quantile(hi_all, 0.99) if h and hi_all else float("nan"))
                 for n, h in phase.items()}

    def ms(v):
        return f"{v:.2f} ms"

    print("| metric | (a) migration paused | (b) migrating at the budget | (b)/(a) | target |")
    print("|---|---:|---:|---:|---|")
    print(f"| time measured | {a['secs']:.0f} s | {b['secs']:.0f} s | — | — |")
    print(f"| requests (valid) | {a['n']} ({a['ok']}) | {b['n']} ({b['ok']}) | — | — |")
    print(f"| valid responses/s | {a['rps']:.1f} | {b['rps']:.1f} | {tput:.3f} {'✓' if tput >= 0.95 else '✗'} | ≥ 0.95 |")
    print(f"| p50 latency | {ms(a['p50'])} | {ms(b['p50'])} | {b['p50'] / a['p50']:.2f} | — |")
    print(f"| p90 latency | {ms(a['p90'])} | {ms(b['p90'])} | {b['p90'] / a['p90']:.2f} | — |")
    print(f"| p99 latency | {ms(a['p99'])} | {ms(b['p99'])} | **{p99:.2f}** {'✓' if p99 <= 1.10 else '✗'} | ≤ 1.10 |")
    print(f"| p99.9 latency | {ms(a['p999'])} | {ms(b['p999'])} | {b['p999'] / a['p999']:.2f} | — |")
    print(f"| copy rate while resumed | — | {copy_rate:.1f} MiB/s | {copy_rate / (budget / 2**20):.2f} of the budget | budget {budget / 2**20:g} MiB/s |")
    print()
    print(f"p99 ratio, 90% interval from resampling the {len(mig_cycles)} cycles: {lo:.2f}–{hi_:.2f}; "
          f"per cycle (migrating window over the idle window before it): "
          + " ".join(f"{x:.2f}" for x in per_cycle)
          + (f" (median {statistics.median(per_cycle):.2f})" if per_cycle else "") + ".")
    print(f"A/A, the idle windows of even cycles over those of odd cycles: p99 ratio {aa:.2f} "
          f"(how far two samples of the same condition land on this host).")
    if commit_split:
        with_c, r_with, without_c, r_without = commit_split
        print(f"Migrating windows with a commit of copies (cycles {' '.join(str(k + 1) for k in with_c) or 'none'}): "
              f"p99 ratio {r_with:.2f}; without one ({len(without_c)} windows): {r_without:.2f} "
              f"(each against all idle windows; commits fall every --migration-commit-interval under load).")
    print(f"p99 ratio by phase of the migrating windows (each against all idle windows): first half of the "
          f"copying {phase_p99['first']:.2f}, second half {phase_p99['second']:.2f}, the {guard:g} s after the "
          f"pause {phase_p99['after']:.2f} (a cost that grows with how long copies run shows as second > first).")
    print(f"Bytes copied while classed idle: {copied['idle'] / 2**20:.0f} MiB (a copy holds at its next chunk "
          f"when paused; want about 0); within the {guard:g} s after each pause, counted as migrating: "
          f"{(copied['migrating'] - copied_strict) / 2**20:.0f} MiB.")
    print(f"Copy rate with no foreground load (one run before the measurement): "
          f"{alone[0]:.0f} MiB/s ({alone[0] / (budget / 2**20):.2f} of the budget).")
    if a["n"] != a["ok"] or b["n"] != b["ok"]:
        print(f"WARNING: failed requests: idle {a['n'] - a['ok']}, migrating {b['n'] - b['ok']} (see reel load's output).")


main()
