"""Recorded exchanges beside a spec, replayed through the engine with no network.

A recording (docs/recordings.md) holds a client's OpenAI request, what the upstream answered
(a JSON body or the raw text of a stream) and `expect`: the request the engine sends upstream
(method, URL, query and the headers the spec sets, then the body) and the OpenAI response, chunks
or error it produces. `check()` replays one and compares; `write_expect()`
rewrites its `expect` section (for `gaud-engine spec test --update`), leaving the rest of the file
as it was written.

The replay is the gateway's own path minus the network and the gateway's bookkeeping, with every
variable the spec declares (base URLs aside) set to its placeholder `<VAR>`, so a recording shows
which variable went into which header or query parameter without holding a credential:
`build_request`, then `completion_from_reply` / `error_from_reply` for a reply, or the spec's framer
and stream table feeding a `ChunkWriter` (usage chunk always on) for a stream. Tool-call ids the
engine makes up come from a counter (`call_1`, `call_2`, ...). Left out of the comparison, as they
change on every run: `created`, and a `chatcmpl-` id the engine invents (stored as `chatcmpl-1`).
The gateway also adds `usage.cost` (from pricing.d) to a stream's usage chunk; a recording proves
the spec, not the prices, so it has no cost.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import difflib
import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson
import yaml

from ..errors import GatewayError, ResponseParsing
from ..pipeline.tokens import estimate_prompt_tokens
from ..pipeline.translate import (
    build_request,
    closing_finish_reason,
    completion_from_reply,
    error_from_reply,
    normalize_completion,
    stream_usage,
    with_usage,
)
from ..pipeline.upstream import UpstreamRequest, prepared
from ..pipeline.validation import check_structured_output, validate_request
from ..spec.models import Target, resolve_model
from ..spec.sigv4 import sign_request
from ..streaming import ChunkWriter, EventReader, MessageAssembler, StreamFailure, StreamState
from ..streaming.eventstream import Headers, MessageDecoder, encode_message

if TYPE_CHECKING:
    from ..spec.catalog import Catalog

__all__ = [
    "RECORD_SET",
    "Outcome",
    "Recording",
    "RecordingProblem",
    "Selection",
    "call_counter",
    "check",
    "default_model",
    "dump_yaml",
    "load_recordings",
    "normalise",
    "owner_of",
    "placeholder",
    "read_recording",
    "record",
    "recordings_dir",
    "replay",
    "request_head",
    "scrub",
    "select",
    "spec_names",
    "with_placeholders",
    "write_expect",
]

#: The keys of a recording file.
RECORDING_KEYS = frozenset({"description", "model", "unset", "request", "upstream", "expect"})
#: What `expect` may hold, in the order it is written.
EXPECT_KEYS = ("upstream_call", "upstream_request", "response", "chunks", "error")
#: Headers the HTTP client adds, not the spec: a recorded one is ignored unless the spec sets it.
TRANSPORT_HEADERS = frozenset({
    "accept", "accept-encoding", "connection", "content-length", "content-type", "host", "transfer-encoding",
    "user-agent",
})
#: The access token a credential exchange (`api.auth` with an exchange) yields, in a replay.
TOKEN_PLACEHOLDER = "<access_token>"
_INVENTED_ID = re.compile(r"^chatcmpl-[0-9a-f]{32}$")


class RecordingProblem(Exception):
    """A recording that cannot be replayed as written (not a difference in the engine's output)."""


# -- reading and writing YAML ----------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """Safe loading without timestamps: an unquoted 2026-03-14 stays the string it is in JSON."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Flow(dict):  # type: ignore[type-arg]
    """A mapping written on one line (`{...}`): one stream chunk per line reads and diffs well."""


class _Block(dict):  # type: ignore[type-arg]
    """A mapping written one key a line: a request's headers and query read and diff better so."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # list items indented under their key


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # A literal block for multi-line text (quoted instead when a block cannot hold it exactly);
    # text that is only line breaks reads better quoted ("\n\n").
    style = None if "\n" not in value else "|" if value.strip() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_flow(dumper: yaml.SafeDumper, value: _Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", dict(value), flow_style=True)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_Flow, _represent_flow)
_Dumper.add_representer(
    _Block, lambda dumper, value: dumper.represent_mapping("tag:yaml.org,2002:map", dict(value), flow_style=False))


def dump_yaml(data: Any) -> str:
    """YAML as recordings are written: keys in order, multi-line text as literal blocks, one stream
    chunk per line, no line folding."""
    expect = data.get("expect") if isinstance(data, dict) else None
    if isinstance(expect, dict) and isinstance(expect.get("chunks"), list):
        expect = {**expect, "chunks": [_Flow(c) for c in expect["chunks"]]}
    if isinstance(expect, dict) and isinstance(expect.get("upstream_call"), dict):
        call = expect["upstream_call"]
        expect = {**expect, "upstream_call": {k: _Block(v) if isinstance(v, dict) else v for k, v in call.items()}}
    if expect is not None:
        data = {**data, "expect": expect}
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000, default_flow_style=None)


# -- finding recordings ----------------------------------------------------------------------------
@dataclass
class Recording:
    """One exchange file; `data` is None when it could not be read (`problem` says why)."""

    path: Path
    provider: str
    data: dict[str, Any] | None = None
    problem: str | None = None

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.path.stem}"


def recordings_dir(catalog: Catalog, provider: str) -> Path:
    """Where a spec's recordings are: its own `recordings:` key (relative to the spec file), else
    `tests/providers/<name>/recordings/` under the spec tree."""
    spec = catalog.providers.get(provider)
    doc = catalog.files.get(spec.file) if spec is not None else None
    if doc is None:
        doc = next((d for d in catalog.files.values() if d.path.parent.name == "providers.d" and d.path.stem == provider), None)
    own = doc.data.get("recordings") if doc is not None and isinstance(doc.data, dict) else None
    if isinstance(own, str) and own and doc is not None:
        return (doc.path.parent / own).resolve()
    root = catalog.root.parent if catalog.root.name == "_bundled" else catalog.root
    return root / "tests" / "providers" / provider / "recordings"


def load_recordings(folder: Path, provider: str) -> list[Recording]:
    """The recordings in a folder (its *.yaml files, in name order), or one recording file."""
    paths = [folder] if folder.is_file() else sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    return [read_recording(path, provider) for path in paths]


def read_recording(path: Path, provider: str) -> Recording:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as exc:
        return Recording(path, provider, problem=f"cannot read: {exc}")
    except yaml.YAMLError as exc:
        return Recording(path, provider, problem=f"not valid YAML: {exc}")
    if not isinstance(data, dict):
        return Recording(path, provider, problem="a recording is a mapping with model, request, upstream and expect")
    unknown = sorted(set(data) - RECORDING_KEYS)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(RECORDING_KEYS), n=1)
        problem = f"unknown key {unknown[0]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        return Recording(path, provider, problem=f"{problem} (a recording has: {', '.join(sorted(RECORDING_KEYS))})")
    return Recording(path, provider, data)


# -- replaying -------------------------------------------------------------------------------------
def call_counter() -> Callable[..., str]:
    """Deterministic ids for the tool calls the engine makes up: call_1, call_2, ..."""
    counter = itertools.count(1)

    def new_call_id(prefix: str = "call_") -> str:
        return f"{prefix}{next(counter)}"

    return new_call_id


def _target(catalog: Catalog, model: Any, provider: str | None) -> Target:
    if not isinstance(model, str) or not model:
        raise RecordingProblem("`model` is missing: the provider/model the request is sent to")
    try:
        targets = resolve_model(catalog, model)
    except GatewayError as exc:
        raise RecordingProblem(f"model {model!r}: {exc.message}") from None
    if provider is None:
        return targets[0]
    for target in targets:
        if target.provider.name == provider:
            return target
    raise RecordingProblem(f"model {model!r} is not served by {provider}; write it as {provider}/<model>")


#: The time a replay signs at (`aws_sigv4`): a signature depends on the time, a recording must not.
SIGNED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def placeholder(variable: str) -> str:
    """What a recording holds instead of a variable's value: `<ANTHROPIC_API_KEY>`."""
    return f"<{variable}>"


def with_placeholders(target: Target, unset: Any = ()) -> Target:
    """The target with every variable its spec declares set to its placeholder, except base URL
    variables, which stay unset so that the spec's own `base_url` is the one recorded, and the
    recording's `unset` ones (an optional credential or setting the exchange was made without)."""
    spec = target.provider
    if not isinstance(unset, list) or not all(isinstance(name, str) and name in spec.env for name in unset):
        raise RecordingProblem(f"`unset` must list variables {spec.name}'s spec declares: {', '.join(spec.env)}")
    values = {name: "" if var.base_url or name in unset else placeholder(name) for name, var in spec.env.items()}
    fake = dataclasses.replace(spec, env_values=values, _header_cache={}, _url_cache={}, _token_header_cache={})
    return dataclasses.replace(target, provider=fake)


def request_head(target: Target, sent: Any) -> dict[str, Any]:
    """Method, URL, query parameters and the headers the spec sets (names in lower case) of a built
    request. A spec whose `api.auth` exchanges a credential for a token on every request is shown
    with `<access_token>` (a grant whose client variables the recording unsets is not used); one that
    signs in is shown as used while nobody is signed in."""
    headers = sent.headers
    auth = target.provider.auth
    unused_grant = auth is not None and auth.grant is not None and auth.grant.client(target.provider.env_values) is None
    if auth is not None and auth.dynamic and not auth.signs_in and not unused_grant:
        headers = target.provider.headers_for_token(target.model, target.api_base, TOKEN_PLACEHOLDER)
    if sent.sign is not None and auth is not None and auth.sigv4 is not None:  # signed as sent, at SIGNED_AT
        credentials = auth.sigv4.credentials(target.provider.env_values)
        headers = sign_request(credentials, sent.method, sent.url, {"content-type": "application/json", **headers},
                               orjson.dumps(sent.body), now=SIGNED_AT)[1]
    parts = urlsplit(sent.url)
    head: dict[str, Any] = {"method": sent.method, "url": urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))}
    query: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in query:
            query[key] = value
        elif isinstance(query[key], list):
            query[key].append(value)
        else:
            query[key] = [query[key], value]  # a repeated parameter: its values in order
    if query:
        head["query"] = query
    head["headers"] = {name.lower(): value for name, value in sorted(headers.items(), key=lambda h: h[0].lower())}
    return head


