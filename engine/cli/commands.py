"""The `gaud-engine` command: thin wrappers over engine functions."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import click

from ..config import load_settings
from ..errors import SpecError
from ..spec.catalog import Catalog
from ..spec.loader import default_root, load_catalog, serving_root
from .options import CONFIG_OPTION, amount, open_store, spend
from .options import run_admin as _admin
from .scaffold import formats as scaffold_formats
from .teams import print_team_totals, team_id_of
from .teams import teams as _teams

__all__ = ["main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="gaud-engine")
def main() -> None:
    """gaud-engine: an OpenAI-compatible LLM gateway driven by YAML provider specs."""


_SPEC_DIRS = ("providers.d", "pricing.d")


def _target(raw: str) -> tuple[Path, set[Path] | None, SpecError | None]:
    """(spec-tree root, the files to report on or None for all, a problem if nothing there gets checked).

    A path is a tree, its providers.d/ or pricing.d/ folder, or one file in either (or routes.yaml);
    the whole tree is loaded anyway, since extends, prices and routes need it.
    """
    path = Path(raw).resolve()
    if path.is_dir() and path.name in _SPEC_DIRS:
        return path.parent, set(path.glob("*.yaml")), None
    if path.is_dir():
        if not any((path / d).is_dir() for d in _SPEC_DIRS) and not (path / "routes.yaml").is_file():
            problem = SpecError(raw, 1, "", "no spec tree here: expected providers.d/, pricing.d/ or routes.yaml")
            return path, set(), problem
        return path, None, None
    if path.parent.name in _SPEC_DIRS and path.suffix == ".yaml":
        return path.parent.parent, {path}, None
    if path.name == "routes.yaml":
        return path.parent, {path}, None
    return path.parent, set(), SpecError(
        raw, 1, "", "not checked: a spec file is providers.d/*.yaml, pricing.d/*.yaml or routes.yaml"
    )


def _from_cwd(problem: SpecError, base: Path) -> SpecError:
    """The problem with its file named from the current directory when it is under it
    (GitHub annotations need the path from the repository root)."""
    try:
        shown = (base / problem.file).relative_to(Path.cwd().resolve())
    except ValueError:
        return problem
    return dataclasses.replace(problem, file=str(shown))


def _escape_property(value: str) -> str:
    """Escape a GitHub workflow-command property value."""
    return (value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
            .replace(":", "%3A").replace(",", "%2C"))


def _format(problem: SpecError, fmt: str) -> str:
    if fmt == "github":
        message = problem.message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return (f"::error file={_escape_property(problem.file)},line={problem.line},"
                f"title={_escape_property(problem.pointer or '/')}::{message}")
    return str(problem)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="Output format: text lines, a JSON array, or GitHub Actions annotations.")
def validate(paths: tuple[str, ...], fmt: str) -> None:
    """Check specs, pricing and routes against the schemas and each other.

    PATH is a spec tree (default: the bundled one), its providers.d/ or pricing.d/ folder, or one
    spec file; the whole tree is loaded, and problems in the given files are reported.
    Exits 0 when clean, 1 with one line per problem: file:line: json-pointer: message.

    \b
    Example usage:
        gaud-engine validate
        gaud-engine validate providers.d/my-provider.yaml
        gaud-engine validate ./my-specs --format github
    """
    problems: list[SpecError] = []
    catalogs: list[Catalog] = []
    targets: dict[Path, set[Path] | None] = {}
    for raw in paths or (str(default_root()),):
        root, wanted, problem = _target(raw)
        if problem is not None:
            problems.append(problem)
            continue
        known = targets.get(root, set())
        targets[root] = None if wanted is None or (root in targets and known is None) else (known or set()) | wanted
    for root, wanted in targets.items():
        catalog = load_catalog(root)
        catalogs.append(catalog)
        base = root.parent if root.name == "_bundled" else root  # what the problems' file labels are relative to
        labels = None if wanted is None else {str(w.relative_to(base)) for w in wanted}
        problems.extend(_from_cwd(p, base) for p in catalog.problems if labels is None or p.file in labels)
    if fmt == "json":
        click.echo(json.dumps([dataclasses.asdict(p) for p in problems], indent=2))
    else:
        for problem in problems:
            click.echo(_format(problem, fmt))
        if fmt == "text" and not problems:
            count = sum(len(c.providers) for c in catalogs)
            click.echo(f"ok: {count} providers, {sum(len(c.pricing) for c in catalogs)} prices, "
                       f"{sum(len(c.routes.get('aliases') or {}) for c in catalogs)} aliases")
    sys.exit(1 if problems else 0)


@main.command()
@click.option("--host", default=None, help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", default=None, type=int, help="Port to listen on.  [default: 8400]")
@click.option("-c", "--config", "config_file", type=click.Path(exists=True, dir_okay=False), envvar="GAUD_CONFIG",
              help="YAML config file (GAUD_* variables override it).")
@click.option("--specs", "specs_dir", type=click.Path(exists=True, file_okay=False), envvar="GAUD_SPECS_DIR",
              help="Spec tree to serve instead of the bundled one.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Worker processes sharing the port (one per core).  [default: 1]")
def serve(host: str | None, port: int | None, config_file: str | None, specs_dir: str | None,
          workers: int | None) -> None:
    """Run the gateway.

    Provider keys and base URLs come from the environment variables each spec declares
    (e.g. ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL). With several workers, set redis.url to share
    rate limits, budgets in flight, the cache and breaker states between them.

    \b
    Example usage:
        ANTHROPIC_API_KEY=sk-... gaud-engine serve --port 8400
        gaud-engine serve --workers 2
    """
    from ..logs import logging_from_settings
    from ..web.drain import SHUTDOWN_GRACE

    overrides: dict[str, Any] = {"server.host": host, "server.port": port, "specs.dir": specs_dir, "server.workers": workers}
    try:
        settings = load_settings(config_file, **overrides)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    root = serving_root(settings)
    from ..spec import rules

    rules.CHECK_PORTABILITY = False  # `validate` checks rules on both CEL backends; serving needs one
    catalog = load_catalog(root)
    if catalog.problems:
        for problem in catalog.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(catalog.problems)} problem(s) in the specs under {root}; not starting.")
    from ..web.server import check_settings

    try:
        check_settings(settings)
    except ValueError as exc:
        raise click.ClickException(f"{exc}; not starting.") from None
    for line in provider_banner(catalog, _signed_in(catalog, settings)):
        click.echo(line)
    level = logging_from_settings(settings)
    from ..web.protocol import GuardedHttpProtocol  # uvicorn's, with header and send timeouts

    bind_host, bind_port = settings.get("server.host"), int(settings.get("server.port"))
    n_workers = int(settings.get("server.workers"))
    options = {
        "host": bind_host, "port": bind_port, "log_level": level, "access_log": False, "loop": "auto",
        "http": GuardedHttpProtocol,
        "server_header": False, "ws": "none",
        # The gateway ends requests at shutdown_timeout itself (web.drain); uvicorn's deadline is the backstop.
        "timeout_graceful_shutdown": float(settings.get("server.shutdown_timeout")) + SHUTDOWN_GRACE,
        "log_config": None,  # uvicorn's own lines go through the gateway's logging (JSON or text)
        "proxy_headers": bool(settings.get("server.proxy_headers")),
        "forwarded_allow_ips": settings.get("server.forwarded_allow_ips"),
    }
    suffix = f" ({n_workers} workers)" if n_workers > 1 else ""
    click.echo(f"gaud-engine listening on http://{bind_host}:{bind_port}{suffix}")
    from ..web.process import limit_malloc_arenas

    limit_malloc_arenas()
    if n_workers > 1:
        from ..web.workers import serve_workers

        serve_workers(settings, config_file, n_workers, **options)
        return
    import uvicorn

    from ..web.server import GracefulServer, create_app

    app = create_app(catalog, settings)
    GracefulServer(uvicorn.Config(app, **options)).run()


def provider_banner(catalog: Catalog, signed_in: Collection[str] = ()) -> list[str]:
    """One line per provider: "ready", "ready (signed in)", "not configured (set X)" (requests skip
    it), or "unreachable at <base>" for a provider on this machine that refuses a connection (one
    connect with a short timeout each, so a local model server is not reported ready unchecked)."""
    import asyncio

    from ..pipeline.probe import unreachable_local

    specs = catalog.providers
    usable = [spec for name, spec in specs.items() if not spec.missing_env() or name in signed_in]
    unreachable = asyncio.run(unreachable_local(usable))
    lines, width = [], max(map(len, specs), default=0)
    for name, spec in sorted(specs.items()):
        hint = spec.setup_hint()
        if name in unreachable:
            status = f"unreachable at {unreachable[name]}"
        elif hint is not None and name not in signed_in:
            status = f"not configured ({hint})"
        else:
            status = "ready (signed in)" if hint is not None else "ready"
        lines.append(f"provider {name:<{width}} {status}")
    return lines


def _signed_in(catalog: Catalog, settings: Any) -> set[str]:
    """Providers with stored sign-in credentials, for those that lack their keys but could sign in.
    Best effort: a database not created yet has nobody signed in."""
    candidates = [n for n, s in catalog.providers.items() if s.missing_env() and s.auth is not None and s.auth.signs_in]
    if not candidates:
        return set()
    from ..accounts.store import Store

    try:
        store = Store(str(settings.get("database.url")), key_secret=settings.get("auth.key_secret"))
        try:
            return {row["provider"] for row in store.list_credentials()} & set(candidates)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - no database yet, or not reachable: the server reports it
        return set()


_store = open_store


@main.group()
def keys() -> None:
    """Create, list, update, revoke and delete gateway API keys."""


def _key_line(key: dict[str, Any]) -> str:
    models = ",".join(key["models"]) if key["models"] else "all"
    at_once = f"; max in flight: {key['max_in_flight']}" if key["max_in_flight"] is not None else ""
    team = f", team {key['team']}" if key.get("team") else ""
    return (f"{key['prefix']} ({key['user']}{team}, {key['role']}; models: {models}; "
            f"expires: {_key_expiry(key['expires_at'])}{at_once})")


def _key_expiry(ts: float | None) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%dT%H:%MZ", _time.gmtime(ts)) if ts is not None else "never"


USER_FIELDS_HELP = "Applies to the key's user, so to every key of that user."


def _limit_options(help_suffix: str, *, role_default: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--role, --budget-daily, --budget-monthly, --rpm, --tpm: a user's fields."""
    options = [
        click.option("--role", type=click.Choice(["member", "admin"]), default=role_default,
                     show_default=role_default is not None, help=f"The user's role. {help_suffix}".strip()),
        click.option("--budget-daily", default=None, help=f"Daily limit in USD, or none. {help_suffix}".strip()),
        click.option("--budget-monthly", default=None, help=f"Monthly limit in USD, or none. {help_suffix}".strip()),
        click.option("--rpm", default=None,
                     help=f"Requests per minute, or none (default: ratelimits.key_rpm). {help_suffix}".strip()),
        click.option("--tpm", default=None,
                     help=f"Tokens per minute, or none (default: ratelimits.key_tpm). {help_suffix}".strip()),
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _user_fields(role: str | None, budget_daily: str | None, budget_monthly: str | None, rpm: str | None,
                 tpm: str | None) -> dict[str, Any]:
    return {"role": role, "budget_daily": budget_daily, "budget_monthly": budget_monthly, "rpm_limit": rpm,
            "tpm_limit": tpm}


@keys.command("create")
@click.option("--user", required=True, help="User name (created if new).")
@_limit_options(USER_FIELDS_HELP, role_default=None)
@click.option("--models", default=None,
              help="Models this key may call: comma-separated glob patterns (smart,fast-*) matched against the "
                   "model name the client sends. Default: every model.")
@click.option("--expires", default=None, help="Expiry: 30d, 12h, 45m, 2w, a date (2027-01-31, UTC) or an ISO time.")
@click.option("--label", default=None, help="Free text shown by `keys list` (what the key is for).")
@click.option("--max-in-flight", default=None, help="How many of this key's requests may run at once (past it: 429).")
@click.option("--team", default=None, help=f"Put the user in this team (`teams create`), or none. {USER_FIELDS_HELP}")
@CONFIG_OPTION
def keys_create(user: str, role: str, budget_daily: str | None, budget_monthly: str | None, rpm: str | None,
                tpm: str | None, models: str | None, expires: str | None, label: str | None,
                max_in_flight: str | None, team: str | None, config_file: str | None) -> None:
    """Create an API key; it is shown once and stored only as a keyed hash (HMAC).

    \b
    Example usage:
        gaud-engine keys create --user alice --budget-daily 5 --models smart,fast-* --expires 30d
    """
    created = _admin(config_file, "keys", "create", fields={
        "user": user, **_user_fields(role, budget_daily, budget_monthly, rpm, tpm), "models": models,
        "expires": expires, "label": label, "max_in_flight": max_in_flight, "team": team})
    click.echo(f"Key {_key_line(created)}, shown once:\n  {created['key']}")


@keys.command("update")
@click.argument("prefix")
@_limit_options(USER_FIELDS_HELP, role_default=None)
@click.option("--models", default=None, help="This key's allowed models (comma-separated globs); '' for every model.")
@click.option("--expires", default=None, help="This key's expiry (30d, a date, an ISO time), or never.")
@click.option("--label", default=None, help="This key's label; '' to remove it.")
@click.option("--max-in-flight", default=None, help="This key's limit on requests at once, or none.")
@click.option("--team", default=None, help=f"Move the user to this team, or none. {USER_FIELDS_HELP}")
@CONFIG_OPTION
def keys_update(prefix: str, role: str | None, budget_daily: str | None, budget_monthly: str | None, rpm: str | None,
                tpm: str | None, models: str | None, expires: str | None, label: str | None,
                max_in_flight: str | None, team: str | None, config_file: str | None) -> None:
    """Change an active key: its models, expiry and label, and its user's role, budgets and limits.
    Only the options given change. Running gateways apply the change to the next request.

    \b
    Example usage:
        gaud-engine keys update sk-gaud-1a2b3c4d5e6f --role member --budget-daily 2 --expires 7d
    """
    fields = {**_user_fields(role, budget_daily, budget_monthly, rpm, tpm), "models": models, "expires": expires,
              "label": label, "max_in_flight": max_in_flight, "team": team}
    if all(value is None for value in fields.values()):
        raise click.UsageError("give at least one option to change")
    updated = _admin(config_file, "keys", "update", prefix, fields, missing=f"no active key with prefix {prefix}")
    click.echo(f"updated {_key_line(updated)}")


@keys.command("list")
@CONFIG_OPTION
def keys_list(config_file: str | None) -> None:
    """List keys (their prefixes, never the keys): user, role, status, the user's spend against its
    budgets today and this month (UTC), rpm/tpm limits, created, last used, expiry, models, label.

    Spend and budgets belong to the key's user (every key of that user counts against them). Last
    used is the key's newest audit record ("never": none since the gateway began recording keys).

    \b
    Example usage:
        gaud-engine keys list
    """
    rows = _admin(config_file, "keys", "list")["data"]
    if not rows:
        click.echo("no keys")
        return
    click.echo(f"{'prefix':<20} {'user':<16} {'role':<7} {'status':<8} {'today':>16} {'month':>16} {'rpm':>6} "
               f"{'tpm':>8}  {'created':<17} {'last_used':<17} {'expires':<17} {'models':<24} label")
    for k in rows:
        status = "revoked" if k["revoked"] else "expired" if k["expired"] else "active"
        models = ",".join(k["models"]) if k["models"] else "all"
        click.echo(f"{k['prefix']:<20} {k['user']:<16} {k['role']:<7} {status:<8} "
                   f"{spend(k['user_spent_today'], k['budget_daily']):>16} "
                   f"{spend(k['user_spent_month'], k['budget_monthly']):>16} "
                   f"{amount(k['rpm_limit']):>6} {amount(k['tpm_limit']):>8}  {_key_expiry(k['created_at']):<17} "
                   f"{_key_expiry(k['last_used']):<17} {_key_expiry(k['expires_at']):<17} {models:<24} "
                   f"{k['label'] or '-'}".rstrip())




@keys.command("revoke")
@click.argument("prefix")
@CONFIG_OPTION
def keys_revoke(prefix: str, config_file: str | None) -> None:
    """Revoke a key by its prefix (as `keys list` shows it).

    \b
    Example usage:
        gaud-engine keys revoke sk-gaud-1a2b3c4d5e6f
    """
    _admin(config_file, "keys", "revoke", prefix, missing=f"no active key with prefix {prefix}")
    click.echo(f"revoked {prefix}")


@keys.command("delete")
@click.argument("prefix")
@CONFIG_OPTION
def keys_delete(prefix: str, config_file: str | None) -> None:
    """Delete a key: revoke it and drop its stored hash. `keys list` still shows it as revoked, so
    the audit log and the request log keep naming it.

    \b
    Example usage:
        gaud-engine keys delete sk-gaud-1a2b3c4d5e6f
    """
    _admin(config_file, "keys", "delete", prefix, missing=f"no key with prefix {prefix}")
    click.echo(f"deleted {prefix}")


@main.group()
def users() -> None:
    """Create, list, update and erase users."""


def _user_line(user: dict[str, Any]) -> str:
    team = f"; team {user['team']}" if user.get("team") else ""
    return (f"{user['name']} ({user['role']}; daily: {amount(user['budget_daily'])}, monthly: "
            f"{amount(user['budget_monthly'])}, rpm: {amount(user['rpm_limit'])}, tpm: {amount(user['tpm_limit'])}"
            f"{team})")


@users.command("create")
@click.argument("name")
@_limit_options("", role_default="member")
@click.option("--team", default=None, help="Put the user in this team (`teams create`).")
@CONFIG_OPTION
def users_create(name: str, role: str, budget_daily: str | None, budget_monthly: str | None, rpm: str | None,
                 tpm: str | None, team: str | None, config_file: str | None) -> None:
    """Create a user without a key (`keys create --user NAME` adds keys).

    \b
    Example usage:
        gaud-engine users create alice --budget-monthly 50
    """
    user = _admin(config_file, "users", "create", fields={
        "name": name, **_user_fields(role, budget_daily, budget_monthly, rpm, tpm), "team": team})
    click.echo(f"created {_user_line(user)}")


@users.command("list")
@CONFIG_OPTION
def users_list(config_file: str | None) -> None:
    """List users: role, budgets (USD), rpm/tpm limits, active keys, created.

    \b
    Example usage:
        gaud-engine users list
    """
    rows = _admin(config_file, "users", "list")["data"]
    if not rows:
        click.echo("no users")
        return
    click.echo(f"{'user':<24} {'role':<7} {'daily':>8} {'monthly':>8} {'rpm':>6} {'tpm':>8} {'keys':>5}  created")
    for u in rows:
        click.echo(f"{u['name']:<24} {u['role']:<7} {amount(u['budget_daily']):>8} {amount(u['budget_monthly']):>8} "
                   f"{amount(u['rpm_limit']):>6} {amount(u['tpm_limit']):>8} {u['active_keys']:>5}  "
                   f"{_key_expiry(u['created_at'])}")


@users.command("update")
@click.argument("name")
@_limit_options("", role_default=None)
@click.option("--team", default=None, help="Move the user to this team, or none.")
@CONFIG_OPTION
def users_update(name: str, role: str | None, budget_daily: str | None, budget_monthly: str | None, rpm: str | None,
                 tpm: str | None, team: str | None, config_file: str | None) -> None:
    """Change a user's role, budgets, limits (so of every key of theirs) or team; only the options given.

    \b
    Example usage:
        gaud-engine users update alice --role admin --budget-daily none --team research
    """
    fields = {**_user_fields(role, budget_daily, budget_monthly, rpm, tpm), "team": team}
    if all(value is None for value in fields.values()):
        raise click.UsageError("give at least one option to change")
    user = _admin(config_file, "users", "update", name, fields, missing=f"no user {name}")
    click.echo(f"updated {_user_line(user)}")


@users.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@CONFIG_OPTION
def users_delete(name: str, yes: bool, config_file: str | None) -> None:
    """Erase a user: revoke their keys, delete their dashboard sessions and stored replies, and
    anonymise their audit rows (name replaced by a random token, prompt contents cleared; costs
    and tokens kept, so totals stay right). Cannot be undone.

    \b
    Example usage:
        gaud-engine users delete alice --yes
    """
    if not yes:
        click.confirm(f"Erase user {name}? Their keys stop working and their audit rows lose their name", abort=True)
    erased = _admin(config_file, "users", "delete", name, missing=f"no user {name}")
    click.echo(f"erased {name}: {erased['keys_revoked']} keys revoked, {erased['audit_rows']} audit rows now under "
               f"{erased['token']}, {erased['stored_replies']} stored replies deleted")


def _since(value: str | None) -> float | None:
    """'2026-11-01', '24h', '7d' or a Unix time -> Unix time."""
    import calendar
    import re
    import time as _time

    if value is None:
        return None
    match = re.fullmatch(r"(\d+)([hd])", value)
    if match:
        return _time.time() - int(match[1]) * (3600 if match[2] == "h" else 86400)
    try:
        return calendar.timegm(_time.strptime(value, "%Y-%m-%d"))
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD, 24h, 7d or a Unix time", param_hint="--since") from None


@main.command()
@click.option("--user", default=None, help="Only this user.")
@click.option("--since", default=None, help="YYYY-MM-DD, 24h, 7d, or a Unix time.")
@click.option("--team", default=None, help="Only requests made while in this team.")
@CONFIG_OPTION
def usage(user: str | None, since: str | None, team: str | None, config_file: str | None) -> None:
    """Print requests, tokens and cost per user and model from the audit log, then per team.

    A request counts for the team its user was in when it was made.

    \b
    Example usage:
        gaud-engine usage --since 7d
        gaud-engine usage --team research --since 2026-11-01
    """
    store, start = _store(config_file), _since(since)
    team_id = team_id_of(store, team) if team is not None else None
    rows = store.usage(user=user, since=start, team_id=team_id)
    if not rows:
        click.echo("no usage")
        return
    click.echo(f"{'user':<16} {'deployment':<44} {'requests':>8} {'prompt':>10} {'completion':>10} {'cached':>8} {'cost USD':>11}")
    for r in rows:
        click.echo(
            f"{r['user_name'] or '-':<16} {r['deployment'] or '-':<44} {r['requests']:>8} {r['prompt_tokens']:>10} "
            f"{r['completion_tokens']:>10} {r['cached_tokens']:>8} {r['cost']:>11.6f}"
        )
    print_team_totals(store, since=start, user=user, team_id=team_id)


@main.command()
@click.argument("model")
@click.option("--input", "input_tokens", type=int, default=None, help="Prompt tokens (cached ones included).")
@click.option("--output", "output_tokens", type=int, default=None, help="Completion tokens.")
@click.option("--cached", type=int, default=0, show_default=True, help="Prompt tokens read from the cache.")
@click.option("--cache-write", type=int, default=0, show_default=True, help="Prompt tokens written to the cache.")
@click.option("--specs", "specs_dir", type=click.Path(exists=True, file_okay=False), envvar="GAUD_SPECS_DIR",
              help="Spec tree to use instead of the bundled one.")
@CONFIG_OPTION
def price(model: str, input_tokens: int | None, output_tokens: int | None, cached: int, cache_write: int,
          specs_dir: str | None, config_file: str | None) -> None:
    """Print the prices of every deployment MODEL may be served by, and what a request costs there.

    MODEL is an alias, provider/model or model id. Prices are USD per million tokens, one line per
    tier; the cost column appears when --input or --output is given. Exits 1 when a deployment
    has no price.

    \b
    Example usage:
        gaud-engine price smart --input 20000 --output 500 --cached 18000
    """
    from ..errors import GatewayError
    from ..spec.models import resolve_model
    from .prices import no_price_message, price_rows, render

    try:
        allow_unlisted = bool(load_settings(config_file).get("routing.allow_unlisted_models"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    catalog = load_catalog(Path(specs_dir) if specs_dir else default_root())
    try:
        targets = resolve_model(catalog, model, allow_unlisted=allow_unlisted)
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None
    usage_ = None
    if input_tokens is not None or output_tokens is not None:
        usage_ = {"prompt_tokens": input_tokens or 0, "completion_tokens": output_tokens or 0,
                  "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write}}
    rows = price_rows(catalog, targets, usage_)
    route = (catalog.routes.get("aliases") or {}).get(model)
    if route is not None:
        strategy = route.get("strategy") or (catalog.routes.get("defaults") or {}).get("strategy", "priority")
        click.echo(f"{model}: {len(rows)} candidate{'s' if len(rows) != 1 else ''}, strategy {strategy}")
    unpriced = [row.name for row in rows if row.price is None]
    if len(unpriced) < len(rows):
        click.echo("\n".join(render(rows, with_cost=usage_ is not None)))
    if unpriced:
        raise click.ClickException(no_price_message(unpriced))


@main.group()
def routes() -> None:
    """Inspect routing: aliases, candidates and the rules that order them."""


@routes.command("explain")
@click.argument("request_json")
@click.option("--specs", "specs_dir", type=click.Path(exists=True, file_okay=False), envvar="GAUD_SPECS_DIR",
              help="Spec tree to use instead of the bundled one.")
def routes_explain(request_json: str, specs_dir: str | None) -> None:
    """Show, without calling anything, how a request would be routed.

    Prints the candidates in order, each `when` rule and its result, and the retry, fallback and
    backoff policy. REQUEST_JSON is an OpenAI chat request body (or @FILE to read one).

    \b
    Example usage:
        gaud-engine routes explain '{"model": "fast", "messages": [{"role": "user", "content": "hi"}]}'
    """
    from ..errors import GatewayError
    from ..pipeline.routing import Router, explain

    text = Path(request_json[1:]).read_text() if request_json.startswith("@") else request_json
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"REQUEST_JSON is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise click.ClickException("REQUEST_JSON must be a JSON object")
    catalog = load_catalog(Path(specs_dir) if specs_dir else default_root())
    if catalog.problems:
        for problem in catalog.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException("the specs have problems; run `gaud-engine validate`")
    try:
        click.echo(explain(Router(catalog), body))
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None


# -- upstream sign-in: login, logout, status (engine.credentials) ------------------------------
SIGN_IN_SPECS_OPTION = click.option(
    "--specs", "specs_dir", type=click.Path(exists=True, file_okay=False), envvar="GAUD_SPECS_DIR",
    help="Spec tree to use instead of the bundled one.",
)


def _credential_manager(config_file: str | None):  # type: ignore[no-untyped-def]
    from ..credentials import CredentialManager, VaultError

    try:
        return CredentialManager(_store(config_file))
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None


def _provider_spec(specs_dir: str | None, provider: str):  # type: ignore[no-untyped-def]
    catalog = load_catalog(Path(specs_dir) if specs_dir else default_root())
    spec = catalog.providers.get(provider)
    if spec is None:
        known = ", ".join(sorted(catalog.providers)) or "none"
        problem = "has problems (run `gaud-engine validate`)" if provider in catalog.broken else "is not a provider"
        raise click.ClickException(f"{provider} {problem}; providers: {known}")
    return spec


def _when(timestamp: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M UTC", _time.gmtime(timestamp))


def _expiry(info: dict[str, object]) -> str:
    import time as _time

    expires = info.get("expires_at")
    if not info.get("signed_in"):
        return "-"
    if not isinstance(expires, (int, float)):
        return "never" + (" (short-lived tokens exchanged as needed)" if info.get("exchange") else "")
    if info.get("refreshable"):
        return f"{_when(expires)} (refreshed automatically)"
    return f"{'expired ' if expires < _time.time() else ''}{_when(expires)}"


@main.command()
@click.argument("provider")
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL instead of opening a browser.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for a browser sign-in.")
@SIGN_IN_SPECS_OPTION
@CONFIG_OPTION
def login(provider: str, no_browser: bool, timeout: float, specs_dir: str | None, config_file: str | None) -> None:
    """Sign in to PROVIDER with the flow its spec declares (`api.auth`); tokens are stored encrypted.

    A browser sign-in prints a URL (opened unless --no-browser) and waits for the redirect on a
    local port; a device sign-in prints a code to enter at a URL and waits. Tokens are refreshed
    automatically afterwards. The key that encrypts them: GAUD_SECRET_KEY, else a key file
    created (mode 0600) next to the SQLite database.

    \b
    Example usage:
        gaud-engine login acme
        gaud-engine login acme --no-browser
    """
    import asyncio
    import webbrowser

    from ..credentials import VaultError
    from ..errors import GatewayError

    spec = _provider_spec(specs_dir, provider)
    manager = _credential_manager(config_file)
    opener = None if no_browser else (lambda url: webbrowser.open(url))
    try:
        info = asyncio.run(manager.login(spec, echo=click.echo, open_url=opener, timeout=timeout))
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Signed in to {provider}; expires: {_expiry(info)}.")


@main.command()
@click.argument("provider")
@SIGN_IN_SPECS_OPTION
@CONFIG_OPTION
def logout(provider: str, specs_dir: str | None, config_file: str | None) -> None:
    """Forget the tokens stored for PROVIDER; requests fall back to its env API key, if any.

    \b
    Example usage:
        gaud-engine logout acme
    """
    import asyncio

    from ..credentials import VaultError

    spec = _provider_spec(specs_dir, provider)
    try:
        deleted = asyncio.run(_credential_manager(config_file).logout(spec))
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Signed out of {provider}." if deleted else f"Not signed in to {provider}; nothing to do.")


@main.command()
@SIGN_IN_SPECS_OPTION
@CONFIG_OPTION
def status(specs_dir: str | None, config_file: str | None) -> None:
    """Show which providers are signed in and when their tokens expire.

    Method `env` means the provider reads its keys from environment variables only.

    \b
    Example usage:
        gaud-engine status
    """
    catalog = load_catalog(Path(specs_dir) if specs_dir else default_root())
    rows = _credential_manager(config_file).status(catalog.providers)
    click.echo(f"{'provider':<16} {'method':<12} {'signed in':<10} expires")
    problems = []
    for info in rows:
        signed = {True: "yes", False: "no", None: "-"}[info["signed_in"]]
        click.echo(f"{info['provider']:<16} {info['method']:<12} {signed:<10} {_expiry(info)}")
        if info["problem"]:
            problems.append(f"{info['provider']}: {info['problem']}")
    for problem in problems:
        click.echo(problem, err=True)



# -- spec authoring: test, record, new, manual (engine.cli.recordings, engine.cli.scaffold, engine.cli.manual) --
@main.group()
def spec() -> None:
    """Test, record, scaffold and document provider specs."""


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@spec.command("test")
@click.argument("targets", nargs=-1, metavar="[SPEC_OR_DIR]...")
@click.option("--update", is_flag=True, help="Rewrite each recording's `expect` with what the engine produces now "
              "(also fills in `upstream_call` of older recordings, offline).")
def spec_test(targets: tuple[str, ...], update: bool) -> None:
    """Replay recorded exchanges through the engine (no network) and show what differs.

    SPEC_OR_DIR is a spec tree (default: the bundled one), its providers.d/, a spec file, a spec
    name, or a recordings folder or file. Recordings live in tests/providers/NAME/recordings/ of
    the tree, or where the spec's `recordings:` key says. Prints one line per exchange, with a diff under each
    failure, then `N passed, M failed`; exits 1 on any failure. With --update, expectations that
    differ are rewritten: review them (e.g. with git diff) before committing.

    \b
    Example usage:
        gaud-engine spec test
        gaud-engine spec test providers.d/acme.yaml
        gaud-engine spec test acme --update
    """
    from .recordings import RecordingProblem, owner_of, recordings_dir, select, spec_names

    catalogs: dict[Path, Catalog] = {}
    tally = _Tally()
    for raw in targets or (str(default_root()),):
        try:
            chosen = select(raw, default_root())
        except RecordingProblem as exc:
            tally.fail(str(exc))
            continue
        if chosen.root not in catalogs:
            catalogs[chosen.root] = load_catalog(chosen.root, environ={})
        catalog = catalogs[chosen.root]
        names = chosen.providers
        if chosen.path is not None:
            owner = owner_of(catalog, chosen.path)
            if owner is None:
                tally.fail(f"{_shown(chosen.path)}: not in the recordings folder of any spec under {_shown(chosen.root)}")
                continue
            names = [owner]
        for name in names if names is not None else spec_names(catalog):
            if name not in catalog.providers:
                _unusable_spec(catalog, chosen.root, name, tally)
                continue
            _replay(catalog, name, chosen.path or recordings_dir(catalog, name), update, tally)
    if tally.passed + tally.failed + tally.updated == 0:
        click.echo("no recordings found")
        sys.exit(1)
    click.echo(f"{tally.passed} passed, {tally.failed} failed" + (f", {tally.updated} updated" if update else ""))
    sys.exit(1 if tally.failed else 0)


@dataclasses.dataclass
class _Tally:
    """What `spec test` has seen so far."""

    passed: int = 0
    failed: int = 0
    updated: int = 0

    def fail(self, message: str) -> None:
        click.echo(f"FAIL  {message}")
        self.failed += 1


def _unusable_spec(catalog: Catalog, root: Path, name: str, tally: _Tally) -> None:
    """A named spec that is missing or did not load: say which, with its problems."""
    from .recordings import spec_names

    if name not in spec_names(catalog):
        tally.fail(f"{name}: no such spec in {_shown(root / 'providers.d')}")
        return
    tally.fail(f"{name}: the spec has problems; run `gaud-engine validate`")
    for problem in catalog.problems:
        if Path(problem.file).stem == name:
            click.echo(f"      {problem}")


def _replay(catalog: Catalog, name: str, folder: Path, update: bool, tally: _Tally) -> None:
    """Replay one spec's recordings in `folder`: a line each, a diff under each failure."""
    from .recordings import check, load_recordings, write_expect

    recordings = load_recordings(folder, name)
    if not recordings:
        click.echo(f"--    {name}: no recordings in {_shown(folder)}")
        return
    for recording in recordings:
        outcome = check(catalog, recording)
        if outcome.ok:
            tally.passed += 1
            click.echo(f"ok    {recording.name}")
        elif update and outcome.actual is not None:
            write_expect(recording, outcome.actual)
            tally.updated += 1
            click.echo(f"updated {recording.name}  ({_shown(recording.path)}: review the change)")
        else:
            tally.fail(f"{recording.name}  ({_shown(recording.path)})")
            for line in outcome.diff().splitlines():
                click.echo(f"      {line}")


@spec.command("record")
@click.option("--provider", required=True, help="The spec whose real upstream is asked.")
@click.option("--model", default=None, help="Upstream model id (default: the spec's first model with tools).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write to (default: the spec's recordings folder).")
@click.option("--specs", "specs_dir", type=click.Path(exists=True, file_okay=False), envvar="GAUD_SPECS_DIR",
              help="Spec tree to use instead of the bundled one.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for each reply.")
def spec_record(provider: str, model: str | None, out_dir: str | None, specs_dir: str | None, timeout: float) -> None:
    """Send a few fixed requests to PROVIDER's real upstream and store them as recordings.

    A text question, a tool call and a stream, sent with the credentials in the environment
    variables the spec declares (and its base URL variable, if set). Credentials are never
    stored: the request's URL and headers are written with each variable as its placeholder
    (`<ACME_API_KEY>`), and so is any secret an upstream quotes back. Review the files, then run
    `gaud-engine spec test`.

    \b
    Example usage:
        ACME_API_KEY=sk-... gaud-engine spec record --provider acme
    """
    from .recordings import RecordingProblem, record, recordings_dir

    catalog = load_catalog(Path(specs_dir) if specs_dir else default_root())
    if provider not in catalog.providers:
        _provider_spec(specs_dir, provider)  # raises the usual "not a provider" error
    out = Path(out_dir) if out_dir else recordings_dir(catalog, provider)
    try:
        written = record(catalog, provider, out, model=model, timeout=timeout, echo=click.echo)
    except RecordingProblem as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(written)} exchanges recorded in {_shown(out)}; review them, then: gaud-engine spec test {provider}")


@spec.command("new")
@click.argument("name")
@click.option("--like", default=None, help="The existing spec the new one extends (default: openai).")
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help="Start a new wire format from a template instead: " + ", ".join(scaffold_formats()) + ".")
@click.option("--model", default="example-model", show_default=True, help="The upstream model id to start with.")
@click.option("--dir", "root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Spec tree to write into (default: the current directory, if it has providers.d/).")
def spec_new(name: str, like: str | None, fmt: str | None, model: str, root: str | None) -> None:
    """Scaffold a provider spec, with its price, route and recordings folder.

    With --like (the default, openai) the spec extends an existing one and states only its own
    variables (NAME_API_KEY, NAME_BASE_URL) and models. With --format it is a whole spec for a new
    wire format, from a template to adjust to the provider's API reference. Also writes
    pricing.d/NAME.yaml (a placeholder price marked TODO), an alias NAME in routes.yaml and an empty
    recordings folder; `gaud-engine validate` fails until the TODO price is replaced.

    \b
    Example usage:
        gaud-engine spec new acme --like openai --model acme-large
        gaud-engine spec new acme --format messages --model acme-large
    """
    from .scaffold import ScaffoldError, scaffold

    if root is None:
        if not (Path.cwd() / "providers.d").is_dir():
            raise click.ClickException("the current directory is not a spec tree (no providers.d/); pass --dir")
        root = "."
    try:
        result = scaffold(Path(root), name, like, fmt=fmt, model=model)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    for path in result.created:
        click.echo(f"created  {_shown(path)}")
    for path in result.changed:
        click.echo(f"changed  {_shown(path)}  (alias {name})")
    click.echo(f"next: edit the placeholders in {_shown(result.created[0])} and {_shown(result.created[1])}, "
               f"then `gaud-engine validate` and `gaud-engine spec test {name}`")


@spec.command("manual")
@click.argument("output", default="docs/spec-language.md", required=False)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if OUTPUT is not what would be written.")
def spec_manual(output: str, check: bool) -> None:
    """Write the spec-language manual from the JSON Schemas' descriptions and examples.

    OUTPUT defaults to docs/spec-language.md; `-` prints it.

    \b
    Example usage:
        gaud-engine spec manual
        gaud-engine spec manual --check
    """
    from .manual import generate_manual

    text = generate_manual()
    if output == "-":
        click.echo(text, nl=False)
        return
    path = Path(output)
    if check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            click.echo(f"{output} is stale: run `gaud-engine spec manual {output}`", err=True)
            sys.exit(1)
        click.echo(f"{output} is up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    main()


from .catalog_import import catalog as _catalog  # noqa: E402  (registered after `main` exists)

main.add_command(_catalog)
main.add_command(_teams)
