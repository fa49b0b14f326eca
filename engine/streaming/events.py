"""The stream event table: upstream frames -> neutral deltas, driven by the spec.

A frame is dispatched by its key (the SSE `event:` name, a pointer into the JSON, or nothing) to a
list of actions:

    text / reasoning   emit a content / reasoning delta (empty strings are skipped)
    tool_start         open a tool call under a key; the engine assigns the OpenAI index and, when
                       the upstream gives none, an id (with `carry` fields packed into it)
    tool_args          an argument fragment for the call opened under `key` (default: the last one)
    usage              shallow-merge an object into the captured raw usage (counts are cumulative)
    finish             remember the raw finish reason (last wins)
    meta               remember the response id and model
    set                remember values as @state/NAME (reasoning text is kept as @state/reasoning)
    switch / each      nested dispatch by a value, or per item of a list
    raise              a mid-stream upstream error
    ignore / done      nothing / stop reading

A stream that ends cleanly is complete only as `ends_with` says: after its done frame or action
(`done`), once a finish reason was captured (`finish`), or always (`eof`); anything else was cut
short (the gateway's `incomplete_stream`).

The engine keeps the state (key -> tool index, ids, usage, finish); the spec only says where things are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..mapping import compile_classifier, compile_condition, compile_source, encode_carry
from ..pointer import MISSING, compile_pointer, get
from .deltas import Delta, StreamFailure, StreamState, delta_chars
from .framing import make_framer
from .passthrough import Passthrough

# Delta, StreamFailure, StreamState and delta_chars live in deltas.py (passthrough.py needs them
# too) and are still importable from here.
__all__ = ["Delta", "EventReader", "StreamFailure", "StreamSpec", "StreamState", "compile_stream", "delta_chars"]

Action = Callable[[Any, StreamState, list[Delta]], None]


class _Done(Exception):
    pass


class StreamSpec:
    """A compiled `stream:` section. `read(framer, chunk, state)` interprets one upstream read."""

    def __init__(
        self, framing: str, key: str, done_data: str | None, handlers: dict[Any, list[Action]],
        passthrough: tuple[bytes, ...] | None = None, ends_with: str = "done",
    ) -> None:
        self.framing = framing
        #: What a complete stream ends with (`stream.ends_with`): `done`, `finish` or `eof`.
        self.ends_with = ends_with
        #: `passthrough.inspect` as bytes when frames are forwarded as they come (see passthrough.py).
        self.passthrough = passthrough
        self.key = key
        self._key_tokens = compile_pointer(key) if key.startswith("/") else None
        self.done_data = done_data
        self.handlers = handlers
        self.default = handlers.get("_default")

    def new_framer(self) -> Any:
        return make_framer(self.framing)

    def reader(self, state: StreamState, *, special_tokens: tuple[str, ...] = ()) -> Any:
        """What reads one stream: `feed(chunk)` and `close()` return lists of deltas to write as
        new chunks, or (`passthrough`) bytes to forward. Text with special tokens to filter is
        always interpreted."""
        if self.passthrough is not None and self.framing == "sse" and not special_tokens:
            return Passthrough(self, state, self.passthrough)
        return EventReader(self, state)

    def complete(self, state: StreamState) -> bool:
        """Whether a stream that ended cleanly here ended as the spec says a whole one does."""
        if self.ends_with == "done":
            return state.done
        if self.ends_with == "finish_and_done":
            return state.done and state.raw_finish not in (None, "")
        if self.ends_with == "finish":
            return state.done or state.raw_finish not in (None, "")
        return True

    def handle(
        self, event: str | None, data: str, state: StreamState, shape: Callable[[Any], bool] | None = None
    ) -> list[Delta]:
        """Interpret one frame; returns the deltas it produced. `shape`, when given, must accept
        the frame's JSON after its actions ran (an error frame raises before it is looked at)."""
        if self.done_data is not None and data.strip() == self.done_data:
            state.done = True
            return []
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StreamFailure("response_parsing", f"upstream sent a frame that is not JSON: {data[:80]!r}") from None
        if self.key == "event":
            key: Any = event
        elif self._key_tokens is not None:
            key = get(obj, self._key_tokens)
        else:
            key = None
        if isinstance(key, (list, dict)):  # a key must be a name: this frame is not the spec's shape
            raise StreamFailure("response_parsing", f"upstream sent a malformed stream frame: {data[:80]!r}")
        actions = self.handlers.get(key, self.default) if key is not None else self.default
        if actions is None:
            raise StreamFailure("response_parsing", f"upstream sent an unknown stream event {key!r}")
        out: list[Delta] = []
        try:
            _run(actions, obj, state, out)
        except _Done:
            state.done = True
        if shape is not None and not state.done and not shape(obj):
            raise StreamFailure("response_parsing", f"upstream sent a malformed stream frame: {data[:80]!r}")
        return out

    def read(self, framer: Any, chunk: bytes, state: StreamState) -> list[Delta]:
        """The deltas of every frame in one upstream read (`b""` with `end=True`: what the framer
        still holds). Stops at a `done` frame; a failure carries the deltas before it."""
        return self._frames(framer.feed(chunk), state)

    def close(self, framer: Any, state: StreamState) -> list[Delta]:
        return self._frames(framer.close(), state)

    def _frames(self, frames: Any, state: StreamState) -> list[Delta]:
        batch: list[Delta] = []
        try:
            for event, data in frames:
                state.frames += 1
                batch.extend(self.handle(event, data, state))
                if state.done:
                    break
        except StreamFailure as failure:
            failure.partial = batch
            raise
        return batch


