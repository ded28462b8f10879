"""
The command line of C{twistd modeltrack}, with C{MODELTRACK_*} environment fallbacks,
turned into frozen L{Settings}. A bad value stops start-up with one line naming the
option, before anything listens.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict, TypeVar
from urllib.parse import urlsplit

from twisted.python import usage

from modeltrack.controls.budgets import BudgetAction
from modeltrack.controls.cache import CacheBackend
from modeltrack.controls.redis_ledger import RedisFailure
from modeltrack.observe.logs import LogFormat
from modeltrack.ops.settings import ConfigError, Settings
from modeltrack.providers import compat, registry
from modeltrack.providers.dialect import Dialect
from modeltrack.store.datadir import make_data_dir
from modeltrack.store.journal import FsyncPolicy

__all__ = ["ConfigError", "Options", "ProxyOptions", "Settings", "options_for", "settings_from"]

StrEnumT = TypeVar("StrEnumT", bound=StrEnum)

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_ADMIN_LISTEN = "tcp:8081:interface=127.0.0.1"


def _choices(kind: type[StrEnum]) -> str:
    return ", ".join(kind)


def environment_name(option: str) -> str:
    """
    The environment variable an option falls back to: C{openai-url}, C{MODELTRACK_OPENAI_URL}.
    """
    return "MODELTRACK_" + option.upper().replace("-", "_")


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
        ["cache-backend", None, "memory", f"Where --cache keeps answers: {_choices(CacheBackend)} (redis: shared by every process and instance; needs --redis-url)."],
        ["otlp-endpoint", None, None, "Export a span per call and token metrics over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (needs modeltrack[otel]) [env MODELTRACK_OTLP_ENDPOINT]."],
        ["redis-failure", None, "closed", f"With Redis out of reach ({_choices(RedisFailure)}): closed refuses calls under a budget (503); open decides in this process."],
        ["fsync", None, "interval", f"When the event log is fsynced: {_choices(FsyncPolicy)} (always: every batch; interval: once a second)."],
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
        ["log-format", None, "text", f"{_choices(LogFormat)}: text (one line per event: time, namespace, level, message) or json (one JSON object per line, for log shippers)."],
        ["config-poll-seconds", None, "2", "How often budgets.json, routing.json and pricing.json are checked for changes."],
        ["admin-listen", None, None, f"Twisted endpoint for the admin API, /metrics and the dashboard, or 'none' [env MODELTRACK_ADMIN_LISTEN, default {DEFAULT_ADMIN_LISTEN}]. Anything but loopback needs --admin-token-file."],
        ["admin-token-file", None, None, "File holding the admin bearer token (re-read on SIGHUP) [env MODELTRACK_ADMIN_TOKEN_FILE]."],
        ["alert-webhook", None, None, "URL to POST a JSON alert (Slack-compatible 'text') to when a budget passes its warning percent or its limit [env MODELTRACK_ALERT_WEBHOOK]."],
        ["reserve-output-tokens", None, "4096", "Output tokens a budget reserves for a call that names no max_tokens (or max_output_tokens, max_completion_tokens)."],
        ["reserve-context-tokens", None, "200000", "Input tokens a budget reserves for content a call refers to (URL, file id, earlier response, server-side tool) when the model's context window is not known."],
        ["index-seconds", None, "10", "How often the SQLite index catches up with the event log (the admin API also catches up before each answer)."],
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
        _check_endpoint(description)
    if listen_tls and not (options["tls-cert"] and options["tls-key"]):
        raise ConfigError("--listen-tls: needs --tls-cert and --tls-key")
    data_dir = Path(options["data-dir"] or environ.get("MODELTRACK_DATA_DIR") or "data")
    _check_data_dir(data_dir)
    dialects: tuple[Dialect, ...] = getattr(options, "dialects", registry.DIALECTS)
    return Settings(
        listen=listen,
        listen_tls=listen_tls,
        data_dir=data_dir.resolve(),
        **_check_providers(options, environ, dialects),
        fsync=_choice(options, "fsync", FsyncPolicy),
        rotate_bytes=int(_positive(options, "rotate-mb") * (1 << 20)),
        max_body=int(_positive(options, "max-body-mb") * (1 << 20)),
        connect_timeout=_positive(options, "connect-timeout"),
        headers_timeout=_positive(options, "headers-timeout"),
        idle_timeout=_positive(options, "idle-timeout"),
        head_timeout=_positive(options, "head-timeout"),
        drain_seconds=_positive(options, "drain-seconds", allow_zero=True),
        pool_size=int(_positive(options, "pool-size")),
        access_log=bool(options["access-log"]),
        ca_bundle=_check_ca_bundle(options["ca-bundle"]),
        **_check_tls(options["tls-cert"], options["tls-key"]),
        cache=bool(options["cache"]),
        cache_sampled=bool(options["cache-sampled"]),
        cache_entries=int(_positive(options, "cache-entries")),
        cache_bytes=int(_positive(options, "cache-mb") * (1 << 20)),
        cache_ttl=_positive(options, "cache-ttl"),
        config_poll_seconds=_positive(options, "config-poll-seconds"),
        log_format=_choice(options, "log-format", LogFormat),
        log_file=_check_log_file(getattr(options, "parent", None)),
        **_check_admin(options, environ, listen + listen_tls),
        alert_webhook=_check_webhook(options["alert-webhook"] or environ.get("MODELTRACK_ALERT_WEBHOOK") or None),
        index_seconds=_positive(options, "index-seconds"),
        reserve_output_tokens=int(_positive(options, "reserve-output-tokens")),
        reserve_context_tokens=int(_positive(options, "reserve-context-tokens")),
        fast_path=not options["no-fast-path"],
        **_check_workers(options, environ, data_dir),
        **_check_redis(options, environ),
        otlp_endpoint=_check_otlp(options, environ),
        upstreams=_check_upstreams(
            tuple(options["upstream"]) or tuple(environ.get("MODELTRACK_UPSTREAMS", "").split()), dialects
        ),
    )


def _choice(options: usage.Options, name: str, kind: type[StrEnumT]) -> StrEnumT:
    value = options[name]
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"--{name}: {value!r} is not one of {_choices(kind)}") from None


def _check_log_file(twistd: Mapping[str, Any] | None) -> Path | None:
    """
    Where twistd's own options say the log goes, as every twistd plugin's does:
    C{--logfile FILE}, or standard output for C{--logfile -} or none under C{-n}
    (C{twistd.log} for a daemon). L{None} means standard output, as it does outside
    twistd (an embedder, a test).
    """
    if twistd is None:
        return None
    if twistd.get("syslog"):
        raise ConfigError(
            "--syslog: modeltrack writes its own log lines (no exception text: no key can reach them); "
            "give --logfile FILE, or log to standard output (the journal, under systemd)"
        )
    name, daemon = twistd.get("logfile"), not twistd.get("nodaemon")
    if name == "-":
        if daemon:
            raise ConfigError("--logfile: daemons cannot log to stdout")
        return None
    if not name:
        return Path("twistd.log").resolve() if daemon else None
    return Path(name).resolve()


def _given(options: usage.Options, environ: Mapping[str, str], option: str) -> str | None:
    """
    An option's value, else its C{MODELTRACK_*} variable's; L{None} for neither.
    """
    return options[option] or environ.get(environment_name(option)) or None


class _ProviderSettings(TypedDict):
    urls: dict[str, str]
    regions: dict[str, str]
    signing: frozenset[str]


def _check_providers(options: usage.Options, environ: Mapping[str, str], dialects: Iterable[Dialect]) -> _ProviderSettings:
    """
    Each provider's origin, region and signing, as its dialect declares them.
    """
    urls: dict[str, str] = {}
    regions: dict[str, str] = {}
    signing: set[str] = set()
    for dialect in dialects:
        origin, region, signs = dialect.origin, dialect.region, dialect.signing
        url = None if origin is None else _given(options, environ, origin.option)
        named = None if region is None else _given(options, environ, region.option)
        if region is not None and named is not None:
            if not region.pattern.fullmatch(named):
                raise ConfigError(f"--{region.option}: {named!r} is not {region.kind}")
            regions[dialect.name] = named
            url = url or region.origin.format(region=named)
        if signs is not None and options[signs.option]:
            if region is None or named is None:
                also = f" (or --{origin.option} and --{region.option})" if origin is not None and region is not None else ""
                need = f"--{region.option}" if region is not None else "a region"
                raise ConfigError(f"--{signs.option}: needs {need}{also if url is None else ': a signature names its region'}")
            if importlib.util.find_spec("botocore") is None:
                raise ConfigError(f"--{signs.option}: needs botocore: pip install 'modeltrack[aws]'")
            signing.add(dialect.name)
        if url is not None:
            assert origin is not None  # a URL comes from an origin option, or a region's
            urls[dialect.name] = _check_url(f"--{origin.option}", url)
    return {"urls": urls, "regions": regions, "signing": frozenset(signing)}


def _positive(options: usage.Options, name: str, allow_zero: bool = False) -> float:
    try:
        value = float(options[name])
    except ValueError:
        raise ConfigError(f"--{name}: {options[name]!r} is not a number") from None
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"--{name}: must be greater than zero")
    return value


def _check_endpoint(description: str, option: str = "--listen") -> None:
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise ConfigError(f"{option}: {description!r} is not a usable endpoint: {e}") from None


def _check_url(option: str, url: str, keep_query: bool = False) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{option}: {url!r} is not an http:// or https:// URL")
    if keep_query:
        # A webhook URL often carries its secret in its path or query (Slack's do): it
        # is used as given, and never logged.
        return url
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{option}: {url!r} must not carry credentials, a query or a fragment")
    return url.rstrip("/")


def _check_data_dir(path: Path) -> None:
    try:
        make_data_dir(path)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"--data-dir: {str(path)!r} is not writable: {e.strerror or e}") from None


def _check_ca_bundle(path: str | None) -> Path | None:
    if path is None:
        return None
    from modeltrack.web.upstream import load_trust_root

    try:
        load_trust_root(Path(path))
    except Exception as e:
        raise ConfigError(f"--ca-bundle: {path!r} is not a readable PEM bundle of certificates: {e}") from None
    return Path(path).resolve()


class _TLSFiles(TypedDict, total=False):
    tls_cert: Path
    tls_key: Path


def _check_tls(cert: str | None, key: str | None) -> _TLSFiles:
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise ConfigError("--tls-cert: --tls-cert and --tls-key go together")
    from modeltrack.web.tls import ReloadableServerTLS

    try:
        ReloadableServerTLS(Path(cert), Path(key))
    except Exception as e:
        raise ConfigError(f"--tls-cert: {cert!r} and {key!r} do not make a usable certificate and key: {e}") from None
    return {"tls_cert": Path(cert).resolve(), "tls_key": Path(key).resolve()}


class _AdminSettings(TypedDict, total=False):
    admin_listen: str | None
    admin_token: bytes | None
    admin_token_file: Path | None


def _check_admin(options: usage.Options, environ: Mapping[str, str], proxy_listen: tuple[str, ...]) -> _AdminSettings:
    listen = options["admin-listen"] or environ.get("MODELTRACK_ADMIN_LISTEN") or DEFAULT_ADMIN_LISTEN
    if listen.lower() == "none":
        return {"admin_listen": None}
    _check_endpoint(listen, "--admin-listen")
    if listen in proxy_listen:
        raise ConfigError(f"--admin-listen: {listen!r} is also a proxy listener; the admin side needs its own")
    token_file = options["admin-token-file"] or environ.get("MODELTRACK_ADMIN_TOKEN_FILE") or None
    token = None
    if token_file is not None:
        token = read_token(Path(token_file))
    elif not is_loopback(listen):
        raise ConfigError(
            f"--admin-listen: {listen!r} is reachable from other hosts; give --admin-token-file, or listen on 127.0.0.1"
        )
    return {
        "admin_listen": listen,
        "admin_token": token,
        "admin_token_file": None if token_file is None else Path(token_file).resolve(),
    }


def read_token(path: Path) -> bytes:
    """
    The admin token in C{path}, without surrounding whitespace; refused if short.
    """
    try:
        token = path.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"--admin-token-file: {str(path)!r} cannot be read: {e.strerror or e}") from None
    if len(token) < 16 or any(byte < 33 or byte > 126 for byte in token):
        raise ConfigError(f"--admin-token-file: {str(path)!r} must hold one token of 16 or more printable characters")
    return token


def is_loopback(description: str) -> bool:
    """
    Whether an endpoint only accepts connections from this host: TCP bound to a
    loopback address, or a UNIX socket. Anything else (all interfaces, systemd:,
    ssl:...) counts as reachable.
    """
    fields = [field.replace("\\:", ":") for field in re.split(r"(?<!\\):", description)]
    kind = fields[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False
    interface = next((f.partition("=")[2] for f in fields[1:] if f.startswith("interface=")), "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


class _WorkerSettings(TypedDict):
    workers: int
    worker: int
    inherited: tuple[tuple[str, int], ...]
    argv: tuple[str, ...]


def _check_workers(options: usage.Options, environ: Mapping[str, str], data_dir: Path) -> _WorkerSettings:
    value = options["workers"]
    workers = os.cpu_count() or 1 if value == "auto" else int(value) if value.isdigit() else 0
    if not 1 <= workers <= 256:
        raise ConfigError(f"--workers: {value!r} is not a number of processes from 1 to 256, or auto")
    redis = options["redis-url"] or environ.get("MODELTRACK_REDIS_URL")
    if workers > 1 and not redis:
        from modeltrack.controls.budgets import ConfigFileError, load_budgets

        try:
            budgets = load_budgets(data_dir / "budgets.json") or []
        except ConfigFileError:
            budgets = []
        if any(budget.action is BudgetAction.BLOCK for budget in budgets):
            raise ConfigError("--workers: more than one worker under a block budget needs a shared ledger: give --redis-url")
    # Internal, set by the process that started this one as a worker.
    inherited = tuple(
        (option, int(fd))
        for option, _, fd in (item.rpartition(":") for item in environ.get("MODELTRACK_INHERITED", "").split(","))
        if option
    )
    return {
        "workers": workers,
        "worker": int(environ.get("MODELTRACK_WORKER", "0")),
        "inherited": inherited,
        "argv": tuple(getattr(options, "argv", ())),
    }


def _check_otlp(options: usage.Options, environ: Mapping[str, str]) -> str | None:
    url = options["otlp-endpoint"] or environ.get("MODELTRACK_OTLP_ENDPOINT") or None
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"--otlp-endpoint: {url!r} is not an http:// or https:// URL")
    try:
        found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise ConfigError("--otlp-endpoint: needs the OpenTelemetry SDK: pip install 'modeltrack[otel]'")
    return url


class _RedisSettings(TypedDict):
    redis_url: str | None
    redis_password: str | None
    redis_failure: RedisFailure
    cache_backend: CacheBackend


def _check_redis(options: usage.Options, environ: Mapping[str, str]) -> _RedisSettings:
    url = options["redis-url"] or environ.get("MODELTRACK_REDIS_URL") or None
    if url is not None and urlsplit(url).scheme not in ("redis", "rediss"):
        raise ConfigError(f"--redis-url: {url.split('@')[-1]!r} is not a redis:// or rediss:// URL")
    if url is not None and importlib.util.find_spec("txredisapi") is None:
        raise ConfigError("--redis-url: needs txredisapi: pip install 'modeltrack[redis]'")
    failure = _choice(options, "redis-failure", RedisFailure)
    password = None
    if options["redis-password-file"]:
        try:
            password = Path(options["redis-password-file"]).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--redis-password-file: cannot be read: {e.strerror or e}") from None
    backend = _choice(options, "cache-backend", CacheBackend)
    if backend is CacheBackend.REDIS and url is None:
        raise ConfigError("--cache-backend: redis needs --redis-url")
    return {"redis_url": url, "redis_password": password, "redis_failure": failure, "cache_backend": backend}


def _check_upstreams(specs: tuple[str, ...], dialects: Iterable[Dialect] = registry.DIALECTS) -> tuple[tuple[str, str], ...]:
    reserved = compat.RESERVED | {d.name for d in dialects} | {d.prefix.strip("/") for d in dialects}
    found: dict[str, str] = {}
    for spec in specs:
        name, equals, url = spec.partition("=")
        if not equals or not compat.UPSTREAM_NAME.fullmatch(name):
            raise ConfigError(f"--upstream: {spec!r} is not NAME=URL with a name of lower-case letters, digits and dashes")
        if name in reserved:
            raise ConfigError(f"--upstream: {name!r} is a built-in provider's prefix; choose another name")
        if name in found:
            raise ConfigError(f"--upstream: {name!r} is named twice")
        found[name] = _check_url("--upstream", url)
    return tuple(found.items())


def _check_webhook(url: str | None) -> str | None:
    return None if url is None else _check_url("--alert-webhook", url, keep_query=True)


def options_for(dialects: tuple[Dialect, ...]) -> type[ProxyOptions]:
    """
    C{twistd modeltrack}'s options with those C{dialects} declare.
    """
    parameters, flags = provider_options(dialects)
    return type("Options", (ProxyOptions,), {"optParameters": parameters, "optFlags": flags, "dialects": dialects})


#: The options of C{twistd modeltrack}: the proxy's, and every registered provider's.
Options = options_for(registry.DIALECTS)