def _upstream_bytes(upstream: Mapping[str, Any], key: str) -> bytes:
    value = upstream.get(key)
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


def _stream_bytes(stream: Any) -> bytes:
    """`upstream.stream`: the raw text of an SSE or NDJSON stream, or a binary event stream as a
    list of messages: `{event: NAME, payload: {...}}`, `{exception: NAME, payload: {...}}`,
    `{error: CODE, message: TEXT}`, or `{bytes: BASE64}` (raw bytes, e.g. a corrupted frame)."""
    if isinstance(stream, str):
        return stream.encode()
    if not isinstance(stream, list):
        raise RecordingProblem("a streamed request needs `upstream.stream`: the raw text of the stream, or a list of event-stream messages")
    return b"".join(_frame(item, n) for n, item in enumerate(stream))


def _frame(item: Any, n: int) -> bytes:
    where = f"upstream.stream[{n}]"
    if not isinstance(item, dict) or len(set(item) & {"event", "exception", "error", "bytes"}) != 1:
        raise RecordingProblem(f"{where}: one of event, exception, error or bytes (with payload or message)")
    if "bytes" in item:
        try:
            return base64.b64decode(str(item["bytes"]), validate=True)
        except binascii.Error:
            raise RecordingProblem(f"{where}: `bytes` is not base64") from None
    payload = orjson.dumps(item["payload"]) if "payload" in item else b""
    if "event" in item:
        headers = {":event-type": item["event"], ":content-type": "application/json", ":message-type": "event"}
    elif "exception" in item:
        headers = {":exception-type": item["exception"], ":content-type": "application/json", ":message-type": "exception"}
    else:
        headers = {":error-code": item["error"], ":error-message": item.get("message", ""), ":message-type": "error"}
    return encode_message(headers, payload)


