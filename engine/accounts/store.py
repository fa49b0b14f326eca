"""Users, API keys (HMAC-SHA256 under the server secret), the audit log, upstream sign-ins and dashboard sessions, on
SQLite by default or PostgreSQL.

SQLAlchemy Core keeps one schema and one set of queries for both databases. Migrations are
ordered named functions recorded in `schema_migrations` and run on start. Calls are synchronous;
the server runs them in a thread, off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from .keys import KEY_FIELDS, USER_FIELDS, model_patterns
from .server_secret import find_secrets, sqlite_folder

__all__ = ["KEY_PREFIX", "KeyInfo", "Principal", "Store", "sqlite_folder", "teams"]

KEY_PREFIX = "sk-gaud-"
_LOOKUP_CHARS = 12
#: sk-gaud-, 12 hex characters of lookup, 32 of token_urlsafe(24): what create_key makes.
_KEY_SHAPE = re.compile(r"sk-gaud-[0-9a-f]{12}[A-Za-z0-9_-]{32}")
#: Stored hashes: HMAC_SCHEME$<secret fingerprint>$<hex digest>; anything else is a legacy argon2 hash.
HMAC_SCHEME = "hmac-sha256"

metadata = sa.MetaData()

#: Teams (m012, engine.accounts.teams): limits every member shares. sqlite_autoincrement: a deleted
#: team's id is never given to a new team, which would otherwise inherit its audit rows' spend.
teams = sa.Table(
    "teams",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("budget_daily", sa.Float, nullable=True),
    sa.Column("budget_monthly", sa.Float, nullable=True),
    sa.Column("rpm_limit", sa.Float, nullable=True),
    sa.Column("tpm_limit", sa.Float, nullable=True),
    sa.Column("models", sa.Text, nullable=True),  # comma-separated glob patterns; NULL: no team list
    sqlite_autoincrement=True,
)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("budget_daily", sa.Float, nullable=True),
    sa.Column("budget_monthly", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("rpm_limit", sa.Float, nullable=True),
    sa.Column("tpm_limit", sa.Float, nullable=True),
    sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=True),  # m012; NULL: no team
)
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("lookup", sa.String(32), nullable=False, unique=True),
    sa.Column("hash", sa.String(200), nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("models", sa.Text, nullable=True),  # comma-separated glob patterns; NULL: every model
    sa.Column("max_in_flight", sa.Integer, nullable=True),  # m009; NULL: no limit of its own
)
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("user_id", sa.Integer, nullable=True, index=True),
    sa.Column("user_name", sa.String(200), nullable=True),
    sa.Column("alias", sa.String(200), nullable=True),
    sa.Column("deployment", sa.String(300), nullable=True),
    sa.Column("tried", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error_kind", sa.String(50), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cached_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost", sa.Float, nullable=False, default=0.0),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("stream", sa.Boolean, nullable=False, default=False),
    sa.Column("cache_hit", sa.Boolean, nullable=False, default=False),
    sa.Column("content", sa.Text, nullable=True),
    # Billed at the provider's highest price: the model had no price of its own (m006).
    sa.Column("price_estimated", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # The token counts are the gateway's estimate: the upstream reported none, or the reply was cut (m007).
    sa.Column("usage_estimated", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # The API key the request came with (m009): what `keys list` reads a key's last use from.
    sa.Column("key_id", sa.Integer, nullable=True),
    # Each deployment tried or skipped, as JSON (m009; engine.pipeline.gateway.Exchange.attempt_log).
    sa.Column("attempt_log", sa.Text, nullable=True),
    # The caller's team when the request was made (m012): a team's spend stays put when a user moves.
    sa.Column("team_id", sa.Integer, nullable=True),
)
#: m010: a request's detail page looks it up by id; a key's last use is the newest row of its key.
sa.Index("ix_audit_log_request_id", audit_log.c.request_id)
sa.Index("ix_audit_log_key_id_ts", audit_log.c.key_id, audit_log.c.ts)
# The request log pages newest first on (ts, id). SQLite's index on ts already ends in the rowid
# (id), so it serves; PostgreSQL's does not.
sa.Index("ix_audit_log_ts_id", audit_log.c.ts, audit_log.c.id).ddl_if(dialect="postgresql")
#: m012: a team's spend since midnight or the 1st (budgets) is one range scan.
sa.Index("ix_audit_log_team_id_ts", audit_log.c.team_id, audit_log.c.ts)

AUDIT_FIELDS = tuple(c.name for c in audit_log.columns if c.name != "id")
#: Rows per INSERT statement: rows x columns bind parameters stays under every SQLite build's
#: limit (999).
AUDIT_ROWS_PER_INSERT = 999 // len(AUDIT_FIELDS)
#: Concurrent argon2 computations per process (each takes the hasher's memory_cost, 64 MiB): only
#: legacy keys (made before m005) are argon2-hashed, until their first use rewrites them.
ARGON2_AT_ONCE = 2


def _audit_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """An audit record as a row in AUDIT_FIELDS order, counts and flags made non-null."""
    row = [record.get(name) for name in AUDIT_FIELDS]
    for i in _AUDIT_COUNTS:
        row[i] = row[i] or 0
    row[_AUDIT_COST] = row[_AUDIT_COST] or 0.0
    for i in _AUDIT_FLAGS:
        row[i] = bool(row[i])
    return tuple(row)


_AUDIT_COUNTS = tuple(AUDIT_FIELDS.index(n) for n in ("attempts", "prompt_tokens", "completion_tokens", "cached_tokens"))
_AUDIT_COST = AUDIT_FIELDS.index("cost")
_AUDIT_FLAGS = tuple(AUDIT_FIELDS.index(n) for n in ("stream", "cache_hit", "price_estimated", "usage_estimated"))


def m001_initial(conn: sa.Connection) -> None:
    # teams too: users.team_id (m012) refers to it, and the tables are made in their current shape.
    metadata.create_all(conn, tables=[teams, users, api_keys, audit_log])


def m002_user_rate_limits(conn: sa.Connection) -> None:
    """Per-user requests and tokens per minute (a database made by m001 before they existed)."""
    existing = {c["name"] for c in sa.inspect(conn).get_columns("users")}
    for column in ("rpm_limit", "tpm_limit"):
        if column not in existing:
            conn.execute(sa.text(f"ALTER TABLE users ADD COLUMN {column} FLOAT"))


MIGRATIONS: list[Callable[[sa.Connection], None]] = [m001_initial, m002_user_rate_limits]

#: Upstream sign-ins (engine.credentials): one sealed record per provider; the blob is Fernet
#: ciphertext (or a marker when the tokens live in the OS keyring), never a plaintext token.
credentials = sa.Table(
    "credentials",
    metadata,
    sa.Column("provider", sa.String(100), primary_key=True),
    sa.Column("blob", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def m003_credentials(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[credentials])


MIGRATIONS.append(m003_credentials)

#: Admin dashboard sessions (engine.web.dashboard), shared by every process on this database. The
#: session id lives only in the browser's cookie: a row is keyed by its SHA-256 (hex).
dashboard_sessions = sa.Table(
    "dashboard_sessions",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.Integer, nullable=True),
    sa.Column("user_id", sa.Integer, nullable=True),
    sa.Column("user_name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("csrf", sa.String(100), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False, index=True),
)


def m004_dashboard_sessions(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[dashboard_sessions])


MIGRATIONS.append(m004_dashboard_sessions)


def m005_key_policies(conn: sa.Connection) -> None:
    """Per-key model allow-list, expiry and label. (Key hashes need no column: HMAC hashes go in
    `hash` beside the argon2 ones they replace, told apart by their scheme.)"""
    existing = {c["name"] for c in sa.inspect(conn).get_columns("api_keys")}
    for column, sql_type in (("expires_at", "FLOAT"), ("label", "VARCHAR(200)"), ("models", "TEXT")):
        if column not in existing:
            conn.execute(sa.text(f"ALTER TABLE api_keys ADD COLUMN {column} {sql_type}"))


MIGRATIONS.append(m005_key_policies)


def m006_audit_price_estimated(conn: sa.Connection) -> None:
    """audit_log.price_estimated: the request was billed at its provider's highest price (issue 18)."""
    if "price_estimated" not in {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}:
        conn.execute(sa.text("ALTER TABLE audit_log ADD COLUMN price_estimated BOOLEAN NOT NULL DEFAULT FALSE"))


