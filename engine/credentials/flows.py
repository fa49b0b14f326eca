"""The OAuth 2.0 and token-exchange exchanges themselves, over httpx (they are off the hot path).

- Authorization code with PKCE (RFC 7636): S256 challenge, a random `state`, a one-shot HTTP
  server on the loopback interface for the redirect (RFC 8252).
- Device authorization (RFC 8628): poll at the server's interval, +5 s on `slow_down`.
- Refresh (RFC 6749 section 6) and exchange (a long-lived token traded for a short-lived one).
- Token grants the engine runs unattended (`GRANTS`): client credentials (RFC 6749 section 4.4),
  the client authenticating with `client_secret_post` or `client_secret_basic` (RFC 6749 2.3.1);
  the JWT bearer grant (RFC 7523 section 2.1): an RS256-signed assertion (RFC 7515/7518) made with
  the private key of a JSON key file whose path a variable names.

Every URL, client id, scope and field name comes from the compiled `AuthSpec`. No token is logged,
and none is put in an exception message (server error text is redacted by the caller).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

from ..errors import AuthenticationFailed, NotConfigured, UpstreamConnection, UpstreamTimeout
from ..pointer import MISSING, get
from ..spec.credentials import AuthSpec, ExchangeSpec, GrantSpec

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEVICE_GRANT",
    "JWT_BEARER_GRANT",
    "OAuthError",
    "TokenSet",
    "device_login",
    "exchange_token",
    "grant_token",
    "jwt_assertion",
    "pkce_login",
    "pkce_pair",
    "refresh_token",
]

log = logging.getLogger("gaud.credentials")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
Echo = Callable[[str], None]
Opener = Callable[[str], Any]


class OAuthError(Exception):
    """An error reply from an authorization or exchange server: its `error` code, description, status."""

    def __init__(self, code: str, description: str, status: int) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.status = status


@dataclass
class TokenSet:
    access_token: str
    refresh_token: str | None
    expires_at: float | None

    def __repr__(self) -> str:  # never show the tokens
        return f"TokenSet(expires_at={self.expires_at!r}, refreshable={self.refresh_token is not None})"


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge): 86 unreserved characters, base64url(SHA-256) unpadded."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


async def _send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    import httpx  # here, not at the top: see engine/pipeline/upstream_models.py

    try:
        return await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise UpstreamTimeout(f"The sign-in server {_host(url)} did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise UpstreamConnection(f"Cannot reach the sign-in server {_host(url)}: {type(exc).__name__}.") from None


async def _post(
    client: httpx.AsyncClient, auth: AuthSpec, url: str, params: dict[str, str],
    extra_headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    headers = {"Accept": "application/json", **(extra_headers or {})}
    if auth.token_request == "json":
        return await _send(client, "POST", url, json=params, headers=headers)
    return await _send(client, "POST", url, data=params, headers=headers)


def _body(response: httpx.Response) -> Any:
    """The reply as a dict: JSON, or a form-encoded body (what some servers send by default)."""
    text = response.text
    content_type = response.headers.get("content-type", "")
    if "x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(text))
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is MISSING:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _error_of(auth: AuthSpec, status: int, body: Any) -> OAuthError | None:
    code = get(body, auth.fields["error"])
    if code is MISSING and status < 400:
        return None
    description = _text(get(body, auth.fields["error_description"]))
    return OAuthError(str(code) if code is not MISSING else f"http_{status}", description, status)


def token_set(auth: AuthSpec, status: int, body: Any, now: float, previous_refresh: str | None = None) -> TokenSet:
    """A token reply read through the spec's field pointers; raises OAuthError for an error reply."""
    error = _error_of(auth, status, body)
    if error is not None:
        raise error
    access = get(body, auth.fields["access_token"])
    if not isinstance(access, str) or not access:
        raise OAuthError("invalid_reply", "the reply carries no access token", status)
    refresh = get(body, auth.fields["refresh_token"])
    expires_in = _number(get(body, auth.fields["expires_in"]))
    expires_at = _number(get(body, auth.fields["expires_at"]))
    return TokenSet(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh,
        expires_at=now + expires_in if expires_in is not None else expires_at,
    )


