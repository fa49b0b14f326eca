"""The spec author's kit: `spec record` (against the fake upstream only), `spec new`, `spec manual`,
and the tutorial docs/adding-a-provider.md, whose marked commands are run here as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engine.cli.commands import main
from engine.cli.manual import generate_manual
from engine.cli.scaffold import ScaffoldError, scaffold
from engine.spec.loader import load_catalog

from .conftest import TEST_SECRETS
from .fakes import FakeUpstream
from .spec_trees import copy_models

ROOT = Path(__file__).resolve().parent.parent


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "specs"
    shutil.copytree(ROOT / "providers.d", tree / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tree / "pricing.d")
    copy_models(tree)
    shutil.copy(ROOT / "routes.yaml", tree / "routes.yaml")
    return tree


def _files(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): p.read_text() for p in sorted(tree.rglob("*")) if p.is_file()}


# -- spec record -----------------------------------------------------------------------------------
def test_record_stores_exchanges_without_credentials(tmp_path: Path, upstream: FakeUpstream) -> None:
    secret = TEST_SECRETS["OPENAI_API_KEY"]
    tree = _tree(tmp_path)
    echoed = {  # an upstream that quotes the key back must not get it written either
        "id": "chatcmpl-rec0001", "object": "chat.completion", "created": 1767225600, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"The sea is salty; your key {secret} works."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 15, "completion_tokens": 12, "total_tokens": 27},
    }
    upstream.reply(json=echoed)
    upstream.reply_fixture("openai", "chat_completion_tool_calls_parallel.json")
    upstream.reply_fixture("openai", "stream_include_usage.sse")
    env = {"OPENAI_API_KEY": secret, "OPENAI_BASE_URL": f"{upstream.url}/v1"}

    result = CliRunner().invoke(main, ["spec", "record", "--provider", "openai", "--specs", str(tree)], env=env)
    assert result.exit_code == 0, result.output
    folder = tree / "tests" / "providers" / "openai" / "recordings"
    written = sorted(p.name for p in folder.glob("*.yaml"))
    assert written == ["recorded-stream.yaml", "recorded-text.yaml", "recorded-tool-call.yaml"]

    # The credentials were used ...
    assert [r.headers.get("Authorization") for r in upstream.requests] == [f"Bearer {secret}"] * 3
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"] * 3
    assert upstream.requests[2].body["stream"] is True
    # ... and never stored: the header is recorded with the variable's placeholder, and the key is
    # replaced by it in the reply that quoted it too.
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        assert secret not in text and secret[4:-4] not in text, path.name
    text = yaml.safe_load((folder / "recorded-text.yaml").read_text())
    assert text["upstream"]["body"]["choices"][0]["message"]["content"] == "The sea is salty; your key <OPENAI_API_KEY> works."
    assert text["expect"]["response"]["choices"][0]["message"]["content"].endswith("<OPENAI_API_KEY> works.")
    assert text["expect"]["upstream_request"]["model"] == "gpt-4o"
    # The request line and headers: the spec's base URL (not the override), the spec's headers only.
    assert text["expect"]["upstream_call"] == {
        "method": "POST", "url": "https://api.openai.com/v1/chat/completions",
        "headers": {"authorization": "Bearer <OPENAI_API_KEY>"},
    }
    assert "note," not in result.output  # the request sent was the replay's, once masked
    stream = yaml.safe_load((folder / "recorded-stream.yaml").read_text())
    assert stream["upstream"]["stream"].startswith("data: ")
    assert stream["expect"]["chunks"][-1]["usage"]["total_tokens"] == 25

    # What was recorded replays as recorded.
    replayed = CliRunner().invoke(main, ["spec", "test", str(tree / "providers.d" / "openai.yaml")])
    assert replayed.exit_code == 0, replayed.output
    assert replayed.output.rstrip().endswith("3 passed, 0 failed")


def test_record_needs_credentials(tmp_path: Path, upstream: FakeUpstream) -> None:
    tree = _tree(tmp_path)
    result = CliRunner().invoke(main, ["spec", "record", "--provider", "openai", "--specs", str(tree)],
                                env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": f"{upstream.url}/v1"})
    assert result.exit_code == 1
    assert "openai needs OPENAI_API_KEY in the environment" in result.output
    assert upstream.requests == []
    unknown = CliRunner().invoke(main, ["spec", "record", "--provider", "nope", "--specs", str(tree)])
    assert unknown.exit_code == 1 and "nope is not a provider" in unknown.output


# -- spec new --------------------------------------------------------------------------------------
@pytest.mark.parametrize("like", ["openai", "anthropic", "gemini", "copilot"])
def test_new_spec_validates_and_uses_its_own_variables(tmp_path: Path, like: str) -> None:
    tree = _tree(tmp_path)
    result = CliRunner().invoke(main, ["spec", "new", "acme-ai", "--like", like, "--dir", str(tree)])
    assert result.exit_code == 0, result.output
    for made in ("providers.d/acme-ai.yaml", "pricing.d/acme-ai.yaml", "recordings/acme-ai/README.md"):
        assert (tree / made).is_file(), made
    assert "changed  " in result.output and "routes.yaml" in result.output

    # The one problem left is the price it cannot know, until it is set.
    validated = CliRunner().invoke(main, ["validate", str(tree)])
    assert validated.exit_code == 1
    assert validated.output.strip().splitlines() == [
        ("pricing.d/acme-ai.yaml:6: /models/acme-ai~1example-model/source: placeholder price for "
         "'acme-ai/example-model': set input, output and source from the provider's pricing page")
    ]
    priced = tree / "pricing.d" / "acme-ai.yaml"
    priced.write_text(priced.read_text().replace("TODO: the provider's pricing page", "https://acme.test/pricing"))
    validated = CliRunner().invoke(main, ["validate", str(tree)])
    assert validated.exit_code == 0, validated.output

    key = "ACME_AI_API_TOKEN" if like == "copilot" else "ACME_AI_API_KEY"  # the parent's suffix is kept
    catalog = load_catalog(tree, environ={key: "k-acme-123456", "ACME_AI_BASE_URL": "http://127.0.0.1:9"})
    spec = catalog.providers["acme-ai"]
    assert set(spec.env) == {key, "ACME_AI_BASE_URL"}
    assert spec.missing_env() == []
    assert spec.auth is None  # a parent's sign-in flow is not inherited
    assert spec.api_base() == "http://127.0.0.1:9"
    assert "k-acme-123456" in " ".join(spec.headers_for("example-model").values())
    assert list(spec.models) == ["example-model"]
    assert catalog.routes["aliases"]["acme-ai"]["candidates"] == [{"provider": "acme-ai", "model": "example-model"}]
    assert "acme-ai/example-model" in catalog.pricing


def test_new_spec_in_the_current_tree_with_a_model_and_its_recordings_folder(tmp_path: Path, monkeypatch) -> None:
    tree = _tree(tmp_path)
    (tree / "tests" / "providers").mkdir(parents=True)  # this repository's layout
    monkeypatch.chdir(tree)
    result = CliRunner().invoke(main, ["spec", "new", "acme", "--model", "meta/llama-4:free"])
    assert result.exit_code == 0, result.output
    assert (tree / "tests" / "providers" / "acme" / "recordings" / "README.md").is_file()
    spec = yaml.safe_load((tree / "providers.d" / "acme.yaml").read_text())
    assert "recordings" not in spec  # the conventional folder needs no key
    assert list(spec["models"]) == ["meta/llama-4:free"]
    assert "placeholder price" in CliRunner().invoke(main, ["validate", "."]).output
    nothing = CliRunner().invoke(main, ["spec", "test", "acme"])
    assert nothing.exit_code == 1 and "acme: no recordings in tests/providers/acme/recordings" in nothing.output


def test_new_spec_refuses_and_leaves_the_tree_as_it_was(tmp_path: Path, monkeypatch) -> None:
    tree = _tree(tmp_path)
    before = _files(tree)
    runner = CliRunner()
    assert "already exists" in runner.invoke(main, ["spec", "new", "openai", "--dir", str(tree)]).output
    assert "--like nope is not a provider here" in runner.invoke(main, ["spec", "new", "x", "--like", "nope", "--dir", str(tree)]).output
    assert "is not a spec name" in runner.invoke(main, ["spec", "new", "bad name", "--dir", str(tree)]).output
    aliased = runner.invoke(main, ["spec", "new", "fast", "--dir", str(tree)])
    assert aliased.exit_code == 1 and "routes.yaml already has an alias 'fast'" in aliased.output
    monkeypatch.chdir(tmp_path)
    assert "not a spec tree" in runner.invoke(main, ["spec", "new", "x"]).output
    assert _files(tree) == before
    with pytest.raises(ScaffoldError, match="already exists"):
        scaffold(tree, "gemini")


# -- the manual ------------------------------------------------------------------------------------
def test_the_committed_manual_is_generated_from_the_schemas() -> None:
    committed = (ROOT / "docs" / "spec-language.md").read_text()
    assert committed == generate_manual(ROOT / "schemas"), (
        "docs/spec-language.md is stale: run `gaud-engine spec manual` and commit the result"
    )


def test_the_manual_covers_every_field_and_operation() -> None:
    import json

    text = generate_manual(ROOT / "schemas")
    schema = json.loads((ROOT / "schemas" / "provider.schema.json").read_text())
    for name in schema["properties"]:
        assert f"#### `{name}`" in text, name
    for op in schema["$defs"]["rule"]["properties"]["op"]["enum"]:
        assert f"#### op: `{op}`" in text, op
    for name in schema["$defs"]:
        assert f"`{name}`" in text or f"`{name.removeprefix('op_')}`" in text, name
    for action in schema["$defs"]["stream_action"]["else"]["properties"]:
        assert f"##### `{action}`" in text, action
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    assert set(re.findall(r"\]\(#([^)]+)\)", text)) <= anchors  # every link lands


def test_manual_command_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "manual.md"
    runner = CliRunner()
    assert runner.invoke(main, ["spec", "manual", str(out), "--check"]).exit_code == 1
    assert runner.invoke(main, ["spec", "manual", str(out)]).exit_code == 0
    checked = runner.invoke(main, ["spec", "manual", str(out), "--check"])
    assert checked.exit_code == 0 and "up to date" in checked.output
    assert runner.invoke(main, ["spec", "manual", "-"]).output == out.read_text()


# -- the tutorial ----------------------------------------------------------------------------------
def _tutorial_blocks() -> list[tuple[int, str, int, list[str]]]:
    """(line, script, expected exit code, output lines shown) for each ```bash block marked
    `<!-- test -->` or `<!-- test: exit N -->` on the line before its fence. The output shown is the
    ```text block right after it, if any, minus elisions (`...`, `(the rest ...)`)."""
    text = (ROOT / "docs" / "adding-a-provider.md").read_text()
    blocks = []
    pattern = r"<!-- test(?:: exit (\d+))? -->\n```bash\n(.*?)\n```\n(?:\n```text\n(.*?)\n```)?"
    for match in re.finditer(pattern, text, re.DOTALL):
        line = text.count("\n", 0, match.start()) + 1
        shown = [s for s in (match.group(3) or "").splitlines() if s.strip() != "..." and not s.strip().startswith("(")]
        blocks.append((line, match.group(2), int(match.group(1) or 0), shown))
    return blocks


def test_tutorial_commands_run_as_written(tmp_path: Path) -> None:
    blocks = _tutorial_blocks()
    assert len(blocks) >= 6
    tree = _tree(tmp_path)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "gaud-engine").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m engine "$@"\n')
    (shim / "gaud-engine").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAUD_") and not k.endswith("_API_KEY")}
    env.update(PATH=f"{shim}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT))
    for line, script, expected, shown in blocks:
        done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{script}"], check=False, cwd=tree, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == expected, (
            f"docs/adding-a-provider.md:{line}: exit {done.returncode}, expected {expected}\n"
            f"$ {script}\n{done.stdout}\n{done.stderr}"
        )
        printed = [p.rstrip() for p in done.stdout.splitlines()]
        missing = [s for s in shown if s.rstrip() not in printed]
        assert not missing, f"docs/adding-a-provider.md:{line}: the output shown is not what runs:\n" + "\n".join(missing)
    assert sum(1 for *_, shown in blocks if shown) >= 4


# -- spec new --format -----------------------------------------------------------------------------
def _problems(tree: Path) -> list[str]:
    """`validate`'s problems, less the scaffold's placeholder price (flagged by its TODO marker)."""
    from engine.spec.crossref import placeholder_prices

    catalog = load_catalog(tree, environ={})
    placeholder = {str(p) for p in placeholder_prices(catalog)}
    return [str(p) for p in catalog.problems if str(p) not in placeholder]


@pytest.mark.parametrize("fmt", ["openai-compatible", "messages", "generate-content", "blank"])
def test_new_wire_format_from_a_template_validates(tmp_path: Path, fmt: str) -> None:
    tree = _tree(tmp_path)
    result = CliRunner().invoke(main, ["spec", "new", "acme-ai", "--format", fmt, "--model", "acme/large-1",
                                       "--dir", str(tree)])
    assert result.exit_code == 0, result.output
    assert _problems(tree) == []
    text = (tree / "providers.d" / "acme-ai.yaml").read_text()
    assert "__" not in text and "extends" not in text  # every placeholder filled; a whole spec
    spec = load_catalog(tree, environ={"ACME_AI_API_KEY": "k-acme-123456"}).providers["acme-ai"]
    assert set(spec.env) == {"ACME_AI_API_KEY", "ACME_AI_BASE_URL"} and spec.missing_env() == []
    assert "k-acme-123456" in " ".join(spec.headers_for("acme/large-1").values())
    assert list(spec.models) == ["acme/large-1"]
    assert (spec.stream is None) == (fmt == "blank")
    assert yaml.safe_load((tree / "pricing.d" / "acme-ai.yaml").read_text())["models"]["acme-ai/acme/large-1"][
        "source"].startswith("TODO")
    assert (tree / "recordings" / "acme-ai" / "README.md").is_file()


def test_a_template_is_a_working_wire_format(tmp_path: Path) -> None:
    """The messages template replays a shipped messages-style exchange to the same OpenAI reply."""
    from engine.cli.recordings import read_recording, recordings_dir, replay

    tree = _tree(tmp_path)
    model = "claude-sonnet-4-20250514"
    assert CliRunner().invoke(main, ["spec", "new", "acme", "--format", "messages", "--model", model,
                                     "--dir", str(tree)]).exit_code == 0
    shipped = load_catalog(ROOT, environ={})
    recording = read_recording(recordings_dir(shipped, "anthropic") / "tool-result-after-thinking.yaml", "anthropic")
    assert recording.data is not None
    ours = replay(load_catalog(tree, environ={}), {**recording.data, "model": f"acme/{model}"}, "acme")
    assert ours["upstream_request"] == recording.data["expect"]["upstream_request"]
    assert ours["response"] == replay(shipped, recording.data, "anthropic")["response"]
    assert ours["upstream_call"]["url"] == "https://api.example.com/v1/messages"


def test_new_format_refusals(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    before = _files(tree)
    runner = CliRunner()
    typo = runner.invoke(main, ["spec", "new", "x", "--format", "mesages", "--dir", str(tree)])
    assert typo.exit_code == 1
    assert "--format mesages is not a template; did you mean messages? (formats: blank, generate-content" in typo.output
    both = runner.invoke(main, ["spec", "new", "x", "--format", "blank", "--like", "openai", "--dir", str(tree)])
    assert both.exit_code == 1 and "--like and --format exclude each other" in both.output
    sneaky = runner.invoke(main, ["spec", "new", "x", "--format", "../providers.d/openai", "--dir", str(tree)])
    assert sneaky.exit_code == 1 and "is not a template" in sneaky.output
    assert _files(tree) == before
    helped = runner.invoke(main, ["spec", "new", "--help"])
    assert helped.exit_code == 0
    assert "blank, generate-content, messages, openai-compatible" in " ".join(helped.output.split())
