"""A fault-injecting fake upstream: OpenAI Chat Completions and Anthropic Messages, stream and not.

Each request chooses its own fault, deterministically and without shared state, by a marker in
its prompt text: `[fault a=reset b=500]`. The part of the URL path before `/v1` is the *tag* of
the deployment (`{url}/a/v1` as one deployment's `api_base`, `{url}/b/v1` as another's), and the
marker says which fault each tag serves; a tag the marker does not name answers healthily. The
gateway forwards the prompt unchanged, so retries and fallbacks of one request meet the same
faults, and many requests in flight at once (bench/chaos.py) never race over a shared script.

Every healthy reply carries HEALTHY_TEXT with finish reason "stop" (shapes from the recorded
fixtures in tests/providers/), so a client can tell a complete reply from a truncated one.

Faults (`FAULTS`); "before the first byte" means before any content reaches the gateway:

| fault       | non-stream                                   | stream                                           |
|-------------|----------------------------------------------|--------------------------------------------------|
| healthy     | the reply                                    | the whole stream                                 |
| 500/503/529 | that status, the provider's JSON error body  | the same, before the first byte                  |
| 429         | 429 with `retry-after: 1`                    | the same                                         |
| stall       | no headers until the client goes away        | the same                                         |
| trickle     | 200, then one space every `trickle_every` s  | 200, then keep-alive pings (no content) every    |
|             | for `trickle_seconds`, then the reply        | `trickle_every` s for `trickle_seconds`, then it |
| reset       | 200, half the body, then a TCP reset         | 200, role + 2 deltas, then a TCP reset           |
| truncated   | 200, half the body, then a clean end         | 200, role + 2 deltas, then a clean end (no       |
|             |                                              | finish reason, usage, [DONE] or message_stop)    |
| wrong_shape | 200 `{"choices": {"a": 1}, "usage": 7}`      | 200, one frame of that shape, then the end event |
|             | (Anthropic: `{"content": {"a": 1}, ...}`)    |                                                  |
| malformed   | 200 `{not json`                              | 200, `data: {not json` first, then the stream    |
| html        | 502 text/html error page                     | the same                                         |

Stream deltas are written `gap` seconds apart, so the gateway reads them one at a time and the
first reaches its client before a mid-stream fault.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web

from .fakes import PROVIDERS, LoopbackServer, sse_frames

__all__ = ["FAULTS", "HEALTHY_TEXT", "FaultServer", "marker"]

FAULTS = ("healthy", "500", "503", "529", "429", "stall", "trickle", "reset", "truncated", "wrong_shape",
          "malformed", "html")

#: The text of every healthy reply, and the pieces its streams carry.
HEALTHY_PIECES = ("Tide pools", " hold", " small", " worlds", " of the sea.")
HEALTHY_TEXT = "".join(HEALTHY_PIECES)

_MARKER = re.compile(rb"\[fault ([^\]]*)\]")
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"


def marker(**faults: str) -> str:
    """The prompt marker for per-tag faults: marker(a="reset", b="500") -> "[fault a=reset b=500]"."""
    return "[fault " + " ".join(f"{tag}={fault}" for tag, fault in faults.items()) + "]"


def fault_for(tag: str, raw: bytes) -> str:
    """The fault a request asks of deployment `tag`: healthy unless its marker names the tag."""
    found = _MARKER.search(raw)
    if found is None:
        return "healthy"
    for token in found.group(1).decode().split():
        name, _, fault = token.partition("=")
        if name == tag:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
            return fault
    return "healthy"


def _fixture(provider: str, name: str) -> bytes:
    return (PROVIDERS / provider / "replies" / name).read_bytes()


def _sse(event: str | None, data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


class Wire:
    """One upstream format: its healthy replies (built from the recorded fixtures with
    HEALTHY_TEXT in them) and what each fault looks like in it."""

    ping: bytes
    error_bodies: dict[int, bytes]

    def reply(self) -> bytes:
        raise NotImplementedError

    def head_frames(self) -> list[bytes]:
        """The frames before content: role / message start."""
        raise NotImplementedError

    def delta_frames(self) -> list[bytes]:
        raise NotImplementedError

    def tail_frames(self) -> list[bytes]:
        """Finish reason, usage and the end event."""
        raise NotImplementedError

    def wrong_shape(self) -> bytes:
        raise NotImplementedError

    def wrong_shape_frames(self) -> list[bytes]:
        raise NotImplementedError

    malformed_frame: bytes

    def stream(self) -> list[bytes]:
        return [*self.head_frames(), *self.delta_frames(), *self.tail_frames()]


class OpenAIWire(Wire):
    ping = b": keep-alive\n\n"
    malformed_frame = b"data: {not json\n\n"

    def __init__(self) -> None:
        reply = json.loads(_fixture("openai", "chat_completion_text.json"))
        reply["choices"][0]["message"]["content"] = HEALTHY_TEXT
        self._reply = json.dumps(reply).encode()
        frames = [json.loads(f.decode()[len("data: "):]) for f in sse_frames(_fixture("openai", "stream_include_usage.sse"))[:4]]
        self._role, self._delta, self._finish, self._usage = frames
        self.error_bodies = {
            429: _fixture("openai", "error_429_rate_limit.json"),
            500: json.dumps({"error": {"message": "The server had an error while processing your request.",
                                       "type": "server_error", "param": None, "code": None}}).encode(),
            503: json.dumps({"error": {"message": "The engine is currently overloaded, please try again later",
                                       "type": "server_error", "param": None, "code": None}}).encode(),
            529: json.dumps({"error": {"message": "Overloaded", "type": "server_error", "param": None,
                                       "code": None}}).encode(),
        }

    def reply(self) -> bytes:
        return self._reply

    def head_frames(self) -> list[bytes]:
        return [_sse(None, self._role)]

    def delta_frames(self) -> list[bytes]:
        frames = []
        for piece in HEALTHY_PIECES:
            chunk = copy.deepcopy(self._delta)
            chunk["choices"][0]["delta"]["content"] = piece
            frames.append(_sse(None, chunk))
        return frames

    def tail_frames(self) -> list[bytes]:
        return [_sse(None, self._finish), _sse(None, self._usage), b"data: [DONE]\n\n"]

    def wrong_shape(self) -> bytes:
        return b'{"choices": {"a": 1}, "usage": 7}'

    def wrong_shape_frames(self) -> list[bytes]:
        return [b'data: {"choices": {"a": 1}, "usage": 7}\n\n', b"data: [DONE]\n\n"]


class AnthropicWire(Wire):
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    malformed_frame = b"event: content_block_delta\ndata: {not json\n\n"

    def __init__(self) -> None:
        reply = json.loads(_fixture("anthropic", "messages_text.json"))
        reply["content"][0]["text"] = HEALTHY_TEXT
        self._reply = json.dumps(reply).encode()
        frames = sse_frames(_fixture("anthropic", "stream_text.sse"))
        self._head = frames[:2]  # message_start, content_block_start
        self._delta = json.loads(frames[3].decode().split("data: ", 1)[1])
        self._tail = frames[-3:]  # content_block_stop, message_delta, message_stop
        overloaded = _fixture("anthropic", "error_529_overloaded.json")
        self.error_bodies = {
            429: _fixture("anthropic", "error_429_rate_limit.json"),
            500: json.dumps({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}).encode(),
            503: overloaded,
            529: overloaded,
        }

    def reply(self) -> bytes:
        return self._reply

    def head_frames(self) -> list[bytes]:
        return list(self._head)

    def delta_frames(self) -> list[bytes]:
        frames = []
        for piece in HEALTHY_PIECES:
            event = copy.deepcopy(self._delta)
            event["delta"]["text"] = piece
            frames.append(_sse("content_block_delta", event))
        return frames

    def tail_frames(self) -> list[bytes]:
        return list(self._tail)

    def wrong_shape(self) -> bytes:
        return b'{"content": {"a": 1}, "usage": 7}'

    def wrong_shape_frames(self) -> list[bytes]:
        return [_sse("message_start", {"type": "message_start", "message": {"content": {"a": 1}, "usage": 7}}),
                _sse("message_stop", {"type": "message_stop"})]


WIRES: dict[str, Wire] = {}


def _wire(name: str) -> Wire:
    if name not in WIRES:
        WIRES[name] = OpenAIWire() if name == "openai" else AnthropicWire()
    return WIRES[name]


class FaultServer:
    """The fake upstream. `served[(tag, fault)]` counts the requests each deployment tag got by
    fault, `stream_requests` the streamed ones, so tests can check a fault was really met."""

    def __init__(self, *, trickle_seconds: float = 7.0, trickle_every: float = 0.15, stall_max: float = 60.0,
                 gap: float = 0.03) -> None:
        self.trickle_seconds = trickle_seconds
        self.trickle_every = trickle_every
        self.stall_max = stall_max
        self.gap = gap
        self.served: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = LoopbackServer()
        self.url = ""

    def start(self) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{tag}/v1/chat/completions", self._openai)
        app.router.add_post("/{tag}/v1/messages", self._anthropic)
        self.url = self._server.serve(app)
        return self.url

    def stop(self) -> None:
        self._server.stop()

    def api_base(self, tag: str, *, wire: str = "openai") -> str:
        """A deployment's `api_base` for routes.yaml: the OpenAI spec's base ends in /v1."""
        return f"{self.url}/{tag}/v1" if wire == "openai" else f"{self.url}/{tag}"

    def count(self, tag: str, fault: str | None = None) -> int:
        with self._lock:
            return sum(n for (t, f), n in self.served.items() if t == tag and (fault is None or f == fault))

    # -- handlers ---------------------------------------------------------------------------------
    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _wire("openai"))

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _wire("anthropic"))

    async def _serve(self, request: web.Request, wire: Wire) -> web.StreamResponse:
        raw = await request.read()
        fault = fault_for(request.match_info["tag"], raw)
        with self._lock:
            self.served[(request.match_info["tag"], fault)] += 1
        try:
            stream = json.loads(raw).get("stream") is True
        except (ValueError, AttributeError):
            stream = False
        try:
            return await self._fault(request, wire, fault, stream)
        except ConnectionError:  # the gateway went away (its timeout): nothing more to say
            return web.Response(status=499)

    async def _fault(self, request: web.Request, wire: Wire, fault: str, stream: bool) -> web.StreamResponse:
        if fault in ("500", "503", "529", "429"):
            status = int(fault)
            headers = {"retry-after": "1"} if status == 429 else {}
            return web.Response(status=status, body=wire.error_bodies[status], content_type="application/json",
                                headers=headers)
        if fault == "html":
            return web.Response(status=502, body=HTML_502, content_type="text/html")
        if fault == "stall":
            return await self._stall(request)
        if not stream:
            return await self._json(request, wire, fault)
        frames = {
            "healthy": wire.stream(),
            "reset": [*wire.head_frames(), *wire.delta_frames()[:2]],
            "truncated": [*wire.head_frames(), *wire.delta_frames()[:2]],
            "wrong_shape": wire.wrong_shape_frames(),
            "malformed": [wire.malformed_frame, *wire.stream()],
            "trickle": wire.stream(),
        }[fault]
        response = await self._open(request, "text/event-stream")
        if fault == "trickle":
            await self._trickle(response, wire.ping)
        for frame in frames:
            await response.write(frame)
            await asyncio.sleep(self.gap)
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def _json(self, request: web.Request, wire: Wire, fault: str) -> web.StreamResponse:
        body = {"wrong_shape": wire.wrong_shape(), "malformed": b"{not json"}.get(fault, wire.reply())
        if fault in ("healthy", "wrong_shape", "malformed"):
            return web.Response(status=200, body=body, content_type="application/json")
        response = await self._open(request, "application/json")  # chunked: no content-length
        if fault == "trickle":
            await self._trickle(response, b" ")
            await response.write(body)
        else:  # reset, truncated: half the body
            await response.write(body[: len(body) // 2])
            if fault == "reset":
                await asyncio.sleep(self.gap)
                assert request.transport is not None
                request.transport.abort()
                return response
        await response.write_eof()
        return response

    @staticmethod
    async def _open(request: web.Request, content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"content-type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    async def _trickle(self, response: web.StreamResponse, piece: bytes) -> None:
        """Bytes that keep a socket busy without saying anything, for `trickle_seconds`."""
        until = time.monotonic() + self.trickle_seconds
        while time.monotonic() < until:
            await response.write(piece)
            await asyncio.sleep(self.trickle_every)

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        """Say nothing until the client goes away (or `stall_max` passes: then reset)."""
        until = time.monotonic() + self.stall_max
        transport = request.transport
        # aiohttp gives a handler no event for its client going away: poll the transport.
        while transport is not None and not transport.is_closing() and time.monotonic() < until:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if transport is not None:
            transport.abort()
        return web.Response(status=499)


def main() -> None:
    """Run the fault server alone (for trying a gateway by hand): prints its URL."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trickle-seconds", type=float, default=7.0)
    args = parser.parse_args()
    server = FaultServer(trickle_seconds=args.trickle_seconds)
    print(server.start(), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
