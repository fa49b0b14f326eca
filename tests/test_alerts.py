"""Alerts (issue 25, item 3): webhook events for budget thresholds, breaker changes, upstream
credential refusals and audit spills; deduplicated, signed, retried with backoff, off the hot path.

A local receiver (aiohttp on 127.0.0.1, in the test's event loop) records every delivery. The
end-to-end tests run a real `gaud-engine serve` over the fake upstream with the openai SDK as the
client; the breaker, retry and queue tests run in-process with injected clocks and sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from engine import load_catalog
from engine.accounts.audit import AuditWriter
from engine.accounts.budgets import Budgets
from engine.accounts.store import Principal, Store
from engine.alerts.config import Webhook, webhooks_from_settings
from engine.alerts.events import Event, budget_crossings
from engine.alerts.formats import render
from engine.alerts.sink import AlertSink
from engine.errors import GatewayError
from engine.metrics import Metrics
from engine.pipeline.gateway import Gateway
from engine.pipeline.upstream import Upstream

from .conftest import ROOT, RunningGateway, provider_env, spec_tree, start_gateway
from .test_resilience import FakeClock

M = 1_000_000
SECRET = "hook-secret-7f3a"
# gpt-4o ($2.5/M in, $10/M out): the upstream reports 1000 prompt tokens for a two-word prompt, so
# the real cost is far above the estimate and spend can cross 100 % of a budget.
COST = (1000 * 2.5 + 10 * 10) / M
HI = [{"role": "user", "content": "Hi there"}]
OPENAI_REPLY = json.loads((Path(__file__).parent / "providers/openai/replies/chat_completion_text.json").read_text())


def costly_reply() -> dict[str, Any]:
    return {**OPENAI_REPLY, "usage": {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010}}


class Receiver:
    """Records each delivery (path, headers, body); answers `status`; with `hold`, the first
    delivery waits for it before answering."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((request.path, dict(request.headers), body))
        self.arrived.set()
        if self.hold is not None and len(self.got) == 1:
            await self.hold.wait()
        return web.Response(status=self.status)

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(body) for p, _, body in self.got if path is None or p == path]


@asynccontextmanager
async def receiving(status: int = 200) -> AsyncIterator[Receiver]:
    receiver = Receiver(status)
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        await runner.cleanup()


def verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (docs/alerts.md): HMAC-SHA256 of `timestamp.body` under the secret."""
    signed = headers["x-gaud-timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["x-gaud-signature"])


async def stop(running: RunningGateway) -> None:
    """SIGTERM: the gateway drains its alert queue before it exits."""
    running.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(running.process.wait, 20) == 0


def sink_for(receiver: Receiver, **options: Any) -> AlertSink:
    clock = FakeClock()
    options = {"clock": clock, "sleep": clock.sleep, "rng": lambda: 1.0, **options}
    return AlertSink([Webhook(f"{receiver.url}/hook", SECRET.encode())], **options)


# -- end to end: a real gateway --------------------------------------------------------------------
def test_each_budget_threshold_is_one_signed_event(tmp_path: Path, fake_upstream_server, upstream) -> None:
    """A daily budget of 9.5 requests: the 8th crosses 80 %, the 10th 100 %, later requests (served
    or refused) repeat nothing; the JSON webhook's events verify with the secret (read from a
    NAME_FILE) and not with another; the Slack webhook gets the same events as `text`."""
    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    store.migrate()
    key = store.create_key("alice", budget_daily=9.5 * COST)[0]
    store.close()
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    for _ in range(12):
        upstream.reply(json=costly_reply())

    async def scenario() -> None:
        async with receiving() as receiver:
            hooks = [{"url": f"{receiver.url}/json", "secret_env": "HOOK_SECRET", "events": ["budget.threshold"]},
                     {"url": f"{receiver.url}/slack/T000/B000/XXXX", "format": "slack", "timeout": 2}]
            env = {"GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
                   "GAUD_AUTH_ENABLED": "true", "GAUD_ALERTS_WEBHOOKS": json.dumps(hooks),
                   "HOOK_SECRET_FILE": str(tmp_path / "hook.secret"), **provider_env(fake_upstream_server.url)}
            running = await asyncio.to_thread(start_gateway, env, tmp_path / "gateway.log")
            served = refused = 0
            async with openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0) as client:
                for _ in range(12):
                    try:
                        reply = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI, max_tokens=10)
                        assert float(reply.headers["x-gaud-cost"]) == pytest.approx(COST)
                        served += 1
                    except openai.RateLimitError:
                        refused += 1
            await stop(running)
        assert (served, refused) == (10, 2)
        events = receiver.events("/json")
        assert [(e["kind"], e["data"]["threshold"]) for e in events] == [("budget.threshold", 0.8), ("budget.threshold", 1.0)]
        first = events[0]
        assert first["data"] | {"spent": None} == {"scope": "user", "name": "alice", "period": "daily", "limit": 9.5 * COST,
                                                   "threshold": 0.8, "spent": None, "period_start": first["data"]["period_start"]}
        assert first["data"]["spent"] == pytest.approx(8 * COST)
        assert first["summary"].startswith("User alice passed 80% of the daily budget")
        json_deliveries = [(h, b) for p, h, b in receiver.got if p == "/json"]
        assert all(verifies(SECRET, h, b) for h, b in json_deliveries)
        assert not any(verifies(SECRET + "x", h, b) for h, b in json_deliveries)
        slack = receiver.events("/slack/T000/B000/XXXX")
        assert [s["text"] for s in slack] == [e["summary"] for e in events]
        assert slack[0]["blocks"][0] == {"type": "section", "text": {"type": "plain_text", "text": events[0]["summary"]}}
        assert all("x-gaud-signature" not in h for p, h, _ in receiver.got if p.startswith("/slack"))
        everything = b"".join(body for _, _, body in receiver.got) + (tmp_path / "gateway.log").read_bytes()
        assert key.encode() not in everything and SECRET.encode() not in everything
        assert b"XXXX" not in (tmp_path / "gateway.log").read_bytes()  # a webhook URL's path is a secret

    asyncio.run(scenario())


def test_a_hanging_receiver_delays_no_request_and_one_401_is_one_event(tmp_path: Path, fake_upstream_server, upstream) -> None:
    """The receiver holds the first delivery (upstream.auth_failed) until the test lets it go; every
    request after it completes meanwhile. A second 401 within the interval is not sent again."""
    refusal = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}
    upstream.reply(status=401, json=refusal)
    for _ in range(5):
        upstream.reply(json=OPENAI_REPLY)
    upstream.reply(status=401, json=refusal)

    async def scenario() -> None:
        async with receiving() as receiver:
            receiver.hold = asyncio.Event()
            env = {"GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
                   "GAUD_AUTH_ENABLED": "false", "GAUD_ALERTS_WEBHOOKS": json.dumps([{"url": f"{receiver.url}/hook"}]),
                   **provider_env(fake_upstream_server.url)}
            running = await asyncio.to_thread(start_gateway, env, tmp_path / "gateway.log")
            async with openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0) as client:
                with pytest.raises(openai.APIStatusError):
                    await client.chat.completions.create(model="gpt-4o", messages=HI)
                await receiver.arrived.wait()  # the event is in delivery, and the receiver holds it
                replies = await asyncio.gather(*(client.chat.completions.create(model="gpt-4o", messages=HI) for _ in range(5)))
                with pytest.raises(openai.APIStatusError):
                    await client.chat.completions.create(model="gpt-4o", messages=HI)
            assert len(replies) == 5 and all(r.choices[0].message.content for r in replies)
            assert not receiver.hold.is_set() and len(receiver.got) == 1  # all answered while it hung
            receiver.hold.set()
            await stop(running)
        (event,) = receiver.events()
        assert event["kind"] == "upstream.auth_failed"
        assert event["data"] == {"deployment": "openai/gpt-4o", "provider": "openai", "status": 401, "error_kind": "authentication"}
        assert "x-gaud-signature" not in receiver.got[0][1]  # no secret configured: unsigned
        assert provider_env("")["OPENAI_API_KEY"].encode() not in receiver.got[0][2]

    asyncio.run(scenario())


# -- breakers, in-process ---------------------------------------------------------------------------
def test_one_event_per_breaker_open_and_close(tmp_path: Path, upstream) -> None:
    """Two overloaded replies open the breaker (one event); a failed half-open probe keeps it open
    (no event); a successful probe closes it (one event). Breaker events are state events: a second
    open within `dedupe_seconds` is sent too (the receiver must not be left thinking it is closed),
    and no state is sent twice in a row."""
    tree = spec_tree(tmp_path, retry="false", fallback="false", breaker={"failures": 2, "cooldown": 10})
    catalog = load_catalog(tree, environ=provider_env(upstream.url))
    clock = FakeClock()
    gateway = Gateway(catalog, Upstream(), sleep=clock.sleep, clock=clock)
    body = {"model": "claude-sonnet-4", "messages": HI}

    async def fail(times: int) -> None:
        for _ in range(times):
            upstream.reply_fixture("anthropic", "error_529_overloaded.json")
            with pytest.raises(GatewayError):
                await gateway.chat(body)

    async def scenario() -> None:
        async with receiving() as receiver:
            sink = sink_for(receiver, clock=clock)
            gateway.router.breakers.listener = sink.breaker_listener
            sink.start()
            await fail(2)
            with pytest.raises(GatewayError):  # open: skipped, no upstream call, no event
                await gateway.chat(body)
            clock.now += 10
            await fail(1)  # the half-open probe fails: open again, silently
            clock.now += 10
            upstream.reply_fixture("anthropic", "messages_text.json")
            await gateway.chat(body)
            await fail(2)  # opens again within dedupe_seconds: sent
            await sink.aclose()
            await gateway.upstream.close()
        kinds = [(e["kind"], e["data"]["deployment"]) for e in receiver.events()]
        deployment = "anthropic/claude-sonnet-4-20250514"
        assert kinds == [("breaker.opened", deployment), ("breaker.closed", deployment), ("breaker.opened", deployment)]
        assert [e["data"]["failures"] for e in receiver.events()] == [2, 0, 2]
        assert sink.counts == {"delivered": 3}

    asyncio.run(scenario())


def test_breaker_events_send_each_change_and_never_repeat_a_state() -> None:
    """Per deployment, a state is sent unless it repeats the last one sent, however soon; a repeat
    (two instances, or a listener told twice) is counted as deduplicated; deployments are apart.
    The state is followed even for a kind no webhook wants: a receiver of `breaker.opened` only
    still hears every opening."""
    async def scenario() -> None:
        async with receiving() as receiver:
            sink = sink_for(receiver, dedupe_seconds=600)
            sink.start()
            for state in ("open", "closed", "open", "open", "closed", "closed", "open"):
                sink.breaker_listener("a", state, 3)
            sink.breaker_listener("b", "open", 3)
            await sink.aclose()
        states = [(e["data"]["deployment"], e["data"]["state"]) for e in receiver.events()]
        assert states == [("a", "open"), ("a", "closed"), ("a", "open"), ("a", "closed"), ("a", "open"), ("b", "open")]
        assert all(states[i] != states[i + 1] for i in range(len(states) - 1))
        assert sink.counts == {"delivered": 6, "deduplicated": 2}
        async with receiving() as opened_only:
            sink = AlertSink([Webhook(f"{opened_only.url}/hook", events=frozenset({"breaker.opened"}))])
            sink.start()
            for state in ("open", "closed", "open", "closed", "open"):
                sink.breaker_listener("a", state, 3)
            await sink.aclose()
        assert [e["kind"] for e in opened_only.events()] == ["breaker.opened"] * 3

    asyncio.run(scenario())

    asyncio.run(scenario())


# -- the sink --------------------------------------------------------------------------------------
def test_a_failing_receiver_is_retried_with_backoff_then_given_up() -> None:
    async def scenario() -> None:
        async with receiving(status=500) as receiver:
            metrics, clock = Metrics(), FakeClock()
            sink = sink_for(receiver, attempts=4, backoff=0.5, max_backoff=1.5, metrics=metrics, clock=clock, sleep=clock.sleep)
            sink.start()
            sink.emit(Event("audit.spilled", "one", "k1"))
            await sink.aclose()
            assert len(receiver.got) == 4
            assert clock.sleeps == [0.5, 1.0, 1.5]  # doubling, capped
            assert sink.counts == {"failed": 1}
            assert 'gaud_alerts_total{kind="audit.spilled",outcome="failed"} 1.0' in metrics.render().decode()
        async with receiving(status=400) as refusing:  # the receiver refuses the body: not retried
            sink = sink_for(refusing, attempts=4)
            sink.start()
            sink.emit(Event("audit.spilled", "one", "k1"))
            await sink.aclose()
            assert (len(refusing.got), sink.counts) == (1, {"failed": 1})

    asyncio.run(scenario())


def test_jitter_keeps_each_delay_between_half_and_all_of_its_step() -> None:
    sink = AlertSink([], backoff=2.0, max_backoff=60.0, rng=lambda: 0.0)
    assert [sink.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    sink.rng = lambda: 0.999
    assert [round(sink.delay(n), 2) for n in (1, 6, 7)] == [2.0, 59.97, 59.97]


def test_dedupe_within_the_interval_and_again_after_it() -> None:
    async def scenario() -> None:
        async with receiving() as receiver:
            sink = sink_for(receiver, dedupe_seconds=600)
            clock = sink.clock
            sink.start()
            for _ in range(3):
                sink.emit(Event("upstream.auth_failed", "refused", "upstream.auth_failed:a:401"))
            sink.emit(Event("upstream.auth_failed", "refused", "upstream.auth_failed:b:401"))
            clock.now += 599  # type: ignore[attr-defined]
            sink.emit(Event("upstream.auth_failed", "refused", "upstream.auth_failed:a:401"))
            clock.now += 1  # type: ignore[attr-defined]
            sink.emit(Event("upstream.auth_failed", "refused", "upstream.auth_failed:a:401"))
            await sink.aclose()
        assert [e["dedupe_key"] for e in receiver.events()] == [
            "upstream.auth_failed:a:401", "upstream.auth_failed:b:401", "upstream.auth_failed:a:401"]
        assert sink.counts == {"delivered": 3, "deduplicated": 3}

    asyncio.run(scenario())


def test_a_full_queue_drops_the_oldest_and_emitting_never_waits() -> None:
    async def scenario() -> None:
        async with receiving() as receiver:
            sink = sink_for(receiver, queue_size=2)
            for i in range(5):  # not started yet: nothing is delivered, the queue fills
                sink.emit(Event("audit.spilled", f"spill {i}", f"k{i}"))
            assert sink.queue.qsize() == 2 and sink.counts == {"dropped": 3}
            sink.start()
            await sink.aclose()
        assert [e["summary"] for e in receiver.events()] == ["spill 3", "spill 4"]

    asyncio.run(scenario())


def test_shutdown_waits_for_a_hanging_receiver_only_until_its_deadline() -> None:
    async def scenario() -> None:
        async with receiving() as receiver:
            receiver.hold = asyncio.Event()
            sink = sink_for(receiver)
            sink.start()
            sink.emit(Event("audit.spilled", "one", "k1"))
            sink.emit(Event("audit.spilled", "two", "k2"))
            await receiver.arrived.wait()
            await sink.aclose(deadline=0.05)
            assert not receiver.hold.is_set()  # closed while the receiver still held the delivery
            assert sink.counts["dropped"] == 2 and len(receiver.got) == 1

    asyncio.run(scenario())


def test_dedupe_memory_stays_bounded_in_a_storm_of_distinct_keys() -> None:
    clock = FakeClock()
    sink = AlertSink([Webhook("http://127.0.0.1:9/x")], queue_size=10, clock=clock)
    for i in range(1000):
        clock.now += 0.001
        sink.emit(Event("audit.spilled", "s", f"k{i}"))
    assert len(sink._seen) <= 40 and "k999" in sink._seen
    sink.emit(Event("audit.spilled", "s", "k999"))
    assert sink.counts["deduplicated"] == 1  # the newest keys are still deduplicated


def test_no_webhook_wants_the_kind_nothing_is_queued() -> None:
    sink = AlertSink([Webhook("http://127.0.0.1:9/x", events=frozenset({"audit.spilled"}))])
    sink.emit(Event("breaker.opened", "x", "k"))
    assert sink.queue.qsize() == 0 and not sink.counts


# -- events at their sources -----------------------------------------------------------------------
def test_budget_crossings_are_strict_below_and_inclusive_at_the_line() -> None:
    def crossed(before: float, after: float, limit: float | None = 10.0) -> list[float]:
        return [e.data["threshold"] for e in budget_crossings("team", "core", "monthly", 0.0, limit, before, after, (0.5, 0.8))]

    assert crossed(0, 5) == [0.5]
    assert crossed(5, 9) == [0.8]  # 5 was already past 50 %
    assert crossed(0, 12) == [0.5, 0.8, 1.0]
    assert crossed(10, 12) == [] and crossed(3, 3) == [] and crossed(0, 12, None) == [] and crossed(0, 12, 0) == []
    (event,) = budget_crossings("team", "core", "monthly", 1764547200.0, 10.0, 7.0, 8.5)
    assert event.dedupe_key == "budget.threshold:team:core:monthly:1764547200:0.8"
    assert event.summary == "Team core passed 80% of the monthly budget: $8.5000 of $10.0000 spent (period from 2025-12-01 UTC)."


def test_in_process_budgets_report_each_crossing_at_settle() -> None:
    async def scenario() -> list[Event]:
        sink = AlertSink([Webhook("http://127.0.0.1:9/x")])
        budgets = Budgets(None, warn_at=(0.8,), alerts=sink)
        alice = Principal(user_id=1, user_name="alice", role="member", budget_daily=1.0, budget_monthly=4.0,
                          team_id=3, team_name="core", team_budget_monthly=1.0)
        for cost in (0.5, 0.35, 0.1, 0.1):
            budgets.settle(await budgets.reserve(alice, 0.01), cost)
        return [sink.queue.get_nowait() for _ in range(sink.queue.qsize())]

    events = asyncio.run(scenario())
    assert [(e.data["scope"], e.data["name"], e.data["period"], e.data["threshold"]) for e in events] == [
        ("user", "alice", "daily", 0.8), ("team", "core", "monthly", 0.8),
        ("user", "alice", "daily", 1.0), ("team", "core", "monthly", 1.0)]


def test_redis_budgets_report_each_crossing_once() -> None:
    url = os.environ.get("GAUD_TEST_REDIS_URL")
    if not url:
        pytest.skip("needs GAUD_TEST_REDIS_URL")
    import redis

    from engine.accounts.shared import RedisBudgets

    url = url.rsplit("/", 1)[0] + "/12"  # a database of its own
    redis.Redis.from_url(url).flushdb()

    async def scenario() -> list[Event]:
        sink = AlertSink([Webhook("http://127.0.0.1:9/x")])
        budgets = RedisBudgets(url, None)
        budgets.alerts = sink
        alice = Principal(user_id=7, user_name="alice", role="member", budget_monthly=1.0,
                          team_id=9, team_name="core", team_budget_daily=1.0)
        try:
            for cost in (0.5, 0.35, 0.1, 0.1):
                await budgets.settle_now(await budgets.reserve(alice, 0.01), cost)
        finally:
            await budgets.aclose()
        return [sink.queue.get_nowait() for _ in range(sink.queue.qsize())]

    events = asyncio.run(scenario())
    assert [(e.data["scope"], e.data["period"], e.data["threshold"]) for e in events] == [
        ("user", "monthly", 0.8), ("team", "daily", 0.8), ("user", "monthly", 1.0), ("team", "daily", 1.0)]
    assert events[2].data["spent"] == events[3].data["spent"] == pytest.approx(1.05)


class _DownStore:
    def write_audit(self, batch: list[dict[str, Any]]) -> int:
        raise ConnectionError("database unreachable")


def test_an_audit_spill_is_one_event_naming_the_file(tmp_path: Path) -> None:
    async def scenario() -> AlertSink:
        sink = AlertSink([Webhook("http://127.0.0.1:9/x")])
        writer = AuditWriter(_DownStore(), spill_dir=tmp_path, retry_delay=0.01)  # type: ignore[arg-type]
        writer.alerts = sink
        writer.start()
        await writer.add({"request_id": "r1", "status": 200})
        await writer.add({"request_id": "r2", "status": 200})
        await writer.close(timeout=0)
        return sink

    sink = asyncio.run(scenario())
    (event,) = [sink.queue.get_nowait() for _ in range(sink.queue.qsize())]
    (spilled,) = tmp_path.glob("gaud-audit-spill-*.jsonl")
    assert (event.kind, event.data) == ("audit.spilled", {"records": 2, "path": str(spilled)})


# -- configuration and formats ---------------------------------------------------------------------
def test_webhook_settings_are_checked_and_secrets_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("from-file\n")
    env = {"HOOK_FILE": str(tmp_path / "s"), "PLAIN": "plain"}
    from engine.spec.secretfiles import with_files

    hooks = webhooks_from_settings([{"url": "https://h.example/a/b", "secret_env": "HOOK"},
                                    {"url": "http://h", "secret_env": "PLAIN", "format": "slack", "events": ["audit.spilled"]}],
                                   with_files(env))
    assert [h.secret for h in hooks] == [b"from-file", b"plain"]
    assert hooks[1].wants("audit.spilled") and not hooks[1].wants("breaker.opened")
    assert repr(hooks[0]) == "Webhook('https://h.example', format='json')"  # no path, no secret
    assert webhooks_from_settings(None, env) == [] and webhooks_from_settings([], env) == []
    for entry, message in [
        ({"url": "ftp://h"}, r"alerts.webhooks\[0\].url must be an http\(s\) URL"),
        ({"url": "http://h", "format": "xml"}, "format must be one of json, slack, not 'xml'"),
        ({"url": "http://h", "events": ["budget.crossed"]}, "events must be a list of budget.threshold"),
        ({"url": "http://h", "sekret": "x"}, "unknown field"),
        ({"url": "http://h", "secret_env": "MISSING"}, "MISSING \\(or MISSING_FILE\\) is not set"),
        ({"url": "http://h", "secret": "a", "secret_env": "PLAIN"}, "not both"),
        ({"url": "http://h", "timeout": -1}, "timeout must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            webhooks_from_settings([entry], env)


def test_json_and_slack_bodies() -> None:
    event = Event("breaker.closed", "Circuit breaker of x closed.", "breaker.closed:x", {"deployment": "x"}, time=0.0)
    assert json.loads(render(event, "json")) == {"kind": "breaker.closed", "time": "1970-01-01T00:00:00Z",
                                                 "summary": "Circuit breaker of x closed.",
                                                 "dedupe_key": "breaker.closed:x", "data": {"deployment": "x"}}
    slack = json.loads(render(event, "slack"))
    assert slack["text"] == "Circuit breaker of x closed."
    assert [b["type"] for b in slack["blocks"]] == ["section", "context"]


def test_serve_refuses_a_bad_webhook_in_one_line_before_binding(tmp_path: Path) -> None:
    config = tmp_path / "gaud.yaml"
    config.write_text("alerts:\n  webhooks:\n    - {url: 'ftp://hooks.example/x', secret: s}\n")
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--config", str(config), "--port", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'gaud.db'}"})
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: alerts.webhooks[0].url must be an http(s) URL; not starting."
    assert "listening" not in done.stdout