class EventReader:
    """The interpreted path: every frame through the event table, into deltas.

    `output_chars` counts what the deltas generated (as Passthrough does for the frames it
    forwards): usage is estimated from it when the upstream reports none."""

    def __init__(self, stream: StreamSpec, state: StreamState) -> None:
        self.stream = stream
        self.state = state
        self.framer = stream.new_framer()
        self.output_chars = 0

    def feed(self, chunk: bytes) -> list[Delta]:
        return self._counted(lambda: self.stream.read(self.framer, chunk, self.state))

    def close(self) -> list[Delta]:
        return self._counted(lambda: self.stream.close(self.framer, self.state))

    def _counted(self, read: Callable[[], list[Delta]]) -> list[Delta]:
        try:
            deltas = read()
        except StreamFailure as failure:
            self.output_chars += delta_chars(failure.partial)  # these still reach the client
            raise
        self.output_chars += delta_chars(deltas)
        return deltas


def _run(actions: list[Action], obj: Any, state: StreamState, out: list[Delta]) -> None:
    for action in actions:
        action(obj, state, out)


def _ctx(state: StreamState) -> dict[str, Any]:
    return {"state": state.vars}


def _compile_actions(actions: list[Any]) -> list[Action]:
    return [_compile_action(a) for a in actions]


def _compile_action(action: Any) -> Action:
    if action == "ignore":
        return lambda obj, state, out: None
    if action == "done":

        def done(obj: Any, state: StreamState, out: list[Delta]) -> None:
            raise _Done

        return done
    if not isinstance(action, dict) or len(action) != 1:
        raise ValueError(f"a stream action is 'ignore', 'done' or a one-key object, not {action!r}")
    (name, arg), = action.items()
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown stream action {name!r}")
    return builder(arg)


def _text_action(kind: str) -> Callable[[Any], Action]:
    def build(source: str) -> Action:
        getter = compile_source(source)

        def emit(obj: Any, state: StreamState, out: list[Delta]) -> None:
            value = getter(obj, _ctx(state))
            if isinstance(value, str) and value:
                out.append((kind, value))
                if kind == "reasoning":
                    state.vars["reasoning"] = state.vars.get("reasoning", "") + value

        return emit

    return build


