"""The names the engine gives to spec authors: context values (`@name`) and part kinds.

`validate` checks a spec against these (engine.spec.checks), so a typo fails at load with a
did-you-mean instead of reading nothing, or refusing every request, at run time.
"""

from __future__ import annotations

__all__ = ["CONTEXT_NAMES", "MESSAGE_PART_KINDS", "REPLY_PART_KINDS"]

#: Every `@name` some mapping, condition or stream action can read (each is bound where the
#: manual says: `@out` in rule lists, part fields in `messages_to_turns` parts, `@state` in streams...).
CONTEXT_NAMES = frozenset({
    # requests and rule lists
    "model", "stream", "out", "value", "body", "provider", "model_info", "estimated_tokens", "items",
    # message parts (messages_to_turns, turns_to_messages) and tool calls
    "text", "part", "role", "message", "index", "id", "name", "args", "arguments", "carry", "call",
    "media_type", "format", "data", "url", "detail", "content", "filename",
    # streams, client stream events and error envelopes
    "state", "accumulated", "seq", "request", "reply", "usage", "created", "stop_reason", "finish_reason",
    "error", "type", "code", "param",
    # error tables: the upstream reply's headers (`@headers/<lower-case name>`)
    "headers",
})

#: `messages_to_turns` `parts:` keys: the kinds the engine splits OpenAI messages into, then the
#: other OpenAI content part types (passed through as `@part`). A new OpenAI part type is added here.
MESSAGE_PART_KINDS = (
    "text", "image_data", "image_url", "tool_call", "tool_result", "reasoning",
    "input_audio", "file", "file_ref",
)

#: The kinds `parts_to_message` reads from a classified provider part (`_ignore` skips one).
REPLY_PART_KINDS = ("text", "reasoning", "refusal", "tool_call")
