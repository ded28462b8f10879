"""
Uploads of any size: a body to a route the proxy need not read goes to the provider as
it arrives, with backpressure, never held whole (a 600 MB file through the openai SDK
while the proxy, run by twistd, grows by less than 64 MB); a client that stalls mid-body
is cut, one that leaves takes the upstream request with it; a metered route keeps the
cap.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest_twisted
from twisted.internet.task import deferLater

from tests import processes
from tests.conftest import start_proxy
from tests.rawhttp import exchange, status_of
from tests.test_sdk import in_thread

MB = 1 << 20


def rss_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_a_600_mb_upload_streams_through_in_bounded_memory(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    big = tmp_path / "batch.jsonl"
    with big.open("wb") as f:
        f.truncate(600 * MB)  # sparse: the bytes are read, never stored
    port = free_port()
    proxy = processes.proxy(port, tmp_path / "data", upstream.url)
    received: list[int] = []
    try:
        await in_thread(proxy.wait_for, processes.listening)
        pid = proxy.process.pid
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-upload", max_retries=0, timeout=300)
        # Warm the proxy up with one small call, then take its memory as the baseline.
        await in_thread(client.files.list)
        before = rss_mb(pid, "VmRSS")
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(pid, "VmRSS"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with big.open("rb") as f:
                uploaded = await in_thread(client.files.create, file=("batch.jsonl", f), purpose="batch")
        finally:
            done.set()
            sampler.join()
        received = [s.size for s in upstream.resource.seen if s.path == b"/v1/files" and s.method == b"POST"]
    finally:
        await in_thread(proxy.stop, signal.SIGTERM)
    assert uploaded.id == "file-1"
    assert received and received[0] > 600 * MB  # the whole multipart body reached the provider
    assert peak[0] - before < 64, (before, peak[0])


def partial_upload(port: int, length: int, sent: int, key: bytes = b"sk-stall") -> bytes:
    """A POST of C{length} bytes that sends C{sent} and waits: what comes back before the proxy closes."""
    head = (b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + b"\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % length)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head + b"\0" * sent)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # cut
        return received


def leave(port: int, length: int, sent: int) -> None:
    head = (b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-leave\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % length)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head + b"\0" * sent)


@pytest_twisted.ensureDeferred
async def test_a_stalled_upload_is_cut_and_a_client_that_leaves_cancels_the_upstream(
    reactor: Any, tmp_path: Path, upstream: Any,
) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, idle_timeout=0.3)
    port = proxy.service.ports[0].getHost().port
    resource = proxy.service.resource
    try:
        cut = await in_thread(partial_upload, port, 100 * MB, 2 * MB)
        await in_thread(leave, port, 100 * MB, 3 * MB)
        for _ in range(300):  # each turn of the reactor looked at
            if not resource.in_flight and not resource.open_requests:
                break
            await deferLater(reactor, 0.01, lambda: None)
        # A metered route keeps the cap: its body is read.
        too_big = await in_thread(exchange, port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nConnection: close\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (40 * MB) + b" " * (40 * MB))
    finally:
        await proxy.service.stopService()
    assert cut == b""  # cut, with nothing to say to a client that stopped sending
    assert not resource.in_flight
    assert not [s for s in upstream.resource.seen if s.path == b"/v1/files"]  # neither upload completed upstream
    assert status_of(too_big) == 413


@pytest_twisted.ensureDeferred
async def test_an_upload_refused_at_its_head_is_answered_once_and_recorded(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    """Refused before its body is all here (an unknown key under unknown_keys: deny): one
    401 in OpenAI's shape, the connection closed, the rest of the body not read as a next
    request, one rejected event, nothing sent upstream."""
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{"key_id": "k_0123456789abcdef", "name": "ci"}],
                                                    "unknown_keys": "deny"}))
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    port = proxy.service.ports[0].getHost().port
    try:
        answer = await in_thread(partial_upload, port, 50 * MB, 3 * MB, b"sk-unknown")  # a key the keys file does not know
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert status_of(answer) == 401 and answer.count(b"HTTP/1.1") == 1 and b"unknown_key" in answer
    [event] = proxy.events()
    assert event["outcome"] == "rejected" and event["status_code"] == 401
    assert not [s for s in upstream.resource.seen if s.path == b"/v1/files"]
