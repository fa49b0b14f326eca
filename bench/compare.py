#!/usr/bin/env python3
"""Gateway overhead benchmark: direct (fake upstream) vs reference vs gaud-engine [vs LiteLLM].

    bench/run.sh                  # full run (3 rounds, DUR=5), appends to bench/RESULTS.md
    bench/run.sh --smoke          # 1 round, 2 s steps, prints the table only
    bench/run.sh --litellm        # also LiteLLM's proxy, from its own virtualenv (slow to install)

Starts one fake upstream (Go), then each gateway with ONE worker, all pointed at it, and keeps them
all running. Per round, per scenario, the targets are loaded one after the other (interleaved, the
order rotated every round), each with the same bounded steps:

  load  wrk -t1 -c$CONC -d$DUR          -> RPS, p50, p99 under load, peak RSS
  lat   wrk -t1 -c1 -d$LAT_DUR          -> unloaded latency; "added" = target - direct, same round
  ttfb  (stream scenarios) $TTFB_N sequential requests -> time to first body byte

Ratios (vs LiteLLM, vs the reference) are computed per round and the median over rounds is shown;
so are RPS and latencies. Only 127.0.0.1 traffic; every process started here is stopped at exit.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

import harness as h

SCENARIOS = ("openai_nonstream", "openai_stream", "anthropic_nonstream", "anthropic_stream")
TARGET_ORDER = ("direct", "reference", "gaud", "litellm")
DEFAULT_STATE = Path(os.environ.get("BENCH_STATE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gaud-bench")


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE") == "1",
                   help="sanity check: 1 round, 2 s load, 1 s latency, 20 TTFB requests, no warm-up; not recorded (env SMOKE=1)")
    p.add_argument("--litellm", action="store_true", default=os.environ.get("LITELLM") == "1",
                   help="also benchmark LiteLLM's proxy (installed into $BENCH_STATE/litellm-venv if missing; env LITELLM=1)")
    p.add_argument("--rounds", type=int, help="rounds over all targets and scenarios (env ROUNDS; default 3, smoke 1)")
    p.add_argument("--dur", type=int, help="seconds of load per step (env DUR; default 5, smoke 2)")
    p.add_argument("--lat-dur", type=int, help="seconds of concurrency-1 load per step (env LAT_DUR; default 2, smoke 1)")
    p.add_argument("--conc", type=int, help="wrk connections (env CONC; default 32)")
    p.add_argument("--ttfb-n", type=int, help="sequential requests for TTFB (env TTFB_N; default 100, smoke 20)")
    p.add_argument("--warmup", type=int, help="seconds of unrecorded load per target and scenario before round 1 "
                   "(env WARMUP; default 1, smoke 0)")
    p.add_argument("--scenarios", default=os.environ.get("SCENARIOS", ",".join(SCENARIOS)),
                   help="comma-separated subset of " + ",".join(SCENARIOS))
    p.add_argument("--targets", default=os.environ.get("TARGETS", "direct,reference,gaud"),
                   help="comma-separated subset of direct,reference,gaud (direct is always included); --litellm adds litellm")
    p.add_argument("--gaud-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the gaud target (GAUD_* from your shell are NOT passed through)")
    p.add_argument("--record", dest="record", action="store_true", default=None, help="append to bench/RESULTS.md (default unless --smoke)")
    p.add_argument("--no-record", dest="record", action="store_false")
    p.add_argument("--note", default=os.environ.get("BENCH_NOTE", ""), help="free text added to the RESULTS.md entry")
    p.add_argument("--out", default=os.environ.get("OUT"), help="raw outputs folder (default bench/.out/<timestamp>; the 5 newest are kept)")
    p.add_argument("--litellm-venv", default=os.environ.get("LITELLM_VENV", str(DEFAULT_STATE / "litellm-venv")))
    a = p.parse_args(argv)
    defaults = {"rounds": (3, 1), "dur": (5, 2), "lat_dur": (2, 1), "conc": (32, 32), "ttfb_n": (100, 20), "warmup": (1, 0)}
    for name, (full, smoke) in defaults.items():
        if getattr(a, name) is None:  # flag > environment > mode default
            setattr(a, name, env_int(name.upper(), smoke if a.smoke else full))
    if a.record is None:
        a.record = not a.smoke
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    unknown = set(a.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    targets = {t for t in a.targets.split(",") if t} | {"direct"}
    if a.litellm:
        targets.add("litellm")
    unknown = targets - set(TARGET_ORDER)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    a.targets = [t for t in TARGET_ORDER if t in targets]
    return a


# ----------------------------------------------------------------------------------- targets
def clean_env() -> dict[str, str]:
    """The caller's environment without GAUD_* settings or LiteLLM/provider variables that would skew a target."""
    drop = ("GAUD_", "LITELLM_", "OPENAI_", "ANTHROPIC_", "DATABASE_URL")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def start_direct(out: Path) -> h.Proc:
    binary = h.ensure_fake_upstream()
    port = h.free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = h.spawn("direct", [str(binary), "--port", str(port)], env=clean_env(), cwd=out,
                   log_path=out / "direct.log", url=url)
    proc.startup_s = h.wait_ready(proc, "/health", 30, t0)
    return proc


