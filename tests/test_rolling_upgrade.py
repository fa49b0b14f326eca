"""A rolling upgrade (docs/upgrades.md): this code migrates a fresh database, then an instance of
the previous release (tests/fixtures/previous_release.txt, run from its own tree) and one of this
code serve from it at once. The old code's migrate() finds nothing to apply among the newer
schema_migrations rows, its gateway takes keys either release made and writes audit rows this code
reads, its `keys` and `usage` commands work, and both releases count the same usage. On SQLite, and
on PostgreSQL when GAUD_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engine.accounts.store import MIGRATIONS, Store

from .conftest import ROOT, TEST_KEY_SECRET, RunningGateway, pg_store, provider_env, spawn_gateway
from .fakes import FakeUpstream
from .previous_release import OldRelease, extract

HELLO = [{"role": "user", "content": "Hello"}]
MODEL = "gemini-2.5-flash"


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract(tmp_path_factory.mktemp("previous_release"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, unmigrated database, as this code's Store."""
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'gaud.db'}", key_secret=TEST_KEY_SECRET)
        yield store
        store.close()
        return
    url = os.environ.get("GAUD_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set GAUD_TEST_POSTGRES_URL=postgresql://user@host/db to test on PostgreSQL")
    for store in pg_store(url):
        yield store  # type: ignore[misc]


def _old_key(old: OldRelease, user: str) -> str:
    """A key made by the old `keys create`."""
    out = old.cli("keys", "create", "--user", user)
    found = re.search(r"^\s+(sk-gaud-\S+)$", out, re.MULTILINE)
    assert found, out
    return found[1]


def _chat(gateway: RunningGateway, key: str, upstream: FakeUpstream, *, stream: bool = False) -> tuple[str, float | None]:
    """One chat request through `gateway` with `key`: its request id and the cost it reported."""
    upstream.reply_fixture("gemini", "stream_text.sse" if stream else "generate_text.json")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, stream=stream)  # type: ignore[call-overload]
    reply = raw.parse()
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        return raw.headers["x-request-id"], None
    assert reply.choices[0].message.content
    return raw.headers["x-request-id"], float(raw.headers["x-gaud-cost"])


def _usage_lines(out: str) -> list[tuple[str, ...]]:
    """The old `usage` table as rows of (user, deployment, requests, prompt, completion, cached, cost)."""
    return [tuple(line.split()) for line in out.splitlines()[1:]]


def test_the_previous_release_serves_beside_this_one_from_the_migrated_database(
    database: Store, old_tree: Path, upstream: FakeUpstream, tmp_path: Path
) -> None:
    new = database
    assert new.migrate() == [m.__name__ for m in MIGRATIONS]
    old = OldRelease(old_tree, new.url)
    assert old.engine_file().is_relative_to(old_tree)  # else this test would run the new code twice
    assert old.migrate() == []  # the newer schema_migrations rows are not its business

    new_key = new.create_key("carol", label="made by the new release")[0]
    revoked = new.create_key("erin")[0]
    assert new.revoke_key(revoked)
    old_key = _old_key(old, "dave")
    listed = old.cli("keys", "list")
    assert "carol" in listed and "dave" in listed and new_key[:20] in listed

    env = {**provider_env(upstream.url), "GAUD_AUTH_ENABLED": "true", "GAUD_SECRET_KEY": TEST_KEY_SECRET,
           "GAUD_DATABASE_URL": new.url}
    gateways = {
        "old": spawn_gateway({**env, **old.env, "GAUD_SPECS_DIR": str(old_tree)}, tmp_path / "old.log", root=old_tree),
        "new": spawn_gateway({**env, "GAUD_SPECS_DIR": str(ROOT)}, tmp_path / "new.log"),
    }
    served: dict[str, tuple[str, float | None]] = {}  # request id -> (user, cost)
    try:
        for gateway in gateways.values():
            gateway.ready()
        for gateway in gateways.values():
            for user, key in (("carol", new_key), ("dave", old_key)):
                request_id, cost = _chat(gateway, key, upstream)
                served[request_id] = (user, cost)
        request_id, _ = _chat(gateways["old"], new_key, upstream, stream=True)
        served[request_id] = ("carol", None)
        old_client = openai.OpenAI(base_url=f"{gateways['old'].url}/v1", api_key=revoked, max_retries=0, timeout=20)
        with pytest.raises(openai.AuthenticationError):
            old_client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    finally:
        for gateway in gateways.values():
            gateway.process.terminate()
        codes = {name: gateway.process.wait(10) for name, gateway in gateways.items()}
    assert codes == {"old": 0, "new": 0}, gateways["old"].logs()[-3000:]  # SIGTERM flushed their audit rows
    assert "Traceback" not in gateways["old"].logs()

    # The new code reads the rows the old instance wrote, as it reads its own.
    rows = {r["request_id"]: r for r in new.audit_records()}
    for request_id, (user, cost) in served.items():
        row = rows[request_id]
        assert (row["user_name"], row["status"], row["deployment"]) == (user, 200, f"gemini/{MODEL}")
        assert row["prompt_tokens"] > 0 and row["cost"] > 0
        if cost is not None:
            assert row["cost"] == pytest.approx(cost, abs=1e-8)

    # Usage totals: the old `usage` and this code's agree, row for row.
    old_usage = _usage_lines(old.cli("usage"))
    new_usage = [(r["user_name"] or "-", r["deployment"] or "-", str(r["requests"]), str(r["prompt_tokens"]),
                  str(r["completion_tokens"]), str(r["cached_tokens"]), f"{r['cost']:.6f}") for r in new.usage()]
    assert old_usage == new_usage
    assert {(u[0], u[2]) for u in new_usage if u[0] in ("carol", "dave")} == {("carol", "3"), ("dave", "2")}
