"""Upstream tokens for requests: loaded from the store, refreshed or exchanged before they expire.

`await manager.access_token(spec)` is what a request calls. It returns None when the provider's
strategy supplies nothing dynamic (no `api.auth`, a static API key, or a sign-in strategy nobody
has signed in with: the spec's plain headers, e.g. an env API key, then apply), else the token
that `ProviderSpec.headers_for_token()` places as `credentials.access_token`.

The fast path is one dict lookup. Renewal happens under one asyncio.Lock per provider, re-checked
after the lock is taken, so N concurrent callers with an expired token cause exactly one refresh
or exchange request. Results are re-read from the store at most every `recheck_seconds`, so a
`gaud-engine login`/`logout` in another process is picked up, and a refresh another process just
made is reused instead of spending a rotated refresh token twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import AuthenticationFailed, GatewayError, NotConfigured, UpstreamError
from ..spec.credentials import AuthSpec
from .flows import OAuthError, device_login, exchange_token, grant_token, pkce_login, refresh_token
from .vault import Vault, VaultError, open_vault

if TYPE_CHECKING:
    import httpx

    from ..accounts.store import Store

__all__ = ["CredentialManager", "Provider"]


class Provider(Protocol):
    """What the manager reads of a provider: engine.spec.provider.ProviderSpec is one. (The spec
    layer imports credentials/spec.py to compile `api.auth`; this keeps the dependency one-way.)"""

    @property
    def name(self) -> str: ...

    @property
    def auth(self) -> AuthSpec | None: ...

    @property
    def env_values(self) -> Mapping[str, str]: ...

    def secrets(self) -> list[str]:
        """The values of the spec's secret env variables, to redact from messages."""
        ...


def _new_client() -> httpx.AsyncClient:
    import httpx  # here, not at the top: see engine/pipeline/upstream_models.py

    return httpx.AsyncClient(timeout=30.0)

log = logging.getLogger("gaud.credentials")

#: Refresh replies that mean the grant is gone for good (RFC 6749 section 5.2), not a hiccup.
_REVOKED = frozenset({"invalid_grant", "invalid_token", "invalid_client", "unauthorized_client", "access_denied"})
#: After a failed renewal that left a still-valid token in use, try again this much later.
_RETRY_SECONDS = 5.0


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    return text


def _record_secrets(record: Mapping[str, Any] | None) -> list[str]:
    if not record:
        return []
    values = [record.get("access_token"), record.get("refresh_token"), (record.get("exchanged") or {}).get("token")]
    return [v for v in values if isinstance(v, str)]


def _due(expires_at: Any, before: float, now: float) -> bool:
    return isinstance(expires_at, (int, float)) and now >= float(expires_at) - before


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


@dataclass
class _Entry:
    """What requests use for one provider, and until when (`renew_at`) without asking again."""

    token: str | None
    renew_at: float | None
    checked_at: float
    blob: str | None = None
    record: dict[str, Any] | None = None
    failure: GatewayError | None = None
    forced: bool = False

    def usable(self, now: float, recheck: float) -> bool:
        return (
            not self.forced
            and now - self.checked_at < recheck
            and (self.renew_at is None or now < self.renew_at)
        )

    def __repr__(self) -> str:  # never show tokens
        return f"_Entry(signed_in={self.token is not None}, renew_at={self.renew_at!r}, failure={self.failure!r})"


def _copy(error: GatewayError) -> GatewayError:
    return type(error)(error.message)


