"""
The response cache: identical non-streaming calls from the same caller answered from
memory, bounded by entries, bytes and age, snapshotted to C{<data-dir>/state/cache.msgpack}.

The key covers the provider, the route and the canonical JSON of the whole request body
(system prompt, tools, temperature, response format: every field). The caller enters it
only as the fingerprint of its key (C{key_id}: an HMAC under the per-install secret, of
the credential its provider's dialect reads, a Gemini C{?key=} included), so two tenants
never share an answer, and neither memory nor the snapshot holds anything a key can be
recovered from.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgpack
from twisted.logger import Logger
from twisted.web.http_headers import Headers

log = Logger()

NO_CACHE_HEADER = b"x-modeltrack-no-cache"


class CacheBackend(StrEnum):
    """
    Where C{--cache} keeps answers (C{--cache-backend}).
    """

    MEMORY = "memory"  # this process's (snapshotted to disk at stop)
    REDIS = "redis"  # shared by every process and instance

SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class Entry:
    code: int
    phrase: bytes
    headers: list[tuple[bytes, list[bytes]]]
    body: bytes
    stored_at: float
    cost_usd: str | None
    model: str | None

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(n) + sum(len(v) for v in vs) for n, vs in self.headers) + 64


class ResponseCache:
    def __init__(
        self,
        secret: bytes,
        clock: Any,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 256 << 20,
        ttl: float = 3600.0,
        sampled: bool = False,
    ) -> None:
        """
        @param sampled: also cache calls sampled at a temperature above 0 (or with no
            temperature, which the providers default to 1).
        """
        self._secret = secret
        self._clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.sampled = sampled
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.saved = Decimal(0)

    def cacheable(self, path: str, body: dict[str, Any], headers: Headers) -> bool:
        if body.get("stream") is True:
            return False
        values = headers.getRawHeaders(NO_CACHE_HEADER)
        if values and values[-1].strip().lower() in (b"true", b"1", b"yes"):
            return False
        if "embed" not in path.lower() and not self.sampled:
            # Every generating route samples at a temperature the providers default to
            # 1: only a call that asks for 0 (at the top, or in Gemini's or Bedrock's
            # config object) is deterministic enough to answer again.
            temperature = body.get("temperature")
            for config in ("generationConfig", "inferenceConfig"):
                if temperature is None and isinstance(body.get(config), dict):
                    temperature = body[config].get("temperature")
            if not isinstance(temperature, (int, float)) or temperature > 0:
                return False
        return True

    def key(self, provider: str, path: str, body: dict[str, Any], tenant: str | None) -> bytes:
        """
        The entry's key; C{tenant} is the caller's C{key_id} (L{None}: no key).
        """
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256()
        for part in (provider.encode(), path.encode(), (tenant or "").encode(), canonical.encode("utf-8")):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.digest()

    def get(self, key: bytes) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock.seconds() - entry.stored_at > self.ttl:
            self._remove(key)
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        if entry.cost_usd is not None:
            self.saved += Decimal(entry.cost_usd)
        return entry

    def put(self, key: bytes, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 4) if lookups else 0.0,
            "entries": len(self._entries),
            "bytes": self.bytes,
            "saved_usd": str(self.saved),
        }

    def copy(self) -> ResponseCache:
        """
        A shallow copy (entries are never changed once stored), to pack off the reactor.
        """
        other = ResponseCache(self._secret, self._clock, max_entries=self.max_entries, max_bytes=self.max_bytes, ttl=self.ttl)
        other._entries = OrderedDict(self._entries)
        return other

    def snapshot(self) -> bytes:
        now = self._clock.seconds()
        entries = [
            [key, e.code, e.phrase, e.headers, e.body, e.stored_at, e.cost_usd, e.model]
            for key, e in self._entries.items()
            if now - e.stored_at <= self.ttl
        ]
        return msgpack.packb({"version": SNAPSHOT_VERSION, "entries": entries})

    def restore(self, data: bytes) -> int:
        """
        Load a snapshot, oldest first, dropping expired entries; returns how many were kept.
        """
        document = msgpack.unpackb(data)
        if not isinstance(document, dict) or document.get("version") != SNAPSHOT_VERSION:
            raise ValueError("not a modeltrack cache snapshot")
        now = self._clock.seconds()
        for key, code, phrase, headers, body, stored_at, cost, model in document["entries"]:
            if now - stored_at <= self.ttl:
                self.put(key, Entry(code, phrase, [(n, list(v)) for n, v in headers], body, stored_at, cost, model))
        return len(self._entries)


def load_snapshot(cache: ResponseCache, path: Path) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    try:
        kept = cache.restore(data)
    except Exception as e:
        log.warn("Ignoring a corrupt cache snapshot {path}: {error}", path=str(path), error=str(e))
        return
    log.info("Response cache restored: {entries} entries", entries=kept)
