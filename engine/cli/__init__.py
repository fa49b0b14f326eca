"""The `gaud-engine` command line: serving, validation, spec authoring and replay, keys and usage."""

from .commands import main

__all__ = ["main"]
