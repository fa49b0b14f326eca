"""Several instances starting at once on a fresh (or older) database all migrate it: one applies
each migration, the others wait for it and apply nothing, and none fails (a rolling upgrade starts
replicas together; see docs/upgrades.md)."""

from __future__ import annotations

import multiprocessing
import os
import traceback
from pathlib import Path
from typing import Any

import pytest

from engine.accounts.store import MIGRATIONS, Store

from .conftest import TEST_KEY_SECRET, pg_store

INSTANCES = 4


def _migrate(url: str, barrier: Any, results: Any) -> None:
    store = Store(url, key_secret=TEST_KEY_SECRET)
    barrier.wait()
    try:
        results.put(("ok", store.migrate()))
    except Exception:  # noqa: BLE001 - reported to the test, which fails showing it
        results.put(("failed", traceback.format_exc()))
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gaud.db'}"
        return
    url = os.environ.get("GAUD_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set GAUD_TEST_POSTGRES_URL=postgresql://user@host/db to test on PostgreSQL")
    for store in pg_store(url):
        yield store.url  # type: ignore[attr-defined]


def test_instances_migrating_at_once_apply_each_migration_once(fresh_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(INSTANCES), context.Queue()
    workers = [context.Process(target=_migrate, args=(fresh_url, barrier, results)) for _ in range(INSTANCES)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    failures = [detail for status, detail in outcomes if status == "failed"]
    assert failures == []
    applied = sorted(name for _, names in outcomes for name in names)
    assert applied == sorted(m.__name__ for m in MIGRATIONS)  # each once, by whichever got there first
    store = Store(fresh_url, key_secret=TEST_KEY_SECRET)
    assert store.migrate() == []
    store.close()
