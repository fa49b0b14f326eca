"""Account administration, one implementation for the CLI (`gaud-engine users ...`, `keys ...`)
and the admin HTTP API (engine.web.admin_api).

An operation takes the raw fields a caller sent (the HTTP JSON names; the CLI maps its options to
them), who acts (`actor`: `sk-gaud-<lookup id>` of the admin key over HTTP, `cli:<os user>` from
the CLI, `ui:sk-gaud-<lookup id>` from the dashboard) and, for one user or key, its name or key id; it returns plain data, what the HTTP API
answers as JSON. A field the operation does not take is refused (400 naming it), so a typo never
passes silently; values are validated by engine.accounts.keys, as they always were.

Every change writes an `admin_events` row (engine.accounts.store) in the transaction of the
change, so there is no change without its event: when, who, the action (`keys.update`), the
target (a user's name or a key's 12-character id) and the fields set, with their values. Never a
key or its hash: a key is named by its id only, whatever form of it the caller gave.

- Erasing a user (`users delete`, engine.accounts.retention) also puts the erasure token in place
  of their name in earlier events, so the trail does not keep the name erasure removes.
- Deleting a key revokes it and replaces its stored hash with a marker no key matches: the row
  stays, shown as revoked, so audit rows and the request log still name the key by its id.

- Erasing a user anonymises their audit rows after the commit, in batches; if that fails, the
  error names the token and says to run the erasure again on it, which finishes it.

`OPERATIONS` maps resource -> verb -> Operation. Another resource is a few lines: its change takes
the transaction (`conn=`, as engine.accounts.teams' do) and the operation calls `record` in it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import InternalError, InvalidRequest, NotFound
from .key_usage import key_usage
from .keys import key_changes, parse_name
from .retention import ERASED_PREFIX, erase_account, finish_erasure
from .store import KEY_PREFIX, KeyInfo, Principal, Store, _lookup_id, admin_events, api_keys, teams, users
from .teams import NO_TEAM, Team, create_team, delete_team, get_team, list_teams, set_user_team, update_team

__all__ = ["DELETED_HASH", "OPERATIONS", "Operation", "key_actor", "key_json", "perform", "record"]

log = logging.getLogger("gaud.accounting")

#: What a deleted key's row keeps instead of its hash: matches no key (it is no hash of any scheme).
DELETED_HASH = "deleted"
#: The most events one `GET /admin/events` returns.
MAX_EVENTS = 1000

#: (store, actor, target, raw fields) -> plain data.
Run = Callable[[Store, str, "str | None", dict[str, Any]], Any]


@dataclass(frozen=True)
class Operation:
    run: Run
    #: The raw fields it takes (JSON names); any other is refused.
    fields: frozenset[str] = frozenset()
    #: It acts on one user or key, named in the call (the last segment of its URL).
    target: bool = False
    #: It makes something new (HTTP 201).
    created: bool = False


def perform(store: Store, resource: str, verb: str, *, actor: str, target: str | None = None,
            fields: Mapping[str, Any] | None = None) -> Any:
    """Run operation `verb` of `resource` (OPERATIONS); InvalidRequest or NotFound with param/code."""
    operation = OPERATIONS[resource][verb]
    raw = dict(fields or {})
    for name in raw:
        if name not in operation.fields:
            known = ", ".join(sorted(operation.fields)) or "none"
            raise InvalidRequest(f"Unknown field '{name}' for {resource} {verb} (known: {known}).", param=name,
                                 code="unknown_field")
    if operation.target and target is None:
        raise ValueError(f"{resource} {verb} needs a target")
    return operation.run(store, actor, target, raw)


def record(conn: sa.Connection, actor: str, action: str, target: str | None, detail: Mapping[str, Any]) -> None:
    """One admin event, in the caller's transaction. `detail`: field names and non-secret values."""
    conn.execute(admin_events.insert().values(
        ts=time.time(), actor=actor, action=action, target=target,
        detail=json.dumps(dict(detail), sort_keys=True) if detail else None))


def key_actor(store: Store, principal: Principal, via: str = "") -> str:
    """Who makes a change with `principal`'s key: `<via>sk-gaud-<key id>` (never the key), or the
    principal's name when there is no key (auth off: `local`)."""
    if principal.key_id is not None:
        with store.engine.connect() as conn:
            lookup = conn.execute(sa.select(api_keys.c.lookup).where(api_keys.c.id == principal.key_id)).scalar()
        if lookup is not None:
            return f"{via}{KEY_PREFIX}{lookup}"
    return f"{via}{principal.user_name}"


