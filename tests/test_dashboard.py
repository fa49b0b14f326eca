"""The admin dashboard at /ui, through a real `gaud-engine serve` process with auth on.

Fast checks with httpx (login rules, redirects, CSRF, session end, headers), one in-process app
with auth off, and one walk through a real headless browser: Debian's chromium driven by
playwright (`apt-get install chromium`, `pip install playwright`; no `playwright install`).
"""

from __future__ import annotations

import hashlib
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa

from engine.accounts.budgets import day_start, month_start
from engine.accounts.store import KEY_PREFIX, Store
from engine.web.dashboard.charts import format_money, stacked_bars
from engine.web.dashboard.queries import (
    spend_by_user,
    time_series,
    totals,
)

from .conftest import migrated_store, provider_env, spec_tree, start_gateway

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic",
]
KEY_SHAPE = re.compile(r"sk-gaud-[0-9a-f]{12}[A-Za-z0-9_-]{32}")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# messages_text.json: 18 prompt and 24 completion tokens at $3/M and $15/M = $0.000414 a request.
COST = (18 * 3 + 24 * 15) / 1_000_000
CHAT = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 24}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def dash(fake_upstream_server, tmp_path_factory):
    """A gateway with auth on, an admin (root) and a member (mia) created beforehand."""
    tmp = tmp_path_factory.mktemp("dashboard")
    db = tmp / "gaud.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    keys = {"root": store.create_key("root", role="admin")[0], "mia": store.create_key("mia")[0]}
    store.close()
    env = {
        **provider_env(fake_upstream_server.url),
        # One failure opens a breaker (the health test opens one; the other tests use other models).
        "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false", fallback="false", breaker={"failures": 1, "cooldown": 600})),
        "GAUD_AUTH_ENABLED": "true",
        "GAUD_DATABASE_URL": f"sqlite:///{db}",
    }
    running = start_gateway(env, tmp / "gateway.log")
    yield SimpleNamespace(url=running.url, ui=f"{running.url}/ui", keys=keys, running=running, db=db)
    running.process.send_signal(signal.SIGTERM)
    running.process.wait(20)


def login(dash, key: str) -> httpx.Client:
    client = httpx.Client(base_url=dash.url, timeout=20)
    response = client.post("/ui/login", data={"key": key})
    assert response.status_code == 303, response.text
    return client


def csrf_token(client: httpx.Client) -> str:
    page = client.get("/ui/keys")
    assert page.status_code == 200
    return CSRF.search(page.text).group(1)


def key_ids(dash) -> dict[str, bool]:
    """lookup -> revoked, through the JSON admin API."""
    listed = httpx.get(f"{dash.url}/admin/keys", headers=bearer(dash.keys["root"])).json()["data"]
    return {k["id"]: k["revoked"] for k in listed}


def wait_for_usage(dash, user: str, requests: int) -> None:
    """The audit writer batches (at most 0.2 s): poll the database until the records are in."""
    store = Store(f"sqlite:///{dash.db}")
    try:
        deadline = time.monotonic() + 10
        while len(store.audit_records(user=user)) < requests:
            assert time.monotonic() < deadline, f"{requests} audit records for {user} never appeared"
            time.sleep(0.05)
    finally:
        store.close()


# -- without a browser ----------------------------------------------------------------------------


def test_every_page_and_form_needs_an_admin_session(dash):
    before = key_ids(dash)
    victim = next(iter(before))
    with httpx.Client(base_url=dash.url, timeout=20) as client:
        for path in ("/ui/", "/ui/keys", "/ui/health"):
            response = client.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/ui/login", path
            # An API key in a header is not a dashboard session, nor is a made-up cookie.
            assert client.get(path, headers=bearer(dash.keys["root"])).status_code == 303
            assert client.get(path, headers={"cookie": "gaud_dashboard=made-up"}).status_code == 303
        for path, data in (("/ui/keys", {"user": "sneaky", "role": "admin"}), (f"/ui/keys/{victim}/revoke", {}),
                           ("/ui/budgets", {"user": "mia", "budget_daily": "0"}), ("/ui/logout", {})):
            response = client.post(path, data=data)
            assert response.status_code == 303 and response.headers["location"] == "/ui/login", path
        assert client.get("/ui").status_code in (307, 308)  # to /ui/
    assert key_ids(dash) == before  # nothing changed


