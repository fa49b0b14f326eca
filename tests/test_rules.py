"""The CEL facade: one probe table, run on every backend, must give the same answers."""

from __future__ import annotations

import pytest

from engine.spec.rules import BACKENDS, RuleCompileError, RuleError, compile_rule, sample_activation

ACT = {
    "request": {"model": "smart", "n_messages": 3, "n_tools": 2, "estimated_tokens": 200000, "stream": True,
                "user": "alice", "tags": ["batch", "eu"]},
    "attempt": 2,
    "deployment": {"provider": "anthropic", "model": "claude-sonnet-4-20250514", "name": "anthropic/claude-sonnet-4-20250514"},
    "response": {"status": 529},
    "error": {"kind": "overloaded", "status": 529, "retry_after": 0.0},
}

PROBES = [
    ('error.kind in ["rate_limit", "timeout", "overloaded", "upstream_5xx"] && attempt <= 3', True),
    ("attempt <= 1", False),
    ("request.estimated_tokens > 150000", True),
    ("request.n_tools > 0 && request.stream", True),
    ('"eu" in request.tags', True),
    ('"us" in request.tags', False),
    ('request.user == "alice" || request.user == "bob"', True),
    ('deployment.provider == "anthropic" && response.status == 529', True),
    ('error.retry_after > 0.0', False),
    ('has(error.kind)', True),
    ('size(request.tags) == 2', True),
    ('request.model.startsWith("sm")', True),
    ('!(error.kind == "rate_limit")', True),
]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize(("expression", "expected"), PROBES)
def test_backends_agree(backend, expression, expected):
    assert compile_rule(expression, backend).evaluate(ACT) is expected


def test_both_backends_are_installed():
    assert set(BACKENDS) == {"fast", "reference"}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("bad", ["error.kind ==", "unknown_var > 1", "attempt + 1", "request.model"])
def test_bad_rules_fail_at_compile_time(backend, bad):
    with pytest.raises(RuleCompileError):
        compile_rule(bad, backend)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_run_time_error_is_a_rule_error(backend):
    rule = compile_rule("request.tags[0] == \"x\"", backend)
    act = sample_activation()
    act["request"]["tags"] = []
    with pytest.raises(RuleError):
        rule.evaluate(act)
    assert rule.matches(act) is False
    assert rule.matches(act, on_error=True) is True
