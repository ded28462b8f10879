"""
Which key paid for a call, without keeping the key: its fingerprint (C{key_id}), the
name and attribution the operator gave it in C{<data-dir>/keys.json}, and the program
that called (C{client}, from its User-Agent).

A fingerprint is HMAC-SHA256 under the per-install secret (L{install_secret}), never a
plain hash: a short or guessable key cannot be found by hashing candidates offline
without the secret. Nothing else derived from a key is kept anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

from twisted.web.http_headers import Headers

from modeltrack.controls.budgets import NO_ONE, ConfigFileError, Who
from modeltrack.failures import AMBIGUOUS_CREDENTIALS, NO_TEAM, UNKNOWN_KEY
from modeltrack.store.datadir import FILE_MODE, STATE_DIR_MODE, write_atomically

KEYS_FILE = "keys.json"
SECRET_FILE = "cache.secret"
_KEY_ID = re.compile(r"k_[0-9a-f]{16}")


def install_secret(state_dir: Path) -> bytes:
    """
    The per-install secret (32 random bytes in C{state/cache.secret}, mode 0600), made
    on first use. Made whole before it is visible (written to a temporary file, then
    linked into place): two processes starting at once (the proxy and C{modeltrack
    keys add}) end up with the same secret, and a crash never leaves a short one.
    Fingerprints and cache keys depend on it: it is never replaced once made.
    """
    path = state_dir / SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        pass
    else:
        if len(secret) < 32:
            raise ValueError(f"{path} is shorter than 32 bytes: restore it, or remove it to start new fingerprints")
        return secret
    state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    temporary = state_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(temporary, path)  # fails if another process made it first: theirs stands
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    return path.read_bytes()


def fingerprint(secret: bytes, key: bytes) -> str:
    """
    A key's C{key_id}: C{k_} and the first 16 hex digits of its HMAC-SHA256.
    """
    return Keyring(secret).fingerprint(key)


def credential(headers: Headers, names: tuple[bytes, ...], query: bytes = b"", param: bytes | None = None) -> bytes | None:
    """
    The key a provider will see: the first of C{names} (a dialect's credential
    headers) present, for C{Authorization} a bearer token's value; else the query
    parameter C{param} (Gemini's C{?key=}), if the dialect reads one.
    """
    for name in names:
        values = headers.getRawHeaders(name)
        if not values:
            continue
        value = values[-1].strip()
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"bearer":
                continue
            value = token.strip()
        if value:
            return value
    if param is not None and query:
        for part in query.split(b"&"):
            name, _, value = part.partition(b"=")
            if name == param and value:
                return unquote_to_bytes(value)
    return None


def credentials_given(headers: Headers, names: tuple[bytes, ...], query: bytes = b"", param: bytes | None = None) -> int:
    """
    How many credentials a request carries where its dialect reads them: each value
    of each of C{names}, and each C{param} in the query.
    """
    given = 0
    for name in names:
        values = headers.getRawHeaders(name)
        if values:
            given += len(values)
    if param is not None and query:
        given += sum(1 for part in query.split(b"&") if part.partition(b"=")[0] == param)
    return given


#: User-Agent → a short program family; the first that matches names it, with the
#: major version found by its group. Anything else is C{other}: a bounded set.
_CLIENTS = tuple(
    (re.compile(pattern), family)
    for pattern, family in (
        (r"(?:Async)?(?:Azure)?OpenAI/Python (\d{1,3})\b", "openai-python"),
        (r"(?:Async)?(?:Azure)?OpenAI/JS (\d{1,3})\b", "openai-js"),
        (r"(?:Async)?Anthropic(?:Bedrock|Vertex|Foundry)?/Python (\d{1,3})\b", "anthropic-python"),
        (r"(?:Async)?Anthropic(?:Bedrock|Vertex|Foundry)?/JS (\d{1,3})\b", "anthropic-js"),
        (r"claude-cli/(\d{1,3})\b", "claude-code"),
        (r"curl/(\d{1,3})\b", "curl"),
        (r"python-requests/(\d{1,3})\b", "python-requests"),
        (r"python-httpx/(\d{1,3})\b", "python-httpx"),
        (r".*\baiohttp/(\d{1,3})\b", "aiohttp"),
        (r"Go-http-client/(\d{1,3})\b", "go-http"),
        (r"Boto3/(\d{1,3})\b", "boto3"),
        (r".*\bgoogle-genai-sdk/(\d{1,3})\b", "google-genai"),
    )
)
_client_memo: dict[bytes, str] = {}


def client(user_agent: bytes | None) -> str:
    """
    The calling program, as C{family/major} (C{openai-python/2}, C{curl/8}) or
    C{other}. Remembered per User-Agent (a few distinct ones per install; bounded).
    """
    if not user_agent:
        return "other"
    found = _client_memo.get(user_agent)
    if found is None:
        found = "other"
        text = user_agent.decode("latin-1")
        for pattern, family in _CLIENTS:
            match = pattern.match(text)
            if match:
                found = f"{family}/{int(match.group(1))}"
                break
        if len(_client_memo) < 1024:
            _client_memo[user_agent] = found
    return found


class UnknownKeys(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """
    One key the operator named: its fingerprint and what its calls are attributed to.
    """

    key_id: str
    name: str
    team: str | None = None
    app: str | None = None
    provider_key_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"key_id": self.key_id, "name": self.name}
        for name in ("team", "app", "provider_key_id"):
            if getattr(self, name) is not None:
                entry[name] = getattr(self, name)
        return entry


@dataclass(frozen=True, slots=True)
class KeyBook:
    """
    The keys file: named keys, and what happens to the others.
    """

    entries: dict[str, KeyEntry] = field(default_factory=dict)
    unknown_keys: UnknownKeys = UnknownKeys.ALLOW
    require_team: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "keys": [entry.as_json() for entry in self.entries.values()],
            "unknown_keys": str(self.unknown_keys),
            "require_team": self.require_team,
        }


NO_KEYS = KeyBook()


def load_keys(path: Path) -> KeyBook | None:
    """
    keys.json, checked whole; L{None} if it does not exist (every key allowed,
    none named). A problem raises L{ConfigFileError} naming the entry.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        document = json.loads(text)
    except ValueError as e:
        raise ConfigFileError(f"{path.name}: not valid JSON: {e}") from None
    return keys_from(document, path.name)


def keys_from(document: Any, where: str = KEYS_FILE) -> KeyBook:
    if not isinstance(document, dict) or not isinstance(document.get("keys", []), list):
        raise ConfigFileError(f'{where}: expected an object with a "keys" list')
    unknown = document.get("unknown_keys", "allow")
    if unknown not in ("allow", "deny"):
        raise ConfigFileError(f"{where}: unknown_keys must be allow or deny")
    require_team = document.get("require_team", False)
    if not isinstance(require_team, bool):
        raise ConfigFileError(f"{where}: require_team must be true or false")
    entries: dict[str, KeyEntry] = {}
    for i, item in enumerate(document.get("keys", [])):
        at = f"{where}: keys[{i}]"
        if not isinstance(item, dict):
            raise ConfigFileError(f"{at}: expected an object")
        key_id, name = item.get("key_id"), item.get("name")
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise ConfigFileError(f"{at}: key_id must be k_ and 16 lower-case hex digits (modeltrack keys fingerprint)")
        if not isinstance(name, str) or not name.strip():
            raise ConfigFileError(f"{at}: name must be a non-empty string")
        at = f"{at} ({name})"
        if key_id in entries:
            raise ConfigFileError(f"{at}: key_id {key_id} is listed twice")
        for label in ("team", "app", "provider_key_id"):
            if item.get(label) is not None and (not isinstance(item[label], str) or not item[label]):
                raise ConfigFileError(f"{at}: {label} must be a non-empty string")
        unexpected = set(item) - {"key_id", "name", "team", "app", "provider_key_id"}
        if unexpected:
            raise ConfigFileError(f"{at}: unknown field {sorted(unexpected)[0]!r}")
        entries[key_id] = KeyEntry(key_id, name, item.get("team"), item.get("app"), item.get("provider_key_id"))
    return KeyBook(entries, UnknownKeys(unknown), require_team)


def save_keys(path: Path, book: KeyBook) -> None:
    """
    Write keys.json whole (see L{write_atomically}), mode 0640.
    """
    write_atomically(path, (json.dumps(book.as_json(), indent=2) + "\n").encode(), FILE_MODE)


#: Request header → event field. Values are labels chosen by the caller.
ATTRIBUTION_HEADERS = (
    (b"x-modeltrack-team", "team"),
    (b"x-modeltrack-app", "app"),
    (b"x-modeltrack-feature", "feature"),
    (b"x-modeltrack-session-id", "session_id"),
    (b"x-modeltrack-trace-id", "trace_id"),
    (b"x-modeltrack-customer-tier", "customer_tier"),
    (b"x-modeltrack-prompt-template", "prompt_template"),
)
LABEL_LIMIT = 128
NO_LABELS: dict[str, str | None] = {name: None for _, name in ATTRIBUTION_HEADERS}
#: Removed from labels: Unicode's control characters (category Cc: C0, DEL and C1,
#: U+0085 among them) and its line and paragraph separators (Zl, Zp), which many
#: readers take for line breaks.
_CONTROL = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029], None)


