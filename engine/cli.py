"""The `gaud-engine` command: thin wrappers over engine functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .config import load_settings
from .errors import SpecError
from .specs import Catalog, default_root, load_catalog

__all__ = ["main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="gaud-engine")
def main() -> None:
    """gaud-engine: an OpenAI-compatible LLM gateway driven by YAML provider specs."""


def _roots(paths: tuple[str, ...]) -> list[Path]:
    """Spec-tree roots for the given paths (a tree, or a file inside providers.d/ or pricing.d/)."""
    if not paths:
        return [default_root()]
    roots: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            root = path.parent.parent if path.parent.name in ("providers.d", "pricing.d") else path.parent
        else:
            root = path
        if root not in roots:
            roots.append(root)
    return roots


def _format(problem: SpecError, fmt: str) -> str:
    if fmt == "github":
        message = problem.message.replace("%", "%25").replace("\n", "%0A")
        return f"::error file={problem.file},line={problem.line},title={problem.pointer or '/'}::{message}"
    return str(problem)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="Output format: text lines, a JSON array, or GitHub Actions annotations.")
def validate(paths: tuple[str, ...], fmt: str) -> None:
    """Check specs, pricing and routes against the schemas and each other.

    Exits 0 when clean, 1 with one line per problem: file:line: json-pointer: message.

    \b
    Example usage:
        gaud-engine validate
        gaud-engine validate ./my-specs --format github
    """
    problems: list[SpecError] = []
    catalogs: list[Catalog] = []
    for root in _roots(paths):
        catalog = load_catalog(root)
        catalogs.append(catalog)
        problems.extend(catalog.problems)
    if fmt == "json":
        click.echo(json.dumps([p.__dict__ for p in problems], indent=2))
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
def serve(host: str | None, port: int | None, config_file: str | None, specs_dir: str | None) -> None:
    """Run the gateway.

    Provider keys and base URLs come from the environment variables each spec declares
    (e.g. ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL).

    \b
    Example usage:
        ANTHROPIC_API_KEY=sk-... gaud-engine serve --port 8400
    """
    import logging

    import uvicorn

    from .server import create_app

    try:
        settings = load_settings(config_file, **{"server.host": host, "server.port": port, "specs.dir": specs_dir})
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    root = Path(settings.get("specs.dir")) if settings.get("specs.dir") else default_root()
    catalog = load_catalog(root)
    if catalog.problems:
        for problem in catalog.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(catalog.problems)} problem(s) in the specs under {root}; not starting.")
    for name, spec in sorted(catalog.providers.items()):
        missing = spec.missing_env()
        status = "ready" if not missing else f"no credentials (set {', '.join(missing)})"
        click.echo(f"provider {name:<12} {status}")
    level = str(settings.get("log.level")).lower()
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(catalog, settings)
    bind_host, bind_port = settings.get("server.host"), int(settings.get("server.port"))
    click.echo(f"gaud-engine listening on http://{bind_host}:{bind_port}")
    uvicorn.run(app, host=bind_host, port=bind_port, log_level=level if level != "debug" else "debug",
                access_log=False, loop="auto", http="auto", server_header=False)


if __name__ == "__main__":  # pragma: no cover
    main()
