#!/usr/bin/env python3
"""Chaos: do faults ever pass as success? Mixed requests through an alias with fallback against a
randomly failing upstream.

    python bench/chaos.py                        # 2,000 requests at 40 concurrency, seed 19
    python bench/chaos.py --requests 200         # a smoke (~15 s)
    python bench/chaos.py --record --note "..."  # also append the result to bench/RESULTS.md

Starts the fault server of tests/faultserver.py (in this process, its own thread) and one
`gaud-engine serve` worker (SQLite, auth off, small upstream timeouts and deadlines). Two aliases,
`chaos-openai` and `chaos-anthropic`: a faulty first deployment (OpenAI pass-through or Anthropic
translation) and an OpenAI fallback. Each request picks, from a seeded RNG, the stream flag, the
alias, the first deployment's fault (with --fault-rate probability, uniform over the faults) and,
with --both-fail probability, a fault of the fallback too; the fault server reads the choice from the
prompt, so retries and fallbacks of one request meet the same faults.

Every answer is judged from the raw bytes: a complete reply (HEALTHY_TEXT, finish_reason "stop",
and [DONE] for a stream), a clean error (JSON `{"error": {message, type, code}}`, or one SSE error
event with no finish and no [DONE] after it), a false success (a 200 that is not the complete
reply, a stream ending without [DONE] or an error event), unclean (a non-JSON error, a frame that
is not JSON, a connection cut) or hung (no answer within request_deadline + --margin). Then every
request's audit row is checked: one per request, the status the client saw, an error kind exactly
when the client got no reply. Breaker opens are counted from /metrics (polled every 0.2 s) and
from the audit log (requests whose `tried` skips the first deployment).

Exit status 1 unless false successes, unclean errors, hung requests and audit mismatches are all 0.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import random
import re
import sqlite3
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "lib"))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import aiohttp  # noqa: E402
import harness as h  # noqa: E402
import yaml  # noqa: E402
from compare import clean_env  # noqa: E402

from tests.faultjudge import judge_json, judge_sse  # noqa: E402
from tests.faultserver import FAULTS, FaultServer, marker  # noqa: E402

RESULTS = BENCH / "RESULTS.md"
PRIMARY = {"chaos-openai": "openai/gpt-4o", "chaos-anthropic": "anthropic/claude-sonnet-4-20250514"}
FALLBACK = "openai/gpt-4-turbo"
BAD = ("false_success", "unclean", "hung")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests to send (default 2000)")
    p.add_argument("--conc", type=int, default=40, help="requests in flight (default 40)")
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--stream-share", type=float, default=0.5, help="share of streamed requests (default 0.5)")
    p.add_argument("--fault-rate", type=float, default=0.35, help="probability the first deployment fails "
                   "(default 0.35; the fault then uniform over the faults)")
    p.add_argument("--both-fail", type=float, default=0.1, help="probability the fallback fails too (default 0.1)")
    p.add_argument("--read-timeout", type=float, default=0.5)
    p.add_argument("--idle-timeout", type=float, default=1.0)
    p.add_argument("--total-timeout", type=float, default=3.0)
    p.add_argument("--request-deadline", type=float, default=5.0)
    p.add_argument("--margin", type=float, default=2.0, help="seconds past the request deadline before a request "
                   "counts as hung (default 2)")
    # The shipped retry rule makes up to 4 attempts per request: with the shipped breaker (5 failures)
    # two faulty requests open it, and most requests would never meet the faulty deployment.
    p.add_argument("--breaker", default="10/1", help="breaker failures/cooldown seconds (default 10/1)")
    p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    p.add_argument("--note", default="", help="free text for the RESULTS.md entry")
    return p.parse_args(argv)


@dataclass
class Sent:
    request_id: str
    alias: str
    stream: bool
    faults: dict[str, str]
    outcome: str = ""
    status: int | None = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    by_fault: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, sent: Sent) -> None:
        self.outcomes[sent.outcome] += 1
        key = "+".join(f"{tag}={fault}" for tag, fault in sent.faults.items()) + f" {'sse' if sent.stream else 'json'}"
        self.by_fault.setdefault(key, Counter())[sent.outcome] += 1


# ----------------------------------------------------------------------------------- set-up
def spec_dir(out: Path, faults: FaultServer, args: argparse.Namespace) -> Path:
    """The shipped providers, prices and ingress (linked), and a routes.yaml with the chaos aliases.
    Retry and fallback rules are the shipped defaults; backoff is shortened."""
    tree = out / "specs"
    tree.mkdir(exist_ok=True)
    for name in ("providers.d", "pricing.d", "ingress.d"):
        link = tree / name
        if not link.exists():
            link.symlink_to(h.ROOT / name)
    routes = yaml.safe_load((h.ROOT / "routes.yaml").read_text())
    failures, _, cooldown = args.breaker.partition("/")
    routes["defaults"]["backoff"] = {"initial": 0.05, "multiplier": 2.0, "max": 0.5, "jitter": 0.2, "max_retry_after": 2}
    routes["defaults"]["breaker"] = {"failures": int(failures), "cooldown": float(cooldown)}
    # Named: unnamed, a deployment with an api_base is called `provider/model@api_base`.
    fallback = {"name": FALLBACK, "provider": "openai", "model": FALLBACK.split("/")[1], "api_base": faults.api_base("b")}
    routes["aliases"] = {
        alias: {"candidates": [{"name": name, "provider": name.split("/")[0], "model": name.split("/")[1],
                                "api_base": faults.api_base("a", wire=name.split("/")[0])}, fallback]}
        for alias, name in PRIMARY.items()
    }
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    return tree


def start_gaud(out: Path, tree: Path, args: argparse.Namespace) -> h.Proc:
    port = h.free_port()
    env = {
        **clean_env(),
        "OPENAI_API_KEY": "sk-fake", "ANTHROPIC_API_KEY": "sk-fake",
        "GAUD_SPECS_DIR": str(tree),
        "GAUD_DATABASE_URL": f"sqlite:///{out / 'gaud.db'}",
        "GAUD_AUTH_ENABLED": "false",
        "GAUD_METRICS_REQUIRE_ADMIN": "false",
        "GAUD_LOG_LEVEL": "warning",
        "GAUD_UPSTREAM_CONNECT_TIMEOUT": "2",
        "GAUD_UPSTREAM_READ_TIMEOUT": str(args.read_timeout),
        # Ignored by a gateway that does not know them yet (GAUD_* names of unknown settings are not read).
        "GAUD_UPSTREAM_IDLE_TIMEOUT": str(args.idle_timeout),
        "GAUD_UPSTREAM_TOTAL_TIMEOUT": str(args.total_timeout),
        "GAUD_UPSTREAM_REQUEST_DEADLINE": str(args.request_deadline),
    }
    cmd = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    proc = h.spawn("gaud", cmd, env=env, cwd=h.ROOT, log_path=out / "gaud.log", url=f"http://127.0.0.1:{port}")
    proc.startup_s = h.wait_ready(proc, "/health", 60, started)
    return proc


def plan(args: argparse.Namespace) -> list[Sent]:
    rng = random.Random(args.seed)
    faults = [f for f in FAULTS if f != "healthy"]
    sent = []
    for _ in range(args.requests):
        chosen = {"a": rng.choice(faults) if rng.random() < args.fault_rate else "healthy"}
        if rng.random() < args.both_fail:
            chosen["b"] = rng.choice(faults)
        sent.append(Sent(f"chaos-{uuid.UUID(int=rng.getrandbits(128)).hex}", rng.choice(list(PRIMARY)),
                         rng.random() < args.stream_share, chosen))
    return sent


async def one(session: aiohttp.ClientSession, url: str, sent: Sent, hung_after: float) -> None:
    body: dict[str, Any] = {"model": sent.alias, "stream": sent.stream,
                            "messages": [{"role": "user", "content": f"Tide pools? {marker(**sent.faults)}"}]}
    started = time.monotonic()
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers={"x-request-id": sent.request_id},
                                timeout=aiohttp.ClientTimeout(total=hung_after)) as response:
            sent.status = response.status
            raw = await response.read()
            if response.status == 200 and sent.stream:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    sent.outcome, sent.detail = "unclean", f"a stream answered as {response.headers.get('content-type')}"
                else:
                    sent.outcome, sent.detail = judge_sse(raw)
            else:
                sent.outcome, sent.detail = judge_json(response.status, raw)
    except TimeoutError:
        sent.outcome, sent.detail = "hung", f"no complete answer in {hung_after:.1f} s"
    except aiohttp.ClientError as exc:
        sent.outcome, sent.detail = "unclean", f"{type(exc).__name__}: {exc}"[:200]
    sent.seconds = time.monotonic() - started


async def breaker_watch(url: str, stop: asyncio.Event, opens: Counter[str]) -> None:
    """Count transitions into `open` of gaud_breaker_state, per deployment (sampled)."""
    state: dict[str, float] = {}
    pattern = re.compile(r'^gaud_breaker_state\{deployment="([^"]+)"\} ([0-9.]+)', re.MULTILINE)
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    text = await response.text()
                for deployment, value in pattern.findall(text):
                    if float(value) == 2 and state.get(deployment) != 2:
                        opens[deployment] += 1
                    state[deployment] = float(value)
            except (aiohttp.ClientError, TimeoutError):
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def drive(url: str, requests: list[Sent], conc: int, hung_after: float) -> tuple[float, Counter[str]]:
    queue: asyncio.Queue[Sent] = asyncio.Queue()
    for sent in requests:
        queue.put_nowait(sent)
    stop, opens = asyncio.Event(), Counter[str]()
    watcher = asyncio.create_task(breaker_watch(url, stop, opens))
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                await one(session, url, queue.get_nowait(), hung_after)

        await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.monotonic() - started
    stop.set()
    await watcher
    return wall, opens


# -------------------------------------------------------------------------------------- audit
def audit_rows(db: Path, expected: int, wait: float = 15.0) -> dict[str, list[dict[str, Any]]]:
    """Audit rows by request id, once `expected` are there or `wait` seconds passed (batched writes)."""
    deadline = time.monotonic() + wait
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT request_id, alias, status, error_kind, deployment, tried, attempts "
                                                  "FROM audit_log WHERE request_id LIKE 'chaos-%'")]
        if len(rows) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling the database the gateway writes in batches
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["request_id"], []).append(row)
    return by_id


def audit_mismatches(requests: list[Sent], rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    problems = []
    for sent in requests:
        found = rows.get(sent.request_id, [])
        if len(found) != 1:
            problems.append(f"{sent.request_id}: {len(found)} audit rows")
            continue
        row = found[0]
        if sent.outcome == "hung":  # the client gave up: the row says 499 or what the gateway answered
            continue
        if row["status"] != sent.status:
            problems.append(f"{sent.request_id} ({sent.faults}): audit status {row['status']}, client saw {sent.status}")
        elif (row["error_kind"] is None) != (sent.outcome == "reply"):
            problems.append(f"{sent.request_id} ({sent.faults}): client {sent.outcome}, audit error_kind "
                            f"{row['error_kind']!r}")
    return problems


# --------------------------------------------------------------------------------------- main
def report(args: argparse.Namespace, requests: list[Sent], rows: dict[str, list[dict[str, Any]]], wall: float,
           opens: Counter[str], problems: list[str]) -> tuple[list[str], bool]:
    tally = Tally()
    for sent in requests:
        tally.add(sent)
    row_count = sum(len(r) for r in rows.values())
    skipped = sum(1 for found in rows.values() for row in found
                  if row["alias"] in PRIMARY and PRIMARY[row["alias"]] not in (row["tried"] or "").split(","))
    out = tally.outcomes
    lines = [
        f"requests sent: {len(requests)} in {wall:.1f} s ({len(requests) / wall:.0f}/s) at concurrency {args.conc}",
        f"complete replies: {out['reply']}, clean errors: {out['error']}",
        f"false successes: {out['false_success']} (must be 0)",
        f"unclean errors: {out['unclean']} (must be 0)",
        f"hung requests (> {args.request_deadline + args.margin:.1f} s): {out['hung']} (must be 0)",
        (f"audit rows: {row_count} for {len(requests)} requests; rows that disagree with the client: "
         f"{len(problems)} (must be 0)"),
        (f"breaker opens (sampled from /metrics): {sum(opens.values())} "
         f"({', '.join(f'{d} {n}' for d, n in sorted(opens.items())) or 'none'}); requests that skipped the first "
         f"deployment: {skipped}"),
    ]
    worst = sorted(((sum(c[b] for b in BAD), key, c) for key, c in tally.by_fault.items()), key=lambda t: (-t[0], t[1]))
    if worst and worst[0][0]:
        lines.append("where it went wrong, by faults (a = first deployment, b = fallback): " + "; ".join(
            f"{key}: " + ", ".join(f"{o} {n}" for o, n in counts.most_common()) for bad, key, counts in worst[:10] if bad))
    ok = not any(out[b] for b in BAD) and not problems and row_count == len(requests)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hung_after = args.request_deadline + args.margin
    out = h.new_out_dir(f"chaos-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    faults = FaultServer(trickle_seconds=hung_after + 2, stall_max=hung_after + 5)
    faults.start()
    registry = h.Registry()
    atexit.register(registry.stop_all)
    atexit.register(faults.stop)
    gaud = registry.add(start_gaud(out, spec_dir(out, faults, args), args))
    requests = plan(args)
    h.log(f"chaos: {len(requests)} requests at c={args.conc}, seed {args.seed}; gaud at {gaud.url}, log {out}")
    wall, opens = asyncio.run(drive(gaud.url, requests, args.conc, hung_after))
    rows = audit_rows(out / "gaud.db", len(requests))
    problems = audit_mismatches(requests, rows)
    lines, ok = report(args, requests, rows, wall, opens, problems)
    print("\n".join(lines))
    examples = list(dict.fromkeys(f"  {s.outcome} {s.faults} {'sse' if s.stream else 'json'} {s.alias}: {s.detail}"
                                  for s in requests if s.outcome in BAD))[:10]
    if examples or problems:
        print("examples:\n" + "\n".join(examples + [f"  audit: {p}" for p in problems[:5]]))
    if args.record:
        entry = [f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — chaos, commit {h.git_describe()}", "",
                 f"- machine: {h.machine_note()}",
                 f"- run: `bench/chaos.py --requests {args.requests} --conc {args.conc} --seed {args.seed}`",
                 *([f"- note: {args.note}"] if args.note else []), "", *[f"- {line}" for line in lines], ""]
        RESULTS.write_text(RESULTS.read_text().rstrip("\n") + "\n" + "\n".join(entry))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
