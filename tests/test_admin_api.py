"""The admin API (/admin/users, /admin/keys, /admin/events) end to end, through two real `gaud-engine
serve` processes on one SQLite database and the CLI in processes of its own: every verb, the
refusals (member, revoked, unknown and missing keys), validation (unknown fields are refused by
name), agreement with the CLI in both directions, and the admin_events trail (right actor, no
secret, no erased name). The operations themselves (engine.accounts.admin) also run in-process
on SQLite and, with GAUD_TEST_POSTGRES_URL, PostgreSQL: a change whose event cannot be written
is rolled back."""

from __future__ import annotations

import getpass
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa
from openai import AuthenticationError, OpenAI

from engine.accounts import admin
from engine.accounts.admin import DELETED_HASH, perform
from engine.accounts.retention import ERASED_PREFIX
from engine.accounts.store import Store, admin_events, api_keys, audit_log
from engine.errors import GatewayError
from engine.web.admin_api import ADMIN_MAX_BODY, ADMIN_ROUTES

from .conftest import ROOT, TEST_KEY_SECRET, RunningGateway, pg_store, provider_env, spec_tree, start_gateway

PG = os.environ.get("GAUD_TEST_POSTGRES_URL")
CLI_ACTOR = f"cli:{getpass.getuser()}"