def _error(exc: GatewayError) -> dict[str, Any]:
    return {"status": exc.status, "body": exc.to_openai()}


def _reads(target: Target, raw: bytes, reader: Any) -> Iterator[Any]:
    """The upstream stream -> what the reader makes of it, as the gateway reads it
    (`Gateway._reads`: the same reader, failures and checks), here in one read with no network."""
    from ..pipeline.gateway import Gateway, ensure_stream_events

    try:
        batch = reader.feed(raw)
        if batch:
            yield batch
        if not reader.state.done:
            batch = reader.close()
            if batch:
                yield batch
    except StreamFailure as failure:
        if failure.partial:
            yield failure.partial
        raise Gateway._stream_error(target, failure) from None
    ensure_stream_events(target, reader.state)


def _chunks(
    target: Target, raw: bytes, requested_model: str, new_call_id: Callable[..., str], prompt_estimate: int
) -> list[dict[str, Any]]:
    """The OpenAI chunks (data objects, `[DONE]` left out) the gateway writes for a stream."""
    spec = target.provider
    state = StreamState(new_call_id=new_call_id)
    reader = spec.stream.reader(state, special_tokens=spec.special_tokens)
    forwarded = not isinstance(reader, EventReader)
    writer = ChunkWriter(model=target.model or requested_model, created=0, special_tokens=spec.special_tokens,
                         role_sent=forwarded)
    pieces: list[bytes] = []
    try:
        for batch in _reads(target, raw, reader):
            piece = batch if forwarded else writer.write(batch, state.id, state.model)
            if piece:
                pieces.append(piece)
    except GatewayError as exc:
        if not pieces:
            raise  # before the first byte: an ordinary error reply
        pieces.append(writer.error(exc.to_openai()))
    else:
        usage = stream_usage(spec, state.raw_usage, reader.output_chars, prompt_estimate)
        finish = closing_finish_reason(spec, state, forwarded)
        pieces.append(writer.finish(finish, usage, state.id, state.model))
    chunks = []
    for line in b"".join(pieces).decode().split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[6:]))
    return chunks


