"""Tokens at rest: sealed with Fernet before they reach the database, or kept in the OS keyring.

The key, first found wins:

1. `GAUD_SECRET_KEY`: a Fernet key (`python -c "from cryptography.fernet import Fernet;
   print(Fernet.generate_key().decode())"`) or any random string of 16+ characters (hashed into
   one). Several, comma-separated, rotate keys: the first seals, any of them opens.
2. `GAUD_SECRET_KEY_FILE`: a file holding such a key (created, mode 0600, when missing).
3. For SQLite, `gaud-secret.key` next to the database file, created with mode 0600 on first use.
   PostgreSQL needs 1 or 2.

A key file readable by other users is refused. `GAUD_CREDENTIALS_BACKEND=keyring` keeps the
tokens in the OS keyring (the optional `keyring` package) instead, and only a marker and the
expiry time in the database.

A sealed record names its provider inside the ciphertext, so a blob copied onto another
provider's row does not open. Nothing here logs a token or puts one in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = ["FernetVault", "KeyringVault", "Vault", "VaultError", "key_file_for", "open_vault"]

log = logging.getLogger("gaud.credentials")

KEY_FILE_NAME = "gaud-secret.key"
KEYRING_SERVICE = "gaud-engine"
KEYRING_MARKER = "keyring:v1"


class VaultError(Exception):
    """The credentials cannot be sealed or opened (a missing or wrong key); the message is safe to show."""


class Vault(Protocol):
    def seal(self, provider: str, record: dict[str, Any]) -> str: ...

    def open(self, provider: str, blob: str) -> dict[str, Any]: ...

    def forget(self, provider: str) -> None: ...


def _fernet_key(value: str) -> bytes:
    raw = value.strip().encode()
    if len(raw) == 44:
        try:
            if len(base64.urlsafe_b64decode(raw)) == 32:
                return raw
        except (binascii.Error, ValueError):
            pass
    if len(raw) < 16:
        raise VaultError("GAUD_SECRET_KEY is too short: use a Fernet key or 16+ random characters")
    return base64.urlsafe_b64encode(hashlib.sha256(b"gaud-engine credentials v1\0" + raw).digest())


def key_file_for(database_url: str) -> Path | None:
    """`gaud-secret.key` beside a SQLite database file; None for other databases and in-memory SQLite."""
    # Here, not at the top: every spec load imports this package, and the store loads SQLAlchemy
    # (~150 ms); only sign-in and serving need the key file.
    from ..accounts.store import sqlite_folder

    folder = sqlite_folder(database_url)
    return folder / KEY_FILE_NAME if folder is not None else None


def _read_or_create(path: Path) -> str:
    """The key in `path`, which is created atomically with mode 0600 when missing."""
    if not path.exists():
        from cryptography.fernet import Fernet  # imported only when sealing: ~10 ms at start-up otherwise

        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # atomic, and never replaces a key another process just made
            log.info("created the credentials key file %s (mode 0600); back it up apart from the database", path)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    if os.name == "posix":
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise VaultError(f"{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")
    return path.read_text().strip()


class FernetVault:
    """Seals records with Fernet (AES-128-CBC + HMAC-SHA256); the key is looked up on first use."""

    def __init__(self, keys: Callable[[], list[str]]) -> None:
        self._keys = keys
        self._fernet: Any = None

    def _cipher(self) -> Any:
        if self._fernet is None:
            from cryptography.fernet import Fernet, MultiFernet

            keys = self._keys()
            if not keys:
                raise VaultError("no key to seal credentials with: set GAUD_SECRET_KEY")
            self._fernet = MultiFernet([Fernet(_fernet_key(k)) for k in keys])
        return self._fernet

    def seal(self, provider: str, record: dict[str, Any]) -> str:
        payload = json.dumps({"provider": provider, "record": record}, separators=(",", ":")).encode()
        return str(self._cipher().encrypt(payload).decode("ascii"))

    def open(self, provider: str, blob: str) -> dict[str, Any]:
        from cryptography.fernet import InvalidToken

        try:
            data = json.loads(self._cipher().decrypt(blob.encode("ascii")))
        except (InvalidToken, ValueError, UnicodeError):
            data = None
        if not isinstance(data, dict) or data.get("provider") != provider or not isinstance(data.get("record"), dict):
            raise VaultError(
                f"the stored credentials for {provider} do not open with this secret key "
                f"(GAUD_SECRET_KEY or the key file changed?); run `gaud-engine login {provider}` again"
            )
        record: dict[str, Any] = data["record"]
        return record

    def forget(self, provider: str) -> None:
        return None


class KeyringVault:
    """Keeps each provider's record in the OS keyring; the database row only says so."""

    def __init__(self, service: str = KEYRING_SERVICE, backend: Any = None) -> None:
        self.service = service
        self._backend = backend

    def _keyring(self) -> Any:
        if self._backend is None:
            try:
                import keyring  # type: ignore[import-not-found]
            except ImportError:
                raise VaultError("GAUD_CREDENTIALS_BACKEND=keyring needs the `keyring` package: pip install keyring") from None
            self._backend = keyring
        return self._backend

    def seal(self, provider: str, record: dict[str, Any]) -> str:
        self._keyring().set_password(self.service, provider, json.dumps(record, separators=(",", ":")))
        return KEYRING_MARKER

    def open(self, provider: str, blob: str) -> dict[str, Any]:
        stored = self._keyring().get_password(self.service, provider) if blob == KEYRING_MARKER else None
        try:
            record = json.loads(stored) if stored else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise VaultError(f"the OS keyring has no credentials for {provider}; run `gaud-engine login {provider}`")
        return record

    def forget(self, provider: str) -> None:
        try:
            self._keyring().delete_password(self.service, provider)
        except Exception as exc:  # noqa: BLE001 - keyring backends raise their own types for "not found"
            log.debug("nothing removed from the OS keyring for %s (%s)", provider, type(exc).__name__)


def open_vault(database_url: str, environ: Mapping[str, str] | None = None, secret_key: str | None = None) -> Vault:
    """The vault the settings ask for (see the module docstring); keys are read lazily."""
    env = os.environ if environ is None else environ
    backend = (env.get("GAUD_CREDENTIALS_BACKEND") or "store").strip().lower()
    if backend == "keyring":
        return KeyringVault()
    if backend not in ("store", "database"):
        raise VaultError(f"GAUD_CREDENTIALS_BACKEND must be `store` or `keyring`, not {backend!r}")
    ephemeral: list[str] = []

    def keys() -> list[str]:
        if secret_key:
            return [k for k in secret_key.split(",") if k.strip()]
        if env.get("GAUD_SECRET_KEY"):
            return [k for k in env["GAUD_SECRET_KEY"].split(",") if k.strip()]
        if env.get("GAUD_SECRET_KEY_FILE"):
            return [_read_or_create(Path(env["GAUD_SECRET_KEY_FILE"]).expanduser())]
        path = key_file_for(database_url)
        if path is not None:
            return [_read_or_create(path)]
        if database_url.startswith("sqlite"):  # in-memory: the tokens die with the process anyway
            if not ephemeral:
                ephemeral.append(base64.urlsafe_b64encode(os.urandom(32)).decode())
            return ephemeral
        raise VaultError("set GAUD_SECRET_KEY (or GAUD_SECRET_KEY_FILE) to keep provider tokens in this database")

    return FernetVault(keys)
