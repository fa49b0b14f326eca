"""Teams: limits a group of users shares. The operations behind `gaud-engine teams ...` (and the
admin API): they take the fields as the CLI and the HTTP API name them, raise `InvalidRequest`
(400) or `NotFound` (404), and return plain dataclasses.

A team has daily and monthly budgets in USD, requests and tokens per minute, and a model
allow-list; a user belongs to at most one team (`users.team_id`). Each limit applies together with
the user's own, so the tighter one decides:
- budgets: a request reserves its estimated cost against the user's and the team's daily and
  monthly budgets at once (engine.accounts.budgets, .shared); it must fit all of them;
- rates: the team's rpm/tpm is one bucket its members share, taken from with the user's own
  (engine.accounts.guards);
- models: a key may call a model only when its own list and its team's both allow it.

Spend is counted per team from the audit log, where each row keeps the team of the request
(`audit_log.team_id`): moving a user to another team moves none of their past spend. A team with
members cannot be deleted (move them out first), so no user is left in a team that is gone.

Calls are synchronous, like `Store`'s. A change takes `conn=`, a caller's transaction to make it
in (engine.accounts.admin writes its event there too); without one it commits on its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidRequest, NotFound
from .budgets import day_start, month_start
from .keys import parse_amount, parse_models, parse_name
from .store import Store, audit_log, teams, users

__all__ = [
    "NO_TEAM",
    "TEAM_FIELDS",
    "Membership",
    "Team",
    "TeamTotals",
    "create_team",
    "delete_team",
    "get_team",
    "list_teams",
    "set_user_team",
    "team_totals",
    "update_team",
]

#: The limits a team has, as the CLI and the HTTP API name them.
TEAM_FIELDS = ("budget_daily", "budget_monthly", "rpm_limit", "tpm_limit", "models")
#: What a user's or a key's `team` field says for "in no team" (any case): no team may be named so.
NO_TEAM = ("none", "null")


@dataclass(frozen=True)
class Team:
    id: int
    name: str
    created_at: float
    budget_daily: float | None
    budget_monthly: float | None
    rpm_limit: float | None
    tpm_limit: float | None
    models: tuple[str, ...] | None
    #: Users in the team now.
    members: int = 0
    #: What the team's requests cost today and this month (UTC), as its budgets count it.
    spent_today: float = 0.0
    spent_month: float = 0.0


@dataclass(frozen=True)
class Membership:
    """A user's team after `set_user_team`, and the one before (None: none)."""

    user: str
    team: str | None
    previous: str | None


@dataclass(frozen=True)
class TeamTotals:
    """A team's requests, tokens and cost over a span (audit rows made while users were in it)."""

    team: str  # its name, or "(deleted team N)"
    team_id: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float


def team_fields(raw: Mapping[str, Any], *, name_required: bool) -> dict[str, Any]:
    """The validated fields present in `raw`: `name` and TEAM_FIELDS. A limit given as null/none is
    cleared, one absent is left as it is; an unknown field is refused (a typo must not pass)."""
    changes: dict[str, Any] = {}
    for field, value in raw.items():
        if field == "name":
            changes["name"] = _team_name(value)
        elif field == "models":
            changes["models"] = _models_column(parse_models(value))
        elif field in TEAM_FIELDS:
            changes[field] = parse_amount(value, field)
        else:
            known = ", ".join(("name", *TEAM_FIELDS))
            raise InvalidRequest(f"Unknown team field '{field}'; known: {known}.", param=str(field))
    if name_required and "name" not in changes:
        parse_name(None, "name")  # raises the message every missing name gets
    return changes


def _team_name(value: Any) -> str:
    name = parse_name(value, "name")
    if name.lower() in NO_TEAM:
        raise InvalidRequest(f"A team cannot be named '{name}': a team of none or null means no team.", param="name")
    return name


def _models_column(models: tuple[str, ...] | None) -> str | None:
    return ",".join(models) if models else None


def _team(row: Any, members: int = 0, today: float = 0.0, month: float = 0.0) -> Team:
    models = tuple(row.models.split(",")) if row.models else None
    return Team(row.id, row.name, row.created_at, row.budget_daily, row.budget_monthly, row.rpm_limit,
                row.tpm_limit, models, members, today, month)


def _exists(name: str) -> InvalidRequest:
    return InvalidRequest(f"A team named '{name}' already exists.", param="name", code="team_exists")


def _missing(name: str) -> NotFound:
    return NotFound(f"No team named '{name}'.", param="team", code="team_not_found")


def create_team(store: Store, raw: Mapping[str, Any], *, conn: sa.Connection | None = None) -> Team:
    """A new team from `raw` (`name` required, limits optional)."""
    fields = team_fields(raw, name_required=True)
    try:
        with store.writing(conn) as tx:
            tx.execute(teams.insert().values(created_at=time.time(), **fields))
            return get_team(store, fields["name"], conn=tx)
    except sa.exc.IntegrityError:
        raise _exists(fields["name"]) from None


