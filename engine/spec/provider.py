"""A provider spec compiled into plain callables: URLs, headers, request/reply mappers, tables."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any
from urllib.parse import unquote

import jinja2
from yarl import URL

from ..errors import GatewayError, InvalidRequest, error_for_kind
from ..mapping import Mapper, ShapeCheck, compile_condition, compile_first_of, compile_required, compile_rules
from ..mapping.templates import Getter, compile_source
from ..pointer import MISSING, compile_pointer, get
from ..streaming import compile_stream
from .checks import check_names
from .common import EnvVar, SpecCompileError, jinja_template
from .credentials import AuthSpec, compile_auth
from .params import NO_RULES, ParamRules, compile_params
from .secretfiles import with_files
from .sigv4 import sign_request
from .wire import WireFormat, compile_wire_format

#: Signs one request: (method, url, headers, body bytes) -> (the URL to send, the headers to send).
Signer = Callable[[str, str, dict[str, str], bytes], tuple[URL, dict[str, str]]]

# EnvVar and SpecCompileError live in common.py (credentials/spec.py needs them too) and are still
# importable from here.
__all__ = [
    "EmbeddingMaps", "Endpoint", "EnvVar", "ErrorTable", "ModelInfo", "ProviderSpec", "Signer", "SpecCompileError",
    "TokenCounter",
    "compile_provider",
]

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


@dataclass(frozen=True)
class ModelInfo:
    id: str
    aliases: tuple[str, ...] = ()
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[str] = frozenset()
    #: Declared free (`free: true`, with the spec's `reason`): the only way a request costs $0.
    free: bool = False
    free_reason: str | None = None

    def as_context(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "capabilities": sorted(self.capabilities),
        }


@dataclass
class Endpoint:
    path: jinja2.Template
    stream_path: jinja2.Template | None
    stream_only: bool = False


class ErrorTable:
    """Classifies an upstream failure into an error kind: by message regex, then code, then status.

    Sources read the error body (`/pointer`) or the reply's headers (`@headers/<lower-case name>`),
    so a code, message or delay carried in a header classifies as well as one in the body.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.code_of = compile_first_of(spec.get("code_from", []))
        self.message_of = compile_first_of(spec.get("message_from", []))
        self.by_message: list[tuple[re.Pattern[str], str]] = []
        for i, entry in enumerate(spec.get("by_message", [])):
            try:
                self.by_message.append((re.compile(entry["pattern"], re.IGNORECASE), entry["kind"]))
            except re.error as exc:
                raise SpecCompileError(f"/errors/by_message/{i}/pattern", f"bad regular expression: {exc}") from None
        self.by_code: dict[str, str] = {str(k): v for k, v in spec.get("by_code", {}).items()}
        self.by_status: dict[str, str] = {str(k): v for k, v in spec.get("by_status", {}).items()}
        self._delay_sources = [_compile_item_source(entry) for entry in spec.get("retry_after_from", [])]

    def retry_after(self, body: Any, headers: Mapping[str, str] | None = None) -> float | None:
        """Seconds to wait that the error asks for (`retry_after_from`), if any."""
        ctx = _header_context(headers)
        for source in self._delay_sources:
            seconds = parse_duration(source(body, ctx))
            if seconds is not None:
                return seconds
        return None

    def kind_of(
        self, status: int | None, body: Any, headers: Mapping[str, str] | None = None, code: str | None = None
    ) -> tuple[str, str]:
        """(kind, upstream message) for a status, a parsed error body (or None) and the reply's
        headers; `code`, when the transport named the error's type (an event-stream exception), is
        looked up in `by_code` instead of `code_from`."""
        ctx = _header_context(headers)
        message = self.message_of(body, ctx)
        found: Any = code if code is not None else self.code_of(body, ctx)
        text = message if isinstance(message, str) else ""
        for pattern, kind in self.by_message:
            if text and pattern.search(text):
                return kind, text
        if found is not MISSING:
            # A code qualified after a colon (`ThrottlingException:http://...`) also matches by its head.
            for key in dict.fromkeys((str(found), str(found).partition(":")[0])):
                if key in self.by_code:
                    return self.by_code[key], text
        if status is not None:
            for key in (str(status), f"{status // 100}xx"):
                if key in self.by_status:
                    return self.by_status[key], text
        return self.by_status.get("_default", "upstream_5xx"), text


