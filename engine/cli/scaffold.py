"""`gaud-engine spec new`: a new provider spec, with everything around it (price, route, recordings
folder), written so that `gaud-engine validate` passes once the placeholder price (marked TODO, which
validate reports) is replaced.

The spec either extends an existing one (`--like`), or starts a new wire format from a template
(`--format`): engine/scaffolds/<format>.yaml, plain data named for the wire format it speaks, with
`__NAME__`, `__ENV__` (the name as an environment variable prefix) and `__MODEL__` filled in.

Nothing is written unless the whole result validates; on a problem the tree is left as it was.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..spec.crossref import PLACEHOLDER_MARK, placeholder_prices
from ..spec.loader import load_catalog

__all__ = ["Scaffold", "ScaffoldError", "env_prefix", "formats", "scaffold"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: Placeholders that pass the schemas and read as what they are.
PLACEHOLDER_BASE = "https://api.example.com"
PLACEHOLDER_SOURCE = f"{PLACEHOLDER_MARK}: the provider's pricing page"  # `validate` fails until it is replaced
#: The wire-format templates of `spec new --format`.
TEMPLATES = Path(__file__).resolve().parent.parent / "scaffolds"


class ScaffoldError(Exception):
    """Why nothing was written."""


@dataclass
class Scaffold:
    """What `scaffold()` wrote: new files, and files it changed."""

    created: list[Path] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)
    recordings: Path | None = None


def env_prefix(name: str) -> str:
    """`my-llm` -> `MY_LLM`: the prefix of a spec's own environment variables."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def _plain(value: str) -> str:
    """A YAML scalar written plain when it reads back as the same string, else double-quoted."""
    try:  # as a value, a key and in a flow mapping
        same = (yaml.safe_load(f"k: {value}") == {"k": value} and yaml.safe_load(f"{value}: 1") == {value: 1}
                and yaml.safe_load(f"{{k: {value}}}") == {"k": value})
    except yaml.YAMLError:
        same = False
    return value if same and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:-]*", value) and ": " not in value else _q(value)


def _renamed_env(parent_name: str, name: str, env: dict[str, Any]) -> dict[str, str]:
    """Parent variable -> this spec's variable: the parent's prefix swapped for this one's, else
    NAME_API_KEY for a secret, NAME_BASE_URL for a base URL, NAME_<VAR> otherwise."""
    old, new = env_prefix(parent_name) + "_", env_prefix(name) + "_"
    renamed = {}
    for var, info in env.items():
        if var.startswith(old):
            renamed[var] = new + var[len(old):]
        elif getattr(info, "secret", False):
            renamed[var] = new + "API_KEY"
        elif getattr(info, "base_url", False):
            renamed[var] = new + "BASE_URL"
        else:
            renamed[var] = new + var
    return renamed


def _base_url(parent: str) -> str:
    """The placeholder API root, keeping the parent's path (`/v1`) since the shape is alike."""
    path = re.sub(r"^[a-z]+://[^/]+", "", parent or "")
    return PLACEHOLDER_BASE + path


def _spec_text(name: str, like: str, parent: Any, model: str, recordings_key: str | None) -> str:
    raw = parent.raw
    api = raw.get("api") or {}
    renamed = _renamed_env(like, name, parent.env)
    lines = [
        f"# {name}: scaffolded by `gaud-engine spec new {name} --like {like}`. Everything not written here is",
        f"# inherited from providers.d/{like}.yaml; edit the base URL and the models, then record and test:",
        "# docs/adding-a-provider.md.",
        f"extends: {like}",
        f"description: {_q(f'{name} (like {like})')}",
    ]
    if recordings_key is not None:
        lines.append(f"recordings: {recordings_key}")
    lines += ["", "api:", f"  base_url: {_base_url(str(api.get('base_url', '')))}  # edit: the provider's API root", "  env:"]
    for var in parent.env:
        lines.append(f"    {var}: null  # {like}'s variable, not used here")
    for var, info in parent.env.items():
        flags = [f"{k}: true" for k in ("secret", "required", "base_url") if getattr(info, k, False)]
        if info.secret:
            what = f"API key for {name}"
        elif info.base_url:
            what = "Overrides api.base_url (proxies, tests)"
        else:
            what = info.description or var
        lines.append(f"    {renamed[var]}: {{{', '.join([*flags, f'description: {_q(what)}'])}}}")
    headers = {}
    for header, template in (api.get("headers") or {}).items():
        if not isinstance(template, str):
            continue
        new = template
        for old_var, new_var in renamed.items():
            new = re.sub(rf"\benv\.{re.escape(old_var)}\b", f"env.{new_var}", new)
        if new != template:
            headers[header] = new
    if headers:
        lines.append("  headers:")
        lines += [f"    {header}: {_q(value)}" for header, value in headers.items()]
    if api.get("auth"):
        lines.append(f"  auth: null  # {like}'s sign-in flow is its own; requests use the key above")
    lines += [
        "",
        "models:",
        f"  {_plain(model)}:  # edit: the upstream's model id, its limits and what it can do",
        "    context_window: 128000",
        "    max_output_tokens: 4096",
        "    capabilities: [tools]",
        "",
    ]
    return "\n".join(lines)


