"""Find, parse, validate and compile the spec tree: providers.d/, pricing.d/, routes.yaml.

Every problem is collected (not just the first) as a `SpecError` with file, line and JSON pointer.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource

from ..errors import SpecError
from .catalog import Catalog
from .crossref import cross_reference
from .ingress import IngressCompileError, compile_ingress
from .merge import MergePoints, Merger, merge_points
from .provider import SpecCompileError, compile_provider
from .routes import RoutesError, compile_routes
from .secretfiles import with_files
from .yamlfile import YamlFile, read_yaml

# Catalog lives in catalog.py (what reads it need not import the loader) and is still importable here.
__all__ = ["Catalog", "default_root", "load_catalog", "schema_dir"]


def default_root() -> Path:
    """The spec tree: $GAUD_SPECS_DIR, else the copy bundled in the package, else the source tree."""
    configured = os.environ.get("GAUD_SPECS_DIR")
    if configured:
        return Path(configured)
    bundled = Path(__file__).parent.parent / "_bundled"
    if (bundled / "providers.d").is_dir():
        return bundled
    return Path(__file__).resolve().parent.parent.parent


def serving_root(settings: Any) -> Path:
    """The spec tree a server loads: the `specs.dir` setting (or --specs), else `default_root()`."""
    configured = settings.get("specs.dir")
    return Path(configured) if configured else default_root()


def schema_dir() -> Path:
    bundled = Path(__file__).parent.parent / "_bundled" / "schemas"
    return bundled if bundled.is_dir() else Path(__file__).resolve().parent.parent.parent / "schemas"


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((schema_dir() / f"{name}.schema.json").read_text())
    if name != "ingress":
        return Draft202012Validator(schema)
    # The ingress schema reuses the provider schema's rules and templates by reference.
    provider = json.loads((schema_dir() / "provider.schema.json").read_text())
    registry = Registry().with_resource(provider["$id"], Resource.from_contents(provider))
    return Draft202012Validator(schema, registry=registry)


def release_validators() -> None:
    """Drop the compiled spec-schema validators (a long-running server needs them only to load
    or reload specs; a reload compiles them again)."""
    _validator.cache_clear()
    _merge_points.cache_clear()


def _label(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent if root.name == "_bundled" else root))
    except ValueError:
        return str(path)


def _schema_problems(doc: YamlFile, schema: str) -> list[SpecError]:
    problems = []
    extends = isinstance(doc.data, dict) and "extends" in doc.data
    for found in _validator(schema).iter_errors(doc.data):
        if extends and found.instance is None:
            continue  # a null in a spec that extends another deletes the inherited key (see merge.py)
        error = _missing_slash(found) or (best_match(found.context) if found.context else found)
        pointer, message = _describe(error)
        problems.append(doc.problem(pointer, message))
    problems.sort(key=lambda p: p.line)
    return problems


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


_JSON_TYPES = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "object": "a mapping", "array": "a list", "null": "null",
}


def _what(value: Any) -> str:
    """How a YAML value reads to a spec author."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if hasattr(value, "isoformat"):
        return f"the unquoted date {value.isoformat()}"
    return repr(value)


def _schema_of(error: ValidationError) -> Mapping[str, Any]:
    """The subschema that failed, as a mapping (JSON Schema also allows `true` and `false`)."""
    return error.schema if isinstance(error.schema, Mapping) else {}


def _listed(value: Any) -> list[Any]:
    """A schema keyword's value as a list: `type: string` or `type: [string, "null"]`."""
    return list(value) if isinstance(value, list) else [value]


def _missing_slash(error: ValidationError) -> ValidationError | None:
    """The failure of a JSON pointer written without its leading '/' (`from: messages`), among
    an error's alternatives: it says more than the other branch's "expected a list"."""
    candidate: ValidationError
    for candidate in (error, *(error.context or ())):
        value = candidate.instance
        if (
            candidate.validator == "pattern" and str(candidate.validator_value).startswith("^(/")
            and isinstance(value, str) and value and not value.startswith(("/", "@"))
        ):
            return candidate
    return None


