"""`gaud-engine validate`: a clean tree passes; each broken spec gives the right `file:line: pointer: message`.

Every case copies the repo's providers.d/, pricing.d/ and routes.yaml into tmp_path, adds a small
test-owned provider `acme` (so the exact lines are known here, whatever happens to the real specs),
breaks ONE thing with a text edit and runs the CLI through click's CliRunner.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import engine
from engine.cli.commands import main
from engine.errors import SpecError, SpecLoadError

from .spec_trees import copy_models

REPO = Path(__file__).resolve().parent.parent

ACME = """\
# A test-owned provider: every broken-spec case edits one line of it.
description: Acme test upstream

api:
  base_url: https://api.acme.test/v1
  env:
    ACME_API_KEY: {secret: true, required: true, description: test key}
  headers:
    Authorization: "Bearer {{ env.ACME_API_KEY }}"
  endpoints:
    chat:
      path: /chat/completions

models:
  acme-large:
    aliases: [acme-large-001]
    context_window: 128000
    max_output_tokens: 8192
    capabilities: [tools]

request:
  map:
    - {to: /model, from: "@model"}
    - {to: /messages, from: /messages}
    - to: /tool_choice
      from: /tool_choice
      op: table
      table:
        auto: {type: auto}
        none: {type: none}
        _default: _omit

response:
  map:
    - {to: "", from: ""}
  finish_reasons:
    stop: stop
    max_tokens: length
    _default: stop

stream:
  framing: sse
  key: none
  done_data: "[DONE]"
  events:
    _default:
      - text: /choices/0/delta/content
      - finish: /choices/0/finish_reason

errors:
  message_from: [/error/message]
  by_message:
    - {pattern: "context length", kind: context_window_exceeded}
  by_status:
    "429": rate_limit
    _default: upstream_5xx
"""

ACME_PRICE = """\
description: Acme test prices
models:
  acme-large:
    input: 1.00
    output: 2.00
    source: https://acme.test/pricing
    as_of: "2025-11-01"
"""


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the repo's spec tree plus the `acme` provider, its price and a route to it.

    The working directory is the tree, so problems are named `providers.d/acme.yaml` etc.
    """
    root = tmp_path / "specs"
    root.mkdir()
    shutil.copytree(REPO / "providers.d", root / "providers.d")
    shutil.copytree(REPO / "pricing.d", root / "pricing.d")
    copy_models(root)
    routes = yaml.safe_load((REPO / "routes.yaml").read_text())
    routes.setdefault("aliases", {})["acme"] = {"candidates": [{"provider": "acme", "model": "acme-large"}]}
    (root / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False, width=1000))
    (root / "providers.d" / "acme.yaml").write_text(ACME)
    (root / "pricing.d" / "acme.yaml").write_text(ACME_PRICE)
    monkeypatch.chdir(root)
    return root


def edit(root: Path, file: str, old: str, new: str, marker: str | None = None) -> int:
    """Replace the one occurrence of `old` by `new` in `file`; return the 1-based line of `marker`
    (default: the first line of `new`) in the edited text."""
    path = root / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {file}"
    text = text.replace(old, new)
    path.write_text(text)
    if marker is None and not new:
        return 0  # a deletion: the caller knows the line from the original text
    return line_of(text, marker if marker is not None else new.splitlines()[0])


def line_of(text: str, marker: str) -> int:
    assert text.count(marker) == 1, f"{marker!r} occurs {text.count(marker)} times"
    return text[: text.index(marker)].count("\n") + 1


def validate(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def assert_one_problem(root: Path, prefix: str, *fragments: str) -> str:
    """Validate `root`: exit 1 and exactly one line, starting with prefix and holding every fragment."""
    code, lines = validate(str(root))
    assert code == 1, lines
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith(prefix), f"{lines[0]!r} does not start with {prefix!r}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# -- clean trees ---------------------------------------------------------------------------------


def test_repo_specs_are_clean() -> None:
    code, lines = validate(str(REPO))
    assert code == 0, "\n".join(lines)
    assert lines and lines[-1].startswith("ok: ")


def test_default_tree_is_the_repos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAUD_SPECS_DIR", str(REPO))
    code, lines = validate()
    assert code == 0, "\n".join(lines)


def test_clean_copy_with_acme_passes(tree: Path) -> None:
    code, lines = validate(str(tree))
    assert code == 0, "\n".join(lines)
    assert re.match(r"ok: \d+ providers, \d+ prices, \d+ aliases", lines[-1])


# -- schema problems -----------------------------------------------------------------------------


def test_unknown_top_level_field(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "description: Acme", "descripton: Acme")
    assert line == 2
    assert_one_problem(
        tree, "providers.d/acme.yaml:2: /descripton: ", "unknown field 'descripton'", "did you mean 'description'?"
    )


def test_unknown_field_deep_in_a_rule(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "      op: table\n", "      op: table\n      when_itme: {has: /tools}\n",
                marker="when_itme")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /request/map/2/when_itme: ", "did you mean 'when_item'?"
    )


