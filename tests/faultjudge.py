"""What a client of the gateway saw, judged from the raw answer (issue 19's contract).

Outcomes: `reply` (the complete healthy reply of tests/faultserver.py: HEALTHY_TEXT, finish_reason
"stop", and [DONE] for a stream), `error` (a clean OpenAI-style error: JSON `{"error": {message,
type, code}}` with an error status, or for a stream one error event with no finish reason before it
and nothing after it, no [DONE]), `false_success` (a 200 that is not the complete reply, including
a stream that just ends) and `unclean` (anything else: a body or frame that is not JSON, a chunk
that is not an OpenAI chunk, an error event followed by more frames).
"""

from __future__ import annotations

import json
from typing import Any

from .faultserver import HEALTHY_TEXT

__all__ = ["clean_error", "judge_json", "judge_sse"]


def clean_error(error: Any) -> bool:
    """An OpenAI-style error object (the `error` of `{"error": {...}}`): message and type strings
    and a code field, as a client's error handling expects them."""
    return (isinstance(error, dict) and isinstance(error.get("message"), str) and bool(error["message"])
            and isinstance(error.get("type"), str) and "code" in error)


def judge_json(status: int, raw: bytes) -> tuple[str, str]:
    """A non-stream answer (or any answer with an error status): (outcome, why)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return "unclean", f"{status} with a body that is not JSON: {raw[:120]!r}"
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        return ("error", "") if clean_error(error) else ("unclean", f"{status} {raw[:200]!r}")
    if status != 200:
        return "unclean", f"status {status}"
    try:
        choice = body["choices"][0]
        content, finish = choice["message"]["content"], choice["finish_reason"]
    except (KeyError, IndexError, TypeError):
        return "false_success", f"200 without a message: {raw[:120]!r}"
    if content == HEALTHY_TEXT and finish == "stop":
        return "reply", ""
    return "false_success", f"200 with content {content!r}, finish_reason {finish!r}"


def judge_sse(raw: bytes) -> tuple[str, str]:
    """A 200 stream's bytes: (outcome, why)."""
    text: list[str] = []
    finish, done, error, after_error = None, False, None, False
    for line in raw.decode(errors="replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        after_error = after_error or error is not None
        if data == "[DONE]":
            done = True
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            return "unclean", f"a frame that is not JSON: {data[:80]!r}"
        if not isinstance(obj, dict):
            return "unclean", f"a frame that is not an object: {data[:80]!r}"
        if "error" in obj:
            error = obj["error"]
            continue
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return "unclean", f"a chunk without a choices list: {data[:80]!r}"
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                return "unclean", f"a choice without a delta: {data[:80]!r}"
            text.append(delta.get("content") or "")
            finish = choice.get("finish_reason") or finish
    if error is not None:
        if not clean_error(error) or after_error or finish is not None:
            return "unclean", (f"error event {error!r} with finish_reason {finish!r} before it"
                               f"{' and frames after it (' + ('[DONE]' if done else 'data') + ')' if after_error else ''}")
        return "error", f"error event {error!r}"
    content = "".join(text)
    if content == HEALTHY_TEXT and finish == "stop" and done:
        return "reply", ""
    return "false_success", f"stream of {content!r}, finish_reason {finish!r}, [DONE] {'seen' if done else 'missing'}"