def attribution(headers: Headers, key: KeyEntry | None = None) -> dict[str, str | None]:
    """
    The C{X-ModelTrack-*} labels of a request: control characters removed, length
    bounded, L{None} when absent or empty. A named key's team and app (keys.json) are
    the call's, whatever its headers say: headers fill only what the entry leaves out.
    """
    labels: dict[str, str | None] = {}
    for header, name in ATTRIBUTION_HEADERS:
        values = headers.getRawHeaders(header)
        value = None
        if values:
            cleaned = values[-1].decode("utf-8", "replace").translate(_CONTROL).strip()
            value = cleaned[:LABEL_LIMIT] or None
        labels[name] = value
    if key is not None:
        if key.team is not None:
            labels["team"] = key.team
        if key.app is not None:
            labels["app"] = key.app
    return labels


class Caller(NamedTuple):
    """
    Who made one call: the key's fingerprint (L{None} without a key), its entry in
    the keys file if named there, the calling program, and, for a call that is
    accounted, its labels and whose budgets it counts under. (A tuple: one per call.)
    """

    key_id: str | None
    entry: KeyEntry | None
    client: str
    labels: dict[str, str | None] = NO_LABELS
    who: Who = NO_ONE

    @property
    def key_name(self) -> str | None:
        return None if self.entry is None else self.entry.name


