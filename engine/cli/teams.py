"""`gaud-engine teams ...` and the team part of `usage`: the team operations of
engine.accounts.admin (as `/admin/teams` runs them, recorded in the admin trail)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..errors import GatewayError
from .options import CONFIG_OPTION, amount, run_admin, spend

if TYPE_CHECKING:
    from ..accounts.store import Store

__all__ = ["print_team_totals", "team_id_of", "teams"]

_LIMITS_HELP = "Applies with each member's own limit: the tighter one decides."


def _limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--budget-daily, --budget-monthly, --rpm, --tpm, --models (each `none` clears it in update)."""
    for option in reversed((
        click.option("--budget-daily", default=None, help=f"Daily budget in USD for the whole team. {_LIMITS_HELP}"),
        click.option("--budget-monthly", default=None, help=f"Monthly budget in USD for the whole team. {_LIMITS_HELP}"),
        click.option("--rpm", default=None, help=f"Requests per minute, shared by the members. {_LIMITS_HELP}"),
        click.option("--tpm", default=None, help=f"Tokens per minute, shared by the members. {_LIMITS_HELP}"),
        click.option("--models", default=None, help="Models the members' keys may call (comma-separated globs); a "
                                                     "key's own list applies too."),
    )):
        command = option(command)
    return command


def _fields(budget_daily: str | None, budget_monthly: str | None, rpm: str | None, tpm: str | None,
            models: str | None) -> dict[str, Any]:
    given = {"budget_daily": budget_daily, "budget_monthly": budget_monthly, "rpm_limit": rpm, "tpm_limit": tpm,
             "models": models}
    return {name: value for name, value in given.items() if value is not None}


def _run(operation: Callable[[], Any]) -> Any:
    """The operation's result; its refusal (400, 404) as the command's error message."""
    try:
        return operation()
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None




def _line(team: dict[str, Any]) -> str:
    models = ",".join(team["models"]) if team["models"] else "all"
    return (f"{team['name']} (daily: {amount(team['budget_daily'])}, monthly: {amount(team['budget_monthly'])}, "
            f"rpm: {amount(team['rpm_limit'])}, tpm: {amount(team['tpm_limit'])}, models: {models})")


@click.group()
def teams() -> None:
    """Create, list, update and delete teams: budgets, rate limits and a model list their members share."""


@teams.command("create")
@click.argument("name")
@_limit_options
@CONFIG_OPTION
def teams_create(name: str, budget_daily: str | None, budget_monthly: str | None, rpm: str | None, tpm: str | None,
                 models: str | None, config_file: str | None) -> None:
    """Create team NAME. Put users in it with `keys create --team` or `keys update --team`.

    \b
    Example usage:
        gaud-engine teams create research --budget-daily 50 --budget-monthly 800 --rpm 600 --models smart,fast-*
    """
    team = run_admin(config_file, "teams", "create",
                     fields={"name": name, **_fields(budget_daily, budget_monthly, rpm, tpm, models)})
    click.echo(f"created team {_line(team)}")


@teams.command("list")
@CONFIG_OPTION
def teams_list(config_file: str | None) -> None:
    """List teams: members, spend today and this month (UTC) against the budgets, rate limits, models.

    \b
    Example usage:
        gaud-engine teams list
    """
    rows = run_admin(config_file, "teams", "list")["data"]
    if not rows:
        click.echo("no teams")
        return
    click.echo(f"{'team':<20} {'members':>7} {'today':>16} {'month':>16} {'rpm':>6} {'tpm':>8}  models")
    for t in rows:
        click.echo(f"{t['name']:<20} {t['members']:>7} {spend(t['spent_today'], t['budget_daily']):>16} "
                   f"{spend(t['spent_month'], t['budget_monthly']):>16} {amount(t['rpm_limit']):>6} "
                   f"{amount(t['tpm_limit']):>8}  {','.join(t['models']) if t['models'] else 'all'}")


@teams.command("update")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="A new name (members and past spend stay with the team).")
@_limit_options
@CONFIG_OPTION
def teams_update(name: str, new_name: str | None, budget_daily: str | None, budget_monthly: str | None,
                 rpm: str | None, tpm: str | None, models: str | None, config_file: str | None) -> None:
    """Change team NAME's limits (`none` clears one; --models '' allows every model). Only the
    options given change; running gateways apply them to the next request.

    \b
    Example usage:
        gaud-engine teams update research --budget-daily 80 --tpm none
    """
    changes = _fields(budget_daily, budget_monthly, rpm, tpm, models)
    if new_name is not None:
        changes["name"] = new_name
    if not changes:
        raise click.UsageError("give at least one option to change")
    click.echo(f"updated team {_line(run_admin(config_file, 'teams', 'update', name, changes))}")


@teams.command("delete")
@click.argument("name")
@CONFIG_OPTION
def teams_delete(name: str, config_file: str | None) -> None:
    """Delete team NAME. Refused while it has members: move them first (`keys update PREFIX --team
    none`). Its past requests keep counting as its own in `usage`.

    \b
    Example usage:
        gaud-engine teams delete research
    """
    run_admin(config_file, "teams", "delete", name)
    click.echo(f"deleted team {name}")


def team_id_of(store: Store, name: str) -> int:
    """The id of team `name` (`usage --team`), or the command's error."""
    from ..accounts.teams import get_team

    return int(_run(lambda: get_team(store, name)).id)


def print_team_totals(store: Store, *, since: float | None, user: str | None, team_id: int | None) -> None:
    """The per-team section of `usage`: the requests made by members while in each team."""
    from ..accounts.teams import team_totals

    rows = team_totals(store.engine, since=since, user=user, team_id=team_id)
    if not rows:
        return
    click.echo(f"\n{'team':<20} {'requests':>8} {'prompt':>10} {'completion':>10} {'cost USD':>11}")
    for r in rows:
        click.echo(f"{r.team:<20} {r.requests:>8} {r.prompt_tokens:>10} {r.completion_tokens:>10} {r.cost:>11.6f}")
