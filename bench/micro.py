#!/usr/bin/env python3
"""Microbenchmark of the engine's per-request work, without network: a plain timing loop per stage.

    python bench/micro.py            # ~20 s; µs per operation, best of 5 repeats
    python bench/micro.py --quick    # a few iterations: the CI smoke (it must run; times are not checked)
    python bench/micro.py --json     # the same numbers as JSON

Two routes, as in the load benchmark: gpt-4o (OpenAI pass-through) and claude-sonnet-4 (OpenAI ->
Anthropic translation). Upstream replies are the bytes bench/fake_upstream sends (20 content chunks).

Stages (what one non-stream request costs the engine, in order): parse request, validate, route plan,
map request, serialize upstream body, parse reply, map reply, pricing, serialize reply. Streams: stream
frames (framing + event table + OpenAI chunk per upstream event, for a whole 20-chunk stream).
Totals: the same request through `Gateway` and through the whole ASGI app (server.py: middleware,
auth off, budgets, audit queue), each with an in-memory upstream; then the non-stream request with auth
on (a key verified per request), for a key without limits and for one whose user and team have budgets
and rate limits. What the totals add over the sum of
the stages is glue (coroutines, dataclasses, headers); what the load benchmark adds over the ASGI row
is uvicorn/httptools and the aiohttp client.

A stage that can no longer be run (the engine API moved) makes the script exit 1 with the stage's
name, so CI notices; fix this file then. Pricing is optional: skipped if engine.pipeline.pricing has no cost_of.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's engine, installed or not

ROUTES = {"gpt-4o": "gpt-4o (OpenAI pass-through)", "claude-sonnet-4": "claude-sonnet-4 (→ Anthropic)"}
#: Stage names, printed in this order (tests/test_bench_smoke.py looks for them).
STAGES = ("parse request", "validate", "route plan", "map request", "serialize upstream body", "parse reply",
          "map reply", "pricing", "serialize reply", "stream frames")
FAKE_ENV = {"OPENAI_API_KEY": "sk-fake", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "ANTHROPIC_API_KEY": "sk-fake", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
N_CHUNKS = 20


# ------------------------------------------------------------------ what the fake upstream sends
def request_body(model: str, stream: bool) -> bytes:
    """bench/bodies/openai_<model>_<mode>.json."""
    path = ROOT / "bench" / "bodies" / f"openai_{model}_{'stream' if stream else 'nonstream'}.json"
    return path.read_bytes()


def upstream_reply(anthropic: bool) -> bytes:
    text = "".join(f"tok{i} " for i in range(N_CHUNKS))
    if anthropic:
        return orjson.dumps({"id": "msg_fake123", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
                             "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                             "usage": {"input_tokens": 12, "output_tokens": N_CHUNKS}})
    return orjson.dumps({"id": "chatcmpl-fake123", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
                         "system_fingerprint": "fp_fake", "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                         "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 12, "completion_tokens": N_CHUNKS, "total_tokens": N_CHUNKS + 12}})


def upstream_events(anthropic: bool) -> list[bytes]:
    """The SSE events of one stream, one per upstream flush (as bench/fake_upstream writes them)."""
    if anthropic:
        def ev(name: str, data: str) -> bytes:
            return f"event: {name}\ndata: {data}\n\n".encode()
        out = [ev("message_start", '{"type":"message_start","message":{"id":"msg_fake123","type":"message","role":"assistant",'
                  '"model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,'
                  '"usage":{"input_tokens":12,"output_tokens":1}}}'),
               ev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}')]
        # %-formatting: the templates are JSON, whose braces an f-string would have to double.
        out += [ev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tok%d "}}' % i)  # noqa: UP031
                for i in range(N_CHUNKS)]
        out += [ev("content_block_stop", '{"type":"content_block_stop","index":0}'),
                ev("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'  # noqa: UP031
                   '"usage":{"output_tokens":%d}}' % N_CHUNKS),
                ev("message_stop", '{"type":"message_stop"}')]
        return out
    pre = ('data: {"id":"chatcmpl-fake123","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o",'
           '"system_fingerprint":"fp_fake","choices":[')
    out = [f'{pre}{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}\n\n'.encode()]
    out += [f'{pre}{{"index":0,"delta":{{"content":"tok{i} "}},"logprobs":null,"finish_reason":null}}]}}\n\n'.encode()
            for i in range(N_CHUNKS)]
    out += [f'{pre}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}\n\n'.encode(),
            f'{pre}],"usage":{{"prompt_tokens":12,"completion_tokens":{N_CHUNKS},"total_tokens":{N_CHUNKS + 12}}}}}\n\n'.encode(),
            b"data: [DONE]\n\n"]
    return out


# ------------------------------------------------------------------------ an in-memory upstream
class _Content:
    def __init__(self, events: list[bytes]) -> None:
        self._events = events
        self._eof = False

    async def iter_any(self) -> AsyncIterator[bytes]:
        for event in self._events:
            yield event
        self._eof = True

    def at_eof(self) -> bool:
        return self._eof


class _StreamResponse:
    def __init__(self, url: str, events: list[bytes]) -> None:
        self.status = 200
        self.headers = {"content-type": "text/event-stream"}
        self.url = url
        self.content = _Content(events)

    async def read(self) -> bytes:
        return b""

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryUpstream:
    """Stands in for engine.pipeline.upstream.Upstream: canned fake-upstream replies, no sockets."""

    def __init__(self) -> None:
        from engine.pipeline.upstream import UpstreamReply

        self._reply = UpstreamReply
        self._bodies = {a: upstream_reply(a) for a in (False, True)}
        self._events = {a: upstream_events(a) for a in (False, True)}

    async def send(self, request: Any, *, timeout: float | None = None, deadline: Any = None) -> Any:
        orjson.dumps(request.body)  # what the real one does before sending
        anthropic = request.url.endswith("/messages")
        return self._reply(200, {"content-type": "application/json"}, self._bodies[anthropic])

    @asynccontextmanager
    async def open_stream(self, request: Any, *, timeout: float | None = None) -> AsyncIterator[_StreamResponse]:
        orjson.dumps(request.body)
        yield _StreamResponse(request.url, self._events[request.url.endswith("/messages")])

    async def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ timing
class Timer:
    def __init__(self, number: int, repeat: int) -> None:
        self.number, self.repeat = number, repeat

    def per_op(self, fn: Callable[[Any], Any], make_arg: Callable[[], Any]) -> float:
        """µs per call of fn(arg), best of `repeat`; a fresh argument per call (stages may mutate it)."""
        best = float("inf")
        for _ in range(self.repeat):
            args = [make_arg() for _ in range(self.number)]
            t0 = time.perf_counter()
            for arg in args:
                fn(arg)
            best = min(best, (time.perf_counter() - t0) / self.number)
        return best * 1e6

    def per_op_async(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[Any]]) -> float:
        async def run() -> float:
            best = float("inf")
            for _ in range(self.repeat):
                t0 = time.perf_counter()
                for _ in range(self.number):
                    await fn()
                best = min(best, (time.perf_counter() - t0) / self.number)
            return best

        return loop.run_until_complete(run()) * 1e6


# ------------------------------------------------------------------------------- the ASGI app
class AsgiClient:
    """Calls the app the way uvicorn's httptools protocol does (ASGI spec 2.3), lifespan included."""

    def __init__(self, app: Any, key: str = "sk-bench") -> None:
        self.app = app
        self.authorization = f"Bearer {key}".encode()
        self.state: dict[str, Any] = {}
        self._lifespan: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._lifespan = asyncio.ensure_future(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        message = await self._outbox.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"app start-up failed: {message}")

    async def stop(self) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._outbox.get()
        if self._lifespan is not None:
            await self._lifespan

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8400), "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST",
            "root_path": "", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8400"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), (b"authorization", self.authorization)],
            "state": dict(self.state),
        }
        sent = False
        never: asyncio.Future[None] | None = None

        async def receive() -> dict[str, Any]:
            nonlocal sent, never
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            never = asyncio.get_running_loop().create_future()  # no disconnect: wait until cancelled
            await never
            return {"type": "http.disconnect"}

        status, parts = 0, []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(parts)


