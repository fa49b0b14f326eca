"""What several command modules share: the `--config` option and opening the store it names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..config import load_settings

if TYPE_CHECKING:
    from ..accounts.store import Store

__all__ = ["CONFIG_OPTION", "open_store"]

CONFIG_OPTION = click.option(
    "-c", "--config", "config_file", type=click.Path(exists=True, dir_okay=False), envvar="GAUD_CONFIG",
    help="YAML config file (GAUD_DATABASE_URL overrides its database).",
)


def open_store(config_file: str | None) -> Store:
    """The configured database, migrated."""
    from ..accounts.store import Store

    try:
        settings = load_settings(config_file)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    store = Store(str(settings.get("database.url")), key_secret=settings.get("auth.key_secret"))
    store.migrate()
    return store
