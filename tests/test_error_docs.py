"""docs/errors.md lists every error kind with the status, type and code a client really gets, and
the defaults it states are routes.yaml's, the breaker's and the spec schema's."""

from __future__ import annotations

import json
import re

import yaml

from engine.errors import ERROR_KINDS, Busy, GatewayError, InternalError, Shutdown, error_for_kind
from engine.pipeline.gateway import BREAKER_KINDS

from .conftest import ROOT


def rows() -> dict[str, list[str]]:
    table = {}
    for line in (ROOT / "docs" / "errors.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 9:
            table[cells[0].strip("`")] = cells[1:]
    return table


def error_of(kind: str) -> GatewayError:
    own = {"internal_error": InternalError(), "shutdown": Shutdown("stopped"), "busy": Busy("full")}
    return own.get(kind) or error_for_kind(kind, "x")


def test_every_kind_is_documented_with_what_a_client_gets() -> None:
    table = rows()
    assert set(table) == {*ERROR_KINDS, "internal_error", "shutdown", "busy"}
    for kind, (status, type_, code, *_rest) in table.items():
        error = error_of(kind)
        assert error.kind == kind
        if status != "last error's":
            assert int(status) == error.status, kind
        assert type_ == error.type, kind
        assert code.split(",")[0] in (error.code or "model_not_allowed", "names the problem"), kind


def test_the_documented_defaults_are_the_shipped_ones() -> None:
    defaults = yaml.safe_load((ROOT / "routes.yaml").read_text())["defaults"]
    retried = set(re.findall(r'"(\w+)"', defaults["retry"]))
    fallback = set(re.findall(r'"(\w+)"', defaults["fallback"]))
    schema = json.loads((ROOT / "schemas" / "provider.schema.json").read_text())
    classifiable = set(schema["$defs"]["error_kind"]["enum"])
    for kind, (_s, _t, _c, retry, falls_back, breaker, spec, _why) in rows().items():
        if kind == "all_failed":
            continue
        assert retry.startswith("yes") == (kind in retried), kind
        assert falls_back.startswith("yes") == (kind in fallback), kind
        assert (breaker == "yes") == (kind in BREAKER_KINDS), kind
        assert (spec == "yes") == (kind in classifiable), kind