# -------------------------------------------------------------------------------------- stages
class StageFailed(Exception):
    pass


def measure(args: argparse.Namespace) -> dict[str, dict[str, float | None]]:
    from engine.pipeline.gateway import Gateway
    from engine.pipeline.translate import build_request, completion_from_reply
    from engine.pipeline.validation import Limits, validate_request
    from engine.spec.loader import load_catalog
    from engine.streaming import ChunkWriter, StreamState

    try:
        from engine.pipeline.pricing import cost_of, price_for
    except ImportError:
        cost_of = price_for = None  # type: ignore[assignment]

    timer = Timer(args.number, args.repeat)
    catalog = load_catalog(ROOT, environ=FAKE_ENV)
    catalog.raise_for_problems()
    try:
        import uvloop

        loop = uvloop.new_event_loop()  # what `gaud-engine serve` runs on (uvicorn loop="auto")
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    gateway = Gateway(catalog, MemoryUpstream())  # type: ignore[arg-type]
    results: dict[str, dict[str, float | None]] = {}

    def put(stage: str, model: str, fn: Callable[[], float | None]) -> None:
        try:
            value = fn()
        except Exception as exc:
            raise StageFailed(f"stage '{stage}' ({model}) failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
        results.setdefault(stage, {})[model] = value

    # One function per route, not a loop body: the closures handed to put() run at once, and each
    # sees its own route's values.
    def measure_stages(model: str) -> None:
        raw_request = request_body(model, stream=False)
        body = orjson.loads(raw_request)
        plan = gateway.router.plan(body)
        target = plan.targets[0].target
        spec = target.provider
        anthropic = spec.name == "anthropic"
        reply_bytes = upstream_reply(anthropic)
        upstream_body = build_request(target, validate_request(body), stream=False).body
        completion = completion_from_reply(target, orjson.loads(reply_bytes), requested_model=model)
        fresh_body = lambda: orjson.loads(raw_request)  # noqa: E731

        validate = validator(target)

        put("parse request", model, lambda: timer.per_op(orjson.loads, lambda: raw_request))
        put("validate", model, lambda: timer.per_op(validate, fresh_body))
        put("route plan", model, lambda: timer.per_op(gateway.router.plan, fresh_body))
        put("build_request (validate + map)", model,
            lambda: timer.per_op(lambda b: build_request(target, validate_request(b), stream=False), fresh_body))
        put("map request", model, lambda: max(0.0, results["build_request (validate + map)"][model] - results["validate"][model]))  # type: ignore[operator]
        put("  url template", model, lambda: timer.per_op(lambda _: spec.url("chat", target.model, False, target.api_base), lambda: None))
        put("  headers", model, lambda: timer.per_op(lambda _: spec.headers_for(target.model, target.api_base), lambda: None))
        put("serialize upstream body", model, lambda: timer.per_op(orjson.dumps, lambda: upstream_body))
        put("parse reply", model, lambda: timer.per_op(orjson.loads, lambda: reply_bytes))
        put("map reply", model, lambda: timer.per_op(
            lambda raw: completion_from_reply(target, raw, requested_model=model), lambda: orjson.loads(reply_bytes)))
        if cost_of is not None and price_for is not None:
            price = price_for(catalog, spec.name, target.model)
            usage = completion.get("usage") or {"prompt_tokens": 12, "completion_tokens": N_CHUNKS}
            put("pricing", model, lambda: timer.per_op(lambda u: cost_of(price, u), lambda: usage) if price else None)
            put("  price_for (uncached)", model, lambda: timer.per_op(lambda _: price_for(catalog, spec.name, target.model), lambda: None))
            if hasattr(gateway, "estimate_cost"):
                put("  estimate_cost (budget)", model, lambda: timer.per_op(lambda b: gateway.estimate_cost(b, gateway.router.plan(b)), fresh_body))
        else:
            results.setdefault("pricing", {})[model] = None
        put("serialize reply", model, lambda: timer.per_op(orjson.dumps, lambda: completion))

        # -- streams: the upstream's events through framing, the spec's event table and the chunk writer
        events = upstream_events(anthropic)
        stream_spec = spec.stream

        def frames_only(_: Any) -> None:
            framer = stream_spec.new_framer()
            for chunk in events:
                for _frame in framer.feed(chunk):
                    pass

        def whole_stream(_: Any) -> None:
            state = StreamState()
            writer = ChunkWriter(model=target.model or model, created=1700000000, special_tokens=spec.special_tokens)
            reader = stream_spec.reader(state, special_tokens=spec.special_tokens) if hasattr(stream_spec, "reader") else None
            if reader is not None and not hasattr(reader, "framer"):  # stream.passthrough: frames forwarded
                for chunk in events:
                    reader.feed(chunk)
                    if state.done:
                        break
                writer.finish(None, spec.usage_of(state.raw_usage), state.id, state.model)
                return
            framer = stream_spec.new_framer()
            for chunk in events:
                for event, data in framer.feed(chunk):
                    deltas = stream_spec.handle(event, data, state)
                    if deltas:
                        writer.write(deltas, state.id, state.model)
                    if state.done:
                        break
            writer.finish(spec.finish_reason(state.raw_finish, state.has_tool_calls), spec.usage_of(state.raw_usage))

        put("stream frames", model, lambda: timer.per_op(whole_stream, lambda: None))
        put("  per upstream event", model, lambda: results["stream frames"][model] / len(events))  # type: ignore[operator]
        put("  framing only", model, lambda: timer.per_op(frames_only, lambda: None))

    for model in ROUTES:
        measure_stages(model)

    # -- totals: the same requests through Gateway and through the ASGI app
    nonstage = {"sum of non-stream stages": ("parse request", "validate", "route plan", "map request", "serialize upstream body",
                                             "parse reply", "map reply", "pricing", "serialize reply")}
    for model in ROUTES:
        results.setdefault("sum of non-stream stages", {})[model] = sum(
            results[s][model] or 0.0 for s in nonstage["sum of non-stream stages"])

    async def drain(result: Any) -> None:
        async for _ in result.body:
            pass

    limits = Limits()  # validated as the pipeline's parse stage does, with the app's limits
    with tempfile.TemporaryDirectory() as tmp:
        app, client = None, None
        try:
            app = build_app(catalog, Path(tmp))
            client = AsgiClient(app)
            loop.run_until_complete(client.start())
        except Exception as exc:
            raise StageFailed(f"total 'ASGI app' failed to start: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc

        def measure_totals(model: str) -> None:
            body_ns, body_s = request_body(model, False), request_body(model, True)

            async def chat() -> None:
                await gateway.chat(validate_request(orjson.loads(body_ns), limits))

            async def chat_stream() -> None:
                await drain(await gateway.chat_stream(validate_request(orjson.loads(body_s), limits)))

            async def asgi(raw: bytes = body_ns) -> None:
                status, payload = await client.post("/v1/chat/completions", raw)  # type: ignore[union-attr]
                if status != 200 or b"tok19" not in payload:
                    raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")

            async def asgi_stream() -> None:
                await asgi(body_s)

            put("Gateway.chat, in-process", model, lambda: timer.per_op_async(loop, chat))
            put("ASGI app, non-stream", model, lambda: timer.per_op_async(loop, asgi))
            put("Gateway.chat_stream + drain", model, lambda: timer.per_op_async(loop, chat_stream))
            put("ASGI app, stream", model, lambda: timer.per_op_async(loop, asgi_stream))

        for model in ROUTES:
            measure_totals(model)
        loop.run_until_complete(client.stop())
    measure_auth(catalog, loop, timer, put)
    loop.close()
    return results


def measure_auth(catalog: Any, loop: asyncio.AbstractEventLoop, timer: Timer,
                 put: Callable[[str, str, Callable[[], float | None]], None]) -> None:
    """The non-stream request through the ASGI app with auth on: a key verified per request
    (Store.verify_key in a thread), once for a key with no limits and once for a key whose user and
    team have budgets and rate limits (the budget, team and rate-limit work runs only for those)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            app, store = build_app(catalog, Path(tmp), auth=True)
            # Before start-up, which otherwise makes (and prints) a first admin key.
            keys = {"ASGI app, auth on": store.create_key("bench-plain")[0],
                    "ASGI app, auth + limits": limited_key(store)}
            client = AsgiClient(app)
            loop.run_until_complete(client.start())
        except Exception as exc:
            raise StageFailed(f"total 'ASGI app, auth on' failed to start: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
        for row, key in keys.items():
            for model in ROUTES:
                client.authorization = f"Bearer {key}".encode()
                raw = request_body(model, False)

                async def asgi(raw: bytes = raw) -> None:
                    status, payload = await client.post("/v1/chat/completions", raw)
                    if status != 200 or b"tok19" not in payload:
                        raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")

                put(row, model, lambda: timer.per_op_async(loop, asgi))
        loop.run_until_complete(client.stop())


def limited_key(store: Any) -> str:
    """A key whose user has daily/monthly budgets and rpm/tpm limits and is in a team that has them too
    (limits far above what the benchmark spends or sends)."""
    limits = {"budget_daily": 1e9, "budget_monthly": 1e9, "rpm_limit": 1e9, "tpm_limit": 1e12}
    key = str(store.create_key("bench-limited", **limits)[0])
    try:
        from engine.accounts.teams import create_team, set_user_team
    except ImportError:  # before teams: the user's limits only
        return key
    create_team(store, {"name": "bench-team", **limits})
    set_user_team(store, "bench-limited", "bench-team")
    return key


def validator(target: Any) -> Callable[[dict[str, Any]], None]:
    """The validation before mapping: the parse stage's validate_request, then what build_request
    checks per deployment (context window, the spec's own `request.reject` rules)."""
    from engine.pipeline.tokens import estimate_prompt_tokens
    from engine.pipeline.validation import check_for_model, validate_request

    spec = target.provider

    def validate(body: dict[str, Any]) -> None:
        body = validate_request(body)
        check_for_model(body, target.info, estimate_prompt_tokens(body))
        spec.reject_if_unsupported(body)

    return validate


def build_app(catalog: Any, tmp: Path, *, auth: bool = False) -> Any:
    """server.create_app with the in-memory upstream, a throwaway SQLite file, auth off (the app), or
    auth on (the app and its migrated store, to make keys in)."""
    from engine.accounts.store import Store
    from engine.config import load_settings
    from engine.web.server import create_app

    url = f"sqlite:///{tmp / 'micro.db'}"
    settings = load_settings(None, environ={"GAUD_AUTH_ENABLED": str(auth).lower(), "GAUD_DATABASE_URL": url})
    params = inspect.signature(create_app).parameters
    kwargs: dict[str, Any] = {"upstream": MemoryUpstream()}
    store = Store(url)
    if "store" in params:
        kwargs["store"] = store
    app = create_app(catalog, settings, **kwargs)
    if not auth:
        return app
    store.migrate()
    return app, store


ORDER = (
    "parse request", "validate", "route plan", "map request", "  url template", "  headers",
    "serialize upstream body", "parse reply", "map reply", "pricing", "  price_for (uncached)", "  estimate_cost (budget)",
    "serialize reply", "sum of non-stream stages", "Gateway.chat, in-process", "ASGI app, non-stream",
    "ASGI app, auth on", "ASGI app, auth + limits",
    "stream frames", "  per upstream event", "  framing only", "Gateway.chat_stream + drain", "ASGI app, stream",
)


def render(results: dict[str, dict[str, float | None]], args: argparse.Namespace) -> str:
    width = max(len(r) for r in ORDER) + 2
    cols = list(ROUTES)
    head = f"{f'stage (µs per op, best of {args.repeat} × {args.number})':<{width + 8}}" + "".join(f"{ROUTES[c]:>34}" for c in cols)
    lines = [head, "-" * len(head)]
    for row in ORDER:
        if row not in results:
            continue
        if row in ("sum of non-stream stages", "stream frames"):
            lines.append("")
        cells = []
        for c in cols:
            v = results[row].get(c)
            cells.append(f"{'n/a' if v is None else f'{v:10.2f}':>34}")
        lines.append(f"{row:<{width + 8}}" + "".join(cells))
    lines += [
        "",
        "map request = build_request (validate + map) - validate; 'stream frames' = one whole stream of",
        (f"{len(upstream_events(False))} (OpenAI) / {len(upstream_events(True))} (Anthropic) upstream events, one per read, "
         "through the spec's reader (OpenAI's frames pass through: stream.passthrough). Totals use an in-memory "
         "upstream (no sockets)."),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few iterations only (CI smoke)")
    p.add_argument("--number", type=int, default=None, help="operations per repeat (default 2000; --quick 20)")
    p.add_argument("--repeat", type=int, default=None, help="repeats, the best is shown (default 5; --quick 1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    args.number = args.number or (20 if args.quick else 2000)
    args.repeat = args.repeat or (1 if args.quick else 5)
    import logging

    logging.disable(logging.WARNING)  # budget/audit chatter is not what is measured
    try:
        results = measure(args)
    except StageFailed as exc:
        print(f"micro.py: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"number": args.number, "repeat": args.repeat, "results": results}, indent=1))
    else:
        print(render(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
