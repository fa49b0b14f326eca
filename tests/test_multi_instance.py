"""Two gateway processes on one PostgreSQL and one Redis share keys, budgets, rate limits, the
response cache, circuit-breaker state and dashboard sessions. Runs when GAUD_TEST_POSTGRES_URL and
GAUD_TEST_REDIS_URL are set (.ci/run starts both from Debian's packages)."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from engine.accounts.store import Store

from .conftest import TEST_KEY_SECRET, provider_env, spec_tree, start_gateway

PG = os.environ.get("GAUD_TEST_POSTGRES_URL")
REDIS = os.environ.get("GAUD_TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(not (PG and REDIS), reason="needs GAUD_TEST_POSTGRES_URL and GAUD_TEST_REDIS_URL")

HELLO = [{"role": "user", "content": "Hello"}]


def _redis_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def cluster(upstream, tmp_path):
    import redis
    import sqlalchemy as sa

    redis_url = _redis_db(REDIS, 5)
    redis.Redis.from_url(redis_url).flushdb()
    engine = sa.create_engine(PG.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS audit_log, api_keys, credentials, dashboard_sessions, users, schema_migrations CASCADE"))
    engine.dispose()

    tree = spec_tree(tmp_path, retry="false", breaker={"failures": 2, "cooldown": 300})
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["aliases"]["pair"] = {"candidates": [
        {"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
        {"provider": "gemini", "model": "gemini-2.5-flash"},
    ]}
    routes["defaults"]["fallback"] = 'error.kind in ["overloaded", "upstream_5xx"]'
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes))

    store = Store(PG, key_secret=TEST_KEY_SECRET)
    store.migrate()
    keys = {
        "limited": store.create_key("limited", rpm_limit=6)[0],
        "budget": store.create_key("budget", budget_daily=0.05)[0],
        "plain": store.create_key("plain")[0],
        "admin": store.create_key("root", role="admin")[0],
    }
    store.close()
    env = {**provider_env(upstream.url), "GAUD_SPECS_DIR": str(tree), "GAUD_DATABASE_URL": PG,
           "GAUD_REDIS_URL": redis_url, "GAUD_AUTH_ENABLED": "true", "GAUD_SECRET_KEY": TEST_KEY_SECRET}
    gateways = [start_gateway(env, tmp_path / f"gw{i}.log") for i in range(2)]
    yield gateways, keys
    for gw in gateways:
        gw.process.terminate()
        gw.process.wait(10)


def post(gw, key, body, **headers):
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}", **headers}, timeout=20)


def test_keys_rate_limits_cache_and_breakers_are_shared(cluster, upstream):
    (a, b), keys = cluster

    # Keys: created in the shared database, accepted by both instances.
    for gw in (a, b):
        upstream.reply_fixture("gemini", "generate_text.json")
        assert post(gw, keys["plain"], {"model": "gemini-2.5-flash", "messages": HELLO}).status_code == 200

    # Rate limit 6/min for one key, requests alternating between the instances: 6 pass in all.
    for _ in range(6):
        upstream.reply_fixture("gemini", "generate_text.json")
    statuses = [post((a, b)[i % 2], keys["limited"], {"model": "gemini-2.5-flash", "messages": HELLO}).status_code
                for i in range(10)]
    assert statuses.count(200) == 6 and statuses.count(429) == 4

    # Cache: stored by one instance, hit on the other.
    upstream.reply_fixture("gemini", "generate_text.json")
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "cache me"}]}
    assert post(a, keys["plain"], body, **{"x-gaud-cache": "on"}).headers["x-gaud-cache"] == "miss"
    hit = post(b, keys["plain"], body, **{"x-gaud-cache": "on"})
    assert hit.headers["x-gaud-cache"] == "hit"

    # Breaker: two failures on instance A open it; instance B then skips that deployment.
    upstream.clear()
    for _ in range(2):
        upstream.reply_fixture("anthropic", "error_529_overloaded.json")
        upstream.reply_fixture("gemini", "generate_text.json")
        assert post(a, keys["plain"], {"model": "pair", "messages": HELLO}).headers["x-gaud-deployment"] == "gemini/gemini-2.5-flash"
    upstream.clear()
    upstream.reply_fixture("gemini", "generate_text.json")
    served = post(b, keys["plain"], {"model": "pair", "messages": HELLO})
    assert served.headers["x-gaud-deployment"] == "gemini/gemini-2.5-flash"
    assert [r.path for r in upstream.requests] == ["/v1beta/models/gemini-2.5-flash:generateContent"]


def test_budget_holds_across_instances(cluster, upstream):
    (a, b), keys = cluster
    # messages_cache_usage costs $0.013368 on Claude Sonnet 4 (cached reads and writes included);
    # max_tokens 900 makes each reservation ($0.0135 + the prompt estimate) cover that cost. The
    # daily budget of $0.05 pays for 3 such requests: 40 concurrent ones across two instances.
    cost = 0.013368
    for _ in range(40):
        upstream.reply_fixture("anthropic", "messages_cache_usage.json", delay=0.05)
    body = {"model": "claude-sonnet-4", "messages": HELLO, "max_tokens": 900}
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: post((a, b)[i % 2], keys["budget"], body), range(40)))
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(ok) + len(refused) == 40
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert 2 <= len(ok) <= 4
    assert sum(float(r.headers["x-gaud-cost"]) for r in ok) <= 0.05 + cost

    for gw in (a, b):  # stop both: every record is flushed on shutdown
        gw.process.terminate()
        assert gw.process.wait(10) == 0
    store = Store(PG, key_secret=TEST_KEY_SECRET)
    records = list(store.audit_records(user="budget"))
    store.close()
    assert len(records) == 40
    assert sorted(r["status"] for r in records) == sorted(r.status_code for r in results)


def test_a_dashboard_session_opened_on_one_instance_works_on_the_other(cluster):
    (a, b), keys = cluster
    with httpx.Client(base_url=a.url, timeout=20) as on_a, httpx.Client(base_url=b.url, timeout=20) as on_b:
        assert on_a.post("/ui/login", data={"key": keys["admin"]}).status_code == 303
        cookie = on_a.cookies["gaud_dashboard"]
        on_b.cookies.set("gaud_dashboard", cookie)
        page = on_b.get("/ui/keys")
        assert page.status_code == 200 and "root (admin)" in page.text
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert on_b.post("/ui/logout", data={"csrf": token}).status_code == 303
        assert on_a.cookies["gaud_dashboard"] == cookie
        assert on_a.get("/ui/keys").status_code == 303  # logged out on B: refused on A
