"""Failed requests must not leave reference cycles: the serving process collects the young
generation only every GC_GEN0_THRESHOLD allocations, so each cycle (with the request it holds)
would otherwise wait there, and large requests would pile up in memory."""

from __future__ import annotations

import asyncio
import gc

import httpx

from engine.config import load_settings
from engine.web.server import create_app

HELLO = [{"role": "user", "content": "Hello " * 2000}]
REQUESTS = 60


async def _cycles_per_request(client: httpx.AsyncClient, body: dict) -> float:
    """Objects the cycle collector frees per request, after REQUESTS identical requests."""
    await client.post("/v1/chat/completions", json=body)  # warm: lazy imports, pools
    gc.collect()
    for _ in range(REQUESTS):
        await client.post("/v1/chat/completions", json=body)
    return gc.collect() / REQUESTS


def test_failed_requests_leave_no_reference_cycles(catalog, upstream, tmp_path):
    settings = load_settings(environ={"GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}"})
    app = create_app(catalog, settings)
    reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    error = {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
    ok = {"model": "gpt-4o", "messages": HELLO}
    failing = {
        "invalid request": {"model": "gpt-4o", "messages": HELLO, "temperature": 9},
        "unknown model": {"model": "no-such-model", "messages": HELLO},
        "upstream error": ok,
    }

    async def run() -> tuple[float, dict[str, float]]:
        starlette = app.app
        async with starlette.router.lifespan_context(starlette):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gaud") as client:
                for _ in range(REQUESTS + 1):
                    upstream.reply(json=reply)
                baseline = await _cycles_per_request(client, ok)  # the test client's own cycles
                for _ in range(REQUESTS + 1):
                    upstream.reply(status=400, json=error)
                return baseline, {name: await _cycles_per_request(client, body) for name, body in failing.items()}

    baseline, cycles = asyncio.run(run())
    for name, per_request in cycles.items():
        assert per_request <= baseline + 1, (name, per_request, baseline)


def test_dropping_tracebacks_frees_a_failure_and_its_causes_without_the_collector():
    """An error raised from another (an upstream timeout from asyncio's) keeps a cycle through
    the cause's traceback too; drop_tracebacks clears the whole chain, causes kept."""
    import weakref

    from engine.errors import UpstreamTimeout, drop_tracebacks

    class Payload:  # stands for a request body held by a frame
        pass

    def send(body: Payload) -> None:
        try:
            raise TimeoutError("read")
        except TimeoutError as exc:
            error = UpstreamTimeout("The upstream did not answer.")
            raise error from exc

    def serve() -> tuple[UpstreamTimeout, weakref.ref]:
        body = Payload()
        try:
            send(body)
        except UpstreamTimeout as exc:
            failure = exc
        return failure, weakref.ref(body)

    gc.disable()
    try:
        failure, body = serve()
        assert body() is not None  # held by the frames in the cause's traceback
        drop_tracebacks(failure)
        assert body() is None  # freed by reference counting alone
        assert isinstance(failure.__cause__, TimeoutError) and failure.__traceback__ is None
    finally:
        gc.enable()
