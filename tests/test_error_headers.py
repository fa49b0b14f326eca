"""Error classification from reply headers (`@headers/<name>` in `errors.code_from`, `message_from`,
`retry_after_from`) as well as from the body."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from engine.errors import GatewayError
from engine.spec.provider import ErrorTable

from .spec_trees import copy_models

ROOT = Path(__file__).resolve().parent.parent

TABLE = ErrorTable({
    "code_from": ["@headers/x-amzn-errortype", "/error/code"],
    "message_from": ["/message", "@headers/x-error-message"],
    "retry_after_from": ["@headers/x-retry-in", "/error/retry_after"],
    "by_message": [{"pattern": "too many tokens", "kind": "context_window_exceeded"}],
    "by_code": {"ThrottlingException": "rate_limit", "AccessDeniedException": "permission", "content_filter": "content_filter"},
    "by_status": {"4xx": "invalid_request", "_default": "upstream_5xx"},
})


@pytest.mark.parametrize(("status", "body", "headers", "kind"), [
    # The header carries the type, qualified after a colon as AWS does; the body says nothing useful.
    (400, {"message": "Rate exceeded"}, {"x-amzn-ErrorType": "ThrottlingException:http://internal.example/"}, "rate_limit"),
    (403, None, {"X-Amzn-ErrorType": "AccessDeniedException"}, "permission"),
    # No header: the body's code is the fallback source.
    (400, {"error": {"code": "content_filter"}}, {}, "content_filter"),
    # The header wins over the body when it is listed first.
    (400, {"error": {"code": "content_filter"}}, {"x-amzn-errortype": "ThrottlingException"}, "rate_limit"),
    # An unknown code falls through to the status; so does a code that only shares a prefix.
    (400, None, {"x-amzn-errortype": "ThrottlingExceptionX"}, "invalid_request"),
    (500, None, {"x-amzn-errortype": "Nope:ThrottlingException"}, "upstream_5xx"),
    # A message in a header is matched by `by_message` like one in the body.
    (400, None, {"x-error-message": "Input has too many tokens"}, "context_window_exceeded"),
])
def test_kind_from_headers_and_body(status: int, body: Any, headers: dict[str, str], kind: str) -> None:
    assert TABLE.kind_of(status, body, CIMultiDict(headers))[0] == kind


def test_headers_absent_is_the_body_only_table() -> None:
    assert TABLE.kind_of(429, {"error": {"code": "ThrottlingException"}}) == ("rate_limit", "")
    assert TABLE.kind_of(None, None) == ("upstream_5xx", "")


def test_retry_delay_from_a_header_then_the_body() -> None:
    assert TABLE.retry_after(None, {"X-Retry-In": "1.5s"}) == 1.5
    assert TABLE.retry_after({"error": {"retry_after": 7}}, {}) == 7.0
    assert TABLE.retry_after({"error": {"retry_after": 7}}, {"x-retry-in": "soon"}) == 7.0
    assert TABLE.retry_after(None, None) is None


def test_spec_classifies_a_reply_by_its_header(tmp_path) -> None:
    """Through a loaded spec and the gateway's own reply classifier, with aiohttp-style headers."""
    from engine.pipeline.translate import error_from_reply
    from engine.spec.loader import load_catalog
    from engine.spec.models import resolve_model

    root = tmp_path / "specs"
    (root / "providers.d").mkdir(parents=True)
    shutil.copy(ROOT / "providers.d" / "openai.yaml", root / "providers.d" / "openai.yaml")
    shutil.copytree(ROOT / "pricing.d", root / "pricing.d")
    copy_models(root)
    (root / "providers.d" / "hdr.yaml").write_text(
        "extends: openai\ndescription: header-classified errors\napi:\n  base_url: https://hdr.test/v1\n"
        "errors:\n  code_from: ['@headers/x-error-kind', /error/code]\n  by_code: {Busy: overloaded}\n"
        "models:\n  m1: {context_window: 1000, max_output_tokens: 100, capabilities: [], free: true, reason: test}\n"
    )
    catalog = load_catalog(root, environ={})
    catalog.raise_for_problems()
    target = resolve_model(catalog, "hdr/m1")[0]
    error = error_from_reply(target, 500, b'{"error": {"message": "try later"}}', CIMultiDict({"X-Error-Kind": "Busy"}))
    assert isinstance(error, GatewayError) and error.kind == "overloaded"
    assert error_from_reply(target, 500, b"{}", CIMultiDict()).kind == "upstream_5xx"
