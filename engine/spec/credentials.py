"""`api.auth` of a provider spec, compiled: which credential strategy, its endpoints and field names.

Everything provider-specific (URLs, client ids, scopes, field names, header shapes) is data here;
the flows in `flows.py` only follow the OAuth 2.0 and token-exchange patterns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import jinja2

from ..pointer import compile_pointer
from .common import EnvVar, SpecCompileError, jinja_template
from .sigv4 import SigV4Spec, compile_sigv4

__all__ = ["GRANT_TYPES", "SIGN_IN_TYPES", "AuthSpec", "ExchangeSpec", "GrantSpec", "compile_auth"]

SIGN_IN_TYPES = ("oauth_pkce", "device_code")
#: Token grants the engine runs itself, on the first request that needs a token (no `login`):
#: OAuth 2.0 client credentials (RFC 6749 section 4.4) and the JWT bearer grant (RFC 7523, an
#: assertion signed with a key file's private key). Each names its flow in credentials/flows.py.
GRANT_TYPES = ("client_credentials", "jwt_bearer")
#: jwt_bearer: where a JSON key file's values are read (JSON pointers; the common service-account
#: key layout), unless the spec's `key_fields` says otherwise.
KEY_FILE_FIELDS = {"issuer": "/client_email", "private_key": "/private_key", "key_id": "/private_key_id"}
_OAUTH_TYPES = SIGN_IN_TYPES + GRANT_TYPES

#: Where each field is read in the authorization server's JSON replies (RFC 6749 and RFC 8628 names).
DEFAULT_FIELDS = {
    "access_token": "/access_token",
    "refresh_token": "/refresh_token",
    "expires_in": "/expires_in",
    "expires_at": "/expires_at",
    "error": "/error",
    "error_description": "/error_description",
    "device_code": "/device_code",
    "user_code": "/user_code",
    "verification_uri": "/verification_uri",
    "verification_uri_complete": "/verification_uri_complete",
    "interval": "/interval",
}

_ONLY_FOR: dict[str, tuple[str, ...]] = {
    "env": ("api_key",),
    "in": ("api_key",),
    "name": ("api_key",),
    "client_id": SIGN_IN_TYPES,
    "scopes": _OAUTH_TYPES,
    "token_url": _OAUTH_TYPES,
    "token_request": _OAUTH_TYPES,
    "fields": _OAUTH_TYPES,
    "refresh_before_seconds": _OAUTH_TYPES,
    "client_id_env": ("client_credentials",),
    "client_secret_env": ("client_credentials",),
    "client_auth": ("client_credentials",),
    "key_file_env": ("jwt_bearer",),
    "key_fields": ("jwt_bearer",),
    "assertion_lifetime_seconds": ("jwt_bearer",),
    "extra_params": GRANT_TYPES,
    "authorize_url": ("oauth_pkce",),
    "redirect_host": ("oauth_pkce",),
    "redirect_port": ("oauth_pkce",),
    "redirect_path": ("oauth_pkce",),
    "extra_authorize_params": ("oauth_pkce",),
    "token_request_state": ("oauth_pkce",),
    "device_authorization_url": ("device_code",),
    "poll_interval": ("device_code",),
    "service": ("aws_sigv4",),
    "region": ("aws_sigv4",),
    "region_env": ("aws_sigv4",),
    "access_key_env": ("aws_sigv4",),
    "secret_key_env": ("aws_sigv4",),
    "session_token_env": ("aws_sigv4",),
    "unless_env": ("aws_sigv4",),
}


@dataclass(frozen=True)
class ExchangeSpec:
    """A long-lived token traded at `url` for a short-lived one, again before it expires."""

    url: str
    method: str
    headers: dict[str, jinja2.Template]
    token_field: tuple[str | int, ...]
    expires_at_field: tuple[str | int, ...] | None
    expires_in_field: tuple[str | int, ...] | None
    refresh_before: float

    def render_headers(self, token: str, env: Mapping[str, str]) -> dict[str, str]:
        return {name: t.render(token=token, env=env) for name, t in self.headers.items()}


@dataclass(frozen=True)
class GrantSpec:
    """A token grant the engine runs itself: where to ask (`token_url`, a template over `env`), the
    client's credentials (env variable names, never values) and how it authenticates."""

    grant_type: str
    token_url: jinja2.Template
    client_id_env: str = ""
    client_secret_env: str = ""
    client_auth: str = "client_secret_post"
    extra_params: dict[str, str] = field(default_factory=dict)
    #: jwt_bearer: the variable holding the key file's path, where the file's values are, and
    #: the assertion's lifetime.
    key_file_env: str = ""
    key_fields: dict[str, tuple[str | int, ...]] = field(default_factory=dict)
    assertion_lifetime: int = 3600

    def url(self, env: Mapping[str, str]) -> str:
        return self.token_url.render(env=env)

    def client(self, env: Mapping[str, str]) -> tuple[str, str] | None:
        """(client id, client secret) from the environment, or (key file path, "") for a key-file
        grant; None while any is unset."""
        if self.key_file_env:
            path = env.get(self.key_file_env, "")
            return (path, "") if path else None
        client_id, secret = env.get(self.client_id_env, ""), env.get(self.client_secret_env, "")
        return (client_id, secret) if client_id and secret else None

    @property
    def variables(self) -> str:
        """The variables to check when the grant is refused, for messages."""
        return self.key_file_env or f"{self.client_id_env} and {self.client_secret_env}"

    def __repr__(self) -> str:
        return f"GrantSpec({self.grant_type!r}, variables={self.variables!r})"


