"""Faults never pass as success (issue 19): every upstream fault, stream and not, through a real
`gaud-engine serve` with the openai SDK as the client.

Each alias has a faulty first deployment (tag `a` of tests/faultserver.py: the fault named by the
prompt's marker) and a healthy fallback (tag `b`). The client must get either the complete
healthy reply (content == HEALTHY_TEXT, finish_reason "stop") or a clean OpenAI-style error
(JSON `{"error": {"message", "type", "code"}}`, or an SSE error event with no finish reason before
it and nothing after it, no [DONE]), never a false success; it must get it within the request
deadline; and the request's audit row must say what the client saw. Answers are judged from the
bytes the SDK received (tests/faultjudge.py), so a stream's missing [DONE] or extra frames count.

The contract, per fault (REPLY: the fallback's complete reply; ERROR: a clean error; for a stream
that already sent content, the error is an SSE error event after a 200):

| fault       | non-stream | stream               | why                                              |
|-------------|------------|----------------------|--------------------------------------------------|
| healthy     | REPLY (a)  | REPLY (a)            | served by the first deployment, one attempt      |
| 500/503/529 | REPLY      | REPLY                | upstream_5xx / overloaded: retried, then fallback|
| 429         | REPLY      | REPLY                | rate_limit with retry-after: retried, fallback   |
| stall       | REPLY      | REPLY                | timeout (read_timeout): retried, then fallback   |
| trickle     | REPLY      | REPLY                | idle_timeout / total_timeout, not read_timeout:  |
|             |            |                      | keep-alive bytes must not hold a request forever |
| reset       | REPLY      | ERROR event or REPLY | content already reached the client: an error     |
|             |            |                      | event, no finish, no [DONE] (kind connection or  |
|             |            |                      | incomplete_stream); a gateway that has not sent  |
|             |            |                      | a byte yet may still fail over                   |
| truncated   | REPLY      | ERROR event or REPLY | no terminal event = incomplete_stream, never     |
|             |            |                      | finish_reason "stop"; half a JSON body =         |
|             |            |                      | response_parsing                                 |
| wrong_shape | REPLY      | REPLY                | response_parsing (502), counted by the breaker   |
| malformed   | REPLY      | REPLY                | a first frame that is not JSON is not forwarded  |
|             |            |                      | (a bad frame mid-way through a pass-through      |
|             |            |                      | stream is not tried: the issue lets pass-through |
|             |            |                      | check only the frames it reads)                  |
| html        | REPLY      | REPLY                | 502 with a non-JSON body: upstream_5xx           |

When both deployments fail (`test_both_deployments_fail`), the client gets a clean error with a
5xx status and the audit row has that status and an error kind.

Audit: one row per request (request_id = the client's x-request-id); row.status is the HTTP
status the client saw, and row.error_kind is empty exactly when the client got the complete reply.
A REPLY row names the deployment that served it (`b` after a fault) and counts every attempt.

Deadlines (upstream.total_timeout, idle_timeout, request_deadline) are set through GAUD_*
variables: a GAUD_* variable engine/config.py does not know is ignored (a config file naming it
would be refused: "unknown setting"), so this file runs on a gateway with or without them; without
them the trickle cases fail, too slow.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from engine.config import DEFAULTS

from .conftest import RunningGateway, spec_tree, start_gateway
from .faultjudge import judge_json, judge_sse
from .faultserver import FAULTS, FaultServer, marker

READ_TIMEOUT = 0.4
IDLE_TIMEOUT = 0.8
TOTAL_TIMEOUT = 2.5
REQUEST_DEADLINE = 4.0
#: A request taking longer than this hung: the deadline plus time to answer and audit.
HUNG_AFTER = REQUEST_DEADLINE + 1.5
DEADLINE_SETTINGS = ("total_timeout", "idle_timeout", "request_deadline")
MISSING_SETTINGS = [name for name in DEADLINE_SETTINGS if name not in DEFAULTS["upstream"]]

REPLY, ERROR = "reply", "error"
MID_STREAM = {"reset", "truncated"}
#: The outcomes a client may see, by (fault, stream); see the table above.
EXPECTED: dict[tuple[str, bool], set[str]] = {
    (fault, stream): ({REPLY, ERROR} if stream and fault in MID_STREAM else {REPLY})
    for fault in FAULTS for stream in (False, True)
}
#: Error kinds an audit row may give when a mid-stream fault ends in an error event.
MID_STREAM_KINDS = {"reset": {"connection", "incomplete_stream"}, "truncated": {"incomplete_stream", "response_parsing"}}

#: Aliases by the upstream wire format of their first deployment; the fallback speaks OpenAI.
PRIMARY = {"openai": "openai/gpt-4o", "anthropic": "anthropic/claude-sonnet-4-20250514"}
FALLBACK = "openai/gpt-4-turbo"


@dataclass
class Seen:
    """What the client saw: the outcome (tests/faultjudge.py), the HTTP status, how long it took,
    and why (for messages)."""

    outcome: str  # reply | error | false_success | unclean
    status: int | None
    elapsed: float
    detail: str = ""


def call(client: openai.OpenAI, model: str, prompt: str, stream: bool, request_id: str) -> Seen:
    """One request through the SDK, judged from the bytes it received (a stream's whole SSE body,
    so that frames after an error event, or a missing [DONE], are seen too)."""
    started = time.monotonic()
    messages = [{"role": "user", "content": prompt}]
    headers = {"x-request-id": request_id}
    status: int | None = None
    try:
        if stream:
            with client.chat.completions.with_streaming_response.create(
                    model=model, messages=messages, stream=True, extra_headers=headers) as response:  # type: ignore[arg-type]
                status = response.status_code
                kind = response.headers.get("content-type", "")
                raw = b"".join(response.iter_bytes())
            outcome, detail = judge_sse(raw) if kind.startswith("text/event-stream") else ("unclean", f"a {kind} stream")
        else:
            reply = client.chat.completions.with_raw_response.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                                     extra_headers=headers)
            status = reply.status_code
            outcome, detail = judge_json(status, reply.http_response.content)
    except openai.APIStatusError as exc:
        status = exc.status_code
        outcome, detail = judge_json(status, exc.response.read())
        detail = detail or f"{status} {exc.response.text[:300]}"
    except Exception as exc:  # noqa: BLE001 - anything else the client meets is an unclean answer
        outcome, detail = "unclean", f"{type(exc).__name__}: {exc}"[:400]
    return Seen(outcome, status, time.monotonic() - started, detail)


class Audit:
    """The gateway's audit_log table, read from its SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, where: str = "1", *args: Any) -> list[dict[str, Any]]:
        with sqlite3.connect(self.path) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(f"SELECT * FROM audit_log WHERE {where} ORDER BY id", args)]

    def row_for(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The request's audit row once written (rows are written in batches, audit.max_delay)."""
        deadline = time.monotonic() + timeout
        while not (rows := self.rows("request_id = ?", request_id)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit row for request {request_id} within {timeout} s")
            time.sleep(0.02)  # polling a file the gateway writes, not waiting for readiness
        assert len(rows) == 1, f"{len(rows)} audit rows for one request: {rows}"
        return rows[0]


@dataclass
class Bench:
    gateway: RunningGateway
    faults: FaultServer
    client: openai.OpenAI
    audit: Audit
    sent: list[str] = field(default_factory=list)

    def send(self, wire: str, prompt: str, stream: bool) -> tuple[Seen, str]:
        request_id = f"fault-{uuid.uuid4().hex}"
        self.sent.append(request_id)
        return call(self.client, f"fault-{wire}", prompt, stream, request_id), request_id


def routes_for(faults: FaultServer, tree: Path) -> None:
    """Aliases fault-openai and fault-anthropic: the faulty deployment, then the healthy one.
    Retry and fallback rules stay the shipped defaults (new kinds reach this file by routes.yaml),
    with one retry instead of three to keep the file fast."""
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["defaults"]["retry"] = re.sub(r"attempt <= \d+", "attempt <= 1", routes["defaults"]["retry"])
    # Named: an unnamed deployment with an api_base is called `provider/model@api_base`.
    fallback = {"name": FALLBACK, "provider": "openai", "model": "gpt-4-turbo", "api_base": faults.api_base("b")}
    routes["aliases"] = {
        f"fault-{wire}": {"candidates": [
            {"name": name, "provider": name.split("/")[0], "model": name.split("/")[1],
             "api_base": faults.api_base("a", wire=wire)},
            fallback]}
        for wire, name in PRIMARY.items()
    }
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    tmp = tmp_path_factory.mktemp("faults")
    faults = FaultServer(trickle_seconds=HUNG_AFTER + 0.7, stall_max=30.0)
    faults.start()
    # A breaker that never opens here: every request must meet its fault (bench/chaos.py keeps one).
    tree = spec_tree(tmp, backoff={"initial": 0.05, "multiplier": 2.0, "max": 0.1, "jitter": 0.0, "max_retry_after": 2},
                     breaker={"failures": 100_000, "cooldown": 1})
    routes_for(faults, tree)
    env = {
        "GAUD_SPECS_DIR": str(tree),
        "GAUD_AUTH_ENABLED": "false",
        "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'gaud.db'}",
        "GAUD_AUDIT_MAX_DELAY": "0.05",
        "OPENAI_API_KEY": "sk-openai-test-secret-0003",
        "ANTHROPIC_API_KEY": "sk-ant-test-secret-0001",
        "GAUD_UPSTREAM_CONNECT_TIMEOUT": "2",
        "GAUD_UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT),
        "GAUD_UPSTREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "GAUD_UPSTREAM_TOTAL_TIMEOUT": str(TOTAL_TIMEOUT),
        "GAUD_UPSTREAM_REQUEST_DEADLINE": str(REQUEST_DEADLINE),
    }
    gateway = start_gateway(env, tmp / "gateway.log")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=HUNG_AFTER + 4)
    try:
        yield Bench(gateway, faults, client, Audit(tmp / "gaud.db"))
    finally:
        client.close()
        gateway.process.terminate()
        gateway.process.wait(20)
        faults.stop()


def check_audit(row: dict[str, Any], seen: Seen) -> None:
    """The audit row says what the client saw."""
    assert row["status"] == seen.status, f"audit status {row['status']}, the client saw {seen.status} ({seen.detail})"
    if seen.outcome == REPLY:
        assert row["error_kind"] is None, f"the client got the reply, the audit row says {row['error_kind']}"
    else:
        assert row["error_kind"], f"the client saw {seen.outcome} ({seen.detail}); the audit row gives no error kind"


def deadline_note() -> str:
    return f" (engine.config has no upstream.{', '.join(MISSING_SETTINGS)} yet)" if MISSING_SETTINGS else ""


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("wire", list(PRIMARY))
@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_a_reply_or_a_clean_error(bench: Bench, fault: str, wire: str, stream: bool) -> None:
    met = bench.faults.count("a", fault)
    seen, request_id = bench.send(wire, f"Tell me about tide pools. {marker(a=fault)}", stream)
    row = bench.audit.row_for(request_id)
    assert bench.faults.count("a", fault) > met, "the faulty deployment was never called"
    assert seen.outcome in EXPECTED[(fault, stream)], f"{fault}: the client saw {seen.outcome}: {seen.detail}"
    assert seen.elapsed <= HUNG_AFTER, f"{fault}: the answer took {seen.elapsed:.1f} s{deadline_note()}"
    check_audit(row, seen)
    if seen.outcome == REPLY:
        served_by = PRIMARY[wire] if fault == "healthy" else FALLBACK
        assert row["deployment"] == served_by
        assert row["attempts"] >= (1 if fault == "healthy" else 2)
        assert PRIMARY[wire] in (row["tried"] or "")
    else:  # a mid-stream fault: a 200, then an error event
        assert seen.status == 200 and row["error_kind"] in MID_STREAM_KINDS[fault], (seen.detail, row["error_kind"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", ["500", "html", "wrong_shape", "truncated", "malformed"])
def test_both_deployments_fail(bench: Bench, fault: str, stream: bool) -> None:
    """No healthy deployment left: a clean error, never a reply that is not one."""
    seen, request_id = bench.send("openai", f"Tide pools? {marker(a=fault, b=fault)}", stream)
    row = bench.audit.row_for(request_id)
    assert seen.outcome == ERROR, f"{fault}: the client saw {seen.outcome}: {seen.detail}"
    assert (seen.status is not None and seen.status >= 500) or (stream and seen.status == 200), seen.detail
    check_audit(row, seen)


def test_every_request_has_one_audit_row(bench: Bench) -> None:
    """Runs last: as many audit rows as requests this file sent, none twice, none missing."""
    healthy, request_id = bench.send("openai", "Tide pools?", False)
    assert healthy.outcome == REPLY, healthy.detail
    bench.audit.row_for(request_id)
    ids = [row["request_id"] for row in bench.audit.rows()]
    assert sorted(ids) == sorted(bench.sent)
