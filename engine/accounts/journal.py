"""A write-ahead journal of the requests a process holds, so a SIGKILL (or crash) loses no audit row.

The audit writer keeps records in memory for up to a batch interval (`audit.max_delay`) before
they reach the database, and requests in flight have no record yet; a killed process lost both.
Each serving process therefore appends to its own journal file in the spill folder:

- `{"n": 7, "a": {...}}` when request 7 is accepted (authenticated and its body parsed): who, which
  model, whether streamed;
- `{"n": 7, "r": {...}}` when its audit record is queued: the record itself;
- `{"d": [5, 7, ...]}` when the audit writer has written those records to the database (or to a
  spill file).

Lines are appended with one `os.write` each: once in the kernel they outlive the process, so a
SIGKILL loses nothing that was written. `sync` (run by the audit writer with every batch, not per
request) makes them survive power loss as well. The next start (`reconcile_journals`) writes, for
every journal whose process is gone, the records not marked done, and for a request accepted but
never finished an `interrupted` row (status 503: the client's connection was dropped). Rows
already in the database (a kill between a batch's commit and its done line) are not written twice.

A process holds an exclusive `flock` on its journal for its lifetime; the kernel releases it when
the process dies, however it dies, which is how another process tells a dead journal from a live
one. Files rotate at `rotate_bytes`; a file whose requests are all done is deleted.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no journal
    fcntl = None  # type: ignore[assignment]

from .store import Store

__all__ = ["INTERRUPTED", "INTERRUPTED_STATUS", "JOURNAL_PATTERN", "Journal", "reconcile_journals"]

log = logging.getLogger("gaud.accounting")

JOURNAL_PATTERN = "gaud-journal-*.jsonl"
#: The error kind and status of the row of a request its process did not live to finish.
INTERRUPTED = "interrupted"
INTERRUPTED_STATUS = 503


class _File:
    __slots__ = ("done", "fd", "first", "path", "size", "taken")

    def __init__(self, path: Path, fd: int, first: int) -> None:
        self.path, self.fd, self.first = path, fd, first
        self.size = 0
        self.taken = 0  # requests given a number in this file
        self.done = 0  # ... and marked done


class Journal:
    """This process's journal (see the module docstring). Every method but `sync` runs on the
    event loop's thread; `sync` runs in the audit writer's thread, never at the same time as `done`."""

    def __init__(self, folder: Path, *, rotate_bytes: int = 16 << 20) -> None:
        self.folder = folder
        self.rotate_bytes = rotate_bytes
        self._files: dict[int, _File] = {}  # by the first request number they hold
        self._firsts: list[int] = []
        self._current: _File | None = None
        self._next = 1
        self._broken = False

    @property
    def active(self) -> bool:
        return self._current is not None and not self._broken

    def open(self) -> bool:
        """Create this process's first journal file; False (and a logged error) if it cannot be
        (no journal then: a kill loses what the audit writer holds, as without one)."""
        if fcntl is None:
            return False
        try:
            self._current = self._create(self._next)
        except OSError as exc:
            log.error("no audit journal (%s): a killed process loses the audit records it holds", exc)
            return False
        return True

    def _create(self, first: int) -> _File:
        """A new locked file, locked under a hidden name before it gets one `reconcile_journals`
        looks at, so no other process ever takes it for the journal of a dead one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"gaud-journal-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        hidden = self.folder / f".{name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.folder / name)
        except OSError:
            os.close(fd)
            raise
        file = _File(self.folder / name, fd, first)
        self._files[first] = file
        self._firsts.append(first)
        return file

    def accepted(self, fields: dict[str, Any]) -> int | None:
        """Journal an accepted request; its number, for `finished`."""
        if self._current is None or self._broken:
            return None
        n = self._next
        self._next += 1
        file = self._current
        file.taken += 1
        self._append(file, b'{"n":%d,"a":%b}\n' % (n, orjson.dumps(fields)))
        return n

    def finished(self, n: int | None, record: dict[str, Any]) -> int | None:
        """Journal a request's audit record (`n` None: a request that ended before it was accepted)."""
        if self._current is None or self._broken:
            return None
        if n is None:
            n = self._next
            self._next += 1
            file = self._current
            file.taken += 1
        else:
            file = self._file_of(n)
        self._append(file, b'{"n":%d,"r":%b}\n' % (n, orjson.dumps(record, default=str)))
        return n

    def done(self, numbers: Iterable[int]) -> None:
        """Mark requests whose records are stored; delete the old files with nothing left open."""
        if self._broken:
            return
        by_file: dict[int, list[int]] = {}
        for n in numbers:
            by_file.setdefault(self._file_of(n).first, []).append(n)
        for first, ns in by_file.items():
            file = self._files[first]
            self._append(file, b'{"d":%b}\n' % orjson.dumps(ns))
            file.done += len(ns)
            if file is not self._current and file.done >= file.taken:
                self._drop(file)

    def sync(self) -> None:
        """fsync every open file (the audit writer's thread, once per batch)."""
        for file in list(self._files.values()):
            try:
                os.fsync(file.fd)
            except OSError as exc:  # closed meanwhile by `close`, or a failing disk: the next batch retries
                log.debug("journal fsync failed: %s", exc)

    def close(self) -> None:
        """At shutdown, after the last batch: delete the files whose requests are all done; keep
        (for the next start) any that still hold a request."""
        self.sync()
        for file in list(self._files.values()):
            if file.done >= file.taken:
                self._drop(file)
            else:
                os.close(file.fd)
                log.error("the audit journal %s keeps %d request(s) for the next start", file.path, file.taken - file.done)
        self._files.clear()
        self._firsts.clear()
        self._current = None

    def _file_of(self, n: int) -> _File:
        current = self._current
        if current is not None and n >= current.first:
            return current
        return self._files[self._firsts[bisect.bisect_right(self._firsts, n) - 1]]

    def _drop(self, file: _File) -> None:
        del self._files[file.first]
        self._firsts.remove(file.first)
        try:
            os.unlink(file.path)
        finally:
            os.close(file.fd)

    def _append(self, file: _File, line: bytes) -> None:
        try:
            os.write(file.fd, line)
        except OSError as exc:  # e.g. a full disk: serving goes on, without the journal's guarantee
            self._broken = True
            log.error("the audit journal %s failed (%s); it is no longer written", file.path, exc)
            return
        file.size += len(line)
        if file is self._current and file.size >= self.rotate_bytes:
            try:
                self._current = self._create(self._next)
            except OSError as exc:
                log.error("could not rotate the audit journal (%s); %s keeps growing", exc, file.path)