def formats() -> list[str]:
    """The wire formats `spec new --format` can start from (the templates' names)."""
    return sorted(p.stem for p in TEMPLATES.glob("*.yaml"))


def _format_text(name: str, fmt: str, model: str, recordings_key: str | None) -> str:
    """A template filled in; the `recordings:` key (when the folder is not the conventional one)
    goes right after `description:`."""
    path = TEMPLATES / f"{fmt}.yaml"
    if not re.fullmatch(r"[a-z0-9-]+", fmt) or not path.is_file():
        known = formats()
        hint = difflib.get_close_matches(fmt, known, n=1)
        raise ScaffoldError(f"--format {fmt} is not a template" + (f"; did you mean {hint[0]}?" if hint else "")
                            + f" (formats: {', '.join(known)})")
    text = path.read_text(encoding="utf-8")
    text = text.replace("__NAME__", name).replace("__ENV__", env_prefix(name)).replace("__MODEL__", _plain(model))
    if recordings_key is not None:
        text = re.sub(r"(?m)^(description:.*\n)", lambda m: m.group(1) + f"recordings: {recordings_key}\n", text, count=1)
    return text


def _pricing_text(name: str, model: str, today: str) -> str:
    return "\n".join([
        f"description: {_q(f'{name} prices, USD per million tokens')}",
        "models:",
        f"  {_plain(f'{name}/{model}')}:",
        "    input: 0  # edit: USD per million prompt tokens",
        "    output: 0  # edit: USD per million completion tokens",
        f"    source: {_q(PLACEHOLDER_SOURCE)}",
        f"    as_of: {_q(today)}",
        "",
    ])


def _with_alias(text: str, alias: str, provider: str, model: str) -> str:
    """routes.yaml with one alias added at the end of `aliases:` (comments and layout kept)."""
    entry = [f"  {alias}:", "    candidates:", f"      - {{provider: {provider}, model: {_plain(model)}}}"]
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"aliases\s*:", line)), None)
    if start is None:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + "\n".join(["aliases:", *entry]) + "\n"
    if re.match(r"aliases\s*:\s*\{\s*\}\s*(#.*)?$", lines[start]):
        lines[start] = "aliases:"
    end = start + 1
    for j in range(start + 1, len(lines)):
        if re.match(r"[^\s#]", lines[j]):
            break
        if lines[j].strip() and not lines[j].lstrip().startswith("#"):
            end = j + 1
    return "\n".join([*lines[:end], *entry, *lines[end:]]) + "\n"


README = """\
# Recordings of {name}

Each YAML file here is one recorded exchange: the client's OpenAI request, what the upstream
answered, and what the engine is expected to produce (docs/recordings.md describes the format).

From the spec tree's folder:

    gaud-engine spec record --provider {name} --specs .   # seed from the real upstream ({key} set)
    gaud-engine spec test providers.d/{name}.yaml --update  # write the expectations, then review them
    gaud-engine spec test providers.d/{name}.yaml           # replay them all, no network
"""


def _parent(catalog: Any, like: str) -> Any:
    """The spec `--like` names, loaded."""
    if like not in catalog.providers:
        known = ", ".join(sorted(catalog.providers)) or "none"
        problem = "has problems (run `gaud-engine validate`)" if like in catalog.broken else "is not a provider here"
        raise ScaffoldError(f"--like {like} {problem}; providers: {known}")
    return catalog.providers[like]


