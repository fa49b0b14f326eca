"""`gaud-engine serve --workers N`: the gateway in N processes sharing one listening socket.

The parent prepares what must happen once (migrations, the first admin key), then uvicorn's
supervisor starts N workers; each builds its app from the environment (`worker_app`), so the
settings and specs a worker sees are the ones the parent was started with. The kernel spreads
connections over the workers. State that lives in the database (keys, audit log, spend, sign-ins,
dashboard sessions) is shared; rate limits, budgets in flight, the response cache and breaker
states are shared only through `redis.url`, as between instances.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..config import Settings, load_settings

__all__ = ["prepare_store", "serve_workers", "worker_app"]

log = logging.getLogger("gaud.server")

#: Where the parent leaves its config file path for the workers (also the CLI's own variable).
CONFIG_ENV = "GAUD_CONFIG"


def prepare_store(settings: Settings) -> None:
    """What must run once before workers start: migrations, audit records spilled at the last
    shutdown or held by a killed process and, with auth on, the first admin."""
    from ..accounts.audit import audit_spill_dir, import_spilled
    from ..accounts.journal import reconcile_journals
    from ..accounts.store import Store
    from .server import _first_admin

    store = Store(str(settings.get("database.url")), key_secret=settings.get("auth.key_secret"))
    try:
        store.migrate()
        import_spilled(store, audit_spill_dir(settings))
        reconcile_journals(store, audit_spill_dir(settings))
        if settings.get("auth.enabled"):
            _first_admin(store)
    finally:
        store.close()


def worker_app() -> Any:
    """The app of one worker process (a uvicorn factory): settings from the environment."""
    from ..logs import logging_from_settings
    from ..spec import rules
    from ..spec.loader import load_catalog, serving_root
    from .process import limit_malloc_arenas
    from .server import create_app

    limit_malloc_arenas()
    settings = load_settings(os.environ.get(CONFIG_ENV) or None)
    rules.CHECK_PORTABILITY = False
    logging_from_settings(settings)
    root = serving_root(settings)
    catalog = load_catalog(root)
    catalog.raise_for_problems()  # the parent checked the same files; they changed in between
    return create_app(catalog, settings)


def serve_workers(settings: Settings, config_file: str | None, workers: int, **uvicorn_options: Any) -> None:
    """Run `workers` processes on one socket until a signal stops them."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    prepare_store(settings)
    if not settings.get("redis.url"):
        log.warning(
            "%d workers without redis.url: rate limits, budgets in flight, the cache and circuit "
            "breakers are kept per worker", workers,
        )
    # Workers are spawned, not forked: they read the settings the parent was given from the
    # environment (CLI options included).
    if config_file:
        os.environ[CONFIG_ENV] = str(config_file)
    for name in ("server.host", "server.port", "specs.dir"):
        value = settings.get(name)
        if value is not None:
            os.environ["GAUD_" + name.upper().replace(".", "_")] = str(value)
    config = uvicorn.Config("engine.web.workers:worker_app", factory=True, workers=workers, **uvicorn_options)
    Multiprocess(config, sockets=[config.bind_socket()]).run()
