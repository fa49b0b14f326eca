"""The `gaud-engine` command: thin wrappers over engine functions."""

from __future__ import annotations

import dataclasses
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
    from .errors import GatewayError
    from .routing import Router, explain

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


if __name__ == "__main__":  # pragma: no cover
    main()
