"""Whether a provider served from this machine (an Ollama on 127.0.0.1) is listening at all: one TCP
connect with a short timeout, for the start-up banner and /health?detail=1, never on the request
path. Remote providers are not probed: reaching them says little, and start-up must not wait on
the network."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..spec.provider import ProviderSpec

__all__ = ["PROBE_TIMEOUT", "local_address", "unreachable_local"]

#: A refused connection on loopback is instant; this only bounds a firewalled (dropped) port.
PROBE_TIMEOUT = 0.5


def local_address(base_url: str) -> tuple[str, int] | None:
    """(host, port) of a base URL on this machine (localhost or a loopback address), else None."""
    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        return None
    if not host:
        return None
    if host != "localhost" and not host.endswith(".localhost"):
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:  # a name other than localhost
            return None
    return host, port or (443 if parts.scheme == "https" else 80)


async def _listening(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except OSError:  # refused, no route, or the timeout (TimeoutError is an OSError)
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def unreachable_local(specs: Iterable[ProviderSpec], timeout: float = PROBE_TIMEOUT) -> dict[str, str]:
    """Provider -> base URL, for the given providers on this machine that nothing listens for.
    Each address is probed once, all at the same time."""
    local = {spec.name: (spec.api_base(), address) for spec in specs if (address := local_address(spec.api_base()))}
    addresses = list(dict.fromkeys(address for _, address in local.values()))
    up = dict(zip(addresses, await asyncio.gather(*(_listening(host, port, timeout) for host, port in addresses)), strict=True))
    return {name: base for name, (base, address) in local.items() if not up[address]}
