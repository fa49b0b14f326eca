#!/usr/bin/env python3
"""What the audit journal (engine/accounts/journal.py) costs a request on the event loop.

    python bench/journal.py [folder]     # default: a temporary folder (put it on the spill_dir's disk)

A request costs the journal two appends (accepted, its record) and its share of a done line.
Printed: µs a request through `Journal`, the same two lines written with bare os.write (the
syscall floor) and an empty loop; best and median of 15 alternating rounds of 5,000 requests.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.accounts.journal import Journal

RECORD = {
    "request_id": "9f" * 16, "ts": time.time(), "user_id": 1, "user_name": "local", "alias": "claude-sonnet-4",
    "deployment": "anthropic/claude-sonnet-4-20250514", "tried": "anthropic/claude-sonnet-4-20250514", "attempts": 1,
    "status": 200, "error_kind": None, "prompt_tokens": 18, "completion_tokens": 24, "cached_tokens": 0,
    "cost": 0.000414, "price_estimated": False, "latency_ms": 1.234, "ttft_ms": None, "stream": False,
    "cache_hit": False, "content": None,
}
ACCEPTED = {"request_id": RECORD["request_id"], "ts": 1.0, "user_id": 1, "user_name": "local",
            "alias": "claude-sonnet-4", "stream": False}
N = 5000


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    journal = Journal(folder)
    assert journal.open()
    fd = os.open(folder / "bench-raw.tmp", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def through_journal() -> None:
        numbers = []
        for _ in range(N):
            n = journal.accepted(ACCEPTED)
            journal.finished(n, RECORD)
            numbers.append(n)
        journal.sync()
        journal.done(numbers)  # type: ignore[arg-type]

    def bare_writes() -> None:
        for _ in range(N):
            os.write(fd, orjson.dumps(ACCEPTED))
            os.write(fd, orjson.dumps(RECORD))

    def empty() -> None:
        for _ in range(N):
            pass

    times: dict[str, list[float]] = {"journal": [], "bare os.write x2": [], "empty loop": []}
    for _ in range(15):
        for name, run in (("journal", through_journal), ("bare os.write x2", bare_writes), ("empty loop", empty)):
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / N * 1e6)
    for name, values in times.items():
        values.sort()
        print(f"{name:<18} best {values[0]:6.2f} µs   median {values[len(values) // 2]:6.2f} µs a request")
    journal.close()
    os.close(fd)
    os.unlink(folder / "bench-raw.tmp")


if __name__ == "__main__":
    main()
