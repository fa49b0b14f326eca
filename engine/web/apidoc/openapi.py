"""`/openapi.json`: the gateway's own API as OpenAPI 3.1, generated from the app's route table.

Every route of the starlette app becomes an operation. What a route takes and returns comes from
the schemas the project already has: the official OpenAI chat schemas (schemas/openai/, the same
file the tests validate replies against), schemas/gateway/api.json for the gateway's own shapes,
and, for the client formats of ingress.d/, the spec itself (the fields its request mapping reads
and requires, the fields its reply mapping writes, its error envelope and its auth headers). A
route this module has no description for is still listed, marked `x-undocumented`, so a new route
shows up (and tests/test_openapi.py fails) instead of silently missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from starlette.routing import BaseRoute, Mount, Route

from ...spec.catalog import Catalog
from ...spec.ingress import IngressSpec
from ...spec.loader import schema_dir

__all__ = ["Operation", "openapi_document", "route_operations"]

CHAT_SCHEMAS = "openai/chat_schemas.json"
GATEWAY_SCHEMAS = "gateway/api.json"

#: Who may call an operation: any caller, a valid key, or an admin key.
PUBLIC, KEY, ADMIN = "public", "key", "admin"


@dataclass(frozen=True)
class Operation:
    """How one route is described: `request` and `reply` name a component schema."""

    tag: str
    summary: str
    access: str = KEY
    request: str | None = None
    reply: str | None = None
    media: str = "application/json"
    streams: bool = False  # may answer text/event-stream (the request's `stream: true`)
    description: str = ""
    query: tuple[tuple[str, str], ...] = ()  # (name, description) of string query parameters
    created: bool = False  # answers 201, not 200


_RELOAD_NOTE = "Reloads the spec tree (as SIGHUP); a tree with problems is refused and the old one keeps serving."

#: (method, path as starlette spells it) -> description, for the routes the gateway always has.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/chat/completions"): Operation(
        "OpenAI", "Create a chat completion", request="CreateChatCompletionRequest",
        reply="CreateChatCompletionResponse", streams=True,
        description="`model` is an alias of routes.yaml or provider/model. With `stream: true` the reply is "
                    "server-sent events, each `data:` a CreateChatCompletionStreamResponse, then `data: [DONE]`."),
    ("POST", "/chat/completions"): Operation(
        "OpenAI", "Create a chat completion (without /v1)", request="CreateChatCompletionRequest",
        reply="CreateChatCompletionResponse", streams=True, description="The same as POST /v1/chat/completions."),
    ("POST", "/v1/embeddings"): Operation(
        "OpenAI", "Create embeddings", request="CreateEmbeddingRequest", reply="CreateEmbeddingResponse"),
    ("POST", "/embeddings"): Operation(
        "OpenAI", "Create embeddings (without /v1)", request="CreateEmbeddingRequest", reply="CreateEmbeddingResponse",
        description="The same as POST /v1/embeddings."),
    ("GET", "/v1/models"): Operation(
        "OpenAI", "List the models this key may call", reply="ModelList",
        description="Aliases with a usable deployment, then provider/model of every provider with credentials."),
    ("GET", "/v1/models/{model_id:path}"): Operation(
        "OpenAI", "Retrieve a model", reply="Model",
        description="A model this key may not call is a 404, as an unknown one."),
    ("GET", "/health"): Operation(
        "Operations", "Liveness, or per-provider readiness with ?detail=1", access=PUBLIC, reply="Health",
        query=(("detail", "1: providers and breakers too (an admin key when auth is on)"),)),
    ("GET", "/metrics"): Operation(
        "Operations", "Prometheus metrics", access=ADMIN, media="text/plain",
        description="Needs an admin key when auth is on, unless the setting metrics.require_admin is false."),
    ("GET", "/admin/users"): Operation("Admin", "List users", access=ADMIN, reply="UserList"),
    ("POST", "/admin/users"): Operation(
        "Admin", "Create a user", access=ADMIN, request="UserCreate", reply="User", created=True,
        description="As `gaud-engine users create`: a user without a key. An existing name is a 409 `user_exists`."),
    ("GET", "/admin/users/{name}"): Operation("Admin", "Show a user and their keys", access=ADMIN, reply="UserDetail"),
    ("PATCH", "/admin/users/{name}"): Operation(
        "Admin", "Change a user's role, budgets or limits", access=ADMIN, request="UserChanges", reply="User"),
    ("DELETE", "/admin/users/{name}"): Operation(
        "Admin", "Erase a user", access=ADMIN, reply="Erased",
        description="As `gaud-engine users delete`: the user's keys are revoked, their audit rows anonymised "
                    "and their stored Responses API replies deleted (docs/decisions.md). A 500 `erasure_incomplete` "
                    "names the token the user now has: erase it again to finish."),
    ("GET", "/admin/teams"): Operation("Admin", "List teams with their members and spend", access=ADMIN,
                                       reply="TeamList"),
    ("POST", "/admin/teams"): Operation(
        "Admin", "Create a team", access=ADMIN, request="TeamCreate", reply="Team", created=True,
        description="As `gaud-engine teams create`. Put users in it with the `team` field of a user or a key."),
    ("GET", "/admin/teams/{name}"): Operation("Admin", "Show a team", access=ADMIN, reply="Team"),
    ("PATCH", "/admin/teams/{name}"): Operation(
        "Admin", "Change or rename a team", access=ADMIN, request="TeamChanges", reply="Team"),
    ("DELETE", "/admin/teams/{name}"): Operation(
        "Admin", "Delete a team", access=ADMIN, reply="TeamDeleted",
        description="Refused (400 `team_has_members`) while it has members; its past requests keep counting as its own."),
    ("GET", "/admin/keys"): Operation("Admin", "List API keys", access=ADMIN, reply="KeyList"),
    ("POST", "/admin/keys"): Operation(
        "Admin", "Create an API key", access=ADMIN, request="KeyCreate", reply="CreatedKey", created=True,
        description="The reply holds the whole key, shown only once."),
    ("GET", "/admin/keys/{lookup}"): Operation("Admin", "Show an API key", access=ADMIN, reply="Key"),
    ("PATCH", "/admin/keys/{lookup}"): Operation(
        "Admin", "Change an API key", access=ADMIN, request="KeyChanges", reply="Key"),
    ("DELETE", "/admin/keys/{lookup}"): Operation(
        "Admin", "Delete an API key", access=ADMIN, reply="KeyDeleted",
        description="Revokes the key and drops its stored hash; it stays listed as revoked."),
    ("POST", "/admin/keys/{lookup}/revoke"): Operation("Admin", "Revoke an API key", access=ADMIN, reply="Revoked"),
    ("GET", "/admin/events"): Operation(
        "Admin", "Who changed which user, team or key", access=ADMIN, reply="AdminEventList",
        description="Newest first. Every change by the admin API or the CLI, with the fields set; never a key.",
        query=(("since", "from this Unix time (seconds)"), ("limit", "at most this many (1 to 1000, default 100)"))),
    ("GET", "/admin/usage"): Operation(
        "Admin", "Usage totals per user and deployment", access=ADMIN, reply="UsageList",
        query=(("user", "only this user"), ("since", "from this Unix time (seconds)"))),
    ("POST", "/admin/reload"): Operation("Admin", "Reload the specs", access=ADMIN, reply="Reloaded",
                                         description=_RELOAD_NOTE),
    ("GET", "/ui"): Operation(
        "Operations", "The admin dashboard (HTML)", access=PUBLIC, media="text/html",
        description="Usage, keys and health pages for a signed-in admin; /ui/login signs in with an admin key."),
    ("GET", "/"): Operation(
        "Operations", "Landing page", access=PUBLIC, reply="Landing", media="text/html",
        description="HTML for a browser, JSON for `Accept: application/json`: the version and links; the "
                    "aliases the caller may call only with a valid key."),
    ("GET", "/openapi.json"): Operation("Operations", "This document", access=PUBLIC),
    ("GET", "/docs"): Operation("Operations", "This document, rendered (HTML)", access=PUBLIC, media="text/html"),
    ("GET", "/docs/{asset}"): Operation("Operations", "The renderer's script and stylesheet", access=PUBLIC,
                                        media="text/plain"),
}

_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def route_operations(routes: Iterable[BaseRoute]) -> Iterator[tuple[str, str]]:
    """(method, path) of every operation the route table answers; a mount is one GET of its root."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, route.path
        elif isinstance(route, Mount):
            yield "GET", route.path or "/"


