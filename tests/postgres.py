"""
A real PostgreSQL server for a test (Debian's `postgresql` package): a cluster made in a
temporary directory, listening on 127.0.0.1 on a port of its own, stopped and started by
the test. Its server binaries refuse to run as root: as root they run as `postgres`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None) if Path("/usr/lib/postgresql").exists() else None


def available() -> bool:
    return BIN is not None and (BIN / "initdb").exists()


def _as_server(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


class PostgresServer:
    def __init__(self) -> None:
        assert BIN is not None
        self.directory = Path(tempfile.mkdtemp(prefix="mt-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "cluster"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        subprocess.run(_as_server(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
                       check=True, capture_output=True)
        self.start()
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE fleet"],
                       check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/fleet"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_server(str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l",
                                  str(self.directory / "log"), "start"), check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(_as_server(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"), capture_output=True)

    def query(self, sql: str) -> list[tuple[str, ...]]:
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "fleet", "-At", "-F", "|",
                              "-c", sql], check=True, capture_output=True, text=True).stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def serve_tls(self, cert: Path | None, key: Path | None = None) -> None:
        """TLS with this certificate and key (L{None}: off again), taken at a reload."""
        if cert is not None and key is not None:
            for source, name in ((cert, "server.crt"), (key, "server.key")):
                target = self.directory / name
                shutil.copy(source, target)
                target.chmod(0o600)
                if os.geteuid() == 0:
                    shutil.chown(target, "postgres", "postgres")
            self.query(f"ALTER SYSTEM SET ssl_cert_file = '{self.directory / 'server.crt'}'")
            self.query(f"ALTER SYSTEM SET ssl_key_file = '{self.directory / 'server.key'}'")
        self.query(f"ALTER SYSTEM SET ssl = {'on' if cert is not None else 'off'}")
        self.query("SELECT pg_reload_conf()")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