def _header_context(headers: Mapping[str, str] | None) -> dict[str, Any]:
    """`@headers/<name>` for the error sources: the reply's headers, names in lower case."""
    if not headers:
        return {}
    return {"headers": {str(name).lower(): str(value) for name, value in headers.items()}}


def _compile_item_source(entry: Any) -> Getter:
    """A source string, or `{in, where, from}`: `from` in the first item of the array `in` that
    matches `where`."""
    if isinstance(entry, str):
        return compile_source(entry)
    items_of = compile_source(entry["in"])
    where = compile_condition(entry["where"]) if "where" in entry else None
    value_of = compile_source(entry["from"])

    def found(src: Any, ctx: dict[str, Any]) -> Any:
        items = items_of(src, ctx)
        if not isinstance(items, list):
            return MISSING
        for item in items:
            if where is None or where(item, ctx):
                value = value_of(item, ctx)
                if value is not MISSING:
                    return value
        return MISSING

    return found


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(value: Any) -> float | None:
    """Seconds from 21, 1.5, "21s", "1.5s", "500ms" or "2m"; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if match is None:
        return None
    number, unit = float(match[1]), match[2] or "s"
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


@dataclass
class EmbeddingMaps:
    """The compiled `embeddings:` section: OpenAI embeddings request <-> the provider's."""

    request_mapper: Mapper
    reply_mapper: Mapper
    usage_from: tuple[str | int, ...]
    usage_mapper: Mapper
    token_input: bool = True