def _describe(error: ValidationError) -> tuple[str, str]:
    """A pointer and a message that says what to do, for one schema violation."""
    pointer = _pointer(error.absolute_path)
    schema_path = list(error.schema_path)
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)'", error.message.split("(")[-1])
        allowed = list((_schema_of(error).get("properties") or {}).keys())
        if extra:
            hint = difflib.get_close_matches(extra[0], allowed, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(allowed)}"
            return f"{pointer}/{_pointer([extra[0]])[1:]}", f"unknown field '{extra[0]}'{suggestion}"
    if error.validator == "enum":
        options = [str(v) for v in _listed(error.validator_value)]
        hint = difflib.get_close_matches(str(error.instance), options, n=1) if isinstance(error.instance, str) else []
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; expected one of: {', '.join(options)}"
        key = error.absolute_path[-1] if error.absolute_path else None
        if isinstance(key, str) and len(schema_path) >= 3 and schema_path[-3] == "properties":
            return pointer, f"unknown {key} {error.instance!r}{suggestion}"  # a named field: `op`, `framing`
        return pointer, f"unknown value {error.instance!r}{suggestion}"
    if error.validator == "required":
        missing = re.findall(r"^'([^']+)'", error.message)
        name = missing[0] if missing else error.message
        why = _schema_of(error).get("description") if schema_path[-2:-1] == ["then"] else None
        return pointer, f"missing required field '{name}'; add it" + (f" ({why})" if why else "")
    if error.validator == "type":
        expected = _listed(error.validator_value)
        wanted = " or ".join(_JSON_TYPES.get(t, t) for t in expected)
        message = f"expected {wanted}, got {_what(error.instance)}"
        if "string" in expected and not isinstance(error.instance, (dict, list)):
            message += " (quote it)"
        return pointer, message
    if error.validator == "pattern" and _missing_slash(error) is error:
        return pointer, f"a JSON pointer starts with '/': write '/{error.instance}'"
    if error.validator == "pattern":
        described = _schema_of(error).get("description")
        fix = f": {described}" if described else ""
        return pointer, f"{error.instance!r} does not match {error.validator_value}{fix}"
    return pointer, error.message


@cache
def _merge_points() -> MergePoints:
    """Where provider specs may merge a list into the one they extend, read from the schema."""
    return merge_points(json.loads((schema_dir() / "provider.schema.json").read_text()))


def _merged(doc: YamlFile, base: dict[str, Any] | None, data: dict[str, Any], problems: list[SpecError]) -> dict[str, Any] | None:
    """`data` laid over its parent's resolved `base` (None: no parent), or None when a list merge
    did not fit; each problem is reported at its line."""
    merger = Merger(_merge_points())
    merged: dict[str, Any] = data if base is None else merger.merge(base, data)
    if base is None:
        merger.check_strays(data)
    problems.extend(doc.problem(pointer, message) for pointer, message in merger.problems)
    if merger.problems:
        return None
    if base is not None:  # a null that deleted a key the merged spec needs (nulls pass the file's own check)
        missing = [doc.problem(*_describe(e)) for e in _validator("provider").iter_errors(merged) if e.validator == "required"]
        problems.extend(missing)
        if missing:
            return None
    return merged


def _resolve_extends(
    name: str,
    docs: Mapping[str, YamlFile],
    problems: list[SpecError],
    trail: tuple[str, ...] = (),
    *,
    broken: set[str] | frozenset[str] = frozenset(),
    cycles: set[frozenset[str]] | None = None,
) -> dict[str, Any] | None:
    """The spec with its `extends` chain merged in, or None (the problem is appended once).

    A parent that exists but failed to load is not reported again; a cycle is reported once,
    at the file where it is first found.
    """
    doc = docs[name]
    data = dict(doc.data)
    parent = data.pop("extends", None)
    if parent is None:
        return _merged(doc, None, data, problems)
    if parent in trail or parent == name:
        members = (*trail, name)
        loop = list(members[members.index(parent):])  # the files in the cycle, ending with this one
        if cycles is None or frozenset(loop) not in cycles:
            if cycles is not None:
                cycles.add(frozenset(loop))
            cycle = " -> ".join([name, *loop[:-1], name])
            problems.append(doc.problem("/extends", f"extends cycle: {cycle}; remove `extends` from one of them"))
        return None
    if parent not in docs:
        if parent in broken:
            return None
        options = difflib.get_close_matches(parent, [*docs, *broken], n=1)
        hint = f"; did you mean '{options[0]}'?" if options else "; it must name a file in providers.d/ (without .yaml)"
        problems.append(doc.problem("/extends", f"extends unknown provider '{parent}'{hint}"))
        return None
    base = _resolve_extends(parent, docs, problems, (*trail, name), broken=broken, cycles=cycles)
    if base is None:
        return None
    base.pop("models", None)  # a models list is never inherited
    base.pop("catalog", None)  # nor where the model list comes from
    return _merged(doc, base, data, problems)