def _tool_start(arg: dict[str, Any]) -> Action:
    key_of = compile_source(arg["key"]) if "key" in arg else None
    id_of = compile_source(arg["id"]) if "id" in arg else None
    name_of = compile_source(arg["name"])
    args_of = compile_source(arg["args"]) if "args" in arg else None
    when = compile_condition(arg["when"]) if "when" in arg else None
    carry = {n: compile_source(s) for n, s in arg.get("carry", {}).items()}
    consumed = [s.partition("/")[2] for s in arg.get("carry", {}).values() if s.startswith("@state/")]
    carry_sep: str = arg.get("carry_sep", "~")
    content_tool: str | None = arg.get("content_tool")

    def start(obj: Any, state: StreamState, out: list[Delta]) -> None:
        ctx = _ctx(state)
        if when is not None and not when(obj, ctx):
            return
        name = name_of(obj, ctx)
        if content_tool is not None and name == content_tool:
            # Structured output by forced tool: this call's arguments stream as content.
            state.content_keys.add(key_of(obj, ctx) if key_of else None)
            args = args_of(obj, ctx) if args_of else MISSING
            if args is not MISSING:
                out.append(("text", orjson.dumps(args).decode()))
            return
        index = state.next_tool_index
        state.next_tool_index += 1
        key = key_of(obj, ctx) if key_of else index
        state.tool_index[key] = index
        state.last_tool_key = key
        call_id = id_of(obj, ctx) if id_of else MISSING
        if not isinstance(call_id, str) or not call_id:
            call_id = state.new_call_id("call_")
        packed = {n: v for n, v in ((n, g(obj, ctx)) for n, g in carry.items()) if v is not MISSING}
        for var in consumed:  # not `name`: that is the tool's name, sent below
            state.vars.pop(var, None)
        args = args_of(obj, ctx) if args_of else MISSING
        arguments = orjson.dumps(args).decode() if args is not MISSING else ""
        out.append(("tool_start", index, encode_carry(call_id, packed, carry_sep), name if isinstance(name, str) else ""))
        if arguments:
            out.append(("tool_args", index, arguments))

    return start


def _tool_args(arg: dict[str, Any]) -> Action:
    key_of = compile_source(arg["key"]) if "key" in arg else None
    fragment_of = compile_source(arg["from"])

    def args(obj: Any, state: StreamState, out: list[Delta]) -> None:
        ctx = _ctx(state)
        fragment = fragment_of(obj, ctx)
        if not isinstance(fragment, str) or not fragment:
            return
        key = key_of(obj, ctx) if key_of else state.last_tool_key
        if key in state.content_keys:
            out.append(("text", fragment))
            return
        index = state.tool_index.get(key)
        if index is None:
            raise StreamFailure("response_parsing", f"tool-call arguments for an unknown call {key!r}")
        out.append(("tool_args", index, fragment))

    return args


def _usage(source: str) -> Action:
    getter = compile_source(source)

    def usage(obj: Any, state: StreamState, out: list[Delta]) -> None:
        value = getter(obj, _ctx(state))
        if isinstance(value, dict):
            state.raw_usage.update(value)

    return usage


def _finish(source: str) -> Action:
    getter = compile_source(source)

    def finish(obj: Any, state: StreamState, out: list[Delta]) -> None:
        value = getter(obj, _ctx(state))
        if value is not MISSING:
            state.raw_finish = value

    return finish


def _meta(arg: dict[str, str]) -> Action:
    id_of = compile_source(arg["id"]) if "id" in arg else None
    model_of = compile_source(arg["model"]) if "model" in arg else None

    def meta(obj: Any, state: StreamState, out: list[Delta]) -> None:
        ctx = _ctx(state)
        if id_of and not state.id:
            value = id_of(obj, ctx)
            if isinstance(value, str) and value:
                state.id = value
        if model_of and not state.model:
            value = model_of(obj, ctx)
            if isinstance(value, str) and value:
                state.model = value

    return meta


def _set(arg: dict[str, str]) -> Action:
    getters = {name: compile_source(s) for name, s in arg.items()}

    def assign(obj: Any, state: StreamState, out: list[Delta]) -> None:
        ctx = _ctx(state)
        for name, getter in getters.items():
            value = getter(obj, ctx)
            if value is not MISSING:
                state.vars[name] = value

    return assign