# -- at start ---------------------------------------------------------------------------------------
def reconcile_journals(store: Store, folder: Path) -> int:
    """Write what the journals of dead processes in `folder` hold that the database does not;
    delete each journal once done. A journal whose process is alive is left alone; one that
    cannot be written is kept for the next start, and logged. Returns the rows written."""
    if fcntl is None or not folder.is_dir():
        return 0
    written = 0
    for path in sorted(folder.glob(JOURNAL_PATTERN)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # reconciled by another process
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its process is alive
        try:
            if os.fstat(fd).st_nlink == 0:
                continue  # another process reconciled it while this one waited
            rows = _unwritten(store, _rows(path.read_bytes()))
            store.write_audit(rows)
            os.unlink(path)
            written += len(rows)
            if rows:
                log.warning("audit journal %s: %d row(s) a stopped process had not written, %d of them interrupted",
                            path.name, len(rows), sum(r["error_kind"] == INTERRUPTED for r in rows))
        except Exception:  # keep the file for the next start, and say why
            log.exception("could not reconcile the audit journal %s; it is kept", path)
        finally:
            os.close(fd)
    return written


def _rows(data: bytes) -> list[dict[str, Any]]:
    """The rows a journal's lines call for: the records not marked done, and an interrupted row
    for each request accepted but not finished. A torn last line (power loss) is skipped."""
    accepted: dict[int, dict[str, Any]] = {}
    records: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    for line in data.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if "d" in entry:
            done.update(entry["d"])
        elif "r" in entry:
            records[entry["n"]] = entry["r"]
        elif "a" in entry:
            accepted[entry["n"]] = entry["a"]
    rows = [record for n, record in records.items() if n not in done]
    for n, fields in accepted.items():
        if n not in done and n not in records:
            rows.append({**fields, "status": INTERRUPTED_STATUS, "error_kind": INTERRUPTED})
    return rows


def _unwritten(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` without those the database already has: a record with the same request id and
    time, or for an interrupted row, any record of its request id from its acceptance on."""
    import sqlalchemy as sa

    from .store import audit_log

    ids = sorted({str(r["request_id"]) for r in rows})
    stored: dict[str, list[float]] = {}
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            query = sa.select(audit_log.c.request_id, audit_log.c.ts).where(audit_log.c.request_id.in_(ids[start:start + 500]))
            for request_id, ts in conn.execute(query):
                stored.setdefault(request_id, []).append(ts)

    def present(row: dict[str, Any]) -> bool:
        seen = stored.get(str(row["request_id"]), ())
        if row.get("error_kind") == INTERRUPTED:
            return any(ts >= row["ts"] for ts in seen)
        return row["ts"] in seen

    return [row for row in rows if not present(row)]
