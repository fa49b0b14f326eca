"""Building spec trees for tests from the shipped one."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["copy_models"]

ROOT = Path(__file__).resolve().parent.parent


def copy_models(tree: Path) -> None:
    """Copy models.d/<name>.yaml for every provider spec the tree holds (call after its providers.d/
    is written): the shipped specs keep their model lists there, and a models.d file without its
    spec is a problem of the tree."""
    (tree / "models.d").mkdir(exist_ok=True)
    for spec in (tree / "providers.d").glob("*.yaml"):
        generated = ROOT / "models.d" / spec.name
        if generated.is_file():
            shutil.copy(generated, tree / "models.d" / spec.name)
