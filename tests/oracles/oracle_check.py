"""Independent oracles for gaud-engine tests (copied from shared/oracles; schema path adapted).

  python oracle_check.py            # self-check: every fixture validates against the official SDK types / OpenAI spec

Needs: jsonschema>=4.18 (referencing), openai, anthropic, google-genai (test-only deps).
"""
from __future__ import annotations
import json, pathlib, sys
from typing import Any, Iterator

HERE = pathlib.Path(__file__).resolve().parent

# ---------------------------------------------------------------- SSE parsing
def iter_sse(text: str) -> Iterator[tuple[str | None, str]]:
    """Yield (event_name, data) per SSE frame. Accepts \\n\\n and \\r\\n\\r\\n framing."""
    text = text.replace("\r\n", "\n")
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        ev, data = None, []
        for line in frame.split("\n"):
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                ev = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            yield ev, "\n".join(data)

# ---------------------------------------------------------------- OpenAI JSON Schema (official spec)
_VALIDATORS: dict[str, Any] = {}
def openai_validator(defname: str):
    """jsonschema validator for a $defs entry of openai/chat_schemas.json, e.g.
    'CreateChatCompletionResponse', 'CreateChatCompletionStreamResponse', 'CreateChatCompletionRequest'."""
    if defname not in _VALIDATORS:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        bundle = json.loads((HERE / "chat_schemas.json").read_text())
        res = Resource.from_contents(bundle)
        reg = Registry().with_resource(bundle["$id"], res)
        _VALIDATORS[defname] = Draft202012Validator({"$ref": bundle["$id"] + "#/$defs/" + defname}, registry=reg)
    return _VALIDATORS[defname]

def assert_openai(obj: dict, defname: str) -> None:
    errs = sorted(openai_validator(defname).iter_errors(obj), key=lambda e: list(e.path))
    if errs:
        raise AssertionError(f"{defname}: " + "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errs[:5]))

# ---------------------------------------------------------------- SDK-type oracles
def assert_openai_sdk(obj: dict, stream: bool = False) -> None:
    """openai SDK pydantic models. They are lenient (extra fields allowed, most fields optional on
    construct), so use model_validate (not construct) and also compare the round-trip."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    (ChatCompletionChunk if stream else ChatCompletion).model_validate(obj)

def assert_anthropic_response(obj: dict) -> None:
    from anthropic.types import Message
    Message.model_validate(obj)

def assert_anthropic_stream_event(obj: dict) -> None:
    from pydantic import TypeAdapter
    from anthropic.types import RawMessageStreamEvent
    if obj.get("type") in ("ping", "error"):
        return  # not members of RawMessageStreamEvent
    TypeAdapter(RawMessageStreamEvent).validate_python(obj)

def assert_gemini_response(obj: dict) -> None:
    # google-genai's BaseModel uses extra='forbid' -> unknown/misspelt fields fail. Accepts camelCase aliases.
    from google.genai import types
    types.GenerateContentResponse.model_validate(obj)

# ---------------------------------------------------------------- request-body oracles (what the gateway SENDS upstream)
def assert_anthropic_request(body: dict) -> None:
    """Validate a body the gateway POSTs to /v1/messages. MessageCreateParams is a TypedDict; a pydantic
    TypeAdapter checks required keys, literal enums and nested block shapes. TypedDicts ignore unknown keys,
    so also check top-level keys against the TypedDict's annotations."""
    from pydantic import TypeAdapter
    from anthropic.types import message_create_params as mcp
    cls = mcp.MessageCreateParamsStreaming if body.get("stream") else mcp.MessageCreateParamsNonStreaming
    TypeAdapter(cls).validate_python(body)
    # pydantic validates `Iterable[...]` fields LAZILY (never, unless iterated), and the SDK types use
    # Iterable for messages/content/tools - so validate each nested item explicitly.
    from anthropic.types import ContentBlockParam, MessageParam, ToolUnionParam, TextBlockParam
    for m in body["messages"]:
        TypeAdapter(MessageParam).validate_python(m)
        if isinstance(m["content"], list):
            for blk in m["content"]:
                TypeAdapter(ContentBlockParam).validate_python(blk)
                if blk.get("type") == "tool_result" and isinstance(blk.get("content"), list):
                    for inner in blk["content"]:
                        TypeAdapter(ContentBlockParam).validate_python(inner)
    for t in body.get("tools", []):
        TypeAdapter(ToolUnionParam).validate_python(t)
    if isinstance(body.get("system"), list):
        for blk in body["system"]:
            TypeAdapter(TextBlockParam).validate_python(blk)
    allowed = set()
    for k in cls.__mro__:
        allowed |= set(getattr(k, "__annotations__", {}))
    extra = set(body) - allowed
    if extra:
        raise AssertionError(f"unknown top-level Anthropic request keys: {sorted(extra)}")
    # API rules the types do not encode:
    msgs = body["messages"]
    if msgs and msgs[0]["role"] != "user":
        raise AssertionError("first message must be role=user")
    for a, b in zip(msgs, msgs[1:]):
        if a["role"] == b["role"]:
            raise AssertionError("consecutive messages with the same role (must be merged)")
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and isinstance(m["content"], list):
            ids = [blk["id"] for blk in m["content"] if blk.get("type") == "tool_use"]
            if ids:
                nxt = msgs[i + 1] if i + 1 < len(msgs) else None
                got = [blk.get("tool_use_id") for blk in (nxt or {}).get("content", []) if isinstance(blk, dict) and blk.get("type") == "tool_result"] if nxt else []
                if nxt and set(ids) - set(got):
                    raise AssertionError(f"tool_use ids {sorted(set(ids) - set(got))} lack tool_result blocks in the NEXT user turn")

def assert_gemini_request(body: dict) -> None:
    """Validate a body the gateway POSTs to :generateContent. GenerateContentConfig etc. are SDK-side
    types; the REST body is {contents, systemInstruction?, tools?, toolConfig?, generationConfig?, safetySettings?, cachedContent?}."""
    from google.genai import types
    allowed = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings", "cachedContent", "labels"}
    extra = set(body) - allowed
    if extra:
        raise AssertionError(f"unknown top-level Gemini request keys: {sorted(extra)}")
    for c in body["contents"]:
        types.Content.model_validate(c)          # extra='forbid' catches typos like function_call vs functionCall? (aliases accepted both ways)
        if c.get("role") not in ("user", "model"):
            raise AssertionError(f"Gemini content role must be user|model, got {c.get('role')!r}")
    if "systemInstruction" in body:
        types.Content.model_validate(body["systemInstruction"])
    for t in body.get("tools", []):
        types.Tool.model_validate(t)
    if "generationConfig" in body:
        types.GenerationConfig.model_validate(body["generationConfig"])

