"""bench/micro.py must keep running against the engine (a smoke test: no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT

STAGES = ("parse request", "validate", "route plan", "map request", "map reply", "pricing", "serialize reply",
          "stream frames", "Gateway.chat, in-process", "ASGI app, non-stream", "ASGI app, stream")


def test_micro_benchmark_runs_every_stage() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "micro.py"), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,  # the asserts below show its output
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in STAGES:
        assert stage in proc.stdout, f"stage '{stage}' missing from:\n{proc.stdout}"
