"""Token estimates made without a tokenizer: prompts (admission, budgets, context windows),
replies whose upstream reported no usage, and embeddings inputs.

The estimate must not fall short for any script, because budgets reserve it before the call:
- ASCII text: about 4 characters a token (English prose and code; tokenizers do better);
- every character outside ASCII: one token (Chinese and Japanese run about one token a character,
  accented Latin, Cyrillic or Greek well under that);
- every character outside the Basic Multilingual Plane (emoji, rare CJK): two tokens, since a
  byte-level tokenizer often spends two or more on its four UTF-8 bytes;
- an image: 85 tokens at `detail: low`, else 1,600 (about the largest any shipped provider
  charges for one image: ~1.15 megapixels at 750 pixels a token; high detail tops out at 1,445).
No tokenizer data is downloaded; text that is all ASCII costs one `str.isascii()` more than a
plain character count (that check reads a flag CPython keeps on every string).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CHARS_PER_TOKEN", "IMAGE_TOKENS", "IMAGE_TOKENS_LOW", "estimate_input_tokens", "estimate_output_tokens",
    "estimate_prompt_tokens", "weigh",
]

#: ASCII characters per token wherever a count is estimated without a tokenizer.
CHARS_PER_TOKEN = 4

#: What an image at `detail: low` costs (the OpenAI API's figure), in tokens.
IMAGE_TOKENS_LOW = 85

#: What any other image is reserved at: about the largest image any shipped provider bills.
IMAGE_TOKENS = 1600


def weigh(text: str) -> int:
    """`text`'s weight in ASCII characters: a token is CHARS_PER_TOKEN of them. A character
    outside ASCII weighs a whole token, one outside the BMP two."""
    if text.isascii():
        return len(text)
    n = len(text)
    ascii_chars = len(text.encode("ascii", "ignore"))
    astral = len(text.encode("utf-16-le", "surrogatepass")) // 2 - n  # each is a surrogate pair
    return ascii_chars + CHARS_PER_TOKEN * (n - ascii_chars + astral)


def _image_chars(part: dict[str, Any]) -> int:
    image = part.get("image_url")
    low = isinstance(image, dict) and image.get("detail") == "low"
    return (IMAGE_TOKENS_LOW if low else IMAGE_TOKENS) * CHARS_PER_TOKEN


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A cheap estimate of a chat request's prompt size: message text, tool calls, tools, images."""
    chars = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content) if content.isascii() else weigh(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text) if text.isascii() else weigh(text)
                elif part.get("type") == "image_url":
                    chars += _image_chars(part)
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                chars += weigh(str(call.get("function", "")))
    tools = body.get("tools")
    if isinstance(tools, list):
        chars += weigh(str(tools))
    return chars // CHARS_PER_TOKEN + 1


def estimate_output_tokens(output_chars: int) -> int:
    """Tokens for generated text of `output_chars` ASCII characters (or `weigh`t), rounded up:
    any output costs at least one token."""
    return -(-output_chars // CHARS_PER_TOKEN)


def estimate_input_tokens(inputs: list[Any]) -> int:
    """Embeddings inputs: text as `estimate_prompt_tokens` counts it (plus one a text); token-id
    arrays count themselves, a lone token id one."""
    total = 0
    for item in inputs:
        if isinstance(item, str):
            total += (len(item) if item.isascii() else weigh(item)) // CHARS_PER_TOKEN + 1
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1
    return total
