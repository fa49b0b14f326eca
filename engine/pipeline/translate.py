"""OpenAI Chat Completions <-> one provider, through its compiled spec. No I/O here."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import GatewayError, InvalidRequest, ResponseParsing
from ..pointer import MISSING, get
from ..spec.models import Target
from ..spec.provider import ProviderSpec
from ..spec.wire import NativeRequest
from ..streaming import StreamState, strip_tokens
from .tokens import estimate_output_tokens, estimate_prompt_tokens
from .upstream import UpstreamRequest
from .validation import check_for_model

__all__ = [
    "build_native_request",
    "build_request",
    "completion_from_reply",
    "error_from_reply",
    "forward_headers",
    "normalize_completion",
    "parse_retry_after",
    "post_request",
]


def build_request(
    target: Target,
    body: dict[str, Any],
    *,
    stream: bool,
    estimated_tokens: int | None = None,
    drop: bool = False,
) -> UpstreamRequest:
    """Map an OpenAI request for one deployment. `stream` is what the upstream is asked for.

    The body is already validated (`validation.validate_request`, once per request); what this
    deployment cannot take (context window, output limit, unsupported parameters) is refused here,
    or, for parameters its spec lets go (`request.params`; all of them with `drop`), removed.
    """
    check_for_model(body, target.info, estimate_prompt_tokens(body) if estimated_tokens is None else estimated_tokens)
    spec = target.provider
    spec.reject_if_unsupported(body)
    body = spec.params.fit(body, target.name, drop=drop)[0]
    ctx = {"model": target.model, "stream": stream, "model_info": target.info.as_context(), "provider": spec.name,
           "deployment": target.name}
    try:
        mapped = spec.request_mapper(body, ctx)
    except GatewayError:
        raise
    except (TypeError, AttributeError, ValueError) as exc:
        raise InvalidRequest(f"The request could not be translated for {spec.name}: {exc}") from None
    return post_request(target, "chat", mapped, stream=stream)


def build_native_request(
    target: Target, body: dict[str, Any], native: NativeRequest, *, stream: bool, estimated_tokens: int | None = None,
) -> UpstreamRequest:
    """The client's own request for a deployment of its format (same-format pass-through): only
    the wire format's declared rewrites. The canonical `body` is checked against the model's
    limits as on the translated path."""
    check_for_model(body, target.info, estimate_prompt_tokens(body) if estimated_tokens is None else estimated_tokens)
    wire = target.provider.wire_format
    assert wire is not None  # Gateway._native passes only deployments with one
    return post_request(target, "chat", wire.rewrite(native.body, target.model), stream=stream)


def forward_headers(headers: dict[str, str], extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`headers` (a new dict) with the client's forwarded ones: a header the deployment sets too
    is joined with a comma (a list header such as a beta-feature list)."""
    out = dict(headers)
    lower = {name.lower(): name for name in out}
    for name, value in extra:
        present = lower.get(name)
        out[present or name] = f"{out[present]},{value}" if present else value
    return out


def post_request(target: Target, endpoint: str, body: dict[str, Any], *, stream: bool) -> UpstreamRequest:
    """A POST of a mapped body to one of the deployment's endpoints (`api.endpoints`)."""
    return UpstreamRequest(
        method="POST",
        url=target.provider.url(endpoint, target.model, stream, target.api_base),
        headers=target.provider.headers_for(target.model, target.api_base),
        body=body,
        stream=stream,
        sign=target.provider.signer() if target.provider.auth is not None else None,
    )


