"""The Store on SQLite (always, a temporary file) and on PostgreSQL (when GAUD_TEST_POSTGRES_URL
names a database the tests may create schemas in): migrations, keys, audit log, usage, spend."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

import engine.accounts.store
from engine.accounts.server_secret import SecretUnavailable
from engine.accounts.store import (
    AUDIT_ROWS_PER_INSERT,
    KEY_PREFIX,
    MIGRATIONS,
    KeySecrets,
    Store,
    api_keys,
    dashboard_sessions,
    m004_dashboard_sessions,
    m005_key_policies,
)

from .conftest import TEST_KEY_SECRET, pg_store

PG_URL = os.environ.get("GAUD_TEST_POSTGRES_URL")
ALL_MIGRATIONS = [m.__name__ for m in MIGRATIONS]
KEY_SHAPE = re.compile(r"^sk-gaud-[0-9a-f]{12}[A-Za-z0-9_-]{32}$")


class CountingHasher(PasswordHasher):
    """argon2id, counting verifications and the hashes checked. Cheap parameters keep the tests
    fast; the production parameters are checked once, in test_default_hasher_is_argon2id."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store(request, tmp_path) -> Iterator[Store]:
    """A Store on an empty database (nothing migrated); the hasher counts verifications."""
    hasher = CountingHasher()
    if request.param == "sqlite":
        created = Store(f"sqlite:///{tmp_path / 'store.db'}", hasher=hasher)
        yield created
        created.close()
        return
    if not PG_URL:
        pytest.skip("set GAUD_TEST_POSTGRES_URL=postgresql://user@host/db to test on PostgreSQL")
    yield from pg_store(PG_URL, hasher=hasher)


@pytest.fixture
def store(empty_store) -> Store:
    """A migrated Store; the hasher counts verifications (`store.hasher.verified`)."""
    assert empty_store.migrate() == ALL_MIGRATIONS
    return empty_store


def _rows(store: Store, table: sa.Table) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def test_migrate_is_idempotent(store):
    # The fixture applied every migration already; a second (and third) run applies nothing.
    assert store.migrate() == []
    assert store.migrate() == []
    with store.engine.connect() as conn:
        names = [r[0] for r in conn.execute(sa.text("SELECT name FROM schema_migrations"))]
    assert sorted(names) == sorted(ALL_MIGRATIONS) and ALL_MIGRATIONS[0] == "m001_initial"
    assert {"users", "api_keys", "audit_log", "schema_migrations"} <= set(sa.inspect(store.engine).get_table_names())


def test_migrate_from_a_second_store_on_the_same_database(store):
    other = Store(store.url)
    try:
        assert other.migrate() == []
    finally:
        other.close()


def test_migrate_a_database_of_the_previous_version_adds_dashboard_sessions(empty_store, monkeypatch):
    older = MIGRATIONS[:MIGRATIONS.index(m004_dashboard_sessions)]
    monkeypatch.setattr(engine.accounts.store, "MIGRATIONS", older)  # the release before dashboard sessions
    assert empty_store.migrate() == [m.__name__ for m in older]
    key, _ = empty_store.create_key("root", role="admin")
    assert "dashboard_sessions" not in sa.inspect(empty_store.engine).get_table_names()
    monkeypatch.undo()

    assert empty_store.migrate() == ALL_MIGRATIONS[len(older):]
    assert ALL_MIGRATIONS[len(older)] == "m004_dashboard_sessions"
    root = empty_store.verify_key(key)  # what was there is kept
    assert root is not None and root.is_admin
    digest = hashlib.sha256(b"session id").hexdigest()
    empty_store.save_dashboard_session(digest, root, "form-token", now=100.0, expires=200.0, limit=10)
    assert empty_store.dashboard_session(digest, now=150.0) == (root, "form-token", 200.0)
    assert empty_store.dashboard_session(digest, now=200.0) is None
    assert _rows(empty_store, dashboard_sessions) == []  # the expired row was deleted


