"""Helpers to read a gateway's raw SSE and check every chunk against the OpenAI schema."""

from __future__ import annotations

import json
from typing import Any

import httpx

from .oracles import oracle_check


def raw_stream(url: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """POST a streaming request; (parsed data objects, whether [DONE] was seen)."""
    objects: list[dict[str, Any]] = []
    done = False
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=20) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            objects.append(json.loads(line[6:]))
    return objects, done


def assert_valid_chunks(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if "error" in obj:
            continue
        oracle_check.assert_openai(obj, "CreateChatCompletionStreamResponse")
        oracle_check.assert_openai_sdk(obj, stream=True)


def assembled(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Content, reasoning, tool calls and finish reason put together from chunks."""
    text, reasoning, calls, finish = [], [], {}, None
    for obj in objects:
        for choice in obj.get("choices", []):
            delta = choice["delta"]
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] += (call.get("function") or {}).get("name") or ""
                entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"content": "".join(text), "reasoning": "".join(reasoning), "tool_calls": [calls[i] for i in sorted(calls)], "finish_reason": finish}