def _assembled(
    target: Target, raw: bytes, requested_model: str, new_call_id: Callable[..., str], prompt_estimate: int
) -> dict[str, Any]:
    """A non-stream reply served from a stream (`endpoints.chat.stream_only`)."""
    state = StreamState(new_call_id=new_call_id)
    assembler = MessageAssembler(target.provider.special_tokens)
    for deltas in _reads(target, raw, EventReader(target.provider.stream, state)):
        assembler.add(deltas)
    out = {"id": state.id, "model": state.model,
           "choices": [{"message": assembler.message(), "finish_reason": state.raw_finish}]}
    return with_usage(normalize_completion(out, target, state.raw_usage or None, requested_model), prompt_estimate)


def replay(catalog: Catalog, data: Mapping[str, Any], provider: str | None = None) -> dict[str, Any]:
    """What the engine makes of a recorded exchange, shaped like `expect` (not yet normalised).

    Raises RecordingProblem for a recording that cannot be replayed as written.
    """
    target = with_placeholders(_target(catalog, data.get("model"), provider), data.get("unset", []))
    request = data.get("request")
    if not isinstance(request, dict):
        raise RecordingProblem("`request` must be the client's OpenAI chat request (a mapping)")
    body = {"model": data["model"], **copy.deepcopy(request)}
    stream = body.get("stream") is True
    upstream = data.get("upstream") or {}
    if not isinstance(upstream, dict):
        raise RecordingProblem("`upstream` must be a mapping with status, headers and body or stream")
    status = upstream.get("status", 200)
    if not isinstance(status, int):
        raise RecordingProblem("`upstream.status` must be an HTTP status code")
    headers = {str(k).lower(): str(v) for k, v in (upstream.get("headers") or {}).items()}
    new_call_id = call_counter()
    out: dict[str, Any] = {}
    spec = target.provider
    chat = spec.endpoints.get("chat")
    if chat is None:
        raise RecordingProblem(f"{spec.name} has no chat endpoint (api.endpoints.chat)")
    from_stream = stream or chat.stream_only
    try:
        body = validate_request(body)
        sent = build_request(target, body, stream=from_stream)
        out["upstream_call"] = request_head(target, sent)
        out["upstream_request"] = sent.body
        if status >= 400:
            payload = _upstream_bytes(upstream, "body") or _upstream_bytes(upstream, "stream")
            raise error_from_reply(target, status, payload, headers)
        if from_stream:
            if spec.stream is None:
                raise RecordingProblem(f"{spec.name} has no `stream` section to replay a stream with")
            raw = _stream_bytes(upstream.get("stream"))
            if stream:
                out["chunks"] = _chunks(target, raw, body["model"], new_call_id, estimate_prompt_tokens(body))
            else:
                out["response"] = _assembled(target, raw, body["model"], new_call_id, estimate_prompt_tokens(body))
        else:
            if "body" not in upstream:
                raise RecordingProblem("a non-stream request needs `upstream.body`: the upstream's JSON reply")
            reply = upstream["body"]
            if isinstance(reply, str):
                try:
                    reply = orjson.loads(reply)
                except orjson.JSONDecodeError:
                    raise ResponseParsing(f"{spec.name} returned a reply that is not JSON") from None
            completion = completion_from_reply(target, reply, requested_model=body["model"], new_call_id=new_call_id)
            with_usage(completion, estimate_prompt_tokens(body))
            check_structured_output(body, completion)
            out["response"] = completion
    except GatewayError as exc:
        out["error"] = _error(exc)
    return out


