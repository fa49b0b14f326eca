"""Client-facing formats as specs (ingress.d/*.yaml): a format is mapped to and from the engine's
canonical OpenAI chat shape with the same rules, ops and templates provider specs use.

An ingress spec names its routes, maps a client request to a canonical chat request, maps a
canonical completion (or, as a stream encoder, canonical stream deltas: streaming/blocks.py) back,
and renders gateway errors in the client's envelope (in a stream too). Everything after the request
mapping is the canonical pipeline, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import GatewayError, InvalidRequest
from ..mapping import compile_condition, compile_rules, compile_template
from ..pointer import MISSING
from ..streaming.blocks import BlockStreamWriter, compile_block_stream
from ..streaming.encoders import EncoderFactory
from .wire import NativeRequest, compile_passthrough

__all__ = ["IngressCompileError", "IngressSpec", "StateSpec", "compile_ingress"]

_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "array": list, "object": dict, "integer": int, "number": (int, float), "boolean": bool,
}


class IngressCompileError(Exception):
    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message


@dataclass(frozen=True)
class StateSpec:
    """A format's stored replies (`state` in the spec; kept only under the `responses.store`
    setting): the request fields that continue from a stored reply and opt out of storing, the
    conversation field the stored items go before, the reply field holding the items that
    continue it, and the GET/DELETE route."""

    route: str
    continue_from: str
    store: str
    input: str
    output: str
    string_input: Any  # compiled template: a string `input` as one item (`@value`)
    deleted: Any  # compiled template: the DELETE reply (`@id`)

    @classmethod
    def compile(cls, data: dict[str, Any]) -> StateSpec:
        return cls(data["route"], data["continue_from"], data["store"], data["input"], data["output"],
                   compile_template(data["string_input"]), compile_template(data["deleted"]))

    def items(self, value: Any) -> list[Any] | None:
        """The conversation field as a list of items; None when it is neither a string nor a list
        (the request mapping refuses it)."""
        if isinstance(value, str):
            return [self.string_input(value, {})]
        return list(value) if isinstance(value, list) else None


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
        self.stream = compile_block_stream(data["stream"]) if "stream" in data else None
        self.state = StateSpec.compile(data["state"]) if "state" in data else None
        self.passthrough = compile_passthrough(data.get("passthrough"))

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
        if self.passthrough is not None:  # what the canonical shape cannot carry is left out
            body = self.passthrough.reduce(body)[0]
        try:
            return self._request(body, {})
        except GatewayError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise InvalidRequest(f"The request does not fit the {self.name} format: {exc}") from None

    def native(self, body: dict[str, Any], headers: Mapping[str, str]) -> NativeRequest | None:
        """The request as it may pass through to a deployment of the same format; None when the
        spec declares no `passthrough`."""
        return self.passthrough.native(body, headers) if self.passthrough is not None else None

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
        counted: dict[str, Any] = self._count(None, {"estimated_tokens": estimated})
        return counted

    # -- errors ---------------------------------------------------------------------------------
    def error_type(self, exc: GatewayError) -> str:
        return self.error_types.get(exc.kind, self.error_types.get("_default", exc.type))

    def error_body(self, exc: GatewayError) -> tuple[int, dict[str, Any]]:
        body = self._envelope(None, {"type": self.error_type(exc), "message": exc.message, "code": exc.code,
                                     "param": exc.param})
        return self.error_status.get(exc.kind, exc.status), body

    def stream_encoder(self, estimated_tokens: int | None, request: dict[str, Any] | None = None,
                       **options: Any) -> EncoderFactory:
        """What writes this format's stream for one client request: the gateway makes one encoder
        per attempt (`Gateway.chat_stream(..., encoder=...)`) and feeds it canonical deltas.
        `options`: the writer's `reply_id` and `on_reply` (stored replies)."""
        assert self.stream is not None  # a spec without `stream` refuses stream requests (`request.refuse`)
        return partial(BlockStreamWriter, self.stream, self, estimated_tokens, request, **options)


def compile_ingress(name: str, label: str, data: dict[str, Any]) -> IngressSpec:
    try:
        return IngressSpec(name, label, data)
    except KeyError as exc:
        raise IngressCompileError("", f"missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise IngressCompileError("", str(exc)) from None