def start_reference(out: Path, upstream: str) -> h.Proc:
    port = h.free_port()
    cmd = [sys.executable, "-m", "uvicorn", "gw_aiohttp:app", "--app-dir", str(h.BENCH / "reference"),
           "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
           "--no-access-log", "--log-level", "warning", "--workers", "1"]
    t0 = time.perf_counter()
    proc = h.spawn("reference", cmd, env={**clean_env(), "UPSTREAM_URL": upstream}, cwd=out,
                   log_path=out / "reference.log", url=f"http://127.0.0.1:{port}")
    proc.startup_s = h.wait_ready(proc, "/health", 60, t0)
    return proc


def start_gaud(out: Path, upstream: str, extra_env: list[str]) -> h.Proc:
    port = h.free_port()
    env = {
        **clean_env(),
        "OPENAI_API_KEY": "sk-fake", "OPENAI_BASE_URL": f"{upstream}/v1",
        "ANTHROPIC_API_KEY": "sk-fake", "ANTHROPIC_BASE_URL": upstream,
        "GAUD_DATABASE_URL": f"sqlite:///{out / 'gaud.db'}",
        # Like the reference (and LiteLLM with only a master key): no per-user keys. Accounting and the
        # audit log still run, as the local user. Override with --gaud-env GAUD_AUTH_ENABLED=true.
        "GAUD_AUTH_ENABLED": "false",
    }
    for item in extra_env:
        name, _, value = item.partition("=")
        env[name] = value
    cmd = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    # cwd = the repo, so `python -m engine` is this checkout whether or not it is installed editable.
    proc = h.spawn("gaud", cmd, env=env, cwd=h.ROOT, log_path=out / "gaud.log", url=f"http://127.0.0.1:{port}")
    proc.startup_s = h.wait_ready(proc, "/health", 60, t0)
    return proc


