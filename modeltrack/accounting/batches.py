"""
Batch results as cost events. A batch is billed when it runs, but the proxy sees its
usage only when a client fetches its results through it: each result line with usage
becomes one event at the batch price (C{batch: true}, C{batch_id}, C{custom_id}), once
per result however often the results are fetched, by any worker of this install.

- Anthropic: C{GET /v1/messages/batches/{id}/results}, JSONL of
  C{{"custom_id", "result": {"type": "succeeded", "message": {... "usage"}}}}.
- OpenAI: the results are the batch's output file (C{GET /v1/files/{id}/content}), JSONL
  of C{{"custom_id", "response": {"status_code", "body": {... "usage"}}}}; which file
  belongs to which batch (and which endpoint it ran) is learned from the batch objects
  clients look up through the proxy (C{GET /v1/batches/{id}}, lists, creates, cancels).

What was learned and recorded lives under C{state/batches/}: C{outputs} (an output
file's batch and endpoint) and one C{.seen} file per batch (the custom ids recorded),
appended under an exclusive lock, in a thread, so that two workers (or two fetches)
never record one result twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from modeltrack.failures import log_failure
from modeltrack.pricing.usage import Reading, UnreadableUsage, text
from modeltrack.providers import anthropic, openai
from modeltrack.providers.meter import IMeter

log = Logger()

#: A result line longer than this is relayed but not read (no completion is this long).
LINE_LIMIT = 16 << 20
#: A batch object (or a page of them) is read up to this size.
OBJECT_LIMIT = 4 << 20

_ANTHROPIC_RESULTS = re.compile(r"/v1/messages/batches/([A-Za-z0-9_-]+)/results")
_ANTHROPIC_BATCHES = re.compile(r"/v1/messages/batches(?:/[A-Za-z0-9_-]+(?:/cancel)?)?")
_OPENAI_FILE = re.compile(r"/v1/files/([A-Za-z0-9_-]+)/content")
_OPENAI_BATCHES = re.compile(r"/v1/batches(?:/[A-Za-z0-9_-]+(?:/cancel)?)?")

#: How each endpoint a batch may run reads its result bodies.
_READERS: dict[str, Callable[[dict[str, Any]], Reading]] = {
    "/v1/chat/completions": openai.read_chat_body,
    "/v1/completions": openai.read_chat_body,
    "/v1/embeddings": openai.read_chat_body,
    "/v1/responses": openai.read_responses_body,
    "/v1/messages": anthropic.read_body,
}


@dataclass(frozen=True, slots=True)
class Result:
    """
    One result line with usage: its custom id, and the parts of its answer that price
    it (the model, the usage, the service tier), not the answer itself.
    """

    custom_id: str
    status: int
    answer: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Watch:
    """
    A relayed call whose answer tells about a batch.

    @ivar kind: C{"results"} (result lines), C{"objects"} (OpenAI batch objects) or
        C{"urls"} (Anthropic batch objects, whose C{results_url} is made the proxy's).
    @ivar batch_id: the batch, where the path names it (Anthropic's results).
    @ivar file_id: the OpenAI file whose content is fetched.
    @ivar base: the proxy's URL as the client called it, up to the API path
        (C{https://modeltrack.internal/anthropic}), for C{"urls"}.
    """

    provider: str
    kind: str
    batch_id: str | None = None
    file_id: str | None = None
    base: str = ""


def watch(provider: str, method: bytes, path: str, base: str | None = None) -> Watch | None:
    """
    Whether a relayed call's answer tells about a batch, and how. C{base} is the
    proxy's URL as the client called it (L{None} if its Host header cannot say).
    """
    if provider == anthropic.NAME:
        found = _ANTHROPIC_RESULTS.fullmatch(path)
        if found and method == b"GET":
            return Watch(provider, "results", batch_id=found.group(1))
        if _ANTHROPIC_BATCHES.fullmatch(path) and base is not None:
            return Watch(provider, "urls", base=base)
    elif provider == openai.NAME:
        found = _OPENAI_FILE.fullmatch(path)
        if found and method == b"GET":
            return Watch(provider, "results", file_id=found.group(1))
        if _OPENAI_BATCHES.fullmatch(path):
            return Watch(provider, "objects")
    return None


def _result(provider: str, line: bytes) -> Result | None:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        return None
    custom_id = text(obj.get("custom_id"), 512)
    if custom_id is None:
        return None
    status: Any = 200
    if provider == anthropic.NAME:
        result = obj.get("result")
        answer = result.get("message") if isinstance(result, dict) else None
    else:
        response = obj.get("response")
        answer = response.get("body") if isinstance(response, dict) else None
        status = response.get("status_code") if isinstance(response, dict) else None
    if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
        return None
    slim = {name: answer[name] for name in ("model", "usage", "service_tier", "type") if name in answer}
    return Result(custom_id, status if type(status) is int else 200, slim)


#: What a claim of results gives: the batch, the endpoint it ran, the results never
#: recorded before.
Claimed = tuple[str, str, list[Result]]


@implementer(IMeter)
class _BatchMeter:
    """
    What every meter of an answer about a batch is: it relays the answer as it came
    (rewrites aside), reads no usage of its own, and tells its book what it read.
    """

    rewrites = False
    ended = False
    one_body = False
    body = None

    def __init__(self, watching: Watch, book: BatchBook) -> None:
        self.watching = watching
        self._book = book
        self.reading = Reading()

    def feed(self, chunk: bytes) -> bytes:
        raise NotImplementedError()

    def close(self) -> bytes:
        return b""


class ResultsMeter(_BatchMeter):
    """
    Relays a results file unchanged and keeps each whole line that reports usage.
    """

    def __init__(self, watching: Watch, book: BatchBook) -> None:
        super().__init__(watching, book)
        self.results: list[Result] = []
        self._partial: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            self._line(chunk[start:end])
            start = end + 1
        if start < len(chunk):
            self._size += len(chunk) - start
            if self._size <= LINE_LIMIT:
                self._partial.append(chunk[start:])
        return chunk

    def close(self) -> bytes:
        self._line(b"")  # a last line without a newline
        return b""

    def _line(self, piece: bytes) -> None:
        if self._partial:
            too_long = self._size + len(piece) > LINE_LIMIT
            line = b"".join((*self._partial, piece))
            self._partial, self._size = [], 0
            if too_long:
                return
        else:
            line = piece
        if b'"usage"' not in line:
            return
        try:
            result = _result(self.watching.provider, line)
        except (ValueError, AttributeError, RecursionError):
            log.warn("A batch result line is not JSON; it is relayed, not metered")
            return
        if result is not None:
            self.results.append(result)

    def told(self) -> Deferred[Claimed | None]:
        """
        The results read, claimed in the book: those never recorded before.
        """
        return self._book.claim(self.watching, self.results) if self.results else succeed(None)


class ObjectsMeter(_BatchMeter):
    """
    Relays OpenAI batch objects unchanged and keeps the body, to learn which output
    file holds which batch's results.
    """

    def __init__(self, watching: Watch, book: BatchBook) -> None:
        super().__init__(watching, book)
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size <= OBJECT_LIMIT:
            self._chunks.append(chunk)
        return chunk


    def told(self) -> Deferred[Claimed | None]:
        """
        Which output file holds which batch's results, learned in the book; no results.
        """
        outputs = self.outputs()
        return self._book.learn(outputs).addCallback(lambda _: None) if outputs else succeed(None)

    def outputs(self) -> list[tuple[str, str, str]]:
        """
        (output file, batch, endpoint) of every completed batch object in the body.
        """
        if self._size > OBJECT_LIMIT:
            return []
        try:
            obj = json.loads(b"".join(self._chunks))
        except (ValueError, RecursionError):
            return []
        batches = obj.get("data") if isinstance(obj, dict) and obj.get("object") == "list" else [obj]
        found = []
        for batch in batches if isinstance(batches, list) else ():
            if not isinstance(batch, dict):
                continue
            file_id, batch_id, endpoint = (text(batch.get(k), 256) for k in ("output_file_id", "id", "endpoint"))
            if file_id and batch_id and endpoint in _READERS:
                found.append((file_id, batch_id, endpoint))
        return found


class ResultsUrlMeter(ObjectsMeter):
    """
    Anthropic's batch objects name where their results are as an absolute URL
    (C{results_url}, on api.anthropic.com), which the SDKs fetch as it is: past the
    proxy, unmetered, with the caller's key. The proxy gives its own URL for the same
    path instead; the rest of the body is relayed as it came.
    """

    rewrites = True  # the body changes: it is sent at its end, with its new length

    def feed(self, chunk: bytes) -> bytes:
        super().feed(chunk)
        return chunk if self._size > OBJECT_LIMIT else b""

    def close(self) -> bytes:
        body = b"".join(self._chunks)
        if self._size > OBJECT_LIMIT:
            return b""
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            return body
        data = obj.get("data") if isinstance(obj, dict) else None
        changed = False
        for batch in data if isinstance(data, list) else [obj]:
            if isinstance(batch, dict) and isinstance(batch.get("results_url"), str) and text(batch.get("id"), 256):
                batch["results_url"] = f"{self.watching.base}/v1/messages/batches/{batch['id']}/results"
                changed = True
        return json.dumps(obj).encode() if changed else body


BatchMeter = ResultsMeter | ObjectsMeter


def meter_for(watching: Watch, book: BatchBook) -> BatchMeter:
    """
    The meter for an answer about a batch, which tells C{book} what it read.
    """
    if watching.kind == "results":
        return ResultsMeter(watching, book)
    return ResultsUrlMeter(watching, book) if watching.kind == "urls" else ObjectsMeter(watching, book)


def reading_of(endpoint: str, result: Result) -> Reading:
    """
    A result's reading, priced as a batch.
    """
    try:
        reading = _READERS[endpoint](result.answer)
    except UnreadableUsage as e:
        return Reading(model=text(result.answer.get("model")), usage_error=str(e))
    reading.price_context = {**reading.price_context, "processing": "batch"}
    return reading


class BatchBook:
    """
    What this install learned about batches, and which results it has recorded
    (C{state/batches/}). Every file operation runs in C{threads}, serialised in this
    process by a lock and across processes by C{flock}.
    """

    def __init__(self, directory: Path, reactor: Any, threads: Any) -> None:
        self._directory = directory
        self._reactor = reactor
        self._threads = threads
        self._lock = threading.Lock()
        self._running: set[Deferred[Any]] = set()

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d = deferToThreadPool(self._reactor, self._threads, f, *args)
        self._running.add(d)

        def done(result: Any) -> Any:
            self._running.discard(d)
            return result

        return d.addBoth(done)

    def wait(self) -> Deferred[Any]:
        """
        Fires once every claim and lesson under way has been made (and, for a claim,
        its events handed to the sinks): a stop waits for it before the log closes.
        """
        waiters: list[Deferred[None]] = []
        for d in list(self._running):
            waiter: Deferred[None] = Deferred()
            d.addBoth(_passing(waiter))  # after every callback added so far
            waiters.append(waiter)
        return gatherResults(waiters)

    def learn(self, outputs: list[tuple[str, str, str]]) -> Deferred[Any]:
        return self._in_thread(self._learn, outputs)

    def claim(self, watching: Watch, results: list[Result]) -> Deferred[Claimed | None]:
        """
        The batch, its endpoint and the results never recorded before (now marked as
        recorded); L{None} if the file is no batch's output this install knows of.
        """
        return self._in_thread(self._claim, watching, results)

    @contextmanager
    def _locked(self, name: str) -> Iterator[Any]:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._directory / name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with self._lock, os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            yield f

    def _learn(self, outputs: list[tuple[str, str, str]]) -> None:
        with self._locked("outputs") as f:
            known = set(f.read().splitlines())
            lines = [json.dumps([file_id, batch_id, endpoint]) for file_id, batch_id, endpoint in outputs]
            new = [line for line in dict.fromkeys(lines) if line not in known]
            if new:
                f.write("".join(line + "\n" for line in new))
                f.flush()
                os.fsync(f.fileno())

    def _batch_of(self, file_id: str) -> tuple[str, str] | None:
        with self._locked("outputs") as f:
            for line in f.read().splitlines():
                try:
                    output, batch_id, endpoint = json.loads(line)
                except ValueError:
                    continue
                if output == file_id:
                    return batch_id, endpoint
        return None

    def _claim(self, watching: Watch, results: list[Result]) -> Claimed | None:
        if watching.batch_id is not None:
            batch_id, endpoint = watching.batch_id, "/v1/messages"
        else:
            found = self._batch_of(watching.file_id or "")
            if found is None:
                return None
            batch_id, endpoint = found
        name = f"{watching.provider}-{hashlib.sha256(batch_id.encode()).hexdigest()[:32]}.seen"
        with self._locked(name) as f:
            seen = {json.loads(line) for line in f.read().splitlines() if line}
            new = []
            for result in results:
                if result.custom_id not in seen:
                    seen.add(result.custom_id)
                    new.append(result)
            if new:
                f.write("".join(json.dumps(result.custom_id) + "\n" for result in new))
                f.flush()
                os.fsync(f.fileno())
        return batch_id, endpoint, new


def _passing(waiter: Deferred[None]) -> Callable[[Any], Any]:
    def fire(result: Any) -> Any:
        waiter.callback(None)
        return result

    return fire


def failed(failure: Any) -> None:
    log_failure(log, "Could not record a batch's results", failure)
