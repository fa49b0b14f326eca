"""Shared pieces of the benchmark drivers: processes, readiness, RSS, wrk, the TTFB client, metadata.

Stdlib only, plus aiohttp (a gaud-engine dependency) for the streaming TTFB client. Every request
goes to 127.0.0.1; every load step is bounded in time (wrk -d, wrapped in `timeout`) or count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
BODIES = BENCH / "bodies"
POST_LUA = BENCH / "lib" / "post.lua"
BUILD = BENCH / ".build"
FAKE_BIN = BUILD / "fake-upstream"
# Every client sends this bearer key (LiteLLM refuses to start without a master key; the others ignore it).
BENCH_KEY = os.environ.get("BENCH_KEY", "sk-bench-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e")
AUTH_HEADER = f"Authorization: Bearer {BENCH_KEY}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loopback_only(url: str) -> str:
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"refusing non-loopback URL {url}")
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_out_dir(name: str, keep: int = 5) -> Path:
    """bench/.out/<name>, after deleting all but the newest `keep` earlier outputs (gaud's log and
    audit database grow by tens of MB per full run)."""
    root = BENCH / ".out"
    root.mkdir(parents=True, exist_ok=True)
    old = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for stale in old[keep - 1:]:
        shutil.rmtree(stale, ignore_errors=True)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------------------------------- tools
def ensure_fake_upstream() -> Path:
    """Build the Go fake upstream into bench/.build/ if it is missing or older than its source."""
    src = BENCH / "fake_upstream" / "main.go"
    if FAKE_BIN.exists() and FAKE_BIN.stat().st_mtime >= src.stat().st_mtime:
        return FAKE_BIN
    if shutil.which("go") is None:
        raise SystemExit("`go` not found: run bench/run.sh (installs Debian golang-go) or `apt-get install golang-go`")
    BUILD.mkdir(parents=True, exist_ok=True)
    log("building the fake upstream (go build)")
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(FAKE_BIN), "."], cwd=src.parent, env=env, check=True, timeout=300)
    return FAKE_BIN


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("`wrk` not found: run bench/run.sh (installs Debian wrk) or `apt-get install wrk`")


# ------------------------------------------------------------------------------------ processes
@dataclass
class Proc:
    """A server this harness started, in its own process group (stopped as a group)."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path
    startup_s: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def spawn(name: str, cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, url: str) -> Proc:
    log_file = log_path.open("wb")
    popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    log_file.close()
    return Proc(name, popen, url, log_path)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(loopback_only(url), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def wait_ready(proc: Proc, path: str, timeout: float, started: float) -> float:
    """Poll `path` until it answers 200; returns seconds since `started` (the start-up time)."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}:\n"
                               + proc.log_path.read_text(errors="replace")[-2000:])
        if http_status(proc.url + path, timeout=1.0) == 200:
            return time.perf_counter() - started
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s; see {proc.log_path}")


# ------------------------------------------------------------------------------------------ RSS
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_mib(pid: int) -> float:
    """Summed VmRSS of a process and its descendants (a master and its workers), in MiB."""
    tree, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, ()))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024.0


class PeakRss:
    """Samples a process tree's RSS in a thread (every 0.25 s) while the `with` block runs."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------ wrk
def run_wrk(url: str, body: Path, *, conc: int, duration: int, raw_path: Path | None = None) -> dict[str, Any]:
    """One bounded wrk run (1 thread). Returns rps (2xx only), p50/p90/p99/max ms and error counts."""
    cmd = ["timeout", str(duration + 30), "wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--timeout", "10s",
           "-s", str(POST_LUA), loopback_only(url), "--", str(body), AUTH_HEADER]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)  # output parsed below
    if raw_path is not None:
        raw_path.write_text(proc.stdout + proc.stderr)
    found = None
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            found = json.loads(line[8:])
    if found is None:
        return {"rps": 0.0, "p50_ms": None, "p99_ms": None, "errors": -1, "note": "wrk failed"}
    errors = sum(found[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    seconds = found["duration_us"] / 1e6
    return {
        "requests": found["requests"],
        "rps": (found["requests"] - found["err_status"]) / seconds if seconds else 0.0,
        "p50_ms": found["lat_p50_us"] / 1000, "p90_ms": found["lat_p90_us"] / 1000,
        "p99_ms": found["lat_p99_us"] / 1000, "max_ms": found["lat_max_us"] / 1000,
        "errors": errors,
    }


# ---------------------------------------------------------------------------- validating request
def check_once(url: str, body: Path, *, expect: bytes = b"tok19", timeout: float = 30.0) -> tuple[bool, str]:
    """One request before any load: HTTP 200 and the fake upstream's last token must come back."""
    request = urllib.request.Request(
        loopback_only(url), data=body.read_bytes(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}",
                 "x-api-key": "sk-fake", "anthropic-version": "2023-06-01"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read()[:300]!r}"
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if status != 200 or expect not in data:
        return False, f"HTTP {status}: {data[:300]!r}"
    return True, ""


# ----------------------------------------------------------------------------------------- TTFB
def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


async def _ttfb(url: str, body: bytes, requests: int, warmup: int, max_seconds: float) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}",
               "x-api-key": "sk-fake", "anthropic-version": "2023-06-01"}
    ttfb, total, errors = [], [], 0
    deadline = time.perf_counter() + max_seconds
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for i in range(warmup + requests):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    first = await resp.content.readany()
                    t1 = time.perf_counter()
                    while await resp.content.readany():
                        pass
                    t2 = time.perf_counter()
                    ok = resp.status == 200 and bool(first)
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            if i < warmup:
                continue
            if not ok:
                errors += 1
                continue
            ttfb.append(t1 - t0)
            total.append(t2 - t0)
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    return {"n": len(ttfb), "errors": errors, "ttfb_p50_ms": ms(_pct(ttfb, 50)), "ttfb_p99_ms": ms(_pct(ttfb, 99)),
            "total_p50_ms": ms(_pct(total, 50))}