def test_wrong_type(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "context_window: 128000", "context_window: big")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /models/acme-large/context_window: ", "integer", "'big'"
    )


def test_unknown_op_suggests_the_closest(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "op: table", "op: tabel")
    got = assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /request/map/2/op: ")
    assert got.endswith("unknown op 'tabel'; did you mean 'table'?")


def test_table_without_default(tree: Path) -> None:
    edit(tree, "providers.d/acme.yaml", "        _default: _omit\n", "")
    line = line_of(ACME, "      table:")
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /request/map/2/table: ", "'_default'")


def test_finish_reason_value_not_allowed(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "max_tokens: length", "max_tokens: lenght")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /response/finish_reasons/max_tokens: ", "'lenght'", "'length'"
    )


def test_unknown_stream_action(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "- finish: /choices", "- finnish: /choices")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /stream/events/_default/1/finnish: ",
        "unknown field 'finnish'", "did you mean 'finish'?",
    )


def test_unknown_stream_framing(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "framing: sse", "framing: sees")
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /stream/framing: ", "'sees'")


def test_bad_error_kind(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", '"429": rate_limit', '"429": rate_limted')
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /errors/by_status/429: ", "did you mean 'rate_limit'?")


# -- problems found while compiling --------------------------------------------------------------


def test_bad_regex_in_errors_by_message(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", 'pattern: "context length"', 'pattern: "context (length"')
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /errors/by_message/0/pattern: ", "regular expression"
    )


def test_jinja_syntax_error_in_header(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", '"Bearer {{ env.ACME_API_KEY }}"', '"Bearer {{ env.ACME_API_KEY }"')
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /api/headers/Authorization: ", "template")


def test_header_naming_an_undeclared_env_var(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", '"Bearer {{ env.ACME_API_KEY }}"', '"Bearer {{ env.ACME_KEY }}"')
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /api/headers/Authorization: ", "undeclared", "ACME_KEY")



def test_required_one_of_naming_an_undeclared_env_var(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "  headers:\n", "  required_one_of:\n    - [ACME_API_KEY, ACME_TOKEN]\n  headers:\n",
                marker="    - [ACME_API_KEY")
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /api/required_one_of/0/1: ", "not declared", "ACME_TOKEN")

# -- names only the engine knows, and pointers ---------------------------------------------------

#: A reply mapped by `parts_to_message` and a request by `messages_to_turns`, for the kind checks.
ACME_PARTS_REPLY = """\
    - to: /choices/0/message
      from: /content
      op: parts_to_message
      classify:
        by: /type
        cases: {text: text, tool_use: tool_call, _default: _ignore}
      fields:
        text: {text: /text}
        tool_call: {id: /id, name: /name, args: /input}
"""
ACME_TURNS = """\
    - to: /messages
      from: /messages
      op: messages_to_turns
      roles: {user: user, assistant: assistant, tool: user, _default: user}
      parts:
        text: {into: content, template: {type: text, text: "@text"}}
        tool_call: {into: content, template: {type: tool_use, id: "@id", name: "@name", input: "@args"}}
        tool_result: {into: content, template: {type: tool_result, tool_use_id: "@id", content: "@text"}}
"""


def with_parts(tree: Path) -> None:
    """acme's request and reply through the part operations (a clean spec)."""
    edit(tree, "providers.d/acme.yaml", "    - {to: /messages, from: /messages}\n", ACME_TURNS)
    edit(tree, "providers.d/acme.yaml", '    - {to: "", from: ""}\n', ACME_PARTS_REPLY)
    assert validate(str(tree))[0] == 0


def test_classifier_kind_unknown_to_parts_to_message(tree: Path) -> None:
    with_parts(tree)
    line = edit(tree, "providers.d/acme.yaml", "tool_use: tool_call,", "tool_use: tool_cal,")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /response/map/0/classify/cases/tool_use: ",
        "unknown part kind 'tool_cal'", "did you mean 'tool_call'?",
    )


def test_classifier_kind_named_by_carry_preceding_is_known(tree: Path) -> None:
    with_parts(tree)
    edit(tree, "providers.d/acme.yaml", "tool_use: tool_call,", "tool_use: tool_call, thinking: thought,")
    edit(tree, "providers.d/acme.yaml", "      fields:\n        text: {text: /text}\n",
         "      id: {carry_preceding: {sig: {kind: thought, from: /signature}}}\n      fields:\n        text: {text: /text}\n")
    assert validate(str(tree))[0] == 0


def test_classifier_kind_without_a_stream_case(tree: Path) -> None:
    line = edit(
        tree, "providers.d/acme.yaml", "      - text: /choices/0/delta/content\n",
        "      - each:\n          in: /choices/0/delta/content\n"
        "          classify: [{kind: reasonin, when: {has: /thinking}}, {kind: text}]\n"
        "          cases: {text: [{text: /text}], reasoning: [{reasoning: /thinking}]}\n",
        marker="classify: [",
    )
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /stream/events/_default/0/each/classify/0/kind: ",
        "unknown part kind 'reasonin'", "did you mean 'reasoning'?",
    )


def test_typo_in_a_parts_key(tree: Path) -> None:
    with_parts(tree)
    line = edit(tree, "providers.d/acme.yaml", "        tool_result: {into", "        tool_reslt: {into")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /request/map/1/parts/tool_reslt: ",
        "unknown content kind 'tool_reslt'", "did you mean 'tool_result'?",
    )


def test_other_openai_content_types_are_parts_keys(tree: Path) -> None:
    with_parts(tree)
    edit(tree, "providers.d/acme.yaml", "        tool_result: {into",
         '        input_audio: {into: content, template: {type: audio, data: "@part/input_audio/data"}}\n'
         "        tool_result: {into")
    assert validate(str(tree))[0] == 0


def test_unknown_context_name(tree: Path) -> None:
    with_parts(tree)
    line = edit(tree, "providers.d/acme.yaml", 'text: {into: content, template: {type: text, text: "@text"}}',
                'text: {into: content, template: {type: text, text: "@txet"}}')
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /request/map/1/parts/text/template/text: ",
        "unknown context value '@txet'", "did you mean '@text'?",
    )


def test_unknown_context_name_in_a_rule(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", '{to: /model, from: "@model"}', '{to: /model, from: "@fromat"}')
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /request/map/0/from: ", "unknown context value '@fromat'", "'@format'",
    )


def test_a_literal_compared_with_may_start_with_at(tree: Path) -> None:
    edit(tree, "providers.d/acme.yaml", "      op: table\n", '      op: table\n      when: {ne: [/user, "@nobody"]}\n')
    assert validate(str(tree))[0] == 0


def test_pointer_without_its_leading_slash(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "{to: /messages, from: /messages}", "{to: /messages, from: messages}")
    got = assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /request/map/1/from: ")
    assert got.endswith("a JSON pointer starts with '/': write '/messages'")
    assert "expected a list" not in got


def test_stream_pointer_without_its_leading_slash(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "- finish: /choices/0/finish_reason", "- finish: choices/0/finish_reason")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /stream/events/_default/1/finish: ",
        "a JSON pointer starts with '/': write '/choices/0/finish_reason'",
    )


