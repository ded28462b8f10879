"""
The command line of C{twistd modeltrack}, with C{MODELTRACK_*} environment fallbacks,
turned into frozen L{Settings}. A bad value stops start-up with one line naming the
option, before anything listens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from twisted.python import usage

from modeltrack.controls.cache import CacheBackend
from modeltrack.controls.gate import UnmeteredBillable
from modeltrack.controls.redis_ledger import RedisFailure
from modeltrack.observe.logs import LogFormat
from modeltrack.ops.checks import (
    DEFAULT_ADMIN_LISTEN,
    check_admin,
    check_ca_bundle,
    check_data_dir,
    check_endpoint,
    check_log_file,
    check_otlp,
    check_providers,
    check_redis,
    check_store,
    check_tls,
    check_upstreams,
    check_webhook,
    check_workers,
    choice,
    choices,
    days,
    environment_name,
    positive,
)
from modeltrack.ops.settings import ConfigError, Settings
from modeltrack.providers import registry
from modeltrack.providers.dialect import Dialect
from modeltrack.store.journal import FsyncPolicy

__all__ = ["ConfigError", "Options", "ProxyOptions", "Settings", "options_for", "settings_from"]

StrEnumT = TypeVar("StrEnumT", bound=StrEnum)

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


def provider_options(dialects: Iterable[Dialect]) -> tuple[list[list[Any]], list[list[Any]]]:
    """
    The parameters and flags each dialect declares (its origin, region, signing).
    """
    parameters: list[list[Any]] = []
    flags: list[list[Any]] = []
    for dialect in dialects:
        if dialect.origin is not None:
            origin = dialect.origin
            default = f", default {origin.default}" if origin.default else ""
            parameters.append([origin.option, None, None, f"{origin.about} [env {environment_name(origin.option)}{default}]."])
        if dialect.region is not None:
            region = dialect.region
            parameters.append([region.option, None, None, f"{region.about} [env {environment_name(region.option)}]."])
        if dialect.signing is not None:
            flags.append([dialect.signing.option, None, dialect.signing.about])
    return parameters, flags


class ProxyOptions(usage.Options):
    """
    C{twistd modeltrack}'s own options; those of the providers are added by
    L{options_for} (L{Options}: the registry's).
    """

    synopsis = "[options]"
    dialects: tuple[Dialect, ...] = ()
    longdesc = (
        "Run the modeltrack proxy: point an OpenAI SDK's base_url at http://HOST:PORT/v1 "
        "and an Anthropic SDK's at http://HOST:PORT; every call is forwarded unchanged and "
        "recorded as one cost event in DATA_DIR/events.jsonl."
    )
    optFlags = [
        ["access-log", None, "Log one line per request (method, path, status, bytes, duration, request id)."],
        ["cache", None, "Answer identical non-streaming calls of the same caller from a response cache."],
        ["no-fast-path", None, "Use only Twisted's public API (Agent, plain transports): slower; for a Twisted whose internals the fast path does not know."],
        ["cache-sampled", None, "Also cache calls sampled at a temperature above 0 (or with none: the providers default to 1)."],
    ]
    optParameters = [
        ["data-dir", None, None, "Where events and config live [env MODELTRACK_DATA_DIR, default ./data]."],
        ["workers", None, "1", "Worker processes accepting on the listeners (auto: one per CPU); the process that binds them supervises them."],
        ["redis-url", None, None, "Hold budgets in Redis, shared by every process and instance: redis://HOST:PORT/DB or rediss:// (TLS) [env MODELTRACK_REDIS_URL]."],
        ["redis-password-file", None, None, "A file holding the Redis password (else the URL's)."],
        ["cache-backend", None, "memory", f"Where --cache keeps answers: {choices(CacheBackend)} (redis: shared by every process and instance; needs --redis-url)."],
        ["otlp-endpoint", None, None, "Export a span per call and token metrics over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (needs modeltrack[otel]) [env MODELTRACK_OTLP_ENDPOINT]."],
        ["redis-failure", None, "closed", f"With Redis out of reach ({choices(RedisFailure)}): closed refuses calls under a budget (503); open decides in this process."],
        ["fsync", None, "interval", f"When the event log is fsynced: {choices(FsyncPolicy)} (always: every batch; interval: once a second)."],
        ["rotate-mb", None, "64", "Seal events.jsonl into a segment when it reaches this many MiB (also at UTC midnight)."],
        ["max-body-mb", None, "32", "Largest request body accepted, in MiB; larger ones get 413."],
        ["connect-timeout", None, "10", "Seconds to connect to a provider."],
        ["headers-timeout", None, "600", "Seconds from sending a request to the provider's response headers."],
        ["idle-timeout", None, "300", "Longest silence, in seconds, between two chunks of a response."],
        ["head-timeout", None, "10", "Seconds a request's head (request line and headers) has to arrive whole; a late one gets 408."],
        ["drain-seconds", None, "30", "On stop, seconds to let in-flight calls finish before aborting them."],
        ["pool-size", None, "64", "Idle upstream connections kept per provider."],
        ["tls-cert", None, None, "PEM certificate (and chain) served on the --listen-tls endpoints; reloaded on SIGHUP."],
        ["tls-key", None, None, "PEM private key for --tls-cert."],
        ["ca-bundle", None, None, "PEM file of the CAs that upstream certificates must chain to, instead of the system trust store (e.g. a corporate egress proxy's CA)."],
        ["cache-entries", None, "10000", "Most answers the response cache keeps."],
        ["cache-mb", None, "256", "Most MiB the response cache keeps."],
        ["cache-ttl", None, "3600", "Seconds a cached answer is served."],
        ["unmetered-billable", None, "block-under-budget", f"What becomes of a call the provider bills but its answer cannot meter (fine-tuning, vector stores, containers, WebRTC calls, ...): {choices(UnmeteredBillable)} (block-under-budget: refused for a caller a block budget holds). Each leaves an unpriced event."],
        ["log-format", None, "text", f"{choices(LogFormat)}: text (one line per event: time, namespace, level, message) or json (one JSON object per line, for log shippers)."],
        ["config-poll-seconds", None, "2", "How often budgets.json, routing.json and pricing.json are checked for changes."],
        ["admin-listen", None, None, f"Twisted endpoint for the admin API, /metrics and the dashboard, or 'none' [env MODELTRACK_ADMIN_LISTEN, default {DEFAULT_ADMIN_LISTEN}]. Anything but loopback needs --admin-token-file."],
        ["admin-token-file", None, None, "File holding the admin bearer token (re-read on SIGHUP) [env MODELTRACK_ADMIN_TOKEN_FILE]."],
        ["alert-webhook", None, None, "URL to POST a JSON alert (Slack-compatible 'text') to when a budget passes its warning percent or its limit [env MODELTRACK_ALERT_WEBHOOK]."],
        ["reserve-output-tokens", None, "4096", "Output tokens a budget reserves for a call that names no max_tokens (or max_output_tokens, max_completion_tokens)."],
        ["reserve-context-tokens", None, "200000", "Input tokens a budget reserves for content a call refers to (URL, file id, earlier response, server-side tool) when the model's context window is not known."],
        ["index-seconds", None, "10", "How often the SQLite index catches up with the event log (the admin API also catches up before each answer)."],
        ["index-retain-days", None, None, "Drop the index's raw rows older than N days (never its rollups, which every report reads); off by default."],
        ["log-retain-days", None, None, "Delete sealed segments of the event log older than N days once the index (and a --store) has them whole; off by default."],
        ["store", None, None, "The fleet's PostgreSQL store, postgresql://user@host/db (sslmode=verify-full with --ca-bundle): this instance's events are shipped to it, exactly once [env MODELTRACK_STORE; pip install 'modeltrack[postgres]']."],
        ["store-password-file", None, None, "File holding the store's password (a systemd credential: $CREDENTIALS_DIRECTORY/name)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["listen-tls"] = []
        self["upstream"] = []

    def opt_listen(self, description: str) -> None:
        """
        Twisted endpoint to listen on; repeatable [env MODELTRACK_LISTEN, space-separated; default tcp:8080:interface=127.0.0.1].
        """
        self["listen"].append(description)

    def opt_upstream(self, spec: str) -> None:
        """
        An OpenAI-compatible upstream, NAME=URL (e.g. groq=https://api.groq.com/openai), served at /NAME/v1/...; repeatable [env MODELTRACK_UPSTREAMS, space-separated].
        """
        self["upstream"].append(spec)

    def opt_listen_tls(self, description: str) -> None:
        """
        Twisted endpoint to serve TLS on (with --tls-cert and --tls-key), e.g. tcp:8443 or systemd:domain=INET:name=proxy; repeatable, alongside --listen.
        """
        self["listen-tls"].append(description)

    def parseOptions(self, options: Any = None) -> None:
        self.argv = tuple(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        try:
            self.settings = settings_from(self, os.environ)
        except ConfigError as e:
            # twistd would print its whole usage text before a UsageError; one line
            # naming the option is what an operator reading a journal needs.
            sys.stderr.write(f"modeltrack: {e}\n")
            raise SystemExit(2) from None


def settings_from(options: usage.Options, environ: Mapping[str, str]) -> Settings:
    listen_tls = tuple(options["listen-tls"])
    listen = tuple(options["listen"]) or tuple(environ.get("MODELTRACK_LISTEN", "").split())
    if not listen and not listen_tls:
        listen = (DEFAULT_LISTEN,)
    for description in listen + listen_tls:
        check_endpoint(description)
    if listen_tls and not (options["tls-cert"] and options["tls-key"]):
        raise ConfigError("--listen-tls: needs --tls-cert and --tls-key")
    data_dir = Path(options["data-dir"] or environ.get("MODELTRACK_DATA_DIR") or "data")
    check_data_dir(data_dir)
    dialects: tuple[Dialect, ...] = getattr(options, "dialects", registry.DIALECTS)
    return Settings(
        listen=listen,
        listen_tls=listen_tls,
        data_dir=data_dir.resolve(),
        **check_providers(options, environ, dialects),
        fsync=choice(options, "fsync", FsyncPolicy),
        rotate_bytes=int(positive(options, "rotate-mb") * (1 << 20)),
        max_body=int(positive(options, "max-body-mb") * (1 << 20)),
        connect_timeout=positive(options, "connect-timeout"),
        headers_timeout=positive(options, "headers-timeout"),
        idle_timeout=positive(options, "idle-timeout"),
        head_timeout=positive(options, "head-timeout"),
        drain_seconds=positive(options, "drain-seconds", allow_zero=True),
        pool_size=int(positive(options, "pool-size")),
        access_log=bool(options["access-log"]),
        ca_bundle=check_ca_bundle(options["ca-bundle"]),
        **check_tls(options["tls-cert"], options["tls-key"]),
        cache=bool(options["cache"]),
        cache_sampled=bool(options["cache-sampled"]),
        cache_entries=int(positive(options, "cache-entries")),
        cache_bytes=int(positive(options, "cache-mb") * (1 << 20)),
        cache_ttl=positive(options, "cache-ttl"),
        config_poll_seconds=positive(options, "config-poll-seconds"),
        log_format=choice(options, "log-format", LogFormat),
        unmetered_billable=choice(options, "unmetered-billable", UnmeteredBillable),
        log_file=check_log_file(getattr(options, "parent", None)),
        **check_admin(options, environ, listen + listen_tls),
        alert_webhook=check_webhook(options["alert-webhook"] or environ.get("MODELTRACK_ALERT_WEBHOOK") or None),
        index_seconds=positive(options, "index-seconds"),
        index_retain_days=days(options, "index-retain-days"),
        **check_store(options, environ),
        log_retain_days=days(options, "log-retain-days"),
        reserve_output_tokens=int(positive(options, "reserve-output-tokens")),
        reserve_context_tokens=int(positive(options, "reserve-context-tokens")),
        fast_path=not options["no-fast-path"],
        **check_workers(options, environ, data_dir),
        **check_redis(options, environ),
        otlp_endpoint=check_otlp(options, environ),
        upstreams=check_upstreams(
            tuple(options["upstream"]) or tuple(environ.get("MODELTRACK_UPSTREAMS", "").split()), dialects
        ),
    )


def options_for(dialects: tuple[Dialect, ...]) -> type[ProxyOptions]:
    """
    C{twistd modeltrack}'s options with those C{dialects} declare.
    """
    parameters, flags = provider_options(dialects)
    return type("Options", (ProxyOptions,), {"optParameters": parameters, "optFlags": flags, "dialects": dialects})


#: The options of C{twistd modeltrack}: the proxy's, and every registered provider's.
Options = options_for(registry.DIALECTS)
