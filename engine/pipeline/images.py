"""Fetching image URLs for providers that accept only inline bytes, behind an SSRF guard.

The gateway refuses private, loopback, link-local and other non-public addresses unless
configured, checks every redirect hop the same way, and caps size and time. httpx is used: this
is off the hot path (only requests with remote images to such providers reach it).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

from ..errors import InvalidRequest

__all__ = ["ImageFetcher", "inline_image_urls"]


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

    async def _check_host(self, url: str, param: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise InvalidRequest(f"{param}: only http(s) image URLs can be fetched", param=param)
        if self.allow_private or host in self.allowed_hosts:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError:
            raise InvalidRequest(f"{param}: cannot resolve the image host '{host}'", param=param) from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                raise InvalidRequest(
                    f"{param}: the image host '{host}' resolves to a non-public address; the gateway does not fetch it",
                    param=param,
                )

    async def fetch(self, url: str, param: str) -> tuple[str, bytes]:
        """(media type, bytes) of an image URL, following at most `max_redirects` checked redirects."""
        import httpx  # here, not at the top: see engine/pipeline/upstream_models.py

        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            for _ in range(self.max_redirects + 1):
                await self._check_host(url, param)
                try:
                    async with client.stream("GET", url) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
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
                except httpx.HTTPError as exc:
                    raise InvalidRequest(f"{param}: cannot fetch the image ({type(exc).__name__})", param=param) from None
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
