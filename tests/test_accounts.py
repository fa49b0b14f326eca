"""Multi-user accounts through a real `gaud-engine serve` process with auth on: keys, admin
routes, budgets under concurrent load, the audit log (also across SIGTERM), the first admin, and
the `keys` and `usage` commands."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from engine.accounts.store import Store, api_keys
from engine.cli.commands import main

from .conftest import RunningGateway, provider_env, spec_tree, start_gateway

M = 1_000_000
KEY_SHAPE = re.compile(r"sk-gaud-[0-9a-f]{12}[A-Za-z0-9_-]{32}")

# messages_text.json reports 18 prompt and 24 completion tokens; at Claude Sonnet 4 prices
# (input $3/M, output $15/M): 18*3 + 24*15 = 54 + 360 = 414 millionths of a dollar.
COST = (18 * 3 + 24 * 15) / M
assert COST == 0.000414
# A 68-character prompt is estimated at 68 // 4 + 1 = 18 tokens, so with max_tokens=24 the budget
# reservation (Gateway.estimate_cost) is exactly the real cost: 18*3 + 24*15 = 414 millionths.
PROMPT = "Summarise the tide table for Brest harbour tomorrow morning, please!"
assert len(PROMPT) == 68
CHAT = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24}
# chat_completion_text.json: 19 prompt, 14 completion tokens at GPT-4o prices ($2.50/M, $10/M):
# 19*2.5 + 14*10 = 47.5 + 140 = 187.5 millionths.
GPT_COST = (19 * 2.5 + 14 * 10) / M


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def auth_env(tmp: Path, upstream_url: str, **extra: str) -> dict[str, str]:
    return {
        "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false", fallback="false")),
        "GAUD_AUTH_ENABLED": "true",
        "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'gaud.db'}",
        **provider_env(upstream_url),
        **extra,
    }


def stop(running: RunningGateway, timeout: float = 20) -> int:
    """SIGTERM, then the exit status once the process is gone (audit records are flushed by then)."""
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
    return running.process.wait(timeout)


def assert_openai_error(response: httpx.Response, status: int, type_: str, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_
    assert set(error) >= {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code


def stored_hashes(db: Path) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sa.select(api_keys.c.hash))]
    finally:
        engine.dispose()


def open_store(db: Path) -> Store:
    store = Store(f"sqlite:///{db}")
    store.migrate()
    return store


# -- one gateway with auth on, shared by the key and budget tests --------------------------------


@pytest.fixture(scope="module")
def accounts(fake_upstream_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accounts")
    store = open_store(tmp / "gaud.db")
    keys = {
        "root": store.create_key("root", role="admin")[0],
        "mia": store.create_key("mia")[0],
        # 9.5 requests' worth: the warning threshold (80% = 7.6 requests) falls between requests.
        "walt": store.create_key("walt", budget_daily=9.5 * COST)[0],
        "carl": store.create_key("carl")[0],
    }
    store.close()
    running = start_gateway(auth_env(tmp, fake_upstream_server.url), tmp / "gateway.log")
    state = SimpleNamespace(url=running.url, running=running, keys=keys, db=tmp / "gaud.db", tmp=tmp)
    yield state
    stop(running)


def test_missing_wrong_and_malformed_keys_get_401(accounts, upstream):
    url = f"{accounts.url}/v1/chat/completions"
    mia = accounts.keys["mia"]
    wrong_secret = mia[:-4] + ("AAAA" if not mia.endswith("AAAA") else "BBBB")
    assert_openai_error(httpx.post(url, json=CHAT), 401, "authentication_error", "missing_api_key")
    for headers in (bearer(wrong_secret), {"x-api-key": wrong_secret}, bearer("sk-gaud-nope"), bearer("sk-not-ours")):
        assert_openai_error(httpx.post(url, json=CHAT, headers=headers), 401, "authentication_error", "invalid_api_key")
    assert_openai_error(httpx.get(f"{accounts.url}/v1/models", headers=bearer(wrong_secret)), 401, "authentication_error")
    assert_openai_error(httpx.get(f"{accounts.url}/admin/keys", headers=bearer(wrong_secret)), 401, "authentication_error")
    assert upstream.requests == []  # nothing reached a provider


def test_member_key_serves_chat_with_its_cost(accounts, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    reply = httpx.post(f"{accounts.url}/v1/chat/completions", json=CHAT, headers=bearer(accounts.keys["mia"]), timeout=20)
    assert reply.status_code == 200, reply.text
    assert float(reply.headers["x-gaud-cost"]) == pytest.approx(0.000414, abs=5e-7)
    assert "x-gaud-budget-warning" not in reply.headers
    upstream.reply_fixture("openai", "chat_completion_text.json")
    reply = httpx.post(f"{accounts.url}/v1/chat/completions", headers={"x-api-key": accounts.keys["mia"]}, timeout=20,
                       json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]})
    assert reply.status_code == 200, reply.text
    assert float(reply.headers["x-gaud-cost"]) == pytest.approx(GPT_COST, abs=5e-7)


def test_member_cannot_use_admin_routes(accounts):
    member = bearer(accounts.keys["mia"])
    lookup = accounts.keys["carl"][8:20]
    for method, path, body in [
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", {"user": "mallory", "role": "admin"}),
        ("POST", f"/admin/keys/{lookup}/revoke", None),
        ("GET", "/admin/usage", None),
        ("GET", "/health?detail=1", None),
    ]:
        response = httpx.request(method, f"{accounts.url}{path}", json=body, headers=member)
        assert_openai_error(response, 403, "permission_error", "admin_required")
    # Nothing was created or revoked.
    listed = httpx.get(f"{accounts.url}/admin/keys", headers=bearer(accounts.keys["root"])).json()["data"]
    assert "mallory" not in {k["user"] for k in listed}
    assert not next(k for k in listed if k["id"] == lookup)["revoked"]


def test_admin_creates_a_key_shown_once_then_revokes_it(accounts, upstream):
    admin = bearer(accounts.keys["root"])
    created = httpx.post(f"{accounts.url}/admin/keys", headers=admin, json={"user": "nina", "budget_daily": 1.5})
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    accounts.keys["nina"] = key
    assert KEY_SHAPE.fullmatch(key)
    assert body["prefix"] == key[:20] and body["id"] == key[8:20]
    assert (body["user"], body["role"], body["budget_daily"], body["revoked"]) == ("nina", "member", 1.5, False)

    # Listing shows prefixes, never a key.
    listed = httpx.get(f"{accounts.url}/admin/keys", headers=admin)
    assert listed.status_code == 200
    for full in accounts.keys.values():
        assert full not in listed.text and full[20:] not in listed.text
    assert {k["prefix"] for k in listed.json()["data"]} >= {k[:20] for k in accounts.keys.values()}

    upstream.reply_fixture("anthropic", "messages_text.json")
    chat = httpx.post(f"{accounts.url}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=20)
    assert chat.status_code == 200, chat.text

    revoked = httpx.post(f"{accounts.url}/admin/keys/{body['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json() == {"revoked": True}
    # Rejected at once, although the gateway had just verified it.
    assert_openai_error(httpx.post(f"{accounts.url}/v1/chat/completions", json=CHAT, headers=bearer(key)), 401,
                        "authentication_error", "invalid_api_key")
    again = httpx.post(f"{accounts.url}/admin/keys/{body['id']}/revoke", headers=admin)
    assert_openai_error(again, 404, "invalid_request_error", "key_not_found")
    bad = httpx.post(f"{accounts.url}/admin/keys", headers=admin, json={"user": "x", "role": "owner"})
    assert_openai_error(bad, 400, "invalid_request_error")


def test_key_revoked_with_the_cli_is_rejected(accounts):
    key = accounts.keys["carl"]
    result = CliRunner().invoke(main, ["keys", "revoke", key[:20]], env={"GAUD_DATABASE_URL": f"sqlite:///{accounts.db}"})
    assert result.exit_code == 0, result.output
    assert result.output == f"revoked {key[:20]}\n"
    assert_openai_error(httpx.get(f"{accounts.url}/v1/models", headers=bearer(key)), 401, "authentication_error")


def test_budget_warning_past_80_percent_then_budget_exceeded(accounts, upstream):
    """walt may spend 9.5 requests' worth a day. Before request k, (k-1) requests are spent:
    request 9 is the first to see spend past 80% (8 / 9.5 = 84%); request 10 would bring spend
    to 10 / 9.5 of the budget, so it is refused."""
    walt = bearer(accounts.keys["walt"])
    warnings = []
    for _ in range(9):
        upstream.reply_fixture("anthropic", "messages_text.json")
        reply = httpx.post(f"{accounts.url}/v1/chat/completions", json=CHAT, headers=walt, timeout=20)
        assert reply.status_code == 200, reply.text
        assert float(reply.headers["x-gaud-cost"]) == pytest.approx(0.000414, abs=5e-7)
        warnings.append(reply.headers.get("x-gaud-budget-warning"))
    assert warnings == [None] * 8 + ["daily=84%"]
    assert "budget warning for user walt: daily=84%" in accounts.running.logs()
    upstream.clear()
    refused = httpx.post(f"{accounts.url}/v1/chat/completions", json=CHAT, headers=walt, timeout=20)
    assert_openai_error(refused, 429, "insufficient_quota", "budget_exceeded")
    assert upstream.requests == []
    # Other users are not affected.
    upstream.reply_fixture("anthropic", "messages_text.json")
    assert httpx.post(f"{accounts.url}/v1/chat/completions", json=CHAT, headers=bearer(accounts.keys["mia"]),
                      timeout=20).status_code == 200


def test_no_key_or_hash_in_any_log_line(accounts):
    stop(accounts.running)
    log = accounts.running.logs()
    assert "Application startup complete" in log
    hashes = stored_hashes(accounts.db)
    assert len(hashes) == 5 and all(h.startswith("hmac-sha256$") for h in hashes)
    for key in accounts.keys.values():
        assert key not in log
        assert key[20:] not in log  # nor its secret part alone
    for stored in hashes:
        assert stored not in log
        assert stored.rsplit("$", 1)[1] not in log  # nor the digest alone
    assert not KEY_SHAPE.search(log)


def test_usage_command_totals_per_user_and_model(accounts):
    stop(accounts.running)  # every audit record is written once the process is gone
    result = CliRunner().invoke(main, ["usage"], env={"GAUD_DATABASE_URL": f"sqlite:///{accounts.db}"})
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split() == ["user", "deployment", "requests", "prompt", "completion", "cached", "cost", "USD"]
    rows = {}
    for line in lines:
        user, deployment, requests, prompt, completion, cached, cost = line.split()
        rows[(user, deployment)] = (int(requests), int(prompt), int(completion), int(cached), cost)
    sonnet, gpt = "anthropic/claude-sonnet-4-20250514", "openai/gpt-4o"
    assert rows == {
        # mia: 2 Sonnet requests (18 + 24 tokens each): 2 * 414 = 828 millionths; one GPT-4o: 187.5.
        ("mia", sonnet): (2, 36, 48, 0, "0.000828"),
        ("mia", gpt): (1, 19, 14, 0, "0.000188"),
        # nina: one request before her key was revoked.
        ("nina", sonnet): (1, 18, 24, 0, "0.000414"),
        # walt: 9 served (9 * 414 = 3_726 millionths) and 1 refused for budget before any deployment.
        ("walt", sonnet): (9, 162, 216, 0, "0.003726"),
        ("walt", "-"): (1, 0, 0, 0, "0.000000"),
    }
    only = CliRunner().invoke(main, ["usage", "--user", "walt"], env={"GAUD_DATABASE_URL": f"sqlite:///{accounts.db}"})
    assert [line.split()[0] for line in only.output.splitlines()[1:]] == ["walt", "walt"]
    store = open_store(accounts.db)
    try:
        refused = [r for r in store.audit_records(user="walt") if r["status"] != 200]
        assert [(r["status"], r["error_kind"], r["cost"]) for r in refused] == [(429, "budget_exceeded", 0.0)]
    finally:
        store.close()


# -- the keys command ----------------------------------------------------------------------------


def test_keys_command_create_list_revoke_never_prints_full_keys(tmp_path):
    env = {"GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "list"], env=env).output == "no keys\n"
    created = runner.invoke(main, ["keys", "create", "--user", "olga", "--budget-daily", "5"], env=env)
    assert created.exit_code == 0, created.output
    (key,) = KEY_SHAPE.findall(created.output)
    assert created.output == f"Key {key[:20]} (olga, member; models: all; expires: never), shown once:\n  {key}\n"
    admin = runner.invoke(main, ["keys", "create", "--user", "root", "--role", "admin", "--budget-monthly", "100"], env=env)
    (admin_key,) = KEY_SHAPE.findall(admin.output)

    listed = runner.invoke(main, ["keys", "list"], env=env)
    assert listed.exit_code == 0
    for full in (key, admin_key):
        assert full not in listed.output and full[20:] not in listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["prefix", "user", "role", "status", "today", "month", "rpm", "tpm", "created",
                                "last_used", "expires", "models", "label"]
    # today/month: the user's spend / its budget; created is the minute the key was made.
    first, second = lines[1].split(), lines[2].split()
    assert first[:8] + first[9:] == [key[:20], "olga", "member", "active", "0/5", "0/-", "-", "-", "never", "never", "all", "-"]
    assert second[:8] + second[9:] == [admin_key[:20], "root", "admin", "active", "0/-", "0/100", "-", "-", "never", "never",
                                       "all", "-"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", first[8])

    assert runner.invoke(main, ["keys", "revoke", key[:20]], env=env).exit_code == 0
    assert runner.invoke(main, ["keys", "list"], env=env).output.splitlines()[1].split()[3] == "revoked"
    again = runner.invoke(main, ["keys", "revoke", key[:20]], env=env)
    assert again.exit_code == 1 and "no active key" in again.output
    hashes = stored_hashes(tmp_path / "cli.db")
    assert len(hashes) == 2 and all(h.startswith("hmac-sha256$") for h in hashes)


# -- the first admin -----------------------------------------------------------------------------


def test_first_start_prints_an_admin_key_once(fake_upstream_server, tmp_path):
    env = auth_env(tmp_path, fake_upstream_server.url)
    first = start_gateway(env, tmp_path / "first.log")
    try:
        log = first.logs()
        assert log.count("Created the first admin user") == 1
        (key,) = KEY_SHAPE.findall(log)
        listed = httpx.get(f"{first.url}/admin/keys", headers=bearer(key))
        assert listed.status_code == 200
        assert [(k["user"], k["role"]) for k in listed.json()["data"]] == [("admin", "admin")]
    finally:
        stop(first)
    second = start_gateway(env, tmp_path / "second.log")
    try:
        assert httpx.get(f"{second.url}/admin/keys", headers=bearer(key)).status_code == 200
        assert "first admin" not in second.logs() and not KEY_SHAPE.search(second.logs())
    finally:
        stop(second)
    store = open_store(tmp_path / "gaud.db")
    try:
        assert store.count_users() == 1 and len(store.list_keys()) == 1
    finally:
        store.close()


# -- authentication in process ------------------------------------------------------------------


# -- budgets under concurrent load ---------------------------------------------------------------


async def _fire(url: str, bodies: list[tuple[str, dict]], headers: dict[str, str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        return await asyncio.gather(*(
            client.post("/v1/chat/completions", json=body, headers={**headers, "x-request-id": rid})
            for rid, body in bodies
        ))


def test_concurrent_requests_cannot_overrun_a_budget(fake_upstream_server, upstream, tmp_path):
    """50 parallel requests, a daily budget of 10 requests' worth: at most 11 are served (the
    reservation is the real cost here, so exactly 10), the rest get budget_exceeded, and every
    request has exactly one audit record."""
    store = open_store(tmp_path / "gaud.db")
    key, _ = store.create_key("loader", budget_daily=10 * COST)
    store.close()
    for _ in range(50):
        upstream.reply_fixture("anthropic", "messages_text.json", delay=0.2)  # all 50 overlap
    running = start_gateway(auth_env(tmp_path, fake_upstream_server.url), tmp_path / "gateway.log")
    try:
        ids = [f"load-{i:02d}" for i in range(50)]
        responses = asyncio.run(_fire(running.url, [(rid, CHAT) for rid in ids], bearer(key)))
    finally:
        stop(running)
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert 10 <= len(served) <= 11
    for response in refused:
        assert_openai_error(response, 429, "insufficient_quota", "budget_exceeded")
    assert all(float(r.headers["x-gaud-cost"]) == pytest.approx(0.000414, abs=5e-7) for r in served)
    assert len(upstream.requests) == len(served)
    assert sorted(r.headers["x-request-id"] for r in responses) == ids

    store = open_store(tmp_path / "gaud.db")
    try:
        records = store.audit_records()
        spent = store.spent_since(store.ensure_user("loader"), 0)
    finally:
        store.close()
    assert len(records) == 50
    assert sorted(r["request_id"] for r in records) == ids
    by_status = {s: [r for r in records if r["status"] == s] for s in (200, 429)}
    assert len(by_status[200]) == len(served) and len(by_status[429]) == 50 - len(served)
    assert all(r["error_kind"] == "budget_exceeded" and r["cost"] == 0 for r in by_status[429])
    assert spent == pytest.approx(len(served) * COST)
    assert spent <= 10 * COST + COST


# -- SIGTERM while requests are in flight --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_sigterm_during_load_keeps_every_answered_request_audited(fake_upstream_server, upstream, tmp_path, stream):
    """SIGTERM while requests wait on a slow upstream: the gateway drains them, every request
    that got a complete response has its audit record, and the process exits 0.

    One kind of request per run: the fake upstream replays its queue in arrival order."""
    store = open_store(tmp_path / "gaud.db")
    key, _ = store.create_key("steady")
    store.close()
    n = 30
    for _ in range(n):
        if stream:  # stream_text.sse: 14 in, 19 out: 14*3 + 19*15 = 327 millionths
            upstream.reply_fixture("anthropic", "stream_text.sse", delay=0.3, frame_delay=0.02)
        else:
            upstream.reply_fixture("anthropic", "messages_text.json", delay=0.3)
    expected_cost = 0.000327 if stream else COST
    running = start_gateway(auth_env(tmp_path, fake_upstream_server.url), tmp_path / "gateway.log")
    assert httpx.get(f"{running.url}/v1/models", headers=bearer(key)).status_code == 200

    answered: dict[str, float] = {}
    signalled: list[float] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        rid = f"term-{i:02d}"
        try:
            async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": stream},
                                     headers={**bearer(key), "x-request-id": rid}) as response:
                text = (await response.aread()).decode()
        except httpx.TransportError:
            return  # refused or cut off: no complete response, nothing to check
        if response.status_code == 200 and (not stream or text.rstrip().endswith("data: [DONE]")):
            assert response.headers["x-request-id"] == rid
            answered[rid] = time.monotonic()

    async def terminate_when_busy() -> None:
        # Polls: the fake upstream only appends to a list, there is no event to wait on.
        while len(upstream.requests) < n // 2:  # noqa: ASYNC110 (half of them are waiting on the slow upstream)
            await asyncio.sleep(0.01)
        signalled.append(time.monotonic())
        running.process.send_signal(signal.SIGTERM)

    async def load() -> None:
        async with httpx.AsyncClient(base_url=running.url, timeout=30,
                                     limits=httpx.Limits(max_connections=n)) as client:
            requests = [asyncio.create_task(one(client, i)) for i in range(n)]
            await asyncio.wait_for(terminate_when_busy(), 20)
            await asyncio.gather(*requests)

    try:
        asyncio.run(load())
        status = running.process.wait(20)
    finally:
        stop(running)
    assert answered, "no request got a response"
    assert any(t > signalled[0] for t in answered.values()), "no request was in flight at SIGTERM"

    store = open_store(tmp_path / "gaud.db")
    try:
        audited = {r["request_id"]: r for r in store.audit_records()}
    finally:
        store.close()
    missing = sorted(set(answered) - set(audited))
    assert not missing, f"answered but not audited: {missing}"
    for rid in answered:
        record = audited[rid]
        assert (record["status"], record["stream"], record["user_name"]) == (200, stream, "steady"), rid
        assert record["cost"] == pytest.approx(expected_cost), rid
    assert status == 0, f"gateway exited with {status} after SIGTERM:\n{running.logs()[-2000:]}"