def _load_dir(catalog: Catalog, folder: str, schema: str) -> dict[str, YamlFile]:
    docs: dict[str, YamlFile] = {}
    directory = catalog.root / folder
    if not directory.is_dir():
        return docs
    for path in sorted(directory.glob("*.yaml")):
        doc, problem = read_yaml(path, _label(path, catalog.root))
        if problem is not None or doc is None or not isinstance(doc.data, dict):
            if problem is None:
                assert doc is not None
                problem = doc.problem("", "the file must hold a mapping (`key: value` lines)")
            catalog.problems.append(problem)
            if schema == "pricing":
                catalog.broken_pricing = True
            elif schema != "models":  # a broken models.d file leaves its provider with its own models
                catalog.broken.add(path.stem)
            continue
        schema_problems = _schema_problems(doc, schema)
        catalog.problems.extend(schema_problems)
        catalog.files[doc.label] = doc
        if schema_problems and schema == "pricing":
            _load_valid_prices(catalog, doc, schema_problems)
        elif schema_problems:
            if schema != "models":
                catalog.broken.add(path.stem)
        else:
            docs[path.stem] = doc
    return docs


def _load_valid_prices(catalog: Catalog, doc: YamlFile, problems: list[SpecError]) -> None:
    """Keep the sound entries of a pricing file with problems; the unsound ones are only remembered,
    so a model priced by a broken entry is not also reported as unpriced."""
    models = doc.data.get("models")
    if not isinstance(models, dict):
        catalog.broken_pricing = True
        return
    bad = set()
    for problem in problems:
        tokens = problem.pointer.split("/")
        if len(tokens) >= 3 and tokens[1] == "models":
            bad.add(tokens[2].replace("~1", "/").replace("~0", "~"))
    for model, price in models.items():
        if str(model) in bad or not isinstance(price, dict):
            catalog.broken_prices.add(str(model))
        else:
            catalog.pricing[str(model)] = {**price, "_file": doc.label, "_pointer": "/models/" + _pointer([model])[1:]}


def _with_generated(catalog: Catalog, name: str, spec: dict[str, Any], generated: YamlFile | None) -> dict[str, Any]:
    """The spec with models.d/<name>.yaml's models added. A hand-written model (the spec's own
    `models:`) wins: a generated model named by one of its ids or aliases is dropped, and so is a
    generated alias that names a hand-written model."""
    if generated is None:
        return spec
    own = spec.get("models") or {}
    taken = set(own) | {str(a) for info in own.values() for a in (info or {}).get("aliases", ())}
    models = {}
    for model_id, info in (generated.data.get("models") or {}).items():
        if str(model_id) in taken:
            continue
        entry = {k: v for k, v in info.items() if k not in ("pinned", "deprecation")}
        if "aliases" in entry:
            entry["aliases"] = [a for a in entry["aliases"] if a not in taken]
        models[str(model_id)] = entry
        catalog.generated_models.setdefault(name, {})[str(model_id)] = generated.label
    return {**spec, "models": {**models, **own}}


def _compile_routes(catalog: Catalog, doc: YamlFile, environ: Mapping[str, str] | None) -> None:
    """Keep routes.yaml and its compiled table; a bad CEL rule is a problem at its line."""
    try:
        catalog.route_table = compile_routes(doc.data)
    except RoutesError as exc:
        catalog.problems.append(doc.problem(exc.pointer, exc.message))
        return
    catalog.routes = doc.data
    _bind_deployments(catalog, doc, os.environ if environ is None else environ)


def _bind_deployments(catalog: Catalog, doc: YamlFile, environ: Mapping[str, str]) -> None:
    """The provider spec of each candidate with its own `env` or `headers`, built once here."""
    assert catalog.route_table is not None
    for alias, route in catalog.route_table.routes.items():
        for i, candidate in enumerate(route.candidates):
            provider = catalog.providers.get(candidate.provider)
            if provider is None or not (candidate.env or candidate.headers):
                continue
            try:
                candidate.spec = provider.for_deployment(candidate.deployment, candidate.env, candidate.headers, environ)
            except SpecCompileError as exc:
                catalog.problems.append(doc.problem(f"/aliases/{_pointer([alias])[1:]}/candidates/{i}{exc.pointer}", exc.message))