def test_create_key_shape_and_only_a_keyed_hash_is_stored(store):
    key, info = store.create_key("alice", budget_daily=5.0)
    assert KEY_SHAPE.match(key), key
    assert key.startswith(KEY_PREFIX)
    assert info.lookup == key[len(KEY_PREFIX):len(KEY_PREFIX) + 12]
    assert (info.user_name, info.role, info.budget_daily, info.budget_monthly, info.revoked_at) == ("alice", "member", 5.0, None, None)

    (row,) = _rows(store, api_keys)
    assert row["lookup"] == info.lookup
    scheme, fingerprint, digest = row["hash"].split("$")
    assert (scheme, fingerprint) == ("hmac-sha256", store.key_secrets.current)
    # HMAC-SHA256 under the server secret: the key alone (or a plain SHA-256 of it) does not give it.
    assert digest == store.key_secrets.digest(key) and len(digest) == 64
    assert digest != hashlib.sha256(key.encode()).hexdigest()
    # Nothing stored holds the key or its secret part, in any column of any table.
    secret = key[len(KEY_PREFIX) + 12:]
    for table in ("users", "api_keys", "audit_log", "schema_migrations"):
        with store.engine.connect() as conn:
            for r in conn.execute(sa.text(f"SELECT * FROM {table}")):
                for value in r:
                    assert key not in str(value) and secret not in str(value), table



def test_a_database_error_does_not_show_the_values_bound_to_it(store):
    key, info = store.create_key("hana")
    digest = store.key_secrets.stored(key)
    with pytest.raises(sa.exc.IntegrityError) as caught, store.engine.begin() as conn:
        conn.execute(api_keys.insert().values(lookup=info.lookup, hash=digest, user_id=0, created_at=0.0))
    assert digest not in str(caught.value)  # (PostgreSQL names the duplicate lookup id: public)
    assert "hidden" in str(caught.value)  # the statement is named, its values are not

