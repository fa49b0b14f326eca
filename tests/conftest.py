from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.accounts.store import Store
from engine.spec.loader import Catalog, load_catalog
from engine.spec.models import Target, resolve_model

from .fakes import FakeUpstream
from .gated import GatedUpstream

ROOT = Path(__file__).resolve().parent.parent
MAX_BODY_BYTES = 2 * 1024 * 1024

# Credentials the tests use; a test greps logs for them.
TEST_SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-test-secret-0001",
    "GEMINI_API_KEY": "gemini-test-secret-0002",
    "OPENAI_API_KEY": "sk-openai-test-secret-0003",
    "COPILOT_API_TOKEN": "copilot-test-secret-0004",
}


def provider_env(base_url: str) -> dict[str, str]:
    """Environment that points every shipped provider at one fake upstream."""
    return {
        **TEST_SECRETS,
        "ANTHROPIC_BASE_URL": base_url,
        "GEMINI_BASE_URL": base_url,
        "OPENAI_BASE_URL": f"{base_url}/v1",
        "COPILOT_BASE_URL": base_url,
    }


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GAUD_") and not name.startswith("GAUD_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def upstream(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream_server.clear()
    yield fake_upstream_server
    fake_upstream_server.clear()


@pytest.fixture(scope="session")
def catalog(fake_upstream_server: FakeUpstream) -> Catalog:
    loaded = load_catalog(ROOT, environ=provider_env(fake_upstream_server.url))
    loaded.raise_for_problems()
    return loaded


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    """Poll /health until it answers (no sleeps standing in for readiness)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
    raise RuntimeError(f"gateway at {url} did not become healthy in {timeout} s")


class RunningGateway:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def ready(self) -> RunningGateway:
        """This gateway once /health answers; killed, with its log in the error, if it never does."""
        try:
            wait_healthy(self.url, self.process)
        except RuntimeError:
            self.process.kill()
            raise RuntimeError(f"gateway failed to start:\n{self.logs()}") from None
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs_with(self, text: str, timeout: float = 5.0) -> str:
        """The log once it holds `text`: request lines are written in batches (log.flush_interval)."""
        deadline = time.monotonic() + timeout
        while text not in (logs := self.logs()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s:\n{logs[-2000:]}")
            time.sleep(0.02)  # polling a file the gateway appends to, not waiting for readiness
        return logs


def checked_catalog(environ: dict[str, str]) -> Catalog:
    """The shipped spec tree loaded with `environ` as the process environment; any problem fails."""
    loaded = load_catalog(ROOT, environ=environ)
    loaded.raise_for_problems()
    return loaded


def one_target(cat: Catalog, model: str) -> Target:
    """The single deployment a `provider/model` name resolves to."""
    (found,) = resolve_model(cat, model)
    return found


#: The server secret of tests on PostgreSQL (GAUD_SECRET_KEY for their gateways).
TEST_KEY_SECRET = "test-server-secret-0123456789abcdef"


def migrated_store(kind: str, tmp_path: Path, **store_options: object) -> Iterator[Store]:
    """An empty migrated Store, for `yield from` in a fixture parametrized over
    ["sqlite", "postgresql"]: SQLite in `tmp_path`, or a fresh schema of GAUD_TEST_POSTGRES_URL
    (the test is skipped without it)."""
    if kind == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'gaud.db'}", **store_options)  # type: ignore[arg-type]
        store.migrate()
        yield store
        store.close()
        return
    url = os.environ.get("GAUD_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set GAUD_TEST_POSTGRES_URL=postgresql://user@host/db to test on PostgreSQL")
    for created in pg_store(url, **store_options):
        created.migrate()  # type: ignore[attr-defined]
        yield created  # type: ignore[misc]


def pg_store(url: str, **store_options: object) -> Iterator[object]:
    """A Store in a fresh schema of the PostgreSQL database at `url`, dropped afterwards
    (for `yield from` in a fixture). Tests on one database never see each other's rows."""
    import uuid

    import sqlalchemy as sa

    from engine.accounts.store import Store

    pytest.importorskip("psycopg")
    schema = f"gaud_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    store_options.setdefault("key_secret", TEST_KEY_SECRET)  # PostgreSQL has no key file beside it
    store = Store(f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}", **store_options)  # type: ignore[arg-type]
    try:
        yield store
    finally:
        store.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def spawn_gateway(env: dict[str, str], log_path: Path, *args: str, root: Path = ROOT) -> RunningGateway:
    """`python -m engine serve` from `root` (another tree, e.g. a previous release, when its
    PYTHONPATH is in `env`), not yet healthy: several start at once, then `ready()` each."""
    port = free_port()
    env = {"GAUD_DATABASE_URL": f"sqlite:///{log_path.parent / 'gaud.db'}", **env}
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", str(port), *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("GAUD_")}, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    return RunningGateway(f"http://127.0.0.1:{port}", process, log_path)


def start_gateway(env: dict[str, str], log_path: Path, *args: str) -> RunningGateway:
    return spawn_gateway(env, log_path, *args).ready()


def spec_tree(tmp: Path, **defaults: object) -> Path:
    """A copy of the shipped spec tree with routes.yaml `defaults` overridden."""
    import shutil

    import yaml

    tree = tmp / "specs"
    shutil.copytree(ROOT / "providers.d", tree / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tree / "pricing.d")
    shutil.copytree(ROOT / "models.d", tree / "models.d")
    shutil.copytree(ROOT / "ingress.d", tree / "ingress.d")
    routes = yaml.safe_load((ROOT / "routes.yaml").read_text())
    routes["defaults"] = {**routes.get("defaults", {}), **defaults}
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    return tree


@pytest.fixture(scope="session")
def gateway(fake_upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A real `gaud-engine serve` process whose providers all point at the fake upstream.

    Retries are off here (each test queues exactly the replies it needs); retry behaviour is
    tested in-process with an injectable clock."""
    tmp = tmp_path_factory.mktemp("gateway")
    env = {
        "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false", fallback="false")),
        "GAUD_AUTH_ENABLED": "false",
        "GAUD_LIMITS_CONTROL_CHARS": "refuse",
        **provider_env(fake_upstream_server.url),
        "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'gaud.db'}",
        "GAUD_LIMITS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        # The fake upstream also serves test images: allow fetching from loopback, explicitly.
        "GAUD_IMAGES_ALLOWED_HOSTS": "[127.0.0.1]",
    }
    running = start_gateway(env, tmp / "gateway.log")
    yield running
    running.process.terminate()
    running.process.wait(10)


@pytest.fixture
def client(gateway: RunningGateway):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store in the test's own folder (a module may define its own `store`)."""
    db = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def gated() -> Iterator[GatedUpstream]:
    """An upstream that holds each reply until the test lets it go (tests/gated.py)."""
    fake = GatedUpstream()
    fake.start()
    yield fake
    fake.stop()


def audit_rows(folder: Path) -> list[dict[str, Any]]:
    """The audit rows of the gateway whose SQLite file is `folder`/gaud.db, oldest first (read after
    the gateway stopped: SIGTERM flushes its audit writer)."""
    store = Store(f"sqlite:///{folder / 'gaud.db'}")
    try:
        return sorted(store.audit_records(), key=lambda r: r["ts"])
    finally:
        store.close()