@dataclass
class TokenCounter:
    """The compiled `count_tokens:` section: the chat body -> the counting request's body, and
    where the reply holds the count (at `api.endpoints.count_tokens`)."""

    request_mapper: Mapper | None
    tokens: tuple[str | int, ...]

    def count_of(self, reply: Any) -> int | None:
        """The count in a reply; None when it holds no non-negative integer there."""
        value = get(reply, self.tokens)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class ProviderSpec:
    """Everything the engine needs about one provider, compiled once at load."""

    name: str
    file: str
    description: str
    base_url: str
    env: dict[str, EnvVar]
    headers: dict[str, jinja2.Template]
    endpoints: dict[str, Endpoint]
    models: dict[str, ModelInfo]
    request_mapper: Mapper
    inline_image_urls: bool
    rejects: list[tuple[Any, str, str | None]]
    reply_mapper: Mapper
    usage_from: tuple[str | int, ...]
    usage_mapper: Mapper
    finish_reasons: dict[Any, str]
    finish_if_tool_calls: bool
    errors: ErrorTable
    embeddings: EmbeddingMaps | None
    models_list: dict[str, Any] | None
    # streaming.StreamSpec, None without a `stream:` section. Typed Any until its readers
    # (pipeline/gateway.py, cli/recordings.py) narrow out the None themselves.
    stream: Any
    special_tokens: tuple[str, ...]
    raw: dict[str, Any]
    #: `defer_bare_ids`: a bare model id another spec also lists resolves to that spec.
    defer_bare_ids: bool = False
    env_values: dict[str, str] = field(default_factory=dict)
    _header_cache: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    _url_cache: dict[tuple[str, str, bool, str], str] = field(default_factory=dict)
    auth: AuthSpec | None = None  # `api.auth`, the credential strategy
    _token_header_cache: dict[tuple[str, str], tuple[str, dict[str, str]]] = field(default_factory=dict)
    #: `response.required`: what a reply must hold to be mapped; None when the spec lists nothing.
    reply_check: ShapeCheck | None = None
    #: `stream.emulate`: the upstream cannot stream; streamed requests are served from one
    #: non-streaming call (`stream` is then None).
    stream_emulated: bool = False
    #: For one routes.yaml deployment (`for_deployment`): its name, and the declared variables it
    #: reads from others (declared -> read). None and empty for the spec as the catalog holds it.
    deployment: str | None = None
    env_sources: dict[str, str] = field(default_factory=dict)
    #: `count_tokens`: the provider's counting endpoint; None when the spec declares none.
    counter: TokenCounter | None = None
    #: `wire_format`: the client format this provider takes as it is (same-format pass-through).
    wire_format: WireFormat | None = None
    #: `request.params`: what the provider cannot express of a request (engine.spec.params).
    params: ParamRules = NO_RULES
    #: `api.required_one_of`: per item, its alternatives (each a group of variables that must all be set).
    env_alternatives: tuple[tuple[tuple[str, ...], ...], ...] = ()

    # -- credentials and readiness ------------------------------------------------------------
    def missing_env(self) -> list[str]:
        """Required environment variables that are not set (empty list = usable); an unmet
        `required_one_of` item reads `A or B+C` (its alternatives, by the names read)."""
        missing = [
            self.env_sources.get(v.name, v.name) for v in self.env.values() if v.required and not self.env_values.get(v.name)
        ]
        for alternatives in self.env_alternatives:
            if not any(all(self.env_values.get(name) for name in group) for group in alternatives):
                missing.append(" or ".join("+".join(self.env_sources.get(n, n) for n in group) for group in alternatives))
        return missing

    def setup_hint(self) -> str | None:
        """What makes this provider usable when its required variables are unset ("set X" or
        "set X or run `gaud-engine login p`"); None when they are set. Names only, never values.
        A provider that signs in may still be usable without them: the credential store says; not a
        deployment with its own credentials (`env`), which uses those or nothing."""
        missing = self.missing_env()
        if not missing:  # a signing provider also needs its signing identity (or the stand-in credential)
            sigv4 = self.auth.sigv4 if self.auth is not None else None
            return None if sigv4 is None else sigv4.setup_hint(self.env_values)
        hint = "set " + " and ".join(missing)
        if self.signs_in:
            hint += f" or run `gaud-engine login {self.name}`"
        return hint

    @property
    def signs_in(self) -> bool:
        """A sign-in (`gaud-engine login`) may stand in for its keys: not for a deployment that rebinds them."""
        return self.auth is not None and self.auth.signs_in and not self.env_sources

    def secrets(self) -> list[str]:
        return [self.env_values[v.name] for v in self.env.values() if v.secret and self.env_values.get(v.name)]

    def api_base(self) -> str:
        for var in self.env.values():
            if var.base_url and self.env_values.get(var.name):
                return self.env_values[var.name].rstrip("/")
        if "{" in self.base_url:  # a template: `https://runtime.{{ env.REGION or 'us-east-1' }}.example.com`
            return _base_url_template(self.base_url).render(env=self.env_values).rstrip("/")
        return self.base_url.rstrip("/")

    def for_deployment(
        self, deployment: str, env: Mapping[str, str], headers: Mapping[str, str | None], environ: Mapping[str, str]
    ) -> ProviderSpec:
        """This spec as one routes.yaml deployment sees it: each declared variable in `env` read from
        the variable it names (so every template, the base URL, the auth query and the
        required-variable check use it), `headers` laid over `api.headers` (None removes one). Built
        once at load; its caches are its own. Undeclared names in `env` are ignored (`validate`
        reports them). Raises SpecCompileError at `/headers/<name>` for a bad header template."""
        sources = {name: var for name, var in env.items() if name in self.env}
        merged = dict(self.headers)
        for name, source in headers.items():
            for existing in [h for h in merged if h.lower() == name.lower()]:
                del merged[existing]
            if source is not None:
                merged[name] = jinja_template(str(source), f"/headers/{name}")
        spec = dataclasses.replace(
            self,
            headers=merged,
            env_values={name: environ.get(sources.get(name, name), "") for name in self.env},
            deployment=deployment,
            env_sources=sources,
            _header_cache={},
            _url_cache={},
            _token_header_cache={},
        )
        _smoke_render(spec, header_pointer="/headers/")
        return spec

    # -- request building ---------------------------------------------------------------------
    def url(self, endpoint: str, model: str, stream: bool, api_base: str | None = None) -> str:
        """The upstream URL; rendered once per (endpoint, model, stream, base), then cached."""
        key = (endpoint, model, stream, api_base or "")
        cached = self._url_cache.get(key)
        if cached is None:
            cached = self._url_cache[key] = self._render_url(endpoint, model, stream, api_base)
        return cached

    def _render_url(
        self, endpoint: str, model: str, stream: bool, api_base: str | None, env: Mapping[str, str] | None = None
    ) -> str:
        env = self.env_values if env is None else env
        ep = self.endpoints[endpoint]
        template = ep.stream_path if stream and ep.stream_path is not None else ep.path
        base = (api_base or self.api_base()).rstrip("/")
        url = base + template.render(model=model, env=env, api_base=base)
        query = self.auth.static_query(env) if self.auth is not None else ""
        return url + ("&" if "?" in url else "?") + query if query else url

    def variable(self, name: str) -> str:
        """The environment variable a declared one is read from (itself unless a deployment rebinds it)."""
        return self.env_sources.get(name, name)

    def shown_url(self, endpoint: str, model: str, stream: bool = False, api_base: str | None = None) -> str:
        """The upstream URL with each secret variable's value replaced by `${VARIABLE}` (`routes
        explain`): never a secret value, whatever template or query carries it."""
        shown = {
            name: f"${{{self.variable(name)}}}" if var.secret else self.env_values.get(name, "")
            for name, var in self.env.items()
        }
        return unquote(self._render_url(endpoint, model, stream, api_base, shown))

    def headers_for(self, model: str, api_base: str | None = None) -> dict[str, str]:
        key = (model, api_base or "")
        cached = self._header_cache.get(key)
        if cached is None:
            context = {"model": model, "env": self.env_values, "api_base": api_base or self.api_base()}
            rendered = {name: t.render(context) for name, t in self.headers.items()}
            # A header whose value rendered empty, or ends blank ("Bearer " without a key), is not sent.
            cached = {name: value for name, value in rendered.items() if value.strip() and not value.endswith(" ")}
            self._header_cache[key] = cached
        return cached

    def headers_for_token(self, model: str, api_base: str | None = None, token: str | None = None) -> dict[str, str]:
        """Headers for a request carrying `token` from the credential manager: `api.headers` with
        `api.auth.headers` (which see `credentials.access_token`) laid over them; with no token,
        `headers_for()`. Cached per model until the token changes."""
        if token is None or self.auth is None:
            return self.headers_for(model, api_base)
        key = (model, api_base or "")
        cached = self._token_header_cache.get(key)
        if cached is None or cached[0] != token:
            context = {"model": model, "env": self.env_values, "api_base": api_base or self.api_base(),
                       "credentials": {"access_token": token}}
            replaced = {name.lower() for name in self.auth.headers}
            headers = {n: v for n, v in self.headers_for(model, api_base).items() if n.lower() not in replaced}
            for name, template in self.auth.headers.items():
                value = template.render(context) if template is not None else ""
                if value.strip() and not value.endswith(" "):
                    headers[name] = value
            cached = (token, headers)
            self._token_header_cache[key] = cached
        return cached[1]

    def signer(self) -> Signer | None:
        """What signs this provider's requests on their final bytes (`aws_sigv4`), with the
        identity its variables hold now; None for the providers that do not sign."""
        sigv4 = self.auth.sigv4 if self.auth is not None else None
        if sigv4 is None or sigv4.skipped(self.env_values):
            return None
        return partial(sign_request, sigv4.credentials(self.env_values))

    def reject_if_unsupported(self, body: dict[str, Any]) -> None:
        for when, message, param in self.rejects:
            if when(body, {}):
                raise InvalidRequest(message, param=param)

    def finish_reason(self, raw: Any, has_tool_calls: bool) -> str:
        if has_tool_calls and self.finish_if_tool_calls:
            return "tool_calls"
        if raw is MISSING or raw is None:
            return "tool_calls" if has_tool_calls else "stop"
        try:
            reason = self.finish_reasons.get(raw, self.finish_reasons["_default"])
        except TypeError:
            reason = self.finish_reasons["_default"]
        # A forced tool turned into content (structured output) leaves no call to report.
        return "stop" if reason == "tool_calls" and not has_tool_calls else reason

    def classify_error(
        self, status: int | None, body: Any, *, retry_after: float | None = None,
        headers: Mapping[str, str] | None = None, code: str | None = None,
    ) -> GatewayError:
        kind, upstream_message = self.errors.kind_of(status, body, headers, code)
        detail = self.redact(upstream_message) if upstream_message else code or f"HTTP {status}"
        message = f"{self.name} error: {detail}"
        if retry_after is None:  # a retry-after header wins over a delay in the body
            retry_after = self.errors.retry_after(body, headers)
        return error_for_kind(kind, message, retry_after=retry_after, upstream_status=status)

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            if len(secret) >= 6:
                text = text.replace(secret, "[redacted]")
        return text

    def usage_of(self, raw_usage: Any) -> dict[str, Any] | None:
        if not isinstance(raw_usage, dict):
            return None
        return normalize_usage(self.usage_mapper(raw_usage, {}))


