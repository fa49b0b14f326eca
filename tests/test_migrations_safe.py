"""The current migrations only add to the previous release's schema (docs/upgrades.md): no table or
column dropped or renamed, no type changed, every new column nullable or with a server default, new
unique indexes only on new tables; the migration list only grows at its end; and a database the
previous release made, once upgraded, has the schema of a fresh one. Both schemas come from SQLite
databases: the previous release's migrations run by its own code (tests/previous_release.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.accounts.store import MIGRATIONS, Store

from .conftest import TEST_KEY_SECRET
from .previous_release import OldRelease, extract
from .schema_rules import Schema, read_schema, unsafe_changes, upgrade_differences

#: Contract steps (docs/upgrades.md): tables and columns ("table.column") the previous release no
#: longer reads or writes, which this release drops. Empty again once the pointer moves past it.
CONTRACTED: dict[str, str] = {}


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """SQLite URLs: `old` migrated by the previous release, `upgraded` the same then migrated by
    this code, `fresh` migrated by this code only."""
    tmp = tmp_path_factory.mktemp("schemas")
    old = OldRelease(extract(tmp_path_factory.mktemp("previous_release")), f"sqlite:///{tmp / 'old.db'}")
    old.migrate()
    shutil.copy(tmp / "old.db", tmp / "upgraded.db")
    for name in ("upgraded", "fresh"):
        store = Store(f"sqlite:///{tmp / name}.db", key_secret=TEST_KEY_SECRET)
        store.migrate()
        store.close()
    return {name: f"sqlite:///{tmp / name}.db" for name in ("old", "upgraded", "fresh")}


def test_the_new_schema_only_adds_to_the_previous_releases(databases: dict[str, str]) -> None:
    old = read_schema(databases["old"])
    assert {"users", "api_keys", "audit_log", "schema_migrations"} <= old.keys()  # the old migrations did run
    for kind in ("fresh", "upgraded"):
        problems = unsafe_changes(old, read_schema(databases[kind]), CONTRACTED)
        assert not problems, f"a rolling upgrade would break old instances ({kind} database):\n" + "\n".join(problems)


def test_an_upgraded_database_has_the_schema_of_a_fresh_one(databases: dict[str, str]) -> None:
    problems = upgrade_differences(read_schema(databases["upgraded"]), read_schema(databases["fresh"]))
    assert not problems, "the migrations bring an old database to another schema than a new one:\n" + "\n".join(problems)


def test_migrations_are_only_appended(databases: dict[str, str]) -> None:
    """An old instance runs every migration of its own list whose name it does not find in
    schema_migrations: one renamed, removed or reordered here would run again there, or be missing."""
    engine = sa.create_engine(databases["old"])
    with engine.connect() as conn:
        applied = conn.execute(sa.text("SELECT name FROM schema_migrations ORDER BY applied_at, rowid")).scalars().all()
    engine.dispose()
    current = [m.__name__ for m in MIGRATIONS]
    assert applied and current[: len(applied)] == applied, f"previous release: {applied}\nnow: {current}"


# -- the rules themselves, on schemas made to break them ------------------------------------------

OLD_DDL = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE, budget FLOAT, flag BOOLEAN NOT NULL DEFAULT 0)",
    "CREATE TABLE keys (id INTEGER PRIMARY KEY, lookup VARCHAR(32) NOT NULL)",
]


def _schema(tmp_path: Path, name: str, ddl: list[str]) -> Schema:
    engine = sa.create_engine(f"sqlite:///{tmp_path / name}.db")
    with engine.begin() as conn:
        for statement in ddl:
            conn.execute(sa.text(statement))
    engine.dispose()
    return read_schema(f"sqlite:///{tmp_path / name}.db")


@pytest.mark.parametrize(("change", "message"), [
    ("ALTER TABLE users DROP COLUMN budget", "column users.budget was dropped or renamed"),
    ("ALTER TABLE users RENAME COLUMN budget TO daily", "column users.budget was dropped or renamed"),
    ("DROP TABLE keys", "table keys was dropped or renamed"),
    ("ALTER TABLE users ADD COLUMN team INTEGER NOT NULL DEFAULT 0", None),
    ("ALTER TABLE users ADD COLUMN team INTEGER", None),
    ("CREATE TABLE teams (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE)", None),
    ("CREATE INDEX ix_keys_lookup ON keys (lookup)", None),
    ("CREATE UNIQUE INDEX ix_keys_lookup ON keys (lookup)", "new unique index on keys(lookup)"),
])
def test_each_rule_names_what_it_finds(tmp_path: Path, change: str, message: str | None) -> None:
    problems = unsafe_changes(_schema(tmp_path, "old", OLD_DDL), _schema(tmp_path, "new", [*OLD_DDL, change]))
    if message is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(message), problems


@pytest.mark.parametrize(("new_users", "message"), [
    ("name VARCHAR(200) NOT NULL UNIQUE, budget TEXT, flag BOOLEAN NOT NULL DEFAULT 0",
     "column users.budget changed type FLOAT -> TEXT"),
    ("name VARCHAR(200) NOT NULL UNIQUE, budget FLOAT NOT NULL DEFAULT 0, flag BOOLEAN NOT NULL DEFAULT 0",
     "column users.budget became NOT NULL"),
    ("name VARCHAR(200) NOT NULL UNIQUE, budget FLOAT, flag BOOLEAN NOT NULL",
     "column users.flag lost its server default"),
    ("name VARCHAR(200) NOT NULL UNIQUE, budget FLOAT, flag BOOLEAN NOT NULL DEFAULT 0, team INTEGER NOT NULL",
     "new column users.team is NOT NULL without a server default"),
])
def test_a_rebuilt_table_is_checked_column_by_column(tmp_path: Path, new_users: str, message: str) -> None:
    new = [f"CREATE TABLE users (id INTEGER PRIMARY KEY, {new_users})", OLD_DDL[1]]
    problems = unsafe_changes(_schema(tmp_path, "old", OLD_DDL), _schema(tmp_path, "new", new))
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_an_upgrade_that_misses_a_column_is_found(tmp_path: Path) -> None:
    fresh = _schema(tmp_path, "fresh", [OLD_DDL[0].replace("budget FLOAT", "budget FLOAT, team INTEGER"), OLD_DDL[1]])
    problems = upgrade_differences(_schema(tmp_path, "upgraded", OLD_DDL), fresh)
    assert problems == ["column users.team: upgraded missing, fresh INTEGER"]


def test_a_contracted_column_may_go(tmp_path: Path) -> None:
    old = _schema(tmp_path, "old", OLD_DDL)
    new = _schema(tmp_path, "new", [*OLD_DDL, "ALTER TABLE users DROP COLUMN budget", "DROP TABLE keys"])
    assert unsafe_changes(old, new, {"users.budget", "keys"}) == []
    assert len(unsafe_changes(old, new, {"users.budget"})) == 1