def normalise(expect: Mapping[str, Any]) -> dict[str, Any]:
    """`expect` without what changes on every run (docs/recordings.md): `created`, invented ids."""
    out = copy.deepcopy(dict(expect))

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            obj.pop("created", None)
            if isinstance(obj.get("id"), str) and _INVENTED_ID.match(obj["id"]):
                obj["id"] = "chatcmpl-1"
        return obj

    if "response" in out:
        out["response"] = clean(out["response"])
    if isinstance(out.get("chunks"), list):
        out["chunks"] = [clean(c) for c in out["chunks"]]
    return {k: out[k] for k in (*EXPECT_KEYS, *[k for k in out if k not in EXPECT_KEYS]) if k in out}


# -- comparing -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One replayed recording: what was expected, what the engine produced."""

    recording: Recording
    expected: dict[str, Any] | None = None
    actual: dict[str, Any] | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.expected is not None and self.expected == self.actual

    def diff(self) -> str:
        """What differs, section by section, as unified diffs of pretty-printed JSON."""
        if self.problem is not None:
            return self.problem
        if self.expected is None:
            return "no `expect` yet: run `gaud-engine spec test --update`, then review what it wrote"
        assert self.actual is not None
        parts = []
        for key in dict.fromkeys([*self.expected, *self.actual]):
            before, after = self.expected.get(key), self.actual.get(key)
            if before == after:
                continue
            if key == "upstream_call":
                parts.append("\n".join(call_differences(before, after)))
                continue
            parts.append("".join(difflib.unified_diff(
                _pretty(before, key in self.expected), _pretty(after, key in self.actual),
                f"expected {key}", f"actual {key}", n=3,
            )))
        return "\n".join(p.rstrip("\n") for p in parts)


def call_differences(expected: Any, actual: Any) -> list[str]:
    """What differs between two `upstream_call`s, one line each, naming the field or header."""
    if not isinstance(expected, dict):
        return ["upstream_call: not recorded; `gaud-engine spec test --update` fills it in (no network)"]
    if not isinstance(actual, dict):
        return ["upstream_call: recorded, but the engine built no request"]
    lines = []
    for key in ("method", "url"):
        if expected.get(key) != actual.get(key):
            lines.append(f"upstream_call {key}: expected {expected.get(key)!r}, sent {actual.get(key)!r}")
    for what, key in (("query parameter", "query"), ("header", "headers")):
        before, after = expected.get(key) or {}, actual.get(key) or {}
        for name in dict.fromkeys([*before, *after]):
            if name not in after:
                lines.append(f"upstream_call {what} {name!r}: expected {before[name]!r}, not sent")
            elif name not in before:
                lines.append(f"upstream_call {what} {name!r}: sent {after[name]!r}, not recorded")
            elif before[name] != after[name]:
                lines.append(f"upstream_call {what} {name!r}: expected {before[name]!r}, sent {after[name]!r}")
    unknown = sorted(set(expected) - {"method", "url", "query", "headers"})
    if unknown:
        lines.append(f"upstream_call: unknown key {unknown[0]!r} (it has method, url, query, headers)")
    return lines


def _without_transport(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """`expected` without recorded transport headers (content-length, user-agent, ...) the spec does
    not set: a request captured off the wire carries them, the engine's comparison does not."""
    call, sent = expected.get("upstream_call"), actual.get("upstream_call")
    if not isinstance(call, dict) or not isinstance(call.get("headers"), dict):
        return expected
    set_by_spec = set(sent.get("headers") or {}) if isinstance(sent, dict) else set()
    headers = {name.lower(): value for name, value in call["headers"].items()}
    kept = {name: value for name, value in headers.items() if name not in TRANSPORT_HEADERS or name in set_by_spec}
    return {**expected, "upstream_call": {**call, "headers": kept}}


def _pretty(value: Any, present: bool) -> list[str]:
    if not present:
        return []
    return [line + "\n" for line in json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).split("\n")]