@dataclass(frozen=True)
class AuthSpec:
    """One provider's credential strategy (see the schema's `api.auth` for every field)."""

    provider: str
    type: str
    env: str | None = None
    placement: str | None = None
    name: str | None = None
    client_id: str = ""
    scopes: tuple[str, ...] = ()
    token_url: str = ""
    token_request: str = "form"
    fields: dict[str, tuple[str | int, ...]] = field(default_factory=dict)
    refresh_before: float = 60.0
    authorize_url: str = ""
    redirect_host: str = "localhost"
    redirect_port: int = 0
    redirect_path: str = "/callback"
    extra_authorize_params: dict[str, str] = field(default_factory=dict)
    token_request_state: bool = False
    device_authorization_url: str = ""
    poll_interval: float = 5.0
    #: Header templates used while this strategy supplies the credential (None deletes a header).
    headers: dict[str, jinja2.Template | None] = field(default_factory=dict)
    #: api_key without exchange: header templates folded into the spec's own headers at load.
    static_headers: dict[str, jinja2.Template] = field(default_factory=dict)
    exchange: ExchangeSpec | None = None
    #: aws_sigv4: where the signing identity comes from; requests are signed on their final bytes.
    sigv4: SigV4Spec | None = None
    #: A grant type (GRANT_TYPES): the engine fetches tokens itself, no sign-in.
    grant: GrantSpec | None = None

    @cached_property
    def signs_in(self) -> bool:
        """The user signs in with `gaud-engine login` (tokens kept in the store)."""
        return self.type in SIGN_IN_TYPES

    @cached_property
    def dynamic(self) -> bool:
        """Requests need a token from the credential manager (else the static headers do)."""
        return self.signs_in or self.exchange is not None or self.grant is not None

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)

    def redirect_uri(self, port: int) -> str:
        return f"http://{self.redirect_host}:{port}{self.redirect_path}"

    def static_query(self, env: Mapping[str, str]) -> str:
        """`name=<key>` for an API key sent as a query parameter (empty when unset or not so placed)."""
        if self.placement != "query" or self.exchange is not None or not self.env or not env.get(self.env):
            return ""
        return urlencode({self.name or "key": env[self.env]})