def update_team(store: Store, name: str, raw: Mapping[str, Any], *, conn: sa.Connection | None = None) -> Team:
    """Change the fields given (a new `name` renames: spend and members follow, they go by id)."""
    changes = team_fields(raw, name_required=False)
    if not changes:
        raise InvalidRequest(f"Nothing to change: give name or {', '.join(TEAM_FIELDS)}.")
    try:
        with store.writing(conn) as tx:
            if tx.execute(teams.update().where(teams.c.name == name).values(**changes)).rowcount == 0:
                raise _missing(name)
            return get_team(store, changes.get("name", name), conn=tx)
    except sa.exc.IntegrityError:
        raise _exists(changes["name"]) from None


def delete_team(store: Store, name: str, *, conn: sa.Connection | None = None) -> Team:
    """Delete a team without members (else a 400 saying how many): its audit rows keep its id,
    which no later team gets, so its past spend stays its own."""
    refusal = InvalidRequest(f"The team '{name}' has members; move them to another team or to none first.",
                             param="name", code="team_has_members")
    try:
        with store.writing(conn) as tx:
            team = get_team(store, name, conn=tx)
            if team.members:
                raise refusal
            member = sa.select(users.c.id).where(users.c.team_id == team.id).exists()
            if tx.execute(teams.delete().where(teams.c.id == team.id, ~member)).rowcount == 0:
                raise refusal  # a user joined since the count
    except sa.exc.IntegrityError:  # the foreign key caught a user joining at the same moment
        raise refusal from None
    return team


def get_team(store: Store, name: str, *, conn: sa.Connection | None = None) -> Team:
    found = list_teams(store, name=name, conn=conn)
    if not found:
        raise _missing(name)
    return found[0]


def list_teams(store: Store, *, now: float | None = None, name: str | None = None,
               conn: sa.Connection | None = None) -> list[Team]:
    """Every team (or the one named) by name, with its member count and spend today and this month
    (read in `conn` when given)."""
    now = time.time() if now is None else now
    today, month = day_start(now), month_start(now)
    members = (sa.select(users.c.team_id.label("team_id"), sa.func.count().label("n"))
               .where(users.c.team_id.is_not(None)).group_by(users.c.team_id).subquery())
    spent = (
        sa.select(
            audit_log.c.team_id.label("team_id"),
            sa.func.sum(sa.case((audit_log.c.ts >= today, audit_log.c.cost), else_=0.0)).label("day"),
            sa.func.sum(audit_log.c.cost).label("month"),
        )
        .where(audit_log.c.ts >= month, audit_log.c.team_id.is_not(None))
        .group_by(audit_log.c.team_id)
        .subquery()
    )
    query = (
        sa.select(teams, sa.func.coalesce(members.c.n, 0).label("members"),
                  sa.func.coalesce(spent.c.day, 0.0).label("day"), sa.func.coalesce(spent.c.month, 0.0).label("month"))
        .select_from(teams)
        .outerjoin(members, members.c.team_id == teams.c.id)
        .outerjoin(spent, spent.c.team_id == teams.c.id)
        .order_by(teams.c.name)
    )
    if name is not None:
        query = query.where(teams.c.name == name)
    with store.reading(conn) as reader:
        return [_team(row, int(row.members), float(row.day), float(row.month)) for row in reader.execute(query)]


def set_user_team(store: Store, user: str, team: str | None, *, conn: sa.Connection | None = None) -> Membership:
    """Put `user` in `team` (None: in no team). Only requests made from now on count for the new team.
    In `conn`'s transaction when given (engine.accounts.admin: with the change that asked for it)."""
    if conn is None:
        with store.engine.begin() as own:
            return set_user_team(store, user, team, conn=own)
    row = conn.execute(sa.select(users.c.id, teams.c.name).select_from(users)
                       .outerjoin(teams, teams.c.id == users.c.team_id).where(users.c.name == user)).first()
    if row is None:
        raise NotFound(f"No user named '{user}'.", param="user", code="user_not_found")
    team_id = None
    if team is not None:
        team_id = conn.execute(sa.select(teams.c.id).where(teams.c.name == team)).scalar()
        if team_id is None:
            raise _missing(team)
    conn.execute(users.update().where(users.c.id == row.id).values(team_id=team_id))
    return Membership(user, team, row.name)


def team_totals(
    engine: sa.Engine, *, since: float | None = None, user: str | None = None, team_id: int | None = None
) -> list[TeamTotals]:
    """Per team (of the request, as audited): requests, tokens and cost, by team name."""
    query = (
        sa.select(
            audit_log.c.team_id, teams.c.name, sa.func.count(),
            sa.func.coalesce(sa.func.sum(audit_log.c.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(audit_log.c.completion_tokens), 0),
            sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0),
        )
        .select_from(audit_log)
        .outerjoin(teams, teams.c.id == audit_log.c.team_id)
        .where(audit_log.c.team_id.is_not(None))
        .group_by(audit_log.c.team_id, teams.c.name)
    )
    if since is not None:
        query = query.where(audit_log.c.ts >= since)
    if user is not None:
        query = query.where(audit_log.c.user_name == user)
    if team_id is not None:
        query = query.where(audit_log.c.team_id == team_id)
    with engine.connect() as conn:
        rows = [
            TeamTotals(name if name is not None else f"(deleted team {tid})", int(tid), int(n), int(p), int(c), float(cost))
            for tid, name, n, p, c, cost in conn.execute(query)
        ]
    return sorted(rows, key=lambda r: r.team)