async def refresh_token(client: httpx.AsyncClient, auth: AuthSpec, refresh: str, now: float) -> TokenSet:
    """A new access token for a refresh token (which the server may rotate)."""
    params = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": auth.client_id}
    response = await _post(client, auth, auth.token_url, params)
    return token_set(auth, response.status_code, _body(response), now, previous_refresh=refresh)


async def exchange_token(
    client: httpx.AsyncClient, spec: ExchangeSpec, token: str, env: Mapping[str, str], now: float
) -> tuple[str, float | None]:
    """(short-lived token, its expiry as Unix time or None) for a long-lived token."""
    headers = {"Accept": "application/json", **spec.render_headers(token, env)}
    response = await _send(client, spec.method, spec.url, headers=headers)
    body = _body(response)
    if response.status_code >= 400:
        texts = [body.get(k) for k in ("error_description", "message", "error")] if isinstance(body, dict) else []
        message = next((t for t in texts if isinstance(t, str) and t), "")
        raise OAuthError(f"http_{response.status_code}", message, response.status_code)
    short = get(body, spec.token_field)
    if not isinstance(short, str) or not short:
        raise OAuthError("invalid_reply", "the exchange reply carries no token", response.status_code)
    expires: float | None = None
    if spec.expires_at_field is not None:
        expires = _number(get(body, spec.expires_at_field))
    elif spec.expires_in_field is not None:
        seconds = _number(get(body, spec.expires_in_field))
        expires = now + seconds if seconds is not None else None
    return short, expires


# -- token grants the engine runs itself ----------------------------------------------------------
#: The parameters and headers of one grant's token request: (auth, grant, the grant's
#: `client()` pair, the token URL, now).
GrantRequest = Callable[[AuthSpec, GrantSpec, tuple[str, str], str, float], tuple[dict[str, str], dict[str, str]]]


def _client_credentials(
    auth: AuthSpec, grant: GrantSpec, client: tuple[str, str], url: str, now: float
) -> tuple[dict[str, str], dict[str, str]]:
    client_id, secret = client
    params = {**grant.extra_params, "grant_type": "client_credentials", **({"scope": auth.scope} if auth.scope else {})}
    headers: dict[str, str] = {}
    if grant.client_auth == "client_secret_basic":
        # RFC 6749 2.3.1: id and secret are form-encoded before they are joined and base64-encoded.
        pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    else:
        params.update(client_id=client_id, client_secret=secret)
    return params, headers


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _key_file(grant: GrantSpec, path: str) -> tuple[str, Any, str | None]:
    """(issuer, RSA private key, key id) from the key file. Raises NotConfigured with a message
    that names the variable and what is wrong, never the file's contents."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    where = f"the key file named by {grant.key_file_env}"
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise NotConfigured(f"Cannot read {where} ({exc.strerror or type(exc).__name__}).") from None
    except ValueError:
        raise NotConfigured(f"{where[0].upper()}{where[1:]} is not JSON.") from None
    values = {name: get(data, pointer) for name, pointer in grant.key_fields.items()}
    missing = [name for name in ("issuer", "private_key") if not isinstance(values.get(name), str) or not values[name]]
    if missing:
        raise NotConfigured(f"{where[0].upper()}{where[1:]} lacks {' and '.join(missing)}.")
    try:
        key = load_pem_private_key(str(values["private_key"]).encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, RSAPrivateKey):
        raise NotConfigured(f"The private key in {where} is not an unencrypted PEM RSA key.")
    key_id = values.get("key_id")
    return str(values["issuer"]), key, key_id if isinstance(key_id, str) and key_id else None


def jwt_assertion(grant: GrantSpec, scope: str, path: str, audience: str, now: float) -> str:
    """The RFC 7523 assertion: iss from the key file, aud the token endpoint, RS256-signed."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    issuer, key, key_id = _key_file(grant, path)
    header = {"alg": "RS256", "typ": "JWT", **({"kid": key_id} if key_id else {})}
    issued = int(now)
    claims = {"iss": issuer, **({"scope": scope} if scope else {}), "aud": audience,
              "iat": issued, "exp": issued + grant.assertion_lifetime}
    signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def _jwt_bearer(
    auth: AuthSpec, grant: GrantSpec, client: tuple[str, str], url: str, now: float
) -> tuple[dict[str, str], dict[str, str]]:
    assertion = jwt_assertion(grant, auth.scope, client[0], url, now)
    return {**grant.extra_params, "grant_type": JWT_BEARER_GRANT, "assertion": assertion}, {}


