"""A provider with its own wire format, added purely as a YAML spec in a temporary directory.

Ollama's native /api/chat: `messages` with per-message `images`, `options.num_predict`,
`done_reason`, `prompt_eval_count`/`eval_count`, NDJSON streaming. No engine change.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import openai
import pytest

from engine import build_request, completion_from_reply, load_catalog, resolve_model

from .conftest import ROOT, start_gateway
from .oracles import oracle_check

OLLAMA_SPEC = """\
description: Ollama native chat API (/api/chat)
api:
  base_url: http://127.0.0.1:11434
  env:
    OLLAMA_BASE_URL: {base_url: true}
  endpoints:
    chat: {path: /api/chat}
models:
  llama3.2:
    context_window: 131072
    max_output_tokens: 8192
    capabilities: [tools, vision]
    free: true
    reason: a local server
request:
  map:
    - {to: /model, from: "@model"}
    - to: /messages
      from: /messages
      op: messages_to_turns
      roles: {system: system, developer: system, user: user, assistant: assistant, tool: tool, _default: user}
      turn: {role: "@role"}
      parts:
        text: {into: content, mode: join, template: "@text"}
        image_data: {into: images, template: "@data"}
        tool_call: {into: tool_calls, template: {function: {name: "@name", arguments: "@args"}}}
        tool_result: {into: ".", template: {content: "@text", tool_name: "@call/name"}}
    # Ollama streams unless told not to.
    - {to: /stream, const: false, when: {ne: ["@stream", true]}}
    - {to: /stream, const: true, when: {eq: ["@stream", true]}}
    - {to: /options/num_predict, from: [/max_completion_tokens, /max_tokens]}
    - {to: /options/temperature, from: /temperature}
    - {to: /options/stop, from: /stop, op: as_list}
response:
  map:
    - {to: /model, from: /model}
    - {to: /choices/0/message/content, from: /message/content}
    - {to: /choices/0/finish_reason, from: /done_reason}
  usage:
    from: ""
    map:
      - {to: /prompt_tokens, from: /prompt_eval_count}
      - {to: /completion_tokens, from: /eval_count}
  finish_reasons: {stop: stop, length: length, _default: stop}
stream:
  framing: ndjson
  key: none
  events:
    _default:
      - meta: {model: /model}
      - text: /message/content
      - finish: /done_reason
      - usage: ""
errors:
  message_from: [/error]
  by_status: {"404": not_found, "5xx": upstream_5xx, _default: invalid_request}
"""

REPLY = {
    "model": "llama3.2",
    "created_at": "2026-01-01T00:00:00Z",
    "message": {"role": "assistant", "content": "Lichens are fungi and algae together."},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 26,
    "eval_count": 9,
}


@pytest.fixture
def spec_tree(tmp_path: Path) -> Path:
    (tmp_path / "providers.d").mkdir()
    (tmp_path / "providers.d" / "ollama.yaml").write_text(OLLAMA_SPEC)
    return tmp_path


def test_spec_only_provider_translates_request_and_reply(spec_tree):
    catalog = load_catalog(spec_tree, environ={})
    assert catalog.problems == []
    target = resolve_model(catalog, "ollama/llama3.2")[0]
    request = build_request(
        target,
        {
            "model": "ollama/llama3.2",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                              {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            ],
            "max_tokens": 64,
            "stop": "\n\n",
        },
        stream=False,
    )
    assert request.url == "http://127.0.0.1:11434/api/chat"
    assert request.body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": ["AAAA"]},
        ],
        "stream": False,
        "options": {"num_predict": 64, "stop": ["\n\n"]},
    }
    completion = completion_from_reply(target, REPLY, requested_model="ollama/llama3.2")
    oracle_check.assert_openai(completion, "CreateChatCompletionResponse")
    assert completion["choices"][0]["message"]["content"] == REPLY["message"]["content"]
    assert completion["usage"] == {"prompt_tokens": 26, "completion_tokens": 9, "total_tokens": 35}


def test_spec_only_provider_served_end_to_end(spec_tree, upstream, tmp_path):
    running = start_gateway({"GAUD_SPECS_DIR": str(spec_tree), "OLLAMA_BASE_URL": upstream.url, "GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}"}, tmp_path / "gw.log")
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        upstream.reply(json=REPLY)
        reply = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].message.content == REPLY["message"]["content"]
        assert upstream.last().path == "/api/chat" and upstream.last().body["stream"] is False

        lines = [
            {"model": "llama3.2", "message": {"role": "assistant", "content": "Lich"}, "done": False},
            {"model": "llama3.2", "message": {"role": "assistant", "content": "ens."}, "done": False},
            {**REPLY, "message": {"role": "assistant", "content": ""}},
        ]
        body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        upstream.reply(frames=[body[:30], body[30:77], body[77:]], content_type="application/x-ndjson")
        chunks = list(client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True, stream_options={"include_usage": True}
        ))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Lichens."
        assert chunks[-1].usage.completion_tokens == 9
    finally:
        running.process.terminate()
        running.process.wait(10)


def test_engine_names_no_provider():
    """The one law: what differs between providers lives in providers.d/, never in engine/."""
    names = r"\b(anthropic|claude|gemini|copilot|mistral|ollama|deepseek|groq|cohere|bedrock|vertex|openrouter)\b"
    found = subprocess.run(
        ["grep", "-rniE", names, str(ROOT / "engine"), "--include=*.py"], capture_output=True, text=True, check=False
    ).stdout  # grep exits 1 when nothing matches, which is the pass
    assert found == ""
