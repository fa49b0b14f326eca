"""The one door to upstream providers on the hot path: a pooled aiohttp session per process.

aiohttp is used here because, measured on this kind of machine, httpx's default transport caps a
gateway near 250 requests/s per process and aiohttp reaches ~2,400. Every aiohttp failure is
translated into a gateway error kind in exactly one place, `map_upstream_errors()`: its message is
what members see, so it never names an address, port or resolver answer; the log keeps those.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from ..errors import UpstreamConnection, UpstreamTimeout
from ..spec.provider import Signer
from .deadlines import AttemptDeadline

__all__ = ["Upstream", "UpstreamReply", "UpstreamRequest", "iter_chunks", "map_upstream_errors", "prepared"]

log = logging.getLogger("gaud.upstream")


@dataclass
class UpstreamRequest:
    """One request for an upstream, as a provider spec built it."""

    method: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream: bool
    #: Signs the final bytes just before sending (spec `api.auth: aws_sigv4`); None for most.
    sign: Signer | None = None


@dataclass
class UpstreamReply:
    status: int
    headers: Any
    body: bytes


@contextmanager
def map_upstream_errors(url: str, started: float) -> Iterator[None]:
    """Translate aiohttp/asyncio failures into `timeout` or `connection` errors."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        waited = time.monotonic() - started
        error = UpstreamTimeout(f"The upstream did not answer within {waited:.1f} s.")
        error.duration = waited
        raise error from exc
    except aiohttp.ClientConnectorError as exc:
        # The origin only: a provider may carry its key in the query string.
        log.warning("cannot connect to %s: %s", URL(url).origin(), exc)
        raise UpstreamConnection("Cannot connect to the upstream.") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        raise UpstreamConnection(f"The upstream connection failed: {type(exc).__name__}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnection(f"Upstream request failed: {type(exc).__name__}") from exc


class Upstream:
    """Send translated requests; one instance (one connection pool) per process."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0, max_connections: int = 256) -> None:
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _url(self, url: str) -> URL:
        """Parsed once per URL: a deployment's URL repeats for every request (yarl parsing is not free)."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:  # URLs with per-request parts must not grow this forever
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        return parsed

    def _session_or_start(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30, ttl_dns_cache=300)
            # No cookie jar: cookies an upstream sets for one user's request must not ride along
            # on another's (and the jar's per-request filtering costs time).
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, json_serialize=lambda o: orjson.dumps(o).decode(),
                auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, read_timeout: float | None) -> aiohttp.ClientTimeout:
        """The session's timeouts, with a deployment's own read timeout when it has one; one
        object per value (built per request, it showed in profiles). Never None: aiohttp reads
        `timeout=None` as "no timeout at all", connect included."""
        if read_timeout is None:
            return self.timeout
        timeout = self._timeouts.get(read_timeout)
        if timeout is None:
            if len(self._timeouts) >= 64:
                self._timeouts.clear()
            timeout = self._timeouts[read_timeout] = aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout.sock_connect, sock_read=read_timeout
            )
        return timeout

    def _prepared(self, request: UpstreamRequest) -> tuple[URL, dict[str, str], bytes]:
        return prepared(request, self._url)

    async def send(
        self, request: UpstreamRequest, *, timeout: float | None = None, deadline: AttemptDeadline | None = None
    ) -> UpstreamReply:
        """A whole (non-streaming) exchange; `timeout` overrides the read timeout, which bounds one
        socket read only. The gateway runs each attempt within its total timeout; `deadline` also
        holds a body that is still coming when the headers are in to its idle timeout, which
        whitespace does not reset (engine.pipeline.deadlines)."""
        session = self._session_or_start()
        started = time.monotonic()
        url, headers, data = self._prepared(request)
        with map_upstream_errors(request.url, started):
            async with session.request(
                request.method, url, data=data, headers=headers, timeout=self._timeout(timeout)
            ) as response:
                if deadline is None or response.content.is_eof():  # whole already: no timer needed
                    body = await response.read()
                else:
                    body = await _read_watched(response, deadline)
                return UpstreamReply(response.status, response.headers, body)

    @asynccontextmanager
    async def open_stream(
        self, request: UpstreamRequest, *, timeout: float | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a streaming exchange; the caller reads `response.content` and must exit to release it."""
        session = self._session_or_start()
        started = time.monotonic()
        url, headers, data = self._prepared(request)
        with map_upstream_errors(request.url, started):
            response = await session.request(
                request.method, url, data=data, headers=headers, timeout=self._timeout(timeout)
            )
        try:
            yield response
        finally:
            # A stream read to its end returns the connection to the pool; one abandoned midway
            # (client gone, error) is closed, which is what cancels the upstream generation.
            if response.content.at_eof():
                response.release()
            else:
                response.close()


async def iter_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Body bytes as they arrive, with failures translated."""
    started = time.monotonic()
    with map_upstream_errors(str(response.url), started):
        async for chunk in response.content.iter_any():
            yield chunk


async def _read_watched(response: aiohttp.ClientResponse, deadline: AttemptDeadline) -> bytes:
    """A body read under the attempt's idle timeout: only bytes other than whitespace are content."""
    deadline.watch(response.content)
    chunks = []
    try:
        async for chunk in response.content.iter_any():
            if not chunk.isspace():
                deadline.touch()
            chunks.append(chunk)
    finally:
        deadline.stop()
    return b"".join(chunks)


def prepared(request: UpstreamRequest, parse: Callable[[str], URL] = URL) -> tuple[URL, dict[str, str], bytes]:
    """The URL, headers and body bytes to send; a signed request is signed on these bytes. Also
    what `spec record` sends, so that a recording is made with the gateway's own request."""
    data = orjson.dumps(request.body)
    if request.sign is not None:
        url, headers = request.sign(request.method, request.url, _with_json(request.headers), data)
        return url, headers, data
    return parse(request.url), _with_json(request.headers), data


def _with_json(headers: dict[str, str]) -> dict[str, str]:
    return {"content-type": "application/json", **headers}