def check(catalog: Catalog, recording: Recording) -> Outcome:
    """Replay one recording and compare with its `expect`."""
    if recording.data is None:
        return Outcome(recording, problem=recording.problem)
    try:
        actual = normalise(replay(catalog, recording.data, recording.provider))
    except RecordingProblem as exc:
        return Outcome(recording, problem=str(exc))
    except Exception as exc:  # noqa: BLE001 - an engine crash is reported per exchange, not for the run
        return Outcome(recording, problem=f"the replay crashed: {type(exc).__name__}: {exc}")
    raw = recording.data.get("expect")
    expected = _without_transport(normalise(raw), actual) if isinstance(raw, dict) else None
    return Outcome(recording, expected, actual)


def write_expect(recording: Recording, expect: Mapping[str, Any]) -> None:
    """Rewrite the `expect` section of a recording file; everything above it stays as written."""
    text = recording.path.read_text(encoding="utf-8")
    block = dump_yaml({"expect": dict(expect)})
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"expect\s*:", line)), None)
    if start is None:
        body = re.sub(r"(?m)^\.\.\.[ \t]*\n?\Z", "", text)  # a document-end marker after a `|+` block
        new = body + ("" if body.endswith("\n") else "\n") + block
    else:
        end = next((j for j in range(start + 1, len(lines)) if re.match(r"[^\s#]", lines[j])), len(lines))
        new = "".join(lines[:start]) + block + "".join(lines[end:])
    others = {k: v for k, v in (recording.data or {}).items() if k != "expect"}
    try:
        check_data = yaml.load(new, Loader=_Loader)
    except yaml.YAMLError:
        check_data = None
    if not isinstance(check_data, dict) or {k: v for k, v in check_data.items() if k != "expect"} != others:
        new = dump_yaml({**others, "expect": dict(expect)})  # an unusual layout: write the whole file
    recording.path.write_text(new, encoding="utf-8")
    recording.data = yaml.load(new, Loader=_Loader)



# -- choosing what to test -------------------------------------------------------------------------
@dataclass
class Selection:
    """Recordings to run: a spec tree, the specs in it (None: all), and optionally one recording file."""

    root: Path
    providers: list[str] | None = None
    path: Path | None = None


def _tree_above(path: Path) -> Path | None:
    for folder in [path, *path.parents]:
        if (folder / "providers.d").is_dir():
            return folder
    return None


def select(raw: str, default: Path) -> Selection:
    """What one `spec test` argument names: a spec tree, its providers.d/, a spec file, a spec
    name (in the current directory's tree when it has that spec, else in the default tree), or a
    recordings folder or file (the tree is found above it)."""
    path = Path(raw)
    if not path.exists():
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", raw):
            here = Path.cwd()
            return Selection(here if (here / "providers.d" / f"{raw}.yaml").is_file() else default, [raw])
        raise RecordingProblem(f"{raw}: no such file, folder or spec")
    path = path.resolve()
    if path.is_dir() and (path / "providers.d").is_dir():
        return Selection(path)
    if path.is_dir() and path.name == "providers.d":
        return Selection(path.parent)
    if path.is_file() and path.parent.name == "providers.d" and path.suffix == ".yaml":
        return Selection(path.parent.parent, [path.stem])
    return Selection(_tree_above(path) or default, None, path)


def spec_names(catalog: Catalog) -> list[str]:
    """Every spec file of the tree (loaded or broken), in file order."""
    folder = catalog.root / "providers.d"
    return [p.stem for p in sorted(folder.glob("*.yaml"))] if folder.is_dir() else list(catalog.providers)


def owner_of(catalog: Catalog, path: Path) -> str | None:
    """The spec whose recordings folder holds `path` (a folder or a recording file)."""
    folder = path if path.is_dir() else path.parent
    for name in spec_names(catalog):
        if recordings_dir(catalog, name).resolve() == folder.resolve():
            return name
    return None


# -- recording real exchanges ----------------------------------------------------------------------
_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]

