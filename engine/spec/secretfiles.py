"""Spec variables read from files: the `NAME_FILE` convention of container secrets.

When `ANTHROPIC_API_KEY_FILE` is set, the value of `ANTHROPIC_API_KEY` is that file's content with
one trailing newline (`\\n` or `\\r\\n`) stripped. When both are set the file wins (it is what a
secret mount rotates; the plain variable is often a leftover default), and a warning names both.
An unreadable file reads as unset (the provider is then `not_configured`) and a warning names the
variable and the path, never a value.

Files are read when the spec tree is loaded: at start, and again on each reload (`SIGHUP`,
`POST /admin/reload`), so a rotated file takes effect without a restart. One `with_files` view
reads each file at most once, so every deployment of one load sees the same value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["FILE_SUFFIX", "with_files"]

log = logging.getLogger("gaud.specs")

FILE_SUFFIX = "_FILE"


class _WithFiles(Mapping[str, str]):
    """`environ` where a variable with a `<NAME>_FILE` companion reads that file."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._read: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        path = self._environ.get(name + FILE_SUFFIX, "")
        if not path:
            return self._environ[name]
        if name not in self._read:
            self._read[name] = self._read_file(name, path)
        return self._read[name]

    def _read_file(self, name: str, path: str) -> str:
        if self._environ.get(name):
            log.warning("both %s and %s%s are set; the file wins", name, name, FILE_SUFFIX)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s%s names %s, which cannot be read (%s); %s reads as unset",
                        name, FILE_SUFFIX, path, type(exc).__name__, name)
            return ""
        return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._environ or bool(self._environ.get(name + FILE_SUFFIX)))

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def with_files(environ: Mapping[str, str]) -> Mapping[str, str]:
    """`environ` with `NAME_FILE` variables read (once per view); a view is returned unchanged."""
    return environ if isinstance(environ, _WithFiles) else _WithFiles(environ)
