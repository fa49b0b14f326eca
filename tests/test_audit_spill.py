"""Audit records the database refuses at shutdown are spilled to a file, and imported at the next start."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import orjson

from engine.accounts.audit import SPILL_PATTERN, AuditWriter, import_spilled, spill_records
from engine.accounts.store import Store

from .conftest import provider_env, spec_tree, start_gateway


def _record(i: int) -> dict:
    return {"request_id": f"spill-{i}", "ts": 1_000.0 + i, "user_id": None, "user_name": "local", "status": 200,
            "deployment": "openai/gpt-4o", "prompt_tokens": i, "completion_tokens": 1, "cost": 0.001}


def _store(tmp_path) -> tuple[Store, str]:
    path = tmp_path / "gaud.db"
    store = Store(f"sqlite:///{path}")
    store.migrate()
    return store, str(path)


def test_a_database_that_fails_at_shutdown_gets_its_records_spilled_then_imported(tmp_path):
    store, path = _store(tmp_path)
    with sqlite3.connect(path) as db:  # the database now refuses every audit write
        db.execute("ALTER TABLE audit_log RENAME TO audit_log_away")

    async def serve_and_stop() -> AuditWriter:
        writer = AuditWriter(store, max_delay=0.01, spill_dir=tmp_path / "spill", retry_delay=0.01)
        writer.start()
        for i in range(7):
            await writer.add(_record(i))
        await writer.close(timeout=0.2)
        return writer

    writer = asyncio.run(serve_and_stop())
    assert (writer.written, writer.spilled) == (0, 7)
    files = list((tmp_path / "spill").glob(SPILL_PATTERN))
    assert len(files) >= 1
    spilled = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert sorted(r["request_id"] for r in spilled) == sorted(f"spill-{i}" for i in range(7))

    with sqlite3.connect(path) as db:  # the database is back
        db.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
    assert import_spilled(store, tmp_path / "spill") == 7
    assert sorted(r["request_id"] for r in store.audit_records()) == sorted(f"spill-{i}" for i in range(7))
    assert list((tmp_path / "spill").iterdir()) == []  # imported once: nothing left to import twice
    assert import_spilled(store, tmp_path / "spill") == 0
    store.close()


def test_a_spill_file_that_cannot_be_imported_is_kept(tmp_path):
    store, _ = _store(tmp_path)
    good = spill_records(tmp_path, [_record(1)])
    bad = tmp_path / "gaud-audit-spill-broken.jsonl"
    bad.write_bytes(b"{not json\n")
    assert import_spilled(store, tmp_path) == 1
    assert not good.exists() and bad.exists()
    assert [r["request_id"] for r in store.audit_records()] == ["spill-1"]
    store.close()


def test_the_gateway_imports_spilled_records_when_it_starts(fake_upstream_server, tmp_path):
    spill_records(tmp_path, [_record(i) for i in range(3)])  # beside the SQLite file: the default folder
    env = {**provider_env(fake_upstream_server.url), "GAUD_AUTH_ENABLED": "false",
           "GAUD_SPECS_DIR": str(spec_tree(tmp_path / "tree")), "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'gaud.db'}"}
    running = start_gateway(env, tmp_path / "gateway.log")
    try:
        deadline = time.monotonic() + 10
        while list(tmp_path.glob(SPILL_PATTERN)) and time.monotonic() < deadline:
            time.sleep(0.02)  # polls for the file to go; the gateway is already healthy
        assert list(tmp_path.glob(SPILL_PATTERN)) == []
    finally:
        running.process.terminate()
        running.process.wait(30)
    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    assert sorted(r["request_id"] for r in store.audit_records()) == ["spill-0", "spill-1", "spill-2"]
    store.close()
