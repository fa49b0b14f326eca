"""engine.pipeline.stages: the order of the stages, what a refusal gives back, what is audited.

The collaborators are the in-process ones (guards, budgets, metrics) around a fake gateway, a
fake authenticator and a fake audit writer, so each test sees every stage's effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.accounts.budgets import Budgets, Reservation
from engine.accounts.cache import MemoryCache
from engine.accounts.guards import Admission, Guards
from engine.accounts.ratelimit import MemoryRateLimiter
from engine.accounts.store import Principal
from engine.errors import AuthenticationFailed, GatewayError, Overloaded
from engine.metrics import Metrics
from engine.pipeline.gateway import ChatResult, Exchange, StreamResult
from engine.pipeline.routing import Plan
from engine.pipeline.stages import CHAT, EMBEDDINGS, OPENAI, ClientGone, Pipeline
from engine.pipeline.tokens import estimate_prompt_tokens
from engine.spec.routes import Backoff, Policy

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}]}'
USER = Principal(user_id=7, user_name="ann", role="member", budget_daily=10.0, tpm_limit=10_000)


class FakeAuthenticator:
    def __init__(self, principal: Principal | None = USER) -> None:
        self.user = principal

    async def principal(self, headers: Mapping[str, str]) -> Principal:
        if self.user is None:
            raise AuthenticationFailed("no key")
        return self.user


class FakeGateway:
    """Plans every request to nothing and answers it (or fails) as told; records the calls."""

    def __init__(self, calls: list[str], failure: GatewayError | None = None) -> None:
        self.calls = calls
        self.failure = failure
        self.catalog = None

    async def plan(self, body: dict[str, Any]) -> Plan:
        return Plan(alias=body["model"], route=None, targets=[], policy=Policy(None, None, Backoff()),
                    facts={"estimated_tokens": estimate_prompt_tokens(body)})

    def estimate_cost(self, body: dict[str, Any], plan: Plan, *, prompt_tokens: int | None = None, output: bool = True) -> float:
        return 0.5 if output else (prompt_tokens or 0) / 100  # embeddings: a cent a token

    async def chat(self, body: dict[str, Any], exchange: Exchange, *, plan: Plan) -> ChatResult:
        self.calls.append("call")
        exchange.alias, exchange.deployment, exchange.attempts = plan.alias, "p/m", 1
        if self.failure is not None:
            raise self.failure
        exchange.usage, exchange.cost = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, 0.25
        return ChatResult({"choices": [{"message": {"content": "hi"}}]}, {"x-gaud-cost": "0.25000000"})

    async def count_tokens(self, body: dict[str, Any], estimate: int, native: Any = None, exchange: Any = None) -> int | None:
        return None  # no provider counter: the route answers with the estimate

    async def chat_stream(self, body: dict[str, Any], exchange: Exchange, *, plan: Plan) -> StreamResult:
        self.calls.append("call")

        async def pieces() -> AsyncIterator[bytes]:
            yield b"data: [DONE]\n\n"

        return StreamResult(pieces())

    async def embeddings(self, body: dict[str, Any], exchange: Exchange, *, plan: Plan) -> ChatResult:
        self.calls.append("call")
        return ChatResult({"object": "list", "data": []})


class FakeAudit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def accepted(self, request_id: str, principal: Any, model: Any, stream: bool) -> int | None:
        return None  # no journal

    async def add(self, record: dict[str, Any], journaled: int | None = None) -> None:
        self.records.append(record)


@dataclass
class FakePort:
    body: bytes = BODY
    gone: bool = False
    stream_gone: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = "req-1"
    path: str = "/v1/chat/completions"
    started: bool = False
    sent: list[tuple[int, Any]] = field(default_factory=list)

    async def read(self) -> bytes:
        if self.gone:
            raise ClientGone()
        return self.body

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.started = True
        self.sent.append((status, payload))

    async def error(self, exc: GatewayError) -> None:
        await self.json(exc.status, exc.to_openai())

    async def internal_error(self) -> None:
        await self.json(500, {})

    async def stream(self, pieces: AsyncIterator[bytes], headers: dict[str, str]) -> bool:
        self.started = True
        self.sent.append((200, [piece async for piece in pieces]))
        return not self.stream_gone


class SpyBudgets(Budgets):
    def __init__(self) -> None:
        super().__init__(None)
        self.settled: list[tuple[Reservation, float]] = []

    def settle(self, reservation: Reservation, cost: float) -> None:
        self.settled.append((reservation, cost))
        super().settle(reservation, cost)


class SpyGuards(Guards):
    def __init__(self) -> None:
        super().__init__(MemoryRateLimiter(), MemoryCache())
        self.settled: list[tuple[Admission, int | None]] = []

    async def settle(self, admission: Admission, actual_tokens: int | None) -> None:
        self.settled.append((admission, actual_tokens))
        await super().settle(admission, actual_tokens)


class Recording(Pipeline):
    """The pipeline, naming each stage as it starts."""

    calls: list[str]

    def authenticate(self, headers: Mapping[str, str]) -> Awaitable[Principal]:
        self.calls.append("authenticate")
        return super().authenticate(headers)

    def parse(self, endpoint: Any, codec: Any, raw: dict[str, Any], exchange: Any = None) -> dict[str, Any]:
        self.calls.append("parse")
        return super().parse(endpoint, codec, raw, exchange)

    def plan(self, body: dict[str, Any]) -> Awaitable[Plan]:
        self.calls.append("plan")
        return super().plan(body)

    async def admit(self, principal: Principal, tokens: int) -> Admission:
        self.calls.append("admit")
        return await super().admit(principal, tokens)

    def cache_plan(self, *args: Any) -> Any:
        self.calls.append("cache lookup")
        return super().cache_plan(*args)

    def price_and_reserve(self, *args: Any) -> Awaitable[Reservation]:
        self.calls.append("price and reserve")
        return super().price_and_reserve(*args)

    async def settle(self, exchange: Exchange) -> None:
        self.calls.append("settle")
        await super().settle(exchange)

    def audit(self, exchange: Exchange, journaled: int | None = None) -> Awaitable[None]:
        self.calls.append("audit")
        return super().audit(exchange, journaled)


def pipeline(failure: GatewayError | None = None, principal: Principal | None = USER) -> Recording:
    calls: list[str] = []
    built = Recording(FakeGateway(calls, failure), FakeAuthenticator(principal), SpyGuards(), SpyBudgets(),  # type: ignore[arg-type]
                      FakeAudit(), Metrics())  # type: ignore[arg-type]
    built.calls = calls
    return built


def run(p: Pipeline, port: FakePort, endpoint: Any = CHAT) -> None:
    asyncio.run(p.run(endpoint, OPENAI, port))


def audited(p: Pipeline) -> list[dict[str, Any]]:
    return p.audit_writer.records  # type: ignore[attr-defined, no-any-return]


ALL_STAGES = ["authenticate", "parse", "plan", "admit", "cache lookup", "price and reserve", "call", "settle", "audit"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_stages_run_in_order(stream):
    p, port = pipeline(), FakePort(body=BODY.replace(b"}]", b'}], "stream": true') if stream else BODY)
    run(p, port)
    assert p.calls == ALL_STAGES
    assert port.sent[0][0] == 200
    [record] = audited(p)
    assert (record["status"], record["stream"], record["user_name"], record["request_id"]) == (200, stream, "ann", "req-1")


def test_a_success_settles_what_it_used():
    p = pipeline()
    run(p, FakePort())
    [(reservation, cost)] = p.budgets.settled  # type: ignore[attr-defined]
    assert (reservation.amount, cost) == (0.5, 0.25)
    [(admission, tokens)] = p.guards.settled  # type: ignore[attr-defined]
    assert tokens == 5 and admission.tokens_key is not None
    assert p.metrics.in_flight.value == 0


def test_a_refusal_at_admit_releases_nothing_it_did_not_take():
    p = pipeline(principal=Principal(user_id=7, user_name="ann", role="member", budget_daily=10.0, rpm_limit=1))
    run(p, FakePort())  # takes the one request a minute
    p.calls.clear()
    p.budgets.settled.clear()  # type: ignore[attr-defined]
    port = FakePort()
    run(p, port)
    assert p.calls == ["authenticate", "parse", "plan", "admit", "settle", "audit"]
    assert port.sent[0][0] == 429
    assert p.budgets.settled == []  # type: ignore[attr-defined]  # nothing was reserved
    assert p.guards.settled == []  # type: ignore[attr-defined]  # nothing was admitted
    assert audited(p)[-1]["status"] == 429 and audited(p)[-1]["error_kind"] == "rate_limit"
    assert p.metrics.in_flight.value == 0


def test_a_failure_in_call_still_settles_and_audits_the_status_the_client_saw():
    p = pipeline(failure=Overloaded("every deployment is busy"))
    port = FakePort()
    run(p, port)
    assert p.calls == ALL_STAGES
    assert port.sent == [(503, Overloaded("every deployment is busy").to_openai())]
    [(reservation, cost)] = p.budgets.settled  # type: ignore[attr-defined]
    assert (reservation.amount, cost) == (0.5, 0.0)
    [(_, tokens)] = p.guards.settled  # type: ignore[attr-defined]
    assert tokens is None  # no usage: the estimate taken stands
    [record] = audited(p)
    assert (record["status"], record["error_kind"], record["deployment"]) == (503, "overloaded", "p/m")


def test_an_authentication_failure_is_answered_and_not_audited():
    p = pipeline(principal=None)
    port = FakePort()
    run(p, port)
    assert p.calls == ["authenticate"]
    assert port.sent[0][0] == 401
    assert audited(p) == [] and p.metrics.in_flight.value == 0


def test_a_client_gone_before_its_body_is_audited_as_499():
    p = pipeline()
    port = FakePort(gone=True)
    run(p, port)
    assert port.sent == []
    assert p.calls == ["authenticate", "settle", "audit"]
    assert audited(p)[0]["status"] == 499


def test_a_client_gone_mid_stream_is_audited_as_499():
    p = pipeline()
    run(p, FakePort(body=BODY.replace(b"}]", b'}], "stream": true'), stream_gone=True))
    assert audited(p)[0]["status"] == 499


def test_an_invalid_request_is_refused_before_routing():
    p = pipeline()
    port = FakePort(body=b'{"model": "m", "messages": []}')
    run(p, port)
    assert p.calls == ["authenticate", "parse", "settle", "audit"]
    assert port.sent[0][0] == 400
    assert audited(p)[0]["status"] == 400


def test_an_unexpected_error_is_a_500_and_audited():
    p = pipeline(failure=RuntimeError("boom"))  # type: ignore[arg-type]
    port = FakePort()
    run(p, port)
    assert port.sent == [(500, {})]
    assert audited(p)[0]["status"] == 500


def test_a_cache_hit_skips_the_budget_and_the_call():
    p = pipeline()
    cached = BODY.replace(b"}]", b'}], "cache": true')
    run(p, FakePort(body=cached))
    p.calls.clear()
    port = FakePort(body=cached)
    run(p, port)
    assert p.calls == ["authenticate", "parse", "plan", "admit", "cache lookup", "settle", "audit"]
    assert port.sent == [(200, {"choices": [{"message": {"content": "hi"}}]})]
    assert audited(p)[-1]["cache_hit"] is True


def test_embeddings_go_through_the_same_stages_and_never_stream():
    p = pipeline()
    port = FakePort(body=b'{"model": "e", "input": "some text", "stream": true}', path="/v1/embeddings")
    run(p, port, EMBEDDINGS)
    assert p.calls == ALL_STAGES
    assert port.sent == [(200, {"object": "list", "data": []})]
    [(reservation, _)] = p.budgets.settled  # type: ignore[attr-defined]
    assert reservation.amount == 0.03  # embeddings reserve their input: "some text" is 9 // 4 + 1 tokens
    assert audited(p)[0]["stream"] is False


class FakeIngressSpec:
    """A client format that wraps the OpenAI body in `{"req": ...}` and replies `{"rep": ...}`."""

    #: Keeps no replies (the Responses API's `state` block).
    state = None

    def native(self, raw: dict[str, Any], headers: Any) -> None:
        return None  # passes through to no deployment

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def to_canonical(self, body: dict[str, Any], *, count: bool = False) -> dict[str, Any]:
        return dict(body["req"])

    def from_canonical(self, completion: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"rep": completion, "by": self.tag}

    def count_tokens(self, estimated: int) -> dict[str, Any]:
        return {"tokens": estimated, "by": self.tag}

    def error_body(self, exc: GatewayError) -> tuple[int, dict[str, Any]]:
        return exc.status, {"oops": exc.kind}


def test_a_client_format_goes_through_the_same_stages_and_follows_reloads():
    from engine.pipeline.stages import IngressCodec

    p = pipeline()
    p.gateway.catalog = type("Catalog", (), {"ingress": {}})()  # type: ignore[attr-defined]
    codec = IngressCodec("fmt", FakeIngressSpec("at start"), p.gateway)  # type: ignore[arg-type]
    port = FakePort(body=b'{"req": ' + BODY + b"}")
    asyncio.run(p.run(CHAT, codec, port))
    assert p.calls == ALL_STAGES
    assert port.sent == [(200, {"rep": {"choices": [{"message": {"content": "hi"}}]}, "by": "at start"})]
    p.gateway.catalog.ingress["fmt"] = FakeIngressSpec("reloaded")  # type: ignore[attr-defined]
    port = FakePort(body=b'{"req": ' + BODY + b"}")
    asyncio.run(p.count_tokens(codec, port))
    assert port.sent == [(200, {"tokens": estimate_prompt_tokens({"messages": [{"role": "user", "content": "hello"}]}),
                                "by": "reloaded"})]