def _load_ingress(catalog: Catalog) -> None:
    """ingress.d/: client-facing formats; two specs may not claim one route."""
    claimed: dict[str, str] = {}
    for name, doc in _load_dir(catalog, "ingress.d", "ingress").items():
        try:
            spec = compile_ingress(name, doc.label, doc.data)
        except IngressCompileError as exc:
            catalog.problems.append(doc.problem(exc.pointer, exc.message))
            continue
        for kind, path in spec.routes.items():
            if path in claimed or path in ("/v1/chat/completions", "/chat/completions"):
                catalog.problems.append(doc.problem(f"/routes/{kind}", f"route {path} is already served ({claimed.get(path, 'chat')})"))
            claimed[path] = name
        catalog.problems.extend(_passthrough_problems(catalog, doc))
        catalog.ingress[name] = spec


def _passthrough_problems(catalog: Catalog, doc: YamlFile) -> list[SpecError]:
    """An ingress spec's `passthrough.formats` must each be some provider spec's `wire_format`
    (unless a provider spec is broken: its format is then unknown)."""
    spoken = {p.wire_format.name for p in catalog.providers.values() if p.wire_format is not None}
    formats = (doc.data.get("passthrough") or {}).get("formats") or []
    return [] if catalog.broken else [
        doc.problem(f"/passthrough/formats/{i}", f"no provider spec speaks the wire format '{fmt}' "
                    f"(`wire_format.name`; spoken: {', '.join(sorted(spoken)) or 'none'})")
        for i, fmt in enumerate(formats) if fmt not in spoken
    ]


def load_catalog(root: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Catalog:
    """Load and compile a spec tree. Problems are collected in `catalog.problems`.

    Example: `catalog = load_catalog(); catalog.raise_for_problems()`. Spec variables are read
    from `environ` (default: the process environment), `NAME_FILE` ones from their files
    (engine.spec.secretfiles), once per load.
    """
    environ = with_files(os.environ if environ is None else environ)
    catalog = Catalog(root=Path(root) if root is not None else default_root())
    provider_docs = _load_dir(catalog, "providers.d", "provider")
    generated_docs = _load_dir(catalog, "models.d", "models")
    cycles: set[frozenset[str]] = set()
    visiting: set[str] = set()

    def compile_one(name: str) -> None:
        """Compile a provider after the one it extends, so a broken base is reported once, not per child."""
        if name in catalog.providers or name in catalog.broken or name in visiting:
            return
        visiting.add(name)
        try:
            _compile(name)
        finally:
            visiting.discard(name)

    def _compile(name: str) -> None:
        doc = provider_docs[name]
        parent = doc.data.get("extends")
        if isinstance(parent, str) and parent in provider_docs:
            compile_one(parent)
            if parent in catalog.broken:
                catalog.broken.add(name)  # the base's problem is already reported
                return
        merged = _resolve_extends(name, provider_docs, catalog.problems, broken=catalog.broken, cycles=cycles)
        if merged is None:
            catalog.broken.add(name)
            return
        merged = _with_generated(catalog, name, merged, generated_docs.get(name))
        try:
            catalog.providers[name] = compile_provider(name, doc.label, merged, environ)
        except SpecCompileError as exc:
            catalog.problems.append(doc.problem(exc.pointer, exc.message))
            catalog.broken.add(name)

    for name in list(provider_docs):
        compile_one(name)
    for name, doc in generated_docs.items():
        if name not in provider_docs and name not in catalog.broken:
            catalog.problems.append(doc.problem("", f"no provider spec '{name}' in providers.d/ for these models"))
    catalog.providers = {name: catalog.providers[name] for name in provider_docs if name in catalog.providers}
    for doc in _load_dir(catalog, "pricing.d", "pricing").values():
        for model, price in (doc.data.get("models") or {}).items():
            catalog.pricing[str(model)] = {**price, "_file": doc.label, "_pointer": "/models/" + _pointer([model])[1:]}
    routes_path = catalog.root / "routes.yaml"
    if routes_path.is_file():
        routes_doc, problem = read_yaml(routes_path, _label(routes_path, catalog.root))
        if problem is not None:
            catalog.problems.append(problem)
        elif routes_doc is not None:
            catalog.files[routes_doc.label] = routes_doc
            problems = _schema_problems(routes_doc, "routes") if isinstance(routes_doc.data, dict) else [
                routes_doc.problem("", "the file must hold a mapping")
            ]
            catalog.problems.extend(problems)
            if not problems:
                _compile_routes(catalog, routes_doc, environ)
    _load_ingress(catalog)
    catalog.problems.extend(cross_reference(catalog))
    return catalog
