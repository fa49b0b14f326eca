"""What the credential tests share: a clock they move by hand, and a manager over it and a store
(the `store` fixture in conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from engine.accounts.store import Store
from engine.credentials import CredentialManager, compile_auth
from engine.spec.provider import EnvVar, SpecCompileError

__all__ = ["FakeClock", "assert_compile_error", "manager"]


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def manager(store: Store, clock: FakeClock) -> CredentialManager:
    """A credential manager on `store` and `clock`, its HTTP client never reading proxy settings."""
    return CredentialManager(store, http=lambda: httpx.AsyncClient(timeout=10, trust_env=False), clock=clock,
                             environ={"GAUD_SECRET_KEY": "test-secret-key-0123456789abcdef"})


def assert_compile_error(raw: Mapping[str, Any], env: Mapping[str, EnvVar], pointer: str, message: str) -> None:
    """`api.auth` `raw` (None values left out) is refused at `pointer` with `message` in the text."""
    with pytest.raises(SpecCompileError) as caught:
        compile_auth("p", {k: v for k, v in raw.items() if v is not None}, env)
    assert caught.value.pointer == pointer and message in caught.value.message