def test_placeholder_price_from_spec_new(tree: Path) -> None:
    line = edit(tree, "pricing.d/acme.yaml", "source: https://acme.test/pricing",
                "source: \"TODO: the provider's pricing page\"")
    assert_one_problem(
        tree, f"pricing.d/acme.yaml:{line}: /models/acme-large/source: ",
        "placeholder price for 'acme-large'", "pricing page",
    )


def test_a_zero_output_price_is_not_a_placeholder(tree: Path) -> None:
    edit(tree, "pricing.d/acme.yaml", "output: 2.00", "output: 0")  # an embedding model's real price
    assert validate(str(tree))[0] == 0


# -- extends -------------------------------------------------------------------------------------


def test_extends_cycle(tree: Path) -> None:
    (tree / "providers.d" / "a.yaml").write_text("# a\nextends: b\ndescription: A\n")
    (tree / "providers.d" / "b.yaml").write_text("extends: a\ndescription: B\n")
    # Reported once, at the first file of the cycle, pointing at its `extends`.
    assert_one_problem(tree, "providers.d/a.yaml:2: /extends: ", "cycle", "a -> b -> a")


def test_extends_itself(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "description: Acme", "extends: acme\ndescription: Acme")
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /extends: ", "cycle", "acme -> acme")


def test_extends_unknown_provider(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "description: Acme", "extends: opnai\ndescription: Acme")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /extends: ", "unknown provider 'opnai'", "did you mean 'openai'?"
    )


