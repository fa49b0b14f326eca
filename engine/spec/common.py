"""What every compiled part of a provider spec shares: the compile error, env variables, string templates.

The provider compiler (provider.py) and the compilers of the sections it delegates, such as
`api.auth` (credentials/spec.py), use these; keeping them here lets provider.py import those
compilers without their importing provider.py back.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["EnvVar", "SpecCompileError", "jinja_template"]

_JINJA = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
#: `{{ model | path_segment }}`: a value as ONE URL path segment, every byte but RFC 3986's
#: unreserved ones percent-encoded (`/` and `:` too: model ids and ARNs hold them).
_JINJA.filters["path_segment"] = lambda value: quote(str(value), safe="-_.~")


class SpecCompileError(Exception):
    """A spec that passed the schema but cannot be compiled; `pointer` says where."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message


@dataclass(frozen=True)
class EnvVar:
    """One `api.env` entry: an environment variable the spec reads."""

    name: str
    secret: bool = False
    required: bool = False
    base_url: bool = False
    description: str = ""


def jinja_template(source: str, pointer: str) -> jinja2.Template:
    """A string template (URL path, header value) in the sandbox with `StrictUndefined`; a syntax
    error is a SpecCompileError at `pointer`."""
    try:
        return _JINJA.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise SpecCompileError(pointer, f"Jinja2 template error: {exc.message}") from None
