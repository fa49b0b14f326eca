"""The request log (/ui/requests) and the keys' last use: its queries on SQLite and PostgreSQL, the
attempt log a retried and fallen-back request leaves, the migrations, and a walk through Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa

from engine import load_catalog
from engine.accounts.key_usage import key_usage
from engine.accounts.store import Store
from engine.pipeline.gateway import Exchange, Gateway
from engine.pipeline.upstream import Upstream
from engine.web.dashboard.request_log import Cursor, FilterError, RequestFilter, attempts_of, request_page, request_rows

from .conftest import migrated_store, pg_store, provider_env, spec_tree, start_gateway
from .test_dashboard import CHAT, CHROMIUM, CHROMIUM_ARGS, bearer, wait_for_usage
from .test_resilience import FakeClock, tree  # noqa: F401 - `tree` is a fixture

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[Store]:
    yield from migrated_store(request.param, tmp_path)


def rows(n: int, **fields) -> list[dict]:
    """n rows, one a second from T0, every third a 502; rows 10 and 11 share a timestamp (a tie)."""
    out = []
    for i in range(n):
        ts = T0 + (10 if i == 11 else i)
        failed = i % 3 == 0
        out.append({"request_id": f"r{i}", "ts": ts, "user_name": "ann" if i % 2 else "ben", "alias": "smart",
                    "deployment": "p/m1" if i < 15 else "p/m2", "status": 502 if failed else 200,
                    "error_kind": "upstream_5xx" if failed else None, **fields})
    return out


def ids(page) -> list[str]:
    return [r["request_id"] for r in page.rows]


def test_pages_are_newest_first_and_walk_both_ways_without_gaps_or_repeats(store):
    store.write_audit(rows(25))
    everything = ids(request_page(store.engine, RequestFilter(), limit=100))
    assert len(everything) == 25 and everything[0] == "r24" and everything[-1] == "r0"
    assert everything.index("r11") < everything.index("r10")  # same ts: the later id first

    seen, before, pages = [], None, []
    while True:
        page = request_page(store.engine, RequestFilter(), limit=10, before=before)
        pages.append(page)
        seen += ids(page)
        if page.older is None:
            break
        before = page.older
    assert seen == everything and [len(p.rows) for p in pages] == [10, 10, 5]
    assert pages[0].newer is None and pages[1].newer is not None
    back = request_page(store.engine, RequestFilter(), limit=10, after=pages[2].newer)
    assert ids(back) == ids(pages[1]) and back.older == pages[1].older and back.newer is not None
    top = request_page(store.engine, RequestFilter(), limit=10, after=back.newer)
    assert ids(top) == ids(pages[0]) and top.newer is None

    # A cursor's text form round-trips exactly (floats by repr) and refuses junk.
    cursor = Cursor(T0 + 0.1 + 0.2, 7)
    assert Cursor.parse(str(cursor)) == cursor
    assert [Cursor.parse(t) for t in ("", "x_1", "1.5", "nan_3", "inf_3", "1.5_x")] == [None] * 6


def test_filters(store):
    store.write_audit(rows(25))
    store.write_audit([{"request_id": "late", "ts": T0 + 3600, "user_name": "cy", "alias": "fast", "status": 429,
                        "error_kind": "rate_limit"}])

    def match(**given) -> set[str]:
        return set(ids(request_page(store.engine, RequestFilter(**given), limit=200)))

    assert match(user="ann") == {f"r{i}" for i in range(25) if i % 2}
    assert match(alias="fast") == match(status="429") == match(error_kind="rate_limit") == {"late"}
    assert match(deployment="p/m2", status="errors") == {"r15", "r18", "r21", "r24"}
    assert match(status="5xx") == match(error_kind="upstream_5xx") == {f"r{i}" for i in range(25) if i % 3 == 0}
    assert len(match(status="ok")) == 25 - 9 and match(status="4xx") == {"late"}
    # From inclusive, To exclusive, in UTC minutes or seconds.
    assert match(since="2023-11-14T22:13:40", until="2023-11-14T22:13:41") == {"r20"}
    assert match(until="2023-11-14T22:13:22") == {"r0", "r1"}
    assert match(since="2023-11-14T23:00") == {"late"}
    assert match(request_id="r7") == {"r7"} and match(user="nobody") == set()
    for bad in ({"status": "abc"}, {"status": "600"}, {"since": "yesterday"}, {"until": "2023-13-01T00:00"}):
        with pytest.raises(FilterError):
            request_page(store.engine, RequestFilter(**bad), limit=10)


def test_detail_rows_join_the_key_and_read_attempt_logs_old_and_new(store):
    _, info = store.create_key("ann", label="ci runner")
    attempts = [{"deployment": "p/m1", "status": 529, "error": "overloaded", "message": "busy", "upstream_status": 529,
                 "ms": 12.0}, {"deployment": "p/m2", "skipped": "circuit breaker open", "error": None}]
    store.write_audit([
        {"request_id": "x/y?z", "ts": T0, "user_name": "ann", "status": 200, "key_id": info.id,
         "attempt_log": json.dumps(attempts), "tried": "p/m1"},
        {"request_id": "x/y?z", "ts": T0 + 1, "user_name": "ann", "status": 200, "tried": "p/m1,p/m2"},  # before m009
        {"request_id": "bad", "ts": T0, "status": 200, "attempt_log": "{not json", "tried": "p/m1"},
    ])
    newest, oldest = request_rows(store.engine, "x/y?z")
    assert (oldest["key_lookup"], oldest["key_label"]) == (info.lookup, "ci runner") and newest["key_lookup"] is None
    assert attempts_of(oldest) == attempts
    assert [a["deployment"] for a in attempts_of(newest)] == ["p/m1", "p/m2"]
    assert [a["deployment"] for a in attempts_of(request_rows(store.engine, "bad")[0])] == ["p/m1"]
    assert request_rows(store.engine, "x/y") == []


def test_key_usage_last_use_and_the_users_spend(store):
    now = T0  # 22:13 UTC on the 14th
    _, used = store.create_key("ann", budget_daily=5.0)
    _, idle = store.create_key("ann")
    _, other = store.create_key("bo")
    ann = store.ensure_user("ann")
    store.write_audit([
        {"request_id": "a", "ts": now - 60, "user_id": ann, "user_name": "ann", "status": 200, "cost": 1.0, "key_id": used.id},
        {"request_id": "b", "ts": now - 86400, "user_id": ann, "user_name": "ann", "status": 200, "cost": 2.0,
         "key_id": idle.id},
        {"request_id": "c", "ts": now - 30 * 86400, "user_id": ann, "user_name": "ann", "status": 200, "cost": 4.0},
    ])
    by_id = {u.key.id: u for u in key_usage(store, now=now)}
    assert by_id[used.id].last_used == now - 60 and by_id[idle.id].last_used == now - 86400
    assert by_id[other.id].last_used is None
    assert (by_id[used.id].user_spent_today, by_id[used.id].user_spent_month) == (1.0, 3.0)
    assert (by_id[idle.id].user_spent_today, by_id[other.id].user_spent_month) == (1.0, 0.0)


def test_migrations_add_the_columns_and_indexes_to_an_older_database(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate()
    with store.engine.begin() as conn:  # back to the schema of m008
        for index in ("ix_audit_log_request_id", "ix_audit_log_key_id_ts"):
            conn.execute(sa.text(f"DROP INDEX {index}"))
        for column in ("key_id", "attempt_log"):
            conn.execute(sa.text(f"ALTER TABLE audit_log DROP COLUMN {column}"))
        conn.execute(sa.text("DELETE FROM schema_migrations WHERE name IN "
                             "('m009_audit_key_and_attempts', 'm010_audit_log_indexes')"))
    assert store.migrate() == ["m009_audit_key_and_attempts", "m010_audit_log_indexes"]
    inspector = sa.inspect(store.engine)
    assert {"key_id", "attempt_log"} <= {c["name"] for c in inspector.get_columns("audit_log")}
    indexes = {i["name"] for i in inspector.get_indexes("audit_log")}
    # SQLite's ts index ends in the rowid already: the (ts, id) one is PostgreSQL's alone.
    assert {"ix_audit_log_request_id", "ix_audit_log_key_id_ts"} <= indexes and "ix_audit_log_ts_id" not in indexes
    store.close()


def test_postgresql_has_the_keyset_index():
    url = os.environ.get("GAUD_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set GAUD_TEST_POSTGRES_URL=postgresql://user@host/db to test on PostgreSQL")
    for s in pg_store(url):
        s.migrate()
        with s.engine.connect() as conn:
            indexes = {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes("audit_log")}
        assert indexes["ix_audit_log_ts_id"] == ["ts", "id"]


# -- the attempt log a request leaves -------------------------------------------------------------


def test_a_retried_fallen_back_request_logs_each_attempt(tree, upstream):  # noqa: F811 - the fixture
    catalog = load_catalog(tree, environ=provider_env(upstream.url))
    clock = FakeClock()
    gateway = Gateway(catalog, Upstream(), sleep=clock.sleep, clock=clock, rng=random.Random(7))
    for _ in range(4):
        upstream.reply(status=503, json={"error": {"type": "api_error", "message": "boom"}})
    upstream.reply_fixture("gemini", "generate_text.json")
    exchange = Exchange()

    async def go():
        try:
            return await gateway.chat({"model": "chain", "messages": [{"role": "user", "content": "Hi"}]}, exchange)
        finally:
            await gateway.upstream.close()

    asyncio.run(go())
    log = exchange.attempt_log
    assert [(a["deployment"], a["status"], a["error"], a["upstream_status"]) for a in log] == [
        ("anthropic/claude-sonnet-4-20250514", 502, "upstream_5xx", 503)] * 4 + [("gemini/gemini-2.5-flash", 200, None, None)]
    assert all(a["ms"] >= 0 for a in log) and "boom" in log[0]["message"]


# -- in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_with_log(fake_upstream_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("requestlog")
    db = tmp / "gaud.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    keys = {"root": store.create_key("root", role="admin")[0], "mia": store.create_key("mia", label="notebook")[0]}
    store.write_audit([{**r, "user_name": "pat"} for r in rows(23)])  # old rows to page through
    store.close()
    env = {
        **provider_env(fake_upstream_server.url),
        "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false", fallback="false")),
        "GAUD_AUTH_ENABLED": "true",
        "GAUD_DATABASE_URL": f"sqlite:///{db}",
    }
    running = start_gateway(env, tmp / "gateway.log")
    yield SimpleNamespace(url=running.url, ui=f"{running.url}/ui", keys=keys, db=db)
    running.process.send_signal(signal.SIGTERM)
    running.process.wait(20)


def test_request_log_needs_an_admin(gateway_with_log):
    g = gateway_with_log
    for path in ("/ui/requests", "/ui/requests/r1"):
        response = httpx.get(f"{g.url}{path}", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].endswith("/ui/login")


def test_browser_filters_pages_and_opens_a_request(gateway_with_log, upstream, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    expect, g = sync_api.expect, gateway_with_log

    upstream.reply_fixture("anthropic", "messages_text.json")
    ok = httpx.post(f"{g.url}/v1/chat/completions", json=CHAT, headers={**bearer(g.keys["mia"]), "x-request-id": "mia/ok"})
    upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    failed = httpx.post(f"{g.url}/v1/chat/completions", json=CHAT, headers=bearer(g.keys["mia"]))
    assert ok.status_code == 200 and failed.status_code >= 500
    wait_for_usage(SimpleNamespace(db=g.db), "mia", 2)
    failed_id = failed.headers["x-request-id"]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(f"{g.ui}/login")
            page.fill("#key", g.keys["root"])
            page.click("button[type=submit]")
            page.click("nav >> text=Requests")
            expect(page).to_have_url(f"{g.ui}/requests")
            expect(page.locator("#requests tbody tr").first.locator("td.user")).to_have_text("mia")  # newest first

            # Filter: mia's failures.
            page.fill("#filters input[name=user]", "mia")
            page.fill("#filters input[name=status]", "errors")
            page.click("#filters button[type=submit]")
            expect(page.locator("#requests tbody tr")).to_have_count(1)
            expect(page.locator("#requests tbody tr td.kind")).to_have_text("overloaded")
            page.screenshot(path=str(tmp_path / "requests.png"), full_page=True)

            # Its page: the attempt, its error and duration; the key it came with.
            page.locator("#requests td.rid a").click()
            expect(page.locator("#request-id")).to_have_text(failed_id)
            expect(page.locator("dd.key")).to_contain_text("(notebook)")
            attempt = page.locator("table.attempts tbody tr")
            expect(attempt).to_have_count(1)
            expect(attempt.locator("td.deployment")).to_have_text("anthropic/claude-sonnet-4-20250514")
            expect(attempt.locator("td.kind")).to_have_text("overloaded")
            expect(attempt.locator("td.num").nth(3)).to_contain_text("ms")

            # A client's own id with a slash opens too.
            page.goto(f"{g.ui}/requests?request_id=mia%2Fok")
            page.locator("#requests td.rid a").click()
            expect(page.locator("#request-id")).to_have_text("mia/ok")
            expect(page.locator("dd.tokens")).to_contain_text("18 prompt")
            expect(page.locator("dd.ttft")).to_have_text("–")

            # pat's 23 old rows, 10 a page: older, older, then back to newer.
            page.goto(f"{g.ui}/requests?user=pat&limit=10")
            first = page.locator("#requests td.rid").all_inner_texts()
            assert first[0] == "r22" and len(first) == 10 and page.locator("#newer").count() == 0
            page.click("#older")
            second = page.locator("#requests td.rid").all_inner_texts()
            page.click("#older")
            third = page.locator("#requests td.rid").all_inner_texts()
            assert len(third) == 3 and third[-1] == "r0" and page.locator("#older").count() == 0
            assert len(set(first + second + third)) == 23
            page.click("#newer")
            assert page.locator("#requests td.rid").all_inner_texts() == second
            expect(page.locator("#filters input[name=user]")).to_have_value("pat")

            page.goto(f"{g.ui}/requests?status=teapot")
            expect(page.locator("#filter-error")).to_contain_text("Status must be")
            page.goto(f"{g.ui}/requests/no-such-id")
            expect(page.locator("main")).to_contain_text("No request with this id")

            # The keys page: label, limits, spend, last use.
            page.click("nav >> text=Keys")
            mia = page.locator("#keys tbody tr").filter(has_text="notebook")
            expect(mia.locator("td.last-used")).to_contain_text(time.strftime("%Y-%m-%d", time.gmtime()))
            expect(mia.locator("td.models")).to_have_text("all")
            expect(mia.locator("td.today")).to_contain_text("/ none")
            root = page.locator("#keys tbody tr").filter(has=page.locator("td", has_text="root"))
            expect(root.locator("td.last-used")).to_have_text("never")
        finally:
            browser.close()
