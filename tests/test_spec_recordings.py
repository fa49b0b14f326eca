"""Every shipped spec's recordings, replayed through the engine with no network: the same replay
`gaud-engine spec test` runs (engine/cli/recordings.py), one test per exchange.

A recording lives in tests/providers/<name>/recordings/ (docs/recordings.md). When a spec change
alters an exchange on purpose, run `gaud-engine spec test --update`, review the diff, commit.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli.commands import main
from engine.cli.recordings import (
    Recording,
    RecordingProblem,
    check,
    load_recordings,
    read_recording,
    recordings_dir,
    replay,
    spec_names,
)
from engine.spec.loader import load_catalog

from .spec_trees import copy_models

ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog(ROOT, environ={})
RECORDINGS = [r for name in spec_names(CATALOG) for r in load_recordings(recordings_dir(CATALOG, name), name)]
#: The specs whose recordings must show every basic exchange (`test_basic_exchanges_are_recorded`).
FOUR = ("anthropic", "gemini", "openai", "copilot")


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda r: r.name)
def test_recording_replays_as_expected(recording: Recording) -> None:
    outcome = check(CATALOG, recording)
    assert outcome.ok, f"{recording.path.relative_to(ROOT)}:\n{outcome.diff()}"


def _kinds(expect: dict[str, Any]) -> set[str]:
    """What one exchange shows, read from its expectation."""
    kinds = set()
    if "error" in expect:
        kinds.add("error")
    message = ((expect.get("response") or {}).get("choices") or [{}])[0].get("message") or {}
    usage = (expect.get("response") or {}).get("usage") or {}
    chunks = expect.get("chunks") or []
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    if message.get("content"):
        kinds.add("text")
    if message.get("tool_calls"):
        kinds.add("tool_calls")
    if message.get("reasoning_content") or (usage.get("completion_tokens_details") or {}).get("reasoning_tokens"):
        kinds.add("reasoning")
    for reported in [usage, *[c.get("usage") or {} for c in chunks]]:
        if (reported.get("prompt_tokens_details") or {}).get("cached_tokens"):
            kinds.add("cached_usage")
    if any(d.get("content") for d in deltas):
        kinds.add("stream_text")
    if any(d.get("tool_calls") for d in deltas):
        kinds.add("stream_tool_calls")
    if chunks and not chunks[-1].get("usage") and "error" not in chunks[-1]:
        kinds.add("stream_without_usage_chunk")  # never wanted: the usage chunk is always written
    return kinds


@pytest.mark.parametrize("provider", FOUR)
def test_basic_exchanges_are_recorded(provider: str) -> None:
    seen: set[str] = set()
    for recording in RECORDINGS:
        if recording.provider == provider and recording.data is not None:
            seen |= _kinds(recording.data.get("expect") or {})
    wanted = {"text", "tool_calls", "cached_usage", "error", "stream_text", "stream_tool_calls"}
    if provider != "copilot":  # copilot's reasoning is openai's, inherited and recorded there
        wanted.add("reasoning")
    assert wanted <= seen, f"{provider} has no recording of: {', '.join(sorted(wanted - seen))}"
    assert "stream_without_usage_chunk" not in seen


def test_anthropic_streamed_tool_calls_keep_their_names() -> None:
    """Found by reviewing the recordings: carrying thinking state into a tool call's id once
    renamed the call to `signature`, the last state variable it consumed."""
    recording = read_recording(recordings_dir(CATALOG, "anthropic") / "stream-tool-calls.yaml", "anthropic")
    assert recording.data is not None
    chunks = replay(CATALOG, recording.data, "anthropic")["chunks"]
    names = [call["function"]["name"] for c in chunks for ch in c["choices"]
             for call in ch["delta"].get("tool_calls") or [] if "id" in call]
    assert names == ["get_tide_table", "get_tide_table"]


# -- the command -----------------------------------------------------------------------------------
def _tree(tmp_path: Path, *providers: str) -> Path:
    """A copy of the shipped spec tree with the recordings of some specs."""
    tree = tmp_path / "specs"
    shutil.copytree(ROOT / "providers.d", tree / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tree / "pricing.d")
    copy_models(tree)
    shutil.copy(ROOT / "routes.yaml", tree / "routes.yaml")
    for name in providers:
        shutil.copytree(recordings_dir(CATALOG, name), tree / "tests" / "providers" / name / "recordings")
    return tree


def test_a_broken_expectation_shows_a_readable_diff_and_fails(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "openai")
    path = tree / "tests" / "providers" / "openai" / "recordings" / "text.yaml"
    original = path.read_text()
    head, sep, expect = original.partition("\nexpect:\n")
    path.write_text(head + sep + expect.replace("so they don't drift apart.", "so they can juggle."))

    result = CliRunner().invoke(main, ["spec", "test", str(tree)])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "FAIL  openai/text" in out
    assert "--- expected response" in out and "+++ actual response" in out
    lines = [line.strip() for line in out.splitlines()]
    assert '-        "content": "Sea otters hold hands while sleeping so they can juggle.",' in lines
    assert '+        "content": "Sea otters hold hands while sleeping so they don\'t drift apart.",' in lines
    assert sum(line.startswith("@@") for line in lines) == 1  # one small hunk, not the whole response
    assert "ok    openai/tool-calls" in out
    assert out.rstrip().endswith("9 passed, 1 failed")

    updated = CliRunner().invoke(main, ["spec", "test", str(tree), "--update"])
    assert updated.exit_code == 0, updated.output
    assert "updated openai/text" in updated.output
    assert path.read_text() == original  # the rewrite touches `expect` only, and writes it as it was
    assert CliRunner().invoke(main, ["spec", "test", str(tree)]).exit_code == 0


def test_one_spec_one_file_and_a_missing_expectation(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "openai", "gemini")
    folder = tree / "tests" / "providers" / "gemini" / "recordings"
    data = yaml.safe_load((folder / "text.yaml").read_text())
    del data["expect"]
    (folder / "new.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    only = CliRunner().invoke(main, ["spec", "test", str(tree / "providers.d" / "openai.yaml")])
    assert only.exit_code == 0 and "gemini/" not in only.output
    one = CliRunner().invoke(main, ["spec", "test", str(folder / "text.yaml")])
    assert one.exit_code == 0 and one.output.splitlines() == ["ok    gemini/text", "1 passed, 0 failed"]

    missing = CliRunner().invoke(main, ["spec", "test", str(folder / "new.yaml")])
    assert missing.exit_code == 1
    assert "no `expect` yet: run `gaud-engine spec test --update`" in missing.output
    assert CliRunner().invoke(main, ["spec", "test", str(folder / "new.yaml"), "--update"]).exit_code == 0
    written = yaml.safe_load((folder / "new.yaml").read_text())["expect"]
    assert written == yaml.safe_load((folder / "text.yaml").read_text())["expect"]


def test_a_recording_that_cannot_be_replayed_says_why(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "openai")
    folder = tree / "tests" / "providers" / "openai" / "recordings"
    text = (folder / "text.yaml").read_text()
    (folder / "typo.yaml").write_text(text.replace("\nexpect:\n", "\nexpected:\n"))
    (folder / "elsewhere.yaml").write_text(text.replace("model: openai/gpt-4o", "model: gemini/gemini-2.5-flash"))
    result = CliRunner().invoke(main, ["spec", "test", str(folder)])
    assert result.exit_code == 1
    assert "unknown key 'expected'; did you mean 'expect'?" in result.output
    assert "model 'gemini/gemini-2.5-flash' is not served by openai; write it as openai/<model>" in result.output
    assert "unknown" not in CliRunner().invoke(main, ["spec", "test", str(folder / "text.yaml")]).output


def test_invented_ids_and_created_are_ignored() -> None:
    """A reply without an id gets `chatcmpl-<random>` and the current time: stored as chatcmpl-1, no created."""
    recording = read_recording(recordings_dir(CATALOG, "openai") / "text.yaml", "openai")
    assert recording.data is not None
    body = {k: v for k, v in recording.data["upstream"]["body"].items() if k not in ("id", "created")}
    data = {**recording.data, "upstream": {"body": body}}
    first, second = check(CATALOG, Recording(recording.path, "openai", data)), check(CATALOG, Recording(recording.path, "openai", data))
    assert first.actual == second.actual
    assert first.actual is not None and first.actual["response"]["id"] == "chatcmpl-1"
    assert "created" not in first.actual["response"]


def test_a_non_stream_request_to_a_stream_only_upstream_is_assembled(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "providers.d" / "streamy.yaml").write_text(
        "extends: anthropic\n"
        "recordings: ../streamy-recordings\n"
        "api:\n  endpoints:\n    chat: {stream_only: true}\n"
        "models:\n  claude-sonnet-4-20250514: {context_window: 200000, max_output_tokens: 64000, capabilities: [tools], free: true, reason: test model}\n"
    )
    folder = tree / "streamy-recordings"
    folder.mkdir()
    source = yaml.safe_load((recordings_dir(CATALOG, "anthropic") / "stream-tool-calls.yaml").read_text())
    del source["request"]["stream"], source["expect"]
    source["model"] = "streamy/claude-sonnet-4-20250514"
    (folder / "assembled.yaml").write_text(yaml.safe_dump(source, sort_keys=False))

    assert CliRunner().invoke(main, ["spec", "test", str(tree / "providers.d" / "streamy.yaml"), "--update"]).exit_code == 0
    expect = yaml.safe_load((folder / "assembled.yaml").read_text())["expect"]
    assert expect["upstream_request"]["stream"] is True
    message = expect["response"]["choices"][0]["message"]
    assert message["content"] == "Checking both harbours."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_tide_table", "get_tide_table"]
    assert expect["response"]["choices"][0]["finish_reason"] == "tool_calls"
    assert (expect["response"]["usage"]["prompt_tokens"], expect["response"]["usage"]["completion_tokens"]) == (520, 88)


# -- the request line and headers --------------------------------------------------------------------
def _spec_test(tree: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["spec", "test", str(tree / "providers.d" / "openai.yaml"), *args])


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_every_recording_states_the_request_line_and_headers_with_placeholders() -> None:
    for recording in RECORDINGS:
        assert recording.data is not None
        call = recording.data["expect"].get("upstream_call")
        assert call is not None, recording.name
        assert call["method"] == "POST" and call["url"].startswith(("https://", "http://")), recording.name
        assert all(name == name.lower() for name in call["headers"]), recording.name
    gemini = read_recording(recordings_dir(CATALOG, "gemini") / "stream-text.yaml", "gemini").data
    assert gemini is not None and gemini["expect"]["upstream_call"] == {
        "method": "POST",
        "url": "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "query": {"alt": "sse"},
        "headers": {"x-goog-api-key": "<GEMINI_API_KEY>"},
    }


def test_a_wrong_path_fails_and_names_it(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "openai")
    _edit(tree / "providers.d" / "openai.yaml", "      path: /chat/completions", "      path: /chat/completion")
    result = _spec_test(tree)
    assert result.exit_code == 1, result.output
    assert ("upstream_call url: expected 'https://api.openai.com/v1/chat/completions', "
            "sent 'https://api.openai.com/v1/chat/completion'") in result.output
    assert result.output.rstrip().endswith("0 passed, 10 failed")


def test_a_missing_or_misplaced_auth_header_fails_and_names_it(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "openai")
    spec = tree / "providers.d" / "openai.yaml"
    original = spec.read_text()
    _edit(spec, '  headers:\n    Authorization: "Bearer {{ env.OPENAI_API_KEY }}"\n', "  headers: {}\n")
    missing = _spec_test(tree)
    assert missing.exit_code == 1
    assert "upstream_call header 'authorization': expected 'Bearer <OPENAI_API_KEY>', not sent" in missing.output

    spec.write_text(original)  # the right header, the wrong variable in it
    _edit(spec, '    OPENAI_API_KEY: {secret: true', '    OPENAI_KEY: {secret: true')
    _edit(spec, "{{ env.OPENAI_API_KEY }}", "{{ env.OPENAI_KEY }}")
    wrong = _spec_test(tree)
    assert wrong.exit_code == 1
    assert ("upstream_call header 'authorization': expected 'Bearer <OPENAI_API_KEY>', sent 'Bearer <OPENAI_KEY>'"
            in wrong.output)

    spec.write_text(original)  # a header the recordings do not show is a difference too
    _edit(spec, '    Authorization: "Bearer', '    OpenAI-Beta: assistants=v2\n    Authorization: "Bearer')
    extra = _spec_test(tree)
    assert extra.exit_code == 1 and "upstream_call header 'openai-beta': sent 'assistants=v2', not recorded" in extra.output


def test_transport_headers_are_ignored_and_names_compare_without_case(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "openai")
    path = tree / "tests" / "providers" / "openai" / "recordings" / "text.yaml"
    _edit(path, "      authorization: Bearer <OPENAI_API_KEY>\n",
          "      Authorization: Bearer <OPENAI_API_KEY>\n      Content-Length: '312'\n"
          "      user-agent: Python/3.12 aiohttp/3.12\n      accept-encoding: gzip, deflate\n")
    assert _spec_test(tree).exit_code == 0
    _edit(path, "      Authorization: Bearer <OPENAI_API_KEY>\n", "")  # the one the spec sets is not optional
    result = _spec_test(tree)
    assert result.exit_code == 1
    assert "upstream_call header 'authorization': sent 'Bearer <OPENAI_API_KEY>', not recorded" in result.output


def test_update_fills_in_the_request_line_of_an_older_recording_offline(tmp_path: Path) -> None:
    tree = _tree(tmp_path, "openai")
    path = tree / "tests" / "providers" / "openai" / "recordings" / "stream-text.yaml"
    current = path.read_text()
    data = yaml.safe_load(current)
    del data["expect"]["upstream_call"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    older = _spec_test(tree)
    assert older.exit_code == 1
    assert "upstream_call: not recorded; `gaud-engine spec test --update` fills it in (no network)" in older.output
    assert _spec_test(tree, "--update").exit_code == 0
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(current)


def test_a_query_key_and_an_exchanged_token_are_shown_by_placeholder(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "providers.d" / "keyed.yaml").write_text(
        "extends: openai\n"
        "api:\n"
        "  env:\n"
        "    OPENAI_API_KEY: null\n"
        "    KEYED_KEY: {secret: true, required: true, description: key}\n"
        "    KEYED_REGION: {description: region}\n"
        "  headers:\n"
        "    Authorization: null\n"
        "    x-region: \"{{ env.KEYED_REGION }}\"\n"
        "  auth: {type: api_key, env: KEYED_KEY, in: query, name: key}\n"
        "  endpoints:\n"
        "    chat: {path: \"/chat/completions?api-version=2024-10-21\"}\n"
        "models:\n  m1: {context_window: 8000, max_output_tokens: 1000, capabilities: [tools]}\n"
    )
    (tree / "providers.d" / "exchanged.yaml").write_text(
        "extends: openai\n"
        "api:\n"
        "  auth:\n"
        "    type: api_key\n"
        "    env: OPENAI_API_KEY\n"
        "    exchange: {url: 'https://auth.example.com/token', headers: {Authorization: 'token {{ token }}'},"
        " token_field: /token, expires_at_field: /expires_at}\n"
        "    headers: {Authorization: 'Bearer {{ credentials.access_token }}'}\n"
        "models:\n  m1: {context_window: 8000, max_output_tokens: 1000, capabilities: [tools]}\n"
    )
    catalog = load_catalog(tree, environ={})
    assert {"keyed", "exchanged"} <= set(catalog.providers), [str(p) for p in catalog.problems]
    source = yaml.safe_load((recordings_dir(CATALOG, "openai") / "text.yaml").read_text())
    data = {**source, "model": "keyed/m1"}
    call = replay(catalog, data, "keyed")["upstream_call"]
    assert call == {
        "method": "POST", "url": "https://api.openai.com/v1/chat/completions",
        "query": {"api-version": "2024-10-21", "key": "<KEYED_KEY>"},
        "headers": {"x-region": "<KEYED_REGION>"},
    }
    exchanged = replay(catalog, {**source, "model": "exchanged/m1"}, "exchanged")["upstream_call"]
    assert exchanged["headers"] == {"authorization": "Bearer <access_token>"}


def test_unset_leaves_optional_variables_out_of_the_replay(tmp_path: Path) -> None:
    """Azure's two addressings and two credentials are each recorded: `unset` picks the resource key
    and the v1 path; naming a variable the spec does not declare is a problem of the recording."""
    folder = recordings_dir(CATALOG, "azure")
    v1_key = read_recording(folder / "text.yaml", "azure").data
    entra = read_recording(folder / "tool-calls.yaml", "azure").data
    assert v1_key is not None and entra is not None
    assert v1_key["expect"]["upstream_call"]["url"].endswith("/openai/v1/chat/completions")
    assert v1_key["expect"]["upstream_call"]["headers"] == {"api-key": "<AZURE_OPENAI_API_KEY>"}
    assert entra["expect"]["upstream_call"]["headers"] == {"authorization": "Bearer <access_token>"}
    bad = tmp_path / "bad.yaml"
    bad.write_text((folder / "text.yaml").read_text().replace("unset: [OPENAI_API_VERSION,", "unset: [AZURE_API_VERSION,"))
    with pytest.raises(RecordingProblem, match="`unset` must list variables azure's spec declares"):
        replay(CATALOG, read_recording(bad, "azure").data or {}, "azure")
