"""The gateway uses a provider's short-lived exchanged token (spec `api.auth.exchange`) on chat
requests, exchanging once and reusing it."""

from __future__ import annotations

import shutil
import time

import httpx

from .conftest import ROOT, start_gateway
from .spec_trees import copy_models

SPEC = """\
extends: openai
description: An OpenAI-compatible upstream that wants a short-lived token
api:
  env:
    OPENAI_API_KEY: null
    OPENAI_BASE_URL: null
    ACME_LONG_TOKEN: {secret: true, required: true}
    ACME_BASE_URL: {base_url: true}
  headers:
    Authorization: "Bearer {{ env.ACME_LONG_TOKEN }}"
  auth:
    type: api_key
    env: ACME_LONG_TOKEN
    in: bearer
    exchange:
      url: "EXCHANGE_URL"
      method: GET
      headers: {Authorization: "token {{ token }}"}
      token_field: /token
      expires_at_field: /expires_at
    headers:
      Authorization: "Bearer {{ credentials.access_token }}"
models:
  acme-1: {context_window: 8000, max_output_tokens: 1000, capabilities: [tools], free: true, reason: test model}
"""


def test_chat_requests_carry_the_exchanged_token(upstream, tmp_path):
    tree = tmp_path / "specs"
    shutil.copytree(ROOT / "providers.d", tree / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tree / "pricing.d")
    copy_models(tree)
    (tree / "providers.d" / "acme.yaml").write_text(SPEC.replace("EXCHANGE_URL", f"{upstream.url}/exchange"))
    env = {"ACME_LONG_TOKEN": "long-lived-secret-xyz", "ACME_BASE_URL": upstream.url, "GAUD_SPECS_DIR": str(tree),
           "GAUD_AUTH_ENABLED": "false"}
    from cryptography.fernet import Fernet

    env["GAUD_SECRET_KEY"] = Fernet.generate_key().decode()
    running = start_gateway(env, tmp_path / "gw.log")
    try:
        upstream.reply(json={"token": "short-lived-abc", "expires_at": int(time.time()) + 3600})
        for _ in range(2):
            upstream.reply_fixture("openai", "chat_completion_text.json")
            reply = httpx.post(f"{running.url}/v1/chat/completions",
                               json={"model": "acme/acme-1", "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200, reply.text
    finally:
        running.process.terminate()
        running.process.wait(10)
    exchange, first, second = upstream.requests
    assert exchange.path == "/exchange" and exchange.headers["Authorization"] == "token long-lived-secret-xyz"
    assert first.headers["Authorization"] == "Bearer short-lived-abc"
    assert second.headers["Authorization"] == "Bearer short-lived-abc"  # reused, not exchanged again
    assert "short-lived-abc" not in running.logs() and "long-lived-secret-xyz" not in running.logs()
