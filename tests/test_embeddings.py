"""POST /v1/embeddings through the spec machinery, with the openai SDK, for two provider formats."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest


def test_openai_format_embeddings(client, upstream):
    upstream.reply_fixture("openai", "embeddings.json")
    result = client.embeddings.create(model="text-embedding-3-small", input=["tide", "harbour"])
    assert [d.index for d in result.data] == [0, 1]
    # The SDK asks for base64 (float32): the gateway asks upstream for floats and packs them.
    assert result.data[0].embedding[:2] == pytest.approx([0.0023, -0.0091], rel=1e-6)
    assert result.usage.prompt_tokens == 9
    sent = upstream.last()
    assert sent.path == "/v1/embeddings"
    assert sent.body == {"model": "text-embedding-3-small", "input": ["tide", "harbour"], "encoding_format": "float"}


def test_gemini_batch_embeddings(client, upstream):
    upstream.reply_fixture("gemini", "batch_embed_contents.json")
    result = client.embeddings.create(model="gemini-embedding-001", input=["tide", "harbour"], dimensions=4)
    assert len(result.data) == 2
    assert result.data[1].embedding == pytest.approx([0.055, -0.066, 0.077, -0.088], rel=1e-6)
    assert result.model == "gemini-embedding-001"
    assert result.usage.prompt_tokens > 0  # estimated: the provider reports none
    sent = upstream.last()
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.body == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "tide"}]}, "outputDimensionality": 4},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "harbour"}]}, "outputDimensionality": 4},
    ]}


def test_single_string_input_and_base64(gateway, upstream):
    upstream.reply(json={"embeddings": [{"values": [0.5, -1.0]}]})
    response = httpx.post(f"{gateway.url}/v1/embeddings",
                          json={"model": "gemini-embedding-001", "input": "tide " * 2000, "encoding_format": "base64"})
    assert response.status_code == 200
    body = response.json()
    assert struct.unpack("<2f", base64.b64decode(body["data"][0]["embedding"])) == (0.5, -1.0)
    assert float(response.headers["x-gaud-cost"]) > 0
    assert len(upstream.last().body["requests"]) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "text-embedding-3-small"}, "input"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": ["ok", ""]}, "input[1]"),
        ({"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "gemini-embedding-001", "input": [[1, 2, 3]]}, "input"),
        ({"model": "claude-sonnet-4", "input": "x"}, "model"),
    ],
)
def test_bad_embeddings_requests(gateway, upstream, body, param):
    response = httpx.post(f"{gateway.url}/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream.requests == []


def test_embeddings_upstream_error(client, upstream):
    upstream.reply_fixture("gemini", "error_429_resource_exhausted.json")
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="gemini-embedding-001", input="tide")


@pytest.mark.parametrize("provider", ["deepseek", "groq"])
def test_an_extending_spec_can_drop_inherited_embeddings(catalog, provider):
    from engine.errors import InvalidRequest
    from engine.pipeline.embeddings import build_embeddings_request, validate_embeddings_request
    from engine.spec.models import resolve_model

    spec = catalog.providers[provider]
    assert spec.embeddings is None and "embeddings" not in spec.endpoints
    target = resolve_model(catalog, f"{provider}/{next(iter(spec.models))}")[0]
    with pytest.raises(InvalidRequest) as info:
        build_embeddings_request(target, validate_embeddings_request({"model": "x", "input": "tide"}))
    assert "does not serve embeddings" in info.value.message


def test_embeddings_audit_line_carries_the_response_request_id(gateway, upstream):
    upstream.reply_fixture("openai", "embeddings.json")
    response = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["tide", "harbour"]})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    logs = gateway.logs_with(request_id)
    assert any(request_id in line and '"gaud.request"' in line for line in logs.splitlines())
