#!/usr/bin/env python3
"""What verifying an API key costs, and what a flood of random keys does to a valid one.

    python bench/keys.py                 # SQLite (and PostgreSQL when GAUD_TEST_POSTGRES_URL is set)
    python bench/keys.py --flood-only    # only the flood

1. `Store.verify_key` per call (µs) for a valid key, a wrong secret and an unknown lookup id: one
   indexed SELECT and one HMAC, no cache. Then `Authenticator.principal`, which adds the thread hop.
2. A `gaud-engine serve` process (one worker, SQLite, auth on) while 40 connections send random
   `sk-gaud-` keys to /v1/models: the latency of a key created after the flood started (never seen
   by the gateway before), 50 sequential requests, against the same with no flood.
Results go to stdout; bench/RESULTS.md ("Key verification") records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from engine.accounts.auth import Authenticator  # noqa: E402
from engine.accounts.store import Store  # noqa: E402

SECRET = "bench-secret-0123456789abcdef"


def per_call(fn, n: int = 3000) -> float:  # type: ignore[no-untyped-def]
    for _ in range(200):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def verify_costs(url: str, label: str) -> None:
    store = Store(url, key_secret=SECRET)
    store.migrate()
    key, _ = store.create_key(f"bench-{secrets.token_hex(3)}")
    wrong = key[:-1] + ("x" if key[-1] != "x" else "y")
    unknown = "sk-gaud-" + "0" * 12 + key[20:]
    for name, candidate in (("valid", key), ("wrong secret", wrong), ("unknown lookup", unknown)):
        print(f"{label}: verify_key {name}: {per_call(lambda c=candidate: store.verify_key(c)):.0f} µs")
    auth = Authenticator(store, enabled=True)
    headers = {"authorization": f"Bearer {key}"}

    async def principal() -> float:
        for _ in range(200):
            await auth.principal(headers)
        n, started = 3000, time.perf_counter()
        for _ in range(n):
            await auth.principal(headers)
        return (time.perf_counter() - started) / n * 1e6

    print(f"{label}: Authenticator.principal (valid, with the thread hop): {asyncio.run(principal()):.0f} µs")
    store.close()


async def probe(url: str, key: str, n: int, flood: int) -> list[float]:
    stop, full_width, flooded = asyncio.Event(), asyncio.Event(), [0]

    async def one(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            fake = f"sk-gaud-{secrets.token_hex(6)}{secrets.token_urlsafe(24)}"
            await client.get("/v1/models", headers={"authorization": f"Bearer {fake}"})
            flooded[0] += 1
            if flooded[0] >= 500:
                full_width.set()

    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=max(flood, 1))) as bad, \
            httpx.AsyncClient(base_url=url, timeout=60) as good:
        tasks = [asyncio.create_task(one(bad)) for _ in range(flood)]
        if flood:
            await asyncio.wait_for(full_width.wait(), 60)  # the flood at full width first
        for _ in range(n):
            started = time.perf_counter()
            response = await good.get("/v1/models", headers={"authorization": f"Bearer {key}"})
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
        stop.set()
        await asyncio.gather(*tasks)
    return latencies


def flood_run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/gaud.db"
        port = 20000 + secrets.randbelow(20000)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GAUD_")},
               "GAUD_DATABASE_URL": db, "GAUD_AUTH_ENABLED": "true", "GAUD_LOG_LEVEL": "warning"}
        log = open(Path(tmp) / "gateway.log", "wb")  # noqa: SIM115
        process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(port)], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("gateway did not start")
            for flood in (0, 40):
                store = Store(db)
                key, _ = store.create_key(f"probe{flood}")  # new: never verified by the gateway yet
                store.close()
                ms = asyncio.run(probe(url, key, 50, flood))
                print(f"flood of {flood} connections: valid key first {ms[0]:.1f} ms, p50 {statistics.median(ms):.1f} ms, "
                      f"max {max(ms):.1f} ms")
        finally:
            process.terminate()
            process.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood-only", action="store_true")
    args = parser.parse_args()
    if not args.flood_only:
        with tempfile.TemporaryDirectory() as tmp:
            verify_costs(f"sqlite:///{tmp}/keys.db", "SQLite")
        if os.environ.get("GAUD_TEST_POSTGRES_URL"):
            verify_costs(os.environ["GAUD_TEST_POSTGRES_URL"], "PostgreSQL")
    flood_run()


if __name__ == "__main__":
    main()
