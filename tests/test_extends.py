"""`extends` with list merging: a child edits an inherited rule or action list by key.

Each case writes a small base spec and a child into a temporary providers.d/ and loads it; the
merged result is read before compiling (`_resolve_extends`), problems as `file:line: pointer:`.
The last tests prove the rewritten shipped specs: each merges to exactly what its old, fully
stated text (tests/extends_fixtures/) merged to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.spec.catalog import Catalog
from engine.spec.loader import _load_dir, _resolve_extends, load_catalog
from engine.spec.yamlfile import read_yaml

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "extends_fixtures"

BASE = """\
description: Base
api:
  base_url: https://api.base.test/v1
  env:
    BASE_API_KEY: {secret: true, required: true, description: test key}
  headers:
    Authorization: "Bearer {{ env.BASE_API_KEY }}"
  endpoints:
    chat: {path: /chat/completions}
request:
  map:
    - {to: "", from: "", op: omit_keys, keys: [model, stream]}
    - {to: /model, from: "@model"}
    - {to: /stream, const: true, when: {eq: ["@stream", true]}}
    - {to: /stream_options/include_usage, const: true, when: {eq: ["@stream", true]}}
response:
  map:
    - {to: /x, from: /a}
    - {to: /x, from: /b}
  finish_reasons: {stop: stop, _default: stop}
stream:
  framing: sse
  done_data: "[DONE]"
  events:
    _default:
      - raise: {message: /error/message, when: {has: /error}}
      - text: /choices/0/delta/content
      - usage: /usage
      - finish: /choices/0/finish_reason
errors:
  by_status: {"429": rate_limit, _default: upstream_5xx}
