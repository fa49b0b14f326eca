"""The deployment's server secret: what seals upstream tokens (engine.credentials.vault) and keys the
HMAC of gateway API keys (engine.accounts.store). Every instance of one deployment shares it.

First found wins:

1. an explicit value (a setting such as `auth.key_secret`);
2. `GAUD_SECRET_KEY`: a Fernet key or any random string of 16+ characters. Several,
   comma-separated, rotate: the first is current, the others are still accepted;
3. `GAUD_SECRET_KEY_FILE`: a file holding one (created, mode 0600, when missing);
4. for a SQLite file, `gaud-secret.key` next to it, created with mode 0600 on first use;
5. for in-memory SQLite, a random secret that lives as long as the process.

PostgreSQL needs 1, 2 or 3. A secret file readable by other users is refused.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

__all__ = ["KEY_FILE_NAME", "SecretUnavailable", "find_secrets", "key_file_for", "read_or_create", "sqlite_folder"]

log = logging.getLogger("gaud.secret")

KEY_FILE_NAME = "gaud-secret.key"


class SecretUnavailable(Exception):
    """No usable server secret (none set, or its file is unsafe); the message is safe to show."""


def sqlite_folder(url: str) -> Path | None:
    """The folder of a SQLite database file; None for other databases and in-memory SQLite."""
    # Here, not at the top: the vault imports this module with every spec load, and SQLAlchemy
    # takes ~150 ms to import; only sign-in, keys and serving need the file.
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve().parent


def key_file_for(database_url: str) -> Path | None:
    """`gaud-secret.key` beside a SQLite database file; None for other databases and in-memory SQLite."""
    folder = sqlite_folder(database_url)
    return folder / KEY_FILE_NAME if folder is not None else None


def read_or_create(path: Path) -> str:
    """The secret in `path`, which is created atomically with mode 0600 when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.urlsafe_b64encode(os.urandom(32)) + b"\n")  # a Fernet key's format
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # atomic, and never replaces a secret another process just made
            log.info("created the secret key file %s (mode 0600); back it up apart from the database", path)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    if os.name == "posix":
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SecretUnavailable(f"{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")
    return path.read_text().strip()


def find_secrets(
    database_url: str, environ: Mapping[str, str], explicit: str | None, ephemeral: list[str], *, purpose: str
) -> list[str]:
    """The secrets in the order above, current first. `ephemeral` holds the in-memory database's
    secret between calls; `purpose` ends the message when there is none."""
    if explicit:
        return [k.strip() for k in explicit.split(",") if k.strip()]
    if environ.get("GAUD_SECRET_KEY"):
        return [k.strip() for k in environ["GAUD_SECRET_KEY"].split(",") if k.strip()]
    if environ.get("GAUD_SECRET_KEY_FILE"):
        return [read_or_create(Path(environ["GAUD_SECRET_KEY_FILE"]).expanduser())]
    path = key_file_for(database_url)
    if path is not None:
        return [read_or_create(path)]
    if database_url.startswith("sqlite"):  # in-memory: what it protects dies with the process anyway
        if not ephemeral:
            ephemeral.append(base64.urlsafe_b64encode(os.urandom(32)).decode())
        return ephemeral
    raise SecretUnavailable(f"set GAUD_SECRET_KEY (or GAUD_SECRET_KEY_FILE) to {purpose}")
