"""``s3-outbox run``: the whole system on one machine, from any folder.

Starts the embedded servers (PostgreSQL, Valkey, SeaweedFS from wheels; 127.0.0.1 only; data
in ``./.data``; on the fixed ports that ``Settings``' defaults name, so ``s3-outbox status`` in
another terminal needs no variables) unless S3OUTBOX_DATABASE_URL, S3OUTBOX_REDIS_URL and
S3OUTBOX_S3_ENDPOINT_URL are all set, applies the migrations, starts every process of
``worker.processes`` (the Procfile's), and runs the demo (``worker.demo``). The first Ctrl-C
or SIGTERM stops everything it started.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import psycopg

from outbox import Settings, migrate
from worker.demo import demo_files, large_file_size, run_demo, say
from worker.processes import PROCESSES, command
from worker.servers import servers
from worker.service import StopFlag
from worker.supervisor import Supervisor


def run(
    demo: bool = True,
    files: list[str] | None = None,
    exit_after_demo: bool = False,
    data_dir: Path | None = None,
    free_ports: bool = False,
) -> int:
    """Returns the exit status: 0 when stopped by a signal or after a demo that settled."""
    data_dir = (data_dir or Path.cwd() / ".data").resolve()
    stop = StopFlag()
    stop.install()
    with servers(data_dir, default_ports=not free_ports, say=say) as (server_env, _stack):
        if stop.is_set():  # a signal while the servers started: stop them, start nothing
            say("stopping")
            return 0
        os.environ.update(server_env)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        settings = Settings()
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            migrate(conn)
        say("schema up to date")
        names = list(PROCESSES)
        if importlib.util.find_spec("fastapi") is None:
            say("no web API: it needs pip install 's3-outbox[api]'")
            names.remove("web")
        with Supervisor(env, cwd=data_dir.parent) as procs:
            for name in names:
                if stop.is_set():
                    break
                argv = command(name)
                procs.start(name, argv)
                say(f"started {name} (pid {procs.pid(name)}): {' '.join(argv)}")
            if "web" in names:
                say(
                    f"upload page and HTTP API: http://127.0.0.1:{settings.api_port}/"
                    " (docs at /docs)"
                )
            ok = True
            if demo and not stop.is_set():
                paths = (
                    [Path(f) for f in files]
                    if files
                    else demo_files(data_dir, large_bytes=large_file_size(settings))
                )
                ok = run_demo(settings, paths, stop=stop)
                say("demo finished" if ok else "demo did not settle in time")
            if stop.is_set():
                say("stopping")
                return 0
            if exit_after_demo:
                say("stopping")
                return 0 if ok else 1
            say(
                f"everything is running; metrics on :{settings.relay_metrics_port} (relay), "
                f":{settings.worker_metrics_port} (workers), :{settings.sweeper_metrics_port}"
                " (sweeper). Ctrl-C stops it all."
            )
            while not stop.wait(1.0):
                if dead := procs.dead():
                    say(f"process exited: {', '.join(dead)}; stopping")
                    return 1
            say("stopping")
            return 0
