#!/usr/bin/env python3
"""Where does gaud-engine spend its CPU under load? py-spy (or cProfile) on one gaud worker.

    python bench/profile.py                              # anthropic_nonstream, 10 s of samples
    python bench/profile.py openai_stream --seconds 15
    python bench/profile.py anthropic_nonstream --cprofile   # no py-spy / no ptrace: deterministic profiler
    python bench/profile.py openai_nonstream --target reference   # the reference gateway, for comparison
    PYSPY_NATIVE=1 python bench/profile.py openai_nonstream  # with native frames (C extensions, gc)

Starts the fake upstream and gaud-engine (as bench/compare.py does), drives bounded wrk load at
127.0.0.1 (-c$CONC, seconds + 4), samples the gaud process with `py-spy record --nonblocking` and
prints the top frames by self time, by inclusive time, and self time per package. Raw stacks stay in
bench/.out/profile-<ts>/. py-spy is found on PATH or in $BENCH_STATE/tools-venv (installed there
with pip if missing).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h
from compare import DEFAULT_STATE, SCENARIOS, request_for, start_direct, start_gaud, start_reference

PLUMBING = ("asyncio/", "uvloop", "<module>", "_run_once", "run_until_complete", "run_forever", "_bootstrap",
            "uvicorn/main.py", "uvicorn/server.py", "click/", "engine/cli/commands.py", "runpy.py", "__main__.py")


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found:
        return found
    venv = DEFAULT_STATE / "tools-venv"
    exe = venv / "bin" / "py-spy"
    if not exe.exists():
        h.log(f"installing py-spy into {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"], check=True, timeout=600)
    return str(exe)


def short(frame: str) -> str:
    """'func (/x/site-packages/pkg/mod.py:12)' -> 'func (pkg/mod.py)'; this repo's files relative to it."""
    frame = re.sub(r":\d+\)$", ")", frame)
    frame = re.sub(r"\(/.*?(site|dist)-packages/", "(", frame)
    frame = frame.replace(f"({h.ROOT}/", "(")
    return re.sub(r"\(/.*?/lib/python3\.\d+/", "(", frame)


def package(frame: str) -> str:
    m = re.search(r"\(([^)]*)\)$", frame)
    path = m.group(1) if m else frame
    parts = path.split("/")
    if parts[0] == "engine":
        return "/".join(parts[:2]) if len(parts) > 2 else path
    return parts[0] if len(parts) > 1 else path


def report_raw(path: Path, top: int) -> str:
    inclusive, self_time, by_package, by_line = (collections.Counter() for _ in range(4))
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        lines = stack.split(";")
        frames = [short(f) for f in lines]
        if not frames:
            continue
        for frame in set(frames):
            inclusive[frame] += n
        self_time[frames[-1]] += n
        by_package[package(frames[-1])] += n
        if "(engine/" in frames[-1] or f"({h.ROOT}/engine/" in lines[-1]:
            by_line[re.sub(r"\(/.*?/engine/", "(engine/", lines[-1])] += n
    if not total:
        return "no samples (is py-spy allowed to ptrace here? try --cprofile)"
    out = [f"samples: {total} (on-CPU only; idle event-loop waits are not sampled)", "",
           f"== top {top} by self time ==", "  self%  frame"]
    out += [f"  {100 * n / total:5.1f}  {f}" for f, n in self_time.most_common(top)]
    out += ["", "== top 25 by inclusive time (event-loop plumbing left out) ==", "  incl%  frame"]
    k = 0
    for f, n in inclusive.most_common(500):
        if any(p in f for p in PLUMBING):
            continue
        out.append(f"  {100 * n / total:5.1f}  {f}")
        k += 1
        if k >= 25:
            break
    out += ["", "== self time per package / engine module ==", "  self%  where"]
    out += [f"  {100 * n / total:5.1f}  {p}" for p, n in by_package.most_common(20)]
    out += ["", "== engine lines by self time ==", "  self%  line"]
    out += [f"  {100 * n / total:5.1f}  {p}" for p, n in by_line.most_common(15)]
    return "\n".join(out)


def report_cprofile(path: Path, top: int) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(25)
    return buf.getvalue()


