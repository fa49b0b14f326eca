"""Client-facing formats <-> the canonical chat shape: `turns_to_messages` and `message_to_parts`.

These are the inverses of `messages_to_turns` / `parts_to_message`, used by ingress specs
(ingress.d/): a client sends turns of typed content parts, the engine serves OpenAI chat messages.

`turns_to_messages` classifies every part of a client turn and renders it by a template into one of:
  content     the canonical message's `content` list (text, image parts)
  tool_calls  the canonical assistant message's `tool_calls` list
  join        a string key of the message, joined (e.g. `reasoning_content`)
  message     a message of its own, placed before the rest of the turn (e.g. `tool` results)
A part may hand provider data (a signature) to the next tool call of its turn: it is packed into
that call's id with the same `<id><sep><base64url JSON>` carry `parts_to_message` writes, and the
ids that refer to the call later are rewritten to match.

`message_to_parts` renders a canonical assistant message as a list of client parts: reasoning, text,
then one part per tool call (arguments decoded), each by a template; carry keys named in
`carry.to_reasoning` move from a tool call's id to the reasoning part before it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest
from ..pointer import MISSING, compile_pointer, get
from .message import Classifier, compile_classifier, encode_carry
from .templates import compile_condition, compile_source, compile_template
from .turns import split_call_id

__all__ = ["compile_message_to_parts", "compile_turns_to_messages", "split_carry"]

_MODES = ("content", "tool_calls", "join", "message", "scalar")


def split_carry(call_id: str, sep: str | None, keys: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """Take the carry keys `keys` out of a carried id: (id with the rest re-packed, taken keys)."""
    plain, carry = split_call_id(call_id, sep)
    if not carry or sep is None:
        return call_id, {}
    taken = {k: v for k, v in carry.items() if k in keys}
    rest = {k: v for k, v in carry.items() if k not in keys}
    return encode_carry(plain, rest, sep), taken


class _Part:
    __slots__ = ("into", "mode", "render", "when")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.mode: str = spec.get("mode", "content")
        if self.mode not in _MODES:
            raise ValueError(f"unknown part mode {self.mode!r}")
        self.into: str = spec.get("into", {"content": "content", "tool_calls": "tool_calls"}.get(self.mode, "content"))
        self.render = compile_template(spec["template"])
        self.when = compile_condition(spec["when"]) if "when" in spec else None


class _Carry:
    """`carry:` of turns_to_messages: what a `from` part holds (a thinking block's signature) rides in the
    id of the next `to` part of its turn (a tool call), and the `refs` naming that call later follow."""

    __slots__ = ("from_kind", "id", "refs", "render", "sep", "to_kind")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.from_kind: str = spec["from"]
        self.to_kind: str = spec["to"]
        self.render = compile_template(spec["template"])
        self.id = compile_pointer(spec.get("id", "/id"))
        self.sep: str = spec.get("sep", "~")
        self.refs = {kind: compile_pointer(p) for kind, p in spec.get("refs", {}).items()}

    def take(self, part: Any, ctx: dict[str, Any]) -> dict[str, Any] | None:
        """What `part` (of the `from` kind) hands to the next tool call, if anything."""
        carried = self.render(part, ctx)
        return carried if isinstance(carried, dict) else None

    def attach(self, call: dict[str, Any], pending: dict[str, Any], renamed: dict[str, str]) -> bool:
        """Pack `pending` into the rendered `call`'s id and note the rename; False when it has no id."""
        old = get(call, self.id)
        if not isinstance(old, str):
            return False
        plain, had = split_call_id(old, self.sep)
        new = encode_carry(plain, {**had, **pending}, self.sep)
        renamed[old] = new
        _put_at(call, self.id, new)
        return True

    def follow(self, kind: str, value: dict[str, Any], renamed: dict[str, str]) -> None:
        """Point a rendered reference (a tool result's call id) at its call's new id."""
        tokens = self.refs[kind]
        ref = get(value, tokens)
        if isinstance(ref, str) and ref in renamed:
            _put_at(value, tokens, renamed[ref])


#: Renders a turn's list of content parts: (parts, where, role, message, before, renamed, ctx) -> None.
ContentRenderer = Callable[
    [list[Any], str, str, dict[str, Any], list[dict[str, Any]], dict[str, str], dict[str, Any]], None
]


def _compile_content(rule: dict[str, Any], classify: Classifier) -> ContentRenderer:
    """The per-part loop of turns_to_messages: classify each part and add what its templates render."""
    parts: dict[str, list[_Part] | None] = {}
    for kind, spec in rule.get("blocks", {}).items():
        parts[kind] = None if spec == "_drop" else [_Part(s) for s in (spec if isinstance(spec, list) else [spec])]
    reject_missing = rule.get("on_missing_part", "reject") == "reject"
    join_sep: str = rule.get("join_sep", "")
    carry = _Carry(rule["carry"]) if rule.get("carry") else None
    carry_from, carry_to = (carry.from_kind, carry.to_kind) if carry is not None else (None, None)
    carry_refs = carry.refs if carry is not None else {}

    def render_content(
        content: list[Any], where: str, role: str, message: dict[str, Any], before: list[dict[str, Any]],
        renamed: dict[str, str], ctx: dict[str, Any],
    ) -> None:
        """Add the parts of one turn to `message` (and to `before`: the messages placed ahead of it)."""
        pending: dict[str, Any] | None = None
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            if not isinstance(part, dict):
                raise InvalidRequest(f"{pwhere} must be an object", param=pwhere)
            kind = classify(part, ctx)
            if kind is None:  # the classifier says `_ignore`: dropped, as documented
                continue
            specs = parts.get(kind, MISSING)
            if specs is None:
                continue
            if specs is MISSING:  # a kind the rule has no blocks for
                if reject_missing:
                    raise InvalidRequest(
                        f"{pwhere}: content of type {part.get('type')!r} is not supported here", param=pwhere
                    )
                continue
            part_ctx = {**ctx, "role": role, "index": j}
            if carry is not None and kind == carry_from:
                pending = carry.take(part, part_ctx)
            for spec in specs:
                if spec.when is not None and not spec.when(part, part_ctx):
                    continue
                value = spec.render(part, part_ctx)
                if value is MISSING:
                    continue
                if carry is not None and isinstance(value, dict):
                    if kind == carry_to and pending:
                        if carry.attach(value, pending, renamed):
                            pending = None
                    elif kind in carry_refs:
                        carry.follow(kind, value, renamed)
                _add(message, before, spec, value, join_sep)

    return render_content


def _compile_system_message(rule: dict[str, Any]) -> Callable[[Any, dict[str, Any]], dict[str, Any] | None] | None:
    """The message made of the request's `system_from` (None when blank); None when the rule has none."""
    if "system_from" not in rule:
        return None
    system = compile_source(rule["system_from"])
    render = compile_template(rule.get("system_template", {"role": "system", "content": "@value"}))

    def system_message(src: Any, ctx: dict[str, Any]) -> dict[str, Any] | None:
        value = system(src, ctx)
        if value is MISSING or value == "" or value == []:
            return None
        if not isinstance(value, (str, list)):
            raise InvalidRequest("system must be a string or a list of text blocks", param="system")
        result: dict[str, Any] = render(value, ctx)
        return result

    return system_message


def compile_turns_to_messages(rule: dict[str, Any]) -> Callable[[Any, Any, dict[str, Any]], Any]:
    """The `turns_to_messages` op: a client's turns of typed parts -> canonical chat messages."""
    roles: dict[str, str] = rule["roles"]
    role_of = compile_pointer(rule.get("role_from", "/role"))
    content_of = compile_pointer(rule.get("content_from", "/content"))
    classify = compile_classifier(rule["classify"])
    render_content = _compile_content(rule, classify)
    system_message = _compile_system_message(rule)
    label: str = rule.get("param", "messages")
    # A string instead of a turn list: one turn of this role. An item without a role (e.g. a tool
    # call listed on its own): a one-part turn, its role by kind; same-role turns then merge.
    string_role: str | None = rule.get("string_as")
    loose_roles: dict[str, str] = rule.get("loose_items", {})
    merge_same_role: bool = bool(rule.get("merge_same_role", False))

    def to_messages(turns: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if string_role is not None and isinstance(turns, str) and turns:
            turns = [{"role": string_role, "content": turns}]
        if not isinstance(turns, list) or not turns:
            raise InvalidRequest(f"{label} must be a non-empty list", param=label)
        out: list[dict[str, Any]] = []
        if system_message is not None:
            system = system_message(src, ctx)
            if system is not None:
                out.append(system)
        renamed: dict[str, str] = {}  # client id -> carried id
        for i, turn in enumerate(turns):
            where = f"{label}[{i}]"
            if not isinstance(turn, dict):
                raise InvalidRequest(f"{where} must be an object", param=where)
            client_role = get(turn, role_of)
            if client_role is MISSING and loose_roles:
                kind = classify(turn, ctx)
                if kind is None:
                    continue  # an item the spec ignores (e.g. a reasoning item)
                if kind in loose_roles:
                    client_role, turn = loose_roles[kind], {"role": loose_roles[kind], "content": [turn]}  # noqa: PLW2901 - a loose item becomes a turn of its own
            role = roles.get(client_role) if isinstance(client_role, str) else None
            if role is None:
                raise InvalidRequest(
                    f"{where}.role must be one of {', '.join(roles)}; got {client_role!r}", param=f"{where}.role"
                )
            content = get(turn, content_of)
            message: dict[str, Any] = {"role": role}
            before: list[dict[str, Any]] = []
            if isinstance(content, str):
                message["content"] = content
            elif isinstance(content, list):
                render_content(content, where, role, message, before, renamed, ctx)
            elif content is not MISSING and content is not None:
                raise InvalidRequest(f"{where}.content must be a string or a list of content blocks", param=f"{where}.content")
            else:
                raise InvalidRequest(f"{where}.content is required", param=f"{where}.content")
            out.extend(before)
            if len(message) > 1:
                if merge_same_role and not before and out and out[-1].get("role") == role and _merge(out[-1], message):
                    continue
                out.append(message)
        return out

    return to_messages


def _merge(previous: dict[str, Any], message: dict[str, Any]) -> bool:
    """Merge `message` into the previous one of the same role; False when they cannot merge."""
    for key in ("content",):
        old, new = previous.get(key), message.get(key)
        if isinstance(old, str):
            old = [{"type": "text", "text": old}]
        if isinstance(new, str):
            new = [{"type": "text", "text": new}]
        if new is not None:
            previous[key] = (old or []) + new
    if message.get("tool_calls"):
        previous.setdefault("tool_calls", []).extend(message["tool_calls"])
    for key, value in message.items():
        if key not in ("content", "tool_calls", "role") and key not in previous:
            previous[key] = value
    return True


def _put_at(doc: dict[str, Any], tokens: tuple[str | int, ...], value: Any) -> None:
    target: Any = doc
    for token in tokens[:-1]:
        target = target[token]
    target[tokens[-1]] = value


def _add(message: dict[str, Any], before: list[dict[str, Any]], spec: _Part, value: Any, join_sep: str) -> None:
    if spec.mode == "message":
        before.append(value)
    elif spec.mode == "join":
        old = message.get(spec.into)
        message[spec.into] = value if old is None else f"{old}{join_sep}{value}"
    elif spec.mode == "scalar":
        message[spec.into] = value
    else:
        message.setdefault(spec.into, []).append(value)


def compile_message_to_parts(rule: dict[str, Any]) -> Callable[[Any, Any, dict[str, Any]], Any]:
    specs: dict[str, list[_Part]] = {}
    for kind, spec in rule.get("blocks", {}).items():
        specs[kind] = [_Part({**s, "mode": "content"}) for s in (spec if isinstance(spec, list) else [spec])]
    carry = rule.get("carry", {})
    sep: str | None = carry.get("sep")
    to_reasoning = frozenset(carry.get("to_reasoning", ()))
    defaults: dict[str, Any] = carry.get("defaults", {})

    def render(kind: str, fields: dict[str, Any], ctx: dict[str, Any], out: list[Any]) -> None:
        part_ctx = {**ctx, **fields}
        for spec in specs.get(kind, ()):
            if spec.when is not None and not spec.when(fields, part_ctx):
                continue
            value = spec.render(fields, part_ctx)
            if value is not MISSING:
                out.append(value)

    def to_parts(message: Any, src: Any, ctx: dict[str, Any]) -> Any:
        if not isinstance(message, dict):
            return []
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            calls = []
        rendered_calls = []
        moved: dict[str, Any] = {}
        for call in calls:
            fn = call.get("function") or {}
            call_id, taken = split_carry(str(call.get("id") or ""), sep, to_reasoning)
            if taken and not moved:
                moved = taken
            arguments = fn.get("arguments")
            if not isinstance(arguments, str):
                arguments = "{}"
            try:
                args = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                args = {"_raw": arguments}
            rendered_calls.append({"id": call_id, "name": fn.get("name"), "arguments": arguments, "args": args,
                                   "carry": taken})
        out: list[Any] = []
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            render("reasoning", {"text": reasoning, "carry": {**defaults, **moved}}, ctx, out)
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str) and content:
            render("text", {"text": content}, ctx, out)
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            render("refusal", {"text": refusal}, ctx, out)
        for fields in rendered_calls:
            render("tool_call", fields, ctx, out)
        return out

    return to_parts
