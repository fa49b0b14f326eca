"""Removes special tokens (`<|im_end|>`, `</s>`, ...) from streamed text, also when one is split
across deltas: a suffix that could start a token is held back until the next delta decides."""

from __future__ import annotations

__all__ = ["TokenFilter", "strip_tokens"]


def strip_tokens(text: str, tokens: tuple[str, ...]) -> str:
    for token in tokens:
        if token in text:
            text = text.replace(token, "")
    return text


class TokenFilter:
    def __init__(self, tokens: tuple[str, ...]) -> None:
        self.tokens = tokens
        self._held = ""

    def feed(self, text: str) -> str:
        text = strip_tokens(self._held + text, self.tokens)
        self._held = ""
        hold = 0
        for token in self.tokens:
            for size in range(min(len(token) - 1, len(text)), 0, -1):
                if text.endswith(token[:size]):
                    hold = max(hold, size)
                    break
        if hold:
            text, self._held = text[:-hold], text[-hold:]
        return text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