def _pointer(raw: Any, where: str) -> tuple[str | int, ...]:
    try:
        return compile_pointer(str(raw))
    except ValueError as exc:
        raise SpecCompileError(where, str(exc)) from None


def _smoke(template: jinja2.Template, where: str, **context: Any) -> None:
    try:
        template.render(**context)
    except jinja2.UndefinedError as exc:
        raise SpecCompileError(where, f"template names an undeclared value: {exc.message}") from None


def _exchange(raw: Mapping[str, Any], sample_env: Mapping[str, str]) -> ExchangeSpec:
    base = "/api/auth/exchange"
    headers = {str(h): jinja_template(str(t), f"{base}/headers/{h}") for h, t in (raw.get("headers") or {}).items()}
    for name, template in headers.items():
        _smoke(template, f"{base}/headers/{name}", token="x", env=sample_env)
    if raw.get("expires_at_field") is not None and raw.get("expires_in_field") is not None:
        raise SpecCompileError(f"{base}/expires_in_field", "give expires_at_field or expires_in_field, not both")
    return ExchangeSpec(
        url=str(raw["url"]),
        method=str(raw.get("method", "GET")).upper(),
        headers=headers,
        token_field=_pointer(raw.get("token_field", "/token"), f"{base}/token_field"),
        expires_at_field=_pointer(raw["expires_at_field"], f"{base}/expires_at_field")
        if raw.get("expires_at_field") is not None else None,
        expires_in_field=_pointer(raw["expires_in_field"], f"{base}/expires_in_field")
        if raw.get("expires_in_field") is not None else None,
        refresh_before=float(raw.get("refresh_before_seconds", 60)),
    )


