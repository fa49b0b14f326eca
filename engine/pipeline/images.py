"""Fetching image URLs for providers that accept only inline bytes, behind an SSRF guard.

The gateway refuses private, loopback, link-local and other non-public addresses unless
configured, checks every redirect hop the same way, and caps size and time. httpx is used: this
is off the hot path (only requests with remote images to such providers reach it).

A malformed URL is a 400 naming the parameter. A URL that cannot be fetched reads the same to the
client whatever the reason (no such host, a non-public address, refused): telling them apart would
let a caller map the gateway's network. The log keeps the reason, with the host only (a query
string may hold a signature).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequest

if TYPE_CHECKING:
    import httpx

__all__ = ["ImageFetcher", "inline_image_urls"]

log = logging.getLogger("gaud.images")


def _parse(url: str, param: str) -> httpx.URL:
    """The URL as httpx will request it (so the host checked is the host connected to)."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):  # an unclosed [IPv6 bracket, a port that is not a number
        raise InvalidRequest(f"{param}: not a valid image URL", param=param) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidRequest(f"{param}: only http(s) image URLs with a host can be fetched", param=param)
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise InvalidRequest(f"{param}: the image URL's port is out of range", param=param)
    return parsed


def _unfetchable(param: str, host: str, reason: str) -> InvalidRequest:
    log.info("image URL not fetched (%s): host %r: %s", param, host, reason)
    return InvalidRequest(f"{param}: the image URL cannot be fetched", param=param)


class ImageFetcher:
    def __init__(
        self,
        *,
        allow_private: bool = False,
        allowed_hosts: Iterable[str] = (),
        max_bytes: int = 20 * 1024 * 1024,
        timeout: float = 10.0,
        max_redirects: int = 3,
    ) -> None:
        self.allow_private = allow_private
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects

    async def _check_host(self, url: httpx.URL, param: str) -> None:
        host = url.host.lower()
        if self.allow_private or host in self.allowed_hosts:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, url.port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise _unfetchable(param, host, f"cannot resolve: {exc}") from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                raise _unfetchable(param, host, f"resolves to the non-public address {address}")

    async def fetch(self, url: str, param: str) -> tuple[str, bytes]:
        """(media type, bytes) of an image URL, following at most `max_redirects` checked redirects."""
        import httpx  # here, not at the top: see engine/pipeline/upstream_models.py

        target = _parse(url, param)
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            for _ in range(self.max_redirects + 1):
                await self._check_host(target, param)
                try:
                    async with client.stream("GET", target) as response:
                        if response.is_redirect and "location" in response.headers:
                            try:
                                target = _parse(str(target.join(response.headers["location"])), param)
                            except (httpx.InvalidURL, ValueError):
                                raise InvalidRequest(f"{param}: the image URL redirects to an invalid URL", param=param) from None
                            continue
                        if response.status_code != 200:
                            raise InvalidRequest(f"{param}: fetching the image gave HTTP {response.status_code}", param=param)
                        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                        if not media_type.startswith("image/"):
                            raise InvalidRequest(f"{param}: the URL did not return an image ({media_type or 'no type'})", param=param)
                        data = bytearray()
                        async for chunk in response.aiter_bytes():
                            data.extend(chunk)
                            if len(data) > self.max_bytes:
                                raise InvalidRequest(f"{param}: the image exceeds {self.max_bytes} bytes", param=param)
                        return media_type, bytes(data)
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    raise _unfetchable(param, target.host, f"{type(exc).__name__}: {exc}") from None
        raise InvalidRequest(f"{param}: too many redirects", param=param)


async def inline_image_urls(body: dict[str, Any], fetcher: ImageFetcher) -> dict[str, Any]:
    """A copy of the request whose http(s) image URLs are replaced by base64 data URIs."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    jobs: list[tuple[int, int, str]] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    jobs.append((i, j, url))
    if not jobs:
        return body
    fetched = await asyncio.gather(
        *(fetcher.fetch(url, f"messages[{i}].content[{j}].image_url.url") for i, j, url in jobs)
    )
    messages = list(messages)
    for (i, j, _), (media_type, data) in zip(jobs, fetched):
        message = dict(messages[i])
        content = list(message["content"])
        encoded = base64.b64encode(data).decode()
        content[j] = {**content[j], "image_url": {"url": f"data:{media_type};base64,{encoded}"}}
        message["content"] = content
        messages[i] = message
    return {**body, "messages": messages}