class Keyring:
    """
    The keys file in force (replaced whole when it is re-read) and the secret that
    fingerprints keys.
    """

    def __init__(self, secret: bytes, book: KeyBook = NO_KEYS) -> None:
        # Keyed once: each call copies its state (the key's padded blocks hashed
        # already) instead of setting up HMAC and OpenSSL's digest again.
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)
        self.book = book

    def set_book(self, book: KeyBook | None) -> None:
        self.book = book or NO_KEYS

    def fingerprint(self, key: bytes) -> str:
        """
        L{fingerprint}, with the HMAC's keyed state made once and copied per key.
        """
        mac = self._keyed.copy()
        mac.update(key)
        return "k_" + mac.digest()[:8].hex()

    def caller(
        self, headers: Headers, target: bytes, credentials: Credentials, *, metered: bool, attributed: bool, signs: bool
    ) -> tuple[Caller, Refusal | None]:
        """
        Who is calling with a request (its C{headers} and C{target}; C{credentials}:
        where its dialect carries a key), and why the keys file refuses the call, if
        it does (status, error type, message): more than one credential (the one
        fingerprinted would not be the one the provider bills), an unknown key where
        only named ones may call (the file says so, or the proxy C{signs} with its own
        credentials), or a C{metered} call with no team where every call needs one. A
        call that is neither metered nor C{attributed} (a batch's results) is
        identified only to be refused.
        """
        named_only = self.book.unknown_keys is UnknownKeys.DENY or signs
        names, param = credentials
        query = target.partition(b"?")[2] if param is not None else b""
        if credentials_given(headers, names, query, param) > 1:
            # Named by no key: its labels only.
            return self.identify(headers, (), attributed=metered or attributed), (
                400, "ambiguous_credentials", AMBIGUOUS_CREDENTIALS,
            )
        found = NO_CALLER
        if metered or attributed or named_only:
            found = self.identify(headers, names, query, param, metered or attributed)
        if named_only and found.entry is None:
            return found, (401, "unknown_key", UNKNOWN_KEY)
        if metered and self.book.require_team and not found.who.team:
            return found, (400, "attribution_required", NO_TEAM)
        return found, None

    def identify(
        self, headers: Headers, names: tuple[bytes, ...], query: bytes = b"", param: bytes | None = None,
        attributed: bool = False,
    ) -> Caller:
        """
        Who is calling, from one request: its key fingerprinted once (the key is not
        kept; C{names} and C{param} are where its dialect carries it), its entry in the
        keys file, its program, and, if the call is C{attributed} (metered, or a batch
        result), its labels and whose budgets it counts under.
        """
        key = credential(headers, names, query, param)
        key_id = None if key is None else self.fingerprint(key)
        entry = None if key_id is None else self.book.entries.get(key_id)
        agents = headers.getRawHeaders(b"user-agent")
        program = client(agents[-1] if agents else None)
        if not attributed:
            return Caller(key_id, entry, program)
        labels = attribution(headers, entry)
        who = Who(labels["team"] or "", labels["app"] or "", labels["feature"] or "", entry.name if entry else "")
        return Caller(key_id, entry, program, labels, who)


NO_CALLER = Caller(None, None, "other")
#: Where a dialect carries a caller's key: request headers, and a query parameter.
Credentials = tuple[tuple[bytes, ...], bytes | None]
#: Why a call is refused: its status, error type and message.
Refusal = tuple[int, str, str]