def normalize_usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    usage["prompt_tokens"] = prompt
    usage["completion_tokens"] = completion
    if not usage.get("total_tokens"):
        usage["total_tokens"] = prompt + completion
    return usage


def _models(raw: Mapping[str, Any]) -> dict[str, ModelInfo]:
    models = {}
    for model_id, given in (raw or {}).items():
        info = given or {}
        models[str(model_id)] = ModelInfo(
            id=str(model_id),
            aliases=tuple(info.get("aliases", ())),
            context_window=info.get("context_window"),
            max_output_tokens=info.get("max_output_tokens"),
            capabilities=frozenset(info.get("capabilities", ())),
            free=bool(info.get("free", False)),
            free_reason=info.get("reason"),
        )
    return models


def _compiled(pointer: str, rules: list[dict[str, Any]]) -> Mapper:
    try:
        return compile_rules(rules)
    except SpecCompileError:
        raise
    except (KeyError, ValueError, TypeError, re.error) as exc:
        raise SpecCompileError(pointer, f"cannot compile rules: {exc}") from None


def _required(items: list[Any] | None) -> ShapeCheck | None:
    if not items:
        return None
    try:
        return compile_required(items)
    except (KeyError, ValueError, TypeError) as exc:
        raise SpecCompileError("/response/required", f"cannot compile required paths: {exc}") from None