def measure_ttfb(url: str, body: Path, *, requests: int, warmup: int = 10, max_seconds: float = 30.0) -> dict[str, Any]:
    """Streaming time to first body byte, one request at a time (unloaded), bounded by count and time."""
    return asyncio.run(asyncio.wait_for(_ttfb(loopback_only(url), body.read_bytes(), requests, warmup, max_seconds),
                                        timeout=max_seconds + 30))


# ------------------------------------------------------------------------------------- metadata
def git_describe() -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    # porcelain lines are "XY path"; only tracked or new files under the code that runs matter here
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "engine", "providers.d", "pricing.d", "routes.yaml",
                                      "schemas", "pyproject.toml").splitlines() if len(line) > 3]
    if dirty:
        shown = ", ".join(dirty[:6]) + (f", +{len(dirty) - 6} more" if len(dirty) > 6 else "")
        return f"{commit} + uncommitted changes ({shown})"
    return commit


def machine_note() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    uname = platform.uname()
    return f"{os.cpu_count()} cores ({cpu or 'unknown CPU'}){mem}, {uname.system} {uname.release} {uname.machine}, Python {platform.python_version()}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------ CPU accounting
_TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    tree, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, ()))
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / _TICK


class CpuAudit:
    """How much of the machine went to processes that are not part of the benchmark (noise)."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.busy0, self.steal0 = machine_cpu()
        t = os.times()
        self.self0 = t.user + t.system + t.children_user + t.children_system

    def finish(self, server_pids: list[int], server_cpu_at_start: float) -> str:
        wall = time.perf_counter() - self.wall0
        busy, steal = machine_cpu()
        t = os.times()
        ours = (t.user + t.system + t.children_user + t.children_system - self.self0)
        ours += sum(tree_cpu(p) for p in server_pids) - server_cpu_at_start
        capacity = wall * (os.cpu_count() or 1)
        others = max(0.0, busy - self.busy0 - ours - (steal - self.steal0))
        return (f"CPU during the run: benchmark {ours:.0f} core-s, other processes ~{others:.0f} core-s "
                f"({100 * others / capacity:.0f}% of the machine), steal {100 * (steal - self.steal0) / capacity:.0f}%")


@dataclass
class Registry:
    """Everything started here, stopped on exit (also on Ctrl-C / SIGTERM)."""

    procs: list[Proc] = field(default_factory=list)

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