@dataclass
class Admin:
    """Two gateways on one database, its Store, the root admin key and the CLI's environment."""

    a: RunningGateway
    b: RunningGateway
    store: Store
    root: str
    env: dict[str, str]

    def call(self, method: str, path: str, key: str | None = None, *, via: RunningGateway | None = None,
             **kwargs: object) -> httpx.Response:
        headers = {} if key is None else {"authorization": f"Bearer {key}"}
        return httpx.request(method, f"{(via or self.a).url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def http(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """As the root admin, on gateway A."""
        return self.call(method, path, self.root, **kwargs)

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "engine", *args], check=False, cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, **self.env})
        if ok:
            assert done.returncode == 0, done.stderr + done.stdout
        return done

    def events(self, **query: object) -> list[dict[str, object]]:
        reply = self.http("GET", "/admin/events", params=query)
        assert reply.status_code == 200, reply.text
        data: list[dict[str, object]] = reply.json()["data"]
        return data


@pytest.fixture(scope="module")
def served(fake_upstream_server, tmp_path_factory) -> Iterator[Admin]:
    tmp = tmp_path_factory.mktemp("admin_api")
    db = f"sqlite:///{tmp / 'gaud.db'}"
    store = Store(db, key_secret=TEST_KEY_SECRET)
    store.migrate()
    root, _ = store.create_key("root", role="admin")
    env = {**provider_env(fake_upstream_server.url), "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false")),
           "GAUD_DATABASE_URL": db, "GAUD_AUTH_ENABLED": "true", "GAUD_SECRET_KEY": TEST_KEY_SECRET}
    a = start_gateway(env, tmp / "a.log")
    b = start_gateway(env, tmp / "b.log")
    try:
        yield Admin(a, b, store, root, {"GAUD_DATABASE_URL": db, "GAUD_SECRET_KEY": TEST_KEY_SECRET})
    finally:
        for gw in (a, b):
            gw.process.terminate()
        for gw in (a, b):
            gw.process.wait(20)
        store.close()


def error(reply: httpx.Response) -> dict[str, object]:
    body: dict[str, object] = reply.json()["error"]
    return body


def concrete(path: str) -> str:
    return path.replace("{name}", "nobody").replace("{lookup}", "000000000000")


# -- every verb -----------------------------------------------------------------------------------------
def test_users_every_verb(served):
    created = served.http("POST", "/admin/users", json={"name": "ulla", "budget_monthly": 50, "rpm_limit": 30})
    assert created.status_code == 201, created.text
    assert created.json() == {"name": "ulla", "role": "member", "created_at": pytest.approx(time.time(), abs=60),
                              "budget_daily": None, "budget_monthly": 50.0, "rpm_limit": 30.0, "tpm_limit": None,
                              "team": None, "active_keys": 0}
    again = served.http("POST", "/admin/users", json={"name": "ulla"})
    assert again.status_code == 409 and (error(again)["code"], error(again)["param"]) == ("user_exists", "name")
    listed = {u["name"]: u for u in served.http("GET", "/admin/users").json()["data"]}
    assert listed["ulla"]["budget_monthly"] == 50.0 and listed["root"]["role"] == "admin"
    assert listed["root"]["active_keys"] >= 1
    patched = served.http("PATCH", "/admin/users/ulla", json={"role": "admin", "budget_monthly": None, "tpm_limit": 1000})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["role"], patched.json()["budget_monthly"], patched.json()["tpm_limit"]) == ("admin", None, 1000.0)
    key = served.http("POST", "/admin/keys", json={"user": "ulla", "role": "admin", "label": "u1"}).json()
    shown = served.http("GET", "/admin/users/ulla").json()
    assert shown["active_keys"] == 1 and [k["id"] for k in shown["keys"]] == [key["id"]]
    assert "key" not in shown["keys"][0]  # never the key itself
    erased = served.http("DELETE", "/admin/users/ulla")
    assert erased.status_code == 200 and erased.json()["keys_revoked"] == 1, erased.text
    assert erased.json()["token"].startswith(ERASED_PREFIX)
    for method in ("GET", "PATCH", "DELETE"):
        gone = served.http(method, "/admin/users/ulla", **({"json": {"role": "member"}} if method == "PATCH" else {}))
        assert gone.status_code == 404 and error(gone)["code"] == "user_not_found", (method, gone.text)
    # The erased user's admin key no longer opens anything, on either gateway.
    assert served.call("GET", "/admin/users", key["key"], via=served.b).status_code == 401



def test_teams_every_verb_and_membership_through_users_and_keys(served):
    created = served.http("POST", "/admin/teams", json={"name": "tide", "budget_daily": 5, "models": "fast-*"})
    assert created.status_code == 201, created.text
    assert created.json() | {"created_at": 0} == {
        "name": "tide", "created_at": 0, "budget_daily": 5.0, "budget_monthly": None, "rpm_limit": None,
        "tpm_limit": None, "models": ["fast-*"], "members": 0, "spent_today": 0.0, "spent_month": 0.0}
    assert served.http("POST", "/admin/teams", json={"name": "tide"}).json()["error"]["code"] == "team_exists"
    assert error(served.http("POST", "/admin/teams", json={"name": "t2", "budget": 5}))["param"] == "budget"

    user = served.http("POST", "/admin/users", json={"name": "tess", "team": "tide"})
    assert user.status_code == 201 and user.json()["team"] == "tide"
    key = served.http("POST", "/admin/keys", json={"user": "tom", "team": "tide"}).json()
    assert key["team"] == "tide"
    assert served.http("GET", "/admin/teams/tide").json()["members"] == 2
    assert error(served.http("POST", "/admin/keys", json={"user": "tim", "team": "nope"}))["code"] == "team_not_found"
    assert all(k["user"] != "tim" for k in served.http("GET", "/admin/keys").json()["data"])  # nothing half-made

    refused = served.http("DELETE", "/admin/teams/tide")
    assert (refused.status_code, error(refused)["code"]) == (400, "team_has_members")
    renamed = served.http("PATCH", "/admin/teams/tide", json={"name": "ebb", "budget_daily": None})
    assert (renamed.json()["name"], renamed.json()["budget_daily"]) == ("ebb", None)
    assert served.http("GET", f"/admin/keys/{key['id']}").json()["team"] == "ebb"  # membership goes by id
    assert served.cli("teams", "list").stdout.splitlines()[1].split()[:2] == ["ebb", "2"]  # the CLI agrees
    assert served.http("PATCH", f"/admin/keys/{key['id']}", json={"team": None}).json()["team"] is None
    assert served.http("PATCH", "/admin/users/tess", json={"team": "none"}).json()["team"] is None
    assert served.http("DELETE", "/admin/teams/ebb").json() == {"deleted": True, "name": "ebb"}
    assert served.http("GET", "/admin/teams/ebb").status_code == 404
    assert "ebb" not in [t["name"] for t in served.http("GET", "/admin/teams").json()["data"]]
    actions = [(e["action"], e["target"]) for e in served.events(limit=20)]
    for expected in (("teams.create", "tide"), ("teams.update", "tide"), ("teams.delete", "ebb"),
                     ("users.create", "tess"), ("keys.update", key["id"])):
        assert expected in actions, expected
    joined = next(e for e in served.events(limit=50) if e["action"] == "keys.create" and e["target"] == key["id"])
    assert joined["detail"]["team"] == "tide"

def test_keys_every_verb_and_a_revoked_key_is_refused_by_the_other_process_at_once(served):
    created = served.http("POST", "/admin/keys", json={"user": "kira", "models": ["smart"], "expires": "30d",
                                                        "max_in_flight": 3, "budget_daily": 2})
    assert created.status_code == 201, created.text
    key, lookup = created.json()["key"], created.json()["id"]
    assert key.startswith(f"sk-gaud-{lookup}") and created.json()["max_in_flight"] == 3
    listed = {k["id"]: k for k in served.http("GET", "/admin/keys").json()["data"]}
    assert listed[lookup]["user_spent_today"] == 0 and listed[lookup]["last_used"] is None
    assert all("key" not in k for k in listed.values())
    assert served.http("GET", f"/admin/keys/{lookup}").json()["models"] == ["smart"]
    assert served.http("GET", f"/admin/keys/sk-gaud-{lookup}").json()["id"] == lookup  # the prefix works too
    whole = served.http("GET", f"/admin/keys/{key}")  # the whole key would sit in access logs: refused
    assert (whole.status_code, error(whole)["code"]) == (400, "key_in_url") and key not in whole.text
    patched = served.http("PATCH", f"/admin/keys/{lookup}", json={"label": "notebook", "models": None})
    assert (patched.json()["label"], patched.json()["models"]) == ("notebook", None)

    with OpenAI(base_url=f"{served.b.url}/v1", api_key=key, max_retries=0) as client:
        assert client.models.list().data  # B serves the key...
        revoked = served.http("POST", f"/admin/keys/{lookup}/revoke")  # ...A revokes it...
        assert revoked.status_code == 200 and revoked.json() == {"revoked": True}
        with pytest.raises(AuthenticationError) as refused:  # ...and B refuses its very next request
            client.models.list()
    assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
    again = served.http("POST", f"/admin/keys/{lookup}/revoke", json={})  # an empty body is no field
    assert again.status_code == 404 and error(again)["code"] == "key_not_found"
    assert served.http("PATCH", f"/admin/keys/{lookup}", json={"label": "x"}).status_code == 404  # revoked: not active
    assert served.http("GET", f"/admin/keys/{lookup}").json()["revoked"] is True

    # Delete: revoked at once (no revoke first) and the stored hash gone; the row stays, as revoked.
    other = served.http("POST", "/admin/keys", json={"user": "kira"}).json()
    assert served.call("GET", "/v1/models", other["key"], via=served.b).status_code == 200
    deleted = served.http("DELETE", f"/admin/keys/{other['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "id": other["id"]}
    assert served.call("GET", "/v1/models", other["key"], via=served.b).status_code == 401
    assert served.http("GET", f"/admin/keys/{other['id']}").json()["revoked"] is True
    with served.store.engine.connect() as conn:
        assert conn.execute(sa.select(api_keys.c.hash).where(api_keys.c.lookup == other["id"])).scalar_one() == DELETED_HASH
    assert served.http("DELETE", f"/admin/keys/{other['id']}").status_code == 200  # again: nothing left to drop
    missing = served.http("DELETE", "/admin/keys/000000000000")
    assert missing.status_code == 404 and error(missing)["code"] == "key_not_found"


# -- refusals -------------------------------------------------------------------------------------------
def test_every_route_refuses_members_revoked_unknown_and_missing_keys(served):
    member = served.store.create_key("mona")[0]
    revoked_admin = served.store.create_key("rex", role="admin")[0]
    assert served.store.revoke_key(revoked_admin)
    unknown = f"sk-gaud-{secrets.token_hex(6)}{secrets.token_urlsafe(24)}"
    before = served.events(limit=1000)
    for method, path, _resource, _verb in ADMIN_ROUTES:
        kwargs = {"json": {"name": "intruder", "user": "intruder"}} if method in ("POST", "PATCH") else {}
        for key, status, code in ((None, 401, "missing_api_key"), (unknown, 401, "invalid_api_key"),
                                  (revoked_admin, 401, "invalid_api_key"), (member, 403, "admin_required")):
            for gw in (served.a, served.b):
                reply = served.call(method, concrete(path), key, via=gw, **kwargs)
                assert (reply.status_code, error(reply)["code"]) == (status, code), (method, path, key, reply.text)
    assert served.events(limit=1000) == before  # nothing changed, nothing recorded
    assert "intruder" not in {u["name"] for u in served.http("GET", "/admin/users").json()["data"]}


# -- validation -----------------------------------------------------------------------------------------
def test_unknown_fields_and_bad_values_are_400s_naming_the_field(served):
    lookup = served.http("POST", "/admin/keys", json={"user": "vera"}).json()["id"]
    before = served.events(limit=1000)
    cases = [
        ("POST", "/admin/users", {"name": "vic", "budget_dialy": 5}, "budget_dialy", "unknown_field"),
        ("POST", "/admin/users", {"name": "vic", "models": ["smart"]}, "models", "unknown_field"),  # a key's field
        ("POST", "/admin/users", {"budget_daily": 5}, "name", "invalid_value"),
        ("POST", "/admin/users", {"name": "erased-0123456789ab"}, "name", "invalid_value"),
        ("POST", "/admin/users", {"name": "vic", "role": "owner"}, "role", "invalid_value"),
        ("PATCH", "/admin/users/vera", {"rpm_limit": -1}, "rpm_limit", "invalid_value"),
        ("PATCH", "/admin/users/vera", {"label": "x"}, "label", "unknown_field"),
        ("PATCH", "/admin/users/vera", {"user": "someone"}, "user", "unknown_field"),
        ("POST", "/admin/keys", {"user": "vic", "lable": "typo"}, "lable", "unknown_field"),
        ("POST", "/admin/keys", {"user": "vic", "max_in_flight": 0}, "max_in_flight", "invalid_value"),
        ("POST", "/admin/keys", {"models": ["smart"]}, "user", "invalid_value"),
        ("PATCH", f"/admin/keys/{lookup}", {"expires": "yesterday"}, "expires", "invalid_value"),
        ("PATCH", f"/admin/keys/{lookup}", {"user": "someone"}, "user", "unknown_field"),
        ("PATCH", f"/admin/keys/{lookup}", {"name": "x"}, "name", "unknown_field"),
    ]
    for method, path, body, param, code in cases:
        reply = served.http(method, path, json=body)
        assert reply.status_code == 400, (body, reply.text)
        assert (error(reply)["param"], error(reply)["code"]) == (param, code), (body, reply.text)
        assert error(reply)["type"] == "invalid_request_error"
    for path, param in (("/admin/events?limit=0", "limit"), ("/admin/events?limit=2.5", "limit"),
                        ("/admin/events?since=soon", "since"), ("/admin/keys?user=vera", "user"),
                        ("/admin/users?verbose=1", "verbose")):
        reply = served.http("GET", path)
        assert reply.status_code == 400 and error(reply)["param"] == param, (path, reply.text)
    noted = served.http("POST", f"/admin/keys/{lookup}/revoke", json={"reason": "typo check"})
    assert noted.status_code == 400 and error(noted)["param"] == "reason"
    nothing = served.http("PATCH", f"/admin/keys/{lookup}", json={})
    assert nothing.status_code == 400 and error(nothing)["code"] == "nothing_to_change"
    for raw, headers, status in ((b"[1]", {"content-type": "application/json"}, 400),
                                 (b"{nope", {"content-type": "application/json"}, 400),
                                 (b'{"name": "vic"}', {"content-type": "text/plain"}, 415),
                                 (b'{"name": "' + b"v" * ADMIN_MAX_BODY + b'"}', {"content-type": "application/json"}, 413)):
        reply = httpx.post(f"{served.a.url}/admin/users", content=raw, timeout=30,
                           headers={**headers, "authorization": f"Bearer {served.root}"})
        assert reply.status_code == status, (raw[:20], reply.text)
    assert served.events(limit=1000) == before  # refused changes record nothing
    assert "vic" not in {u["name"] for u in served.http("GET", "/admin/users").json()["data"]}


# -- agreement with the CLI -----------------------------------------------------------------------------
def test_the_cli_and_the_api_see_and_change_the_same_accounts(served):
    # Made over HTTP, seen by the CLI.
    served.http("POST", "/admin/users", json={"name": "hugo", "budget_daily": 4, "tpm_limit": 900})
    row = next(line.split() for line in served.cli("users", "list").stdout.splitlines() if line.startswith("hugo "))
    assert row[:7] == ["hugo", "member", "4", "-", "-", "900", "0"]
    key = served.http("POST", "/admin/keys", json={"user": "hugo", "label": "from-http", "models": "smart,fast-*"}).json()
    line = next(line for line in served.cli("keys", "list").stdout.splitlines() if line.startswith(key["prefix"]))
    assert line.split()[1:4] == ["hugo", "member", "active"] and line.endswith("smart,fast-*             from-http")

    # Made by the CLI, seen over HTTP.
    made = served.cli("users", "create", "cleo", "--role", "admin", "--budget-monthly", "7").stdout
    assert made == "created cleo (admin; daily: -, monthly: 7, rpm: -, tpm: -)\n"
    assert served.http("GET", "/admin/users/cleo").json()["budget_monthly"] == 7.0
    out = served.cli("keys", "create", "--user", "cleo", "--role", "admin", "--label", "from-cli").stdout
    prefix, cli_key = out.split()[1], out.split()[-1]
    shown = served.http("GET", f"/admin/keys/{prefix}").json()
    assert (shown["user"], shown["label"], shown["role"]) == ("cleo", "from-cli", "admin")
    assert served.call("GET", "/admin/users", cli_key).status_code == 200  # a CLI-made admin key opens the API

    # Updated in one, seen in the other.
    served.cli("users", "update", "hugo", "--budget-daily", "none", "--rpm", "12")
    assert (served.http("GET", "/admin/users/hugo").json()["budget_daily"], served.http("GET", "/admin/users/hugo").json()["rpm_limit"]) == (None, 12.0)
    served.http("PATCH", f"/admin/keys/{key['id']}", json={"label": "renamed", "expires": "never"})
    line = next(line for line in served.cli("keys", "list").stdout.splitlines() if line.startswith(key["prefix"]))
    assert line.endswith(" renamed")
    served.cli("keys", "update", key["prefix"], "--label", "again")
    assert served.http("GET", f"/admin/keys/{key['id']}").json()["label"] == "again"

    # Teams: made over HTTP, joined by the CLI; made by the CLI, joined over HTTP.
    served.http("POST", "/admin/teams", json={"name": "north", "rpm_limit": 60})
    assert served.cli("users", "update", "hugo", "--team", "north").stdout.endswith("; team north)\n")
    assert served.http("GET", "/admin/users/hugo").json()["team"] == "north"
    assert served.cli("teams", "create", "south", "--budget-daily", "3").stdout.startswith("created team south ")
    served.http("PATCH", "/admin/users/cleo", json={"team": "south"})
    assert "(cleo, team south, admin;" in served.cli("keys", "update", prefix, "--label", "cli").stdout
    assert served.cli("users", "create", "dora", "--team", "south").stdout.endswith("; team south)\n")
    assert served.http("GET", "/admin/teams/south").json()["members"] == 2
    served.cli("users", "update", "cleo", "--team", "none")
    served.cli("users", "update", "dora", "--team", "none")
    assert served.http("DELETE", "/admin/teams/south").status_code == 200

    # Revoked and deleted in one, seen in the other; refusals read the same.
    served.http("POST", f"/admin/keys/{prefix}/revoke")
    line = next(line for line in served.cli("keys", "list").stdout.splitlines() if line.startswith(prefix))
    assert line.split()[3] == "revoked"
    assert served.call("GET", "/admin/users", cli_key, via=served.b).status_code == 401
    assert served.cli("keys", "delete", key["prefix"]).stdout == f"deleted {key['prefix']}\n"
    assert served.http("GET", f"/admin/keys/{key['id']}").json()["revoked"] is True
    refused = served.cli("users", "create", "hugo", ok=False)
    assert refused.returncode == 1 and "There is a user named hugo already." in refused.stderr
    typo = served.cli("users", "update", "nobody-here", "--rpm", "1", ok=False)
    assert typo.returncode == 1 and "no user nobody-here" in typo.stderr
    assert served.cli("users", "delete", "hugo", "--yes").stdout.startswith("erased hugo: 0 keys revoked")
    assert served.http("GET", "/admin/users/hugo").status_code == 404


# -- the trail ------------------------------------------------------------------------------------------
def test_every_change_is_an_event_with_its_actor_and_no_secret(served):
    since = time.time()
    root_actor = served.root[:20]
    key = served.http("POST", "/admin/keys", json={"user": "evan", "label": "trail", "budget_daily": 1}).json()
    served.http("PATCH", f"/admin/keys/{key['id']}", json={"max_in_flight": 2})
    served.cli("keys", "update", key["key"], "--label", "via-cli")  # given the whole key: recorded by its id only
    served.http("GET", "/admin/keys")  # reads record nothing
    served.http("GET", f"/admin/keys/{key['id']}")
    served.http("POST", "/admin/users", json={"name": "erin"})
    served.cli("users", "update", "erin", "--role", "admin")
    served.http("POST", f"/admin/keys/{key['id']}/revoke")
    served.cli("keys", "delete", key["prefix"])
    events = list(reversed(served.events(since=since)))
    assert [(e["action"], e["actor"], e["target"]) for e in events] == [
        ("keys.create", root_actor, key["id"]),
        ("keys.update", root_actor, key["id"]),
        ("keys.update", CLI_ACTOR, key["id"]),
        ("users.create", root_actor, "erin"),
        ("users.update", CLI_ACTOR, "erin"),
        ("keys.revoke", root_actor, key["id"]),
        ("keys.delete", CLI_ACTOR, key["id"]),
    ]
    assert events[0]["detail"] == {"user": "evan", "label": "trail", "budget_daily": 1.0}
    assert events[1]["detail"] == {"max_in_flight": 2} and events[2]["detail"] == {"label": "via-cli"}
    assert events[4]["detail"] == {"role": "admin"}
    assert all(since <= e["ts"] <= time.time() for e in events)
    newest = served.events(since=since, limit=2)
    assert [e["action"] for e in newest] == ["keys.delete", "keys.revoke"]
    assert served.events(since=time.time() + 60) == []
    # No key, no secret part of one, no stored hash anywhere in the table.
    with served.store.engine.connect() as conn:
        dump = json.dumps([list(row) for row in conn.execute(sa.select(admin_events))])
        hashes = [h for (h,) in conn.execute(sa.select(api_keys.c.hash)) if h != DELETED_HASH]
    for secret in [key["key"], key["key"][20:], served.root, served.root[20:], *hashes, *(h.rsplit("$", 1)[-1] for h in hashes)]:
        assert secret not in dump
    assert "hmac-sha256" not in dump


def test_erasure_leaves_no_name_in_the_trail(served):
    served.http("POST", "/admin/users", json={"name": "zoë-erasable"})
    key = served.http("POST", "/admin/keys", json={"user": "zoë-erasable"}).json()
    served.cli("users", "update", "zoë-erasable", "--budget-daily", "3")
    token = served.http("DELETE", "/admin/users/zoë-erasable").json()["token"]
    with served.store.engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(sa.select(admin_events))]
    assert not [row for row in rows if "erasable" in json.dumps(row, ensure_ascii=False) or "erasable" in json.dumps(row)]
    mine = [row for row in rows if row["target"] in (token, key["id"])]
    assert [row["action"] for row in mine] == ["users.create", "keys.create", "users.update", "users.delete"]
    assert json.loads(mine[1]["detail"])["user"] == token
    assert {row["target"] for row in mine if row["action"].startswith("users.")} == {token}


# -- the operations in-process, on each database -----------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        made = Store(f"sqlite:///{tmp_path / 'ops.db'}", key_secret=TEST_KEY_SECRET)
        made.migrate()
        yield made
        made.close()
        return
    if not PG:
        pytest.skip("set GAUD_TEST_POSTGRES_URL to run the operations on PostgreSQL")
    for made in pg_store(PG):
        made.migrate()  # type: ignore[attr-defined]
        yield made  # type: ignore[misc]


def test_a_change_whose_event_cannot_be_written_does_not_happen(store, monkeypatch):
    made = perform(store, "keys", "create", actor="t", fields={"user": "ida", "label": "before"})
    perform(store, "teams", "create", actor="t", fields={"name": "old", "budget_daily": 1})

    def broken(*args: object) -> None:
        raise RuntimeError("the trail is down")

    monkeypatch.setattr(admin, "record", broken)
    for resource, verb, target, fields in (("keys", "update", made["id"], {"label": "after"}),
                                           ("keys", "revoke", made["id"], {}), ("keys", "delete", made["id"], {}),
                                           ("keys", "create", None, {"user": "ghost"}),
                                           ("users", "create", None, {"name": "ghost"}),
                                           ("users", "update", "ida", {"role": "admin"}),
                                           ("users", "delete", "ida", {}),
                                           ("teams", "create", None, {"name": "new"}),
                                           ("teams", "update", "old", {"name": "renamed", "budget_daily": 2}),
                                           ("teams", "delete", "old", {})):
        with pytest.raises(RuntimeError, match="trail is down"):
            perform(store, resource, verb, actor="t", target=target, fields=fields)
    monkeypatch.undo()
    teams = [(t["name"], t["budget_daily"]) for t in perform(store, "teams", "list", actor="t")["data"]]
    assert teams == [("old", 1.0)]
    key = perform(store, "keys", "show", actor="t", target=made["id"])
    assert (key["label"], key["revoked"], key["role"], key["user"]) == ("before", False, "member", "ida")
    assert store.verify_key(made["key"]) is not None
    names = {u["name"] for u in perform(store, "users", "list", actor="t")["data"]}
    assert names == {"ida"}
    assert [e["action"] for e in perform(store, "events", "list", actor="t")["data"]] == ["teams.create", "keys.create"]


def test_an_erasure_that_stops_half_way_says_how_to_finish_it(store, monkeypatch):
    perform(store, "users", "create", actor="t", fields={"name": "ida"})
    user_id = store.ensure_user("ida")
    with store.engine.begin() as conn:
        conn.execute(audit_log.insert().values(request_id="r1", ts=time.time(), user_id=user_id, user_name="ida",
                                               status=200, cost=0.5, content="a prompt of ida's"))

    def broken(*args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("UPDATE audit_log", {}, Exception("database is locked"))

    monkeypatch.setattr(admin, "finish_erasure", broken)
    with pytest.raises(GatewayError) as stopped:
        perform(store, "users", "delete", actor="t", target="ida")
    monkeypatch.undo()
    token = perform(store, "users", "list", actor="t")["data"][0]["name"]  # the name is gone already
    assert token.startswith(ERASED_PREFIX) and stopped.value.status == 500
    assert f"`users delete {token}` (DELETE /admin/users/{token})" in stopped.value.message
    assert "ida" not in stopped.value.message and "locked" not in stopped.value.message
    finished = perform(store, "users", "delete", actor="t", target=token)  # as the message says
    assert (finished["token"], finished["audit_rows"]) == (token, 1)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(audit_log.c.user_name, audit_log.c.content)).all() == [(token, None)]


def test_operations_on_each_database(store):
    perform(store, "users", "create", actor="t", fields={"name": "olga", "budget_daily": "2.5"})
    with pytest.raises(Exception) as exists:
        perform(store, "users", "create", actor="t", fields={"name": "olga"})
    assert getattr(exists.value, "status", None) == 409
    made = perform(store, "keys", "create", actor="t", fields={"user": "olga", "role": "admin", "models": "a,b"})
    assert perform(store, "users", "show", actor="t", target="olga")["keys"][0]["models"] == ["a", "b"]
    assert perform(store, "users", "update", actor="t", target="olga", fields={"budget_daily": "none"})["budget_daily"] is None
    perform(store, "keys", "delete", actor="t", target=made["prefix"])
    assert store.verify_key(made["key"]) is None
    erased = perform(store, "users", "delete", actor="t", target="olga")
    assert erased["keys_revoked"] == 0 and erased["token"].startswith(ERASED_PREFIX)
    actions = [e["action"] for e in perform(store, "events", "list", actor="t")["data"]]
    assert actions == ["users.delete", "keys.delete", "users.update", "keys.create", "users.create"]
    assert "olga" not in json.dumps(perform(store, "events", "list", actor="t"))


def test_a_new_key_for_an_existing_user_keeps_their_role_unless_one_is_given(store):
    perform(store, "users", "create", actor="t", fields={"name": "ada", "role": "admin"})
    kept = perform(store, "keys", "create", actor="t", fields={"user": "ada"})
    assert kept["role"] == "admin"  # a second key is no demotion
    assert perform(store, "keys", "create", actor="t", fields={"user": "new"})["role"] == "member"
    assert perform(store, "keys", "create", actor="t", fields={"user": "ada", "role": "member"})["role"] == "member"
