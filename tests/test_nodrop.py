"""Nothing a client asks for is silently dropped (issue 23 item 2).

A parameter a deployment cannot express (its spec's `request.params`) is refused with a 400 naming
the parameter and the deployment, or the next candidate of an alias is tried; it is dropped only
where the spec marks it safely ignorable or the operator allows dropping (globally or per alias),
and the response then names it in `x-gaud-dropped-params`."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import yaml

from engine.errors import InvalidRequest
from engine.pipeline.routing import Router
from engine.pipeline.translate import build_request
from engine.spec.common import SpecCompileError
from engine.spec.params import compile_params
from engine.spec.provider import compile_provider

from .conftest import ROOT, one_target, provider_env, spec_tree, start_gateway

HELLO = [{"role": "user", "content": "Hello"}]
CLAUDE = "anthropic/claude-sonnet-4-20250514"
TOOL = {"type": "function", "function": {"name": "get_tide", "parameters": {"type": "object", "properties": {}}}}
SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search"}


# -- unit: the declarations -------------------------------------------------------------------------
def test_a_request_that_uses_nothing_unsupported_is_passed_as_it_is():
    rules = compile_params({"n": "refuse", "logprobs": "refuse", "seed": "ignore"})
    body = {"model": "m", "messages": HELLO, "n": 1, "logprobs": False, "temperature": 0.3}
    fitted, dropped = rules.fit(body, "d")
    assert fitted is body and dropped == ()


@pytest.mark.parametrize(("param", "value"), [
    ("n", 2), ("logprobs", True), ("top_logprobs", 3), ("logit_bias", {"50256": -100}), ("output_config", {"effort": "low"}),
])
def test_each_refused_parameter_is_named_with_the_deployment(param, value):
    rules = compile_params({param: "refuse"})
    with pytest.raises(InvalidRequest) as caught:
        rules.fit({"model": "m", "messages": HELLO, param: value}, "anthropic/claude-x")
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "unsupported_parameter", param)
    assert "anthropic/claude-x" in error.message and f"'{param}'" in error.message


def test_dropping_removes_exactly_what_was_refused_and_says_so():
    rules = compile_params({"n": "refuse", "logprobs": "refuse", "server_tools": "refuse", "seed": "ignore"})
    body = {"model": "m", "messages": HELLO, "n": 2, "logprobs": True, "seed": 7, "temperature": 0.5,
            "tools": [TOOL, SERVER_TOOL]}
    fitted, dropped = rules.fit(body, "d", drop=True)
    assert dropped == ("n", "logprobs", "server_tools", "seed")
    assert fitted == {"model": "m", "messages": HELLO, "temperature": 0.5, "tools": [TOOL]}
    assert body["n"] == 2 and len(body["tools"]) == 2  # the client's request is not changed in place


def test_only_server_tools_leave_tool_choice_without_tools():
    rules = compile_params({"server_tools": "refuse"})
    fitted, dropped = rules.fit({"model": "m", "messages": HELLO, "tools": [SERVER_TOOL], "tool_choice": "auto"}, "d", drop=True)
    assert dropped == ("server_tools",) and "tools" not in fitted and "tool_choice" not in fitted


def test_ignore_drops_without_the_setting_and_a_condition_narrows_a_rule():
    rules = compile_params({"seed": "ignore", "stop": {"unsupported": "ignore", "when": {"blank": "/stop"}, "report_only": True}})
    fitted, dropped = rules.fit({"model": "m", "messages": HELLO, "seed": 1, "stop": ["END", " "]}, "d")
    assert dropped == ("seed", "stop") and fitted["stop"] == ["END", " "]  # the mapping removes the blank one
    assert rules.fit({"model": "m", "messages": HELLO, "stop": ["END"]}, "d")[1] == ()


def test_an_unknown_parameter_name_gets_a_did_you_mean():
    with pytest.raises(SpecCompileError) as caught:
        compile_params({"logprob": "refuse"})
    assert caught.value.pointer == "/request/params/logprob" and "did you mean 'logprobs'" in str(caught.value)


def test_validate_reports_an_unknown_parameter_in_a_spec(tmp_path):
    from click.testing import CliRunner

    from engine.cli.commands import main

    tree = spec_tree(tmp_path)
    path = tree / "providers.d" / "cohere.yaml"
    path.write_text(path.read_text().replace("    logit_bias: refuse\n", "    logit_bais: refuse\n", 1))
    result = CliRunner().invoke(main, ["validate", str(tree)])
    assert result.exit_code != 0
    assert "logit_bais" in result.output and "did you mean 'logit_bias'" in result.output


def test_extends_children_inherit_the_declarations_and_may_undo_one(catalog):
    parent = catalog.providers["anthropic"].params
    child = catalog.providers["vertex-anthropic"].params
    assert {r.name for r in child.rules} == {r.name for r in parent.rules}
    spec = yaml.safe_load((ROOT / "providers.d" / "anthropic.yaml").read_text())
    spec["request"]["params"]["n"] = "supported"
    undone = compile_provider("x", "x.yaml", spec, environ={})
    assert "n" not in {r.name for r in undone.params.rules}


def test_the_translated_body_never_carries_a_dropped_parameter(catalog):
    target = one_target(catalog, "gemini-2.5-flash")
    body = {"model": "gemini-2.5-flash", "messages": HELLO, "n": 3, "logprobs": True, "tools": [TOOL, SERVER_TOOL]}
    with pytest.raises(InvalidRequest) as caught:
        build_request(target, body, stream=False)
    assert caught.value.param == "n"
    mapped = build_request(target, body, stream=False, drop=True).body
    assert "web_search" not in str(mapped) and "get_tide" in str(mapped["tools"])
    assert "candidateCount" not in str(mapped) and "logprobs" not in str(mapped).lower()


def test_a_target_that_can_run_server_tools_gets_them_as_they_are(catalog):
    target = one_target(catalog, "claude-sonnet-4")
    body = {"model": "claude-sonnet-4", "messages": HELLO, "tools": [TOOL, SERVER_TOOL]}
    assert build_request(target, body, stream=False).body["tools"] == [
        {"name": "get_tide", "input_schema": {"type": "object", "properties": {}}}, SERVER_TOOL]


def test_drop_follows_the_alias_over_the_setting(catalog):
    routes = {"aliases": {
        "lenient": {"drop_unsupported_params": True, "candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"}]},
        "strict": {"drop_unsupported_params": False, "candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"}]},
        "unsaid": {"candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"}]},
    }}
    from engine.spec.routes import compile_routes

    table = compile_routes(routes)
    for setting in (False, True):
        router = Router(catalog, table, drop_unsupported=setting)
        drops = {alias: router.plan({"model": alias, "messages": HELLO}).targets[0].drop_unsupported
                 for alias in ("lenient", "strict", "unsaid")}
        assert drops == {"lenient": True, "strict": False, "unsaid": setting}
        assert router.plan({"model": CLAUDE, "messages": HELLO}).targets[0].drop_unsupported is setting


# -- end to end: the openai SDK against a served gateway --------------------------------------------
def test_n_and_logprobs_to_anthropic_are_refused_by_default(client, upstream):
    for extra, param in (({"n": 2}, "n"), ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
                         ({"logit_bias": {"1": 5}}, "logit_bias")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="claude-sonnet-4", messages=HELLO, **extra)
        error = caught.value.body
        assert error["code"] == "unsupported_parameter" and error["param"] == param
        assert CLAUDE in error["message"]
    assert upstream.requests == []  # refused before any upstream call


def test_a_server_tool_is_refused_where_only_function_tools_translate(client, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gemini-2.5-flash", messages=HELLO, tools=[TOOL, SERVER_TOOL])
    assert caught.value.body["param"] == "server_tools" and "gemini/gemini-2.5-flash" in caught.value.body["message"]
    assert upstream.requests == []


def test_an_ignorable_parameter_is_dropped_and_named(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    raw = client.chat.completions.with_raw_response.create(model="claude-sonnet-4", messages=HELLO, seed=42, n=1)
    assert raw.headers["x-gaud-dropped-params"] == "seed"
    assert raw.parse().choices[0].message.content
    assert "seed" not in upstream.last().body



def test_a_cached_reply_still_names_what_was_dropped(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    ask = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "cached drop"}], "seed": 7,
           "extra_headers": {"x-gaud-cache": "on"}}
    first = client.chat.completions.with_raw_response.create(**ask)
    again = client.chat.completions.with_raw_response.create(**ask)
    assert (first.headers["x-gaud-cache"], again.headers["x-gaud-cache"]) == ("miss", "hit")
    assert again.headers["x-gaud-dropped-params"] == first.headers["x-gaud-dropped-params"] == "seed"
    assert len(upstream.requests) == 1
    assert again.parse().model_dump() == first.parse().model_dump()  # the bookkeeping stays out of the reply

def test_a_request_that_drops_nothing_has_no_header(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    raw = client.chat.completions.with_raw_response.create(model="claude-sonnet-4", messages=HELLO, temperature=0.2)
    assert "x-gaud-dropped-params" not in raw.headers


def test_the_documented_rewrites_are_reported(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    raw = client.chat.completions.with_raw_response.create(model="claude-sonnet-4", messages=HELLO, stop=["END", "  "])
    assert raw.headers["x-gaud-dropped-params"] == "stop"
    assert upstream.last().body["stop_sequences"] == ["END"]

    upstream.reply_fixture("anthropic", "messages_text.json")
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4", messages=HELLO, tools=[TOOL], tool_choice="required", reasoning_effort="high")
    assert raw.headers["x-gaud-dropped-params"] == "reasoning_effort"
    assert "thinking" not in upstream.last().body and upstream.last().body["tool_choice"] == {"type": "any"}


def test_a_stream_names_what_was_dropped_in_its_headers(gateway, upstream):
    upstream.reply_fixture("anthropic", "stream_text.sse")
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=20,
                      json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True, "seed": 1}) as response:
        assert response.status_code == 200
        assert response.headers["x-gaud-dropped-params"] == "seed"
        assert b"[DONE]" in response.read()


@pytest.fixture(scope="module")
def lenient(fake_upstream_server, tmp_path_factory):
    """A gateway with routing.drop_unsupported_params on, and aliases that say otherwise or fall back."""
    tmp: Path = tmp_path_factory.mktemp("nodrop")
    tree = spec_tree(tmp, retry="false", fallback="true")
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    claude = {"provider": "anthropic", "model": "claude-sonnet-4-20250514"}
    routes["aliases"]["strict-claude"] = {"drop_unsupported_params": False, "candidates": [claude]}
    routes["aliases"]["strict-chain"] = {"drop_unsupported_params": False,
                                         "candidates": [claude, {"provider": "openai", "model": "gpt-4o"}]}
    routes["aliases"]["strict-gemini-claude"] = {"drop_unsupported_params": False,
                                                 "candidates": [{"provider": "gemini", "model": "gemini-2.5-flash"}, claude]}
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    env = {"GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false", "GAUD_ROUTING_DROP_UNSUPPORTED_PARAMS": "true",
           **provider_env(fake_upstream_server.url), "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'gaud.db'}"}
    running = start_gateway(env, tmp / "gateway.log")
    yield openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=20)
    running.process.terminate()
    running.process.wait(10)


def test_the_global_setting_drops_and_names_what_was_dropped(lenient, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    raw = lenient.chat.completions.with_raw_response.create(model="claude-sonnet-4", messages=HELLO, n=2, logprobs=True)
    assert raw.headers["x-gaud-dropped-params"] == "n,logprobs"
    sent = upstream.last().body
    assert "n" not in sent and "logprobs" not in sent
    assert len(raw.parse().choices) == 1


def test_an_alias_that_forbids_dropping_wins_over_the_setting(lenient, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        lenient.chat.completions.create(model="strict-claude", messages=HELLO, n=2)
    assert caught.value.body["code"] == "unsupported_parameter" and CLAUDE in caught.value.body["message"]
    assert upstream.requests == []


def test_a_candidate_that_cannot_express_it_is_skipped_for_one_that_can(lenient, upstream):
    upstream.reply_fixture("openai", "chat_completion_text.json")
    raw = lenient.chat.completions.with_raw_response.create(model="strict-chain", messages=HELLO, n=2)
    assert raw.headers["x-gaud-deployment"] == "openai/gpt-4o"
    assert "x-gaud-dropped-params" not in raw.headers
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"] and upstream.last().body["n"] == 2


def test_when_every_candidate_refuses_the_400_names_each(lenient, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        lenient.chat.completions.create(model="strict-gemini-claude", messages=HELLO, n=2)
    error = caught.value.body
    assert (error["code"], error["param"]) == ("unsupported_parameter", "n")
    assert "gemini/gemini-2.5-flash" in error["message"] and CLAUDE in error["message"]
    assert upstream.requests == []


# -- the /v1/messages ingress: native features reach a translated deployment or are refused --------
@pytest.fixture
def sdk(gateway):  # type: ignore[no-untyped-def]
    import anthropic

    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)


def test_a_server_tool_from_the_messages_ingress_is_refused_where_it_cannot_run(sdk, upstream):
    import anthropic

    for model, deployment in (("gemini-2.5-flash", "gemini/gemini-2.5-flash"), ("gpt-4o", None)):
        upstream.clear()
        if deployment is None:  # OpenAI-compatible: carried as is; the upstream's refusal is no silence
            upstream.reply_fixture("openai", "error_400_invalid_request.json")
        with pytest.raises(anthropic.BadRequestError) as caught:
            sdk.messages.create(model=model, max_tokens=100, messages=HELLO,
                                tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}])
        if deployment is not None:
            assert deployment in caught.value.message and "server_tools" in caught.value.message
            assert upstream.requests == []
        else:
            assert upstream.last().body["tools"] == [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]


def test_server_tools_and_output_config_reach_an_anthropic_upstream_unchanged(sdk, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    output_config = {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {}}}}
    sdk.messages.create(model="claude-sonnet-4", max_tokens=100, messages=HELLO,
                        tools=[server_tool, {"name": "get_tide", "input_schema": {"type": "object"}}],
                        extra_body={"output_config": output_config})
    sent = upstream.last().body
    assert sent["tools"] == [server_tool, {"name": "get_tide", "input_schema": {"type": "object"}}]
    assert sent["output_config"] == output_config


def test_output_config_is_refused_by_a_chat_completions_deployment(sdk, upstream):
    import anthropic

    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(model="gpt-4o", max_tokens=100, messages=HELLO,
                            extra_body={"output_config": {"format": {"type": "json_schema", "schema": {}}}})
    assert "output_config" in caught.value.message and "openai/gpt-4o" in caught.value.message
    assert upstream.requests == []


# -- images inside tool results: mapped where the target takes them, refused elsewhere -------------
PNG = "data:image/png;base64,iVBORw0KGgo="
WITH_SCREENSHOT = [
    {"role": "user", "content": "Take a screenshot"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_tide", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_1",
     "content": [{"type": "text", "text": "here it is"}, {"type": "image_url", "image_url": {"url": PNG}}]},
]


def test_an_image_in_a_tool_result_reaches_anthropic_as_a_content_block(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    raw = client.chat.completions.with_raw_response.create(model="claude-sonnet-4", messages=WITH_SCREENSHOT, tools=[TOOL])
    assert "x-gaud-dropped-params" not in raw.headers
    result = upstream.last().body["messages"][-1]["content"][0]
    assert result == {"type": "tool_result", "tool_use_id": "call_1", "content": [
        {"type": "text", "text": "here it is"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}


def test_a_text_only_tool_result_keeps_its_plain_form(catalog):
    messages = [*WITH_SCREENSHOT[:2], {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "ok"}]}]
    body = {"model": "claude-sonnet-4", "messages": messages, "tools": [TOOL]}
    sent = build_request(one_target(catalog, "claude-sonnet-4"), body, stream=False).body
    assert sent["messages"][-1]["content"][0]["content"] == "ok"


def test_an_image_in_a_tool_result_is_refused_where_it_cannot_go(client, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gemini-2.5-flash", messages=WITH_SCREENSHOT, tools=[TOOL])
    assert "gemini/gemini-2.5-flash" in caught.value.body["message"] and caught.value.body["param"] == "messages[2].content"
    assert upstream.requests == []


def test_a_broken_image_in_a_tool_result_is_refused_by_validation(client, upstream):
    broken = [*WITH_SCREENSHOT[:2], {"role": "tool", "tool_call_id": "call_1", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude-sonnet-4", messages=broken, tools=[TOOL])
    assert caught.value.body["code"] == "invalid_image"
    assert upstream.requests == []


# -- documents: a PDF goes as a document (Anthropic) or inline data (Gemini), refused elsewhere ------
PDF = "JVBERi0xLjQK"
WITH_PDF = [{"role": "user", "content": [
    {"type": "text", "text": "Summarise"}, {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "a.pdf"}}]}]


def test_a_pdf_file_part_reaches_anthropic_as_a_document_block(client, upstream):
    upstream.reply_fixture("anthropic", "messages_text.json")
    client.chat.completions.create(model="claude-sonnet-4", messages=WITH_PDF)
    assert upstream.last().body["messages"][0]["content"][1] == {
        "type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "title": "a.pdf"}


def test_a_pdf_file_part_reaches_gemini_as_inline_data(client, upstream):
    upstream.reply_fixture("gemini", "generate_text.json")
    client.chat.completions.create(model="gemini-2.5-flash", messages=WITH_PDF)
    assert upstream.last().body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "application/pdf", "data": PDF}}


def test_a_file_the_target_cannot_take_is_refused_naming_the_deployment(catalog):
    by_id = [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]
    with pytest.raises(InvalidRequest) as caught:
        build_request(one_target(catalog, "claude-sonnet-4"), {"model": "claude-sonnet-4", "messages": by_id}, stream=False)
    assert CLAUDE in caught.value.message and caught.value.param == "messages[0].content"


def test_a_document_block_from_the_messages_ingress_reaches_gemini(sdk, upstream):
    upstream.reply_fixture("gemini", "generate_text.json")
    sdk.messages.create(model="gemini-2.5-flash", max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
        {"type": "text", "text": "Summarise"}]}])
    assert upstream.last().body["contents"][0]["parts"][0] == {"inlineData": {"mimeType": "application/pdf", "data": PDF}}


def test_control_characters_stripped_from_messages_are_reported(lenient, upstream):
    # (the session gateway refuses control characters; this one strips them, the default)
    upstream.reply_fixture("openai", "chat_completion_text.json")
    raw = lenient.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "a\x1b[0mb"}])
    assert raw.headers["x-gaud-dropped-params"] == "messages"
    assert upstream.last().body["messages"][0]["content"] == "a[0mb"

    upstream.reply_fixture("openai", "chat_completion_text.json")
    raw = lenient.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert "x-gaud-dropped-params" not in raw.headers