MIGRATIONS.append(m006_audit_price_estimated)


def m007_audit_usage_estimated(conn: sa.Connection) -> None:
    """audit_log.usage_estimated: the token counts are the gateway's estimate (issue 19)."""
    if "usage_estimated" not in {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}:
        conn.execute(sa.text("ALTER TABLE audit_log ADD COLUMN usage_estimated BOOLEAN NOT NULL DEFAULT FALSE"))


MIGRATIONS.append(m007_audit_usage_estimated)

#: Replies a client asked the gateway to keep (`responses.store`; engine.accounts.conversations):
#: per user, the conversation up to the reply (`input`, JSON items) and the reply itself (JSON).
stored_responses = sa.Table(
    "stored_responses",
    metadata,
    sa.Column("user_id", sa.Integer, primary_key=True),
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(300), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True, index=True),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
)


def m008_responses_store(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[stored_responses])


MIGRATIONS.append(m008_responses_store)


def m009_audit_key_and_attempts(conn: sa.Connection) -> None:
    """audit_log.key_id and audit_log.attempt_log (issue 24): a key's last use, a request's attempts."""
    existing = {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}
    for column, sql_type in (("key_id", "INTEGER"), ("attempt_log", "TEXT")):
        if column not in existing:
            conn.execute(sa.text(f"ALTER TABLE audit_log ADD COLUMN {column} {sql_type}"))


