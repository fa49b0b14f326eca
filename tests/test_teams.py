"""Teams through a real `gaud-engine serve` with auth on and the openai SDK as the client (issue 25,
item 1): 50 concurrent requests from two users of one team against a team budget that pays for
about five (once with the in-process budgets, once with Redis); a team's rpm bucket shared by its
members; the team's model allow-list over each key's; per-team totals in `gaud-engine usage`.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest

from engine.accounts.store import Store
from engine.accounts.teams import create_team, get_team, set_user_team

from .conftest import ROOT, audit_rows, provider_env, spec_tree, start_gateway
from .test_budgets_hold import CHAT_COST, CHAT_ESTIMATE, JAPANESE, _redis_url

N = 50
TEAM_BUDGET = 5.5 * CHAT_COST
REFUSAL = re.compile(
    r"The daily budget of \$(?P<limit>[\d.]+) for team 'crew' (is spent|cannot cover this request): "
    r"\$(?P<used>[\d.]+) used, \$(?P<reserved>[\d.]+) reserved by requests in flight, "
    r"\$(?P<estimate>[\d.]+) estimated for this request\.$"
)
REPLY = {"id": "msg_team", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
         "content": [{"type": "text", "text": "明日の満潮は六時十二分です。"}], "stop_reason": "end_turn",
         "stop_sequence": None, "usage": {"input_tokens": 600, "output_tokens": 24}}
HELLO = [{"role": "user", "content": "Hello"}]


def _gateway(tmp_path, upstream_url: str, store_setup, **env_extra: str):  # type: ignore[no-untyped-def]
    env = {"GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")), "GAUD_AUTH_ENABLED": "true",
           **provider_env(upstream_url), **env_extra}
    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    store.migrate()
    try:
        made = store_setup(store)
    finally:
        store.close()
    return start_gateway(env, tmp_path / "gateway.log"), made


@pytest.fixture(params=["memory", "redis"])
def crew(request, fake_upstream_server, upstream, tmp_path):
    """A gateway where `ann` and `ben` (no budgets of their own) share team `crew`'s daily budget."""

    def setup(store: Store) -> dict[str, Any]:
        team = create_team(store, {"name": "crew", "budget_daily": TEAM_BUDGET})
        keys = {name: store.create_key(name)[0] for name in ("ann", "ben")}
        for name in keys:
            set_user_team(store, name, "crew")
        return {"keys": keys, "team_id": team.id}

    extra = {"GAUD_REDIS_URL": _redis_url()} if request.param == "redis" else {}
    running, made = _gateway(tmp_path, fake_upstream_server.url, setup, **extra)
    yield running, made
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(10)


def _burst(url: str, keys: dict[str, str], body: dict[str, Any]) -> list[Any]:
    """N concurrent chat requests, alternating between the two users' keys."""

    async def burst() -> list[Any]:
        clients = [openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
                   for key in keys.values()]
        try:
            return await asyncio.gather(*(
                clients[i % 2].chat.completions.create(**body, extra_headers={"x-request-id": f"team-{i:02d}"})
                for i in range(N)), return_exceptions=True)
        finally:
            for client in clients:
                await client.close()

    return asyncio.run(burst())


def test_two_members_cannot_overrun_their_team_budget(crew, upstream, tmp_path):
    running, made = crew
    for _ in range(N):
        upstream.reply(body=json.dumps(REPLY).encode(), delay=0.2)  # the served ones overlap
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": JAPANESE}], "max_tokens": 24}
    results = _burst(running.url, made["keys"], body)
    served = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert 1 <= len(served) <= 6, f"{len(served)} served"
    assert len(upstream.requests) == len(served)  # a refused request never reaches the provider
    for error in refused:
        # The same kind as a user budget's refusal: 429 insufficient_quota / budget_exceeded, naming the team.
        assert isinstance(error, openai.RateLimitError), repr(error)
        found_error = error.response.json()["error"]
        assert (found_error["type"], found_error["code"]) == ("insufficient_quota", "budget_exceeded")
        found = REFUSAL.match(found_error["message"])
        assert found, found_error["message"]
        limit, used, reserved, asked = (float(found[k]) for k in ("limit", "used", "reserved", "estimate"))
        assert limit == pytest.approx(TEAM_BUDGET, abs=1e-8) and asked == pytest.approx(CHAT_ESTIMATE, abs=1e-8)
        assert used + reserved + asked > limit
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(20) == 0
    rows = audit_rows(tmp_path)
    assert len(rows) == N  # every request audited, with the team it was made in
    assert {r["team_id"] for r in rows} == {made["team_id"]}
    assert {r["user_name"] for r in rows} == {"ann", "ben"}
    assert sorted(r["status"] for r in rows) == sorted([200] * len(served) + [429] * len(refused))
    total = sum(r["cost"] for r in rows)
    assert total == pytest.approx(len(served) * CHAT_COST)
    assert total <= TEAM_BUDGET + CHAT_COST  # the guarantee: at most one request's cost over


