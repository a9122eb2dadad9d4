"""The embedded servers: PostgreSQL, Valkey (Redis) and SeaweedFS (S3) from PyPI wheels, the
zero-setup default of ``s3-outbox run`` and of the tests (extra ``[embedded]``).

Every server is a real process started with ``subprocess.Popen``, bound to 127.0.0.1 only,
owned by PID (no Docker, no daemonizing), logging to ``<data_dir>/<server>/server.log`` and
recording its PID in ``<data_dir>/<server>/server.pid`` so that a later run on the same data
directory can find and stop a server left over by a crashed run. On Linux each child also
gets a parent-death signal, so servers do not outlive the process that started them.

``python -m worker.embedded`` (``s3-outbox dev-servers``) runs them in the foreground.
"""

from worker.embedded.process import HOST, DevStackError, ManagedServer, free_ports, port_is_free
from worker.embedded.seaweed import DEFAULT_ACCESS_KEY, DEFAULT_BUCKET, DEFAULT_SECRET_KEY
from worker.embedded.stack import (
    EmbeddedStack,
    StackPorts,
    StackUrls,
    embedded_stack,
)

__all__ = [
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_BUCKET",
    "DEFAULT_SECRET_KEY",
    "HOST",
    "DevStackError",
    "EmbeddedStack",
    "ManagedServer",
    "StackPorts",
    "StackUrls",
    "embedded_stack",
    "free_ports",
    "port_is_free",
]