"""


def load(tmp_path: Path, child: str, base: str = BASE) -> tuple[dict[str, Any] | None, list[str]]:
    """The child spec merged into the base, and every problem of the tree as `file:line: pointer: message`."""
    folder = tmp_path / "providers.d"
    folder.mkdir(exist_ok=True)
    (folder / "base.yaml").write_text(base)
    (folder / "child.yaml").write_text(child)
    catalog = load_catalog(tmp_path)
    problems = [str(p) for p in catalog.problems]
    docs = _load_dir(Catalog(root=tmp_path), "providers.d", "provider")
    merged = _resolve_extends("child", docs, []) if "child" in docs else None
    return merged, problems


def child(section: str) -> str:
    return "extends: base\ndescription: Child\n" + section


def test_a_rule_replaces_the_inherited_rule_with_its_to(tmp_path: Path) -> None:
    merged, problems = load(tmp_path, child(
        "request:\n  map:\n    merge:\n      - {to: /model, const: fixed}\n"))
    assert problems == []
    assert merged is not None
    assert [r["to"] for r in merged["request"]["map"]] == ["", "/model", "/stream", "/stream_options/include_usage"]
    assert merged["request"]["map"][1] == {"to": "/model", "const": "fixed"}
    # The base is untouched (another child sees the original list).
    base, _ = load(tmp_path, child("description: Other\n"))
    assert base is not None and base["request"]["map"][1] == {"to": "/model", "from": "@model"}


def test_remove_and_add_before_and_after(tmp_path: Path) -> None:
    merged, problems = load(tmp_path, child(
        "request:\n  map:\n    merge:\n"
        "      - {remove: /stream_options/include_usage}\n"
        "      - {add: [{to: /max_tokens, from: /max_completion_tokens}], after: /model}\n"
        "      - {add: [{to: /first, const: 1}], before: \"\"}\n"
        "      - {add: [{to: /last, const: 2}, {to: /later, const: 3}]}\n"))
    assert problems == []
    assert merged is not None
    assert [r["to"] for r in merged["request"]["map"]] == ["/first", "", "/model", "/max_tokens", "/stream", "/last", "/later"]
    compiled = load_catalog(tmp_path).providers["child"]
    assert compiled is not None


def test_a_repeated_to_is_matched_by_position(tmp_path: Path) -> None:
    merged, problems = load(tmp_path, child(
        "response:\n  map:\n    merge:\n      - {to: /x, from: /a}\n      - {to: /x, from: /c}\n"))
    assert problems == []
    assert merged is not None
    assert merged["response"]["map"] == [{"to": "/x", "from": "/a"}, {"to": "/x", "from": "/c"}]
    # Removing the n-th: the first removal takes the first, the second the second.
    merged, problems = load(tmp_path, child("response:\n  map:\n    merge:\n      - {remove: /x}\n"))
    assert problems == [] and merged is not None
    assert merged["response"]["map"] == [{"to": "/x", "from": "/b"}]


def test_stream_actions_merge_by_name(tmp_path: Path) -> None:
    merged, problems = load(tmp_path, child(
        "stream:\n  events:\n    _default:\n      merge:\n"
        "        - {remove: raise}\n"
        "        - {text: /choices/0/delta/text}\n"
        "        - {add: [{usage: /x_usage}], before: usage}\n"
        "        - {add: [done]}\n"))
    assert problems == []
    assert merged is not None
    assert merged["stream"]["events"]["_default"] == [
        {"text": "/choices/0/delta/text"}, {"usage": "/x_usage"}, {"usage": "/usage"},
        {"finish": "/choices/0/finish_reason"}, "done",
    ]
    assert merged["stream"]["framing"] == "sse"  # the rest of the section is still inherited


def test_a_plain_list_still_replaces(tmp_path: Path) -> None:
    merged, problems = load(tmp_path, child("request:\n  map:\n    - {to: /model, from: \"@model\"}\n"))
    assert problems == []
    assert merged is not None and merged["request"]["map"] == [{"to": "/model", "from": "@model"}]


def test_a_list_not_opted_in_cannot_merge(tmp_path: Path) -> None:
    _, problems = load(tmp_path, child(
        "errors:\n  by_message:\n    merge:\n      - {pattern: x, kind: rate_limit}\n"))
    assert len(problems) == 1
    assert problems[0].startswith("providers.d/child.yaml:4: /errors/by_message: expected a list")


@pytest.mark.parametrize(("edit", "pointer", "words"), [
    ("- {to: /modle, const: x}", "/request/map/merge/0", ["cannot replace to '/modle'", "did you mean '/model'?", "add: [...]"]),
    ("- {remove: /stream_option/include_usage}", "/request/map/merge/0/remove",
     ["cannot remove to '/stream_option/include_usage'", "did you mean '/stream_options/include_usage'?"]),
    ("- {to: /model, const: a}\n      - {to: /model, const: b}", "/request/map/merge/1",
     ["cannot replace item 2 with to '/model': the parent's list has 1"]),
    ("- {add: [{to: /y, const: 1}], after: /strem}", "/request/map/merge/0/after",
     ["after to '/strem': no such item in the list", "did you mean '/stream'?"]),
])
def test_an_edit_that_matches_nothing_is_a_load_error(tmp_path: Path, edit: str, pointer: str, words: list[str]) -> None:
    text = child("request:\n  map:\n    merge:\n      " + edit + "\n")
    merged, problems = load(tmp_path, text)
    assert merged is None
    line = text.splitlines().index("      " + edit.splitlines()[-1].strip()) + 1 if "\n" in edit else 6
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"providers.d/child.yaml:{line}: {pointer}: "), problems
    for word in words:
        assert word in problems[0]
    assert "child" not in load_catalog(tmp_path).providers


def test_an_action_removal_that_matches_nothing(tmp_path: Path) -> None:
    _, problems = load(tmp_path, child("stream:\n  events:\n    _default:\n      merge:\n        - {remove: reasonin}\n"))
    assert problems == [("providers.d/child.yaml:7: /stream/events/_default/merge/0/remove: cannot remove action 'reasonin': "
                        "no item of the parent's list has it")]


def test_merge_with_nothing_inherited_is_a_load_error(tmp_path: Path) -> None:
    # An event the parent does not have...
    _, problems = load(tmp_path, child("stream:\n  events:\n    tick:\n      merge: [{add: [ignore]}]\n"))
    assert len(problems) == 1
    assert problems[0].startswith("providers.d/child.yaml:5: /stream/events/tick: `merge` edits an inherited list")
    # ...and a spec that extends nothing (its child is not reported again).
    base = BASE.split("request:")[0] + 'request:\n  map:\n    merge: [{add: [{to: /model, from: "@model"}]}]\n'
    _, problems = load(tmp_path, child("description: Child\n"), base=base)
    line = base.splitlines().index("  map:") + 1
    assert problems == [(f"providers.d/base.yaml:{line}: /request/map: `merge` edits an inherited list, but there is "
                        "none here to edit; write the list itself")]


def test_a_bad_merge_item_is_a_schema_error(tmp_path: Path) -> None:
    _, problems = load(tmp_path, child(
        "request:\n  map:\n    merge:\n      - {remove: /model, after: /stream}\n"))
    assert problems == [("providers.d/child.yaml:6: /request/map/merge/0: `remove` deletes an item; `add`, `before` "
                        "and `after` go in an edit of their own")]
    _, problems = load(tmp_path, child("request:\n  map:\n    merge:\n      - {add: [{to: /a, const: 1}], after: /model, before: /model}\n"))
    assert problems == ["providers.d/child.yaml:6: /request/map/merge/0: give `before` or `after`, not both"]
    # Added items are checked against the list's item schema like any other.
    _, problems = load(tmp_path, child("stream:\n  events:\n    _default:\n      merge:\n        - {add: [{txt: /a}]}\n"))
    assert problems == ["providers.d/child.yaml:7: /stream/events/_default/merge/0/add/0/txt: unknown field 'txt'; did you mean 'text'?"]
    _, problems = load(tmp_path, child("request:\n  map:\n    merge:\n      - {to: /model, form: x}\n"))
    assert len(problems) == 1 and "unknown field 'form'; did you mean 'from'?" in problems[0], problems


# -- the shipped specs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.yaml")))
def test_a_rewritten_spec_merges_to_its_old_full_text(name: str) -> None:
    """The spec as shipped and its old fully-stated text (kept in tests/extends_fixtures/) resolve
    to the same spec, `models` aside (model data moves on its own)."""
    catalog = Catalog(root=REPO)
    docs = _load_dir(catalog, "providers.d", "provider")
    assert catalog.problems == []
    problems: list[Any] = []
    now = _resolve_extends(name, docs, problems)
    old_doc, problem = read_yaml(FIXTURES / f"{name}.yaml")
    assert problem is None and old_doc is not None
    before = _resolve_extends(name, {**docs, name: old_doc}, problems)
    assert problems == []
    assert now is not None and before is not None
    now.pop("models", None), now.pop("catalog", None)
    before.pop("models", None), before.pop("catalog", None)
    assert now == before
    # It does use list merging: the old text restated what the new one edits.
    assert "merge:" in (REPO / "providers.d" / f"{name}.yaml").read_text()
