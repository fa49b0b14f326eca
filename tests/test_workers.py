"""`gaud-engine serve --workers N`: several processes on one port, one database, nothing lost."""

from __future__ import annotations

import re
from pathlib import Path

from openai import OpenAI

from engine.accounts.store import Store

from .conftest import provider_env, spec_tree, start_gateway


def _children(pid: int) -> set[int]:
    """Processes whose parent is `pid` (from /proc: no extra dependency)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _workers(pid: int) -> set[int]:
    """The uvicorn workers under the supervisor (multiprocessing also starts a resource tracker)."""
    return {child for child in _children(pid)
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()}


def test_workers_share_the_port_the_database_and_the_first_admin(fake_upstream_server, tmp_path):
    database = f"sqlite:///{tmp_path / 'gaud.db'}"
    env = {
        **provider_env(fake_upstream_server.url),
        "GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
        "GAUD_DATABASE_URL": database,
    }
    running = start_gateway(env, tmp_path / "gateway.log", "--workers", "2")
    requests = 12
    try:
        assert len(_workers(running.process.pid)) == 2
        keys = re.findall(r"sk-gaud-\S+", running.logs())
        assert len(keys) == 1, running.logs()  # created once, by the supervisor, before the workers
        fake_upstream_server.clear()
        for _ in range(requests):
            fake_upstream_server.reply_fixture("anthropic", "messages_text.json")
        for _ in range(requests):
            # A new client each time: new connections, which the kernel spreads over the workers.
            with OpenAI(base_url=f"{running.url}/v1", api_key=keys[0], max_retries=0) as client:
                reply = client.chat.completions.create(model="claude-sonnet-4", messages=[{"role": "user", "content": "Hi"}])
            assert reply.choices[0].message.content
        assert "(2 workers)" in running.logs()
    finally:
        running.process.terminate()
        running.process.wait(30)
    assert running.process.returncode == 0, running.logs()
    # Every worker flushed its audit records on the way out.
    store = Store(database)
    try:
        records = store.audit_records(user="admin")
    finally:
        store.close()
    assert len(records) == requests
    assert {r["status"] for r in records} == {200}