#: The fixed set `spec record` sends: (file stem, description, request).
RECORD_SET: list[tuple[str, str, dict[str, Any]]] = [
    ("recorded-text", "Recorded: a short text question",
     {"messages": [{"role": "user", "content": "In one sentence: why is the sea salty?"}], "max_tokens": 200}),
    ("recorded-tool-call", "Recorded: a question the model answers with a tool call",
     {"messages": [{"role": "user", "content": "What is the weather in Paris right now? Use the tool."}],
      "tools": _TOOLS, "max_tokens": 200}),
    ("recorded-stream", "Recorded: a streamed text reply",
     {"messages": [{"role": "user", "content": "Count from 1 to 5, separated by spaces."}], "max_tokens": 200,
      "stream": True}),
]


def default_model(catalog: Catalog, provider: str) -> str:
    """A chat model of the spec to record with: the first with tools, else the first that chats;
    models that routes.yaml's aliases name come first (a curated choice, not the list's order)."""
    spec = catalog.providers[provider]
    routed = [c["model"] for route in (catalog.routes.get("aliases") or {}).values()
              for c in route.get("candidates", []) if c.get("provider") == provider]
    chosen = [spec.models[m] for m in dict.fromkeys(routed) if m in spec.models]
    models = chosen + [info for info in spec.models.values() if info not in chosen]
    for info in models:
        if "tools" in info.capabilities:
            return info.id
    for info in models:
        if "embeddings" not in info.capabilities:
            return info.id
    raise RecordingProblem(f"{provider} lists no chat model; name one with --model")


def scrub(value: Any, masks: Mapping[str, str]) -> Any:
    """The value with every secret (a key of `masks`, longest first) replaced by its placeholder
    (in keys and strings, at any depth)."""
    if isinstance(value, str):
        for secret in sorted(masks, key=len, reverse=True):
            value = value.replace(secret, masks[secret])
        return value
    if isinstance(value, dict):
        return {scrub(k, masks): scrub(v, masks) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, masks) for v in value]
    return value


def _masks(spec: Any, replayed_base: str) -> tuple[dict[str, str], dict[str, str]]:
    """(secret value -> `<VAR>`, every set variable's value -> what a replay puts there): the
    first scrubs what is stored, the second makes a request sent for real comparable with a replay
    (a base URL override becomes `replayed_base`, the spec's own, its template rendered there)."""
    secrets, values = {}, {}
    for name, var in spec.env.items():
        value = spec.env_values.get(name) or ""
        if var.base_url:
            if value:
                values[value.rstrip("/")] = replayed_base
        elif len(value) >= 4:  # shorter ones would be replaced inside unrelated text
            values[value] = placeholder(name)
            if var.secret:
                secrets[value] = placeholder(name)
    return secrets, values


_SIGNATURE = re.compile(r"Signature=[0-9a-f]+")


def _unsigned(head: Any) -> Any:
    """A request head with its SigV4 signature blanked: the real one is made with the secret, the
    replay's with its placeholder, so they always differ; what was signed is compared as it is."""
    if not isinstance(head, dict) or not isinstance(head.get("headers"), dict):
        return head
    headers = {name: _SIGNATURE.sub("Signature=...", value) if name == "authorization" else value
               for name, value in head["headers"].items()}
    return {**head, "headers": headers}


def _note_head(stem: str, real: dict[str, Any], replayed: Any, echo: Callable[[str], Any], signed: bool) -> None:
    """Say where the request sent for real differs from the replay's (a variable unset while
    recording, a base URL override with another path): the replay's is the one stored."""
    if signed:
        real, replayed = _unsigned(real), _unsigned(replayed)
    differences = call_differences(replayed, real) if real != replayed else []
    for line in differences:
        echo(f"{stem}: note, the request sent differs from the replay's (stored): {line}")


