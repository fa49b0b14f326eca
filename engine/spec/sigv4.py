"""`api.auth: {type: aws_sigv4}`: AWS Signature Version 4, computed per request on the final bytes.

The protocol (AWS "Create a signed AWS API request"): a canonical request (method, canonical URI,
canonical query, canonical headers, signed header names, SHA-256 of the payload) is hashed into a
string to sign under the credential scope `date/region/service/aws4_request`, and signed with a
key derived by an HMAC-SHA256 chain from the secret. Only stdlib `hmac`/`hashlib`.

The URL goes on the wire exactly as signed: its path keeps the escapes the spec's template made
(a model id or ARN put in with the `path_segment` filter has `:` and `/` as `%3A`, `%2F`), and for
services other than S3 the canonical URI encodes that path once more, as the AWS SDKs do. The query
is sent and signed in its canonical encoding (RFC 3986, `%20` for a space).

Credentials are read from the provider's variables per request, so a deployment with its own
variables signs with its own keys; they appear in no message, log line or repr.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from yarl import URL

from ..errors import NotConfigured
from .common import EnvVar, SpecCompileError

__all__ = ["SigV4Credentials", "SigV4Spec", "compile_sigv4", "sign_request"]

DEFAULT_ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
DEFAULT_SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
DEFAULT_SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"
DEFAULT_REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
#: Hop-by-hop and client-chosen headers that are never signed (as the AWS SDKs leave them out).
UNSIGNED_HEADERS = frozenset({
    "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})
#: Headers the signature itself sets; any the spec gave are replaced.
_REPLACED = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
_PATH_SAFE = "/%!$&'()*+,;=:@~"
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class SigV4Credentials:
    """One request's signing identity (resolved from the variables); secrets kept out of repr."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str
    service: str


@dataclass(frozen=True)
class SigV4Spec:
    """Where the signing identity comes from: variable names, the service name, a fallback region."""

    provider: str
    service: str
    access_key_env: str
    secret_key_env: str
    session_token_env: str | None
    region_env: tuple[str, ...]
    region: str | None
    #: While one of these variables is set, requests are not signed: the spec's headers carry
    #: that other credential (e.g. a bearer API key) instead.
    unless_env: tuple[str, ...] = ()

    def skipped(self, env: Mapping[str, str]) -> bool:
        """Whether another credential (an `unless_env` variable) stands in for the signature."""
        return any(env.get(name) for name in self.unless_env)

    def setup_hint(self, env: Mapping[str, str]) -> str | None:
        """What to set so that requests can be signed (or carry the `unless_env` credential), or
        None when they can: the start-up banner, /health and `not_configured` say it."""
        if self.skipped(env):
            return None
        region = next((env[name] for name in self.region_env if env.get(name)), self.region)
        if env.get(self.access_key_env) and env.get(self.secret_key_env) and region:
            return None
        needed = [self.access_key_env, self.secret_key_env]
        if not region:
            needed.append(" or ".join(self.region_env))
        alternative = f" (or {' or '.join(self.unless_env)})" if self.unless_env else ""
        return f"set {' and '.join(needed)}{alternative}"

    def credentials(self, env: Mapping[str, str]) -> SigV4Credentials:
        """The identity from the variables' values; NotConfigured (never sent) when incomplete."""
        access, secret = env.get(self.access_key_env), env.get(self.secret_key_env)
        region = next((env[name] for name in self.region_env if env.get(name)), self.region)
        if not access or not secret or not region:
            raise NotConfigured(f"{self.provider} cannot sign requests here: {self.setup_hint(env)}")
        token = env.get(self.session_token_env) if self.session_token_env else None
        return SigV4Credentials(access, secret, token or None, region, self.service)


