"""OpenAI chat messages -> a provider's turns (`messages_to_turns`) and system text (`collect_text`).

The walk turns every message into (kind, fields) items:
  text         @text
  image_data   @media_type @format @data @url   (a data: URI, split; base64 is never decoded)
  image_url    @url                             (an http(s) URL)
  tool_call    @id @name @arguments (string) @args (object) @carry/...
  tool_result  @id @text @call/name             (@call is the earlier assistant call with that id)
               @content                         (with `content_parts`: its parts, rendered; below)
  reasoning    @text                            (assistant reasoning_content)
  file         @media_type @data @filename      (a file part with a base64 data URI: a PDF, ...)
  file_ref     @part                            (a file part naming an uploaded file_id)
Each kind's part spec renders a template `into` a turn key (`mode`: list, join, scalar, or "." to
merge into the turn). Same-role turns merge after the role table, which is what puts tool results
inside the next user turn for providers that require alternation.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest
from ..pointer import MISSING
from .templates import compile_condition, compile_template

__all__ = ["compile_collect_text", "compile_messages_to_turns", "decode_carry", "split_call_id"]

_ROLES = ("system", "developer", "user", "assistant", "tool")
_TEXT_ROLES = ("user", "system", "developer")  # roles whose items are only their content (a tuple: roles may be unhashable)
_DATA_URI = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(;[\w.+-]+=[^;,]*)*);base64,(?P<data>.*)$", re.DOTALL)
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
DROP = "_drop"


def split_call_id(call_id: str, sep: str | None) -> tuple[str, dict[str, Any]]:
    """'call_x~<b64url json>' -> ('call_x', {...}); an id without a carry -> (id, {})."""
    if not sep or sep not in call_id:
        return call_id, {}
    plain, _, packed = call_id.partition(sep)
    return plain, decode_carry(packed)


def decode_carry(packed: str) -> dict[str, Any]:
    try:
        carry = json.loads(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return carry if isinstance(carry, dict) else {}


def _text_of(content: Any, param: str) -> str:
    """The text of a string or a list of text parts (tool results, system messages)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{param}[{j}] must be a text part", param=f"{param}[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"{param} must be a string or a list of content parts", param=param)


def _image_item(part: dict[str, Any], param: str) -> tuple[str, dict[str, Any]]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequest(f"{param}.image_url.url must be a string", param=f"{param}.image_url.url")
    match = _DATA_URI.match(url)
    if match:
        media_type = match["type"].lower()
        data = match["data"]
        if not data:
            raise InvalidRequest(f"{param}.image_url.url: empty base64 data", param=f"{param}.image_url.url")
        return "image_data", {
            "media_type": media_type,
            "format": media_type.partition("/")[2],
            "data": data,
            "url": url,
            "detail": image.get("detail", MISSING) if isinstance(image, dict) else MISSING,
        }
    if _HTTP_URL.match(url):
        return "image_url", {"url": url}
    raise InvalidRequest(
        f"{param}.image_url.url must be an http(s) URL or a base64 data URI", param=f"{param}.image_url.url"
    )