def scaffold(root: Path, name: str, like: str | None = None, *, fmt: str | None = None,
             model: str = "example-model", today: str | None = None) -> Scaffold:
    """Write providers.d/NAME.yaml (extends LIKE, default openai; or the FMT wire-format template),
    pricing.d/NAME.yaml, a routes.yaml alias and an empty recordings folder with a README.
    Raises ScaffoldError, leaving the tree untouched."""
    root = Path(root)
    if like is not None and fmt is not None:
        raise ScaffoldError("--like and --format exclude each other: extend a spec, or start a wire format")
    if not NAME.match(name):
        raise ScaffoldError(f"{name!r} is not a spec name: letters, digits, '-' and '_', starting with a letter or digit")
    if not model or re.search(r"\s", model):
        raise ScaffoldError(f"{model!r} is not a model id")
    if not (root / "providers.d").is_dir():
        raise ScaffoldError(f"{root} is not a spec tree (no providers.d/); pass --dir")
    catalog = load_catalog(root, environ={})
    spec_path = root / "providers.d" / f"{name}.yaml"
    pricing_path = root / "pricing.d" / f"{name}.yaml"
    routes_path = root / "routes.yaml"
    conventional = root / "tests" / "providers"
    recordings = (conventional / name / "recordings") if conventional.is_dir() else (root / "recordings" / name)
    recordings_key = None if conventional.is_dir() else f"../recordings/{name}"
    key = f"{env_prefix(name)}_API_KEY"
    if fmt is not None:
        spec_text = _format_text(name, fmt, model, recordings_key)
    else:
        parent = _parent(catalog, like or "openai")
        spec_text = _spec_text(name, like or "openai", parent, model, recordings_key)
        renamed = _renamed_env(like or "openai", name, parent.env)
        key = next((new for old, new in renamed.items() if parent.env[old].secret), key)
    for path in (spec_path, pricing_path):
        if path.exists():
            raise ScaffoldError(f"{path} already exists")
    if name in catalog.providers or name in catalog.broken:
        raise ScaffoldError(f"there is already a spec named {name}")
    if name in (catalog.routes.get("aliases") or {}):
        raise ScaffoldError(f"routes.yaml already has an alias {name!r}")
    if recordings.exists() and any(recordings.iterdir()):
        raise ScaffoldError(f"{recordings} already exists and is not empty")
    routes_before = routes_path.read_text(encoding="utf-8") if routes_path.is_file() else None
    routes_after = _with_alias(routes_before or "", name, name, model)
    if name not in ((yaml.safe_load(routes_after) or {}).get("aliases") or {}):
        raise ScaffoldError("could not add the alias to routes.yaml; add it by hand")

    result = Scaffold(recordings=recordings)
    made_dirs = [d for d in (pricing_path.parent, recordings, *recordings.parents) if not d.exists() and root in d.parents]
    try:
        spec_path.write_text(spec_text, encoding="utf-8")
        result.created.append(spec_path)
        pricing_path.parent.mkdir(exist_ok=True)
        pricing_path.write_text(_pricing_text(name, model, today or datetime.date.today().isoformat()), encoding="utf-8")
        result.created.append(pricing_path)
        routes_path.write_text(routes_after, encoding="utf-8")
        (result.changed if routes_before is not None else result.created).append(routes_path)
        recordings.mkdir(parents=True, exist_ok=True)
        readme = recordings / "README.md"
        readme.write_text(README.format(name=name, key=key), encoding="utf-8")
        result.created.append(readme)
        check = load_catalog(root, environ={})
        ours = {str(p.relative_to(root)) for p in (spec_path, pricing_path, routes_path)}
        placeholder = {str(p) for p in placeholder_prices(check)}  # validate reports it until it is edited
        problems = [p for p in check.problems if p.file in ours and str(p) not in placeholder]
        if problems:
            raise ScaffoldError("the scaffold does not validate:\n" + "\n".join(str(p) for p in problems))
    except BaseException:
        for path in result.created:
            path.unlink(missing_ok=True)
        for folder in sorted(made_dirs, key=lambda d: len(d.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if routes_before is not None:
            routes_path.write_text(routes_before, encoding="utf-8")
        raise
    return result