# -- keys -------------------------------------------------------------------------------------------
def key_json(info: KeyInfo) -> dict[str, Any]:
    """A key as the admin API shows it: its id and prefix, never the key."""
    return {
        "id": info.lookup,
        "prefix": f"{KEY_PREFIX}{info.lookup}",
        "user": info.user_name,
        "role": info.role,
        "created_at": info.created_at,
        "revoked": info.revoked_at is not None,
        "expires_at": info.expires_at,
        "expired": info.expired(),
        "label": info.label,
        "models": list(info.models) if info.models else None,
        "max_in_flight": info.max_in_flight,
        "budget_daily": info.budget_daily,
        "budget_monthly": info.budget_monthly,
        "rpm_limit": info.rpm_limit,
        "tpm_limit": info.tpm_limit,
        "team": info.team,
    }


def _no_key(active: bool = True) -> NotFound:
    return NotFound("No active key with that id." if active else "No key with that id.", code="key_not_found")


def _nothing_to_change(fields: frozenset[str]) -> InvalidRequest:
    return InvalidRequest(f"Nothing to change: give {', '.join(sorted(fields))}.", code="nothing_to_change")


def _user_name(value: Any, field: str) -> str:
    name = parse_name(value, field)
    if name.startswith(ERASED_PREFIX):
        raise InvalidRequest(f"'{field}' may not start with {ERASED_PREFIX} (the names of erased users).",
                             param=field)
    return name


_NO_TEAM = (None, "", *NO_TEAM)