@pytest.fixture
def rules(fake_upstream_server, upstream, tmp_path):
    """Team `ops` (6 requests a minute for all members, models smart and claude-*): `ann` with a key
    allowed every model, `ben` with a key allowed `claude-*` and `gpt-*`; `solo` has no team."""

    def setup(store: Store) -> dict[str, str]:
        create_team(store, {"name": "ops", "rpm_limit": 3, "models": "smart,claude-*"})
        keys = {"ann": store.create_key("ann")[0], "ben": store.create_key("ben", models=("claude-*", "gpt-*"))[0],
                "solo": store.create_key("solo", models=("gpt-*",))[0], "root": store.create_key("root", role="admin")[0]}
        set_user_team(store, "ann", "ops")
        set_user_team(store, "ben", "ops")
        return keys

    running, keys = _gateway(tmp_path, fake_upstream_server.url, setup)
    yield running, keys
    running.process.terminate()
    running.process.wait(10)


def _chat(url: str, key: str, model: str = "claude-sonnet-4") -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": HELLO},
                      headers={"authorization": f"Bearer {key}"}, timeout=20)


def test_the_team_allow_list_constrains_every_member_key(rules, upstream):
    running, keys = rules
    # ben's key allows gpt-*, his team does not: the team refuses, before any upstream call.
    refused = _chat(running.url, keys["ben"], "gpt-4o-mini")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert refused.json()["error"]["message"] == "The team 'ops' may not call the model 'gpt-4o-mini'."
    # ann's key allows everything, her team does not allow gpt-*.
    assert _chat(running.url, keys["ann"], "gpt-4o-mini").status_code == 403
    # The team allows smart, ben's key does not: the key refuses.
    key_refusal = _chat(running.url, keys["ben"], "smart")
    assert key_refusal.json()["error"]["message"] == "This API key may not call the model 'smart'."
    assert upstream.requests == []
    # /v1/models lists only what the key and the team both allow.
    listed = httpx.get(f"{running.url}/v1/models", headers={"authorization": f"Bearer {keys['ben']}"}).json()
    ids = [m["id"] for m in listed["data"]]
    assert ids and all(i.startswith("claude-") or "/claude-" in i for i in ids)
    solo = httpx.get(f"{running.url}/v1/models", headers={"authorization": f"Bearer {keys['solo']}"}).json()
    assert any(m["id"].startswith("gpt-") for m in solo["data"])  # no team: only the key's list applies


def test_the_team_rpm_is_one_bucket_its_members_share(rules, upstream):
    running, keys = rules
    for _ in range(3):
        upstream.reply_fixture("anthropic", "messages_text.json")
    statuses = [_chat(running.url, keys[name]).status_code for name in ("ann", "ben", "ann")]
    assert statuses == [200, 200, 200]
    refused = _chat(running.url, keys["ben"])  # ben made one request; the team made three
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert error["message"].startswith("Rate limit reached for team 'ops': 3 requests/min.")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.requests) == 3
    assert _chat(running.url, keys["solo"], "gpt-4o-mini").status_code != 429  # no team: not in the bucket
    # The dashboard overview totals the team's four requests (the refused one included; solo's is no team's).
    with httpx.Client(base_url=running.url, timeout=20) as ui:
        assert ui.post("/ui/login", data={"key": keys["root"]}).status_code == 303
        deadline = time.monotonic() + 10
        while not re.search(r'<td class="team">ops</td><td class="num requests">4</td>', page := ui.get("/ui/").text):
            assert time.monotonic() < deadline, page  # the audit writer batches: poll until the rows are in
            time.sleep(0.05)
        assert page.count('<td class="team">') == 1


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'gaud.db'}", "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "engine", *args], check=False, capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)


