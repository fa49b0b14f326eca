"""The audit log writer: batched, off the hot path, flushed on shutdown; spilled to a file when
the database is unreachable at shutdown and imported from it at the next start; journaled
(engine.accounts.journal) so that a killed process loses no record."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..alerts.events import audit_spilled
from .journal import Journal
from .store import Principal, Store

if TYPE_CHECKING:
    from ..alerts.sink import AlertSink

__all__ = ["SPILL_PATTERN", "AuditWriter", "audit_spill_dir", "import_spilled", "spill_records"]

log = logging.getLogger("gaud.accounting")

#: Where a queued record keeps its journal number until it is stored (never written to the database).
_JOURNAL_KEY = "_journal"


class AuditWriter:
    """Queues audit records and writes them in batches from a background task.

    A failed write is retried, never dropped. At shutdown the writer gets `close(timeout)`
    seconds; a batch the database still refuses after that goes to a spill file in `spill_dir`
    (JSON lines), and so does everything after it, which `import_spilled` writes at the next start.
    With a `journal`, accepted requests and queued records are also journaled, and marked done
    once stored; each batch fsyncs the journal first.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 500,
        max_delay: float = 0.2,
        max_queue: int = 50_000,
        spill_dir: Path | None = None,
        retry_delay: float = 1.0,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.spill_dir = spill_dir
        self.retry_delay = retry_delay
        self.journal = journal
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._give_up_at: float | None = None  # set by close()
        self._spilling = False
        self.written = 0
        self.spilled = 0
        self.alerts: AlertSink | None = None  # told of each spill file

    def start(self) -> None:
        if self._task is None:
            if self.journal is not None and not self.journal.open():
                self.journal = None
            self._task = asyncio.get_running_loop().create_task(self._run())

    def accepted(self, request_id: str, principal: Principal, model: Any, stream: bool) -> int | None:
        """Journal a request about to be served; the number to give `add` with its record."""
        if self.journal is None:
            return None
        return self.journal.accepted({
            "request_id": request_id, "ts": time.time(), "user_id": principal.user_id,
            "user_name": principal.user_name, "team_id": principal.team_id, "alias": model if isinstance(model, str) else None, "stream": stream,
        })

    async def add(self, record: dict[str, Any], journaled: int | None = None) -> None:
        """Queue one record (`journaled`: its request's number from `accepted`); waits only if the
        database has fallen far behind (nothing is dropped)."""
        if self.journal is not None:
            n = self.journal.finished(journaled, record)
            if n is not None:
                record[_JOURNAL_KEY] = n
        try:
            self.queue.put_nowait(record)  # the usual case, without a coroutine for Queue.put
        except asyncio.QueueFull:
            await self.queue.put(record)

    async def _run(self) -> None:
        # One wake-up per batch, not per record: wait for the first record, give the rest of the
        # batch `max_delay` to arrive, then take everything queued (no task per record).
        while True:
            first = await self.queue.get()
            batch: list[dict[str, Any]] = []
            stop = first is None
            if not stop:
                batch.append(first)  # type: ignore[arg-type]
                if self.queue.qsize() < self.batch_size:  # a full batch waiting is written at once
                    await asyncio.sleep(self.max_delay)
            while not stop and not self.queue.empty() and len(batch) < self.batch_size:
                item = self.queue.get_nowait()
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                await self._write(batch)
            if stop:
                return

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        journaled = [record.pop(_JOURNAL_KEY) for record in batch if _JOURNAL_KEY in record]
        while True:
            if self._spilling:  # the database failed past the shutdown deadline: do not wait on it again
                if await self._spill(batch) and self.journal is not None:
                    self.journal.done(journaled)
                return
            try:
                self.written += await asyncio.to_thread(self._store, batch)
                if self.journal is not None:
                    self.journal.done(journaled)
                return
            except Exception:  # a database hiccup must not lose records: retry, or spill at shutdown
                if self._give_up_at is not None and time.monotonic() >= self._give_up_at and self.spill_dir:
                    self._spilling = True
                    log.exception("audit write failed at shutdown")
                    continue
                log.exception("audit write failed; retrying in %g s", self.retry_delay)
                await asyncio.sleep(self.retry_delay)

    def _store(self, batch: list[dict[str, Any]]) -> int:
        """One batch to the database (in a thread), the journal made durable first."""
        if self.journal is not None:
            self.journal.sync()
        return self.store.write_audit(batch)

    async def _spill(self, batch: list[dict[str, Any]]) -> bool:
        assert self.spill_dir is not None
        try:
            path = await asyncio.to_thread(spill_records, self.spill_dir, batch)
        except OSError as exc:
            kept = "are kept in the audit journal for the next start" if self.journal is not None else "are lost"
            log.critical("the audit database and the spill folder %s both failed (%s): %d audit records %s",
                         self.spill_dir, exc, len(batch), kept)
            return False
        self.spilled += len(batch)
        log.error("the audit database is unreachable: %d records saved to %s (imported at the next start)",
                  len(batch), path)
        if self.alerts is not None:
            self.alerts.emit(audit_spilled(len(batch), str(path)))
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Write everything queued so far, then stop; after `timeout` seconds of failing writes,
        spill what is left (with a `spill_dir`; without one, keep retrying)."""
        if self._task is not None:
            self._give_up_at = time.monotonic() + timeout
            await self.queue.put(None)
            await self._task
            self._task = None
            if self.journal is not None:
                self.journal.close()


SPILL_PATTERN = "gaud-audit-spill-*.jsonl"


def audit_spill_dir(settings: Any) -> Path:
    """`audit.spill_dir`, else beside a SQLite database file, else the working directory."""
    from .store import sqlite_folder

    configured = settings.get("audit.spill_dir")
    if configured:
        return Path(configured)
    return sqlite_folder(str(settings.get("database.url"))) or Path.cwd()


def spill_records(folder: Path, records: list[dict[str, Any]]) -> Path:
    """Write records to a new spill file (JSON lines, fsynced, renamed into place whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"gaud-audit-spill-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{id(records):x}.jsonl"
    final = folder / name
    temp = folder / f".{name}.tmp"
    with temp.open("wb") as out:
        for record in records:
            out.write(orjson.dumps(record, default=str) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, final)
    return final


def import_spilled(store: Store, folder: Path) -> int:
    """Write the records of every spill file in `folder` to the database, then delete the file.

    A file is first renamed to a name only this process uses, so two processes starting
    together never import the same records twice. A file that cannot be read is left (renamed
    back) and logged. Returns the number of records imported.
    """
    imported = 0
    if not folder.is_dir():
        return 0
    for path in sorted(folder.glob(SPILL_PATTERN)):
        claimed = path.with_name(f".{path.name}.importing-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            continue  # another process claimed it
        try:
            records = [orjson.loads(line) for line in claimed.read_bytes().splitlines() if line.strip()]
            store.write_audit(records)
        except Exception:  # keep the file for the next start, and say why
            os.rename(claimed, path)
            log.exception("could not import the audit spill file %s; it is kept", path)
            continue
        claimed.unlink()
        imported += len(records)
        log.info("imported %d audit records from %s", len(records), path.name)
    return imported