MIGRATIONS.append(m009_audit_key_and_attempts)


def m010_audit_log_indexes(conn: sa.Connection) -> None:
    """The request log's indexes (issue 24), where m001 did not make them already."""
    inspector = sa.inspect(conn)
    existing = {i["name"] for i in inspector.get_indexes("audit_log")}
    columns = {c["name"] for c in inspector.get_columns("audit_log")}
    for index in audit_log.indexes:
        # An index on a column a later migration adds is that migration's (m012's team index).
        if index.name not in existing and {c.name for c in index.columns} <= columns:
            index.create(conn)  # honours ddl_if: the (ts, id) index only on PostgreSQL


MIGRATIONS.append(m010_audit_log_indexes)


def m011_key_max_in_flight(conn: sa.Connection) -> None:
    """api_keys.max_in_flight: the key's own limit on requests in flight (issue 25; NULL: none)."""
    if "max_in_flight" not in {c["name"] for c in sa.inspect(conn).get_columns("api_keys")}:
        conn.execute(sa.text("ALTER TABLE api_keys ADD COLUMN max_in_flight INTEGER"))


MIGRATIONS.append(m011_key_max_in_flight)


def m012_teams(conn: sa.Connection) -> None:
    """Teams (issue 25): the `teams` table, users.team_id and audit_log.team_id (both nullable, so
    instances of the previous release keep working against this schema) and the team spend index."""
    metadata.create_all(conn, tables=[teams])  # checkfirst: m001 made it on a new database
    inspector = sa.inspect(conn)
    if "team_id" not in {c["name"] for c in inspector.get_columns("users")}:
        conn.execute(sa.text("ALTER TABLE users ADD COLUMN team_id INTEGER REFERENCES teams(id)"))
    if "team_id" not in {c["name"] for c in inspector.get_columns("audit_log")}:
        conn.execute(sa.text("ALTER TABLE audit_log ADD COLUMN team_id INTEGER"))
    if "ix_audit_log_team_id_ts" not in {i["name"] for i in sa.inspect(conn).get_indexes("audit_log")}:
        next(i for i in audit_log.indexes if i.name == "ix_audit_log_team_id_ts").create(conn)


MIGRATIONS.append(m012_teams)


