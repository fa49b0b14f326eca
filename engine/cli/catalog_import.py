"""`gaud-engine catalog import`: keep models.d/ and pricing.d/ current from a LiteLLM-format model list."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..spec.catalog_files import GeneratedFiles, Report, matches
from ..spec.loader import default_root, load_catalog
from ..spec.pricelist import ListRule, convert

__all__ = ["catalog"]


def _read_list(where: str) -> dict[str, Any]:
    """The list as JSON from a file, or from an http(s) URL; exit 2 when it cannot be read."""
    try:
        if where.startswith(("http://", "https://")):
            import httpx

            try:
                reply = httpx.get(where, timeout=30.0, follow_redirects=True)
                reply.raise_for_status()
            except httpx.HTTPError as exc:
                raise _fail(f"cannot read {where}: {exc}") from None
            text = reply.text
        else:
            try:
                text = Path(where).read_text()
            except OSError as exc:
                raise _fail(f"cannot read {where}: {exc.strerror or exc}") from None
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"{where} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _fail(f"{where} is not a LiteLLM-format list (a JSON object of model -> facts)")
    return data


def _fail(message: str) -> click.exceptions.Exit:
    click.echo(f"Error: {message}", err=True)
    return click.exceptions.Exit(2)


def _rules(root: Path, wanted: tuple[str, ...]) -> list[ListRule]:
    """The specs' `catalog:` blocks, in name order; exit 2 for a --provider without one."""
    specs = load_catalog(root).providers
    rules = [rule for name, spec in sorted(specs.items()) if (rule := ListRule.from_spec(name, spec.raw.get("catalog")))]
    known = [rule.provider for rule in rules]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise _fail(f"no `catalog:` block in providers.d/ for {', '.join(unknown)}; providers with one: {', '.join(known)}")
    return [rule for rule in rules if not wanted or rule.provider in wanted]


def _print(reports: list[Report], check: bool) -> None:
    for report in reports:
        if check:
            for change in report.changes:
                if change.model not in report.added or change.field == "model":
                    click.echo(str(change))
        else:
            click.echo(report.summary())
            for model_id, why in sorted(report.skipped.items()):
                click.echo(f"  skipped {model_id}: {why}")


@click.group()
def catalog() -> None:
    """The model catalogue: models.d/ and pricing.d/ from a public model list."""


@catalog.command("import")
@click.argument("source")
@click.option("--check", is_flag=True, help="Write nothing; print the differences and exit 1 when there are any.")
@click.option("--provider", "providers", multiple=True, help="Only this provider spec (repeatable).")
@click.option("--model", "models", multiple=True, help="Only model ids or aliases matching this glob (repeatable).")
@click.option("--specs", "specs_dir", type=click.Path(exists=True, file_okay=False), envvar="GAUD_SPECS_DIR",
              help="Spec tree to update instead of the bundled one.")
def import_(source: str, check: bool, providers: tuple[str, ...], models: tuple[str, ...], specs_dir: str | None) -> None:
    """Update models.d/ and pricing.d/ from SOURCE, a LiteLLM-format list (a file or an http(s) URL).

    Each provider spec's `catalog:` block says which entries are its models. Chat and embedding
    models are imported with their limits, capabilities and prices (per million tokens); models
    absent from the list are kept and `pinned: true` entries are left alone.

    \b
    Example usage:
        gaud-engine catalog import model_prices_and_context_window.json --check
        gaud-engine catalog import https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json
    """
    root = Path(specs_dir) if specs_dir else default_root()
    rules = _rules(root, providers)
    data = _read_list(source)
    label = source if source.startswith(("http://", "https://")) else Path(source).name
    files = GeneratedFiles(root, label, datetime.date.today().isoformat())
    found = {}
    for rule in rules:
        imported, skipped = convert(data, rule)
        found[rule.provider] = ({k: v for k, v in imported.items() if matches((k, *v.model.get("aliases", ())), models)}, skipped)
    reports = []
    for rule in rules:  # every price first, so a model the list leaves unpriced can use one written here
        report = Report(rule.provider)
        files.apply_prices(rule, found[rule.provider][0], report)
        reports.append(report)
    for rule, report in zip(rules, reports, strict=True):
        imported, skipped = found[rule.provider]
        report.skipped.update({k: v for k, v in skipped.items() if not models or matches((k,), models)})
        files.apply_models(rule, imported, report)
    _print(reports, check)
    if check:
        if any(report.changes for report in reports):
            sys.exit(1)
        click.echo("no drift")
        return
    for path in files.write():
        click.echo(f"wrote {path}")

