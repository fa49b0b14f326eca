"""Stored Responses API replies (`responses.store`, ingress.d/openai-responses.yaml `state`):
`previous_response_id` continues a conversation, GET/DELETE /v1/responses/{id}, per-user
isolation, `store: false`, retention (SQLite and PostgreSQL), and the refusals with storage off.
End to end with the official openai SDK against a running gateway and a fake upstream."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import openai
import pytest
import sqlalchemy as sa
from openai import OpenAI

from engine.accounts.conversations import ConversationStore
from engine.accounts.store import Store, stored_responses

from .conftest import TEST_KEY_SECRET, RunningGateway, migrated_store, provider_env, spec_tree, start_gateway

PG_URL = os.environ.get("GAUD_TEST_POSTGRES_URL")


@pytest.fixture(scope="module")
def stateful(fake_upstream_server, tmp_path_factory) -> Iterator[tuple[RunningGateway, Store, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("stateful")
    db = f"sqlite:///{tmp / 'gaud.db'}"
    store = Store(db)
    store.migrate()
    keys = {"ada": store.create_key("ada", role="admin")[0], "bob": store.create_key("bob")[0],
            "ada2": ""}
    keys["ada2"] = store.create_key("ada")[0]  # a second key of the same user
    env = {**provider_env(fake_upstream_server.url), "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false", fallback="false")),
           "GAUD_AUTH_ENABLED": "true", "GAUD_DATABASE_URL": db, "GAUD_RESPONSES_STORE": "true"}
    running = start_gateway(env, tmp / "gateway.log")
    yield running, store, keys
    running.process.terminate()
    running.process.wait(10)
    store.close()


def sdk(running: RunningGateway, key: str) -> OpenAI:
    return OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0, timeout=20)


def _texts(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_two_turns_retrieve_and_delete(stateful, upstream):
    running, _store, keys = stateful
    client = sdk(running, keys["ada"])
    upstream.reply_fixture("openai", "chat_completion_text.json")
    first = client.responses.create(model="gpt-4o", instructions="Be brief.", input="My name is Ada.")
    assert first.id.startswith("resp_") and first.output_text
    upstream.reply_fixture("openai", "chat_completion_text.json")
    second = client.responses.create(model="gpt-4o", previous_response_id=first.id, input="What is my name?")
    assert second.id != first.id and second.previous_response_id == first.id

    sent = upstream.last().body["messages"]
    # The earlier turn's instructions are not carried over (the Responses API's semantics).
    assert [(m["role"], _texts(m)) for m in sent] == [
        ("user", "My name is Ada."), ("assistant", first.output_text), ("user", "What is my name?")]

    again = client.responses.retrieve(first.id)
    assert again.model_dump() == first.model_dump()
    assert sdk(running, keys["ada2"]).responses.retrieve(second.id).id == second.id  # the user's, not the key's

    client.responses.delete(first.id)  # the SDK checks nothing; the body is checked below
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    raw = httpx.delete(f"{running.url}/v1/responses/{first.id}", headers={"authorization": f"Bearer {keys['ada']}"})
    assert raw.status_code == 404 and raw.json()["error"]["code"] == "response_not_found"

    # The second reply holds the whole conversation: it continues though the first is gone.
    upstream.reply_fixture("openai", "chat_completion_text.json")
    client.responses.create(model="gpt-4o", previous_response_id=second.id, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "And again?"}]}])
    assert [m["role"] for m in upstream.last().body["messages"]] == ["user", "assistant", "user", "assistant", "user"]

    deleted = httpx.delete(f"{running.url}/v1/responses/{second.id}", headers={"authorization": f"Bearer {keys['ada']}"})
    assert deleted.status_code == 200 and deleted.json() == {"id": second.id, "object": "response", "deleted": True}


def test_another_user_can_neither_read_continue_nor_delete(stateful, upstream):
    running, _store, keys = stateful
    upstream.reply_fixture("openai", "chat_completion_text.json")
    mine = sdk(running, keys["ada"]).responses.create(model="gpt-4o", input="a secret")
    bob = sdk(running, keys["bob"])
    with pytest.raises(openai.NotFoundError) as read:
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as cont:
        bob.responses.create(model="gpt-4o", previous_response_id=mine.id, input="tell me")
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    assert cont.value.body["param"] == "previous_response_id"
    assert cont.value.body["code"] == "previous_response_not_found"
    assert "a secret" not in json.dumps(read.value.body)
    # Missing and another user's look the same.
    with pytest.raises(openai.NotFoundError) as missing:
        bob.responses.retrieve("resp_" + "0" * 32)
    assert missing.value.body["message"].replace("0" * 32, mine.id[5:]) == read.value.body["message"]
    assert not [r for r in upstream.requests if "tell me" in json.dumps(r.body)]
    assert sdk(running, keys["ada"]).responses.retrieve(mine.id).output_text == mine.output_text
    unauthenticated = httpx.get(f"{running.url}/v1/responses/{mine.id}")
    assert unauthenticated.status_code == 401


def test_store_false_keeps_nothing(stateful, upstream):
    running, store, keys = stateful
    client = sdk(running, keys["ada"])
    upstream.reply_fixture("openai", "chat_completion_text.json")
    reply = client.responses.create(model="gpt-4o", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(stored_responses.c.input)).scalars().all()
    assert not any("forget me" in row for row in rows)


def test_a_stream_is_kept_when_it_completes(stateful, upstream):
    running, _store, keys = stateful
    client = sdk(running, keys["ada"])
    upstream.reply_fixture("openai", "stream_include_usage.sse")
    with client.responses.stream(model="gpt-4o", input="Stream it") as stream:
        final = stream.get_final_response()
    assert client.responses.retrieve(final.id).output_text == final.output_text
    upstream.reply_fixture("openai", "chat_completion_text.json")
    client.responses.create(model="gpt-4o", previous_response_id=final.id, input="next")
    assert [(m["role"], _texts(m)) for m in upstream.last().body["messages"]] == [
        ("user", "Stream it"), ("assistant", final.output_text), ("user", "next")]

    # A stream the upstream breaks off ends in an error event: nothing is kept.
    upstream.reply(frames=[b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"Hal"}}]}\n\n'], reset_after=1,
                   content_type="text/event-stream")
    with httpx.stream("POST", f"{running.url}/v1/responses", json={"model": "gpt-4o", "input": "cut", "stream": True},
                      headers={"authorization": f"Bearer {keys['ada']}"}, timeout=20) as raw:
        events = [json.loads(line[6:]) for line in raw.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "error"
    created = events[0]["response"]["id"]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created)


def test_bad_previous_response_ids(stateful, upstream):
    running, _store, keys = stateful
    headers = {"authorization": f"Bearer {keys['ada']}"}
    for value, status in ((5, 400), ("resp_nope", 404), ("", 404)):
        raw = httpx.post(f"{running.url}/v1/responses", headers=headers, timeout=20,
                         json={"model": "gpt-4o", "input": "hi", "previous_response_id": value})
        assert raw.status_code == status, raw.text
        assert raw.json()["error"]["param"] == "previous_response_id"
    assert not upstream.requests


# -- storage off (the default) ------------------------------------------------------------------
def test_off_by_default(gateway, upstream):
    raw = httpx.post(f"{gateway.url}/v1/responses", json={"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_1"})
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert error["param"] == "previous_response_id" and error["code"] == "response_storage_off"
    assert "responses.store" in error["message"]
    for method in ("GET", "DELETE"):
        got = httpx.request(method, f"{gateway.url}/v1/responses/resp_1")
        assert got.status_code == 404 and "responses.store" in got.json()["error"]["message"]
    upstream.reply_fixture("openai", "chat_completion_text.json")
    reply = httpx.post(f"{gateway.url}/v1/responses", json={"model": "gpt-4o", "input": "hi"}).json()
    assert httpx.get(f"{gateway.url}/v1/responses/{reply['id']}").status_code == 404
    assert not [r for r in upstream.requests if r.body and "previous_response_id" in json.dumps(r.body)]


# -- the table, on both databases ---------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> Iterator[Store]:
    yield from migrated_store(request.param, tmp_path, key_secret=TEST_KEY_SECRET)


def test_retention_and_isolation(db):
    kept = ConversationStore(db, retention_days=1)
    reply = {"id": "resp_a", "model": "m", "output": [{"type": "message"}]}
    kept.save(1, "resp_a", [{"role": "user", "content": "hi"}], reply, now=1000.0)
    assert kept.load(1, "resp_a", now=1000.0 + 86399) == ([{"role": "user", "content": "hi"}], reply)
    assert kept.load(2, "resp_a", now=1000.0) is None  # another user
    assert kept.load(1, "resp_a", now=1000.0 + 86400) is None  # expired: never served
    assert not kept.delete(1, "resp_a", now=1000.0 + 86400)
    # The next write (past the prune interval) deletes expired rows of every user.
    kept.save(2, "resp_b", [], {"id": "resp_b"}, now=1000.0 + 90000)
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(stored_responses.c.id)).scalars().all() == ["resp_b"]
    forever = ConversationStore(db, retention_days=None)
    forever.save(3, "resp_c", [], {"id": "resp_c"}, now=0.0)
    assert forever.load(3, "resp_c", now=1e12) is not None
    assert forever.delete(3, "resp_c") and forever.load(3, "resp_c") is None
    with pytest.raises(ValueError, match="retention_days"):
        ConversationStore(db, retention_days=0)


def test_tool_results_continue_a_stored_tool_call(stateful, upstream):
    running, _store, keys = stateful
    client = sdk(running, keys["ada"])
    tools = [{"type": "function", "name": "get_tide_table", "parameters": {"type": "object", "properties": {}}}]
    upstream.reply_fixture("openai", "chat_completion_tool_calls_parallel.json")
    asked = client.responses.create(model="gpt-4o", input="Tides?", tools=tools)
    calls = [item for item in asked.output if item.type == "function_call"]
    assert len(calls) >= 2
    upstream.reply_fixture("openai", "chat_completion_text.json")
    client.responses.create(model="gpt-4o", tools=tools, previous_response_id=asked.id, input=[
        {"type": "function_call_output", "call_id": c.call_id, "output": "06:12"} for c in calls])
    sent = upstream.last().body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", *["tool"] * len(calls)]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [m["tool_call_id"] for m in sent[2:]] == [c.call_id for c in calls]


def test_a_reply_from_the_cache_is_kept_under_its_own_id(stateful, upstream):
    running, _store, keys = stateful
    client = sdk(running, keys["ada"])
    upstream.reply_fixture("openai", "chat_completion_text.json")
    ask = {"model": "gpt-4o", "input": "cached question", "extra_headers": {"x-gaud-cache": "on"}}
    first = client.responses.with_raw_response.create(**ask)
    hit = client.responses.with_raw_response.create(**ask)
    assert hit.headers["x-gaud-cache"] == "hit" and len(upstream.requests) == 1
    one, two = first.parse(), hit.parse()
    assert one.id != two.id and one.output_text == two.output_text
    assert client.responses.retrieve(two.id).output_text == two.output_text
    assert client.responses.retrieve(one.id).id == one.id