def _team_change(raw: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(given, team name or None for no team) from the `team` field of a key's or a user's change."""
    if "team" not in raw:
        return False, None
    value = raw["team"]
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_TEAM):
        return True, None
    return True, parse_name(value, "team")


def _join(store: Store, conn: sa.Connection, user: str, raw: Mapping[str, Any], detail: dict[str, Any]) -> bool:
    """Put `user` in the team `raw` names, if it names one (or none), in `conn`'s transaction; the
    team goes into the event's `detail`. Whether anything was asked."""
    given, team = _team_change(raw)
    if given:
        set_user_team(store, user, team, conn=conn)
        detail["team"] = team
    return given


def list_keys(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """Every key with its user's spend today and this month (UTC) and its last use."""
    rows = key_usage(store, now=time.time())
    return {"object": "list", "data": [
        {**key_json(row.key), "user_spent_today": row.user_spent_today, "user_spent_month": row.user_spent_month,
         "last_used": row.last_used} for row in rows]}


def create_key(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """A key for `user` (created if new); the reply holds the whole key, the only time it is shown."""
    user = _user_name(raw.get("user"), "user")
    fields = key_changes(raw)  # a new user is a member unless `role` says; an existing one keeps theirs
    detail = {"user": user, **fields}
    with store.writing() as conn:
        key, info = store.create_key(user, conn=conn, **fields)
        if _join(store, conn, user, raw, detail):
            info = store.key_info(info.lookup, conn=conn) or info
        record(conn, actor, "keys.create", info.lookup, detail)
    return {"key": key, **key_json(info)}


def show_key(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    info = store.key_info(_lookup_id(target or ""))
    if info is None:
        raise _no_key(active=False)
    return key_json(info)


def update_key(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    changes = key_changes(raw)
    if not changes and "team" not in raw:
        raise _nothing_to_change(KEY_CHANGES)
    lookup = _lookup_id(target or "")
    with store.writing() as conn:
        info = store.update_key(lookup, changes, conn=conn) if changes else store.key_info(lookup, conn=conn)
        if info is None or info.revoked_at is not None:
            raise _no_key()
        if _join(store, conn, info.user_name, raw, changes):
            info = store.key_info(lookup, conn=conn) or info
        record(conn, actor, "keys.update", lookup, changes)
    return key_json(info)


def revoke_key(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    lookup = _lookup_id(target or "")
    with store.writing() as conn:
        if not store.revoke_key(lookup, conn=conn):
            raise _no_key()
        record(conn, actor, "keys.revoke", lookup, {})
    return {"revoked": True}


def delete_key(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """Revoke (if not yet) and drop the stored hash; deleting a deleted key again changes nothing."""
    lookup = _lookup_id(target or "")
    with store.writing() as conn:
        row = conn.execute(sa.select(api_keys.c.id, api_keys.c.revoked_at).where(api_keys.c.lookup == lookup)).first()
        if row is None:
            raise _no_key(active=False)
        conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(
            hash=DELETED_HASH, revoked_at=row.revoked_at if row.revoked_at is not None else time.time()))
        record(conn, actor, "keys.delete", lookup, {"was_revoked": row.revoked_at is not None})
    return {"deleted": True, "id": lookup}


# -- users ------------------------------------------------------------------------------------------
_USER_COLUMNS = (users.c.id, users.c.name, users.c.role, users.c.created_at, users.c.budget_daily,
                 users.c.budget_monthly, users.c.rpm_limit, users.c.tpm_limit, teams.c.name.label("team"))


def _users(conn: sa.Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Users (one, by name) with how many active keys each has."""
    active = (sa.select(api_keys.c.user_id, sa.func.count().label("n")).where(api_keys.c.revoked_at.is_(None))
              .group_by(api_keys.c.user_id).subquery())
    query = (sa.select(*_USER_COLUMNS, sa.func.coalesce(active.c.n, 0))
             .outerjoin(active, active.c.user_id == users.c.id).outerjoin(teams, teams.c.id == users.c.team_id)
             .order_by(users.c.name))
    if name is not None:
        query = query.where(users.c.name == name)
    return [{"name": row.name, "role": row.role, "created_at": row.created_at, "budget_daily": row.budget_daily,
             "budget_monthly": row.budget_monthly, "rpm_limit": row.rpm_limit, "tpm_limit": row.tpm_limit,
             "team": row.team, "active_keys": int(row[-1])} for row in conn.execute(query)]


def _one_user(conn: sa.Connection, name: str) -> dict[str, Any]:
    found = _users(conn, name)
    if not found:
        raise NotFound("No user with that name.", code="user_not_found")
    return found[0]


def list_users(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return {"object": "list", "data": _users(conn)}


def show_user(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """A user with every key of theirs (revoked ones too)."""
    with store.engine.connect() as conn:
        user = _one_user(conn, target or "")
    keys = [key_json(info) for info in store.list_keys() if info.user_name == user["name"]]
    return {**user, "keys": keys}


def create_user(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """A user without a key (`keys create --user NAME` adds one)."""
    name = _user_name(raw.get("name"), "name")
    changes = key_changes({"role": "member", **raw})
    exists = InvalidRequest(f"There is a user named {name} already.", param="name", code="user_exists", status=409)
    try:
        with store.writing() as conn:
            if conn.execute(sa.select(users.c.id).where(users.c.name == name)).first() is not None:
                raise exists
            conn.execute(users.insert().values(name=name, created_at=time.time(), **changes))
            _join(store, conn, name, raw, changes)
            record(conn, actor, "users.create", name, changes)
            return _one_user(conn, name)
    except sa.exc.IntegrityError:  # created by another process between the check and the insert
        raise exists from None


def update_user(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """Role, budgets and limits of a user (so of every key of theirs)."""
    changes = key_changes(raw)
    if not changes and "team" not in raw:
        raise _nothing_to_change(USER_CHANGES)
    name = target or ""
    with store.writing() as conn:
        if conn.execute(sa.select(users.c.id).where(users.c.name == name)).first() is None:
            raise NotFound("No user with that name.", code="user_not_found")
        if changes:
            conn.execute(users.update().where(users.c.name == name).values(**changes))
        _join(store, conn, name, raw, changes)
        record(conn, actor, "users.update", name, changes)
        return _one_user(conn, name)


def delete_user(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """Erase a user (engine.accounts.retention); their audit rows are anonymised after the commit.
    If that fails the name is gone already: the error gives the token to finish the erasure with."""
    name = target or ""
    with store.writing() as conn:
        found = erase_account(conn, name)
        if found is None:
            raise NotFound("No user with that name.", code="user_not_found")
        user_id, erased = found
        _forget_name(conn, name, erased.token)
        record(conn, actor, "users.delete", erased.token,
               {"keys_revoked": erased.keys_revoked, "stored_replies": erased.stored_replies})
    try:
        erased = finish_erasure(store, user_id, erased)
    except Exception as exc:
        log.exception("erasure of %s: anonymising the audit rows failed", erased.token)
        raise InternalError(
            f"The user is erased but their audit rows are not all anonymised yet: run `users delete {erased.token}` "
            f"(DELETE /admin/users/{erased.token}) again to finish.", code="erasure_incomplete") from exc
    return {"erased": True, "token": erased.token, "keys_revoked": erased.keys_revoked,
            "audit_rows": erased.audit_rows, "stored_replies": erased.stored_replies}


def _forget_name(conn: sa.Connection, name: str, token: str) -> None:
    """`token` in place of an erased user's name in earlier events: as their target (users.*) and
    as the `user` of the keys made for them."""
    conn.execute(admin_events.update().where(admin_events.c.target == name, admin_events.c.action.startswith("users."))
                 .values(target=token))
    mentions = sa.select(admin_events.c.id, admin_events.c.detail).where(
        admin_events.c.detail.contains(json.dumps(name), autoescape=True))
    for event_id, detail in conn.execute(mentions).all():
        data = json.loads(detail)
        if data.get("user") == name:
            data["user"] = token
            conn.execute(admin_events.update().where(admin_events.c.id == event_id)
                         .values(detail=json.dumps(data, sort_keys=True)))


# -- teams (engine.accounts.teams) ----------------------------------------------------------------
def team_json(team: Team) -> dict[str, Any]:
    """A team with its member count and its spend today and this month (UTC)."""
    return {"name": team.name, "created_at": team.created_at, "budget_daily": team.budget_daily,
            "budget_monthly": team.budget_monthly, "rpm_limit": team.rpm_limit, "tpm_limit": team.tpm_limit,
            "models": list(team.models) if team.models else None, "members": team.members,
            "spent_today": team.spent_today, "spent_month": team.spent_month}


def list_team_rows(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    return {"object": "list", "data": [team_json(team) for team in list_teams(store)]}


def show_team(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    return team_json(get_team(store, target or ""))


def create_team_row(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    with store.writing() as conn:
        team = create_team(store, raw, conn=conn)
        record(conn, actor, "teams.create", team.name, raw)
    return team_json(team)


def update_team_row(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    with store.writing() as conn:
        team = update_team(store, target or "", raw, conn=conn)
        record(conn, actor, "teams.update", target, raw)
    return team_json(team)


def delete_team_row(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    with store.writing() as conn:
        team = delete_team(store, target or "", conn=conn)
        record(conn, actor, "teams.delete", team.name, {})
    return {"deleted": True, "name": team.name}


TEAM_FIELDS = frozenset({"name", "budget_daily", "budget_monthly", "rpm_limit", "tpm_limit", "models"})
_TEAM_VERBS: dict[str, Operation] = {
    "list": Operation(list_team_rows),
    "create": Operation(create_team_row, TEAM_FIELDS, created=True),
    "show": Operation(show_team, target=True),
    "update": Operation(update_team_row, TEAM_FIELDS, target=True),
    "delete": Operation(delete_team_row, target=True),
}


# -- the trail itself -------------------------------------------------------------------------------
def list_events(store: Store, actor: str, target: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """Events newest first: `since` (Unix time, inclusive), at most `limit` (default 100)."""
    since = _number(raw.get("since"), "since", "a Unix time in seconds")
    limit = _number(raw.get("limit"), "limit", f"a whole number from 1 to {MAX_EVENTS}")
    if limit is not None and (limit != int(limit) or not 1 <= limit <= MAX_EVENTS):
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {MAX_EVENTS}.", param="limit")
    query = sa.select(admin_events).order_by(admin_events.c.id.desc()).limit(int(limit or 100))
    if since is not None:
        query = query.where(admin_events.c.ts >= since)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return {"object": "list", "data": [
        {"id": row.id, "ts": row.ts, "actor": row.actor, "action": row.action, "target": row.target,
         "detail": json.loads(row.detail) if row.detail else {}} for row in rows]}


def _number(value: Any, name: str, what: str) -> float | None:
    """A finite number from JSON or a query string; None when absent."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or number != number or number in (float("inf"), float("-inf")):
        raise InvalidRequest(f"'{name}' must be {what}.", param=name)
    return number


USER_CHANGES = frozenset({"role", "budget_daily", "budget_monthly", "rpm_limit", "tpm_limit", "team"})
KEY_CHANGES = USER_CHANGES | {"models", "expires", "label", "max_in_flight"}

#: resource -> verb -> Operation: what the CLI and engine.web.admin_api run.
OPERATIONS: dict[str, dict[str, Operation]] = {
    "users": {
        "list": Operation(list_users),
        "create": Operation(create_user, USER_CHANGES | {"name"}, created=True),
        "show": Operation(show_user, target=True),
        "update": Operation(update_user, USER_CHANGES, target=True),
        "delete": Operation(delete_user, target=True),
    },
    "keys": {
        "list": Operation(list_keys),
        "create": Operation(create_key, KEY_CHANGES | {"user"}, created=True),
        "show": Operation(show_key, target=True),
        "update": Operation(update_key, KEY_CHANGES, target=True),
        "revoke": Operation(revoke_key, target=True),
        "delete": Operation(delete_key, target=True),
    },
    "teams": _TEAM_VERBS,
    "events": {"list": Operation(list_events, frozenset({"since", "limit"}))},
}