def test_the_key_secret_comes_from_the_setting_the_environment_or_the_file(tmp_path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    by_file = Store(db, environ={})
    by_file.migrate()
    key, _ = by_file.create_key("ann")
    assert (tmp_path / "gaud-secret.key").stat().st_mode & 0o777 == 0o600  # shared with the credentials vault
    assert by_file.verify_key(key) is not None
    other = Store(db, environ={"GAUD_SECRET_KEY": "another-secret-0123456789"})
    assert other.verify_key(key) is None  # another secret: the stored hash does not match
    setting = Store(db, key_secret="setting-secret-0123456789", environ={"GAUD_SECRET_KEY": "env-secret-0123456789"})
    assert setting.key_secrets.current == KeySecrets(["setting-secret-0123456789"]).current  # the setting wins
    with pytest.raises(SecretUnavailable, match="GAUD_SECRET_KEY"):
        Store("postgresql://nobody@127.0.0.1:1/x", environ={}).create_key("x")
    for s in (by_file, other, setting):
        s.close()


def test_rotating_the_secret_rewrites_each_key_on_its_next_use(tmp_path):
    db = f"sqlite:///{tmp_path / 'rot.db'}"
    old = Store(db, key_secret="old-secret-0123456789abcdef")
    old.migrate()
    used, _ = old.create_key("uma")
    unused, _ = old.create_key("vic")
    rotated = Store(db, key_secret="new-secret-0123456789abcdef,old-secret-0123456789abcdef")
    assert rotated.verify_key(used) is not None  # still accepted under the old secret...
    hashes = {r["lookup"]: r["hash"] for r in _rows(rotated, api_keys)}
    assert hashes[used[8:20]].split("$")[1] == rotated.key_secrets.current  # ...and rewritten under the new one
    assert hashes[unused[8:20]].split("$")[1] != rotated.key_secrets.current
    only_new = Store(db, key_secret="new-secret-0123456789abcdef")
    assert only_new.verify_key(used) is not None
    assert only_new.verify_key(unused) is None  # not used during the rotation: dead once the old secret goes
    for s in (old, rotated, only_new):
        s.close()


def _legacy_key(store: Store, user: str, hasher: PasswordHasher) -> str:
    """A key as releases before the HMAC hashes stored it: argon2id."""
    user_id = store.ensure_user(user)
    lookup = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{lookup}{secrets.token_urlsafe(24)}"
    with store.engine.begin() as conn:
        conn.execute(api_keys.insert().values(lookup=lookup, hash=hasher.hash(key), user_id=user_id, created_at=time.time()))
    return key


def test_a_legacy_argon2_key_works_and_is_rewritten_as_an_hmac_on_first_use(store):
    key = _legacy_key(store, "grace", store.hasher)
    wrong = key[:-1] + ("x" if key[-1] != "x" else "y")
    store.hasher.verified.clear()
    assert store.verify_key(wrong) is None
    (row,) = _rows(store, api_keys)
    assert row["hash"].startswith("$argon2id$")  # a failed check rewrites nothing
    assert store.verify_key(key).user_name == "grace"
    assert len(store.hasher.verified) == 2
    (row,) = _rows(store, api_keys)
    assert row["hash"].startswith("hmac-sha256$")
    assert store.verify_key(key).user_name == "grace"
    assert store.verify_key(wrong) is None
    assert len(store.hasher.verified) == 2  # argon2 is never run again for this key


def test_verify_reads_one_row_by_its_lookup_id_each_time(store, monkeypatch):
    created = [store.create_key(f"user{i}") for i in range(4)]
    key, info = created[2]
    read: list[str] = []
    key_row = store._key_row
    monkeypatch.setattr(store, "_key_row", lambda lookup: read.append(lookup) or key_row(lookup))
    for _ in range(3):  # no cache: one read per verification
        assert store.verify_key(key).user_name == "user2"
    assert read == [info.lookup] * 3
    sql = store._key_query[0]
    assert re.search(r"WHERE api_keys\.lookup = ", sql) and sql.count("SELECT") == 1, sql
    assert store.hasher.verified == []  # argon2 never runs for HMAC keys


def test_unknown_and_wrong_keys_are_rejected_in_microseconds_without_argon2(store):
    key, _info = store.create_key("dave")
    wrong_secret = key[:20] + ("A" if key[20] != "A" else "B") + key[21:]
    unknown_prefix = KEY_PREFIX + "0" * 12 + key[20:]
    for candidate in (wrong_secret, unknown_prefix, "sk-gaud-short", "not-a-gaud-key", "", key + "x", key[:-1] + "é"):
        assert store.verify_key(candidate) is None, candidate
    assert store.hasher.verified == []
    # Cost: one indexed SELECT and one HMAC. Generous bound (shared CI machine); bench/RESULTS.md has the numbers.
    started = time.perf_counter()
    for _ in range(200):
        store.verify_key(unknown_prefix)
        store.verify_key(wrong_secret)
    assert (time.perf_counter() - started) / 400 < 0.005
    assert store.verify_key(key) is not None


def test_revoke_by_key_prefix_or_lookup(store):
    a, _a_info = store.create_key("erin")
    b, b_info = store.create_key("erin")
    c, c_info = store.create_key("erin")
    assert store.verify_key(a) and store.verify_key(b) and store.verify_key(c)
    assert store.revoke_key(a) is True  # the whole key
    assert store.revoke_key(f"sk-gaud-{b_info.lookup}") is True  # the prefix `keys list` shows
    assert store.revoke_key(c_info.lookup) is True  # the bare lookup id
    for revoked in (a, b, c):
        assert store.verify_key(revoked) is None
    assert store.revoke_key(a) is False  # already revoked
    assert store.revoke_key("sk-gaud-000000000000") is False
    assert all(k.revoked_at is not None for k in store.list_keys())


def test_changes_made_by_another_store_apply_to_the_next_verification(store):
    """Another process (a second Store on the same database) revokes, downgrades, expires: the
    next check sees it, with no cache to wait out."""
    key, _ = store.create_key("hank", role="admin", budget_daily=5.0)
    other_key, _ = store.create_key("ida")
    assert store.verify_key(key).is_admin
    other = Store(store.url, key_secret=TEST_KEY_SECRET) if store.url.startswith("postgresql") else Store(store.url)
    try:
        assert other.update_key(key[:20], {"role": "member", "budget_daily": 1.0, "models": ("smart",)})
        principal = store.verify_key(key)
        assert (principal.role, principal.budget_daily, principal.models) == ("member", 1.0, ("smart",))
        assert principal.may_call("smart") and not principal.may_call("gpt-4o")
        now = time.time()
        assert other.update_key(other_key[:20], {"expires_at": now + 60})
        assert store.verify_key(other_key, now=now + 59) is not None
        assert store.verify_key(other_key, now=now + 60) is None  # expired
        assert other.revoke_key(key)
        assert store.verify_key(key) is None
        assert other.update_key(key[:20], {"label": "x"}) is None  # a revoked key cannot be changed
    finally:
        other.close()


def test_key_policies_round_trip(store):
    now = time.time()
    key, info = store.create_key("jo", models=("smart", "claude-*"), expires_at=now + 3600, label="ci runner")
    assert (info.models, info.expires_at, info.label) == (("smart", "claude-*"), now + 3600, "ci runner")
    updated = store.update_key(info.lookup, {"models": None, "expires_at": None, "label": None, "rpm_limit": 30.0})
    assert (updated.models, updated.expires_at, updated.label, updated.rpm_limit) == (None, None, None, 30.0)
    assert store.verify_key(key).rpm_limit == 30.0


def test_migrating_a_database_with_legacy_keys_adds_the_key_policies(empty_store, monkeypatch):
    older = MIGRATIONS[:MIGRATIONS.index(m005_key_policies)]
    monkeypatch.setattr(engine.accounts.store, "MIGRATIONS", older)
    assert empty_store.migrate() == [m.__name__ for m in older]
    with empty_store.engine.begin() as conn:  # api_keys as the release before m005 made it
        for column in ("expires_at", "label", "models"):
            conn.execute(sa.text(f"ALTER TABLE api_keys DROP COLUMN {column}"))
    legacy = sa.Table("api_keys", sa.MetaData(), autoload_with=empty_store.engine)
    user_id = empty_store.ensure_user("old", role="admin")
    lookup = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{lookup}{secrets.token_urlsafe(24)}"
    with empty_store.engine.begin() as conn:
        conn.execute(legacy.insert().values(lookup=lookup, hash=empty_store.hasher.hash(key), user_id=user_id,
                                            created_at=time.time()))
    monkeypatch.undo()
    assert empty_store.migrate() == ALL_MIGRATIONS[len(older):]
    assert ALL_MIGRATIONS[len(older)] == "m005_key_policies"
    principal = empty_store.verify_key(key)
    assert principal is not None and principal.is_admin and principal.models is None
    assert _rows(empty_store, api_keys)[0]["hash"].startswith("hmac-sha256$")


def test_ensure_user_updates_role_and_budgets(store):
    uid = store.ensure_user("frank", budget_daily=1.0)
    assert store.ensure_user("frank", role="admin", budget_monthly=10.0) == uid
    _key, info = store.create_key("frank", role="admin")
    assert (info.role, info.budget_daily, info.budget_monthly) == ("admin", 1.0, 10.0)


def _record(request_id: str, ts: float, user_id: int | None, user: str, deployment: str, cost: float, **extra) -> dict:
    return {"request_id": request_id, "ts": ts, "user_id": user_id, "user_name": user, "alias": deployment.split("/")[1],
            "deployment": deployment, "status": 200, "cost": cost, **extra}


def test_usage_aggregates_per_user_and_deployment(store):
    alice = store.ensure_user("alice")
    bob = store.ensure_user("bob")
    now = time.time()
    written = store.write_audit([
        _record("r1", now - 10, alice, "alice", "anthropic/claude-sonnet-4-20250514", 0.000414,
                prompt_tokens=18, completion_tokens=24),
        _record("r2", now - 5, alice, "alice", "anthropic/claude-sonnet-4-20250514", 0.013368,
                prompt_tokens=20_069, completion_tokens=15, cached_tokens=18_000, stream=True),
        _record("r3", now - 4, alice, "alice", "openai/gpt-4o", 0.0001875, prompt_tokens=19, completion_tokens=14),
        _record("r4", now - 3, bob, "bob", "openai/gpt-4o", 0.0001875, prompt_tokens=19, completion_tokens=14),
        # A failed request: counted, no tokens, no cost (the missing fields default to 0).
        {"request_id": "r5", "ts": now - 2, "user_id": bob, "user_name": "bob", "deployment": "openai/gpt-4o",
         "status": 429, "error_kind": "budget_exceeded"},
    ])
    assert written == 5
    rows = {(r["user_name"], r["deployment"]): r for r in store.usage()}
    assert set(rows) == {("alice", "anthropic/claude-sonnet-4-20250514"), ("alice", "openai/gpt-4o"), ("bob", "openai/gpt-4o")}
    sonnet = rows[("alice", "anthropic/claude-sonnet-4-20250514")]
    assert (sonnet["requests"], sonnet["prompt_tokens"], sonnet["completion_tokens"], sonnet["cached_tokens"]) == (2, 20_087, 39, 18_000)
    assert sonnet["cost"] == pytest.approx(0.000414 + 0.013368)  # 0.013782
    bob_row = rows[("bob", "openai/gpt-4o")]
    assert (bob_row["requests"], bob_row["prompt_tokens"], bob_row["cost"]) == (2, 19, pytest.approx(0.0001875))
    assert [r["user_name"] for r in store.usage(user="bob")] == ["bob"]
    recent = store.usage(since=now - 4.5)
    assert sum(r["requests"] for r in recent) == 3
    records = store.audit_records(user="alice")
    assert [r["request_id"] for r in records] == ["r1", "r2", "r3"]
    assert records[1]["stream"] is True and records[0]["stream"] is False
    failed = store.audit_records(user="bob")[-1]
    assert (failed["cost"], failed["prompt_tokens"], failed["error_kind"], failed["cache_hit"]) == (0.0, 0, "budget_exceeded", False)


def test_spent_since(store):
    alice = store.ensure_user("alice")
    bob = store.ensure_user("bob")
    assert store.spent_since(alice, 0) == 0.0
    store.write_audit([
        _record("a1", 1_000.0, alice, "alice", "openai/gpt-4o", 0.25),
        _record("a2", 2_000.0, alice, "alice", "openai/gpt-4o", 0.50),
        _record("a3", 3_000.0, alice, "alice", "openai/gpt-4o", 1.00),
        _record("b1", 2_500.0, bob, "bob", "openai/gpt-4o", 4.00),
    ])
    assert store.spent_since(alice, 0) == pytest.approx(1.75)
    assert store.spent_since(alice, 2_000.0) == pytest.approx(1.50)  # the boundary is included
    assert store.spent_since(alice, 2_000.1) == pytest.approx(1.00)
    assert store.spent_since(alice, 3_000.1) == 0.0
    assert store.spent_since(bob, 0) == pytest.approx(4.00)


def test_write_audit_of_many_rows_keeps_every_row_and_its_order(store):
    """More rows than one INSERT holds: every row lands once, in order, with its own values."""
    alice = store.ensure_user("alice")
    n = AUDIT_ROWS_PER_INSERT * 2 + 7
    records = [_record(f"r{i}", 1_000.0 + i, alice, "alice", "openai/gpt-4o", i / 1000, prompt_tokens=i,
                       stream=i % 2 == 0) for i in range(n)]
    assert store.write_audit(records) == n
    assert store.write_audit(records[:3]) == 3  # a smaller batch after: its own statement
    rows = store.audit_records()
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(n)] + ["r0", "r1", "r2"]
    assert [(r["prompt_tokens"], r["stream"]) for r in rows[:n]] == [(i, i % 2 == 0) for i in range(n)]
    assert store.spent_since(alice, 0) == pytest.approx(sum(i / 1000 for i in range(n)) + 0.001 + 0.002)


def test_write_audit_of_nothing(store):
    assert store.write_audit([]) == 0
    assert store.audit_records() == []
    assert store.usage() == []


def test_argon2_runs_at_most_a_few_at_once(tmp_path):
    """Each argon2 hash takes 64 MiB: a burst of legacy key checks (wrong ones included) must queue."""
    running, most = 0, 0
    lock = threading.Lock()

    class Watching(PasswordHasher):
        def verify(self, hash, password):
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.02)  # long enough for the threads to overlap
            with lock:
                running -= 1
            return super().verify(hash, password)

    hasher = Watching(time_cost=1, memory_cost=1024, parallelism=1)
    store = Store(f"sqlite:///{tmp_path / 'a.db'}", hasher=hasher)
    store.migrate()
    legacy = [_legacy_key(store, f"ivy{i}", hasher) for i in range(6)]
    keys = [k[:-1] + ("x" if k[-1] != "x" else "y") for k in legacy] * 2  # wrong: never rewritten
    threads = [threading.Thread(target=store.verify_key, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert most == engine.accounts.store.ARGON2_AT_ONCE
