"""Users, API keys (argon2-hashed), the audit log, upstream sign-ins and dashboard sessions, on
SQLite by default or PostgreSQL.

SQLAlchemy Core keeps one schema and one set of queries for both databases. Migrations are
ordered named functions recorded in `schema_migrations` and run on start. Calls are synchronous;
the server runs them in a thread, off the event loop.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["KEY_PREFIX", "KeyInfo", "Principal", "Store"]

KEY_PREFIX = "sk-gaud-"
_LOOKUP_CHARS = 12

metadata = sa.MetaData()

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
)

AUDIT_FIELDS = tuple(c.name for c in audit_log.columns if c.name != "id")
#: Rows per INSERT statement: rows x columns bind parameters stays under every SQLite build's
#: limit (999).
AUDIT_ROWS_PER_INSERT = 999 // len(AUDIT_FIELDS)
#: Concurrent argon2 computations per process (each takes the hasher's memory_cost, 64 MiB).
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
_AUDIT_FLAGS = tuple(AUDIT_FIELDS.index(n) for n in ("stream", "cache_hit", "price_estimated"))


def m001_initial(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[users, api_keys, audit_log])


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


def m006_audit_price_estimated(conn: sa.Connection) -> None:
    """audit_log.price_estimated: the request was billed at its provider's highest price (issue 18)."""
    if "price_estimated" not in {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}:
        conn.execute(sa.text("ALTER TABLE audit_log ADD COLUMN price_estimated BOOLEAN NOT NULL DEFAULT FALSE"))


MIGRATIONS.append(m006_audit_price_estimated)


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

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def has_budget(self) -> bool:
        """Whether requests reserve against a daily or monthly limit."""
        return self.user_id is not None and (self.budget_daily is not None or self.budget_monthly is not None)


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


