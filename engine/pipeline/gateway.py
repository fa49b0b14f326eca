"""One chat request through the pipeline: plan -> (translate -> upstream -> translate back) per
attempt, with retries, fallbacks and circuit breakers decided by the route's rules.

Independent of the HTTP framework, so any client-facing format can sit in front of it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..accounts.ratelimit import Limit, MemoryRateLimiter, RateLimiter, retry_after
from ..alerts.events import upstream_auth_failed
from ..errors import (
    AllFailed,
    GatewayError,
    IncompleteStream,
    InternalError,
    InvalidRequest,
    NotConfigured,
    Overloaded,
    RateLimited,
    ResponseParsing,
    Shutdown,
    drop_tracebacks,
    error_for_kind,
)
from ..metrics import Metrics
from ..spec.catalog import Catalog
from ..spec.models import Target
from ..spec.provider import ProviderSpec
from ..spec.wire import NativeRequest
from ..streaming import ChunkWriter, EventReader, MessageAssembler, StreamFailure, StreamState, message_deltas
from ..streaming.encoders import EncoderFactory, StreamEncoder
from ..streaming.native import NativeRelay, Relayed
from .attempt_log import attempt_entry, skip_entry
from .breaker import HALF_OPEN, Breaker
from .deadlines import AttemptDeadline, Deadlines
from .embeddings import build_embeddings_request, embeddings_from_reply
from .images import ImageFetcher, inline_image_urls
from .pricing import Price, Quote, cost_of
from .routing import Plan, PlannedTarget, Router, activation
from .translate import (
    build_native_request,
    build_request,
    closing_finish_reason,
    completion_from_reply,
    error_from_reply,
    forward_headers,
    normalize_completion,
    post_request,
    stream_usage,
    with_usage,
)
from .upstream import Upstream, UpstreamRequest, iter_chunks
from .validation import check_structured_output

if TYPE_CHECKING:
    from ..accounts.budgets import Reservation
    from ..accounts.guards import Admission
    from ..accounts.store import Principal
    from ..alerts.sink import AlertSink
    from ..observability.otel import RequestTrace

__all__ = ["ChatResult", "Exchange", "Gateway", "StreamResult"]

log = logging.getLogger("gaud.gateway")

#: Seconds a provider's token count may take when the deployment sets no total timeout.
COUNT_TIMEOUT = 10.0

#: Failures that say a deployment is unhealthy (and count towards opening its breaker).
BREAKER_KINDS = frozenset({
    "upstream_5xx", "overloaded", "timeout", "connection", "response_parsing", "incomplete_stream", "internal_error",
})
#: Failures that say nothing of the deployment (the server's shutdown ended the attempt): neither.
NEUTRAL_KINDS = frozenset({"shutdown"})


def breaker_outcome(error: GatewayError | None) -> bool | None:
    """What an attempt that ended with `error` (None: complete) tells its deployment's breaker:
    True healthy, False a failure, None nothing (a shutdown, a refusal before the upstream)."""
    if error is None:
        return True
    if error.kind in NEUTRAL_KINDS or error.before_upstream:
        return None
    return error.kind not in BREAKER_KINDS

R = TypeVar("R", "ChatResult", "StreamResult")


def dropped(exchange: Exchange) -> dict[str, str]:
    """The header naming what the deployment that served a request dropped of it, if anything."""
    names = exchange.rewritten + exchange.dropped
    return {"x-gaud-dropped-params": ",".join(names)} if names else {}


@dataclass(slots=True)
class Exchange:
    """What happened to one client request: filled in by the stages as it goes (engine.pipeline.
    stages), audited at the end."""

    request_id: str = ""
    alias: str = ""
    deployment: str | None = None
    tried: list[str] = field(default_factory=list)
    attempts: int = 0
    usage: dict[str, Any] | None = None
    cost: float = 0.0
    #: Billed at the provider's highest price: the model has no price of its own (unlisted).
    price_estimated: bool = False
    error: GatewayError | None = None
    cache_hit: bool = False
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    stream: bool = False
    estimated_tokens: int | None = None
    #: Time spent waiting on upstreams (to the first delta, for streams) and in retry backoff.
    outside_seconds: float = 0.0
    #: What the stages took and must give back or record: the caller, its canonical request,
    #: the rate-limit admission, the budget reservation, and the status the client saw.
    principal: Principal | None = None
    body: dict[str, Any] | None = None
    admission: Admission | None = None
    reservation: Reservation | None = None
    status: int = 200
    #: The current attempt's deadline (engine.pipeline.deadlines); a stream's relay keeps to it.
    deadline: AttemptDeadline | None = None
    #: Each deployment tried or skipped, in order (engine.pipeline.attempt_log); audited as JSON.
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    #: The request's spans when tracing is on (engine.observability); None otherwise.
    span: RequestTrace | None = None
    #: The client's request as it may pass through to a deployment of its own format (wire.py).
    native: NativeRequest | None = None
    #: What the current deployment dropped of the request, and what validation removed from it
    #: (control characters: `messages`), both named in x-gaud-dropped-params.
    dropped: tuple[str, ...] = ()
    rewritten: tuple[str, ...] = ()

    def overhead_ms(self) -> float:
        """Time spent in the gateway itself, so far (to the first byte, for streams)."""
        end = self.first_byte if self.first_byte is not None else time.perf_counter()
        return max(0.0, (end - self.started - self.outside_seconds) * 1000)


@dataclass
class ChatResult:
    completion: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    #: The upstream's own reply, for a client of its format (same-format pass-through).
    native: dict[str, Any] | None = None


@dataclass
class StreamResult:
    """An upstream stream already open and producing; `body` yields the client's bytes (OpenAI SSE,
    or what the request's stream encoder writes)."""

    body: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    #: Told how the stream ended, for its deployment's breaker (a stream's outcome is known only
    #: at its end): True complete, False failed, None the client went away.
    settle: Callable[[bool | None], None] = lambda ok: None