def test_extends_a_broken_base_is_not_reported_twice(tree: Path) -> None:
    (tree / "providers.d" / "child.yaml").write_text("extends: acme\ndescription: Child\n")
    line = edit(tree, "providers.d/acme.yaml", 'pattern: "context length"', 'pattern: "context (length"')
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /errors/by_message/0/pattern: ")


# -- routes and prices ---------------------------------------------------------------------------


def test_route_to_unknown_provider(tree: Path) -> None:
    line = edit(tree, "routes.yaml", "provider: acme\n", "provider: acmee\n")
    assert_one_problem(
        tree, f"routes.yaml:{line}: /aliases/acme/candidates/0/provider: ",
        "unknown provider 'acmee'", "did you mean 'acme'?",
    )


def test_route_to_unknown_model(tree: Path) -> None:
    line = edit(tree, "routes.yaml", "model: acme-large\n", "model: acme-larg\n")
    assert_one_problem(
        tree, f"routes.yaml:{line}: /aliases/acme/candidates/0/model: ",
        "'acme' has no model 'acme-larg'", "did you mean 'acme-large'?",
    )


def test_route_to_a_model_alias_is_fine(tree: Path) -> None:
    edit(tree, "routes.yaml", "model: acme-large\n", "model: acme-large-001\n")
    assert validate(str(tree))[0] == 0


#: ACME's whole `models:` section, to delete it.
ACME_MODELS = ACME[ACME.index("\nmodels:\n") + 1 : ACME.index("\nrequest:\n") + 1]


def test_route_to_a_provider_without_models_needs_a_price(tree: Path) -> None:
    edit(tree, "providers.d/acme.yaml", ACME_MODELS, "")
    assert validate(str(tree))[0] == 0  # acme-large is priced in pricing.d/acme.yaml
    line = edit(tree, "routes.yaml", "model: acme-large\n", "model: acme-other\n", marker="model: acme-other")
    assert_one_problem(
        tree, f"routes.yaml:{line}: /aliases/acme/candidates/0/model: ",
        "'acme-other' has no price", "pricing.d/", "free: true", "reason",
    )


def test_route_to_a_broken_provider_is_not_reported_again(tree: Path) -> None:
    line = edit(tree, "providers.d/acme.yaml", "description: Acme", "descripton: Acme")
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /descripton: ")


def test_unknown_field_in_routes(tree: Path) -> None:
    line = edit(tree, "routes.yaml", "      model: acme-large\n", "      model: acme-large\n      modle: x\n",
                marker="modle")
    assert_one_problem(
        tree, f"routes.yaml:{line}: /aliases/acme/candidates/0/modle: ", "did you mean 'model'?"
    )


def test_model_without_price(tree: Path) -> None:
    (tree / "pricing.d" / "acme.yaml").unlink()
    line = line_of(ACME, "  acme-large:")
    assert_one_problem(
        tree, f"providers.d/acme.yaml:{line}: /models/acme-large: ", "no price", "pricing.d/", "free: true"
    )


def test_free_model_needs_no_price(tree: Path) -> None:
    (tree / "pricing.d" / "acme.yaml").unlink()
    edit(tree, "providers.d/acme.yaml", "    capabilities: [tools]\n",
         "    capabilities: [tools]\n    free: true\n    reason: a test upstream that charges nothing\n")
    code, lines = validate(str(tree))
    assert code == 0, "\n".join(lines)


def test_free_model_without_a_reason(tree: Path) -> None:
    (tree / "pricing.d" / "acme.yaml").unlink()
    edit(tree, "providers.d/acme.yaml", "    capabilities: [tools]\n", "    capabilities: [tools]\n    free: true\n")
    line = line_of(ACME, "  acme-large:")
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /models/acme-large: ", "'reason'", "costs nothing")