def record(
    catalog: Catalog,
    provider: str,
    out: Path,
    *,
    model: str | None = None,
    timeout: float = 60.0,
    echo: Callable[[str], Any] = print,
) -> list[Path]:
    """Send RECORD_SET to the provider's real upstream and write one recording per exchange.

    Credentials come from the environment the catalog was loaded with. They are used, never stored:
    every secret value is replaced by its placeholder (`<VAR>`) in what is written, and the request
    stored in `expect` is the replay's, built with placeholders.
    """
    import httpx

    spec = catalog.providers[provider]
    missing = spec.missing_env()
    if missing:
        raise RecordingProblem(f"{provider} needs {', '.join(missing)} in the environment to reach its upstream")
    hint = spec.setup_hint()  # a signing spec also needs its signing identity, or the stand-in credential
    if hint:
        raise RecordingProblem(f"{provider} cannot sign its requests: {hint} in the environment")
    model = model or default_model(catalog, provider)
    target = _target(catalog, f"{provider}/{model}", provider)
    # What the exchanges are made without: listed in `unset`, the replay builds the request sent
    # (say the signed one, not the one an unset stand-in API key would make).
    unset = [name for name, var in spec.env.items() if not var.base_url and not spec.env_values.get(name)]
    secrets, values = _masks(spec, with_placeholders(target, unset).provider.api_base())
    binary = getattr(spec.stream, "framing", None) == "aws_eventstream"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with httpx.Client(timeout=timeout) as client:
        for stem, description, request in RECORD_SET:
            try:
                body = validate_request({"model": target.name, **copy.deepcopy(request)})
                from_stream = body.get("stream") is True or spec.endpoints["chat"].stream_only  # as the gateway asks them
                sent = build_request(target, body, stream=from_stream)
            except GatewayError as exc:
                echo(f"{stem}: skipped, the engine refuses it for {target.name}: {exc.message}")
                continue
            try:
                upstream = _exchange(client, sent, binary)
            except httpx.HTTPError as exc:
                raise RecordingProblem(f"{stem}: the upstream could not be reached: {scrub(str(exc), secrets)}") from None
            real_head = scrub(request_head(target, sent), values)
            data: dict[str, Any] = scrub(
                {"description": description, "model": target.name, **({"unset": unset} if unset else {}),
                 "request": request, "upstream": upstream}, secrets
            )
            try:
                data["expect"] = scrub(normalise(replay(catalog, data, provider)), secrets)
                _note_head(stem, real_head, data["expect"].get("upstream_call"), echo, sent.sign is not None)
            except RecordingProblem as exc:
                echo(f"{stem}: no expectation written: {exc}")
            text = dump_yaml(data)
            if any(secret in text for secret in secrets):  # pragma: no cover - scrub() is exhaustive
                raise RecordingProblem(f"{stem}: a secret survived scrubbing; nothing written")
            path = out / f"{stem}.yaml"
            path.write_text(text, encoding="utf-8")
            written.append(path)
            echo(f"wrote {path} (upstream status {upstream['status']})")
    return written


def _exchange(client: Any, sent: UpstreamRequest, binary: bool) -> dict[str, Any]:
    """Send one request as the gateway sends it (`prepared`: the same bytes, signed the same way
    for `aws_sigv4`) and return what came back as a recording's `upstream`: a JSON body where it
    is one, a text stream as its text, a binary event stream as its messages."""
    url, headers, data = prepared(sent)
    if not sent.stream:
        reply = client.request(sent.method, str(url), headers=headers, content=data)
        try:
            return {"status": reply.status_code, "body": reply.json()}
        except ValueError:
            return {"status": reply.status_code, "body": reply.text}
    with client.stream(sent.method, str(url), headers=headers, content=data) as reply:
        raw, status = reply.read(), reply.status_code
    if status >= 400:
        text = raw.decode("utf-8", errors="replace")
        with contextlib.suppress(ValueError):
            return {"status": status, "body": json.loads(text)}
        return {"status": status, "body": text}
    if binary:
        return {"status": status, "stream": _messages(raw)}
    return {"status": status, "stream": raw.decode("utf-8", errors="replace").replace("\r\n", "\n")}


def _messages(raw: bytes) -> list[dict[str, Any]]:
    """A binary event stream as `upstream.stream` lists it (what `_frame` encodes back), or, when
    a message does not fit that form (a bad checksum, a cut-off message, a payload that is not
    JSON), the whole stream as one `{bytes: BASE64}` item: nothing received is lost or mended."""
    decoder = MessageDecoder()
    try:
        items = [_message(headers, payload) for headers, payload in decoder.feed(raw)]
    except (StreamFailure, ValueError, KeyError):
        items = None
    if items is None or decoder.pending:
        return [{"bytes": base64.b64encode(raw).decode()}]
    return items


def _message(headers: Headers, payload: bytes) -> dict[str, Any]:
    kind = headers.get(":message-type", "event")
    if kind == "error":
        return {"error": str(headers[":error-code"]), "message": str(headers.get(":error-message", ""))}
    name = headers[":event-type" if kind == "event" else ":exception-type"]
    if kind not in ("event", "exception") or not isinstance(name, str):
        raise ValueError(f"a {kind} message")
    return {kind: name, **({"payload": orjson.loads(payload)} if payload else {})}