def ensure_stream_events(target: Target, state: StreamState) -> None:
    """A stream that ended cleanly is a reply only if it held stream events (not JSON, not an HTML
    error page) and ended as the spec says a whole one does (`stream.ends_with`)."""
    if state.frames == 0:
        raise ResponseParsing(f"{target.provider.name} answered a stream request without any stream events")
    if not target.provider.stream.complete(state):
        raise IncompleteStream(f"{target.provider.name} ended the stream before its end event: the reply is incomplete")


class Gateway:
    """Serves OpenAI chat requests from a catalog of specs through one upstream pool."""

    def __init__(
        self,
        catalog: Catalog,
        upstream: Upstream,
        images: ImageFetcher | None = None,
        *,
        router: Router | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
        credentials: Any = None,
        allow_unlisted: bool = False,
        deadlines: Deadlines | None = None,
        drop_unsupported: bool = False,
    ) -> None:
        self.catalog = catalog
        self.upstream = upstream
        self.images = images or ImageFetcher()
        self.router = router or Router(catalog, clock=clock, allow_unlisted=allow_unlisted, drop_unsupported=drop_unsupported)
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.limiter = limiter or MemoryRateLimiter()
        self.metrics = metrics
        self.credentials = credentials  # credentials.CredentialManager, for signed-in providers
        self.alerts: AlertSink | None = None  # told of upstreams refusing the credentials
        self.deadlines = deadlines or Deadlines()

    def reload(self, catalog: Catalog) -> None:
        """Serve a new catalog from now on. Requests already planned finish on the old one; breaker
        states, latency averages and in-flight counts carry over."""
        self.router = self.router.rebound(catalog)
        self.catalog = catalog

    # -- the attempt loop -----------------------------------------------------------------------
    async def plan(self, body: dict[str, Any]) -> Plan:
        """The deployments for a request (breaker states shared by other instances pulled first)."""
        sync = getattr(self.router.breakers, "sync", None)
        if sync is not None:
            await sync()
        return self.router.plan(body)

    async def _with_retries(
        self, body: dict[str, Any], exchange: Exchange, attempt: Callable[[PlannedTarget], Awaitable[R]],
        plan: Plan | None = None,
    ) -> R:
        """Try each planned deployment, retrying and falling back as the route's rules say."""
        plan = plan or await self.plan(body)
        exchange.alias = plan.alias
        exchange.estimated_tokens = plan.facts["estimated_tokens"]
        failures: list[tuple[Target, GatewayError]] = []
        total = 0
        ends = self.deadlines.request_ends()
        span = exchange.span
        for planned in plan.targets:
            target = planned.target
            if (skip := await self._skip(planned, exchange, body)) is not None:
                log.info("skipping %s: %s", target.name, skip.message)
                exchange.attempt_log.append(skip_entry(target.name, skip.message, skip))
                failures.append((target, skip))  # not tried: no attempt, no breaker, no retry
                continue
            breaker = self.router.breakers[target.name]
            tries = 0
            while True:
                self.deadlines.check(ends, total, failures)  # no attempt starts after the request's deadline
                if not breaker.allow():
                    log.info("skipping %s: circuit breaker open", target.name)
                    exchange.attempt_log.append(skip_entry(target.name, "circuit breaker open"))
                    break
                tries += 1
                total += 1
                exchange.attempts = total
                if target.name not in exchange.tried:
                    exchange.tried.append(target.name)
                exchange.deployment = target.name
                if span is not None:
                    span.attempt(body, target.name, target.provider.name, target.model, total)
                started = self.clock()
                self.router.started(target.name)
                probe = breaker.state == HALF_OPEN  # this attempt is the half-open probe
                try:
                    result = await self._attempt(ends, planned, exchange, attempt)
                except BaseException as exc:
                    # Whatever ended the attempt reaches its breaker; cancellation (the client
                    # went away) as neither success nor failure, its probe released.
                    self.router.finished(target.name, None)
                    error = self._attempt_error(target, exc)
                    breaker.record(None if error is None else breaker_outcome(error), probe=probe)
                    if span is not None:
                        span.failed(None if error is None else error.kind)
                    if error is None:
                        raise
                    error.attempts = tries
                    self._alert_if_refused(target, error)
                    failures.append((target, error))
                    facts = activation(plan.facts, attempt=tries, target=target, error=error)
                    if plan.policy.retry is not None and plan.policy.retry.matches(facts):
                        delay = plan.policy.backoff.delay(tries, error.retry_after, self.rng)
                        if delay is not None and breaker.state != "open" and self.deadlines.allows(ends, delay):
                            log.info("retrying %s in %.2f s after %s (attempt %d)", target.name, delay, error.kind, tries)
                            exchange.outside_seconds += delay
                            if self.metrics is not None:
                                self.metrics.retries.labels(target.name).inc()
                            await self.sleep(delay)
                            continue
                    if plan.policy.fallback is not None and plan.policy.fallback.matches(facts):
                        log.info("falling back from %s after %s", target.name, error.kind)
                        if self.metrics is not None:
                            self.metrics.fallbacks.labels(target.name).inc()
                        break
                    raise error from error.__cause__  # an internal_error's cause was logged, not chained
                else:
                    return self._succeeded(target, breaker, exchange, result, self.clock() - started, probe)
        raise self._all_failed(plan.alias, failures)

    async def _attempt(
        self, ends: float, planned: PlannedTarget, exchange: Exchange, attempt: Callable[[PlannedTarget], Awaitable[R]]
    ) -> R:
        """One attempt: the deployment's own rpm/tpm, then the call within its deadline; noted in
        `exchange.attempt_log` however it ends."""
        started = time.perf_counter()
        try:
            if planned.rpm or planned.tpm:
                await self._take_deployment_limits(planned, exchange)
            result = await self._within_deadline(ends, planned, exchange, attempt)
        except BaseException as exc:
            exchange.attempt_log.append(attempt_entry(planned.target.name, started, exc))
            raise
        exchange.attempt_log.append(attempt_entry(planned.target.name, started, None))
        return result

    def _succeeded(self, target: Target, breaker: Breaker, exchange: Exchange, result: R, latency: float, probe: bool) -> R:
        """An attempt that answered: its latency, breaker (a stream's when it ends), headers and span."""
        self.router.finished(target.name, latency)
        if self.metrics is not None:
            self.metrics.upstream_latency.labels(target.name).observe(latency)
        if isinstance(result, StreamResult):  # settled when the stream ends (_stream_once)
            result.settle = partial(breaker.record, probe=probe)
        else:
            breaker.record_success()
            if exchange.span is not None:  # a stream's attempt span ends with the stream
                exchange.span.served(result.completion, exchange.usage, exchange.cost)
        headers = result.headers
        headers["x-gaud-deployment"] = target.name
        headers["x-gaud-attempts"] = str(exchange.attempts)
        if exchange.rewritten or exchange.dropped:
            headers.update(dropped(exchange))
        quote = self.router.quote(target)
        if quote is not None and quote.estimated:  # for a stream: with its headers
            exchange.price_estimated = True
            result.headers["x-gaud-cost-estimated"] = "true"
        return result

    async def _within_deadline(
        self, ends: float, planned: PlannedTarget, exchange: Exchange, attempt: Callable[[PlannedTarget], Awaitable[R]]
    ) -> R:
        """One attempt call within its deadline (engine.pipeline.deadlines), which the relay of a
        stream keeps to after the call has returned (`exchange.deadline`)."""
        deadline = exchange.deadline = self.deadlines.attempt(ends, planned.total_timeout, planned.idle_timeout)
        return await deadline.run(attempt(planned))

    async def _skip(self, planned: PlannedTarget, exchange: Exchange, body: dict[str, Any]) -> GatewayError | None:
        """Why a deployment is not tried for this request, or None: its provider is not
        configured here, the request streams and the deployment can neither stream nor
        emulate it, or it asks for what the deployment cannot express (`request.params`) and
        dropping is not allowed (the next candidate may, so this is a skip, not a failure)."""
        spec = planned.target.provider
        native = exchange.native
        passes = native is not None and self._native(planned, exchange) is not None
        try:  # a request passed through as the client wrote it is not translated: nothing to refuse or drop
            exchange.dropped = () if passes else spec.params.fit(body, planned.target.name, drop=planned.drop_unsupported)[1]
        except InvalidRequest as refused:
            return refused
        if self.router.setup_hint(spec, planned.target.name) and (skip := await self.not_configured(spec, planned.target.name)):
            return skip
        if exchange.stream and spec.stream is None and not self._emulates(planned):
            error = InvalidRequest(
                f"{planned.target.name} cannot stream: the {spec.name} spec has no `stream` section; "
                "send the request without `stream` (or emulate streaming: `stream: {emulate: true}` in the spec)",
                param="stream", code="stream_unsupported",
            )
            error.before_upstream = True
            return error
        if native is not None and native.lost and not passes:
            return self._cannot_express(planned, native)
        return None

    def _native(self, planned: PlannedTarget, exchange: Exchange) -> NativeRequest | None:
        """The client's request when this deployment takes it as it is: same wire format, and a
        direct call (a stream relayed frame by frame; no stream-only or emulated call)."""
        native, spec = exchange.native, planned.target.provider
        if native is None or not native.served_by(spec.wire_format) or spec.endpoints["chat"].stream_only:
            return None
        if exchange.stream and (spec.stream is None or spec.stream.framing != "sse" or self._emulates(planned)):
            return None
        return native

    @staticmethod
    def _cannot_express(planned: PlannedTarget, native: NativeRequest) -> InvalidRequest:
        """Why a deployment of another format is skipped for a request with parts only its own
        format carries (a translation would drop them). The one place that decides it: a finer,
        per-target check of what a translation can express belongs here."""
        lost = ", ".join(map(str, native.lost))
        error = InvalidRequest(
            f"{planned.target.name} cannot take {lost}: the request has no translation to its format "
            f"({planned.target.provider.name}); only a deployment of the client's format "
            f"({', '.join(sorted(native.formats))}) passes it through",
            param=native.lost[0].param, code="unsupported_parameter",
        )
        error.before_upstream = True
        return error

    @staticmethod
    def _emulates(planned: PlannedTarget) -> bool:
        """Whether a streamed request to this deployment is served from one non-streaming call."""
        return planned.emulate_stream or planned.target.provider.stream_emulated

    async def not_configured(self, spec: ProviderSpec, deployment: str = "") -> NotConfigured | None:
        """Why a provider (a `deployment` of it) cannot be called here, or None. Its required variables
        are looked up once per catalog (Router.setup_hint); a provider that signs in counts as
        configured while signed in (the credential manager caches that)."""
        hint = self.router.setup_hint(spec, deployment)
        if hint is None:
            return None
        if self.credentials is not None and spec.signs_in:
            try:
                if await self.credentials.access_token(spec) is not None:
                    return None
            except GatewayError:  # signed in, but it no longer works: the attempt says why
                return None
        where = f"{spec.name} (deployment {deployment})" if spec.deployment is not None else spec.name
        return NotConfigured(f"{where} is not configured: {hint}")

    def _alert_if_refused(self, target: Target, error: GatewayError) -> None:
        """An upstream that answers 401/403 refuses the gateway's credentials: an operator's problem."""
        if self.alerts is not None and error.upstream_status in (401, 403):
            self.alerts.emit(upstream_auth_failed(target.name, target.provider.name, error.upstream_status, error.kind))

    @staticmethod
    def _attempt_error(target: Target, exc: BaseException) -> GatewayError | None:
        """What a failed attempt counts as: its GatewayError; any other exception as
        `internal_error`; None for cancellation and other BaseExceptions (neither)."""
        if isinstance(exc, GatewayError):
            # Kept in `failures` and maybe re-raised: without tracebacks it does not tie this
            # frame (and the request) into a cycle only the garbage collector frees.
            drop_tracebacks(exc)
            return exc
        if isinstance(exc, Exception):
            return Gateway._unexpected(target, exc)
        return None

    @staticmethod
    def _unexpected(target: Target, exc: Exception) -> InternalError:
        """An exception the gateway did not expect (a bug): the details go to the log only."""
        log.error("unexpected error while trying %s", target.name, exc_info=exc)
        drop_tracebacks(exc)
        return InternalError()

    async def _take_deployment_limits(self, planned: PlannedTarget, exchange: Exchange) -> None:
        """A deployment's own rpm/tpm (routes.yaml): over it, the attempt fails as `rate_limit`."""
        name = planned.target.name
        takes: list[tuple[str, Limit, float]] = []
        if planned.rpm:
            takes.append((f"deployment:{name}:rpm", Limit(float(planned.rpm)), 1.0))
        if planned.tpm:
            takes.append((f"deployment:{name}:tpm", Limit(float(planned.tpm)), float(exchange.estimated_tokens or 1)))
        decisions = await self.limiter.take_many(takes)
        if not decisions[0].allowed:
            error = RateLimited(f"{name} is at its configured rate limit.", retry_after=retry_after(decisions))
            error.before_upstream = True
            raise error

    @staticmethod
    def _all_failed(alias: str, failures: list[tuple[Target, GatewayError]]) -> GatewayError:
        if not failures:
            return Overloaded(f"No deployment for '{alias}' is available: every circuit breaker is open.")
        if len({t.name for t, _ in failures}) == 1:
            return failures[-1][1]
        tried = [error for _, error in failures if error.attempts]  # skipped ones have none
        if not tried:  # every deployment skipped: one error naming each reason once
            message = "; ".join(dict.fromkeys(error.message for _, error in failures))
            if all(isinstance(error, InvalidRequest) for _, error in failures):  # none can take it: a 400
                first = failures[0][1]
                return InvalidRequest(message, param=first.param, code=first.code)
            return NotConfigured(message)  # 503 (some are not configured)
        last: dict[str, tuple[Target, GatewayError]] = {}
        for target, error in failures:
            last[target.name] = (target, error)
        parts = [f"{name} ({error.kind} after {error.attempts} attempt(s): {error.message})" if error.attempts
                 else f"{name} (skipped: {error.message})" for name, (_, error) in last.items()]
        result = AllFailed(
            f"All deployments for '{alias}' failed: " + "; ".join(parts),
            status=tried[-1].status,
            attempts=sum(e.attempts for _, (_, e) in last.items()),
        )
        result.failures = [
            {"deployment": name, "kind": error.kind, "status": error.upstream_status or error.status,
             "attempts": error.attempts, "message": error.message}
            for name, (_, error) in last.items()
        ]
        return result

    async def _signed(self, target: Target, request: UpstreamRequest) -> UpstreamRequest:
        """Headers with the short-lived token of a signed-in provider (spec `api.auth`)."""
        auth = target.provider.auth
        if self.credentials is None or auth is None or not auth.dynamic:
            return request
        token = await self.credentials.access_token(target.provider)
        if token is not None:
            request.headers = target.provider.headers_for_token(target.model, target.api_base, token)
        return request

    async def _request_for(
        self, target: Target, body: dict[str, Any], *, stream: bool, estimated_tokens: int | None,
        native: NativeRequest | None = None, drop: bool = False,
    ) -> UpstreamRequest:
        """The upstream request for one deployment: remote images fetched when the spec says so,
        mapped (or, `native`, the client's own body with the wire format's rewrites), and signed
        for a signed-in provider. The awaits happen only when there is I/O."""
        try:
            if native is not None:
                request = build_native_request(target, body, native, stream=stream, estimated_tokens=estimated_tokens)
            else:
                if target.provider.inline_image_urls:
                    body = await inline_image_urls(body, self.images)
                request = build_request(target, body, stream=stream, estimated_tokens=estimated_tokens, drop=drop)
            auth = target.provider.auth
            if self.credentials is not None and auth is not None and auth.dynamic:
                request = await self._signed(target, request)
            if native is not None and native.headers:
                request.headers = forward_headers(request.headers, native.headers)
        except GatewayError as error:
            error.before_upstream = True
            raise
        return request

    # -- non-streaming --------------------------------------------------------------------------
    def quote(self, target: Target) -> Quote | None:
        """What a deployment is billed at: $0 only when declared free; an unlisted model at its
        provider's highest price, estimated. None (no price to give) is refused when planned."""
        return self.router.quote(target)

    def price(self, target: Target) -> Price | None:
        quote = self.router.quote(target)
        return quote.price if quote is not None else None

    def _account(self, exchange: Exchange, target: Target, usage: dict[str, Any] | None) -> None:
        exchange.usage = usage
        quote = self.router.quote(target)
        if quote is None:  # planning refuses these; a reload may have dropped the price since
            log.error("no price for %s: this request is recorded at $0", target.name)
            exchange.cost = 0.0
            return
        exchange.price_estimated = quote.estimated
        exchange.cost = cost_of(quote.price, usage) if usage else 0.0

    def estimate_cost(
        self, body: dict[str, Any], plan: Plan, *, prompt_tokens: int | None = None, output: bool = True
    ) -> float:
        """A cost to reserve against budgets before the call: the prompt estimate (the plan's, or
        `prompt_tokens`) plus, with `output` (chat; not embeddings), the output asked for or each
        candidate's max output (at most 4096 tokens); at the dearest candidate's price, since a
        fallback may serve the request."""
        prompt = plan.facts["estimated_tokens"] if prompt_tokens is None else prompt_tokens
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        most = 0.0
        for planned in plan.targets:
            target = planned.target
            price = self.price(target)
            if price is None:
                continue
            completion = int(asked or min(target.info.max_output_tokens or 4096, 4096)) if output else 0
            most = max(most, cost_of(price, {"prompt_tokens": prompt, "completion_tokens": completion}))
        return most

    async def chat(self, body: dict[str, Any], exchange: Exchange | None = None, *, plan: Plan | None = None) -> ChatResult:
        """A validated OpenAI chat request (`validation.validate_request`), not streamed."""
        exchange = exchange or Exchange()
        return await self._with_retries(body, exchange, lambda planned: self._chat_once(planned, body, exchange), plan)

    async def _chat_once(self, planned: PlannedTarget, body: dict[str, Any], exchange: Exchange) -> ChatResult:
        target = planned.target
        native = self._native(planned, exchange)
        raw = None
        if target.provider.endpoints["chat"].stream_only:
            completion = await self._chat_from_stream(planned, body, exchange.estimated_tokens, exchange.deadline,
                                                      exchange.span)
        else:
            request = await self._request_for(target, body, stream=False, estimated_tokens=exchange.estimated_tokens,
                                              native=native, drop=planned.drop_unsupported)
            raw = await self._exchange_json(planned, request, exchange)
            # A passed-through reply too: checked and its usage read with the spec, as any reply.
            completion = completion_from_reply(target, raw, requested_model=body["model"])
        self._account(exchange, target, with_usage(completion, exchange.estimated_tokens)["usage"])
        check_structured_output(body, completion)
        return ChatResult(completion, {"x-gaud-cost": f"{exchange.cost:.8f}"}, native=raw if native is not None else None)

    async def _exchange_json(self, planned: PlannedTarget, request: UpstreamRequest, exchange: Exchange) -> Any:
        """Send one non-streaming request; the parsed JSON reply, or the classified error."""
        target = planned.target
        if exchange.span is not None:
            request.headers = exchange.span.inject(request.headers)
        sent = time.perf_counter()
        reply = await self.upstream.send(request, timeout=planned.timeout, deadline=exchange.deadline)
        exchange.outside_seconds += time.perf_counter() - sent
        if reply.status >= 400:
            raise error_from_reply(target, reply.status, reply.body, reply.headers)
        try:
            return orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise ResponseParsing(f"{target.provider.name} returned a reply that is not JSON") from None

    async def _chat_from_stream(
        self, planned: PlannedTarget, body: dict[str, Any], estimated_tokens: int | None,
        deadline: AttemptDeadline | None = None, span: RequestTrace | None = None,
    ) -> dict[str, Any]:
        """Serve a non-stream request from a streamed upstream (spec: `endpoints.chat.stream_only`)."""
        target = planned.target
        assembler = MessageAssembler(target.provider.special_tokens)
        state = StreamState()
        async with AsyncExitStack() as stack:
            response = await self._open(stack, planned, body, estimated_tokens, deadline, span)
            async for deltas in self._reads(target, response, EventReader(target.provider.stream, state), deadline):
                assembler.add(deltas)
        out = {
            "id": state.id,
            "model": state.model,
            "choices": [{"message": assembler.message(), "finish_reason": state.raw_finish}],
        }
        return normalize_completion(out, target, state.raw_usage or None, body["model"])

    # -- embeddings -----------------------------------------------------------------------------
    async def embeddings(
        self, body: dict[str, Any], exchange: Exchange | None = None, *, plan: Plan | None = None
    ) -> ChatResult:
        """An OpenAI embeddings request (already validated) with the same routing and retries."""
        exchange = exchange or Exchange()
        return await self._with_retries(body, exchange, lambda planned: self._embed_once(planned, body, exchange), plan)

    async def _embed_once(self, planned: PlannedTarget, body: dict[str, Any], exchange: Exchange) -> ChatResult:
        target = planned.target
        request = await self._signed(target, build_embeddings_request(target, body))
        result = embeddings_from_reply(target, await self._exchange_json(planned, request, exchange), body)
        self._account(exchange, target, {"prompt_tokens": result["usage"]["prompt_tokens"], "completion_tokens": 0})
        return ChatResult(result, {"x-gaud-cost": f"{exchange.cost:.8f}"})

    # -- counting -------------------------------------------------------------------------------
    async def count_tokens(
        self, body: dict[str, Any], estimate: int, native: NativeRequest | None = None, exchange: Exchange | None = None,
    ) -> int | None:
        """A prompt's tokens as counted by the provider of the route's first deployment (its spec's
        `count_tokens`), or None when that spec declares no counting endpoint or the call fails: the
        caller answers with `estimate` then. One attempt, no retries, no breaker: a count is a hint.
        A deployment of the client's own format (`native`) counts the client's request as it is;
        the call is the request's one attempt (`exchange.attempts`), and its span when traced."""
        span = exchange.span if exchange is not None else None
        try:
            planned = (await self.plan(body)).targets[0]
        except (GatewayError, IndexError):  # an unknown model: estimated, as without a counter
            return None
        target = planned.target
        counter = target.provider.counter
        if counter is None:
            return None
        try:
            same = native if native is not None and native.served_by(target.provider.wire_format) else None
            chat = await self._request_for(target, body, stream=False, estimated_tokens=estimate, native=same, drop=True)
            mapped = counter.request_mapper(chat.body, {"model": target.model}) if counter.request_mapper else chat.body
            request = post_request(target, "count_tokens", mapped, stream=False)
            request.headers = chat.headers  # signed as the chat request is, for a signed-in provider
            if exchange is not None:
                exchange.attempts = 1
            if span is not None:
                span.attempt(body, target.name, target.provider.name, target.model, 1)
                request.headers = span.inject(request.headers)
            reply = await asyncio.wait_for(self.upstream.send(request, timeout=planned.timeout),
                                           planned.total_timeout or COUNT_TIMEOUT)
            if reply.status >= 400:
                raise error_from_reply(target, reply.status, reply.body, reply.headers)
            count = counter.count_of(orjson.loads(reply.body))
        except (GatewayError, TimeoutError, orjson.JSONDecodeError) as exc:
            log.info("count_tokens on %s failed, estimated instead: %s", target.name, exc)
            if span is not None:  # a no-op when it failed before the call
                span.failed(getattr(exc, "kind", "timeout" if isinstance(exc, TimeoutError) else "response_parsing"))
            return None
        if count is None:
            log.info("count_tokens on %s: no count in the reply, estimated instead", target.name)
        if span is not None:
            span.counted(count)
        return count

    # -- streaming ------------------------------------------------------------------------------
    async def chat_stream(
        self, body: dict[str, Any], exchange: Exchange | None = None, *, plan: Plan | None = None,
        encoder: EncoderFactory | None = None,
    ) -> StreamResult:
        """Open an upstream stream for a validated request and read it up to the first delta
        before answering, so a failure before the first byte is an ordinary error that can be
        retried or fall back.

        `encoder` writes a client format's stream (`IngressSpec.stream_encoder`) from the canonical
        deltas, one encoder per attempt; None writes OpenAI chunks (`ChunkWriter`), forwarding the
        frames of a `stream.passthrough` upstream as they come."""
        exchange = exchange or Exchange()
        exchange.stream = True
        return await self._with_retries(
            body, exchange, lambda planned: self._stream_once(planned, body, exchange, encoder), plan)

    async def _stream_once(
        self, planned: PlannedTarget, body: dict[str, Any], exchange: Exchange, encoder: EncoderFactory | None = None
    ) -> StreamResult:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if self._emulates(planned):
            return await self._emulated_stream(planned, body, exchange, include_usage, encoder)
        stack = AsyncExitStack()
        sent = time.perf_counter()
        try:
            native = self._native(planned, exchange)
            response = await self._open(stack, planned, body, exchange.estimated_tokens, exchange.deadline, exchange.span,
                                        native)
            pieces = self._relay(planned.target, response, body["model"], include_usage, exchange, encoder, native is not None)
            first = await pieces.__anext__()
            exchange.first_byte = time.perf_counter()
            exchange.outside_seconds += exchange.first_byte - sent
        except BaseException:
            await stack.aclose()
            raise

        async def body_bytes() -> AsyncIterator[bytes]:
            ok: bool | None = None  # closed before its end: the client went away
            try:
                yield b""  # primed below
                yield first
                async for piece in pieces:
                    yield piece
                ok = breaker_outcome(exchange.error)
            except Exception:
                ok = False
                raise
            finally:
                try:
                    await pieces.aclose()
                    await stack.aclose()
                finally:
                    result.settle(ok)

        out = body_bytes()
        # Primed into its `try`, so closing it even before the first read releases the upstream
        # and settles the breaker (closing a generator never started runs nothing).
        await out.__anext__()
        result = StreamResult(out)
        return result

    async def _emulated_stream(
        self, planned: PlannedTarget, body: dict[str, Any], exchange: Exchange, include_usage: bool,
        encoder: EncoderFactory | None,
    ) -> StreamResult:
        """A streamed request served by one non-streaming call (`stream.emulate`, or a route's
        `stream: emulate`): the whole reply goes out as one stream, billed as a stream's would be.
        A failure is an ordinary error (nothing was sent), retried or failed over as any."""
        completion = (await self._chat_once(planned, body, exchange)).completion  # accounted there
        exchange.first_byte = time.perf_counter()
        target = planned.target
        choice = completion["choices"][0]
        writer = (encoder or ChunkWriter)(
            model=target.model or body["model"], created=int(time.time()), special_tokens=target.provider.special_tokens,
        )
        usage = {**completion["usage"], "cost": round(exchange.cost, 8)}
        payload = writer.write(message_deltas(choice["message"]), completion.get("id"), completion.get("model"))
        payload += writer.finish(choice.get("finish_reason"), usage if include_usage else None)
        if exchange.span is not None:
            exchange.span.response(completion.get("id"), completion.get("model"), [choice.get("finish_reason")])

        async def body_bytes() -> AsyncIterator[bytes]:
            try:
                yield b""  # primed below, as in _stream_once: the breaker is settled however it ends
                yield payload
            finally:
                result.settle(True)  # the upstream answered in full

        out = body_bytes()
        await out.__anext__()
        result = StreamResult(out)
        return result

    async def _open(
        self, stack: AsyncExitStack, planned: PlannedTarget, body: dict[str, Any], estimated_tokens: int | None,
        deadline: AttemptDeadline | None = None, span: RequestTrace | None = None, native: NativeRequest | None = None,
    ) -> Any:
        target = planned.target
        request = await self._request_for(target, body, stream=True, estimated_tokens=estimated_tokens, native=native,
                                          drop=planned.drop_unsupported)
        if span is not None:
            request.headers = span.inject(request.headers)
        response = await stack.enter_async_context(self.upstream.open_stream(request, timeout=planned.timeout))
        if deadline is not None:  # idle and total timeouts on the body, also while it is relayed
            deadline.watch(response.content)
            stack.callback(deadline.stop)
        if response.status >= 400:
            payload = await response.read()
            raise error_from_reply(target, response.status, payload, response.headers)
        return response

    async def _reads(
        self, target: Target, response: Any, reader: Any, deadline: AttemptDeadline | None = None
    ) -> AsyncIterator[Any]:
        """Upstream bytes -> what the stream's reader makes of each read: lists of neutral deltas,
        or bytes to forward (`stream.passthrough`). All frames of one upstream read go out
        together: one client write, not one per frame. A read that generated characters is
        content for the idle timeout (a ping or comment is not)."""
        state = reader.state
        try:
            async for chunk in iter_chunks(response):
                try:
                    batch = reader.feed(chunk)
                except StreamFailure as failure:
                    if failure.partial:  # what came before the failure still reaches the client first
                        yield failure.partial
                    raise
                if deadline is not None:
                    deadline.content(reader.output_chars)
                if batch:
                    yield batch
                if state.done:
                    break
            else:  # no done frame: what the reader still holds
                batch = reader.close()
                if batch:
                    yield batch
        except StreamFailure as failure:
            raise self._stream_error(target, failure) from None
        except asyncio.CancelledError as cancel:  # at the shutdown deadline: an error the relay can send
            shutdown = Shutdown.caught(cancel)
            if shutdown is None:
                raise
            raise shutdown from None
        ensure_stream_events(target, state)

    @staticmethod
    def _stream_error(target: Target, failure: StreamFailure) -> GatewayError:
        if failure.kind is not None:
            return error_for_kind(failure.kind, f"{target.provider.name} stream error: {failure.message}")
        return target.provider.classify_error(None, failure.body, code=failure.code)

    async def _relay(
        self, target: Target, response: Any, requested_model: str, include_usage: bool, exchange: Exchange,
        encoder: EncoderFactory | None = None, native: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """Upstream stream -> client bytes. Frames are forwarded as they come to an OpenAI client
        (`encoder` None) of a `stream.passthrough` upstream, and (`native`) to a client of the
        upstream's own format, all of them; otherwise every frame is read into deltas for the encoder."""
        spec = target.provider
        state = StreamState()
        model, created = target.model or requested_model, int(time.time())
        writer: StreamEncoder
        reader: Any
        if native:  # same format: every frame read for usage and forwarded as it came
            reader, forwarded = NativeRelay(spec.stream, state), True
            writer = Relayed((encoder or ChunkWriter)(model=model, created=created))
        elif encoder is None:
            reader = spec.stream.reader(state, special_tokens=spec.special_tokens)
            forwarded = not isinstance(reader, EventReader)
            writer = ChunkWriter(model=model, created=created, special_tokens=spec.special_tokens, role_sent=forwarded)
        else:
            reader, forwarded = EventReader(spec.stream, state), False
            writer = encoder(model=model, created=created, special_tokens=spec.special_tokens)
        sent = False
        finished = False

        def usage_so_far(whole: bool = False) -> dict[str, Any]:
            return stream_usage(spec, state.raw_usage, reader.output_chars, exchange.estimated_tokens, whole=whole)

        try:
            async for batch in self._reads(target, response, reader, exchange.deadline):
                piece = batch if forwarded else writer.write(batch, state.id, state.model)
                if piece and (sent or state.frames or not forwarded):  # comments alone are no first byte
                    sent = True
                    yield piece
            finished = True
        except Exception as exc:  # after the first byte, any failure is an error event
            if not sent:
                raise
            error = exc if isinstance(exc, GatewayError) else self._unexpected(target, exc)
            finished = True
            self._account(exchange, target, usage_so_far())  # what was generated is still billed
            exchange.error = error
            yield writer.error(error)
            return
        finally:
            if not finished and sent:  # the client went away mid-stream: bill what was generated
                self._account(exchange, target, usage_so_far())
        usage = usage_so_far(whole=True)
        self._account(exchange, target, usage)
        usage["cost"] = round(exchange.cost, 8)
        finish_reason = closing_finish_reason(spec, state, forwarded)
        if exchange.span is not None:
            exchange.span.response(state.id, state.model, [finish_reason])
        yield writer.finish(finish_reason, usage if include_usage else None, state.id, state.model)
