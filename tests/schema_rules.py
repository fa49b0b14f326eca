"""The rolling-upgrade rules for migrations (docs/upgrades.md), checked on two schemas read back
from databases with SQLAlchemy's inspector: what the previous release's migrations made, and what
the current ones make. An old instance keeps running against the new schema until it is replaced,
so the new schema may only add to the old one."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import sqlalchemy as sa


@dataclass(frozen=True)
class Column:
    type: str
    nullable: bool
    has_default: bool

    def __str__(self) -> str:
        return f"{self.type}{'' if self.nullable else ' NOT NULL'}{' with a server default' if self.has_default else ''}"


@dataclass
class Table:
    columns: dict[str, Column] = field(default_factory=dict)
    #: Column sets that must be unique (unique indexes and constraints, the primary key).
    unique: set[tuple[str, ...]] = field(default_factory=set)
    indexes: set[str] = field(default_factory=set)


Schema = dict[str, Table]


def read_schema(url: str) -> Schema:
    """The tables, columns, unique column sets and index names of the database at `url`."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {name: _table(inspector, name) for name in inspector.get_table_names()}
    finally:
        engine.dispose()


def _table(inspector: sa.Inspector, name: str) -> Table:
    table = Table()
    for c in inspector.get_columns(name):
        table.columns[c["name"]] = Column(str(c["type"]).upper(), bool(c["nullable"]), c.get("default") is not None)
    table.unique.add(tuple(sorted(inspector.get_pk_constraint(name)["constrained_columns"])))
    for u in inspector.get_unique_constraints(name):
        table.unique.add(tuple(sorted(u["column_names"])))
    for i in inspector.get_indexes(name):
        table.indexes.add(str(i["name"]))
        if i["unique"]:
            table.unique.add(tuple(sorted(str(c) for c in i["column_names"])))
    return table


def unsafe_changes(old: Schema, new: Schema, contracted: Collection[str] = ()) -> list[str]:
    """What in `new` would break an instance of the release that made `old`, one line each.
    `contracted`: tables and columns ("table.column") the old release no longer used, which may go."""
    problems: list[str] = []
    for name, before in old.items():
        after = new.get(name)
        if after is None:
            if name not in contracted:
                problems.append(f"table {name} was dropped or renamed: old instances still use it")
            continue
        problems += _column_changes(name, before, after, contracted)
        for columns in sorted(after.unique - before.unique):
            problems.append(f"new unique index on {name}({', '.join(columns)}), a table old instances write: "
                            "their rows may break it (put the column in a new table)")
    return problems


def _column_changes(table: str, before: Table, after: Table, contracted: Collection[str]) -> list[str]:
    problems = []
    for name, old in before.columns.items():
        new = after.columns.get(name)
        where = f"column {table}.{name}"
        if new is None:
            if f"{table}.{name}" not in contracted:
                    problems.append(f"{where} was dropped or renamed: old instances still read and write it")
        elif new.type != old.type:
            problems.append(f"{where} changed type {old.type} -> {new.type}: old instances write the old type")
        elif old.nullable and not new.nullable:
            problems.append(f"{where} became NOT NULL: old instances may write NULL there")
        elif old.has_default and not new.has_default and not new.nullable:
            problems.append(f"{where} lost its server default: old instances that leave it out fail to insert")
    for name in after.columns.keys() - before.columns.keys():
        new = after.columns[name]
        if not new.nullable and not new.has_default:
            problems.append(f"new column {table}.{name} is NOT NULL without a server default: old instances' "
                            "inserts, which leave it out, fail (make it nullable or give it a server_default)")
    return problems


def upgrade_differences(upgraded: Schema, fresh: Schema) -> list[str]:
    """Where a database the old release made and the new migrations upgraded differs from one the
    new migrations made from nothing (a migration that changed a table's definition but not the
    tables already made by an earlier one)."""
    problems = [f"table {t}: only in a fresh database" for t in sorted(fresh.keys() - upgraded.keys())]
    problems += [f"table {t}: only in an upgraded database" for t in sorted(upgraded.keys() - fresh.keys())]
    for name in sorted(fresh.keys() & upgraded.keys()):
        a, b = upgraded[name], fresh[name]
        for column in sorted(a.columns.keys() | b.columns.keys()):
            was, new = a.columns.get(column), b.columns.get(column)
            if was != new:
                problems.append(f"column {name}.{column}: upgraded {was or 'missing'}, fresh {new or 'missing'}")
        if a.indexes != b.indexes:
            problems.append(f"indexes of {name}: upgraded {sorted(a.indexes)}, fresh {sorted(b.indexes)}")
        if a.unique != b.unique:
            problems.append(f"unique column sets of {name}: upgraded {sorted(a.unique)}, fresh {sorted(b.unique)}")
    return problems