def _embedding_maps(section: dict[str, Any] | None) -> EmbeddingMaps | None:
    if not section:
        return None
    request = section.get("request") or {}
    response = section.get("response") or {}
    usage = response.get("usage") or {}
    return EmbeddingMaps(
        request_mapper=_compiled("/embeddings/request/map", request.get("map", [{"to": "", "from": ""}])),
        reply_mapper=_compiled("/embeddings/response/map", response.get("map", [{"to": "", "from": ""}])),
        usage_from=compile_pointer(usage.get("from", "/usage")),
        usage_mapper=_compiled("/embeddings/response/usage/map", usage.get("map", [{"to": "", "from": ""}])),
        token_input=bool(request.get("token_input", True)),
    )


def _token_counter(section: dict[str, Any] | None, endpoints: dict[str, Endpoint]) -> TokenCounter | None:
    if not section:
        return None
    if "count_tokens" not in endpoints:
        raise SpecCompileError("/count_tokens", "count_tokens needs api.endpoints.count_tokens, the path to ask")
    rules = section.get("map")
    return TokenCounter(
        request_mapper=_compiled("/count_tokens/map", rules) if rules else None,
        tokens=compile_pointer(section["tokens"]),
    )


def _env_alternatives(items: list[list[Any]], env: Mapping[str, EnvVar]) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """`api.required_one_of`, each alternative as a group of names; every name declared in `env`."""
    compiled = []
    for i, alternatives in enumerate(items):
        groups = []
        for j, alternative in enumerate(alternatives):
            group = (alternative,) if isinstance(alternative, str) else tuple(alternative)
            for name in group:
                if name not in env:
                    raise SpecCompileError(f"/api/required_one_of/{i}/{j}", f"'{name}' is not declared in api.env")
            groups.append(group)
        compiled.append(tuple(groups))
    return tuple(compiled)


