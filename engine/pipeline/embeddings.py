"""OpenAI embeddings <-> a provider, through the spec's `embeddings:` section. No I/O here.

The engine canonicalises the request first (`input` is always a list) and completes the reply
(`object`, `index`, `model`, usage estimated when the provider reports none, base64 encoding when
the client asked for it), so specs only say what differs.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from ..errors import InvalidRequest, ResponseParsing
from ..pointer import get
from ..spec.models import Target
from .tokens import estimate_input_tokens
from .translate import post_request
from .upstream import UpstreamRequest

__all__ = ["build_embeddings_request", "embeddings_from_reply", "validate_embeddings_request"]


def validate_embeddings_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param="body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="missing_required_parameter")
    raw = body.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
    if len(items) > 2048:
        raise InvalidRequest("'input' has more than 2048 entries.", param="input")
    for i, item in enumerate(items):
        tokens = isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        if not (isinstance(item, str) and item) and not (tokens and item) and not (isinstance(item, int) and not isinstance(item, bool)):
            raise InvalidRequest(f"input[{i}] must be a non-empty string or an array of token ids.", param=f"input[{i}]")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be float or base64.", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    if all(isinstance(i, int) for i in items):  # one array of token ids
        items = [items]
    return {**body, "input": items}


def build_embeddings_request(target: Target, body: dict[str, Any]) -> UpstreamRequest:
    spec = target.provider
    if spec.embeddings is None or "embeddings" not in spec.endpoints:
        raise InvalidRequest(f"{spec.name} does not serve embeddings.", param="model", code="model_not_supported")
    if any(not isinstance(i, str) for i in body["input"]) and spec.embeddings.token_input is False:
        raise InvalidRequest(f"{spec.name} takes text input only, not token ids.", param="input")
    ctx = {"model": target.model, "body": body, "provider": spec.name}
    wanted_base64 = body.get("encoding_format") == "base64"
    mapped = spec.embeddings.request_mapper({**body, "encoding_format": "float"} if wanted_base64 else body, ctx)
    return post_request(target, "embeddings", mapped, stream=False)


def _pack(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_from_reply(target: Target, raw: Any, body: dict[str, Any]) -> dict[str, Any]:
    spec = target.provider
    assert spec.embeddings is not None
    if not isinstance(raw, dict):
        raise ResponseParsing(f"{spec.name} returned an embeddings reply that is not a JSON object")
    out = spec.embeddings.reply_mapper(raw, {"model": target.model, "body": body})
    data = out.get("data")
    if not isinstance(data, list) or len(data) != len(body["input"]):
        raise ResponseParsing(f"{spec.name} returned {len(data) if isinstance(data, list) else 'no'} embeddings "
                              f"for {len(body['input'])} inputs")
    for i, item in enumerate(data):
        vector = item.get("embedding")
        if not isinstance(vector, (list, str)):
            raise ResponseParsing(f"{spec.name} returned an embedding without values")
        item["object"], item["index"] = "embedding", i
        if body.get("encoding_format") == "base64" and isinstance(vector, list):
            item["embedding"] = _pack(vector)
    raw_usage = get(raw, spec.embeddings.usage_from)
    usage = spec.embeddings.usage_mapper(raw_usage, {}) if isinstance(raw_usage, dict) else {}
    prompt = usage.get("prompt_tokens") or estimate_input_tokens(body["input"])
    return {
        "object": "list",
        "data": data,
        "model": out.get("model") or target.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": usage.get("total_tokens") or prompt},
    }
