"""What several command modules share: the `--config` option, opening the store it names, running
an account operation, and how amounts are printed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..config import load_settings

if TYPE_CHECKING:
    from ..accounts.store import Store

__all__ = ["CONFIG_OPTION", "amount", "cli_actor", "open_store", "run_admin", "spend"]

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


def run_admin(config_file: str | None, resource: str, verb: str, target: str | None = None,
              fields: dict[str, Any] | None = None, *, missing: str | None = None) -> Any:
    """Operation `verb` of `resource` (engine.accounts.admin, as the admin API runs it) with the
    options given (None: not given); `missing` is the message for NotFound."""
    from ..accounts.admin import perform
    from ..errors import GatewayError, NotFound

    given = {name: value for name, value in (fields or {}).items() if value is not None}
    try:
        return perform(open_store(config_file), resource, verb, actor=cli_actor(), target=target, fields=given)
    except NotFound as exc:
        raise click.ClickException(missing or exc.message) from None
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None


def cli_actor() -> str:
    """`cli:<os user>`: who ran the command, for the admin events."""
    import getpass
    import os

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"cli:uid-{os.getuid()}"


def amount(value: float | None) -> str:
    """A limit as the tables print it: `-` for none."""
    return "-" if value is None else f"{value:g}"


def spend(spent: float, budget: float | None) -> str:
    """`spent/budget` in USD (`-`: no budget), e.g. `0.000414/5`."""
    return f"{spent:.4g}/{amount(budget)}"