def _engine_for(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA cache_size=-512")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return sa.create_engine(url, pool_pre_ping=True)


def sqlite_folder(url: str) -> Path | None:
    """The folder of a SQLite database file; None for other databases and in-memory SQLite."""
    parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve().parent


class Store:
    """The gateway's database. Example: `store = Store("sqlite:///gaud.db"); store.migrate()`."""

    def __init__(self, url: str, *, hasher: PasswordHasher | None = None, key_cache_seconds: float = 60.0) -> None:
        self.url = url
        self.engine = _engine_for(url)
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None  # made on the first unknown key: argon2 takes 64 MiB a hash
        self._key_cache: dict[bytes, tuple[float, Principal]] = {}
        self._key_cache_seconds = key_cache_seconds
        self._lock = threading.Lock()
        #: argon2 hashes take 64 MiB each: at most this many at once, however many keys arrive
        #: together (a burst of wrong keys must not become a burst of memory).
        self._argon2_slots = threading.BoundedSemaphore(ARGON2_AT_ONCE)
        self._audit_inserts: dict[int, tuple[str, Callable[[list[tuple[Any, ...]]], Any]]] = {}
        #: Bumped by every revocation: a check begun before one must not cache what it read.
        self._revocations = 0

    # -- schema -----------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied."""
        applied: list[str] = []
        with self.engine.begin() as conn:
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

    # -- users and keys ---------------------------------------------------------------------------
    def count_users(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())

    def ensure_user(
        self,
        name: str,
        *,
        role: str = "member",
        budget_daily: float | None = None,
        budget_monthly: float | None = None,
        rpm_limit: float | None = None,
        tpm_limit: float | None = None,
    ) -> int:
        """The id of user `name`, created if missing; given role/limits update an existing one."""
        limits = {"budget_daily": budget_daily, "budget_monthly": budget_monthly, "rpm_limit": rpm_limit, "tpm_limit": tpm_limit}
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(users.c.id).where(users.c.name == name)).first()
            if row is None:
                result = conn.execute(users.insert().values(name=name, role=role, created_at=time.time(), **limits))
                inserted = result.inserted_primary_key
                assert inserted is not None, "a single-row INSERT always reports its primary key"
                return int(inserted[0])
            changes: dict[str, Any] = {"role": role, **{k: v for k, v in limits.items() if v is not None}}
            conn.execute(users.update().where(users.c.id == row[0]).values(**changes))
            return int(row[0])

    def create_key(self, user_name: str, **user_fields: Any) -> tuple[str, KeyInfo]:
        """A new key for a user (created if needed). The plaintext is returned once, never stored."""
        user_id = self.ensure_user(user_name, **user_fields)
        lookup = secrets.token_hex(_LOOKUP_CHARS // 2)
        key = f"{KEY_PREFIX}{lookup}{secrets.token_urlsafe(24)}"
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(lookup=lookup, hash=self._hash(key), user_id=user_id, created_at=time.time())
            )
        info = next(k for k in self.list_keys() if k.lookup == lookup)
        return key, info

    def list_keys(self) -> list[KeyInfo]:
        query = sa.select(
            api_keys.c.id, api_keys.c.lookup, users.c.name, users.c.role, api_keys.c.created_at, api_keys.c.revoked_at,
            users.c.budget_daily, users.c.budget_monthly,
        ).join(users, users.c.id == api_keys.c.user_id).order_by(api_keys.c.id)
        with self.engine.connect() as conn:
            return [KeyInfo(*row) for row in conn.execute(query)]

    def revoke_key(self, key_or_lookup: str) -> bool:
        """Revoke by the key itself, its shown prefix (sk-gaud-xxxxxxxxxxxx) or its lookup id."""
        lookup = key_or_lookup.removeprefix(KEY_PREFIX)
        lookup = lookup[:_LOOKUP_CHARS]
        with self.engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.lookup == lookup, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        with self._lock:
            self._revocations += 1
            self._key_cache.clear()
        return result.rowcount > 0

    def cached_principal(self, key: str) -> Principal | None:
        """The principal of a key verified in the last minute, without touching the database."""
        digest = hashlib.sha256(key.encode("utf-8", "replace")).digest()
        with self._lock:
            cached = self._key_cache.get(digest)
        return cached[1] if cached is not None and cached[0] > time.monotonic() else None

    def verify_key(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise. One argon2 check per new key,
        then a short in-memory cache keyed by a SHA-256 of the key (never the key itself)."""
        cached = self.cached_principal(key)
        if cached is not None:
            return cached
        with self._lock:
            revocations = self._revocations
        principal = self._verify_uncached(key)
        if principal is not None:
            digest = hashlib.sha256(key.encode("utf-8", "replace")).digest()
            with self._lock:
                if self._revocations == revocations:  # else the row read may predate a revocation
                    self._key_cache[digest] = (time.monotonic() + self._key_cache_seconds, principal)
        return principal

    def _verify_uncached(self, key: str) -> Principal | None:
        lookup = key[len(KEY_PREFIX):len(KEY_PREFIX) + _LOOKUP_CHARS] if key.startswith(KEY_PREFIX) else ""
        row = None
        if len(lookup) == _LOOKUP_CHARS:
            query = sa.select(
                api_keys.c.id, api_keys.c.hash, api_keys.c.revoked_at, users.c.id, users.c.name, users.c.role,
                users.c.budget_daily, users.c.budget_monthly, users.c.rpm_limit, users.c.tpm_limit,
            ).join(users, users.c.id == api_keys.c.user_id).where(api_keys.c.lookup == lookup)
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        # Always run one argon2 verification so an unknown prefix costs the same time.
        with self._argon2_slots:
            if row is not None:
                stored = row[1]
            else:
                if self._dummy_hash is None:
                    self._dummy_hash = self.hasher.hash("gaud-dummy-key")
                stored = self._dummy_hash
            valid: bool
            try:
                valid = self.hasher.verify(stored, key)
            except (VerificationError, InvalidHashError):
                valid = False
        if row is None or not valid or row[2] is not None:
            return None
        return Principal(
            user_id=row[3], user_name=row[4], role=row[5], key_id=row[0], budget_daily=row[6], budget_monthly=row[7],
            rpm_limit=row[8], tpm_limit=row[9],
        )

    def _hash(self, key: str) -> str:
        with self._argon2_slots:
            return self.hasher.hash(key)

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

    def audit_records(self, *, user: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        query = sa.select(audit_log).order_by(audit_log.c.id)
        if user is not None:
            query = query.where(audit_log.c.user_name == user)
        if since is not None:
            query = query.where(audit_log.c.ts >= since)
        with self.engine.connect() as conn:
            # str(): SQLAlchemy's column labels are str subclasses, which orjson refuses as keys.
            return [{str(k): v for k, v in row._mapping.items()} for row in conn.execute(query)]

    def usage(self, *, user: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Totals per user and deployment: requests, tokens, cost."""
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
