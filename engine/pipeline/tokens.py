"""Token estimates made without a tokenizer: prompts (admission, budgets, context windows),
replies whose upstream reported no usage, and embeddings inputs. About 4 characters a token."""

from __future__ import annotations

from typing import Any

__all__ = ["CHARS_PER_TOKEN", "estimate_input_tokens", "estimate_output_tokens", "estimate_prompt_tokens"]

#: Characters per token wherever a count is estimated without a tokenizer.
CHARS_PER_TOKEN = 4

#: What a low-detail image costs, in tokens.
IMAGE_TOKENS = 85


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A cheap estimate of a chat request's prompt size: message text, tool calls, tools, images."""
    chars = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
                elif isinstance(part, dict) and part.get("type") == "image_url":
                    chars += IMAGE_TOKENS * CHARS_PER_TOKEN
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                chars += len(str(call.get("function", "")))
    tools = body.get("tools")
    if isinstance(tools, list):
        chars += len(str(tools))
    return chars // CHARS_PER_TOKEN + 1


def estimate_output_tokens(output_chars: int) -> int:
    """Tokens for generated text, rounded up: any output costs at least one token."""
    return -(-output_chars // CHARS_PER_TOKEN)


def estimate_input_tokens(inputs: list[Any]) -> int:
    """Embeddings inputs: about 4 characters per token for text; token-id arrays count themselves."""
    return sum(len(i) // CHARS_PER_TOKEN + 1 if isinstance(i, str) else len(i) for i in inputs)