def _oauth_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What every OAuth type shares: token endpoint, scopes, request encoding, reply fields."""
    fields = dict(DEFAULT_FIELDS)
    fields.update({str(k): str(v) for k, v in (raw.get("fields") or {}).items()})
    return {
        "scopes": tuple(str(s) for s in raw.get("scopes") or ()),
        "token_url": str(raw["token_url"]),
        "token_request": str(raw.get("token_request", "form")),
        "fields": {k: _pointer(v, f"/api/auth/fields/{k}") for k, v in fields.items()},
        "refresh_before": float(raw.get("refresh_before_seconds", 60)),
    }


def _grant(kind: str, raw: Mapping[str, Any], env: Mapping[str, EnvVar]) -> GrantSpec:
    variables = ("key_file_env",) if kind == "jwt_bearer" else ("client_id_env", "client_secret_env")
    named = {key: str(raw[key]) for key in variables}
    for key, variable in named.items():
        if variable not in env:
            raise SpecCompileError(f"/api/auth/{key}", f"names {variable}, which api.env does not declare; declare it there")
    if raw.get("exchange"):
        raise SpecCompileError("/api/auth/exchange", f"a {kind} token is used as it is; remove `exchange`")
    token_url = jinja_template(str(raw["token_url"]), "/api/auth/token_url")
    _smoke(token_url, "/api/auth/token_url", env=dict.fromkeys(env, "x"))
    extra = {str(k): str(v) for k, v in (raw.get("extra_params") or {}).items()}
    if kind == "jwt_bearer":
        fields = {**KEY_FILE_FIELDS, **{str(k): str(v) for k, v in (raw.get("key_fields") or {}).items()}}
        return GrantSpec(
            grant_type=kind, token_url=token_url, extra_params=extra, key_file_env=named["key_file_env"],
            key_fields={k: _pointer(v, f"/api/auth/key_fields/{k}") for k, v in fields.items()},
            assertion_lifetime=int(raw.get("assertion_lifetime_seconds", 3600)),
        )
    return GrantSpec(
        grant_type=kind,
        token_url=token_url,
        client_id_env=named["client_id_env"],
        client_secret_env=named["client_secret_env"],
        client_auth=str(raw.get("client_auth", "client_secret_post")),
        extra_params=extra,
    )


def compile_auth(provider: str, raw: Mapping[str, Any], env: Mapping[str, EnvVar]) -> AuthSpec:
    """Compile `api.auth` (already schema-checked). Raises SpecCompileError with a pointer."""
    kind = str(raw["type"])
    for key, types in _ONLY_FOR.items():
        if key in raw and kind not in types:
            raise SpecCompileError(f"/api/auth/{key}", f"`{key}` has no effect with type {kind}; remove it")
    sample_env = dict.fromkeys(env, "x")
    context = {"model": "m", "env": sample_env, "api_base": "http://x", "credentials": {"access_token": "x"}}
    exchange = _exchange(raw["exchange"], sample_env) if raw.get("exchange") else None
    headers: dict[str, jinja2.Template | None] = {}
    for name, source in (raw.get("headers") or {}).items():
        headers[str(name)] = None if source is None else jinja_template(str(source), f"/api/auth/headers/{name}")
        if headers[str(name)] is not None:
            _smoke(headers[str(name)], f"/api/auth/headers/{name}", **context)  # type: ignore[arg-type]
    static_headers: dict[str, jinja2.Template] = {}
    options: dict[str, Any] = {}
    if kind == "api_key":
        variable = str(raw["env"])
        if variable not in env:
            raise SpecCompileError("/api/auth/env", f"names {variable}, which api.env does not declare; declare it there")
        placement = raw.get("in")
        name = raw.get("name")
        if placement in ("header", "query") and not name:
            raise SpecCompileError("/api/auth/name", f"`in: {placement}` needs `name` (the header or parameter name)")
        if placement == "query" and exchange is not None:
            raise SpecCompileError("/api/auth/in", "an exchanged token cannot travel as a query parameter; use `headers`")
        if placement in ("header", "bearer"):
            header = str(name or "Authorization")
            prefix = "Bearer " if placement == "bearer" else ""
            if exchange is None:
                static_headers[header] = jinja_template(f"{prefix}{{{{ env.{variable} }}}}", "/api/auth/in")
            else:
                headers[header] = jinja_template(f"{prefix}{{{{ credentials.access_token }}}}", "/api/auth/in")
        if exchange is None and raw.get("headers"):
            raise SpecCompileError(
                "/api/auth/headers", "`headers` place a signed-in or exchanged token; a static key uses `in` and `name`"
            )
        options.update(env=variable, placement=placement, name=str(name) if name else None)
    elif kind == "aws_sigv4":
        if raw.get("headers") or exchange is not None:
            raise SpecCompileError("/api/auth/type", "aws_sigv4 signs each request itself; remove `headers` and `exchange`")
        options.update(sigv4=compile_sigv4(provider, raw, env))
    elif kind in GRANT_TYPES:
        options.update(_oauth_options(raw), grant=_grant(kind, raw, env))
    else:
        options.update(_oauth_options(raw), client_id=str(raw["client_id"]))
        if kind == "oauth_pkce":
            path = str(raw.get("redirect_path", "/callback"))
            options.update(
                authorize_url=str(raw["authorize_url"]),
                redirect_host=str(raw.get("redirect_host", "localhost")),
                redirect_port=int(raw.get("redirect_port", 0)),
                redirect_path=path if path.startswith("/") else "/" + path,
                extra_authorize_params={str(k): str(v) for k, v in (raw.get("extra_authorize_params") or {}).items()},
                token_request_state=bool(raw.get("token_request_state", False)),
            )
        else:
            options.update(
                device_authorization_url=str(raw["device_authorization_url"]),
                poll_interval=float(raw.get("poll_interval", 5)),
            )
    if (exchange is not None or kind in _OAUTH_TYPES) and not headers:
        raise SpecCompileError(
            "/api/auth/headers", "say where the token goes, e.g. `Authorization: \"Bearer {{ credentials.access_token }}\"`"
        )
    return AuthSpec(provider=provider, type=kind, headers=headers, static_headers=static_headers, exchange=exchange,
                    **options)