@pytest.mark.parametrize("reason", ['""', '"   "'])
def test_free_model_with_a_blank_reason(tree: Path, reason: str) -> None:
    (tree / "pricing.d" / "acme.yaml").unlink()
    line = edit(tree, "providers.d/acme.yaml", "    capabilities: [tools]\n",
                f"    capabilities: [tools]\n    free: true\n    reason: {reason}\n", marker="reason:")
    assert_one_problem(tree, f"providers.d/acme.yaml:{line}: /models/acme-large/reason: ", "does not match")


def test_free_false_needs_no_reason(tree: Path) -> None:
    edit(tree, "providers.d/acme.yaml", "    capabilities: [tools]\n", "    capabilities: [tools]\n    free: false\n")
    code, lines = validate(str(tree))
    assert code == 0, "\n".join(lines)


def test_pricing_entry_missing_source(tree: Path) -> None:
    edit(tree, "pricing.d/acme.yaml", "    source: https://acme.test/pricing\n", "")
    line = line_of(ACME_PRICE, "  acme-large:")
    # One problem: the model priced by the broken entry is not also reported as unpriced.
    assert_one_problem(tree, f"pricing.d/acme.yaml:{line}: /models/acme-large: ", "'source'")


@pytest.mark.parametrize(
    ("as_of", "fragment"),
    [('"Nov 2025"', "'Nov 2025'"), ("2025-11-01", "quote")],
    ids=["not-a-date", "unquoted-date"],
)
def test_pricing_as_of_format(tree: Path, as_of: str, fragment: str) -> None:
    line = edit(tree, "pricing.d/acme.yaml", 'as_of: "2025-11-01"', f"as_of: {as_of}")
    assert_one_problem(tree, f"pricing.d/acme.yaml:{line}: /models/acme-large/as_of: ", fragment)


def test_pricing_negative_price(tree: Path) -> None:
    line = edit(tree, "pricing.d/acme.yaml", "output: 2.00", "output: -2.00")
    assert_one_problem(tree, f"pricing.d/acme.yaml:{line}: /models/acme-large/output: ")


# -- YAML syntax ---------------------------------------------------------------------------------


def test_yaml_syntax_error_gives_the_parsers_line_and_an_empty_pointer(tree: Path) -> None:
    edit(tree, "providers.d/acme.yaml", "  base_url: https://api.acme.test/v1", "  base_url: [https://api.acme.test/v1")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with pytest.raises(yaml.MarkedYAMLError) as info:
        yaml.load((tree / "providers.d" / "acme.yaml").read_text(), Loader=loader)
    assert info.value.problem_mark is not None
    parser_line = info.value.problem_mark.line + 1
    assert parser_line == 6  # the line after the unclosed `[`
    # The route to acme is not reported too: the file is already known to be broken.
    assert_one_problem(tree, f"providers.d/acme.yaml:{parser_line}: : ", "YAML syntax error", "line 5")


def test_yaml_syntax_error_in_pricing_does_not_flood_missing_prices(tree: Path) -> None:
    edit(tree, "pricing.d/acme.yaml", "  acme-large:\n", "  acme-large:\n   bad: [\n")
    code, lines = validate(str(tree))
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("pricing.d/acme.yaml:") and ": : YAML syntax error" in lines[0]


def test_file_that_is_not_a_mapping(tree: Path) -> None:
    (tree / "providers.d" / "acme.yaml").write_text("- just\n- a list\n")
    assert_one_problem(tree, "providers.d/acme.yaml:1: : ", "mapping")


# -- several problems, output formats, paths -----------------------------------------------------


def break_three(tree: Path) -> list[str]:
    """Three unrelated problems in three files; their expected `file:line: pointer: ` prefixes."""
    a = edit(tree, "providers.d/acme.yaml", "op: table", "op: tabel")
    b = edit(tree, "pricing.d/acme.yaml", 'as_of: "2025-11-01"', 'as_of: "Nov 2025"')
    c = edit(tree, "routes.yaml", "provider: acme\n", "provider: acmee\n")
    return [
        f"providers.d/acme.yaml:{a}: /request/map/2/op: ",
        f"pricing.d/acme.yaml:{b}: /models/acme-large/as_of: ",
        f"routes.yaml:{c}: /aliases/acme/candidates/0/provider: ",
    ]


def test_every_problem_is_reported(tree: Path) -> None:
    prefixes = break_three(tree)
    code, lines = validate(str(tree))
    assert code == 1
    assert len(lines) == 3, "\n".join(lines)
    for prefix in prefixes:
        assert sum(line.startswith(prefix) for line in lines) == 1, (prefix, lines)


