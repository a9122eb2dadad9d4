"""One server process, started by us and owned by PID: ports, pid files, start, wait,
stop. Each embedded server (postgres.py, valkey.py, seaweed.py) is a ``ManagedServer``."""

from __future__ import annotations

import contextlib
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from worker.supervisor import parent_death_preexec

HOST = "127.0.0.1"

#: The fixed ports of the dev stack (``StackPorts.defaults()``: PostgreSQL, Valkey, SeaweedFS's
#: ten), which ``s3-outbox run`` and ``Settings``' defaults use. They lie in the kernel's range
#: of ephemeral ports, so a free-port search skips them: servers on free ports (a test session,
#: a chaos run) never take a port that ``s3-outbox run`` needs (a test checks the two agree).
DEV_STACK_PORTS = frozenset({55432, 56379, *range(58333, 58342), 48341})


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
    """Return ``count`` distinct ports that are free right now (bind test with port 0), none
    of them in ``DEV_STACK_PORTS``."""
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)  # held until the end, so no port is drawn twice
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in DEV_STACK_PORTS:
                ports.append(port)
        return ports
    finally:
        for sock in socks:
            sock.close()


def free_port_pair(offset: int, *, host: str = HOST, exclude: Sequence[int] = ()) -> int:
    """Return a free port ``p`` such that ``p + offset`` is free too."""
    for _ in range(200):
        (port,) = free_ports(1, host=host)
        other = port + offset
        if other > 65535 or port in exclude or other in exclude or other in DEV_STACK_PORTS:
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
    marker = text.rfind(LOG_MARKER)
    if marker >= 0:
        text = text[marker:]
    return "\n".join(text.splitlines()[-lines:])


LOG_MARKER = "===== devstack: starting "


def process_mentions(pid: int, needle: str) -> psutil.Process | None:
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


def stop_process(proc: psutil.Process, sig: signal.Signals, timeout: float) -> None:
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
            stop_process(proc, self.stop_signal, self.stop_timeout)
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
            header = f"\n{LOG_MARKER}{time.strftime('%Y-%m-%d %H:%M:%S')} =====\n"
            log.write(header.encode() + shlex.join(cmd).encode() + b"\n")
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C in a terminal goes to us, not to the servers
                preexec_fn=parent_death_preexec(self.stop_signal),
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


def port_owners(ports: Sequence[int]) -> dict[int, int | None]:
    owners: dict[int, int | None] = {}
    with contextlib.suppress(psutil.AccessDenied):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports:
                owners[conn.laddr.port] = conn.pid
    return owners