def _switch(arg: dict[str, Any]) -> Action:
    by = compile_pointer(arg["by"])
    cases = {k: _compile_actions(v) for k, v in arg["cases"].items()}
    default = cases.get("_default")

    def switch(obj: Any, state: StreamState, out: list[Delta]) -> None:
        value = get(obj, by)
        actions = cases.get(value, default) if isinstance(value, (str, int, bool)) else default
        if actions is not None:
            _run(actions, obj, state, out)

    return switch


def _each(arg: dict[str, Any]) -> Action:
    items_of = compile_source(arg["in"])
    classify = compile_classifier(arg["classify"]) if "classify" in arg else None
    cases = {k: _compile_actions(v) for k, v in arg["cases"].items()}
    default = cases.get("_default")

    def each(obj: Any, state: StreamState, out: list[Delta]) -> None:
        items = items_of(obj, _ctx(state))
        if not isinstance(items, list):
            return
        for item in items:
            if classify is None:
                actions = default
            else:
                kind = classify(item, _ctx(state))
                if kind is None:  # classified `_ignore`
                    continue
                actions = cases.get(kind, default)
            if actions is not None:
                _run(actions, item, state, out)

    return each


def _raise(arg: dict[str, Any]) -> Action:
    kind = arg.get("kind")
    message_of = compile_source(arg["message"]) if "message" in arg else None
    when = compile_condition(arg["when"]) if "when" in arg else None

    def fail(obj: Any, state: StreamState, out: list[Delta]) -> None:
        if when is not None and not when(obj, _ctx(state)):
            return
        message = message_of(obj, _ctx(state)) if message_of else MISSING
        raise StreamFailure(kind, message if isinstance(message, str) else "upstream error in stream", obj)

    return fail


_BUILDERS: dict[str, Callable[[Any], Action]] = {
    "text": _text_action("text"),
    "reasoning": _text_action("reasoning"),
    "tool_start": _tool_start,
    "tool_args": _tool_args,
    "usage": _usage,
    "finish": _finish,
    "meta": _meta,
    "set": _set,
    "switch": _switch,
    "each": _each,
    "raise": _raise,
}


def compile_stream(spec: dict[str, Any]) -> StreamSpec:
    events = spec.get("events", {})
    handlers = {key: _compile_actions(actions) for key, actions in events.items()}
    passthrough = spec.get("passthrough")
    inspect = tuple(m.encode() for m in passthrough.get("inspect", ())) if isinstance(passthrough, dict) else None
    done_data = spec.get("done_data")
    return StreamSpec(
        spec.get("framing", "sse"), spec.get("key", "none"), done_data, handlers, inspect,
        _ends_with(spec.get("ends_with"), done_data is not None or _declares(events, "done"), _declares(events, "finish")),
    )


def _ends_with(given: str | None, has_done: bool, has_finish: bool) -> str:
    """`stream.ends_with`, checked against what the table can see. By default `done` when the
    spec declares a done frame or action, else `finish` when it captures a finish reason, else
    `eof` (a table that can see neither cannot tell a whole stream from a cut one)."""
    ends_with = given or ("done" if has_done else "finish" if has_finish else "eof")
    if ends_with in ("done", "finish_and_done") and not has_done:
        raise ValueError(f"ends_with: {ends_with} needs `done_data` or a `done` action")
    if ends_with in ("finish", "finish_and_done") and not has_finish:
        raise ValueError(f"ends_with: {ends_with} needs a `finish` action (or say `ends_with: eof`)")
    if ends_with not in ("done", "finish", "finish_and_done", "eof"):
        raise ValueError(f"ends_with is done, finish, finish_and_done or eof, not {ends_with!r}")
    return ends_with


def _declares(events: dict[Any, Any], name: str) -> bool:
    """Whether an event table holds the action `name` anywhere, nested cases included."""
    return any(_in_actions(actions, name) for actions in events.values())


def _in_actions(actions: Any, name: str) -> bool:
    for action in actions if isinstance(actions, list) else ():
        if action == name or (isinstance(action, dict) and name in action):
            return True
        for arg in action.values() if isinstance(action, dict) else ():
            cases = arg.get("cases") if isinstance(arg, dict) else None
            if isinstance(cases, dict) and any(_in_actions(a, name) for a in cases.values()):
                return True
    return False
