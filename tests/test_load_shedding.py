"""Load shedding: limits on requests in flight per key (`max_in_flight`, 429) and per process
(`limits.max_in_flight`, 503), refused with retry-after before any upstream call, audited, and
released when a request ends, a client that disconnects included."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engine.accounts.inflight import InFlight
from engine.accounts.keys import key_changes
from engine.accounts.store import Principal, Store
from engine.errors import Busy, InvalidRequest, RateLimited

from .conftest import provider_env, spec_tree, start_gateway
from .gated import GatedUpstream

HELLO = [{"role": "user", "content": "Hello"}]


# -- the counter -------------------------------------------------------------------------------------
def test_counts_per_key_and_in_all_and_a_slot_is_given_back_once():
    limits = InFlight(3)
    a = Principal(user_id=1, user_name="a", role="member", key_id=10, max_in_flight=2)
    b = Principal(user_id=2, user_name="b", role="member", key_id=20)
    a1, a2 = limits.enter(a), limits.enter(a)
    with pytest.raises(RateLimited) as refused:
        limits.enter(a)
    assert refused.value.code == "too_many_in_flight" and refused.value.retry_after == 1.0
    b1 = limits.enter(b)
    with pytest.raises(Busy) as busy:
        limits.enter(b)
    assert busy.value.status == 503 and busy.value.retry_after == 1.0
    limits.leave(a1)
    limits.leave(a1)  # twice is once
    assert limits.total == 2 and limits.by_key == {10: 1}
    for slot in (a2, b1):
        limits.leave(slot)
    assert limits.total == 0 and limits.by_key == {}  # keys without a limit are never tracked


@pytest.mark.parametrize("bad", [0, -1, "0", "1.5", 2.5, True, "many"])
def test_a_key_limit_is_a_whole_number_of_at_least_one(bad):
    with pytest.raises(InvalidRequest) as refused:
        key_changes({"max_in_flight": bad})
    assert refused.value.param == "max_in_flight"


def test_a_key_limit_is_stored_and_cleared(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.migrate()
    key, info = store.create_key("ann", **key_changes({"max_in_flight": "4"}))
    assert info.max_in_flight == 4 and store.verify_key(key).max_in_flight == 4
    assert store.update_key(info.lookup, key_changes({"max_in_flight": "none"})).max_in_flight is None
    assert store.verify_key(key).max_in_flight is None
    with pytest.raises(ValueError):
        InFlight(0)


# -- through a served gateway ----------------------------------------------------------------------

@pytest.fixture
def shedding(gated: GatedUpstream, tmp_path: Path):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'shed.db'}"
    store = Store(db)
    store.migrate()
    keys = {
        "root": store.create_key("root", role="admin")[0],
        "a": store.create_key("ann", max_in_flight=2)[0],
        "b": store.create_key("bob")[0],
    }
    env = {**provider_env(gated.url), "OPENAI_BASE_URL": f"{gated.url}/v1", "GAUD_DATABASE_URL": db,
           "GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
           "GAUD_LIMITS_MAX_IN_FLIGHT": "3"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        yield gw, keys, store
    finally:
        gw.process.terminate()
        gw.process.wait(10)


class Streams:
    """Streams opened on the gateway and held by the upstream after their first chunk."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=20)
        self.open: list[tuple[contextlib.AbstractContextManager[Any], Iterator[str]]] = []

    def start(self, key: str) -> None:
        cm = self.http.stream("POST", f"{self.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "gpt-4o", "messages": HELLO, "stream": True})
        response = cm.__enter__()
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the first chunk arrived
        self.open.append((cm, lines))

    def drop(self, i: int) -> None:
        """The client goes away mid-stream."""
        self.open.pop(i)[0].__exit__(None, None, None)

    def finish_all(self) -> None:
        for cm, lines in self.open:
            assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
            cm.__exit__(None, None, None)
        self.open.clear()


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _in_flight_drops_to(url: str, admin: str, n: int) -> None:
    """Poll the gateway's gauge (a slot is given back in the same step that lowers it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {admin}"}).text
        if f"gaud_in_flight_requests {float(n)}" in text:
            return
    raise AssertionError(f"requests in flight did not drop to {n}")


def _refusals(url: str, keys: dict[str, str]) -> tuple[openai.APIStatusError, openai.APIStatusError]:
    """ann is at her key's limit and the process at its own: what each gets."""
    with pytest.raises(openai.RateLimitError) as per_key:
        _client(url, keys["a"]).chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.InternalServerError) as everyone:
        _client(url, keys["b"]).chat.completions.create(model="gpt-4o", messages=HELLO)
    return per_key.value, everyone.value


def _burst(gw: Any, gated: GatedUpstream, keys: dict[str, str]) -> Streams:
    """ann's two streams and bob's one held open, then one more of each refused."""
    gated.hold()
    streams = Streams(gw.url)
    before = len(gated.seen)
    for who in ("a", "a", "b"):
        streams.start(keys[who])
    per_key, everyone = _refusals(gw.url, keys)
    assert per_key.status_code == 429 and per_key.code == "too_many_in_flight"
    assert per_key.response.headers["retry-after"] == "1"
    assert everyone.status_code == 503 and everyone.code == "busy" and everyone.type == "server_error"
    assert everyone.response.headers["retry-after"] == "1"
    assert len(gated.seen) == before + 3  # the refused requests never reached the upstream
    return streams


def test_a_burst_is_shed_before_the_upstream_and_the_limits_recover(shedding, gated):
    gw, keys, store = shedding
    streams = _burst(gw, gated, keys)

    streams.drop(0)  # one of ann's clients disconnects: its place is given back
    _in_flight_drops_to(gw.url, keys["root"], 2)
    assert _client(gw.url, keys["a"]).chat.completions.create(model="gpt-4o", messages=HELLO).choices
    gated.release()
    streams.finish_all()
    _in_flight_drops_to(gw.url, keys["root"], 0)

    # Nothing leaked: exactly the same burst is admitted and refused again.
    again = _burst(gw, gated, keys)
    gated.release()
    again.finish_all()

    gw.process.terminate()
    gw.process.wait(10)  # writes every queued audit row
    rows = store.audit_records()
    refused = [(r["user_name"], r["status"], r["error_kind"]) for r in rows if r["status"] >= 400 and r["status"] != 499]
    assert refused == [("ann", 429, "rate_limit"), ("bob", 503, "busy")] * 2
    assert [r["status"] for r in rows].count(499) == 1
    assert all(r["attempts"] == 0 for r in rows if r["status"] in (429, 503))