def test_format_json(tree: Path) -> None:
    break_three(tree)
    result = CliRunner().invoke(main, ["validate", str(tree), "--format", "json"])
    assert result.exit_code == 1
    problems = json.loads(result.output)
    assert isinstance(problems, list) and len(problems) == 3
    for problem in problems:
        assert set(problem) == {"file", "line", "pointer", "message"}
        assert isinstance(problem["line"], int)
    op = next(p for p in problems if p["pointer"] == "/request/map/2/op")
    assert op["file"] == "providers.d/acme.yaml"
    assert op["line"] == line_of(ACME, "op: table")
    assert op["message"] == "unknown op 'tabel'; did you mean 'table'?"


def test_format_json_clean_tree_is_an_empty_list(tree: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(tree), "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == []


def test_format_github(tree: Path) -> None:
    break_three(tree)
    code, lines = validate(str(tree), "--format", "github")
    assert code == 1
    assert len(lines) == 3
    for line in lines:
        assert re.match(r"^::error file=[^,]+,line=\d+,title=[^:]+::\S", line), line
    op_line = line_of(ACME, "op: table")
    assert (
        f"::error file=providers.d/acme.yaml,line={op_line},title=/request/map/2/op::"
        "unknown op 'tabel'; did you mean 'table'?"
    ) in lines


def test_format_github_escapes_syntax_error_title(tree: Path) -> None:
    edit(tree, "providers.d/acme.yaml", "  base_url: https://api.acme.test/v1", "  base_url: [https://api.acme.test/v1")
    code, lines = validate(str(tree), "--format", "github")
    assert code == 1
    assert lines == [lines[0]] and lines[0].startswith("::error file=providers.d/acme.yaml,line=6,title=/::")


def test_validating_a_single_file(tree: Path) -> None:
    acme = tree / "providers.d" / "acme.yaml"
    assert validate(str(acme))[0] == 0
    line = edit(tree, "providers.d/acme.yaml", "op: table", "op: tabel")
    edit(tree, "pricing.d/acme.yaml", 'as_of: "2025-11-01"', 'as_of: "Nov 2025"')
    code, lines = validate(str(acme))
    assert code == 1
    # Only the given file's problems; the broken price elsewhere in the tree is not this file's.
    assert lines == [f"providers.d/acme.yaml:{line}: /request/map/2/op: unknown op 'tabel'; did you mean 'table'?"]
    code, lines = validate(str(tree / "pricing.d" / "acme.yaml"))
    assert code == 1 and len(lines) == 1 and lines[0].startswith("pricing.d/acme.yaml:")


def test_validating_a_spec_folder(tree: Path) -> None:
    break_three(tree)
    code, lines = validate(str(tree / "pricing.d"))
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("pricing.d/acme.yaml:")


def test_a_path_with_no_specs_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, lines = validate(str(tmp_path / "empty"))
    assert code == 1 and "no spec tree" in lines[0]
    (tmp_path / "stray.yaml").write_text("description: x\n")
    code, lines = validate(str(tmp_path / "stray.yaml"))
    assert code == 1 and "not checked" in lines[0]


def test_file_names_are_relative_to_the_current_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = edit(tree, "providers.d/acme.yaml", "op: table", "op: tabel")
    monkeypatch.chdir(tree.parent)
    code, lines = validate("specs")
    assert code == 1
    assert lines[0].startswith(f"specs/providers.d/acme.yaml:{line}: /request/map/2/op: ")


# -- the library API -----------------------------------------------------------------------------


def test_load_catalog_reports_problems_and_raises(tree: Path) -> None:
    prefixes = break_three(tree)
    catalog = engine.load_catalog(tree)
    assert len(catalog.problems) == 3
    assert all(isinstance(p, SpecError) for p in catalog.problems)
    for prefix in prefixes:
        assert sum(str(p).startswith(prefix) for p in catalog.problems) == 1, (prefix, catalog.problems)
    assert "acme" not in catalog.providers  # a provider with problems is not served
    assert "openai" in catalog.providers  # the others are
    with pytest.raises(SpecLoadError) as info:
        catalog.raise_for_problems()
    assert info.value.problems == catalog.problems
    assert f"{prefixes[0]}unknown op 'tabel'" in str(info.value)


def test_load_catalog_on_a_clean_tree_does_not_raise(tree: Path) -> None:
    catalog = engine.load_catalog(tree)
    assert catalog.problems == []
    catalog.raise_for_problems()
    assert "acme" in catalog.providers and "acme-large" in catalog.pricing