def _file_item(part: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A `file` part with its bytes inline (a base64 data URI): `file` with @media_type @data
    @filename; one that only refers to an uploaded file (`file_id`): `file_ref`, which a spec
    without a part for it refuses."""
    file = part.get("file")
    data_uri = file.get("file_data") if isinstance(file, dict) else None
    match = _DATA_URI.match(data_uri) if isinstance(data_uri, str) else None
    if match is None or not match["data"]:
        return "file_ref", {"part": part}
    assert isinstance(file, dict)
    return "file", {"media_type": match["type"].lower(), "data": match["data"], "filename": file.get("filename", MISSING),
                    "part": part}


def _content_items(content: Any, param: str) -> list[tuple[str, dict[str, Any]]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [("text", {"text": content})] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string, a list of content parts or null", param=param)
    items: list[tuple[str, dict[str, Any]]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
            if part["text"]:
                items.append(("text", {"text": part["text"], "part": part}))
        elif kind == "image_url":
            items.append(_image_item(part, where))
        elif kind == "file":
            items.append(_file_item(part))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            items.append(("text", {"text": part["refusal"]}))
        elif isinstance(kind, str):
            items.append((kind, {"part": part}))
        else:
            raise InvalidRequest(f"{where} must be an object with a 'type'", param=where)
    return items


def _tool_call_items(
    calls: Any, param: str, carry_sep: str | None, call_table: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(calls, list):
        raise InvalidRequest(f"{param} must be a list", param=param)
    items = []
    for j, call in enumerate(calls):
        where = f"{param}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest(f"{where}.function.name is required", param=f"{where}.function.name")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise InvalidRequest(f"{where}.id is required", param=f"{where}.id")
        arguments = fn.get("arguments", "")
        if not isinstance(arguments, str):
            raise InvalidRequest(f"{where}.function.arguments must be a JSON string", param=f"{where}.function.arguments")
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise InvalidRequest(
                f"{where}.function.arguments is not valid JSON", param=f"{where}.function.arguments"
            ) from None
        if not isinstance(args, dict):
            raise InvalidRequest(
                f"{where}.function.arguments must encode a JSON object", param=f"{where}.function.arguments"
            )
        call_id, carry = split_call_id(call["id"], carry_sep)
        fields = {"id": call_id, "name": fn["name"], "arguments": arguments, "args": args, "carry": carry}
        call_table[call_id] = fields
        items.append(("tool_call", fields))
    return items


def message_items(
    message: Any, i: int, carry_sep: str | None, call_table: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """Validate one OpenAI message and split it into (kind, fields) items."""
    if not isinstance(message, dict):
        raise InvalidRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
    role = message.get("role")
    content = message.get("content")
    if content.__class__ is str and role in _TEXT_ROLES:  # most messages: nothing more to check
        return [("text", {"text": content})] if content else []
    param = f"messages[{i}]"
    if role not in _ROLES:
        raise InvalidRequest(
            f"{param}.role must be one of {', '.join(_ROLES)}; got {role!r}", param=f"{param}.role"
        )
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest(f"{param}.tool_call_id is required for role 'tool'", param=f"{param}.tool_call_id")
        call_id, _ = split_call_id(call_id, carry_sep)
        call = call_table.get(call_id)
        if call is None:
            raise InvalidRequest(
                f"{param}.tool_call_id '{call_id}' answers no tool call of an earlier assistant message",
                param=f"{param}.tool_call_id",
            )
        if isinstance(content, list) and any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            parts = _content_items(content, f"{param}.content")  # images in a tool result
            text = "".join(fields["text"] for kind, fields in parts if kind == "text")
            return [("tool_result", {"id": call_id, "text": text, "call": call, "content": parts})]
        text = _text_of(content, f"{param}.content")
        return [("tool_result", {"id": call_id, "text": text, "call": call})]
    items: list[tuple[str, dict[str, Any]]] = []
    if role == "assistant":
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            items.append(("reasoning", {"text": reasoning}))
    items.extend(_content_items(content, f"{param}.content"))
    if role == "assistant" and message.get("tool_calls") is not None:
        items.extend(_tool_call_items(message["tool_calls"], f"{param}.tool_calls", carry_sep, call_table))
    elif role != "assistant" and content is None:
        raise InvalidRequest(f"{param}.content is required for role '{role}'", param=f"{param}.content")
    return items


class _PartSpec:
    __slots__ = ("content_parts", "into", "mode", "prepend", "render", "when")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.into: str = spec.get("into", "content")
        self.mode: str = "." if self.into == "." else spec.get("mode", "list")
        self.prepend: bool = bool(spec.get("prepend", False))
        #: (tool_result) A result's own parts are rendered by the op's part templates into `@content`.
        self.content_parts: bool = bool(spec.get("content_parts", False))
        self.render = compile_template(spec["template"])
        self.when = compile_condition(spec["when"]) if "when" in spec else None


def _not_supported(kind: str, where: str, ctx: dict[str, Any]) -> InvalidRequest:
    """Content of a kind the spec has no part for: refused, naming the deployment (or provider)."""
    who = ctx.get("deployment", ctx.get("provider", "this provider"))
    return InvalidRequest(f"{where}: {kind.replace('_', ' ')} content is not supported by {who}", param=f"{where}.content")


def _nested_parts(
    parts: dict[str, list[_PartSpec] | None], items: list[tuple[str, dict[str, Any]]], owner: list[_PartSpec],
    where: str, message: Any, turn_ctx: dict[str, Any],
) -> list[Any]:
    """A tool result's own parts (text, images), each rendered by its kind's first part spec
    whose `when` holds; refused where the result's part spec does not take them (`content_parts`)."""
    who = turn_ctx.get("deployment", turn_ctx.get("provider", "this provider"))
    if not any(spec.content_parts for spec in owner):
        raise InvalidRequest(f"{where}: {who} cannot take images or other non-text parts inside a tool result", param=where)
    rendered = []
    for kind, fields in items:
        ctx = {**turn_ctx, **fields}
        spec = next((s for s in parts.get(kind) or () if s.when is None or s.when(message, ctx)), None)
        if spec is None:
            raise InvalidRequest(f"{where}: {kind.replace('_', ' ')} content inside a tool result is not supported by {who}",
                                 param=where)
        value = spec.render(message, ctx)
        if value is not MISSING:
            rendered.append(value)
    return rendered


def compile_messages_to_turns(rule: dict[str, Any]) -> Callable[[Any, Any, dict[str, Any]], Any]:
    roles: dict[str, str] = rule["roles"]
    turn_template = compile_template(rule.get("turn", {"role": "@role"}))
    role_key: str = rule.get("role_key", "role")
    merge_same_role: bool = rule.get("merge_same_role", False)
    drop_empty: bool = rule.get("drop_empty_turns", False)
    reject_missing = rule.get("on_missing_part", "reject") == "reject"
    join_sep: str = rule.get("join_sep", "\n")
    carry_sep: str | None = rule.get("call_carry_sep")
    parts: dict[str, list[_PartSpec] | None] = {}
    for kind, spec in rule.get("parts", {}).items():
        if spec == DROP:
            parts[kind] = None
        else:
            parts[kind] = [_PartSpec(s) for s in (spec if isinstance(spec, list) else [spec])]
    part_keys = {p.into for specs in parts.values() if specs for p in specs if p.into != "."}

    def add_part(turn: dict[str, Any], spec: _PartSpec, value: Any) -> None:
        if spec.mode == ".":
            if isinstance(value, dict):
                turn.update(value)
        elif spec.mode == "list":
            bucket = turn.setdefault(spec.into, [])
            if spec.prepend:
                bucket.insert(0, value)
            else:
                bucket.append(value)
        elif spec.mode == "join":
            previous = turn.get(spec.into)
            turn[spec.into] = value if previous is None else f"{previous}{join_sep}{value}"
        else:
            turn[spec.into] = value

    def to_turns(messages: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list", param="messages")
        call_table: dict[str, dict[str, Any]] = {}
        turns: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            original = message.get("role") if isinstance(message, dict) else None
            role = roles.get(original, roles.get("_default", DROP))  # type: ignore[arg-type]
            if role == DROP and original != "assistant":
                continue  # (an assistant message is still read: later tool results name its calls)
            items = message_items(message, i, carry_sep, call_table)
            if role == DROP:
                continue
            turn_ctx = {**ctx, "role": role, "message": message}
            turn = turn_template(message, turn_ctx)
            turn = turn if isinstance(turn, dict) else {}
            for kind, fields in items:
                specs = parts.get(kind, MISSING)
                if specs is None:
                    continue
                if specs is MISSING:
                    if reject_missing:
                        raise _not_supported(kind, f"messages[{i}]", ctx)
                    continue
                part_ctx = {**turn_ctx, **fields}
                if "content" in fields:
                    part_ctx["content"] = _nested_parts(parts, fields["content"], specs, f"messages[{i}].content", message, turn_ctx)
                for spec in specs:
                    if spec.when is not None and not spec.when(message, part_ctx):
                        continue
                    value = spec.render(message, part_ctx)
                    if value is not MISSING:
                        add_part(turn, spec, value)
            if drop_empty:
                for key in part_keys:
                    if turn.get(key):
                        break
                else:
                    continue
            if merge_same_role and turns and turns[-1].get(role_key) == turn.get(role_key):
                _merge_into(turns[-1], turn, join_sep)
            else:
                turns.append(turn)
        return turns

    return to_turns


def _merge_into(previous: dict[str, Any], turn: dict[str, Any], join_sep: str) -> None:
    for key, value in turn.items():
        old = previous.get(key)
        if isinstance(old, list) and isinstance(value, list):
            old.extend(value)
        elif isinstance(old, str) and isinstance(value, str) and old != value:
            previous[key] = f"{old}{join_sep}{value}"
        elif old is None:
            previous[key] = value


def compile_collect_text(rule: dict[str, Any]) -> Callable[[Any, Any, dict[str, Any]], Any]:
    """Join the text of messages with the given roles; render it with `template` (`@text`).

    With `keep_parts: {when, template}`, a text part meeting `when` (e.g. one with a prompt-cache
    mark) keeps the parts apart: the result is `template` rendered for every text part, in order.
    """
    wanted = frozenset(rule.get("roles", ("system", "developer")))
    sep: str = rule.get("sep", "\n\n")
    render = compile_template(rule["template"]) if "template" in rule else None
    keep = rule.get("keep_parts")
    keeps = compile_condition(keep["when"]) if keep else None
    render_part = compile_template(keep["template"]) if keep else None

    def collect(messages: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(messages, list):
            return MISSING
        texts = []
        pieces: list[tuple[str, Any]] = []  # (text, part) of every text part, for keep_parts
        kept = False
        for i, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") in wanted:
                content = message.get("content")
                text = _text_of(content, f"messages[{i}].content")
                if text:
                    texts.append(text)
                if keeps is None:
                    continue
                if isinstance(content, list):
                    for part in content:
                        if part["text"]:
                            pieces.append((part["text"], part))
                            kept = kept or keeps(part, {**ctx, "part": part, "text": part["text"]})
                elif text:
                    pieces.append((text, None))
        if kept:
            assert render_part is not None
            return [render_part(src, {**ctx, "text": text, "part": part}) for text, part in pieces]
        if not texts:
            return MISSING
        text = sep.join(texts)
        return text if render is None else render(src, {**ctx, "text": text})

    return collect
