"""
The proxy's settings: made once, checked, from twistd's options and the C{MODELTRACK_*}
environment (L{modeltrack.ops.options}), and read by the service that builds the parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modeltrack.controls.cache import CacheBackend
from modeltrack.controls.gate import UnmeteredBillable
from modeltrack.controls.redis_ledger import RedisFailure
from modeltrack.observe.logs import LogFormat
from modeltrack.store.journal import FsyncPolicy


class ConfigError(Exception):
    """
    A setting that cannot work; the message starts with the option's name.
    """


@dataclass(frozen=True)
class Settings:
    """
    Everything the running proxy is configured with. Frozen: a setting changes with a
    restart only (what SIGHUP re-reads, the control files, the TLS certificate and the
    admin token, is read from the files it names, not from here).
    """

    listen: tuple[str, ...]
    data_dir: Path
    #: Each provider's origin by provider name, where one was given; the registry
    #: serves the others at their defaults, or (those with none) not at all.
    urls: Mapping[str, str] = field(default_factory=dict)
    #: A provider's region, where its dialect takes one (Bedrock's).
    regions: Mapping[str, str] = field(default_factory=dict)
    #: The providers whose calls the proxy signs with its own credentials.
    signing: frozenset[str] = frozenset()
    #: OpenAI-compatible upstreams: (name, origin) pairs.
    upstreams: tuple[tuple[str, str], ...] = ()
    #: The shared ledger's Redis (redis:// or rediss://); L{None}: budgets in this process.
    redis_url: str | None = None
    redis_password: str | None = None
    redis_failure: RedisFailure = RedisFailure.CLOSED
    #: What becomes of a call billed but not meterable from its answer.
    unmetered_billable: UnmeteredBillable = UnmeteredBillable.BLOCK_UNDER_BUDGET
    #: Where the response cache lives: this process's memory, or Redis (shared).
    cache_backend: CacheBackend = CacheBackend.MEMORY
    #: An OTLP/HTTP collector's base URL for spans and token metrics; L{None}: no export.
    otlp_endpoint: str | None = None
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    rotate_bytes: int = 64 << 20
    max_body: int = 32 << 20
    connect_timeout: float = 10.0
    headers_timeout: float = 600.0
    idle_timeout: float = 300.0
    head_timeout: float = 10.0
    drain_seconds: float = 30.0
    pool_size: int = 64
    access_log: bool = False
    ca_bundle: Path | None = None
    tls_cert: Path | None = None
    listen_tls: tuple[str, ...] = ()
    tls_key: Path | None = None
    cache: bool = False
    cache_sampled: bool = False
    cache_entries: int = 10_000
    cache_bytes: int = 256 << 20
    cache_ttl: float = 3600.0
    config_poll_seconds: float = 2.0
    log_format: LogFormat = LogFormat.TEXT
    #: Where the log is written (twistd's C{--logfile}); L{None}: standard output.
    log_file: Path | None = None
    #: None: no admin listener (tests and embedders build one only when asked).
    admin_listen: str | None = None
    admin_token: bytes | None = None
    admin_token_file: Path | None = None
    alert_webhook: str | None = None
    index_seconds: float = 10.0
    #: Days raw index rows, and indexed sealed segments of the log, are kept (None: always).
    index_retain_days: int | None = None
    log_retain_days: int | None = None
    #: The fleet's PostgreSQL store (its URL holds no password) and its password file.
    store: str | None = None
    store_password_file: Path | None = None
    reserve_output_tokens: int = 4096
    reserve_context_tokens: int = 200_000
    fast_path: bool = True
    #: Worker processes serving the listeners (1: this process serves them itself).
    workers: int = 1
    #: Which worker this process is, and the listeners it was handed by the process that
    #: bound them: (option, file descriptor) pairs. Set only in a worker.
    worker: int = 0
    inherited: tuple[tuple[str, int], ...] = ()
    #: The plugin's own arguments, as given: what a worker is started with.
    argv: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The states given as their words (by an embedder, a test) are held as members.
        for name, kind in (("fsync", FsyncPolicy), ("redis_failure", RedisFailure), ("cache_backend", CacheBackend),
                           ("log_format", LogFormat), ("unmetered_billable", UnmeteredBillable)):
            object.__setattr__(self, name, kind(getattr(self, name)))
