"""Client-facing formats as specs (ingress.d/*.yaml): a format is mapped to and from the engine's
canonical OpenAI chat shape with the same rules, ops and templates provider specs use.

An ingress spec names its routes, maps a client request to a canonical chat request, maps a
canonical completion (or stream, see streaming/blocks.py) back, and renders gateway errors in the
client's envelope. Everything after the request mapping is the canonical pipeline, unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..errors import GatewayError, InvalidRequest
from ..mapping import compile_condition, compile_rules, compile_template
from ..pointer import MISSING

__all__ = ["IngressSpec", "IngressCompileError", "compile_ingress"]

_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "array": list, "object": dict, "integer": int, "number": (int, float), "boolean": bool,
}


class IngressCompileError(Exception):
    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message


@dataclass
class StreamEvent:
    event: str | None
    render: Any
    when: Any = None


class IngressSpec:
    """One compiled ingress spec."""

    def __init__(self, name: str, label: str, data: dict[str, Any]) -> None:
        self.name = name
        self.label = label
        self.data = data
        self.routes: dict[str, str] = dict(data["routes"])
        request = data["request"]
        self.required: dict[str, str] = dict(request.get("required", {}))
        self.count_required: dict[str, str] = dict(request.get("count_tokens_required", self.required))
        self._request = compile_rules(request["map"])
        self._refuse = [(compile_condition(r["when"]), r["message"], r.get("param")) for r in request.get("refuse", [])]
        response = data["response"]
        self._response = compile_rules(response["map"])
        self.finish_reasons: dict[str, str] = dict(response.get("finish_reasons", {}))
        count = data.get("count_tokens", {})
        self._count = compile_template(count.get("template", {"input_tokens": "@estimated_tokens"}))
        errors = data["errors"]
        self._envelope = compile_template(errors["envelope"])
        self.error_types: dict[str, str] = dict(errors.get("types", {}))
        self.error_status: dict[str, int] = {k: int(v) for k, v in errors.get("status", {}).items()}
        self.stream = _compile_stream(data["stream"]) if "stream" in data else None

    # -- requests -------------------------------------------------------------------------------
    def _check(self, body: dict[str, Any], required: dict[str, str]) -> None:
        for field, kind in required.items():
            value = body.get(field)
            if value is None:
                raise InvalidRequest(f"{field}: Field required", param=field)
            expected = _TYPES.get(kind, object)
            if not isinstance(value, expected) or (kind in ("integer", "number") and isinstance(value, bool)):
                raise InvalidRequest(f"{field}: Input should be a valid {kind}", param=field)

    def to_canonical(self, body: dict[str, Any], *, count: bool = False) -> dict[str, Any]:
        """A client request -> a canonical OpenAI chat request; bad input is always InvalidRequest."""
        self._check(body, self.count_required if count else self.required)
        for when, message, param in self._refuse:
            if when(body, {}):
                raise InvalidRequest(message, param=param)
        try:
            return self._request(body, {})
        except GatewayError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise InvalidRequest(f"The request does not fit the {self.name} format: {exc}") from None

    # -- replies --------------------------------------------------------------------------------
    def stop_reason(self, finish_reason: Any) -> Any:
        if not isinstance(finish_reason, str):
            return MISSING
        return self.finish_reasons.get(finish_reason, self.finish_reasons.get("_default", finish_reason))

    def from_canonical(self, completion: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
        """A canonical completion -> the client reply; `@request/...` reads the client's request."""
        choices = completion.get("choices") or [{}]
        finish = choices[0].get("finish_reason")
        ctx = {"stop_reason": self.stop_reason(finish), "finish_reason": finish, "request": request or {}}
        return self._response(completion, ctx)

    def count_tokens(self, estimated: int) -> dict[str, Any]:
        return self._count(None, {"estimated_tokens": estimated})

    # -- errors ---------------------------------------------------------------------------------
    def error_type(self, exc: GatewayError) -> str:
        return self.error_types.get(exc.kind, self.error_types.get("_default", exc.type))

    def error_body(self, exc: GatewayError) -> tuple[int, dict[str, Any]]:
        body = self._envelope(None, {"type": self.error_type(exc), "message": exc.message, "code": exc.code,
                                     "param": exc.param})
        return self.error_status.get(exc.kind, exc.status), body

    def error_from_openai(self, payload: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI error body (what the canonical stream reports mid-stream) in the client envelope."""
        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        kind = _KIND_OF_TYPE.get(str(error.get("type")), "_default")
        if error.get("code") in self.error_types:
            kind = str(error["code"])
        client_type = self.error_types.get(kind, self.error_types.get("_default", "api_error"))
        return self._envelope(None, {"type": client_type, "message": str(error.get("message") or "error")})

    def stream_events(
        self, pieces: AsyncIterator[bytes], estimated_tokens: int | None, request: dict[str, Any] | None = None
    ) -> AsyncIterator[bytes]:
        from ..streaming.blocks import BlockStreamWriter

        assert self.stream is not None  # a spec without `stream` refuses stream requests (`request.refuse`)
        return BlockStreamWriter(self, estimated_tokens, request).run(pieces)


#: OpenAI error `type` -> the gateway error kind (for errors that arrive as a body, mid-stream).
_KIND_OF_TYPE = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "authentication",
    "permission_error": "permission",
    "rate_limit_error": "rate_limit",
    "insufficient_quota": "budget_exceeded",
    "timeout_error": "timeout",
}


@dataclass
class BlockSpec:
    start: list[Any]
    delta: list[Any]
    stop: list[Any]
    finish: StreamEvent | None


@dataclass
class StreamSpec:
    event_line: bool
    start: list[StreamEvent]
    blocks: dict[str, BlockSpec]
    end: list[StreamEvent]
    error: StreamEvent
    block_event: Any
    carry_sep: str | None
    to_reasoning: frozenset[str]


def _event(spec: dict[str, Any]) -> StreamEvent:
    return StreamEvent(spec.get("event"), compile_template(spec["data"]),
                       compile_condition(spec["when"]) if "when" in spec else None)


def _templates(spec: Any) -> list[Any]:
    """One payload template, or a list of them (one event each: a payload is never a JSON list)."""
    return [compile_template(t) for t in spec] if isinstance(spec, list) else [compile_template(spec)]


def _compile_stream(spec: dict[str, Any]) -> StreamSpec:
    from ..pointer import compile_pointer

    blocks = {}
    for kind, block in spec["blocks"].items():
        finish = block.get("finish")
        blocks[kind] = BlockSpec(
            _templates(block["start"]), _templates(block["delta"]), _templates(block["stop"]),
            _event(finish) if finish else None,
        )
    carry = spec.get("carry", {})
    return StreamSpec(
        event_line=bool(spec.get("framing", {}).get("event_line", True)),
        start=[_event(e) for e in spec.get("start", [])],
        blocks=blocks,
        end=[_event(e) for e in spec.get("end", [])],
        error=_event(spec["error"]),
        block_event=compile_pointer(spec.get("block_event_from", "/type")),
        carry_sep=carry.get("sep"),
        to_reasoning=frozenset(carry.get("to_reasoning", ())),
    )


def compile_ingress(name: str, label: str, data: dict[str, Any]) -> IngressSpec:
    try:
        return IngressSpec(name, label, data)
    except KeyError as exc:
        raise IngressCompileError("", f"missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise IngressCompileError("", str(exc)) from None