def openapi_document(routes: Iterable[BaseRoute], catalog: Catalog, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (the starlette app's), with `catalog`'s client formats."""
    components = _components()
    formats = _FormatRoutes(catalog, components)
    paths: dict[str, dict[str, Any]] = {}
    for method, path in route_operations(routes):
        described = OPERATIONS.get((method, path))
        operation = _operation(described) if described else formats.operation(method, path)
        if operation is None:
            operation = {"summary": f"{method} {path}", "x-undocumented": True, "responses": _replies(None, "")}
        params = _PARAM.findall(path)
        if params:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in params
            ] + operation.get("parameters", [])
        paths.setdefault(_PARAM.sub(r"{\1}", path), {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gaud-engine",
            "version": version,
            "summary": "An OpenAI-compatible LLM gateway.",
            "description": "Keys are sent as `Authorization: Bearer sk-gaud-...` (client formats may name other "
                           "headers). Errors are OpenAI-style JSON, or the client format's own envelope.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("OpenAI", *formats.tags, "Admin", "Operations")],
        "paths": paths,
        "components": components,
    }


def _operation(described: Operation) -> dict[str, Any]:
    operation: dict[str, Any] = {"tags": [described.tag], "summary": described.summary}
    if described.description:
        operation["description"] = described.description
    if described.access == PUBLIC:
        operation["security"] = []
    elif described.access == ADMIN:
        operation["description"] = f"{described.description} An admin key.".strip()
    if described.query:
        operation["parameters"] = [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in described.query
        ]
    if described.request:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(described.request)}}}
    operation["responses"] = _replies(described, "Error")
    return operation


def _replies(described: Operation | None, error: str) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if described is not None and described.reply:
        content["application/json"] = {"schema": _ref(described.reply)}
    if described is not None and described.media != "application/json":
        content[described.media] = {"schema": {"type": "string"}}
    if described is not None and described.streams:
        content["text/event-stream"] = {"schema": {"type": "string", "description": "Server-sent events."}}
    ok: dict[str, Any] = {"description": "OK"}
    if content:
        ok["content"] = content
    replies: dict[str, Any] = {"201" if described is not None and described.created else "200": ok}
    if error:
        replies["default"] = {"description": "An error", "content": {"application/json": {"schema": _ref(error)}}}
    return replies


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@cache
def _bundled_schemas() -> str:
    """The component schemas of both bundles as JSON text, refs pointing at components."""
    schemas: dict[str, Any] = {}
    for name in (CHAT_SCHEMAS, GATEWAY_SCHEMAS):
        schemas.update(json.loads((schema_dir() / name).read_text())["$defs"])
    return json.dumps(_without_null_defaults(schemas)).replace('"#/$defs/', '"#/components/schemas/')


def _without_null_defaults(schema: Any) -> Any:
    """`schema` less the `default: null` of branches whose type excludes null: the OpenAI schemas
    put it on the object branch of `anyOf: [object, null]`, which OpenAPI validators refuse."""
    if isinstance(schema, list):
        return [_without_null_defaults(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kinds = schema.get("type")
    drop = schema.get("default", 0) is None and kinds is not None and "null" not in (
        kinds if isinstance(kinds, list) else [kinds])
    return {key: _without_null_defaults(value) for key, value in schema.items() if not (drop and key == "default")}


def _components() -> dict[str, Any]:
    return {
        "schemas": json.loads(_bundled_schemas()),  # a fresh copy: format schemas are added per document
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "A gateway API key (sk-gaud-...)."},
        },
    }


class _FormatRoutes:
    """The operations of the client formats (ingress.d/), from their compiled specs."""

    def __init__(self, catalog: Catalog, components: dict[str, Any]) -> None:
        self.components = components
        self.tags: list[str] = []
        self.by_route: dict[str, tuple[IngressSpec, str]] = {}
        for spec in catalog.ingress.values():
            for kind, path in spec.routes.items():
                self.by_route[path] = (spec, kind)
            if spec.state is not None:
                self.by_route[spec.state.route] = (spec, "state")
            self.tags.append(spec.name)
            self._add_schemas(spec)

    def _add_schemas(self, spec: IngressSpec) -> None:
        schemas = self.components["schemas"]
        schemas[f"{spec.name}.Request"] = request_schema(spec, spec.required)
        schemas[f"{spec.name}.CountTokensRequest"] = request_schema(spec, spec.count_required)
        schemas[f"{spec.name}.Reply"] = reply_schema(spec.data["response"]["map"])
        schemas[f"{spec.name}.CountTokensReply"] = template_schema(
            (spec.data.get("count_tokens") or {}).get("template", {"input_tokens": "@estimated_tokens"}))
        schemas[f"{spec.name}.Error"] = template_schema(spec.data["errors"]["envelope"])
        for header in (spec.data.get("auth") or {}).get("headers", []):
            if header != "authorization":
                self.components["securitySchemes"][f"header.{header}"] = {
                    "type": "apiKey", "in": "header", "name": header, "description": "A gateway API key."}

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        found = self.by_route.get(path)
        if found is None:
            return None
        spec, kind = found
        name = spec.name
        about = spec.data.get("description", name)
        if kind == "state":
            summary = "Delete a stored reply" if method == "DELETE" else "Retrieve a stored reply"
            reply = f"{name}.Reply" if method == "GET" else None
            request = None
            about = f"{about}. Only with the setting responses.store; another user's reply is a 404."
        elif kind == "count_tokens":
            summary, request, reply = "Count input tokens", f"{name}.CountTokensRequest", f"{name}.CountTokensReply"
        else:
            summary, request, reply = f"{name}: create a reply", f"{name}.Request", f"{name}.Reply"
        described = Operation(name, summary, request=request, reply=reply, description=about,
                              streams=kind == "chat" and spec.stream is not None)
        operation = _operation(described)
        operation["responses"]["default"]["content"]["application/json"]["schema"] = _ref(f"{name}.Error")
        headers = (spec.data.get("auth") or {}).get("headers", [])
        operation["security"] = [{"bearer": []}] + [{f"header.{h}": []} for h in headers if h != "authorization"]
        return operation


#: The `required` kinds of an ingress spec that are JSON Schema types as they are.
_TYPES = frozenset({"string", "array", "integer", "number", "object", "boolean"})


def request_schema(spec: IngressSpec, required: dict[str, str]) -> dict[str, Any]:
    """The fields the spec's request mapping reads (its `from` pointers), the required ones typed."""
    read = sorted(_top_fields(spec.data["request"]["map"], ("from", "system_from")) | set(required))
    properties: dict[str, Any] = {name: {} for name in read}
    for name, kind in required.items():
        properties[name] = {"type": kind} if kind in _TYPES else {}
    return {"type": "object", "required": sorted(required), "properties": properties,
            "description": f"The fields {spec.name} reads; other fields are ignored or refused as the spec says."}


def reply_schema(rules: list[Any]) -> dict[str, Any]:
    """The top-level fields the spec's reply mapping writes; a field one unconditional `const`
    rule writes as that constant."""
    writers: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        name = _top(rule.get("to")) if isinstance(rule, dict) else None
        if name is not None:
            writers.setdefault(name, []).append(rule)
    properties = {
        name: {"const": rules[0]["const"]} if len(rules) == 1 and _constant(rules[0], name) else {}
        for name, rules in writers.items()
    }
    return {"type": "object", "properties": properties}


def _constant(rule: dict[str, Any], name: str) -> bool:
    return "const" in rule and "when" not in rule and rule["to"] == f"/{name}"


def template_schema(template: Any) -> dict[str, Any]:
    """A template's shape: objects and arrays as written, `@value` slots and pointers as any value."""
    if isinstance(template, dict):
        if "op" in template:
            return {}
        return {"type": "object", "required": sorted(template),
                "properties": {key: template_schema(value) for key, value in template.items()}}
    if isinstance(template, list):
        return {"type": "array", "items": {}}
    if isinstance(template, str) and template.startswith(("@", "/")):
        return {}
    return {"const": template}


def _top_fields(rules: list[Any], keys: tuple[str, ...]) -> set[str]:
    fields: set[str] = set()
    for rule in rules:
        if isinstance(rule, dict):
            fields.update(name for key in keys if (name := _top(rule.get(key))) is not None)
    return fields


def _top(pointer: Any) -> str | None:
    """The first segment of a JSON pointer into the body ("/usage/x" -> "usage"); None for others."""
    if not isinstance(pointer, str) or not pointer.startswith("/") or len(pointer) < 2:
        return None
    return pointer[1:].split("/", 1)[0].replace("~1", "/").replace("~0", "~")
