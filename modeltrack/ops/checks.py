"""
The checks that turn each of twistd's option values (and its C{MODELTRACK_*} fallback)
into a setting, or stop start-up with one line naming the option (L{ConfigError}).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
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
from modeltrack.ops.settings import ConfigError
from modeltrack.providers import compat, registry
from modeltrack.providers.dialect import Dialect
from modeltrack.store.datadir import make_data_dir

StrEnumT = TypeVar("StrEnumT", bound=StrEnum)
#: Where the admin listener is by default (from the environment, or this).
DEFAULT_ADMIN_LISTEN = "tcp:8081:interface=127.0.0.1"


def environment_name(option: str) -> str:
    """
    The environment variable an option falls back to: C{openai-url}, C{MODELTRACK_OPENAI_URL}.
    """
    return "MODELTRACK_" + option.upper().replace("-", "_")


def choices(kind: type[StrEnum]) -> str:
    return ", ".join(kind)


def choice(options: usage.Options, name: str, kind: type[StrEnumT]) -> StrEnumT:
    value = options[name]
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"--{name}: {value!r} is not one of {choices(kind)}") from None


def check_log_file(twistd: Mapping[str, Any] | None) -> Path | None:
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


def given(options: usage.Options, environ: Mapping[str, str], option: str) -> str | None:
    """
    An option's value, else its C{MODELTRACK_*} variable's; L{None} for neither.
    """
    return options[option] or environ.get(environment_name(option)) or None


class _ProviderSettings(TypedDict):
    urls: dict[str, str]
    regions: dict[str, str]
    signing: frozenset[str]


def check_providers(options: usage.Options, environ: Mapping[str, str], dialects: Iterable[Dialect]) -> _ProviderSettings:
    """
    Each provider's origin, region and signing, as its dialect declares them.
    """
    urls: dict[str, str] = {}
    regions: dict[str, str] = {}
    signing: set[str] = set()
    for dialect in dialects:
        origin, region, signs = dialect.origin, dialect.region, dialect.signing
        url = None if origin is None else given(options, environ, origin.option)
        named = None if region is None else given(options, environ, region.option)
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
            urls[dialect.name] = check_url(f"--{origin.option}", url)
    return {"urls": urls, "regions": regions, "signing": frozenset(signing)}


def positive(options: usage.Options, name: str, allow_zero: bool = False) -> float:
    try:
        value = float(options[name])
    except ValueError:
        raise ConfigError(f"--{name}: {options[name]!r} is not a number") from None
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"--{name}: must be greater than zero")
    return value


def check_store(options: usage.Options, environ: Mapping[str, str]) -> dict[str, Any]:
    """--store and its password file: a PostgreSQL URL that holds no password (argv and
    the environment are visible to others; the password comes from a file)."""
    url = options["store"] or environ.get("MODELTRACK_STORE") or None
    password_file = options["store-password-file"]
    if url is None:
        if password_file:
            raise ConfigError("--store-password-file needs --store")
        return {"store": None, "store_password_file": None}
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError("--store: expected postgresql://user@host[:port]/database")
    if parts.password is not None:
        raise ConfigError("--store: the URL holds a password; put it in --store-password-file")
    if password_file and not Path(password_file).is_file():
        raise ConfigError(f"--store-password-file: {password_file} is not a file")
    return {"store": url, "store_password_file": Path(password_file) if password_file else None}


def days(options: usage.Options, name: str) -> int | None:
    """A whole number of days, at least one; L{None} when the option is not given."""
    if options[name] is None:
        return None
    text = str(options[name])
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--{name}: {text!r} is not a whole number of days, 1 or more")
    return int(text)


def check_endpoint(description: str, option: str = "--listen") -> None:
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise ConfigError(f"{option}: {description!r} is not a usable endpoint: {e}") from None


def check_url(option: str, url: str, keep_query: bool = False) -> str:
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


def check_data_dir(path: Path) -> None:
    try:
        make_data_dir(path)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"--data-dir: {str(path)!r} is not writable: {e.strerror or e}") from None


def check_ca_bundle(path: str | None) -> Path | None:
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


def check_tls(cert: str | None, key: str | None) -> _TLSFiles:
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


def check_admin(options: usage.Options, environ: Mapping[str, str], proxy_listen: tuple[str, ...]) -> _AdminSettings:
    listen = options["admin-listen"] or environ.get("MODELTRACK_ADMIN_LISTEN") or DEFAULT_ADMIN_LISTEN
    if listen.lower() == "none":
        return {"admin_listen": None}
    check_endpoint(listen, "--admin-listen")
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


def check_workers(options: usage.Options, environ: Mapping[str, str], data_dir: Path) -> _WorkerSettings:
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


def check_otlp(options: usage.Options, environ: Mapping[str, str]) -> str | None:
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


def check_redis(options: usage.Options, environ: Mapping[str, str]) -> _RedisSettings:
    url = options["redis-url"] or environ.get("MODELTRACK_REDIS_URL") or None
    if url is not None and urlsplit(url).scheme not in ("redis", "rediss"):
        raise ConfigError(f"--redis-url: {url.split('@')[-1]!r} is not a redis:// or rediss:// URL")
    if url is not None and importlib.util.find_spec("txredisapi") is None:
        raise ConfigError("--redis-url: needs txredisapi: pip install 'modeltrack[redis]'")
    failure = choice(options, "redis-failure", RedisFailure)
    password = None
    if options["redis-password-file"]:
        try:
            password = Path(options["redis-password-file"]).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--redis-password-file: cannot be read: {e.strerror or e}") from None
    backend = choice(options, "cache-backend", CacheBackend)
    if backend is CacheBackend.REDIS and url is None:
        raise ConfigError("--cache-backend: redis needs --redis-url")
    return {"redis_url": url, "redis_password": password, "redis_failure": failure, "cache_backend": backend}


def check_upstreams(specs: tuple[str, ...], dialects: Iterable[Dialect] = registry.DIALECTS) -> tuple[tuple[str, str], ...]:
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
        found[name] = check_url("--upstream", url)
    return tuple(found.items())


def check_webhook(url: str | None) -> str | None:
    return None if url is None else check_url("--alert-webhook", url, keep_query=True)