def _audit(user_id: int, user: str, team_id: int | None, cost: float, ts: float) -> dict[str, Any]:
    return {"request_id": f"r-{user}-{ts}", "ts": ts, "user_id": user_id, "user_name": user, "team_id": team_id,
            "deployment": "anthropic/claude-sonnet-4", "status": 200, "prompt_tokens": 10, "completion_tokens": 2,
            "cost": cost}


def test_usage_has_per_team_totals_and_a_move_keeps_past_spend_with_the_old_team(tmp_path):
    assert _cli(tmp_path, "teams", "create", "red", "--budget-daily", "1").returncode == 0
    assert _cli(tmp_path, "teams", "create", "blue").returncode == 0
    made = _cli(tmp_path, "keys", "create", "--user", "ann", "--team", "red")
    assert made.returncode == 0, made.stderr
    assert "(ann, team red, member;" in made.stdout
    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    try:
        red, blue = get_team(store, "red"), get_team(store, "blue")
        ann = store.ensure_user("ann")
        now = time.time()
        store.write_audit([_audit(ann, "ann", red.id, 0.25, now - 60), _audit(ann, "ann", red.id, 0.5, now - 30)])
        lookup = store.list_keys()[0].lookup
    finally:
        store.close()
    moved = _cli(tmp_path, "keys", "update", f"sk-gaud-{lookup}", "--team", "blue")
    assert moved.returncode == 0, moved.stderr
    assert "(ann, team blue, member;" in moved.stdout
    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    try:
        store.write_audit([_audit(ann, "ann", blue.id, 0.125, time.time())])
        assert store.team_spent_since(red.id, now - 3600) == pytest.approx(0.75)  # did not move with ann
        assert store.team_spent_since(blue.id, now - 3600) == pytest.approx(0.125)
    finally:
        store.close()
    usage = _cli(tmp_path, "usage")
    assert usage.returncode == 0, usage.stderr
    team_lines = usage.stdout.split("\n\n", 1)[1].splitlines()
    assert team_lines[0].split() == ["team", "requests", "prompt", "completion", "cost", "USD"]
    assert [line.split() for line in team_lines[1:]] == [["blue", "1", "10", "2", "0.125000"],
                                                          ["red", "2", "20", "4", "0.750000"]]
    only_red = _cli(tmp_path, "usage", "--team", "red")
    assert "0.750000" in only_red.stdout and "blue" not in only_red.stdout
    listed = _cli(tmp_path, "teams", "list").stdout.splitlines()
    assert listed[1].split()[:4] == ["blue", "1", "0.125/-", "0.125/-"]
    assert listed[2].split()[:4] == ["red", "0", "0.75/1", "0.75/-"]
    missing = _cli(tmp_path, "usage", "--team", "green")
    assert missing.returncode == 1 and "No team named 'green'." in missing.stderr
    # A team with a member cannot be deleted; once empty it can, and its rows stay its own.
    refused = _cli(tmp_path, "teams", "delete", "blue")
    assert refused.returncode == 1 and "has members" in refused.stderr
    assert _cli(tmp_path, "teams", "delete", "red").returncode == 0
    assert f"(deleted team {red.id})" in _cli(tmp_path, "usage").stdout


def test_every_teams_command_has_help(tmp_path):
    for command in (["teams"], ["teams", "create"], ["teams", "list"], ["teams", "update"], ["teams", "delete"]):
        shown = _cli(tmp_path, *command, "--help")
        assert shown.returncode == 0 and "Usage:" in shown.stdout, command
    assert "--team" in _cli(tmp_path, "keys", "create", "--help").stdout
    assert "--team" in _cli(tmp_path, "usage", "--help").stdout
