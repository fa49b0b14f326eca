"""The previous release's code, for the rolling-upgrade tests: extracted from git at the commit
tests/fixtures/previous_release.txt names, and run in subprocesses (`python -m engine ...` with
PYTHONPATH and the working directory in the extracted tree), never imported into this process."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT, TEST_KEY_SECRET

POINTER = ROOT / "tests" / "fixtures" / "previous_release.txt"


def pointer() -> tuple[str, str]:
    """(commit, version) from tests/fixtures/previous_release.txt."""
    lines = [line.split() for line in POINTER.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != 1 or len(lines[0]) != 2 or not re.fullmatch(r"[0-9a-f]{40}", lines[0][0]):
        raise AssertionError(f"{POINTER}: expected one line '<40-hex commit> <version>' besides comments")
    return lines[0][0], lines[0][1]


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=False, capture_output=True, timeout=60)


def extract(into: Path) -> Path:
    """The previous release's tree (`git archive` of its commit) in `into`.

    Outside a git checkout (an unpacked sdist) there is no history to read: skipped, saying so. In a
    checkout without the commit (a shallow clone) the test fails: a skip there would hide that CI
    stopped checking upgrades."""
    commit, version = pointer()
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout: the rolling-upgrade tests read the previous release from git history")
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        pytest.fail(f"the previous release {commit[:12]} ({version}, {POINTER.relative_to(ROOT)}) is not in this "
                    "clone: fetch full history (`git fetch --unshallow`; CI: a checkout with fetch-depth 0)")
    archive = _git("archive", "--format=tar", commit)
    assert archive.returncode == 0, archive.stderr.decode(errors="replace")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    found = tomllib.loads((into / "pyproject.toml").read_text())["project"]["version"]
    assert found == version, f"{POINTER.name} says {commit[:12]} is {version}, its pyproject.toml says {found}"
    return into


class OldRelease:
    """Runs the previous release's code from `tree` against the database at `url`."""

    def __init__(self, tree: Path, url: str) -> None:
        self.tree = tree
        self.url = url

    @property
    def env(self) -> dict[str, str]:
        """The environment of its processes: only its own tree importable (PYTHONPATH, and the
        working directory `python -m` puts first), the database, the HMAC secret."""
        return {
            "PYTHONPATH": str(self.tree),
            "GAUD_DATABASE_URL": self.url,
            "GAUD_SECRET_KEY": TEST_KEY_SECRET,
        }

    def run(self, *args: str) -> str:
        """`python <args>` in the old tree; its stdout, or a failure with its stderr."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GAUD_")}, **self.env}
        done = subprocess.run([sys.executable, *args], check=False, cwd=self.tree, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"previous release: python {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        return done.stdout

    def cli(self, *args: str) -> str:
        """The old `gaud-engine <args>`."""
        return self.run("-m", "engine", *args)

    def python(self, code: str) -> str:
        """`code` run by the old interpreter setup (its `engine` importable); its stdout."""
        return self.run("-c", code)

    def migrate(self) -> list[str]:
        """The old `Store.migrate()` on the database: the names it applied."""
        out = self.python("import json, os; from engine.accounts.store import Store; "
                          "s = Store(os.environ['GAUD_DATABASE_URL'], key_secret=os.environ['GAUD_SECRET_KEY']); "
                          "print(json.dumps(s.migrate())); s.close()")
        return list(json.loads(out))

    def engine_file(self) -> Path:
        """Where the old processes import `engine` from (the test is void unless inside the old tree)."""
        return Path(self.python("import engine; print(engine.__file__)").strip())
