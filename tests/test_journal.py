"""The audit journal in one process: rotation, what a live journal is spared, the writer's use of it."""

from __future__ import annotations

import asyncio

from engine.accounts.audit import AuditWriter
from engine.accounts.journal import JOURNAL_PATTERN, Journal, reconcile_journals
from engine.accounts.store import Principal, Store


def _store(tmp_path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    store.migrate()
    return store


def _accepted(i: int) -> dict:
    return {"request_id": f"req-{i}", "ts": 1000.0 + i, "user_id": None, "user_name": "local", "alias": "m", "stream": False}


def test_files_rotate_and_go_once_their_requests_are_done(tmp_path):
    journal = Journal(tmp_path, rotate_bytes=300)
    assert journal.open()
    numbers = [journal.accepted(_accepted(i)) for i in range(8)]
    assert len(list(tmp_path.glob(JOURNAL_PATTERN))) > 2
    journal.done(numbers[:-1])  # one request of the last file is still open
    left = list(tmp_path.glob(JOURNAL_PATTERN))
    assert 1 <= len(left) <= 2
    journal.done(numbers[-1:])
    journal.close()
    assert list(tmp_path.glob(JOURNAL_PATTERN)) == []


def test_a_live_journal_is_left_alone_and_a_dead_ones_requests_become_rows(tmp_path):
    store = _store(tmp_path)
    journal = Journal(tmp_path)
    assert journal.open()
    first = journal.accepted(_accepted(1))
    journal.finished(first, {**_accepted(1), "ts": 1001.5, "status": 200, "cost": 0.25})
    journal.accepted(_accepted(2))  # still running when its process stops
    assert reconcile_journals(store, tmp_path) == 0  # this process holds its lock
    assert store.audit_records() == []
    journal.close()  # a request left open: the file is kept for the next start
    assert len(list(tmp_path.glob(JOURNAL_PATTERN))) == 1
    assert reconcile_journals(store, tmp_path) == 2
    rows = {r["request_id"]: r for r in store.audit_records()}
    assert (rows["req-1"]["status"], rows["req-1"]["cost"]) == (200, 0.25)
    assert (rows["req-2"]["status"], rows["req-2"]["error_kind"]) == (503, "interrupted")
    assert reconcile_journals(store, tmp_path) == 0 and list(tmp_path.glob(JOURNAL_PATTERN)) == []
    store.close()


def test_the_writer_journals_and_leaves_nothing_after_a_clean_close(tmp_path):
    store = _store(tmp_path)
    principal = Principal(user_id=None, user_name="local", role="admin")

    async def serve() -> None:
        writer = AuditWriter(store, max_delay=0.01, journal=Journal(tmp_path / "spill"))
        writer.start()
        for i in range(5):
            n = writer.accepted(f"w-{i}", principal, "m", False)
            assert n is not None
            await writer.add({"request_id": f"w-{i}", "ts": 1.0 + i, "user_name": "local", "status": 200}, n)
        await writer.add({"request_id": "early", "ts": 9.0, "user_name": "local", "status": 400})  # never accepted
        assert len(list((tmp_path / "spill").glob(JOURNAL_PATTERN))) == 1
        await writer.close(1.0)

    asyncio.run(serve())
    assert sorted(r["request_id"] for r in store.audit_records()) == ["early", "w-0", "w-1", "w-2", "w-3", "w-4"]
    assert list((tmp_path / "spill").glob(JOURNAL_PATTERN)) == []
    assert all("_journal" not in r for r in store.audit_records())
    store.close()