def compile_provider(name: str, file: str, spec: dict[str, Any], environ: Mapping[str, str] | None = None) -> ProviderSpec:
    """Compile a merged (extends-resolved) spec. Raises SpecCompileError with a pointer."""
    check_names(spec)
    environ = with_files(os.environ if environ is None else environ)
    api = spec.get("api") or {}
    env = {
        n: EnvVar(n, **{k: v for k, v in (d or {}).items() if k in ("secret", "required", "base_url", "description")})
        for n, d in (api.get("env") or {}).items()
        if d is not None
    }
    env_values = {n: environ.get(n, "") for n in env}
    env_alternatives = _env_alternatives(api.get("required_one_of") or [], env)
    headers = {
        h: jinja_template(str(t), f"/api/headers/{h}") for h, t in (api.get("headers") or {}).items() if t is not None
    }
    auth: AuthSpec | None = None
    if api.get("auth"):
        auth = compile_auth(name, api["auth"], env)
        headers.update(auth.static_headers)
    endpoints = {}
    for ep_name, ep in (api.get("endpoints") or {}).items():
        endpoints[ep_name] = Endpoint(
            path=jinja_template(ep["path"], f"/api/endpoints/{ep_name}/path"),
            stream_path=jinja_template(ep["stream_path"], f"/api/endpoints/{ep_name}/stream_path")
            if ep.get("stream_path")
            else None,
            stream_only=bool(ep.get("stream_only", False)),
        )
    request = spec.get("request") or {}
    response = spec.get("response") or {}
    usage = response.get("usage") or {}
    finish = dict(response.get("finish_reasons") or {"_default": "stop"})
    rejects = [
        (compile_condition(r["when"]), r["message"], r.get("param")) for r in request.get("reject", [])
    ]
    compiled = ProviderSpec(
        name=name,
        file=file,
        description=spec.get("description", ""),
        base_url=api.get("base_url", ""),
        env=env,
        headers=headers,
        endpoints=endpoints,
        models=_models(spec.get("models") or {}),
        request_mapper=_compiled("/request/map", request.get("map", [])),
        inline_image_urls=bool(request.get("inline_image_urls", False)),
        rejects=rejects,
        reply_mapper=_compiled("/response/map", response.get("map", [])),
        usage_from=compile_pointer(usage.get("from", "/usage")),
        usage_mapper=_compiled("/response/usage/map", usage.get("map", [{"to": "", "from": ""}])),
        finish_reasons=finish,
        finish_if_tool_calls=bool(response.get("finish_if_tool_calls", False)),
        errors=ErrorTable(spec.get("errors") or {}),
        embeddings=_embedding_maps(spec.get("embeddings")),
        models_list=spec.get("models_list"),
        stream=None,
        special_tokens=tuple(spec.get("special_tokens") or ()),
        defer_bare_ids=bool(spec.get("defer_bare_ids", False)),
        raw=spec,
        env_values=env_values,
        auth=auth,
        reply_check=_required(response.get("required")),
        env_alternatives=env_alternatives,
    )
    compiled.counter = _token_counter(spec.get("count_tokens"), endpoints)
    compiled.wire_format = compile_wire_format(spec.get("wire_format"))
    compiled.params = compile_params(request.get("params"))
    if (spec.get("stream") or {}).get("emulate"):
        compiled.stream_emulated = True
    elif spec.get("stream"):
        try:
            compiled.stream = compile_stream(spec["stream"])
        except SpecCompileError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise SpecCompileError("/stream", f"cannot compile stream table: {exc}") from None
    _smoke_render(compiled)
    return compiled


@lru_cache(maxsize=64)
def _base_url_template(source: str) -> jinja2.Template:
    """`api.base_url` as a template over `env` (e.g. a region in the host), compiled once."""
    return jinja_template(source, "/api/base_url")


def _smoke_render(spec: ProviderSpec, header_pointer: str = "/api/headers/") -> None:
    """Render every template once so an undefined name fails at load, not on the first request."""
    sample_env = {n: spec.env_values.get(n) or "x" for n in spec.env}
    if "{" in spec.base_url:
        try:
            _base_url_template(spec.base_url).render(env=sample_env)
        except jinja2.UndefinedError as exc:
            raise SpecCompileError("/api/base_url", f"template names an undeclared value: {exc.message}") from None
    for name, template in spec.headers.items():
        try:
            template.render(model="m", env=sample_env, api_base="http://x")
        except jinja2.UndefinedError as exc:
            raise SpecCompileError(f"{header_pointer}{name}", f"template names an undeclared value: {exc.message}") from None
    for ep_name, ep in spec.endpoints.items():
        for which, path_template in (("path", ep.path), ("stream_path", ep.stream_path)):
            if path_template is None:
                continue
            try:
                path_template.render(model="m", env=sample_env, api_base="http://x")
            except jinja2.UndefinedError as exc:
                raise SpecCompileError(
                    f"/api/endpoints/{ep_name}/{which}", f"template names an undeclared value: {exc.message}"
                ) from None