CPROFILE_RUNNER = """
import cProfile, sys
from engine.cli.commands import main
profile = cProfile.Profile()
profile.enable()
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    profile.disable()
    profile.dump_stats(sys.argv[1])
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", nargs="?", default="anthropic_nonstream", choices=SCENARIOS)
    p.add_argument("--seconds", type=int, default=10, help="sampling window (the load runs 4 s longer)")
    p.add_argument("--conc", type=int, default=int(os.environ.get("CONC", "32")))
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--cprofile", action="store_true", help="run gaud under cProfile instead of sampling it with py-spy")
    p.add_argument("--gaud-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--target", choices=("gaud", "reference"), default="gaud",
                   help="profile the reference gateway instead, to read both profiles side by side")
    a = p.parse_args()
    h.require_wrk()
    out = h.new_out_dir(f"profile-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{a.scenario}")
    registry = h.Registry()
    atexit.register(registry.stop_all)
    spy = None if a.cprofile else py_spy()

    direct = registry.add(start_direct(out))
    if a.cprofile:
        import compare

        stats_path = out / "gaud.pstats"
        # Same start-up as compare.start_gaud, with the CLI wrapped in cProfile.
        cmd_prefix = [sys.executable, "-c", CPROFILE_RUNNER, str(stats_path)]
        port = h.free_port()
        env = {**compare.clean_env(), "OPENAI_API_KEY": "sk-fake", "OPENAI_BASE_URL": f"{direct.url}/v1",
               "ANTHROPIC_API_KEY": "sk-fake", "ANTHROPIC_BASE_URL": direct.url,
               "GAUD_DATABASE_URL": f"sqlite:///{out / 'gaud.db'}", "GAUD_AUTH_ENABLED": "false"}
        for item in a.gaud_env:
            name, _, value = item.partition("=")
            env[name] = value
        t0 = time.perf_counter()
        gaud = h.spawn("gaud", [*cmd_prefix, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=h.ROOT,
                       log_path=out / "gaud.log", url=f"http://127.0.0.1:{port}")
        registry.add(gaud)
        gaud.startup_s = h.wait_ready(gaud, "/health", 60, t0)
    elif a.target == "reference":
        gaud = registry.add(start_reference(out, direct.url))
    else:
        gaud = registry.add(start_gaud(out, direct.url, a.gaud_env))
    url, body = request_for(a.target, a.scenario, gaud.url)
    ok, why = h.check_once(url, body)
    if not ok:
        h.log(f"check failed: {why}")
        return 1
    h.run_wrk(url, body, conc=a.conc, duration=2)  # warm-up
    h.log(f"profiling {a.target} pid {gaud.pid} under wrk -c{a.conc} ({a.scenario}) for {a.seconds} s")
    load: dict[str, object] = {}
    loader = threading.Thread(target=lambda: load.update(h.run_wrk(url, body, conc=a.conc, duration=a.seconds + 4)))
    loader.start()
    time.sleep(2)
    if spy is not None:
        raw = out / "stacks.txt"
        cmd = ["timeout", str(a.seconds + 30), spy, "record", *(["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"]), "-r", str(a.rate), "-d", str(a.seconds),
               "-p", str(gaud.pid), "-f", "raw", "-o", str(raw)]
        spied = subprocess.run(cmd, capture_output=True, text=True, check=False)  # its log says what went wrong
        (out / "py-spy.log").write_text(spied.stdout + spied.stderr)
    loader.join()
    h.log(f"load during the profile: {load.get('rps', 0):.0f} rps, p50 {load.get('p50_ms')} ms, errors {load.get('errors')}")
    if spy is not None:
        if spied.returncode != 0 or not raw.exists():
            h.log(f"py-spy failed (exit {spied.returncode}): {(spied.stdout + spied.stderr)[-800:]}\nretry with --cprofile")
            return 1
        text = report_raw(raw, a.top)
    else:
        registry.stop_all()  # uvicorn exits on SIGTERM; the runner then writes the stats
        text = report_cprofile(stats_path, a.top)
    print(text)
    (out / "top.txt").write_text(text + "\n")
    h.log(f"raw output in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