#: Who changed which user or key, when (engine.accounts.admin writes a row in the transaction of
#: each change). `detail` is JSON of the fields changed and their values: never a key or its hash.
admin_events = sa.Table(
    "admin_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)


def m013_admin_events(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[admin_events])


MIGRATIONS.append(m013_admin_events)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user behind an API key (or the anonymous local user)."""

    user_id: int | None
    user_name: str
    role: str
    key_id: int | None = None
    budget_daily: float | None = None
    budget_monthly: float | None = None
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    #: The key's model allow-list (glob patterns); None: every model.
    models: tuple[str, ...] | None = None
    #: The key's own limit on its requests in flight (engine.accounts.inflight); None: none.
    max_in_flight: int | None = None
    #: The user's team (engine.accounts.teams) and its limits, read with the key; None: no team.
    team_id: int | None = None
    team_name: str | None = None
    team_budget_daily: float | None = None
    team_budget_monthly: float | None = None
    team_rpm_limit: float | None = None
    team_tpm_limit: float | None = None
    #: The team's model allow-list; None: the team restricts nothing.
    team_models: tuple[str, ...] | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_call(self, model: str) -> bool:
        """Whether the key's allow-list and its team's (engine.accounts.keys) both admit the model name sent."""
        return self.refused_by(model) is None

    def refused_by(self, model: str) -> str | None:
        """Who refuses the model name sent ("This API key", "The team 'x'"); None: allowed."""
        if self.models is not None and not model_patterns(self.models).allows(model):
            return "This API key"
        if self.team_models is not None and not model_patterns(self.team_models).allows(model):
            return f"The team '{self.team_name}'"
        return None

    @property
    def has_budget(self) -> bool:
        """Whether requests reserve against a daily or monthly limit, the user's or the team's."""
        return self.user_id is not None and (
            self.budget_daily is not None or self.budget_monthly is not None
            or self.team_budget_daily is not None or self.team_budget_monthly is not None
        )


@dataclass(frozen=True)
class KeyInfo:
    id: int
    lookup: str
    user_name: str
    role: str
    created_at: float
    revoked_at: float | None
    budget_daily: float | None
    budget_monthly: float | None
    expires_at: float | None = None
    label: str | None = None
    models: tuple[str, ...] | None = None
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    max_in_flight: int | None = None
    #: The name of the user's team (engine.accounts.teams); None: no team.
    team: str | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)


def _models_column(models: tuple[str, ...] | None) -> str | None:
    return ",".join(models) if models else None


def _models_of(column: str | None) -> tuple[str, ...] | None:
    return tuple(column.split(",")) if column else None


_KEY_ROW_COLUMNS = (
    api_keys.c.id, api_keys.c.hash, api_keys.c.revoked_at, api_keys.c.expires_at, api_keys.c.models, users.c.id,
    users.c.name, users.c.role, users.c.budget_daily, users.c.budget_monthly, users.c.rpm_limit, users.c.tpm_limit,
    api_keys.c.max_in_flight, teams.c.id, teams.c.name, teams.c.budget_daily, teams.c.budget_monthly,
    teams.c.rpm_limit, teams.c.tpm_limit, teams.c.models,
)


class _KeyRow(NamedTuple):
    """What verify_key reads: a key and its user, in _KEY_ROW_COLUMNS order."""

    key_id: int
    hash: str
    revoked_at: float | None
    expires_at: float | None
    models: str | None
    user_id: int
    name: str
    role: str
    budget_daily: float | None
    budget_monthly: float | None
    rpm_limit: float | None
    tpm_limit: float | None
    max_in_flight: int | None
    team_id: int | None
    team_name: str | None
    team_budget_daily: float | None
    team_budget_monthly: float | None
    team_rpm_limit: float | None
    team_tpm_limit: float | None
    team_models: str | None


class KeySecrets:
    """HMAC-SHA256 keys derived from the server secrets (engine.accounts.server_secret), current
    first, each known by a short fingerprint stored with the hashes it made."""

    def __init__(self, secrets_: list[str]) -> None:
        self.keys: dict[str, bytes] = {}
        for raw in secrets_:
            derived = hmac.new(raw.encode(), b"gaud-engine api keys v1", hashlib.sha256).digest()
            self.keys.setdefault(hashlib.sha256(derived).hexdigest()[:8], derived)
        self.current = next(iter(self.keys))

    def digest(self, key: str, fingerprint: str | None = None) -> str | None:
        """The hex HMAC of `key` under the secret `fingerprint` names (default: the current one);
        None when no configured secret has that fingerprint (rotated out)."""
        derived = self.keys.get(fingerprint or self.current)
        if derived is None:
            return None
        return hmac.new(derived, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def stored(self, key: str) -> str:
        """What the database keeps for a key: scheme, secret fingerprint, digest."""
        return f"{HMAC_SCHEME}${self.current}${self.digest(key)}"


#: The PostgreSQL advisory lock `migrate` holds (any number that other software is unlikely to use).
_MIGRATION_LOCK = 0x6761_7564  # "gaud"


def _lock_for_migrations(conn: sa.Connection) -> None:
    """Hold the database's migration lock until `conn`'s transaction ends: SQLite takes its write
    lock at once (BEGIN IMMEDIATE), PostgreSQL a transaction-scoped advisory lock."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))


#: How long a new SQLite connection waits to switch a fresh database to WAL (as for any lock).
_SQLITE_LOCK_TIMEOUT = 30.0


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode (once per file: the mode persists). Switching waits for no busy
    handler: it fails at once while another process holds a lock, as when several instances open
    a fresh database together, so it is retried until one of them has switched it."""
    deadline = time.monotonic() + _SQLITE_LOCK_TIMEOUT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _engine_for(url: str) -> sa.Engine:
    """The engine for `url`. `hide_parameters`: a database error names its statement but not the
    values bound to it (a key's HMAC, a sealed credential), so no traceback or log line holds them."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA cache_size=-512")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)


def key_shaped(key: str) -> bool:
    """Whether `key` looks like a key this gateway makes (else it is refused without a lookup)."""
    return _KEY_SHAPE.fullmatch(key) is not None


def _lookup_id(key_or_lookup: str) -> str:
    """The lookup id in a key, its prefix (sk-gaud-xxxxxxxxxxxx) or the id itself."""
    return key_or_lookup.removeprefix(KEY_PREFIX)[:_LOOKUP_CHARS]


class Store:
    """The gateway's database. Example: `store = Store("sqlite:///gaud.db"); store.migrate()`.

    `key_secret` (the `auth.key_secret` setting) keys the HMAC of API keys; without it the server
    secret is found as engine.accounts.server_secret describes (GAUD_SECRET_KEY, its file, or
    `gaud-secret.key` beside a SQLite database). `hasher` checks legacy argon2 hashes.
    """

    def __init__(
        self, url: str, *, key_secret: str | None = None, environ: Mapping[str, str] | None = None, hasher: Any = None
    ) -> None:
        self.url = url
        self.engine = _engine_for(url)
        self._hasher = hasher
        self._key_secret = None if key_secret is None else str(key_secret)  # a YAML scalar may parse as a number
        self._environ = environ
        self._secrets: KeySecrets | None = None
        self._ephemeral: list[str] = []
        self._lock = threading.Lock()
        #: argon2 hashes take 64 MiB each: at most this many at once, however many legacy keys
        #: arrive together.
        self._argon2_slots = threading.BoundedSemaphore(ARGON2_AT_ONCE)
        self._audit_inserts: dict[int, tuple[str, Callable[[list[tuple[Any, ...]]], Any]]] = {}
        self._key_query: tuple[str, bool] | None = None

    @property
    def hasher(self) -> Any:
        """The argon2 hasher for legacy hashes, imported on first need (never for HMAC keys)."""
        if self._hasher is None:
            from argon2 import PasswordHasher

            self._hasher = PasswordHasher()
        return self._hasher

    @property
    def key_secrets(self) -> KeySecrets:
        """The HMAC keys, found on first use (a missing secret fails the key operation, with a
        message saying what to set)."""
        if self._secrets is None:
            env = os.environ if self._environ is None else self._environ
            found = find_secrets(self.url, env, self._key_secret, self._ephemeral, purpose="hash API keys in this database (or set auth.key_secret)")
            with self._lock:
                self._secrets = self._secrets or KeySecrets(found)
        return self._secrets

    # -- schema -----------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied. Instances that start
        together take turns (a lock for the whole transaction), so each migration runs once and
        the others find it done."""
        applied: list[str] = []
        with self.engine.begin() as conn:
            _lock_for_migrations(conn)
            metadata.create_all(conn, tables=[schema_migrations])
            done = {row[0] for row in conn.execute(sa.select(schema_migrations.c.name))}
            for migration in MIGRATIONS:
                if migration.__name__ not in done:
                    migration(conn)
                    conn.execute(schema_migrations.insert().values(name=migration.__name__, applied_at=time.time()))
                    applied.append(migration.__name__)
        return applied

    def close(self) -> None:
        self.engine.dispose()

    def writing(self, conn: sa.Connection | None = None) -> contextlib.AbstractContextManager[sa.Connection]:
        """`conn`, a caller's open transaction (engine.accounts.admin records its event in the
        transaction of the change), or a new transaction."""
        return contextlib.nullcontext(conn) if conn is not None else self.engine.begin()

    def reading(self, conn: sa.Connection | None = None) -> contextlib.AbstractContextManager[sa.Connection]:
        """`conn`, a caller's open transaction (to read what it changed), or a new connection."""
        return contextlib.nullcontext(conn) if conn is not None else self.engine.connect()

    # -- users and keys ---------------------------------------------------------------------------
    def count_users(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())

    def ensure_user(
        self,
        name: str,
        *,
        role: str | None = None,
        budget_daily: float | None = None,
        budget_monthly: float | None = None,
        rpm_limit: float | None = None,
        tpm_limit: float | None = None,
        conn: sa.Connection | None = None,
    ) -> int:
        """The id of user `name`, created if missing (a member unless `role` says); a given role or
        limit updates an existing one, one not given leaves it as it is."""
        limits = {"budget_daily": budget_daily, "budget_monthly": budget_monthly, "rpm_limit": rpm_limit, "tpm_limit": tpm_limit}
        with self.writing(conn) as conn:
            row = conn.execute(sa.select(users.c.id).where(users.c.name == name)).first()
            if row is None:
                result = conn.execute(users.insert().values(name=name, role=role or "member", created_at=time.time(),
                                                            **limits))
                inserted = result.inserted_primary_key
                assert inserted is not None, "a single-row INSERT always reports its primary key"
                return int(inserted[0])
            changes: dict[str, Any] = {k: v for k, v in {"role": role, **limits}.items() if v is not None}
            if changes:
                conn.execute(users.update().where(users.c.id == row[0]).values(**changes))
            return int(row[0])

    def create_key(
        self,
        user_name: str,
        *,
        models: tuple[str, ...] | None = None,
        expires_at: float | None = None,
        label: str | None = None,
        max_in_flight: int | None = None,
        conn: sa.Connection | None = None,
        **user_fields: Any,
    ) -> tuple[str, KeyInfo]:
        """A new key for a user (created if needed; `user_fields` as in `ensure_user`). The
        plaintext is returned once; the database keeps its HMAC."""
        lookup = secrets.token_hex(_LOOKUP_CHARS // 2)
        key = f"{KEY_PREFIX}{lookup}{secrets.token_urlsafe(24)}"
        stored = self.key_secrets.stored(key)  # before any write: a missing secret changes nothing
        with self.writing(conn) as conn:
            user_id = self.ensure_user(user_name, conn=conn, **user_fields)
            conn.execute(api_keys.insert().values(
                lookup=lookup, hash=stored, user_id=user_id, created_at=time.time(), expires_at=expires_at,
                label=label, models=_models_column(models), max_in_flight=max_in_flight,
            ))
            info = self.key_info(lookup, conn=conn)
        assert info is not None
        return key, info

    def _key_infos(self) -> sa.Select[Any]:
        return sa.select(
            api_keys.c.id, api_keys.c.lookup, users.c.name, users.c.role, api_keys.c.created_at, api_keys.c.revoked_at,
            users.c.budget_daily, users.c.budget_monthly, api_keys.c.expires_at, api_keys.c.label, api_keys.c.models,
            users.c.rpm_limit, users.c.tpm_limit, api_keys.c.max_in_flight, teams.c.name,
        ).join(users, users.c.id == api_keys.c.user_id).outerjoin(teams, teams.c.id == users.c.team_id).order_by(
            api_keys.c.id)

    @staticmethod
    def _key_info(row: Any) -> KeyInfo:
        values = list(row)
        values[10] = _models_of(values[10])
        return KeyInfo(*values)

    def list_keys(self) -> list[KeyInfo]:
        with self.engine.connect() as conn:
            return [self._key_info(row) for row in conn.execute(self._key_infos())]

    def key_info(self, key_or_lookup: str, *, conn: sa.Connection | None = None) -> KeyInfo | None:
        """One key by the key itself, its prefix (sk-gaud-xxxxxxxxxxxx) or its lookup id."""
        with self.reading(conn) as conn:
            row = conn.execute(self._key_infos().where(api_keys.c.lookup == _lookup_id(key_or_lookup))).first()
        return self._key_info(row) if row is not None else None

    def update_key(self, key_or_lookup: str, changes: Mapping[str, Any], *, conn: sa.Connection | None = None) -> KeyInfo | None:
        """Apply `changes` (engine.accounts.keys.key_changes) to a key that is not revoked: models,
        expires_at and label to the key; role, budgets and limits to its user (and so to every key
        of that user). None when there is no such active key."""
        lookup = _lookup_id(key_or_lookup)
        on_key = {k: v for k, v in changes.items() if k in KEY_FIELDS}
        if "models" in on_key:
            on_key["models"] = _models_column(on_key["models"])
        on_user = {k: v for k, v in changes.items() if k in USER_FIELDS}
        with self.writing(conn) as conn:
            row = conn.execute(sa.select(api_keys.c.id, api_keys.c.user_id).where(
                api_keys.c.lookup == lookup, api_keys.c.revoked_at.is_(None))).first()
            if row is None:
                return None
            if on_key:
                conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(**on_key))
            if on_user:
                conn.execute(users.update().where(users.c.id == row.user_id).values(**on_user))
            return self.key_info(lookup, conn=conn)

    def revoke_key(self, key_or_lookup: str, *, conn: sa.Connection | None = None) -> bool:
        """Revoke by the key itself, its shown prefix (sk-gaud-xxxxxxxxxxxx) or its lookup id."""
        with self.writing(conn) as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.lookup == _lookup_id(key_or_lookup), api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return result.rowcount > 0

    def verify_key(self, key: str, *, now: float | None = None) -> Principal | None:
        """The principal of a valid key that is neither revoked nor expired; None otherwise.

        No cache: every call reads the key's row (one indexed SELECT by its lookup id, joined with
        its user), so a revocation, expiry, role or budget change made by any process applies to
        the next request. The HMAC is compared in constant time. A legacy argon2 hash is checked
        with argon2 once and then rewritten as an HMAC."""
        if not key_shaped(key):  # not a key this gateway makes: no database read
            return None
        row = self._key_row(key[len(KEY_PREFIX):len(KEY_PREFIX) + _LOOKUP_CHARS])
        if row is None:
            return None
        stored: str = row.hash
        if stored.startswith(HMAC_SCHEME + "$"):
            _, fingerprint, digest = stored.split("$", 2)
            expected = self.key_secrets.digest(key, fingerprint)
            valid = expected is not None and hmac.compare_digest(expected, digest)
            stale = fingerprint != self.key_secrets.current
        else:
            valid, stale = self._verify_legacy(stored, key), True
        now = time.time() if now is None else now
        if not valid or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        if stale:
            self._rehash(row.key_id, stored, key)
        return Principal(
            user_id=row.user_id, user_name=row.name, role=row.role, key_id=row.key_id, budget_daily=row.budget_daily,
            budget_monthly=row.budget_monthly, rpm_limit=row.rpm_limit, tpm_limit=row.tpm_limit,
            models=_models_of(row.models), max_in_flight=row.max_in_flight, team_id=row.team_id,
            team_name=row.team_name, team_budget_daily=row.team_budget_daily,
            team_budget_monthly=row.team_budget_monthly, team_rpm_limit=row.team_rpm_limit,
            team_tpm_limit=row.team_tpm_limit, team_models=_models_of(row.team_models),
        )

    def _key_row(self, lookup: str) -> Any:
        """The key's row joined with its user and the user's team, as a _KeyRow, or None. The statement is compiled
        once and run on a pooled driver connection: building and compiling a SELECT each time cost
        ~150 us, this ~25 us on SQLite (bench/RESULTS.md, "Key verification")."""
        if self._key_query is None:
            query = sa.select(*_KEY_ROW_COLUMNS).join(users, users.c.id == api_keys.c.user_id).outerjoin(
                teams, teams.c.id == users.c.team_id).where(api_keys.c.lookup == sa.bindparam("lookup"))
            compiled = query.compile(dialect=self.engine.dialect)
            self._key_query = (str(compiled), compiled.positiontup is not None)
        sql, positional = self._key_query
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute(sql, (lookup,) if positional else {"lookup": lookup})
            row = cursor.fetchone()
            cursor.close()
        finally:
            conn.close()  # back to the pool
        return _KeyRow(*row) if row is not None else None

    def _verify_legacy(self, stored: str, key: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        with self._argon2_slots:
            try:
                return bool(self.hasher.verify(stored, key))
            except (VerificationError, InvalidHashError):
                return False

    def _rehash(self, key_id: int, old: str, key: str) -> None:
        """Store the key's HMAC under the current secret, unless another process already did."""
        with self.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id, api_keys.c.hash == old)
                         .values(hash=self.key_secrets.stored(key)))

    # -- audit and spend --------------------------------------------------------------------------
    def write_audit(self, records: Iterable[dict[str, Any]]) -> int:
        rows = [_audit_row(r) for r in records]
        if rows:
            with self.engine.begin() as conn:
                start = 0
                while start < len(rows):
                    # Full chunks, then the rest in powers of two: at most 7 statement sizes are ever
                    # compiled here and prepared by the driver. One per batch size (1..50) kept ~5 MB
                    # of compiled SQL, bind maps and prepared statements once load had varied.
                    left = len(rows) - start
                    n = AUDIT_ROWS_PER_INSERT if left >= AUDIT_ROWS_PER_INSERT else 1 << (left.bit_length() - 1)
                    sql, params = self._audit_insert_for(conn.dialect, n)
                    conn.exec_driver_sql(sql, params(rows[start : start + n]))
                    start += n
        return len(rows)

    def _audit_insert_for(self, dialect: sa.Dialect, n: int) -> tuple[str, Callable[[list[tuple[Any, ...]]], Any]]:
        """One multi-row INSERT for `n` rows (tuples in AUDIT_FIELDS order), compiled once per size.

        One statement per chunk rather than executemany: the sqlite3 driver releases and retakes
        the GIL around every row it steps, and under load each hand-over stalls the event loop
        (measured: the audit thread held a third of the worker's samples). SQLAlchemy's own
        per-execution compile costs more than the insert at gateway rates, hence the cache.
        """
        cached = self._audit_inserts.get(n)
        if cached is None:
            compiled = audit_log.insert().values([dict.fromkeys(AUDIT_FIELDS, 0)] * n).compile(dialect=dialect)
            # Multi-row bind parameters are named <column>_m<row>.
            names = compiled.positiontup if compiled.positiontup is not None else list(compiled.params)
            column = {name: i for i, name in enumerate(AUDIT_FIELDS)}
            slots = [(int(row), column[name]) for name, row in (name.rsplit("_m", 1) for name in names)]
            params: Callable[[list[tuple[Any, ...]]], Any]
            if compiled.positiontup is None:
                def params(chunk: list[tuple[Any, ...]]) -> Any:
                    return {name: chunk[row][i] for name, (row, i) in zip(names, slots)}
            elif slots == [(row, i) for row in range(n) for i in range(len(AUDIT_FIELDS))]:
                def params(chunk: list[tuple[Any, ...]]) -> Any:
                    return tuple(itertools.chain.from_iterable(chunk))  # row-major: the rows laid end to end
            else:
                def params(chunk: list[tuple[Any, ...]]) -> Any:
                    return tuple(chunk[row][i] for row, i in slots)
            cached = self._audit_inserts[n] = (str(compiled), params)
        return cached

    def spent_since(self, user_id: int, since: float) -> float:
        query = sa.select(sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0)).where(
            audit_log.c.user_id == user_id, audit_log.c.ts >= since
        )
        with self.engine.connect() as conn:
            return float(conn.execute(query).scalar_one())

    def team_spent_since(self, team_id: int, since: float) -> float:
        """What the team's requests cost since `since`: audit rows carry the team at request time."""
        query = sa.select(sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0)).where(
            audit_log.c.team_id == team_id, audit_log.c.ts >= since
        )
        with self.engine.connect() as conn:
            return float(conn.execute(query).scalar_one())

    def audit_records(self, *, user: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        query = sa.select(audit_log).order_by(audit_log.c.id)
        if user is not None:
            query = query.where(audit_log.c.user_name == user)
        if since is not None:
            query = query.where(audit_log.c.ts >= since)
        with self.engine.connect() as conn:
            # str(): SQLAlchemy's column labels are str subclasses, which orjson refuses as keys.
            return [{str(k): v for k, v in row._mapping.items()} for row in conn.execute(query)]

    def usage(
        self, *, user: str | None = None, since: float | None = None, team_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Totals per user and deployment: requests, tokens, cost (`team_id`: of that team's requests)."""
        query = sa.select(
            audit_log.c.user_name,
            audit_log.c.deployment,
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(audit_log.c.prompt_tokens), 0).label("prompt_tokens"),
            sa.func.coalesce(sa.func.sum(audit_log.c.completion_tokens), 0).label("completion_tokens"),
            sa.func.coalesce(sa.func.sum(audit_log.c.cached_tokens), 0).label("cached_tokens"),
            sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0).label("cost"),
        ).group_by(audit_log.c.user_name, audit_log.c.deployment).order_by(audit_log.c.user_name, audit_log.c.deployment)
        if user is not None:
            query = query.where(audit_log.c.user_name == user)
        if since is not None:
            query = query.where(audit_log.c.ts >= since)
        if team_id is not None:
            query = query.where(audit_log.c.team_id == team_id)
        with self.engine.connect() as conn:
            # str(): SQLAlchemy's column labels are str subclasses, which orjson refuses as keys.
            return [{str(k): v for k, v in row._mapping.items()} for row in conn.execute(query)]

    # -- upstream credentials (sealed by engine.credentials before they get here) -----------------
    def save_credentials(self, provider: str, blob: str, expires_at: float | None) -> None:
        """Insert or replace a provider's sealed credentials record."""
        values = {"blob": blob, "expires_at": expires_at, "updated_at": time.time()}
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    query = credentials.update().where(credentials.c.provider == provider).values(**values)
                    if conn.execute(query).rowcount == 0:
                        conn.execute(credentials.insert().values(provider=provider, **values))
                return
            except sa.exc.IntegrityError:  # another process inserted it between the two statements
                if attempt == 2:
                    raise

    def load_credentials(self, provider: str) -> dict[str, Any] | None:
        """{provider, blob, expires_at, updated_at}, or None when nobody is signed in."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(credentials).where(credentials.c.provider == provider)).first()
        return dict(row._mapping) if row is not None else None

    def delete_credentials(self, provider: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(credentials.delete().where(credentials.c.provider == provider)).rowcount > 0

    def list_credentials(self) -> list[dict[str, Any]]:
        """Who is signed in: {provider, expires_at, updated_at} per provider (no blobs)."""
        query = sa.select(credentials.c.provider, credentials.c.expires_at, credentials.c.updated_at).order_by(
            credentials.c.provider
        )
        with self.engine.connect() as conn:
            # str(): SQLAlchemy's column labels are str subclasses, which orjson refuses as keys.
            return [{str(k): v for k, v in row._mapping.items()} for row in conn.execute(query)]

    # -- dashboard sessions (engine.web.dashboard.Sessions hashes the ids before they get here) -------
    def save_dashboard_session(
        self, digest: str, principal: Principal, csrf: str, *, now: float, expires: float, limit: int
    ) -> None:
        """Store a session. Expired ones are deleted first and, when `limit` are live, the oldest.

        The limit holds per call: processes creating sessions at the same moment may each pass it by one.
        """
        table = dashboard_sessions
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.expires <= now))
            live = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
            if live >= limit:
                oldest = sa.select(table.c.digest).order_by(table.c.created_at, table.c.digest).limit(live - limit + 1)
                conn.execute(table.delete().where(table.c.digest.in_(oldest)))
            conn.execute(table.insert().values(
                digest=digest, key_id=principal.key_id, user_id=principal.user_id, user_name=principal.user_name,
                role=principal.role, csrf=csrf, created_at=now, expires=expires,
            ))

    def dashboard_session(self, digest: str, *, now: float) -> tuple[Principal, str, float] | None:
        """(principal, csrf token, expiry) of a live session; an expired one is deleted."""
        table = dashboard_sessions
        query = sa.select(table.c.key_id, table.c.user_id, table.c.user_name, table.c.role, table.c.csrf,
                          table.c.expires).where(table.c.digest == digest)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        if row.expires <= now:
            self.drop_dashboard_session(digest)
            return None
        principal = Principal(user_id=row.user_id, user_name=row.user_name, role=row.role, key_id=row.key_id)
        return principal, row.csrf, row.expires

    def drop_dashboard_session(self, digest: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(dashboard_sessions.delete().where(dashboard_sessions.c.digest == digest)).rowcount > 0

    def count_dashboard_sessions(self, *, now: float) -> int:
        """Sessions not yet expired."""
        query = sa.select(sa.func.count()).select_from(dashboard_sessions).where(dashboard_sessions.c.expires > now)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
