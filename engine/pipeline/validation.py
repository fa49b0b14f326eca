"""Request validation before any upstream call: shapes, sizes, tool schemas, control characters.

Every failure is a 400 (`invalid_request`) whose `param` names the field. Per-deployment checks
(context window, output limit) live in `check_for_model`, run for each candidate so a too-long
prompt can fall back to a model with a larger window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ..errors import ContextWindowExceeded, InvalidOutput, InvalidRequest
from ..mapping.turns import message_items
from ..spec.provider import ModelInfo

__all__ = ["Limits", "check_for_model", "check_structured_output", "validate_request"]

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_NUMBERS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_POSITIVE_INTS = ("max_tokens", "max_completion_tokens", "n", "top_logprobs")


@dataclass(frozen=True)
class Limits:
    max_messages: int = 2048
    max_message_chars: int = 4_000_000
    max_images: int = 100
    max_image_bytes: int = 20 * 1024 * 1024
    max_tools: int = 256
    max_depth: int = 64
    max_n: int = 8
    #: "strip" removes C0 control characters (except tab, newline, return) from text; "refuse" rejects them.
    control_chars: str = "strip"


def _fail(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _depth(value: Any, limit: int, param: str, level: int = 0) -> None:
    if level > limit:
        raise _fail(f"{param} is nested deeper than {limit} levels.", param)
    if isinstance(value, dict):
        for item in value.values():
            _depth(item, limit, param, level + 1)
    elif isinstance(value, list):
        for item in value:
            _depth(item, limit, param, level + 1)


@lru_cache(maxsize=512)
def _schema_problem(schema_json: bytes) -> str | None:
    try:
        Draft202012Validator.check_schema(orjson.loads(schema_json))
    except SchemaError as exc:
        return exc.message
    return None


def _check_schema(schema: Any, param: str) -> None:
    if not isinstance(schema, dict):
        raise _fail(f"{param} must be a JSON Schema object.", param)
    problem = _schema_problem(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    if problem is not None:
        raise _fail(f"{param} is not a valid JSON Schema: {problem}", param)


def _clean_text(text: str, param: str, limits: Limits) -> str:
    if len(text) > limits.max_message_chars:
        raise _fail(f"{param} is longer than {limits.max_message_chars} characters.", param, "string_above_max_length")
    if _CONTROL.search(text) is None:
        return text
    if limits.control_chars == "refuse":
        raise _fail(f"{param} contains control characters (such as NUL).", param, "invalid_characters")
    return _CONTROL.sub("", text)


def _check_messages(body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    messages = body.get("messages")
    if body.get("messages") is None and "messages" not in body:
        raise _fail("'messages' is a required property.", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _fail("'messages' must be a non-empty array.", "messages")
    if len(messages) > limits.max_messages:
        raise _fail(f"'messages' has more than {limits.max_messages} entries.", "messages", "array_above_max_length")
    calls: dict[str, Any] = {}
    images = 0
    cleaned: list[Any] | None = None
    for i, message in enumerate(messages):
        items = message_items(message, i, "~", calls)
        for kind, fields in [*items, *(items[0][1]["content"] if items and "content" in items[0][1] else ())]:
            if kind == "image_data":
                images += 1
                data = fields["data"]
                if len(data) * 3 // 4 > limits.max_image_bytes:
                    raise _fail(f"messages[{i}]: an image is larger than {limits.max_image_bytes} bytes.",
                                f"messages[{i}].content", "image_too_large")
                if len(data) % 4 or _BASE64.match(data) is None:
                    raise _fail(f"messages[{i}]: an image data URI is not valid base64.", f"messages[{i}].content",
                                "invalid_image")
            elif kind == "image_url":
                images += 1
        if images > limits.max_images:
            raise _fail(f"The request has more than {limits.max_images} images.", "messages", "too_many_images")
        content = message.get("content")
        if isinstance(content, str):
            clean = _clean_text(content, f"messages[{i}].content", limits)
            if clean is not content:
                cleaned = cleaned or list(messages)
                cleaned[i] = {**message, "content": clean}
        elif isinstance(content, list):
            parts = None
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    clean = _clean_text(part["text"], f"messages[{i}].content[{j}].text", limits)
                    if clean is not part["text"]:
                        parts = parts or list(content)
                        parts[j] = {**part, "text": clean}
            if parts is not None:
                cleaned = cleaned or list(messages)
                cleaned[i] = {**message, "content": parts}
    return {**body, "messages": cleaned} if cleaned is not None else body


def _check_tools(body: dict[str, Any], limits: Limits) -> None:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        _check_tool_list(tools, names, limits)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if wanted not in names:
            raise _fail(f"tool_choice names the function {wanted!r}, which is not in 'tools'.", "tool_choice")
    elif choice is not None and choice not in ("auto", "none", "required"):
        raise _fail("tool_choice must be 'auto', 'none', 'required' or a named function.", "tool_choice")


def _check_tool_list(tools: Any, names: set[str], limits: Limits) -> None:
    if not isinstance(tools, list):
        raise _fail("'tools' must be an array.", "tools")
    if len(tools) > limits.max_tools:
        raise _fail(f"'tools' has more than {limits.max_tools} entries.", "tools", "array_above_max_length")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type", "function"), str):
            raise _fail(f"tools[{i}] must be a function tool.", f"tools[{i}].type")
        if tool.get("type", "function") != "function":
            continue  # a server tool: a deployment that cannot run it refuses it (request.params)
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _fail(f"tools[{i}].function is required.", f"tools[{i}].function")
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _fail(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'.",
                        f"tools[{i}].function.name")
        if name in names:
            raise _fail(f"tools[{i}].function.name '{name}' is defined twice.", f"tools[{i}].function.name")
        names.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise _fail(f"tools[{i}].function.description must be a string.", f"tools[{i}].function.description")
        if fn.get("parameters") is not None:
            _depth(fn["parameters"], limits.max_depth, f"tools[{i}].function.parameters")
            _check_schema(fn["parameters"], f"tools[{i}].function.parameters")


def _check_scalars(body: dict[str, Any], limits: Limits) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("'model' must be a non-empty string.", "model", "missing_required_parameter")
    # Walk the body's keys (a handful) rather than every known parameter (a dozen lookups).
    for name, value in body.items():
        bounds = _NUMBERS.get(name)
        if bounds is not None:
            lo, hi = bounds
            if value is not None and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi
            ):
                raise _fail(f"'{name}' must be a number from {lo:g} to {hi:g}.", name)
        elif name in _POSITIVE_INTS and value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "top_logprobs" else 1)
        ):
            raise _fail(f"'{name}' must be a positive integer.", name)
    if isinstance(body.get("n"), int) and body["n"] > limits.max_n:
        raise _fail(f"'n' must be at most {limits.max_n}.", "n")
    for name in ("stream", "parallel_tool_calls", "logprobs"):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise _fail(f"'{name}' must be a boolean.", name)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _fail("'stream_options' must be an object.", "stream_options")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 16:
            raise _fail("'stop' must be a string or a list of at most 16 strings.", "stop")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in ("none", "minimal", "low", "medium", "high"):
        raise _fail("'reasoning_effort' must be none, minimal, low, medium or high.", "reasoning_effort")
    if body.get("thinking") is not None:
        _check_thinking(body["thinking"])
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise _fail("response_format.type must be text, json_object or json_schema.", "response_format.type")
        if fmt["type"] == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise _fail("response_format.json_schema needs a 'name'.", "response_format.json_schema.name")
            if spec.get("schema") is not None:
                _depth(spec["schema"], limits.max_depth, "response_format.json_schema.schema")
                _check_schema(spec["schema"], "response_format.json_schema.schema")


def _check_thinking(thinking: Any) -> None:
    """An explicit thinking budget (`{type: enabled, budget_tokens: N}`, LiteLLM's extension, and
    what the /v1/messages ingress sends); provider specs fit it to their own limits."""
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        raise _fail("thinking.type must be enabled or disabled.", "thinking.type")
    budget = thinking.get("budget_tokens")
    if thinking["type"] == "enabled" and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise _fail("thinking.budget_tokens must be a positive integer.", "thinking.budget_tokens")


def validate_request(body: Any, limits: Limits | None = None) -> dict[str, Any]:
    """Check an OpenAI chat request; returns it, or a sanitized copy (control characters)."""
    limits = limits or Limits()
    if not isinstance(body, dict):
        raise _fail("The request body must be a JSON object.", "body")
    _check_scalars(body, limits)
    _check_tools(body, limits)
    return _check_messages(body, limits)


def check_for_model(body: dict[str, Any], info: ModelInfo, estimated_tokens: int) -> None:
    """Refuse what this model cannot take: a prompt over its window, an output over its limit."""
    if info.context_window and estimated_tokens > info.context_window:
        raise ContextWindowExceeded(
            f"The prompt (about {estimated_tokens} tokens) exceeds the context window of {info.id} "
            f"({info.context_window} tokens).",
            param="messages",
        )
    if info.max_output_tokens:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if isinstance(value, int) and value > info.max_output_tokens:
                raise _fail(f"'{name}' is {value}, above the {info.max_output_tokens} that {info.id} allows.", name)


@lru_cache(maxsize=256)
def _output_validator(schema_json: bytes) -> Draft202012Validator:
    return Draft202012Validator(orjson.loads(schema_json))


def check_structured_output(body: dict[str, Any], completion: dict[str, Any]) -> None:
    """With `response_format: json_schema` and `strict: true`, the reply must be JSON matching the
    schema; otherwise an `invalid_output` error that retry rules can act on."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return
    spec = fmt.get("json_schema") or {}
    if not spec.get("strict") or not isinstance(spec.get("schema"), dict):
        return
    for choice in completion.get("choices") or []:
        content = (choice.get("message") or {}).get("content")
        try:
            value = orjson.loads(content) if isinstance(content, str) else None
        except orjson.JSONDecodeError:
            value = None
        if value is None:
            raise InvalidOutput("The reply is not the JSON that response_format asked for.")
        error = next(_output_validator(orjson.dumps(spec["schema"], option=orjson.OPT_SORT_KEYS)).iter_errors(value), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise InvalidOutput(f"The reply does not match the response_format schema at {where}: {error.message}")
