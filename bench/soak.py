#!/usr/bin/env python3
"""Does gaud-engine's memory stay flat? A bounded soak against the fast fake upstream.

    python bench/soak.py                         # 100,000 requests, anthropic_nonstream, c=32
    python bench/soak.py --requests 200000 --scenario openai_stream
    python bench/soak.py --record --note "..."   # also append the table to bench/RESULTS.md

Starts the fake upstream and one gaud-engine worker (as bench/compare.py does), then runs wrk in
steps of --step seconds until --requests have been served, reading the worker's RSS after every
step. Flat means: after the first step (warm-up: caches, pools, lazy imports), RSS grows by less
than --tolerance MiB up to the end. Only 127.0.0.1 traffic; bounded in count and time.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h
from compare import SCENARIOS, request_for, start_direct, start_gaud

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000, help="requests to serve in all (default 100000)")
    p.add_argument("--scenario", choices=SCENARIOS, default="anthropic_nonstream")
    p.add_argument("--conc", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--step", type=int, default=5, help="seconds of load between RSS readings (default 5)")
    p.add_argument("--max-seconds", type=int, default=600, help="stop after this much load anyway (default 600)")
    p.add_argument("--tolerance", type=float, default=2.0, help="MiB of growth after warm-up still called flat")
    p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    p.add_argument("--note", default="", help="free text for the RESULTS.md entry")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.require_wrk()
    out = h.new_out_dir(f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    registry = h.Registry()
    atexit.register(registry.stop_all)
    direct = registry.add(start_direct(out))
    gaud = registry.add(start_gaud(out, direct.url, []))
    url, body = request_for("gaud", args.scenario, gaud.url)
    ok, detail = h.check_once(url, body)
    if not ok:
        h.log(f"gaud-engine does not answer the scenario correctly: {detail}")
        return 1
    idle = h.tree_rss_mib(gaud.pid)
    h.log(f"soak: {args.requests:,} requests of {args.scenario} at c={args.conc}; idle RSS {idle:.1f} MiB")
    rows: list[tuple[int, float, float, int]] = []  # (requests so far, rps, RSS MiB, errors)
    served, started = 0, time.monotonic()
    while served < args.requests and time.monotonic() - started < args.max_seconds:
        with h.PeakRss(gaud.pid) as peak:
            run = h.run_wrk(url, body, conc=args.conc, duration=args.step)
        served += int(run.get("requests", 0))
        rows.append((served, run["rps"], peak.peak, run["errors"]))
        h.log(f"  {served:>9,} requests  {run['rps']:>8,.0f} req/s  RSS peak {peak.peak:6.1f} MiB  errors {run['errors']}")
    after_warmup = rows[0][2] if rows else idle
    final = rows[-1][2] if rows else idle
    highest = max((r[2] for r in rows), default=idle)
    growth = final - after_warmup
    flat = growth < args.tolerance
    errors = sum(r[3] for r in rows)
    verdict = (f"{served:,} requests in {time.monotonic() - started:.0f} s: RSS idle {idle:.1f}, after the first step "
               f"{after_warmup:.1f}, at the end {final:.1f}, highest {highest:.1f} MiB; growth after warm-up "
               f"{growth:+.1f} MiB ({'flat' if flat else 'NOT flat'}, tolerance {args.tolerance} MiB); errors {errors}")
    print(verdict)
    if args.record:
        table = ["| requests | req/s | RSS peak MiB | errors |", "|---:|---:|---:|---:|"]
        table += [f"| {n:,} | {rps:,.0f} | {rss:.1f} | {err} |" for n, rps, rss, err in rows]
        entry = [f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — soak, commit {h.git_describe()}", "",
                 f"- machine: {h.machine_note()}",
                 (f"- run: `bench/soak.py --requests {args.requests} --scenario {args.scenario} --conc {args.conc} "
                  f"--step {args.step}`; one gaud-engine worker"),
                 *([f"- note: {args.note}"] if args.note else []),
                 f"- result: {verdict}", "", *table, ""]
        RESULTS.write_text(RESULTS.read_text().rstrip("\n") + "\n" + "\n".join(entry))
    return 0 if flat and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