def compile_sigv4(provider: str, raw: Mapping[str, Any], env: Mapping[str, EnvVar]) -> SigV4Spec:
    """`api.auth` of type aws_sigv4 (already schema-checked). A variable named explicitly must be
    declared in `api.env`; of the default names, those declared are used."""

    def named(key: str, default: str | None) -> str | None:
        given = raw.get(key)
        if given is not None and str(given) not in env:
            raise SpecCompileError(f"/api/auth/{key}", f"names {given}, which api.env does not declare; declare it there")
        name = str(given) if given is not None else default
        return name if name in env else None

    access, secret = named("access_key_env", DEFAULT_ACCESS_KEY_ENV), named("secret_key_env", DEFAULT_SECRET_KEY_ENV)
    for key, value, default in (("access_key_env", access, DEFAULT_ACCESS_KEY_ENV),
                                ("secret_key_env", secret, DEFAULT_SECRET_KEY_ENV)):
        if value is None:
            raise SpecCompileError(f"/api/auth/{key}", f"declare {default} in api.env, or name the variable here")
    given_regions = raw.get("region_env")
    if isinstance(given_regions, str):
        given_regions = [given_regions]
    for name in given_regions or ():
        if name not in env:
            raise SpecCompileError("/api/auth/region_env", f"names {name}, which api.env does not declare; declare it there")
    regions = tuple(str(n) for n in given_regions) if given_regions else tuple(n for n in DEFAULT_REGION_ENV if n in env)
    region = str(raw["region"]) if raw.get("region") else None
    if not regions and region is None:
        raise SpecCompileError("/api/auth/region_env", "declare AWS_REGION in api.env, or give `region`")
    unless = raw.get("unless_env") or ()
    unless = (unless,) if isinstance(unless, str) else tuple(str(n) for n in unless)
    for name in unless:
        if name not in env:
            raise SpecCompileError("/api/auth/unless_env", f"names {name}, which api.env does not declare; declare it there")
    return SigV4Spec(
        provider=provider, service=str(raw["service"]), access_key_env=str(access), secret_key_env=str(secret),
        session_token_env=named("session_token_env", DEFAULT_SESSION_TOKEN_ENV), region_env=regions, region=region,
        unless_env=unless,
    )


@lru_cache(maxsize=256)
def _wire(url: str) -> tuple[URL, str, str, str]:
    """(the URL as sent, canonical URI, canonical query, host) for one URL string."""
    parts = urlsplit(url)
    path = quote(_LONE_PERCENT.sub("%25", parts.path or "/"), safe=_PATH_SAFE)
    pairs = [(quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = "&".join(f"{k}={v}" for k, v in pairs)
    wire = URL(f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else ""), encoded=True)
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    return wire, quote(_remove_dot_segments(path), safe="/~"), canonical_query, wire.host_port_subcomponent or ""


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, and no empty segments (AWS services want `//` collapsed)."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    return "/" + "/".join(out) + ("/" if path.endswith("/") and out else "")


@lru_cache(maxsize=64)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_request(
    credentials: SigV4Credentials, method: str, url: str, headers: Mapping[str, str], body: bytes,
    now: datetime | None = None,
) -> tuple[URL, dict[str, str]]:
    """The URL to send and the headers with `Authorization`, `X-Amz-Date` (and
    `X-Amz-Security-Token` with a session token) for these exact bytes."""
    wire, canonical_uri, canonical_query, host = _wire(url)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    out = {name: value for name, value in headers.items() if name.lower() not in _REPLACED}
    out["X-Amz-Date"] = stamp
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    signed: dict[str, list[str]] = {"host": [host]}
    for name, value in out.items():
        if name.lower() not in UNSIGNED_HEADERS and name.lower() != "host":
            signed.setdefault(name.lower(), []).append(" ".join(value.split()))
    names = sorted(signed)
    canonical = "\n".join([
        method.upper(), canonical_uri, canonical_query,
        "".join(f"{n}:{','.join(signed[n])}\n" for n in names), ";".join(names), hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{stamp[:8]}/{credentials.region}/{credentials.service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _signing_key(credentials.secret_key, stamp[:8], credentials.region, credentials.service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return wire, out