def test_login_needs_an_admin_key_and_sets_a_strict_session_cookie(dash):
    with httpx.Client(base_url=dash.url, timeout=20) as client:
        member = client.post("/ui/login", data={"key": dash.keys["mia"]})
        assert member.status_code == 403
        assert "not an admin key" in member.text and "set-cookie" not in member.headers
        wrong = client.post("/ui/login", data={"key": dash.keys["root"][:-3] + "xyz"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert client.post("/ui/login", data={"key": ""}).status_code == 401
        cross = client.post("/ui/login", data={"key": dash.keys["root"]}, headers={"origin": "http://evil.example"})
        assert cross.status_code == 403 and "set-cookie" not in cross.headers

        ok = client.post("/ui/login", data={"key": dash.keys["root"]})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/"
        cookie = ok.headers["set-cookie"]
        assert re.search(r"(?i)\bhttponly\b", cookie) and re.search(r"(?i)samesite=strict", cookie)
        assert re.search(r"(?i)path=/ui\b", cookie)
        assert dash.keys["root"] not in cookie and dash.keys["root"][8:20] not in cookie
        page = client.get("/ui/")
        assert page.status_code == 200 and "Usage and cost" in page.text
        assert dash.keys["root"] not in page.text
        for name, value in (("x-frame-options", "DENY"), ("cache-control", "no-store"), ("x-content-type-options", "nosniff")):
            assert page.headers[name] == value
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "<script" not in page.text  # no JavaScript at all
        assert client.get("/ui/login").status_code == 303  # already logged in


def test_forms_need_the_session_token_and_this_origin(dash, upstream):
    client = login(dash, dash.keys["root"])
    token = csrf_token(client)
    origin = dash.url
    before = key_ids(dash)
    refused = [
        ({"user": "x1"}, {}),  # no token
        ({"user": "x2", "csrf": "wrong"}, {}),
        ({"user": "x3", "csrf": token}, {"origin": "http://evil.example"}),
        ({"user": "x4", "csrf": token}, {"origin": "null"}),
        ({"user": "x5", "csrf": token}, {"referer": "http://evil.example/ui/keys"}),
        ({"user": "x6", "csrf": token}, {"origin": "http://evil.example", "referer": f"{origin}/ui/keys"}),
    ]
    for data, headers in refused:
        response = client.post("/ui/keys", data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
    assert key_ids(dash) == before

    created = client.post("/ui/keys", data={"user": "bot", "role": "member", "budget_daily": "2.5", "csrf": token},
                          headers={"origin": origin, "referer": f"{origin}/ui/keys"})
    assert created.status_code == 201
    key = KEY_SHAPE.search(created.text).group(0)
    assert client.get("/ui/keys").text.count(key) == 0  # shown once, never again
    lookup = key[len(KEY_PREFIX):len(KEY_PREFIX) + 12]
    assert key_ids(dash)[lookup] is False
    bad = client.post("/ui/keys", data={"user": "bot2", "budget_monthly": "-1", "csrf": token})
    assert bad.status_code == 400 and "non-negative" in bad.text

    upstream.reply_fixture("anthropic", "messages_text.json")
    assert httpx.post(f"{dash.url}/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
    assert client.post(f"/ui/keys/{lookup}/revoke", data={"csrf": token}, headers={"origin": "http://evil.example"}).status_code == 403
    revoked = client.post(f"/ui/keys/{lookup}/revoke", data={"csrf": token})
    assert revoked.status_code == 303 and revoked.headers["location"] == f"/ui/keys?revoked={lookup}"
    assert key_ids(dash)[lookup] is True
    assert httpx.post(f"{dash.url}/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 401
    assert client.post(f"/ui/keys/{lookup}/revoke", data={"csrf": token}).status_code == 404  # already revoked

    budget = client.post("/ui/budgets", data={"user": "bot", "budget_monthly": "40", "csrf": token})
    assert budget.status_code == 303
    row = re.search(r'<td class="user">bot</td>.*?</tr>', client.get("/ui/keys").text, re.DOTALL).group(0)
    assert "$2.50" in row and "$40.00" in row
    assert client.post("/ui/budgets", data={"user": "nobody", "budget_daily": "1", "csrf": token}).status_code == 404
    # The dashboard's changes are in the admin trail, made with the signed-in admin key.
    trail = httpx.get(f"{dash.url}/admin/events", headers=bearer(dash.keys["root"])).json()["data"]
    ui_actor = f"ui:{dash.keys['root'][:20]}"
    assert [(e["action"], e["target"]) for e in trail if e["actor"] == ui_actor][:3] == [
        ("users.update", "bot"), ("keys.revoke", lookup), ("keys.create", lookup)]

    # Logging out ends the session: the old cookie and token no longer work.
    assert client.post("/ui/logout", data={"csrf": token}).status_code == 303
    assert client.get("/ui/").status_code == 303
    client.close()


def test_session_ends_when_its_key_is_revoked_or_the_user_loses_admin(dash):
    created = httpx.post(f"{dash.url}/admin/keys", json={"user": "deputy", "role": "admin"}, headers=bearer(dash.keys["root"]))
    deputy = created.json()
    client = login(dash, deputy["key"])
    assert client.get("/ui/health").status_code == 200
    httpx.post(f"{dash.url}/admin/keys/{deputy['id']}/revoke", headers=bearer(dash.keys["root"]))
    assert client.get("/ui/health").status_code == 303

    second = httpx.post(f"{dash.url}/admin/keys", json={"user": "deputy2", "role": "admin"}, headers=bearer(dash.keys["root"]))
    client = login(dash, second.json()["key"])
    assert client.get("/ui/").status_code == 200
    # A member key for the same user demotes the user (roles belong to users).
    httpx.post(f"{dash.url}/admin/keys", json={"user": "deputy2", "role": "member"}, headers=bearer(dash.keys["root"]))
    assert client.get("/ui/").status_code == 303
    client.close()


def test_health_page_shows_providers_breakers_and_routes_from_the_catalog(dash, catalog, upstream):
    client = login(dash, dash.keys["root"])
    upstream.reply(status=500, json={"error": {"message": "upstream fell over", "type": "server_error"}})
    failed = httpx.post(f"{dash.url}/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}, headers=bearer(dash.keys["mia"]))
    assert failed.status_code >= 500
    page = client.get("/ui/health").text
    row = re.search(r"<tr>\s*<td><code>openai/gpt-4o</code>.*?</tr>", page, re.DOTALL).group(0)
    assert 'class="state-open"' in row
    assert 'id="validation">ok' in page
    for name in catalog.providers:
        assert f"<td>{name}</td>" in page
    for alias in catalog.routes["aliases"]:
        assert f"<code>{alias}</code>" in page
    assert "closed" in page and "ready" in page
    assert 'http-equiv="refresh" content="10"' in client.get("/ui/health?refresh=10").text
    client.close()


def test_auth_disabled_opens_the_dashboard_and_says_so(catalog, tmp_path):
    from starlette.testclient import TestClient

    from engine.config import load_settings
    from engine.web.server import create_app

    settings = load_settings(environ={"GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}"})
    with TestClient(create_app(catalog, settings), follow_redirects=False) as client:
        page = client.get("/ui/")
        assert page.status_code == 200 and "Authentication is disabled" in page.text
        assert client.get("/ui/login").headers["location"] == "/ui/"
        token = CSRF.search(client.get("/ui/keys").text).group(1)
        assert client.post("/ui/keys", data={"user": "x", "csrf": token}, headers={"origin": "http://evil.example"}).status_code == 403
        assert client.post("/ui/keys", data={"user": "x"}).status_code == 403
        created = client.post("/ui/keys", data={"user": "x", "csrf": token}, headers={"origin": "http://testserver"})
        assert created.status_code == 201 and KEY_SHAPE.search(created.text)
        assert client.get("/ui/nope").status_code == 404


@pytest.fixture(params=["sqlite", "postgresql"])
def query_store(request, tmp_path) -> Iterator[Store]:
    """An empty migrated Store on SQLite, or in a fresh schema of GAUD_TEST_POSTGRES_URL."""
    yield from migrated_store(request.param, tmp_path)


def test_time_buckets_and_totals(query_store):
    store = query_store
    start = 1_700_000_000.0
    rows = [
        {"request_id": "a", "ts": start + 10, "user_name": "ann", "deployment": "p/m1", "status": 200, "cost": 0.5},
        {"request_id": "b", "ts": start + 3599.9, "user_name": "ann", "deployment": "p/m2", "status": 200, "cost": 0.25},
        {"request_id": "c", "ts": start + 3600, "user_name": "ben", "alias": "cached", "status": 200, "cost": 0.0},
        {"request_id": "d", "ts": start + 3 * 3600 - 1, "user_name": "ben", "deployment": "p/m1", "status": 502},
        {"request_id": "e", "ts": start + 3 * 3600, "user_name": "ann", "deployment": "p/m1", "status": 200, "cost": 9},
        {"request_id": "f", "ts": start - 1, "user_name": "ann", "deployment": "p/m1", "status": 200, "cost": 9},
    ]
    store.write_audit(rows)
    users = time_series(store.engine, by="user", start=start, bucket_seconds=3600, buckets=3)
    assert users.requests == {"ann": [2, 0, 0], "ben": [0, 1, 1]}
    assert users.cost == {"ann": [0.75, 0.0, 0.0], "ben": [0.0, 0.0, 0.0]}
    models = time_series(store.engine, by="model", start=start, bucket_seconds=3600, buckets=3)
    assert models.requests == {"p/m1": [1, 0, 1], "p/m2": [1, 0, 0], "cached": [0, 1, 0]}
    by_pair = {(r.user, r.model): r for r in totals(store.engine, since=start)}
    assert by_pair[("ben", "p/m1")].errors == 1 and by_pair[("ann", "p/m1")].requests == 2

    # Spend against budgets counts UTC days and months, like the budget checks.
    now = start  # 2023-11-14 22:13:20 UTC
    store.create_key("cat", budget_daily=2.0)
    revoked, _ = store.create_key("cat")
    store.revoke_key(revoked)
    cat = store.ensure_user("cat", budget_daily=2.0)
    spend = [(now - 60, 1.0), (day_start(now) - 60, 2.0), (month_start(now) - 60, 4.0)]
    store.write_audit([{"request_id": f"s{i}", "ts": ts, "user_id": cat, "user_name": "cat", "status": 200, "cost": c}
                       for i, (ts, c) in enumerate(spend)])
    row = next(u for u in spend_by_user(store.engine, now=now) if u.name == "cat")
    assert (row.spent_today, row.spent_month, row.active_keys) == (1.0, 3.0, 1)
    assert row.daily_share == 0.5 and row.monthly_share is None


def test_chart_geometry_and_money():
    assert [format_money(v) for v in (0, 0.000414, 0.000828, 0.5, 12.345, 4321.9)] == [
        "$0", "$0.000414", "$0.000828", "$0.50", "$12.35", "$4,322"]
    series = {f"u{i}": [float(i), 0.0] for i in range(1, 10)}
    chart = stacked_bars("t", [0.0, 3600.0], series, money=False, bucket_format="%H:00")
    assert [name for name, _, _ in chart.legend][:2] == ["u9", "u8"] and chart.legend[-1][0] == "3 others"
    assert len(chart.bars) == 7  # six named series and "others", all in the first bucket
    assert abs(sum(b.height for b in chart.bars) - 45 * chart.plot_height / float(chart.y_ticks[-1][1])) < 0.01
    assert stacked_bars("t", [0.0], {}, money=True, bucket_format="%H").empty


# -- sessions in the database, shared by processes ------------------------------------------------


def two_dashboards(store: Store, **options):
    """Two dashboard apps, each on its own Store over one database: two worker processes."""
    from starlette.testclient import TestClient

    from engine.web.dashboard import dashboard_app

    other = Store(store.url, key_secret=store._key_secret)  # one deployment: one server secret
    clients = [TestClient(dashboard_app(s, SimpleNamespace(), **options), follow_redirects=False) for s in (store, other)]
    return clients, other


def test_a_session_from_one_process_works_in_another_until_logout(query_store):
    from engine.web.dashboard import SESSION_COOKIE

    admin, _ = query_store.create_key("root", role="admin")
    (a, b), other = two_dashboards(query_store)
    try:
        assert a.post("/login", data={"key": admin}).status_code == 303
        cookie = a.cookies[SESSION_COOKIE]
        b.cookies.set(SESSION_COOKIE, cookie)
        page = b.get("/keys")  # the other process never saw the login
        assert page.status_code == 200 and "root (admin)" in page.text
        token = CSRF.search(page.text).group(1)
        assert token == CSRF.search(a.get("/keys").text).group(1)  # one form token for the session
        created = b.post("/keys", data={"user": "made-on-b", "csrf": token})
        assert created.status_code == 201

        assert b.post("/logout", data={"csrf": token}).status_code == 303
        assert a.cookies[SESSION_COOKIE] == cookie  # a still sends it, and is refused: logged out everywhere
        assert a.get("/keys").status_code == 303 and a.get("/").status_code == 303
    finally:
        a.close()
        b.close()
        other.close()


def test_a_session_ends_everywhere_when_its_key_is_revoked_in_another_process(query_store):
    from engine.web.dashboard import SESSION_COOKIE

    admin, info = query_store.create_key("root", role="admin")
    (a, b), other = two_dashboards(query_store)
    try:
        a.post("/login", data={"key": admin})
        b.cookies.set(SESSION_COOKIE, a.cookies[SESSION_COOKIE])
        assert b.get("/").status_code == 200
        assert other.revoke_key(info.lookup)
        assert a.get("/").status_code == 303 and b.get("/").status_code == 303
        with query_store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM dashboard_sessions")).scalar_one() == 0
    finally:
        a.close()
        b.close()
        other.close()


def test_sessions_expire_after_8_hours_and_expired_ones_are_purged(query_store):
    from engine.web.dashboard import Sessions

    now = [1_700_000_000.0]
    sessions = Sessions(query_store, clock=lambda: now[0])
    elsewhere = Sessions(Store(query_store.url, key_secret=query_store._key_secret), clock=lambda: now[0])
    try:
        root = query_store.verify_key(query_store.create_key("root", role="admin")[0])
        first, session = sessions.create(root)
        assert session.expires == now[0] + 8 * 3600
        now[0] += 8 * 3600 - 1
        found = elsewhere.get(first)
        assert (found.principal.user_name, found.principal.key_id, found.csrf) == ("root", root.key_id, session.csrf)
        second, _ = sessions.create(root)
        now[0] += 1
        assert elsewhere.get(first) is None  # expired: refused and deleted
        assert elsewhere.get(second) is not None and sessions.count() == 1
        now[0] += 8 * 3600
        assert sessions.count() == 0
        third, _ = elsewhere.create(root)  # creating one deletes the expired rows
        with query_store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM dashboard_sessions")).scalar_one() == 1
        assert sessions.get(third) is not None
    finally:
        elsewhere.store.close()


def test_a_dashboard_clock_expires_its_sessions(query_store):
    from starlette.testclient import TestClient

    from engine.web.dashboard import dashboard_app

    now = [1_700_000_000.0]
    admin, _ = query_store.create_key("root", role="admin")
    with TestClient(dashboard_app(query_store, SimpleNamespace(), clock=lambda: now[0]), follow_redirects=False) as ui:
        assert ui.post("/login", data={"key": admin}).status_code == 303
        now[0] += 8 * 3600 - 1
        assert ui.get("/keys").status_code == 200
        now[0] += 1
        assert ui.get("/keys").status_code == 303


def test_live_sessions_are_capped_by_dropping_the_oldest(query_store):
    from engine.web.dashboard import Sessions

    now = [1_700_000_000.0]
    sessions = Sessions(query_store, clock=lambda: now[0], limit=3)
    root = query_store.verify_key(query_store.create_key("root", role="admin")[0])
    ids = []
    for _ in range(5):
        ids.append(sessions.create(root)[0])
        now[0] += 1
    assert [sessions.get(i) is not None for i in ids] == [False, False, True, True, True]
    assert sessions.count() == 3


def test_the_database_holds_only_a_digest_of_the_session_id(query_store):
    from engine.web.dashboard import Sessions

    sessions = Sessions(query_store)
    root = query_store.verify_key(query_store.create_key("root", role="admin")[0])
    session_id, session = sessions.create(root)
    with query_store.engine.connect() as conn:
        (row,) = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM dashboard_sessions"))]
    assert row["digest"] == hashlib.sha256(session_id.encode()).hexdigest()
    assert (row["user_name"], row["role"], row["key_id"], row["csrf"]) == ("root", "admin", root.key_id, session.csrf)
    assert all(session_id not in str(value) for value in row.values())
    sessions.drop(session_id)
    assert sessions.get(session_id) is None and sessions.count() == 0


# -- in a real browser ----------------------------------------------------------------------------


def test_browser_login_usage_create_and_revoke(dash, upstream, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    expect = sync_api.expect

    for _ in range(2):
        upstream.reply_fixture("anthropic", "messages_text.json")
        response = httpx.post(f"{dash.url}/v1/chat/completions", json=CHAT, headers=bearer(dash.keys["mia"]))
        assert response.status_code == 200, response.text
    wait_for_usage(dash, "mia", 2)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(f"{dash.ui}/")
            expect(page).to_have_url(f"{dash.ui}/login")

            page.fill("#key", dash.keys["mia"])
            page.click("button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("not an admin key")
            assert not page.context.cookies()

            page.fill("#key", dash.keys["root"])
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{dash.ui}/")
            cookie = next(c for c in page.context.cookies() if c["name"] == "gaud_dashboard")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != dash.keys["root"]

            # mia's two requests: in the totals table and the charts' legends.
            row = (page.locator("#totals tbody tr")
                   .filter(has=page.locator("td.user", has_text=re.compile(r"^mia$")))
                   .filter(has=page.locator("td.model", has_text="anthropic/claude-sonnet-4-20250514")))
            expect(row).to_have_count(1)
            expect(row.locator("td.requests")).to_have_text("2")
            expect(row.locator("td.cost")).to_have_text(format_money(2 * COST))
            expect(page.locator("#requests-24h")).not_to_have_text("0")
            expect(page.locator("figure.chart ul.legend").first).to_contain_text("mia")
            assert page.locator("figure.chart svg rect[fill]").count() > 0
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

            page.click("nav >> text=Keys")
            expect(page).to_have_url(f"{dash.ui}/keys")
            page.fill("#create-key input[name=user]", "browser-bot")
            page.select_option("#create-key select[name=role]", "member")
            page.fill("#create-key input[name=budget_daily]", "1.5")
            page.click("#create-key button[type=submit]")
            new_key = page.locator("#new-key").inner_text().strip()
            assert KEY_SHAPE.fullmatch(new_key)
            lookup = new_key[len(KEY_PREFIX):len(KEY_PREFIX) + 12]
            expect(page.locator(f"#key-{lookup} .status")).to_have_text("active")

            upstream.reply_fixture("anthropic", "messages_text.json")
            assert httpx.post(f"{dash.url}/v1/chat/completions", json=CHAT, headers=bearer(new_key)).status_code == 200

            page.goto(f"{dash.ui}/keys")  # shown once: a fresh look no longer has it
            assert new_key not in page.content()
            page.locator(f"#key-{lookup} button", has_text="Revoke").click()
            expect(page.locator("#notice")).to_contain_text("revoked")
            expect(page.locator(f"#key-{lookup} .status")).to_contain_text("revoked")
            refused = httpx.post(f"{dash.url}/v1/chat/completions", json=CHAT, headers=bearer(new_key))
            assert refused.status_code == 401

            page.click("nav >> text=Health")
            expect(page.locator("#validation")).to_contain_text("ok")
            expect(page.locator("#providers")).to_contain_text("anthropic")

            page.click("text=Log out")
            expect(page).to_have_url(f"{dash.ui}/login")
            page.goto(f"{dash.ui}/keys")
            expect(page).to_have_url(f"{dash.ui}/login")
        finally:
            browser.close()
