"""One client request as named stages, in the order it runs:

    authenticate -> parse (and validate) -> authorize (model allow-list) -> plan (route) -> admit (in flight, rate limits) -> cache lookup
    -> price and reserve (budget) -> call (gateway: attempts, retries, fallback) -> settle -> audit

Every route that serves a model goes through `Pipeline.run`: chat (streamed or not), embeddings,
and every client format (ingress.d/). What differs between them is data on two small objects:

- an `Endpoint` says what differs between chat and embeddings: how a request is validated, how
  many tokens it is admitted for, what it reserves against a budget, how the gateway is called,
  whether it may be cached or streamed;
- a `Codec` says what differs between client formats: request to canonical, reply from
  canonical, the error envelope, and how a stream reaches the client. OpenAI is the identity
  codec; an `engine.spec.ingress.IngressSpec` is wrapped by an `IngressCodec`.

No HTTP framework here: the web layer hands `run` a `Port` (the request's headers and body, and
the way to answer) and sends what the stages decide. Per-request state lives on the `Exchange`.

This is the hot path. Stages that only forward to a collaborator return its awaitable instead of
awaiting it in a coroutine of their own, so a request runs no more coroutines than the single
closure this replaced did. What the layering itself costs was measured (in-process ASGI app,
bench/micro.py's client, 60 alternating rounds against the closure): ~2.5 µs a non-stream request
(gpt-4o 43.3 -> 46.0 µs best, +5%), ~1.5 µs of it the forwarding stage methods and the identity
codec; streams +1-3%. Under load a request costs ~300 µs with uvicorn and aiohttp, so <1%.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..accounts.audit import AuditWriter
from ..accounts.auth import Authenticator
from ..accounts.budgets import Budgets, Reservation
from ..accounts.guards import Admission, CachePlan, Guards
from ..accounts.inflight import InFlight
from ..accounts.shared import RedisBudgets
from ..accounts.store import Principal
from ..errors import GatewayError, InternalError, InvalidRequest, PermissionDenied, Shutdown, drop_tracebacks
from ..logs import FieldLogger
from ..metrics import Metrics
from ..spec.wire import NativeRequest
from .conversations import Responses, Turn
from .embeddings import validate_embeddings_request
from .gateway import ChatResult, Exchange, Gateway, StreamResult
from .routing import Plan
from .tokens import estimate_input_tokens, estimate_prompt_tokens
from .validation import Limits, validate_request

if TYPE_CHECKING:
    from ..observability.otel import Tracing

__all__ = [
    "CHAT", "EMBEDDINGS", "OPENAI", "ClientGone", "Codec", "Endpoint", "IngressCodec", "Pipeline", "Port", "parse_json",
]

log = logging.getLogger("gaud.server")
request_log = FieldLogger("gaud.request")

_INTERNAL_ERROR = InternalError().to_openai()


class ClientGone(Exception):
    """The client went away before its request was read (audited as 499)."""


class Port(Protocol):
    """The web layer's side of one request: its id and headers, its body, and the answer."""

    @property
    def request_id(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def path(self) -> str: ...
    @property
    def started(self) -> bool:
        """Whether the response has begun (an error can no longer be sent as such)."""

    def read(self) -> Awaitable[bytes]: ...
    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None: ...
    async def error(self, exc: GatewayError) -> None: ...
    async def internal_error(self) -> None: ...
    async def stream(self, pieces: AsyncIterator[bytes], headers: dict[str, str]) -> bool: ...


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


# -- client formats ---------------------------------------------------------------------------------
class Codec:
    """OpenAI chat, the canonical format: every method is the identity."""

    #: Stored replies (an ingress spec's `state`): None, the format keeps none.
    state: Any = None

    def request(self, raw: dict[str, Any], *, count: bool = False) -> dict[str, Any]:
        return raw

    def native(self, raw: dict[str, Any], headers: Mapping[str, str]) -> NativeRequest | None:
        """The request as it may pass through to a deployment of this format (engine/spec/wire.py)."""
        return None

    def reply(self, completion: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
        return completion

    def error(self, exc: GatewayError) -> tuple[int, dict[str, Any]]:
        return exc.status, exc.to_openai()

    def internal_error(self) -> tuple[int, dict[str, Any]]:
        return 500, _INTERNAL_ERROR

    def count_tokens(self, estimated: int) -> dict[str, Any]:
        raise NotImplementedError("OpenAI chat has no count_tokens route")

    def stream(
        self, gateway: Gateway, body: dict[str, Any], exchange: Exchange, plan: Plan, raw: dict[str, Any],
        turn: Turn | None = None,
    ) -> Awaitable[StreamResult]:
        """THE stream hand-off: open the gateway's stream and encode it for this client."""
        return gateway.chat_stream(body, exchange, plan=plan)


OPENAI = Codec()


class IngressCodec(Codec):
    """A client format from ingress.d/. The spec is looked up at each use, so a reload's new
    mapping applies at once; `fallback` serves if a reload dropped the format (routes are fixed
    at start)."""

    def __init__(self, name: str, fallback: Any, gateway: Gateway) -> None:
        self.name = name
        self.fallback = fallback  # engine.spec.ingress.IngressSpec
        self.gateway = gateway

    @property
    def spec(self) -> Any:
        return self.gateway.catalog.ingress.get(self.name) or self.fallback

    @property
    def state(self) -> Any:
        return self.spec.state

    def request(self, raw: dict[str, Any], *, count: bool = False) -> dict[str, Any]:
        return self.spec.to_canonical(raw, count=count)  # type: ignore[no-any-return]

    def reply(self, completion: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
        return self.spec.from_canonical(completion, raw)  # type: ignore[no-any-return]

    def native(self, raw: dict[str, Any], headers: Mapping[str, str]) -> NativeRequest | None:
        return self.spec.native(raw, headers)  # type: ignore[no-any-return]

    def error(self, exc: GatewayError) -> tuple[int, dict[str, Any]]:
        return self.spec.error_body(exc)  # type: ignore[no-any-return]

    def internal_error(self) -> tuple[int, dict[str, Any]]:
        return self.error(InternalError())

    def count_tokens(self, estimated: int) -> dict[str, Any]:
        return self.spec.count_tokens(estimated)  # type: ignore[no-any-return]

    def stream(
        self, gateway: Gateway, body: dict[str, Any], exchange: Exchange, plan: Plan, raw: dict[str, Any],
        turn: Turn | None = None,
    ) -> Awaitable[StreamResult]:
        keep = {"reply_id": turn.reply_id, "on_reply": turn.done} if turn is not None and turn.keep else {}
        encoder = self.spec.stream_encoder(plan.facts["estimated_tokens"], raw, **keep)
        return gateway.chat_stream(body, exchange, plan=plan, encoder=encoder)


# -- what is served -----------------------------------------------------------------------------
class Endpoint:
    """Chat completions: validated by `validate_request`, admitted for the prompt estimate plus
    the output asked for, priced before the call, cacheable when not streamed."""

    name = "chat"
    streamable = True
    cacheable = True

    def validate(self, body: dict[str, Any], limits: Limits) -> dict[str, Any]:
        return validate_request(body, limits)

    def tokens(self, body: dict[str, Any], plan: Plan) -> int:
        return int(plan.facts["estimated_tokens"] + int(body.get("max_completion_tokens") or body.get("max_tokens") or 0))

    def estimate_cost(self, gateway: Gateway, body: dict[str, Any], plan: Plan) -> float:
        return gateway.estimate_cost(body, plan)

    def call(self, gateway: Gateway, body: dict[str, Any], exchange: Exchange, plan: Plan) -> Awaitable[ChatResult]:
        return gateway.chat(body, exchange, plan=plan)


class EmbeddingsEndpoint(Endpoint):
    """Embeddings: admitted for, and priced at, the input estimate (no output); never streamed
    or cached."""

    name = "embeddings"
    streamable = False
    cacheable = False

    def validate(self, body: dict[str, Any], limits: Limits) -> dict[str, Any]:
        return validate_embeddings_request(body)

    def tokens(self, body: dict[str, Any], plan: Plan) -> int:
        return estimate_input_tokens(body["input"])

    def estimate_cost(self, gateway: Gateway, body: dict[str, Any], plan: Plan) -> float:
        return gateway.estimate_cost(body, plan, prompt_tokens=estimate_input_tokens(body["input"]), output=False)

    def call(self, gateway: Gateway, body: dict[str, Any], exchange: Exchange, plan: Plan) -> Awaitable[ChatResult]:
        return gateway.embeddings(body, exchange, plan=plan)


CHAT = Endpoint()
EMBEDDINGS = EmbeddingsEndpoint()


# -- the pipeline -------------------------------------------------------------------------------
#: Where a cached completion keeps the reply headers a hit must repeat (popped before it is sent).
_CACHED_HEADERS = "_gaud_headers"
#: Reply headers that describe the answer itself, not the call that produced it.
_REPEATED_HEADERS = ("x-gaud-dropped-params",)


def _cache_entry(completion: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """The completion as the cache stores it: with the headers a hit must repeat (what the
    deployment dropped of the request still holds for the same request answered again)."""
    kept = {name: headers[name] for name in _REPEATED_HEADERS if name in headers}
    return {**completion, _CACHED_HEADERS: kept} if kept else completion


class Pipeline:
    """The stages, with the collaborators they need; built once per app."""

    def __init__(
        self,
        gateway: Gateway,
        authenticator: Authenticator,
        guards: Guards,
        budgets: Budgets | RedisBudgets,
        audit_writer: AuditWriter,
        metrics: Metrics,
        *,
        limits: Limits | None = None,
        store_content: bool = False,
        responses: Responses | None = None,
        tracing: Tracing | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.gateway = gateway
        self.authenticator = authenticator
        self.guards = guards
        self.budgets = budgets
        self.audit_writer = audit_writer
        self.metrics = metrics
        self.limits = limits or Limits()
        self.store_content = store_content
        self.responses = responses or Responses(None)
        #: OpenTelemetry spans (engine.observability); None, tracing off: one test a request.
        self.tracing = tracing
        self.in_flight = in_flight or InFlight()

    async def run(self, endpoint: Endpoint, codec: Codec, port: Port) -> None:
        """One request through every stage; the answer goes out through `port`. Whatever ends
        it, what was taken is settled and the status the client saw is audited."""
        exchange = Exchange(request_id=port.request_id)
        try:
            principal = exchange.principal = await self.authenticate(port.headers)
        except GatewayError as exc:
            await port.error(exc)
            return
        self.metrics.in_flight.inc()
        if self.tracing is not None:
            exchange.span = self.tracing.request(port.headers, endpoint.name, port.path, exchange.started)
        journaled = None
        try:
            raw = parse_json(await port.read())
            turn = None if codec.state is None else await self.responses.begin(codec.state, raw, principal)
            raw = raw if turn is None else turn.request
            body = exchange.body = self.parse(endpoint, codec, raw, exchange)
            native = exchange.native = codec.native(raw, port.headers)
            self.authorize(principal, body)
            exchange.stream = endpoint.streamable and bool(body.get("stream"))
            journaled = self.audit_writer.accepted(exchange.request_id, principal, body.get("model"), exchange.stream)
            plan = await self.plan(body)
            admission = exchange.admission = await self.admit(principal, endpoint.tokens(body, plan))
            headers = dict(admission.headers)
            # Parts the canonical request leaves out are not in the cache key: such a request is not cached.
            cached = None if native is not None and native.lost else self.cache_plan(endpoint, body, port.headers, principal, plan)
            if cached is not None:
                hit = await self.cache_lookup(cached)
                if hit is not None:
                    self._served_from_cache(exchange, hit, headers)
                    await port.json(200, codec.reply(hit, raw) if turn is None else await self.keep(codec, hit, raw, turn), headers)
                    return
            exchange.reservation = await self.price_and_reserve(endpoint, body, plan, principal)
            self.budget_warning(principal, headers)
            if exchange.stream:
                stream = await codec.stream(self.gateway, body, exchange, plan, raw, turn)
                headers["x-gaud-overhead-ms"] = f"{exchange.overhead_ms():.3f}"
                pieces = stream.body if turn is None else self.responses.saving(stream.body, turn)
                if not await port.stream(pieces, {**headers, **stream.headers}):
                    exchange.status = 499  # the client went away; the upstream request was cancelled
                return
            result = await endpoint.call(self.gateway, body, exchange, plan)
            if cached is not None:
                await self.guards.cache.set(cached.key, _cache_entry(result.completion, result.headers), cached.ttl)
                headers["x-gaud-cache"] = "miss"
            headers["x-gaud-overhead-ms"] = f"{exchange.overhead_ms():.3f}"
            if result.native is not None and turn is None:  # the upstream's own reply (same format)
                reply = result.native
            else:
                reply = codec.reply(result.completion, raw) if turn is None else await self.keep(codec, result.completion, raw, turn)
            await port.json(200, reply, {**headers, **result.headers})
        except Exception as exc:  # noqa: BLE001 - every failure is answered and audited
            exchange.status = await self._failed(port, exc)
            if not isinstance(exc, ClientGone):  # audited as what the client saw
                exchange.error = exc if isinstance(exc, GatewayError) else InternalError()
        except asyncio.CancelledError as cancel:  # the server's shutdown deadline (web.drain), or re-raised
            exchange.error = Shutdown.caught(cancel)
            if exchange.error is None:
                raise
            exchange.status = exchange.error.status
            if not port.started:  # a stream already started has its error event, or a client not reading
                await port.error(exchange.error)
        finally:
            await self.settle(exchange)
            await self.audit(exchange, journaled)
            if exchange.span is not None:
                exchange.span.end(exchange)
            # A handled error's traceback holds this frame, which holds the error (and the
            # request): a cycle only the collector frees. Drop it now (server.GC_GEN0_THRESHOLD).
            drop_tracebacks(exchange.error)

    async def count_tokens(self, codec: Codec, port: Port) -> None:
        """A client format's token count: authenticate, parse and authorize, then the count of the
        provider that would serve the prompt, or the local estimate when it has no counting
        endpoint or the call fails; `x-gaud-token-count` says which. Traced as `run` traces a chat
        request: a request span, and an attempt span when the provider is asked."""
        exchange = Exchange(request_id=port.request_id)
        try:
            principal = await self.authenticate(port.headers)
            if self.tracing is not None:
                exchange.span = self.tracing.request(port.headers, "count_tokens", port.path, exchange.started)
            raw = parse_json(await port.read())
            body = codec.request(raw, count=True)
            body.setdefault("max_tokens", 1)
            body = validate_request(body, self.limits)
            exchange.body = {k: v for k, v in body.items() if k != "max_tokens"}  # the 1 above is no request's
            self.authorize(principal, body)
            estimate = estimate_prompt_tokens(body)
            counted = await self.gateway.count_tokens(body, estimate, codec.native(raw, port.headers), exchange)
            source = "estimate" if counted is None else "provider"
            if exchange.span is not None:
                exchange.span.answered_count(estimate if counted is None else counted, source)
            await port.json(200, codec.count_tokens(estimate if counted is None else counted),
                            {"x-gaud-token-count": source})
        except Exception as exc:  # noqa: BLE001 - answered as in `run`
            exchange.status = await self._failed(port, exc)
            if not isinstance(exc, ClientGone):
                exchange.error = exc if isinstance(exc, GatewayError) else InternalError()
        finally:
            if exchange.span is not None:
                exchange.span.end(exchange)
            drop_tracebacks(exchange.error)

    async def keep(self, codec: Codec, completion: dict[str, Any], raw: dict[str, Any], turn: Turn) -> dict[str, Any]:
        """The reply to a format with stored replies, under the gateway's own id and kept (before
        the client sees it, so it can be continued from at once) when the client asked."""
        if turn.reply_id is not None:
            completion = {**completion, "id": turn.reply_id}
        reply = codec.reply(completion, raw)
        turn.done(reply)
        await self.responses.save(turn)
        return reply

    @staticmethod
    async def _failed(port: Port, exc: Exception) -> int:
        """Answer a failure in the client's format; the status the client saw."""
        if isinstance(exc, GatewayError):
            await port.error(exc)
            return exc.status
        if isinstance(exc, ClientGone):
            return 499
        log.error("unhandled error on %s", port.path, exc_info=exc)
        if not port.started:
            await port.internal_error()
        return 500

    # -- the stages, in order ---------------------------------------------------------------------
    def authenticate(self, headers: Mapping[str, str]) -> Awaitable[Principal]:
        """API key -> user (or the local user with auth off); a 401 otherwise."""
        return self.authenticator.principal(headers)

    def parse(self, endpoint: Endpoint, codec: Codec, raw: dict[str, Any], exchange: Exchange | None = None) -> dict[str, Any]:
        """The client's request in canonical form, validated once (later stages trust it). Text
        that validation changed (control characters stripped) is reported as `messages` in
        x-gaud-dropped-params."""
        request = codec.request(raw)
        body = endpoint.validate(request, self.limits)
        if exchange is not None and body.get("messages") is not request.get("messages"):
            exchange.rewritten = ("messages",)
        return body

    @staticmethod
    def authorize(principal: Principal, body: dict[str, Any]) -> None:
        """The key's model allow-list against the model name the client sent (a 403 before any
        routing or upstream call). Fallbacks an allowed alias reaches are allowed: only the name
        asked for is checked; the key's list and its team's must both allow it. A key without
        lists pays two attribute tests."""
        if principal.models is not None or principal.team_models is not None:
            refused_by = principal.refused_by(str(body.get("model")))
            if refused_by is not None:
                raise PermissionDenied(f"{refused_by} may not call the model {body.get('model')!r}.",
                                       code="model_not_allowed", param="model")

    def plan(self, body: dict[str, Any]) -> Awaitable[Plan]:
        """The route: candidate deployments in order, and the retry/fallback policy."""
        return self.gateway.plan(body)

    async def admit(self, principal: Principal, tokens: int) -> Admission:
        """A place among the requests in flight (load shedding), then the caller's rate limits; a
        refusal is counted in the metrics before it is raised. The place is given back at settle."""
        try:
            slot = self.in_flight.enter(principal)
        except GatewayError:
            self.metrics.rate_limited.labels("in_flight").inc()
            raise
        try:
            admission = await self.guards.admit(principal, tokens)
        except BaseException as exc:
            self.in_flight.leave(slot)
            if isinstance(exc, GatewayError):
                self.metrics.rate_limited.labels("key").inc()
            raise
        admission.slot = slot
        return admission

    def cache_plan(
        self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str], principal: Principal, plan: Plan
    ) -> CachePlan | None:
        """Whether this request may be answered from (and stored in) the response cache."""
        if not endpoint.cacheable:
            return None
        return self.guards.cache_plan(body, headers, principal, plan.route.cache if plan.route else None)

    async def cache_lookup(self, cached: CachePlan) -> dict[str, Any] | None:
        hit: dict[str, Any] | None = await self.guards.cache.get(cached.key)
        self.metrics.cache.labels("hit" if hit is not None else "miss").inc()
        return hit

    @staticmethod
    def _served_from_cache(exchange: Exchange, hit: dict[str, Any], headers: dict[str, str]) -> None:
        assert exchange.body is not None
        exchange.cache_hit, exchange.alias = True, exchange.body["model"]
        exchange.usage = hit.get("usage")
        headers.update(hit.pop(_CACHED_HEADERS, None) or {})
        headers["x-gaud-cache"] = "hit"
        headers["x-gaud-cost"] = "0.00000000"

    def price_and_reserve(
        self, endpoint: Endpoint, body: dict[str, Any], plan: Plan, principal: Principal
    ) -> Awaitable[Reservation]:
        """Hold the request's estimated cost against the caller's budgets (or a 429)."""
        # The cost estimate is only worth computing for a user with a budget to reserve against.
        estimate = endpoint.estimate_cost(self.gateway, body, plan) if principal.has_budget else 0.0
        return self.budgets.reserve(principal, estimate)

    def budget_warning(self, principal: Principal, headers: dict[str, str]) -> None:
        """Tell the caller (a header) and the log once its spend passes a warning threshold."""
        warning = self.budgets.warning(principal)
        if warning:
            headers["x-gaud-budget-warning"] = warning
            log.warning("budget warning for user %s: %s", principal.user_name, warning)

    async def settle(self, exchange: Exchange) -> None:
        """Give back what was taken up front, against what the request really used."""
        self.metrics.in_flight.dec()
        admission = exchange.admission
        if admission is not None and admission.slot is not None:
            self.in_flight.leave(admission.slot)
        if admission is not None and admission.tokens_key is not None:
            usage = exchange.usage
            await self.guards.settle(admission, int(usage.get("total_tokens") or 0) if usage else None)
        if exchange.reservation is not None:
            self.budgets.settle(exchange.reservation, exchange.cost)

    def audit(self, exchange: Exchange, journaled: int | None = None) -> Awaitable[None]:
        """The audit record (queued, written off the hot path), the metrics and the log line."""
        record = audit_record(exchange, store_content=self.store_content)
        overhead = exchange.overhead_ms() if exchange.status < 400 and not exchange.cache_hit else None
        self.metrics.record(record, overhead)
        fields = record.copy()  # the log line: the record without the content, time and attempt log (JSON)
        del fields["content"], fields["ts"], fields["attempt_log"]
        fields["overhead_ms"] = round(overhead, 3) if overhead is not None else None
        request_log.info(f"{record['status']} {record['alias']} {record['deployment'] or '-'}", fields)
        return self.audit_writer.add(record, journaled)


def audit_record(exchange: Exchange, *, store_content: bool) -> dict[str, Any]:
    """One audit row: who asked for what, where it went, what it cost, what the client saw."""
    body, principal, error = exchange.body, exchange.principal, exchange.error
    assert principal is not None
    usage = exchange.usage or {}
    content = None
    if store_content and body is not None and "messages" in body:  # chat: the prompt
        content = orjson.dumps({"messages": body.get("messages")}).decode()
    return {
        "request_id": exchange.request_id,
        "ts": time.time(),
        "user_id": principal.user_id,
        "user_name": principal.user_name,
        "alias": exchange.alias or (body.get("model") if isinstance(body, dict) else None),
        "deployment": exchange.deployment,
        "tried": ",".join(exchange.tried) or None,
        "attempts": exchange.attempts,
        "status": exchange.status,
        "error_kind": error.kind if error is not None else None,
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
        "cost": exchange.cost,
        "price_estimated": exchange.price_estimated,
        "usage_estimated": bool(usage.get("estimated")),
        "latency_ms": (time.perf_counter() - exchange.started) * 1000,
        "ttft_ms": (exchange.first_byte - exchange.started) * 1000 if exchange.first_byte else None,
        "stream": exchange.stream,
        "cache_hit": exchange.cache_hit,
        "content": content,
        "key_id": principal.key_id,
        "team_id": principal.team_id,
        "attempt_log": orjson.dumps(exchange.attempt_log).decode() if exchange.attempt_log else None,
    }
