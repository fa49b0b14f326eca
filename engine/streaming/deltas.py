"""What reading one upstream stream yields and keeps: neutral deltas, the stream's state, failures.

A delta is a tuple whose first item says its kind: `("text", str)`, `("reasoning", str)`,
`("tool_start", index, id, name)`, `("tool_args", index, fragment)`. The event table (events.py)
produces them, the pass-through relay (passthrough.py) counts them in the frames it reads, and the
chunk writers consume them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..mapping import new_call_id

__all__ = ["Delta", "StreamFailure", "StreamState", "delta_chars"]

Delta = tuple[Any, ...]


class StreamFailure(Exception):
    """The upstream reported an error inside the stream."""

    def __init__(self, kind: str | None, message: str, body: Any = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.body = body
        #: The error's type as the transport named it (an event-stream `:exception-type`), for
        #: the spec's error table when `kind` is None.
        self.code = code
        #: Deltas from frames read before the failing one (they still reach the client first).
        self.partial: list[Delta] = []


@dataclass
class StreamState:
    """What the engine remembers while reading one upstream stream."""

    id: str | None = None
    model: str | None = None
    raw_usage: dict[str, Any] = field(default_factory=dict)
    raw_finish: Any = None
    tool_index: dict[Any, int] = field(default_factory=dict)
    last_tool_key: Any = None
    next_tool_index: int = 0
    vars: dict[str, Any] = field(default_factory=dict)
    content_keys: set[Any] = field(default_factory=set)
    done: bool = False
    frames: int = 0
    new_call_id: Callable[[str], str] = new_call_id

    @property
    def has_tool_calls(self) -> bool:
        return self.next_tool_index > 0


def delta_chars(deltas: list[Delta]) -> int:
    """Characters generated in a list of deltas: text, reasoning, tool names and arguments."""
    total = 0
    for delta in deltas:
        kind = delta[0]
        if kind == "tool_start":
            total += len(delta[3] or "")
        elif kind == "tool_args":
            total += len(delta[2])
        elif kind in ("text", "reasoning"):
            total += len(delta[1])
    return total
