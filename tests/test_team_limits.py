"""Teams in the store (SQLite, and PostgreSQL with GAUD_TEST_POSTGRES_URL) and the tighter-of rules
of budgets (in memory and in Redis with GAUD_TEST_REDIS_URL) and rate limits, below the HTTP layer
(tests/test_teams.py drives a real gateway)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from engine.accounts.budgets import Budgets
from engine.accounts.cache import MemoryCache
from engine.accounts.guards import Guards
from engine.accounts.ratelimit import MemoryRateLimiter
from engine.accounts.retention import erase_user
from engine.accounts.shared import RedisBudgets
from engine.accounts.store import Principal, Store, audit_log
from engine.accounts.teams import (
    create_team,
    delete_team,
    get_team,
    list_teams,
    set_user_team,
    team_totals,
    update_team,
)
from engine.errors import BudgetExceeded, InvalidRequest, NotFound, RateLimited

from .conftest import migrated_store

REDIS = os.environ.get("GAUD_TEST_REDIS_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[Store]:
    yield from migrated_store(request.param, tmp_path)


def _row(user_id: int, user: str, team_id: int | None, cost: float, ts: float) -> dict[str, Any]:
    return {"request_id": f"r{uuid.uuid4().hex}", "ts": ts, "user_id": user_id, "user_name": user, "team_id": team_id,
            "status": 200, "cost": cost, "prompt_tokens": 3, "completion_tokens": 1}


def test_team_operations_validate_and_refuse_clearly(store):
    team = create_team(store, {"name": " red ", "budget_daily": "2.5", "rpm_limit": 60, "models": ["smart", "fast-*"]})
    assert (team.name, team.budget_daily, team.rpm_limit, team.models) == ("red", 2.5, 60.0, ("smart", "fast-*"))
    for raw, param in (({"name": ""}, "name"), ({"name": "x", "budget_daily": -1}, "budget_daily"),
                       ({"name": "x", "models": "a b"}, "models"), ({"name": "x", "rpm": 3}, "rpm"), ({}, "name"),
                       ({"name": "none"}, "name"), ({"name": " None "}, "name"), ({"name": "NULL"}, "name")):
        with pytest.raises(InvalidRequest) as refused:
            create_team(store, raw)
        assert (refused.value.param, refused.value.status) == (param, 400), raw
    with pytest.raises(InvalidRequest, match="none or null means no team") as renamed:
        update_team(store, "red", {"name": "null"})  # a name `team` could never name: no one could join it
    assert renamed.value.param == "name"
    assert [t.name for t in list_teams(store)] == ["red"]
    with pytest.raises(InvalidRequest, match="already exists"):
        create_team(store, {"name": "red"})
    with pytest.raises(NotFound) as missing:
        update_team(store, "green", {"budget_daily": 1})
    assert missing.value.status == 404 and missing.value.message == "No team named 'green'."
    with pytest.raises(InvalidRequest, match="Nothing to change"):
        update_team(store, "red", {})
    changed = update_team(store, "red", {"budget_daily": "none", "models": None, "tpm_limit": "1000"})
    assert (changed.budget_daily, changed.models, changed.tpm_limit, changed.rpm_limit) == (None, None, 1000.0, 60.0)
    create_team(store, {"name": "blue"})
    with pytest.raises(InvalidRequest, match="already exists"):
        update_team(store, "red", {"name": "blue"})
    with pytest.raises(NotFound):
        set_user_team(store, "nobody", "red")
    store.ensure_user("ann")
    with pytest.raises(NotFound):
        set_user_team(store, "ann", "green")
    assert [t.name for t in list_teams(store)] == ["blue", "red"]


def test_verify_key_reads_the_team_with_the_key_and_a_change_applies_at_once(store):
    key, _ = store.create_key("ann", budget_daily=3.0, models=("claude-*",))
    assert store.verify_key(key).team_id is None  # type: ignore[union-attr]
    team = create_team(store, {"name": "ops", "budget_monthly": 40, "tpm_limit": 5000, "models": "smart,claude-*"})
    set_user_team(store, "ann", "ops")
    principal = store.verify_key(key)
    assert principal is not None
    assert (principal.team_id, principal.team_name, principal.team_budget_monthly, principal.team_tpm_limit,
            principal.team_models) == (team.id, "ops", 40.0, 5000.0, ("smart", "claude-*"))
    assert principal.budget_daily == 3.0 and principal.models == ("claude-*",)
    assert principal.may_call("claude-sonnet-4") and not principal.may_call("smart")  # the key refuses smart
    update_team(store, "ops", {"models": "gpt-*"})
    assert store.verify_key(key).refused_by("claude-sonnet-4") == "The team 'ops'"  # type: ignore[union-attr]
    set_user_team(store, "ann", None)
    assert store.verify_key(key).team_id is None  # type: ignore[union-attr]


def test_a_move_leaves_past_spend_with_the_old_team_and_delete_needs_no_members(store):
    red, blue = create_team(store, {"name": "red"}), create_team(store, {"name": "blue"})
    ann = store.ensure_user("ann")
    set_user_team(store, "ann", "red")
    now = time.time()
    store.write_audit([_row(ann, "ann", red.id, 0.5, now - 10), _row(ann, "ann", None, 0.25, now - 5)])
    set_user_team(store, "ann", "blue")
    store.write_audit([_row(ann, "ann", blue.id, 0.125, now)])
    assert store.team_spent_since(red.id, now - 60) == pytest.approx(0.5)
    assert store.team_spent_since(blue.id, now - 60) == pytest.approx(0.125)
    assert store.spent_since(ann, now - 60) == pytest.approx(0.875)  # the user's own spend is all of it
    by_name = {t.name: t for t in list_teams(store, now=now)}
    assert (by_name["red"].members, by_name["red"].spent_today) == (0, pytest.approx(0.5))
    assert (by_name["blue"].members, by_name["blue"].spent_month) == (1, pytest.approx(0.125))
    with pytest.raises(InvalidRequest) as refused:
        delete_team(store, "blue")
    assert refused.value.code == "team_has_members"
    delete_team(store, "red")
    green = create_team(store, {"name": "green"})
    assert green.id not in (red.id, blue.id)  # a deleted team's id (and so its spend) is never reused
    assert [(t.team, t.cost) for t in team_totals(store.engine, since=now - 60)] == [
        (f"(deleted team {red.id})", pytest.approx(0.5)), ("blue", pytest.approx(0.125))]
    erase_user(store, "ann")  # erasure takes the user out of the team, the rows keep it
    assert get_team(store, "blue").members == 0
    assert store.team_spent_since(blue.id, now - 60) == pytest.approx(0.125)
    delete_team(store, "blue")


def test_m012_upgrades_a_database_made_before_teams(store):
    """The nullable columns, the table and the index are added to a database that had none of them."""
    if store.engine.dialect.name == "sqlite":
        pytest.skip("SQLite cannot drop a column with a foreign key, to rebuild the old shape")
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_audit_log_team_id_ts"))
        conn.execute(sa.text("ALTER TABLE audit_log DROP COLUMN team_id"))
        conn.execute(sa.text("ALTER TABLE users DROP COLUMN team_id"))
        conn.execute(sa.text("DROP TABLE teams"))
        conn.execute(sa.text("DELETE FROM schema_migrations WHERE name = 'm012_teams'"))
    assert store.migrate() == ["m012_teams"]
    inspector = sa.inspect(store.engine)
    assert "team_id" in {c["name"] for c in inspector.get_columns("users")}
    assert "ix_audit_log_team_id_ts" in {i["name"] for i in inspector.get_indexes(audit_log.name)}
    key, _ = store.create_key("ann")
    create_team(store, {"name": "ops"})
    set_user_team(store, "ann", "ops")
    assert store.verify_key(key).team_name == "ops"  # type: ignore[union-attr]


# -- budgets: the tighter of user and team -----------------------------------------------------------
def _budgets(kind: str) -> Any:
    if kind == "memory":
        return Budgets(None, warn_at=(0.3,))
    if not REDIS:
        pytest.skip("needs GAUD_TEST_REDIS_URL")
    return RedisBudgets(REDIS, None, warn_at=(0.3,), prefix=f"gaud:test:teams:{uuid.uuid4().hex}:")


def _member(user_id: int, name: str, *, daily: float | None = None, team_daily: float | None = None) -> Principal:
    return Principal(user_id=user_id, user_name=name, role="member", budget_daily=daily, team_id=9, team_name="ops",
                     team_budget_daily=team_daily)


async def _settle(budgets: Any, reservation: Any, cost: float) -> None:
    if isinstance(budgets, RedisBudgets):
        await budgets.settle_now(reservation, cost)
    else:
        budgets.settle(reservation, cost)


async def _close(budgets: Any) -> None:
    if isinstance(budgets, RedisBudgets):
        await budgets.redis.delete(*await budgets.redis.keys(f"{budgets.prefix}*"))
        await budgets.aclose()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_tighter_budget_refuses_and_is_named(kind):
    ann = _member(1, "ann", daily=0.01, team_daily=1.0)  # her own budget is the tighter
    ben = _member(2, "ben", daily=1.0, team_daily=0.02)  # his team's is

    async def scenario() -> list[str]:
        budgets = _budgets(kind)
        messages = []
        try:
            first = await budgets.reserve(ann, 0.008)
            with pytest.raises(BudgetExceeded) as refused:
                await budgets.reserve(ann, 0.004)
            messages.append(refused.value.message)
            await _settle(budgets, first, 0.008)
            # ann's spend counts for the team too: 0.008 of its 0.02 is used.
            await budgets.reserve(ben, 0.01)
            with pytest.raises(BudgetExceeded) as refused:
                await budgets.reserve(ben, 0.004)
            messages.append(refused.value.message)
            assert budgets.warning(ben) == "team daily=40%"
        finally:
            await _close(budgets)
        return messages

    assert asyncio.run(scenario()) == [
        ("The daily budget of $0.01 for user 'ann' cannot cover this request: $0.00 used, $0.008 reserved by requests"
         " in flight, $0.004 estimated for this request."),
        ("The daily budget of $0.02 for team 'ops' cannot cover this request: $0.008 used, $0.01 reserved by requests"
         " in flight, $0.004 estimated for this request."),
    ]


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_refused_request_reserves_nothing_anywhere(kind):
    """All or nothing: a request the team refuses holds nothing against its user either."""
    ann = _member(1, "ann", daily=0.01, team_daily=0.005)

    async def scenario() -> None:
        budgets = _budgets(kind)
        try:
            with pytest.raises(BudgetExceeded, match="for team 'ops'"):
                await budgets.reserve(ann, 0.006)
            alone = Principal(user_id=1, user_name="ann", role="member", budget_daily=0.01)  # out of the team
            await budgets.reserve(alone, 0.01)  # the whole user budget is still free
        finally:
            await _close(budgets)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_budget_cleared_then_restored_counts_what_was_spent_meanwhile(kind):
    """Spend goes on counting while no budget applies: restored the same day, the user's and the
    team's limits start from everything spent that day, not from what was spent before clearing
    (in Redis the day's spend key outlives the budget and is not seeded again). A scope that never
    had a budget gets no key (it is seeded from the audit log when a budget first applies)."""
    ann = _member(1, "ann", daily=1.0, team_daily=5.0)
    cleared = _member(1, "ann")
    ben = _member(2, "ben", team_daily=1.0)  # only the team's budget, restored at 1.0
    stranger = Principal(user_id=3, user_name="cy", role="member")  # never had a budget

    async def scenario() -> list[str]:
        budgets = _budgets(kind)
        messages = []
        try:
            await _settle(budgets, await budgets.reserve(ann, 0.1), 0.5)
            for _ in range(2):
                await _settle(budgets, await budgets.reserve(cleared, 0.1), 0.2)
            await _settle(budgets, await budgets.reserve(stranger, 0.1), 0.3)
            for who in (ann, ben):
                with pytest.raises(BudgetExceeded) as refused:
                    await budgets.reserve(who, 0.2)
                messages.append(refused.value.message)
            await budgets.reserve(ann, 0.05)  # what is left still serves
            if isinstance(budgets, RedisBudgets):
                assert not await budgets.redis.keys(f"{budgets.prefix}3:*")
        finally:
            await _close(budgets)
        return messages

    assert asyncio.run(scenario()) == [
        ("The daily budget of $1.00 for user 'ann' cannot cover this request: $0.90 used, $0.00 reserved by requests"
         " in flight, $0.20 estimated for this request."),
        ("The daily budget of $1.00 for team 'ops' cannot cover this request: $0.90 used, $0.00 reserved by requests"
         " in flight, $0.20 estimated for this request."),
    ]


def test_budgets_seed_team_spend_from_the_audit_log(store):
    team = create_team(store, {"name": "ops", "budget_daily": 1.0})
    ann = store.ensure_user("ann")
    store.write_audit([_row(ann, "ann", team.id, 0.9, time.time())])
    ben = Principal(user_id=ann + 1, user_name="ben", role="member", team_id=team.id, team_name="ops",
                    team_budget_daily=1.0)

    async def scenario() -> str:
        with pytest.raises(BudgetExceeded) as refused:
            await Budgets(store).reserve(ben, 0.2)
        return refused.value.message

    assert asyncio.run(scenario()).startswith("The daily budget of $1.00 for team 'ops' cannot cover this request: "
                                              "$0.90 used")


# -- rate limits --------------------------------------------------------------------------------------
def test_user_and_team_buckets_are_taken_together_and_the_tighter_refuses():
    guards = Guards(MemoryRateLimiter(clock=lambda: 1000.0), MemoryCache(10))
    ann = Principal(user_id=1, user_name="ann", role="member", rpm_limit=1, team_id=4, team_name="ops",
                    team_rpm_limit=5, team_tpm_limit=100)
    ben = Principal(user_id=2, user_name="ben", role="member", team_id=4, team_name="ops", team_rpm_limit=5,
                    team_tpm_limit=100)

    async def scenario() -> None:
        admitted = await guards.admit(ann, 10)
        assert [key for key, _ in admitted.token_buckets] == ["team:4:tpm"]
        with pytest.raises(RateLimited) as refused:  # her own rpm (1) is the tighter
            await guards.admit(ann, 10)
        assert refused.value.message.startswith("Rate limit reached for ann: 1 requests/min.")
        await guards.admit(ben, 85)  # the team's tokens bucket: 10 + 85 of 100
        with pytest.raises(RateLimited) as refused:
            await guards.admit(ben, 10)
        assert refused.value.message.startswith("Rate limit reached for team 'ops': 100 tokens/min.")
        # ann's refused take charged nothing: the team bucket still holds the 5 tokens ben left.
        await guards.settle(admitted, 5)  # her request used 5, not 10: 5 go back to the team bucket
        await guards.admit(ben, 10)

    asyncio.run(scenario())
