"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and each one can fail.

``lint-imports`` runs here, so CI enforces the contracts (``make lint`` runs it too). Each
contract is then shown to bite: in a copy of the packages under tmp_path, an import that breaks
it is planted (the library importing the processes, the wheel importing the harness, a cycle
between the modules of each package, the old ``worker.bench -> worker.run -> worker.cli ->
worker.bench`` cycle made of imports inside functions), and ``lint-imports`` must fail on that
contract and keep the others.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.require import missing

ROOT = Path(__file__).resolve().parents[2]
CONFIG: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
    "importlinter"
]
CONTRACTS: list[dict[str, Any]] = CONFIG["contracts"]


def contract(kind: str, **fields: list[str]) -> dict[str, Any]:
    """The one contract of type ``kind`` whose fields (source_modules, ...) are ``fields``."""
    found = [
        c
        for c in CONTRACTS
        if c["type"] == kind and all(sorted(c.get(k, [])) == sorted(v) for k, v in fields.items())
    ]
    assert len(found) == 1, f"expected one {kind} contract with {fields}: {found}"
    return found[0]


LIBRARY = contract("forbidden", source_modules=["outbox"])
WHEEL = contract("forbidden", source_modules=["outbox", "worker"])
ACYCLIC = contract("acyclic_siblings")


@dataclass(frozen=True)
class Result:
    returncode: int
    status: dict[str, str]  # contract name -> "KEPT" | "BROKEN"
    output: str

    def broken(self) -> set[str]:
        return {name for name, state in self.status.items() if state == "BROKEN"}


def lint_imports(cwd: Path) -> Result:
    """``lint-imports`` (no cache) on the packages and pyproject.toml in ``cwd``."""
    program = Path(sys.executable).with_name("lint-imports")
    if not program.exists():
        found = shutil.which("lint-imports")
        if found is None:
            missing("lint-imports not found (pip install -e '.[test]' installs import-linter)")
        program = Path(found)
    # The packages in cwd, never an installed copy, are the ones analysed.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    done = subprocess.run(
        [str(program), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    status: dict[str, str] = {}
    for c in CONTRACTS:
        match = re.search(rf"^{re.escape(c['name'])} (KEPT|BROKEN)$", output, re.M)
        assert match is not None, f"no verdict for {c['name']!r} in:\n{output}"
        status[c["name"]] = match.group(1)
    return Result(done.returncode, status, output)


def test_the_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0 and not result.broken(), result.output


def test_every_package_of_the_wheel_is_checked_for_cycles() -> None:
    packages = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("outbox", "worker")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert packages <= set(ACYCLIC["ancestors"])


# -- each contract can fail --------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the analysed packages and pyproject.toml, to plant imports in."""
    for package in CONFIG["root_packages"]:
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def plant(tree: Path, path: str, code: str) -> None:
    """Add ``code`` to the module at ``path`` (created when it does not exist)."""
    module = tree / path
    before = module.read_text() if module.exists() else ""
    module.write_text(before + "\n" + code)


def assert_only_broken(result: Result, name: str, *evidence: str) -> None:
    assert result.returncode != 0, result.output
    assert result.broken() == {name}, result.output
    for text in evidence:
        assert text in result.output, result.output


def test_the_planted_copy_is_kept_before_anything_is_planted(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0 and not result.broken(), result.output


def test_the_library_importing_the_processes_breaks_its_contract(tree: Path) -> None:
    assert "worker" in LIBRARY["forbidden_modules"]
    plant(tree, "outbox/planted.py", "import worker.relay\n")
    assert_only_broken(lint_imports(tree), LIBRARY["name"], "outbox.planted -> worker.relay")


def test_the_wheel_importing_the_harness_breaks_its_contract(tree: Path) -> None:
    assert "harness" in WHEEL["forbidden_modules"]
    # Inside a function, as such an import would hide: import-linter counts it all the same.
    plant(tree, "worker/planted.py", "def chaos():\n    from harness import faultproxy\n")
    assert_only_broken(lint_imports(tree), WHEEL["name"], "worker.planted -> harness.faultproxy")


@pytest.mark.parametrize("package", ACYCLIC["ancestors"])
def test_a_cycle_between_modules_of_a_package_breaks_the_acyclic_contract(
    tree: Path, package: str
) -> None:
    folder = package.replace(".", "/")
    plant(tree, f"{folder}/planted_a.py", f"from {package} import planted_b\n")
    plant(tree, f"{folder}/planted_b.py", f"def later():\n    from {package} import planted_c\n")
    plant(tree, f"{folder}/planted_c.py", f"def later():\n    import {package}.planted_a\n")
    assert_only_broken(lint_imports(tree), ACYCLIC["name"], f"No cycles are allowed in {package}.")


def test_the_old_bench_run_cli_cycle_of_imports_inside_functions_is_caught(tree: Path) -> None:
    """worker.bench -> worker.run -> worker.cli -> worker.bench, every import in a function."""
    plant(tree, "worker/bench.py", "def main():\n    from worker.run import run\n")
    plant(tree, "worker/run.py", "def _cli():\n    from worker import cli\n")
    plant(tree, "worker/cli.py", "def _bench():\n    from worker import bench\n")
    result = lint_imports(tree)
    assert_only_broken(result, ACYCLIC["name"], "No cycles are allowed in worker.")
    breakers = re.findall(r"^- \.(\w+) -> \.(\w+)", result.output, re.M)
    assert breakers and all(set(edge) <= {"bench", "run", "cli"} for edge in breakers), (
        result.output
    )