def ensure_litellm(venv: Path) -> Path:
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    h.log(f"creating {venv} with litellm[proxy] (takes minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True, timeout=1800)
    return exe


def start_litellm(out: Path, upstream: str, venv: Path) -> h.Proc:
    exe = ensure_litellm(venv)
    port = h.free_port()
    config = out / "litellm_config.yaml"
    config.write_text((h.BENCH / "litellm" / "config.yaml.tmpl").read_text().replace("__UPSTREAM__", upstream))
    env = {**clean_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION",
           "LITELLM_MASTER_KEY": h.BENCH_KEY, "LITELLM_TELEMETRY": "False", "ANONYMIZED_TELEMETRY": "False",
           "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true"}
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    t0 = time.perf_counter()
    proc = h.spawn("litellm", cmd, env=env, cwd=out, log_path=out / "litellm.log", url=f"http://127.0.0.1:{port}")
    proc.startup_s = h.wait_ready(proc, "/health/liveliness", 300, t0)
    return proc


def request_for(target: str, scenario: str, url: str) -> tuple[str, Path]:
    """(URL, body file) for one target and scenario. direct gets what a gateway would send upstream."""
    shape, mode = scenario.split("_")
    if target == "direct":
        if shape == "openai":
            return f"{url}/v1/chat/completions", h.BODIES / f"openai_gpt-4o_{mode}.json"
        return f"{url}/v1/messages", h.BODIES / f"anthropic_{mode}.json"
    model = "gpt-4o" if shape == "openai" else "claude-sonnet-4"
    return f"{url}/v1/chat/completions", h.BODIES / f"openai_{model}_{mode}.json"


# ---------------------------------------------------------------------------------- reporting
def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def summarize(rows: list[dict[str, Any]], targets: list[str], scenarios: list[str], procs: dict[str, h.Proc]) -> str:
    by: dict[tuple[str, str, str, int], dict[str, Any]] = {(r["target"], r["scenario"], r["kind"], r["round"]): r for r in rows}
    rounds = sorted({r["round"] for r in rows})

    def per_round(target: str, scenario: str, kind: str, key: str) -> list[float | None]:
        return [by.get((target, scenario, kind, i), {}).get(key) for i in rounds]

    def ratio(target: str, other: str, scenario: str) -> float | None:
        if other not in targets:
            return None
        vals = []
        for a, b in zip(per_round(target, scenario, "load", "rps"), per_round(other, scenario, "load", "rps")):
            if a is not None and b:
                vals.append(a / b)
        return med(vals)

    def added(target: str, scenario: str, kind: str, key: str) -> float | None:
        vals = []
        for a, b in zip(per_round(target, scenario, kind, key), per_round("direct", scenario, kind, key)):
            if a is not None and b is not None:
                vals.append(a - b)
        return med(vals)

    lines = [
        ("| scenario | target | RPS | RPS spread | CPU µs/req | p50 ms | p99 ms | added p50 ms (c=1) | ×LiteLLM | ×reference "
         "| TTFB p50 ms | added TTFB ms | RSS idle/peak MiB | start-up s | errors |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        for target in targets:
            rps = [v for v in per_round(target, scenario, "load", "rps") if v is not None]
            if not rps:
                lines.append(f"| {scenario} | {target} | failed | | | | | | | | | | | | |")
                continue
            rps_med = statistics.median(rps)
            spread = (max(rps) - min(rps)) / rps_med * 100 if rps_med and len(rps) > 1 else None
            stream = scenario.endswith("_stream")
            errors = sum((by.get((target, scenario, k, i), {}).get("errors") or 0) for k in ("load", "lat", "ttfb") for i in rounds)
            idle = med(per_round(target, scenario, "load", "rss_idle_mib"))
            peak = max((v for v in per_round(target, scenario, "load", "rss_peak_mib") if v is not None), default=None)
            lines.append(
                f"| {scenario} | {target} | {fmt(rps_med, 0)} | {fmt(spread, 0, '%')} "
                f"| {fmt(med(per_round(target, scenario, 'load', 'cpu_us_per_req')), 0)} "
                f"| {fmt(med(per_round(target, scenario, 'load', 'p50_ms')))} | {fmt(med(per_round(target, scenario, 'load', 'p99_ms')))} "
                f"| {fmt(added(target, scenario, 'lat', 'p50_ms'), 3) if target != 'direct' else '0'} "
                f"| {fmt(ratio(target, 'litellm', scenario)) if target != 'litellm' else '1'} "
                f"| {fmt(ratio(target, 'reference', scenario)) if target != 'reference' else '1'} "
                f"| {fmt(med(per_round(target, scenario, 'ttfb', 'ttfb_p50_ms')), 3) if stream else ''} "
                f"| {(fmt(added(target, scenario, 'ttfb', 'ttfb_p50_ms'), 3) if target != 'direct' else '0') if stream else ''} "
                f"| {fmt(idle, 0)}/{fmt(peak, 0)} | {fmt(procs[target].startup_s, 2) if target in procs else '–'} | {errors} |"
            )
    return "\n".join(lines)


LEGEND = (
    "RPS, p50, p99: wrk -t1 -c{conc} -d{dur}s, median over rounds (p50/p99 are per-round percentiles of the whole "
    "request, last SSE event included). RPS spread: (max-min)/median over rounds, the run's noise. "
    "CPU µs/req: CPU time of the target's process tree during the load step / requests served, median over rounds "
    "(steadier than RPS when other processes share the machine). "
    "added p50 (c=1): median over rounds of (target - direct) p50 at concurrency 1 ({lat_dur} s). "
    "×LiteLLM, ×reference: median over rounds of the RPS ratio in the same round. TTFB: time to the first body byte "
    "of a stream, {ttfb_n} sequential requests (aiohttp client). RSS: process tree, idle before the load step "
    "(median) and peak during it (max). start-up: spawn until the health URL answers 200."
)


def record(path: Path, table: str, args: argparse.Namespace, meta: dict[str, str]) -> None:
    header = "# Benchmark results\n\nAppended by `bench/run.sh` (see bench/README.md). Compare ratios within one entry only.\n"
    text = path.read_text() if path.exists() else header
    entry = [
        f"\n## {meta['date']} — commit {meta['commit']}",
        "",
        f"- machine: {meta['machine']}; load average before/after: {meta['load_before']} / {meta['load_after']}",
        f"- {meta['cpu']}",
        (f"- run: targets {', '.join(args.targets)}; rounds={args.rounds} DUR={args.dur}s LAT_DUR={args.lat_dur}s "
         f"CONC={args.conc} TTFB_N={args.ttfb_n}; one worker each; wall time {meta['wall']}"),
    ]
    if args.note:
        entry.append(f"- note: {args.note}")
    entry += ["", table, "", LEGEND.format(**vars(args)), ""]
    path.write_text(text.rstrip("\n") + "\n" + "\n".join(entry))


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.require_wrk()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = h.new_out_dir(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    registry = h.Registry()
    atexit.register(registry.stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))

    started_wall = time.perf_counter()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": h.git_describe(),
            "machine": h.machine_note(), "load_before": h.loadavg()}
    h.log(f"commit {meta['commit']}; {meta['machine']}; raw output in {out}")

    procs: dict[str, h.Proc] = {}
    procs["direct"] = registry.add(start_direct(out))
    upstream = procs["direct"].url
    h.log(f"direct (fake upstream) at {upstream}, up in {procs['direct'].startup_s:.2f} s")
    starters = {
        "reference": lambda: start_reference(out, upstream),
        "gaud": lambda: start_gaud(out, upstream, args.gaud_env),
        "litellm": lambda: start_litellm(out, upstream, Path(args.litellm_venv)),
    }
    for name in args.targets[1:]:
        try:
            procs[name] = registry.add(starters[name]())
            h.log(f"{name} at {procs[name].url}, up in {procs[name].startup_s:.2f} s")
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            h.log(f"{name} did not start: {exc}")
    targets = [t for t in args.targets if t in procs]
    audit = h.CpuAudit()  # counts from here: the checks, warm-up and rounds
    servers_cpu0 = sum(h.tree_cpu(p.pid) for p in procs.values())

    # One validating request per target and scenario; a failing pair is not loaded.
    usable: set[tuple[str, str]] = set()
    for target in targets:
        for scenario in args.scenarios:
            url, body = request_for(target, scenario, procs[target].url)
            ok, why = h.check_once(url, body)
            if ok:
                usable.add((target, scenario))
            else:
                h.log(f"CHECK FAILED {target}/{scenario}: {why}")
    if args.warmup > 0:
        h.log(f"warm-up: {args.warmup} s per target and scenario (not recorded)")
        for scenario in args.scenarios:
            for target in targets:
                if (target, scenario) in usable:
                    url, body = request_for(target, scenario, procs[target].url)
                    h.run_wrk(url, body, conc=args.conc, duration=args.warmup)

    rows: list[dict[str, Any]] = []
    results = out / "results.jsonl"
    with results.open("w") as sink:
        def keep(row: dict[str, Any]) -> None:
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()

        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[: rnd % len(targets)]
            h.log(f"round {rnd + 1}/{args.rounds}, order {' '.join(order)}")
            for scenario in args.scenarios:
                for target in order:
                    if (target, scenario) not in usable:
                        continue
                    proc = procs[target]
                    url, body = request_for(target, scenario, proc.url)
                    idle = h.tree_rss_mib(proc.pid)
                    cpu0 = h.tree_cpu(proc.pid)
                    with h.PeakRss(proc.pid) as rss:
                        load = h.run_wrk(url, body, conc=args.conc, duration=args.dur,
                                         raw_path=out / f"wrk_{target}_{scenario}_load_r{rnd}.txt")
                    cpu = h.tree_cpu(proc.pid) - cpu0
                    served = load.get("requests") or 0
                    keep({"round": rnd, "target": target, "scenario": scenario, "kind": "load", **load,
                          "rss_idle_mib": idle, "rss_peak_mib": rss.peak, "cpu_s": cpu,
                          "cpu_us_per_req": cpu / served * 1e6 if served else None})
                    lat = h.run_wrk(url, body, conc=1, duration=args.lat_dur,
                                    raw_path=out / f"wrk_{target}_{scenario}_lat_r{rnd}.txt")
                    keep({"round": rnd, "target": target, "scenario": scenario, "kind": "lat", **lat})
                    msg = (f"  {scenario:<20} {target:<9} rps={load['rps']:8.0f} cpu/req={fmt(rows[-2]['cpu_us_per_req'], 0)}us p50={load['p50_ms']}ms "
                           f"p99={load['p99_ms']}ms c1_p50={lat['p50_ms']}ms err={load['errors']} rss_peak={rss.peak:.0f}MiB")
                    if scenario.endswith("_stream"):
                        ttfb = h.measure_ttfb(url, body, requests=args.ttfb_n, max_seconds=30)
                        keep({"round": rnd, "target": target, "scenario": scenario, "kind": "ttfb", **ttfb})
                        msg += f" ttfb_p50={fmt(ttfb['ttfb_p50_ms'], 3)}ms"
                    h.log(msg)

    meta["load_after"] = h.loadavg()
    meta["cpu"] = audit.finish([p.pid for p in procs.values()], servers_cpu0)
    meta["wall"] = f"{time.perf_counter() - started_wall:.0f} s"
    for name, proc in procs.items():
        if proc.popen.poll() is not None:
            h.log(f"WARNING: {name} exited during the run (code {proc.popen.returncode}); see {proc.log_path}")
    registry.stop_all()

    table = summarize(rows, targets, args.scenarios, procs)
    print(f"\ncommit {meta['commit']} | {meta['machine']} | load {meta['load_before']} -> {meta['load_after']} "
          f"| rounds={args.rounds} DUR={args.dur}s CONC={args.conc} | wall {meta['wall']}\n{meta['cpu']}\n")
    print(table)
    print("\n" + LEGEND.format(**vars(args)))
    (out / "report.md").write_text(table + "\n")
    if args.record:
        record(h.BENCH / "RESULTS.md", table, args, meta)
        h.log("appended to bench/RESULTS.md")
    failed = [f"{t}/{s}" for t in args.targets for s in args.scenarios if (t, s) not in usable]
    if failed:
        h.log(f"FAILED (not measured): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