class CredentialManager:
    """Sign-in, storage and renewal of upstream credentials, driven by each spec's `api.auth`.

    Example: `manager = CredentialManager(store)`; per request,
    `token = await manager.access_token(spec)` then `spec.headers_for_token(model, api_base, token)`.
    """

    def __init__(
        self,
        store: Store,
        *,
        secret_key: str | None = None,
        vault: Vault | None = None,
        http: Callable[[], httpx.AsyncClient] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        recheck_seconds: float = 30.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.vault = vault or open_vault(store.url, environ, secret_key)
        self._http = http or _new_client
        self.clock = clock
        self.sleep = sleep
        self.recheck_seconds = recheck_seconds
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- the request path ------------------------------------------------------------------------
    async def access_token(self, spec: Provider) -> str | None:
        """The token for `credentials.access_token`, renewed if due; None = use the plain headers.

        Raises AuthenticationFailed when the sign-in is revoked or expired (telling the user to run
        `gaud-engine login <provider>`), or an UpstreamError kind when the sign-in server is down
        and no valid token is left.
        """
        auth: AuthSpec | None = getattr(spec, "auth", None)
        if auth is None or not auth.dynamic:
            return None
        if auth.signs_in and getattr(spec, "env_sources", None):
            return None  # a routes.yaml deployment with its own credentials uses them, not a sign-in
        key = _entry_key(spec)
        entry = self._entries.get(key)
        if entry is not None and entry.usable(self.clock(), self.recheck_seconds):
            if entry.failure is not None:
                raise _copy(entry.failure)
            return entry.token
        lock = self._locks.get(key) or self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = self.clock()
            entry = self._entries.get(key)
            if entry is None or not entry.usable(now, self.recheck_seconds):
                entry = await self._renew(spec, auth, entry, now)
                self._entries[key] = entry
        if entry.failure is not None:
            raise _copy(entry.failure)
        return entry.token

    async def invalidate(self, spec: Provider, token: str) -> None:
        """The upstream refused `token` (a 401): renew it on the next call, if it is still the current one."""
        entry = self._entries.get(_entry_key(spec))
        if entry is not None and entry.token == token:
            entry.forced = True

    async def _renew(self, spec: Provider, auth: AuthSpec, previous: _Entry | None, now: float) -> _Entry:
        forced = previous is not None and previous.forced
        if auth.grant is not None:
            return await self._renew_by_grant(spec, auth, previous, now, forced)
        if auth.signs_in:
            return await self._renew_signed_in(spec, auth, previous, now, forced)
        return await self._renew_from_env(spec, auth, previous, now, forced)

    async def _renew_from_env(
        self, spec: Provider, auth: AuthSpec, previous: _Entry | None, now: float, forced: bool
    ) -> _Entry:
        """`type: api_key` with `exchange`: the env token is traded for a short-lived one."""
        assert auth.exchange is not None and auth.env is not None
        long_lived = spec.env_values.get(auth.env, "")
        if not long_lived:
            return _Entry(None, None, now)
        record = dict(previous.record or {}) if previous is not None and previous.failure is None else {}
        exchanged = record.get("exchanged") or {}
        if exchanged.get("token") and not forced and not _due(exchanged.get("expires_at"), auth.exchange.refresh_before, now):
            return _Entry(exchanged["token"], self._renew_at(auth, record), now, record=record)
        try:
            record["exchanged"] = await self._exchange(spec, auth, long_lived, now, hint=f"check {auth.env}")
        except AuthenticationFailed as error:
            return _Entry(None, now + self.recheck_seconds, now, failure=error)
        except GatewayError:
            if exchanged.get("token") and not _due(exchanged.get("expires_at"), 0.0, now):
                return _Entry(exchanged["token"], now + _RETRY_SECONDS, now, record=record)
            raise
        return _Entry(record["exchanged"]["token"], self._renew_at(auth, record), now, record=record)

    async def _renew_by_grant(
        self, spec: Provider, auth: AuthSpec, previous: _Entry | None, now: float, forced: bool
    ) -> _Entry:
        """A grant type (client credentials, JWT bearer): the engine asks the token endpoint itself.
        While the grant's variables are unset, the plain headers apply (e.g. an API key)."""
        assert auth.grant is not None
        grant, name = auth.grant, spec.name
        client = grant.client(spec.env_values)
        if client is None:
            return _Entry(None, None, now)
        record = (previous.record or {}) if previous is not None and previous.failure is None else {}
        token = record.get("access_token")
        if token and not forced and not _due(record.get("expires_at"), auth.refresh_before, now):
            return _Entry(token, self._renew_at(auth, record), now, record=record)
        try:
            async with self._http() as http:
                tokens = await grant_token(http, auth, spec.env_values, now)
        except NotConfigured as exc:  # an unusable key file: said once per recheck, not per request
            log.warning("cannot use the %s grant of %s: %s", grant.grant_type, name, exc.message)
            return _Entry(None, now + self.recheck_seconds, now, failure=exc)
        except (OAuthError, GatewayError) as exc:
            refused = isinstance(exc, OAuthError) and exc.status < 500 and exc.status != 429
            if token and not refused and not _due(record.get("expires_at"), 0.0, now):
                log.warning("could not renew the %s token; using the current one a little longer", name)
                return _Entry(token, now + _RETRY_SECONDS, now, record=record)
            if not isinstance(exc, OAuthError):
                raise
            detail = _redact(str(exc), [client[1], *spec.secrets()])
            log.warning("the %s token endpoint refused the %s grant (HTTP %s)", name, grant.grant_type, exc.status)
            failure = AuthenticationFailed(
                f"The {name} token endpoint refused the {grant.grant_type} grant ({detail}); check {grant.variables}."
            )
            return _Entry(None, now + self.recheck_seconds, now, failure=failure)
        record = {"access_token": tokens.access_token, "expires_at": tokens.expires_at}
        lifetime = f"valid for {tokens.expires_at - now:.0f} s" if tokens.expires_at is not None else "no expiry given"
        log.info("got a %s token by %s (%s)", name, grant.grant_type, lifetime)
        return _Entry(tokens.access_token, self._renew_at(auth, record), now, record=record)

    async def _renew_signed_in(
        self, spec: Provider, auth: AuthSpec, previous: _Entry | None, now: float, forced: bool
    ) -> _Entry:
        name = spec.name
        row = await asyncio.to_thread(self.store.load_credentials, name)
        if row is None:
            return _Entry(None, None, now)
        blob = str(row["blob"])
        same = previous is not None and previous.blob == blob
        if same and previous is not None and previous.failure is not None and not forced:
            return _Entry(None, None, now, blob=blob, failure=previous.failure)  # nothing new since it failed
        try:
            record = dict(previous.record) if same and previous is not None and previous.record else self.vault.open(name, blob)
        except VaultError as exc:
            return _Entry(None, None, now, blob=blob, failure=AuthenticationFailed(str(exc)))
        login = f"run `gaud-engine login {name}`"
        changed = False
        try:
            if forced or _due(record.get("expires_at"), auth.refresh_before, now):
                if forced and auth.exchange is not None and not _due(record.get("expires_at"), auth.refresh_before, now):
                    record.pop("exchanged", None)  # the short-lived token was refused: exchange again
                else:
                    record = await self._refresh(spec, auth, record, now)
                changed = True
            if auth.exchange is not None:
                exchanged = record.get("exchanged") or {}
                if not exchanged.get("token") or _due(exchanged.get("expires_at"), auth.exchange.refresh_before, now):
                    record["exchanged"] = await self._exchange(spec, auth, str(record["access_token"]), now, hint=login)
                    changed = True
        except AuthenticationFailed as error:
            blob = await self._persist(name, record, blob, changed)  # a refresh before the failure rotated tokens
            return _Entry(None, None, now, blob=blob, failure=error)
        except GatewayError:
            blob = await self._persist(name, record, blob, changed)
            token = self._final(auth, record)
            if token is not None and not self._expired(auth, record, now):
                log.warning("could not renew the %s credentials; using the current token a little longer", name)
                return _Entry(token, now + _RETRY_SECONDS, now, blob=blob, record=record)
            raise
        blob = await self._persist(name, record, blob, changed)
        return _Entry(self._final(auth, record), self._renew_at(auth, record), now, blob=blob, record=record)

    async def _persist(self, name: str, record: dict[str, Any], blob: str, changed: bool) -> str:
        """Seal and store the record if it changed (a refresh token may have rotated); the blob now stored."""
        if not changed:
            return blob
        sealed = self.vault.seal(name, record)
        await asyncio.to_thread(self.store.save_credentials, name, sealed, record.get("expires_at"))
        return sealed

    @staticmethod
    def _final(auth: AuthSpec, record: Mapping[str, Any]) -> str | None:
        if auth.exchange is not None:
            token = (record.get("exchanged") or {}).get("token")
        else:
            token = record.get("access_token")
        return token if isinstance(token, str) and token else None

    @staticmethod
    def _expired(auth: AuthSpec, record: Mapping[str, Any], now: float) -> bool:
        if auth.exchange is not None:
            return _due((record.get("exchanged") or {}).get("expires_at"), 0.0, now)
        return _due(record.get("expires_at"), 0.0, now)

    @staticmethod
    def _renew_at(auth: AuthSpec, record: Mapping[str, Any]) -> float | None:
        access = record.get("expires_at")
        access_at = float(access) - auth.refresh_before if isinstance(access, (int, float)) else None
        exchanged_at = None
        if auth.exchange is not None:
            expires = (record.get("exchanged") or {}).get("expires_at")
            exchanged_at = float(expires) - auth.exchange.refresh_before if isinstance(expires, (int, float)) else None
        return _earliest(access_at if auth.signs_in or auth.grant is not None else None, exchanged_at)

    async def _refresh(self, spec: Provider, auth: AuthSpec, record: dict[str, Any], now: float) -> dict[str, Any]:
        name = spec.name
        refresh = record.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            raise AuthenticationFailed(f"The {name} sign-in has expired; run `gaud-engine login {name}`.")
        try:
            async with self._http() as client:
                tokens = await refresh_token(client, auth, refresh, now)
        except OAuthError as exc:
            detail = _redact(str(exc), _record_secrets(record))
            if exc.code in _REVOKED or exc.status in (400, 401, 403):
                log.warning("the %s sign-in was refused on refresh (%s)", name, exc.code)
                raise AuthenticationFailed(
                    f"The {name} sign-in was revoked or has expired ({detail}); run `gaud-engine login {name}`."
                ) from None
            raise UpstreamError(f"Could not refresh the {name} sign-in: {detail}.", upstream_status=exc.status) from None
        lifetime = f"valid for {tokens.expires_at - now:.0f} s" if tokens.expires_at is not None else "no expiry given"
        log.info("refreshed the %s sign-in (%s)", name, lifetime)
        return {**record, "access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
                "expires_at": tokens.expires_at, "exchanged": None}

    async def _exchange(self, spec: Provider, auth: AuthSpec, token: str, now: float, *, hint: str) -> dict[str, Any]:
        assert auth.exchange is not None
        name = spec.name
        try:
            async with self._http() as client:
                short, expires = await exchange_token(client, auth.exchange, token, spec.env_values, now)
        except OAuthError as exc:
            detail = _redact(str(exc), [token, *spec.secrets()])
            if exc.status in (401, 403):
                log.warning("the %s token exchange was refused (HTTP %s)", name, exc.status)
                raise AuthenticationFailed(f"The {name} token exchange was refused ({detail}); {hint}.") from None
            raise UpstreamError(f"The {name} token exchange failed: {detail}.", upstream_status=exc.status) from None
        lifetime = f"valid for {expires - now:.0f} s" if expires is not None else "no expiry given"
        log.info("exchanged a %s token (%s)", name, lifetime)
        return {"token": short, "expires_at": expires}

    # -- sign-in, sign-out, status ---------------------------------------------------------------
    async def login(
        self,
        spec: Provider,
        *,
        echo: Callable[[str], None] = print,
        open_url: Callable[[str], Any] | None = None,
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """Run the spec's sign-in flow, check any exchange works, and store the tokens sealed.

        Returns the status entry of the provider (no tokens in it).
        """
        auth: AuthSpec | None = getattr(spec, "auth", None)
        name = spec.name
        if auth is None or not auth.signs_in:
            how = f"an API key from {auth.env}" if auth is not None and auth.env else "the keys its spec reads from the environment"
            raise AuthenticationFailed(f"{name} has no sign-in flow: it uses {how}.")
        try:
            async with self._http() as client:
                if auth.type == "oauth_pkce":
                    tokens = await pkce_login(client, auth, echo=echo, open_url=open_url, timeout=timeout, clock=self.clock)
                else:
                    tokens = await device_login(client, auth, echo=echo, open_url=open_url, sleep=self.sleep, clock=self.clock)
        except OAuthError as exc:
            raise AuthenticationFailed(f"The sign-in to {name} failed ({exc.code}).") from None
        record: dict[str, Any] = {
            "v": 1, "type": auth.type, "access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
            "expires_at": tokens.expires_at, "exchanged": None, "signed_in_at": self.clock(),
        }
        if auth.exchange is not None:
            record["exchanged"] = await self._exchange(spec, auth, tokens.access_token, self.clock(),
                                                       hint="the sign-in worked but this account cannot use it")
        blob = self.vault.seal(name, record)
        await asyncio.to_thread(self.store.save_credentials, name, blob, record["expires_at"])
        self._entries.pop(name, None)
        log.info("signed in to %s", name)
        return self.describe(spec, row={"blob": blob, "expires_at": record["expires_at"]}, record=record)

    async def logout(self, spec: Provider) -> bool:
        """Forget the provider's tokens here (the provider may still consider them valid until they expire)."""
        deleted = await asyncio.to_thread(self.store.delete_credentials, spec.name)
        self.vault.forget(spec.name)
        self._entries.pop(spec.name, None)
        if deleted:
            log.info("signed out of %s", spec.name)
        return bool(deleted)

    async def signed_in(self, spec: Provider) -> bool:
        """Whether requests to this provider carry a token from a sign-in or exchange (for readiness)."""
        try:
            return await self.access_token(spec) is not None
        except GatewayError:
            return False

    def describe(self, spec: Provider, *, row: Mapping[str, Any] | None = None,
                 record: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One provider's sign-in state, without tokens: method, signed_in, expires_at, refreshable, problem."""
        auth: AuthSpec | None = getattr(spec, "auth", None)
        info: dict[str, Any] = {
            "provider": spec.name, "method": auth.type if auth is not None else "env", "signed_in": None,
            "expires_at": None, "refreshable": False, "exchange": auth is not None and auth.exchange is not None,
            "problem": None,
        }
        if auth is None or not auth.signs_in:
            return info
        info["signed_in"] = row is not None
        if row is None:
            return info
        info["expires_at"] = row.get("expires_at")
        if record is None:
            try:
                record = self.vault.open(spec.name, str(row["blob"]))
            except VaultError as exc:
                info["problem"] = str(exc)
                return info
        info["refreshable"] = bool(record.get("refresh_token"))
        return info

    def status(self, specs: Mapping[str, Provider]) -> list[dict[str, Any]]:
        """`describe()` for every provider, in name order (synchronous: for the CLI)."""
        rows = {r["provider"]: r for r in self.store.list_credentials()}
        return [
            self.describe(spec, row=self.store.load_credentials(name) if name in rows else None)
            for name, spec in sorted(specs.items())
        ]


def _entry_key(spec: Provider) -> str:
    """Tokens are kept per provider, and per routes.yaml deployment with its own credentials (each
    exchanges its own key)."""
    deployment = getattr(spec, "deployment", None)
    return spec.name if deployment is None else f"{spec.name} deployment {deployment}"  # names hold no spaces