def completion_from_reply(
    target: Target,
    raw: Any,
    *,
    requested_model: str,
    new_call_id: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Map a provider's reply into an OpenAI `chat.completion`."""
    spec = target.provider
    if not isinstance(raw, dict):
        raise ResponseParsing(f"{spec.name} returned a reply that is not a JSON object")
    problem = spec.reply_check(raw) if spec.reply_check is not None else None
    raw_usage = get(raw, spec.usage_from)
    if problem is None and raw_usage is not MISSING and not isinstance(raw_usage, dict):
        problem = "its usage is not an object"
    if problem is not None:
        raise ResponseParsing(f"{spec.name} returned a reply of the wrong shape: {problem}")
    ctx: dict[str, Any] = {"model": target.model, "provider": spec.name}
    if new_call_id is not None:
        ctx["new_call_id"] = new_call_id
    try:
        out = spec.reply_mapper(raw, ctx)
    except GatewayError:
        raise
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        raise ResponseParsing(f"{spec.name} returned a reply the spec cannot map: {exc}") from None
    return normalize_completion(out, target, raw_usage, requested_model)


def normalize_completion(out: dict[str, Any], target: Target, raw_usage: Any, requested_model: str) -> dict[str, Any]:
    """Fill what the OpenAI schema requires and the spec need not say: envelope, nulls, finish table."""
    spec = target.provider
    if not isinstance(out.get("id"), str) or not out.get("id"):
        out["id"] = f"chatcmpl-{uuid.uuid4().hex}"
    out["object"] = "chat.completion"
    if not isinstance(out.get("created"), int):
        out["created"] = int(time.time())
    if not isinstance(out.get("model"), str) or not out.get("model"):
        out["model"] = target.model or requested_model
    choices = out.get("choices")
    if not isinstance(choices, list) or not choices:
        choices = [{}]
    for i, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        message.setdefault("role", "assistant")
        message.setdefault("content", None)
        message.setdefault("refusal", None)
        if spec.special_tokens and isinstance(message["content"], str):
            message["content"] = strip_tokens(message["content"], spec.special_tokens)
        choice["message"] = message
        choice.setdefault("index", i)
        choice["finish_reason"] = spec.finish_reason(choice.get("finish_reason", MISSING), bool(message.get("tool_calls")))
        choice.setdefault("logprobs", None)
    out["choices"] = choices
    usage = spec.usage_of(raw_usage)
    if usage is not None:
        out["usage"] = usage
    return out


def estimated_usage(prompt_tokens: int | None, output_chars: int) -> dict[str, Any]:
    """Usage for a reply whose upstream reported none: the prompt estimate made before the call
    and ~4 characters per output token. Marked `estimated` so clients and the log can tell; billed
    like reported usage, so a silent upstream cannot be used to spend without being charged."""
    prompt = int(prompt_tokens or 0)
    completion = estimate_output_tokens(output_chars)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "estimated": True}


def with_usage(completion: dict[str, Any], prompt_estimate: int | None) -> dict[str, Any]:
    """The completion, with estimated usage if the upstream reported none."""
    if not completion.get("usage"):
        completion["usage"] = estimated_usage(prompt_estimate, output_chars(completion))
    return completion


def stream_usage(
    spec: ProviderSpec, raw_usage: dict[str, Any], output_chars: int, prompt_estimate: int | None,
    *, whole: bool = True,
) -> dict[str, Any]:
    """A stream's usage as reported; estimated where the upstream reported nothing, or no output
    yet. A stream that did not end `whole` (cut short, failed, abandoned) never got its final
    counts: its output is estimated (never below what was reported) and marked so."""
    usage = spec.usage_of(raw_usage) if raw_usage else None
    if usage is None:
        return estimated_usage(prompt_estimate, output_chars)
    if (not whole or not usage["completion_tokens"]) and output_chars:
        completion = max(usage["completion_tokens"], estimated_usage(0, output_chars)["completion_tokens"])
        usage.update(completion_tokens=completion, total_tokens=usage["prompt_tokens"] + completion, estimated=True)
    elif not whole:
        usage["estimated"] = True
    return usage


def closing_finish_reason(spec: ProviderSpec, state: StreamState, forwarded: bool) -> str | None:
    """The finish reason of a stream's closing chunk; None when a forwarded upstream chunk
    already carried one (`stream.passthrough`)."""
    if forwarded and state.raw_finish is not None:
        return None
    return spec.finish_reason(state.raw_finish, state.has_tool_calls)


def output_chars(completion: dict[str, Any]) -> int:
    """Characters a completion generated: content, reasoning and tool-call names and arguments."""
    chars = 0
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        for name in ("content", "reasoning_content"):
            if isinstance(message.get(name), str):
                chars += len(message[name])
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            chars += len(function.get("name") or "") + len(function.get("arguments") or "")
    return chars


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after` (or `retry-after-ms`), if the upstream sent one."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def error_from_reply(target: Target, status: int, payload: bytes, headers: Any = None) -> GatewayError:
    """Classify a non-2xx upstream reply through the spec's error table."""
    try:
        body = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # some APIs wrap the error object in a list
    return target.provider.classify_error(status, body, retry_after=parse_retry_after(headers), headers=headers)
