"""Retention (`audit.retention_days`: old audit rows pruned in batches, never the current month's)
and erasure (`gaud-engine users delete`: keys revoked, audit rows anonymised, stored replies
deleted), on SQLite and on PostgreSQL when GAUD_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from engine.accounts.budgets import month_start
from engine.accounts.conversations import ConversationStore
from engine.accounts.retention import ERASED_PREFIX, PRUNER_LOCK, AuditPruner, erase_user, prune_audit, prune_before
from engine.accounts.store import Store, audit_log, dashboard_sessions

from .conftest import ROOT, migrated_store, provider_env, spec_tree, start_gateway

PG_URL = os.environ.get("GAUD_TEST_POSTGRES_URL")
DAY = 86400.0
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[Store]:
    yield from migrated_store(request.param, tmp_path)


def record(n: int, ts: float, user_id: int | None = 1, user: str = "ann", **extra: object) -> dict[str, object]:
    return {"request_id": f"req-{user}-{n}", "ts": ts, "user_id": user_id, "user_name": user, "status": 200,
            "cost": 0.25, "prompt_tokens": 10, "completion_tokens": 5, **extra}


def audit_rows(store: Store) -> list[dict[str, object]]:
    return store.audit_records()


# -- retention ----------------------------------------------------------------------------------------
def test_prune_before_never_reaches_into_the_current_month():
    now = time.time()
    assert prune_before(400, now) == now - 400 * DAY
    assert prune_before(1, now) == min(now - DAY, month_start(now))
    assert prune_before(1, now) <= month_start(now)


def test_old_rows_are_pruned_in_batches_and_recent_ones_kept(store):
    now = time.time()
    cut = now - 90 * DAY
    store.write_audit([record(i, cut - 1 - i) for i in range(250)])
    store.write_audit([record(1000 + i, cut + 10 + i) for i in range(5)])
    assert prune_audit(store, cut, batch=100) == 250  # three transactions: 100, 100, 50
    left = audit_rows(store)
    assert len(left) == 5 and all(r["ts"] >= cut for r in left)
    assert prune_audit(store, cut, batch=100) == 0  # nothing left to do, and that is fine


def test_the_background_pruner_uses_the_retention(store):
    now = time.time()
    store.write_audit([record(1, now - 500 * DAY), record(2, now - 10 * DAY), record(3, now)])
    assert asyncio.run(AuditPruner(store, 400).run_once()) == 1
    assert sorted(r["request_id"] for r in audit_rows(store)) == ["req-ann-2", "req-ann-3"]
    with pytest.raises(ValueError):
        AuditPruner(store, 0)


def test_one_pruner_at_a_time_on_postgresql(store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    store.write_audit([record(1, time.time() - 500 * DAY)])
    with store.engine.connect() as other:
        assert other.execute(sa.select(sa.func.pg_try_advisory_lock(PRUNER_LOCK))).scalar_one()
        assert prune_audit(store, time.time()) is None  # another instance is pruning: skip
        assert len(audit_rows(store)) == 1
        other.execute(sa.select(sa.func.pg_advisory_unlock(PRUNER_LOCK)))
        other.commit()
    assert prune_audit(store, time.time()) == 1


# -- erasure ------------------------------------------------------------------------------------------
def test_erasing_a_user_revokes_keys_anonymises_rows_and_keeps_totals(store):
    key1, info = store.create_key("ann", budget_daily=5.0)
    key2, _ = store.create_key("ann")
    other_key, _ = store.create_key("bob")
    ann_id = store.verify_key(key1).user_id
    bob_id = store.verify_key(other_key).user_id
    now = time.time()
    store.write_audit([record(i, now - i, ann_id, "ann", content='{"messages": "secret prompt"}') for i in range(3)])
    store.write_audit([record(9, now, bob_id, "bob", content='{"messages": "bob prompt"}')])
    replies = ConversationStore(store, None)
    replies.save(ann_id, "resp_1", [{"role": "user", "content": "hi"}], {"id": "resp_1"})
    replies.save(bob_id, "resp_2", [{"role": "user", "content": "hi"}], {"id": "resp_2"})
    with store.engine.begin() as conn:
        conn.execute(dashboard_sessions.insert().values(
            digest="d" * 64, key_id=info.id, user_id=ann_id, user_name="ann", role="member", csrf="c",
            created_at=now, expires=now + 3600))
    total = sum(float(r["cost"]) for r in store.usage())

    erased = erase_user(store, "ann")
    assert erased is not None and erased.keys_revoked == 2 and erased.audit_rows == 3 and erased.stored_replies == 1
    assert erased.token.startswith(ERASED_PREFIX) and "ann" not in erased.token
    assert store.verify_key(key1) is None and store.verify_key(key2) is None
    rows = {r["request_id"]: r for r in audit_rows(store)}
    for i in range(3):
        assert rows[f"req-ann-{i}"]["user_name"] == erased.token and rows[f"req-ann-{i}"]["content"] is None
        assert rows[f"req-ann-{i}"]["cost"] == 0.25 and rows[f"req-ann-{i}"]["prompt_tokens"] == 10
    assert rows["req-bob-9"]["user_name"] == "bob" and rows["req-bob-9"]["content"] == '{"messages": "bob prompt"}'
    assert sum(float(r["cost"]) for r in store.usage()) == total
    assert store.usage(user="ann") == []
    assert replies.load(ann_id, "resp_1") is None and replies.load(bob_id, "resp_2") is not None
    assert store.dashboard_session("d" * 64, now=now) is None
    assert store.verify_key(other_key) is not None

    # The name is free: a new ann starts from nothing. A row a request in flight wrote under the
    # old name afterwards is anonymised by erasing the token again.
    assert store.ensure_user("ann") != ann_id
    store.write_audit([record(7, now, ann_id, "ann", content="late")])
    again = erase_user(store, erased.token)
    assert again is not None and again.token == erased.token and again.audit_rows == 1
    assert [r["user_name"] for r in audit_rows(store) if r["user_id"] == ann_id] == [erased.token] * 4
    assert erase_user(store, "nobody") is None


def test_erasure_works_in_batches(store):
    key, _ = store.create_key("cat")
    user_id = store.verify_key(key).user_id
    store.write_audit([record(i, time.time(), user_id, "cat") for i in range(25)])
    erased = erase_user(store, "cat", batch=10)
    assert erased is not None and erased.audit_rows == 25
    with store.engine.connect() as conn:
        names = {row[0] for row in conn.execute(sa.select(audit_log.c.user_name))}
    assert names == {erased.token}


# -- end to end -----------------------------------------------------------------------------------------

def test_a_deleted_users_key_gets_401_from_a_running_gateway_cli_and_admin_api(gated, tmp_path):
    db = f"sqlite:///{tmp_path / 'e.db'}"
    store = Store(db)
    store.migrate()
    root, _ = store.create_key("root", role="admin")
    key, _ = store.create_key("dora")
    eve, _ = store.create_key("eve")
    env = {**provider_env(gated.url), "OPENAI_BASE_URL": f"{gated.url}/v1", "GAUD_DATABASE_URL": db,
           "GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
           "GAUD_AUTH_ENABLED": "true", "GAUD_AUDIT_RETENTION_DAYS": "400"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        ask = {"json": {"model": "gpt-4o", "messages": HELLO}, "headers": {"authorization": f"Bearer {key}"}}
        assert httpx.post(f"{gw.url}/v1/chat/completions", **ask).status_code == 200
        cli = subprocess.run([sys.executable, "-m", "engine", "users", "delete", "dora", "--yes"], check=False,
                             cwd=ROOT, env={**os.environ, "GAUD_DATABASE_URL": db}, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.startswith("erased dora: 1 keys revoked")
        refused = httpx.post(f"{gw.url}/v1/chat/completions", **ask)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert len(gated.seen) == 1

        # The same through the admin API: members are refused, an unknown user is a 404.
        delete = f"{gw.url}/admin/users/eve"
        as_member = httpx.delete(delete, headers={"authorization": f"Bearer {eve}"})
        assert as_member.status_code == 403 and as_member.json()["error"]["code"] == "admin_required"
        done = httpx.delete(delete, headers={"authorization": f"Bearer {root}"})
        assert done.status_code == 200 and done.json()["keys_revoked"] == 1
        assert done.json()["token"].startswith(ERASED_PREFIX)
        assert httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {eve}"}).status_code == 401
        missing = httpx.delete(delete, headers={"authorization": f"Bearer {root}"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "user_not_found"
    finally:
        gw.process.terminate()
        gw.process.wait(10)
    names = {r["user_name"] for r in store.audit_records()}
    assert "dora" not in names and any(n.startswith(ERASED_PREFIX) for n in names)