#: grant type (spec `api.auth.type`) -> how its token request is made. A new grant is one entry.
GRANTS: dict[str, GrantRequest] = {"client_credentials": _client_credentials, "jwt_bearer": _jwt_bearer}


async def grant_token(client: httpx.AsyncClient, auth: AuthSpec, env: Mapping[str, str], now: float) -> TokenSet:
    """A token from the spec's grant; raises OAuthError for an error reply (which may echo the
    secret: the caller redacts), NotConfigured for an unusable key file. The caller checked that
    the client's variables are set."""
    grant = auth.grant
    assert grant is not None
    credentials = grant.client(env)
    assert credentials is not None
    url = grant.url(env)
    params, headers = GRANTS[grant.grant_type](auth, grant, credentials, url, now)
    response = await _post(client, auth, url, params, headers)
    return token_set(auth, response.status_code, _body(response), now)


# -- authorization code with PKCE -----------------------------------------------------------------
_PAGE = (
    "<!doctype html><meta charset=utf-8><title>gaud-engine</title>"
    "<body style='font-family:sans-serif;margin:3em'><p>{}</p></body>"
)


class _Callback:
    """A one-shot HTTP listener on the loopback interface that catches the authorization redirect."""

    def __init__(self, path: str, state: str) -> None:
        self.path = path
        self.state = state
        self.reply: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.servers: list[asyncio.Server] = []

    async def start(self, host: str, port: int) -> int:
        first = "127.0.0.1" if host == "localhost" else host
        self.servers.append(await asyncio.start_server(self._handle, first, port))
        bound = int(self.servers[0].sockets[0].getsockname()[1])
        if host == "localhost":  # browsers may resolve localhost to ::1 first
            with contextlib.suppress(OSError):
                self.servers.append(await asyncio.start_server(self._handle, "::1", bound))
        return bound

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()

    async def _respond(self, writer: asyncio.StreamWriter, status: int, text: str) -> None:
        body = _PAGE.format(text).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode() + body
        )
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            target = urlsplit(parts[1]) if len(parts) >= 2 else urlsplit("")
            if not parts or parts[0] != "GET" or target.path != self.path or self.reply.done():
                await self._respond(writer, 404, "Nothing here.")
                return
            params = dict(parse_qsl(target.query))
            self.reply.set_result(params)
            if params.get("state") != self.state:
                await self._respond(writer, 400, "This reply is not for the sign-in in progress; see the terminal.")
            elif "code" not in params:
                await self._respond(writer, 400, "The sign-in did not succeed; see the terminal.")
            else:
                await self._respond(writer, 200, "Signed in. You can close this tab and go back to the terminal.")
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()


