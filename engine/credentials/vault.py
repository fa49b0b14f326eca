"""Tokens at rest: sealed with Fernet before they reach the database, or kept in the OS keyring.

The key, first found wins:

1. `GAUD_SECRET_KEY`: a Fernet key (`python -c "from cryptography.fernet import Fernet;
   print(Fernet.generate_key().decode())"`) or any random string of 16+ characters (hashed into
   one). Several, comma-separated, rotate keys: the first seals, any of them opens.
2. `GAUD_SECRET_KEY_FILE`: a file holding such a key (created, mode 0600, when missing).
3. For SQLite, `gaud-secret.key` next to the database file, created with mode 0600 on first use.
   PostgreSQL needs 1 or 2.

(engine.accounts.server_secret finds it; the gateway's API keys are keyed by the same secret
unless `auth.key_secret` is set.)

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
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..accounts.server_secret import SecretUnavailable, find_secrets, key_file_for

__all__ = ["FernetVault", "KeyringVault", "Vault", "VaultError", "key_file_for", "open_vault"]

log = logging.getLogger("gaud.credentials")

KEYRING_SERVICE = "gaud-engine"
KEYRING_MARKER = "keyring:v1"


class VaultError(SecretUnavailable):
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
        try:
            return find_secrets(database_url, env, secret_key, ephemeral, purpose="keep provider tokens in this database")
        except SecretUnavailable as exc:
            raise VaultError(str(exc)) from None

    return FernetVault(keys)