async def pkce_login(
    client: httpx.AsyncClient,
    auth: AuthSpec,
    *,
    echo: Echo,
    open_url: Opener | None,
    timeout: float,
    clock: Callable[[], float],
) -> TokenSet:
    """Browser sign-in: print (and open) the authorization URL, catch the redirect, trade the code."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    callback = _Callback(auth.redirect_path, state)
    try:
        port = await callback.start(auth.redirect_host, auth.redirect_port)
    except OSError as exc:
        await callback.close()
        raise AuthenticationFailed(
            f"Cannot listen on {auth.redirect_host}:{auth.redirect_port} for the sign-in reply ({exc.strerror or exc})."
        ) from None
    redirect_uri = auth.redirect_uri(port)
    try:
        params = {
            **auth.extra_authorize_params,
            "response_type": "code",
            "client_id": auth.client_id,
            "redirect_uri": redirect_uri,
            **({"scope": auth.scope} if auth.scope else {}),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": state,
        }
        url = auth.authorize_url + ("&" if "?" in auth.authorize_url else "?") + urlencode(params)
        echo(f"Open this URL in a browser to sign in to {auth.provider}:\n\n  {url}\n")
        if open_url is not None:
            await asyncio.to_thread(open_url, url)
        echo(f"Waiting for the sign-in on {redirect_uri} (Ctrl-C to cancel)...")
        try:
            reply = await asyncio.wait_for(asyncio.shield(callback.reply), timeout)
        except TimeoutError:
            raise AuthenticationFailed(
                f"No sign-in reply came within {timeout:g} s; run `gaud-engine login {auth.provider}` again."
            ) from None
    finally:
        await callback.close()
    if reply.get("state") != state:
        raise AuthenticationFailed(
            f"The sign-in reply was not for this login (state mismatch); run `gaud-engine login {auth.provider}` again."
        )
    if "error" in reply or not reply.get("code"):
        reason = reply.get("error", "no code") + (f": {reply['error_description']}" if reply.get("error_description") else "")
        raise AuthenticationFailed(f"The sign-in to {auth.provider} was refused ({reason}).")
    token_params = {
        "grant_type": "authorization_code",
        "code": reply["code"],
        "redirect_uri": redirect_uri,
        "client_id": auth.client_id,
        "code_verifier": verifier,
    }
    if auth.token_request_state:
        token_params["state"] = state
    response = await _post(client, auth, auth.token_url, token_params)
    return token_set(auth, response.status_code, _body(response), clock())


# -- device authorization -------------------------------------------------------------------------
async def device_login(
    client: httpx.AsyncClient,
    auth: AuthSpec,
    *,
    echo: Echo,
    open_url: Opener | None,
    sleep: Callable[[float], Awaitable[Any]],
    clock: Callable[[], float],
) -> TokenSet:
    """Device sign-in: show the verification URI and user code, then poll until the user approves."""
    fields = auth.fields
    params = {"client_id": auth.client_id, **({"scope": auth.scope} if auth.scope else {})}
    response = await _post(client, auth, auth.device_authorization_url, params)
    body = _body(response)
    error = _error_of(auth, response.status_code, body)
    device_code = get(body, fields["device_code"])
    user_code = get(body, fields["user_code"])
    uri = get(body, fields["verification_uri"])
    if error is not None or not isinstance(device_code, str) or not isinstance(user_code, str) or not isinstance(uri, str):
        reason = str(error) if error is not None else "the reply lacks the device code, user code or URI"
        raise AuthenticationFailed(f"The device sign-in to {auth.provider} could not start ({reason}).")
    complete = get(body, fields["verification_uri_complete"])
    interval = _number(get(body, fields["interval"]))
    interval = auth.poll_interval if interval is None else max(0.0, interval)
    lifetime = _number(get(body, fields["expires_in"])) or 900.0
    echo(f"To sign in to {auth.provider}, open {uri} and enter the code {user_code}")
    if isinstance(complete, str) and complete:
        echo(f"(or open {complete})")
    if open_url is not None:
        await asyncio.to_thread(open_url, complete if isinstance(complete, str) and complete else uri)
    echo("Waiting for the sign-in (Ctrl-C to cancel)...")
    waited = 0.0
    poll = {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": auth.client_id}
    while True:
        if waited >= lifetime:
            raise AuthenticationFailed(
                f"The code expired before the sign-in finished; run `gaud-engine login {auth.provider}` again."
            )
        await sleep(interval)
        waited += interval
        response = await _post(client, auth, auth.token_url, poll)
        body = _body(response)
        code = get(body, fields["error"])
        if code == "authorization_pending":
            continue
        if code == "slow_down":
            asked = _number(get(body, fields["interval"]))
            interval = max(interval + 5.0, asked or 0.0)
            log.info("sign-in server asked to slow down: polling every %g s", interval)
            continue
        if code == "expired_token":
            raise AuthenticationFailed(
                f"The code expired before the sign-in finished; run `gaud-engine login {auth.provider}` again."
            )
        if code == "access_denied":
            raise AuthenticationFailed(f"The sign-in to {auth.provider} was declined.")
        return token_set(auth, response.status_code, body, clock())
