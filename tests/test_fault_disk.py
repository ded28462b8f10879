"""
Fault suite: the disk fills up under the event log (a small tmpfs as the data dir).
Calls keep their promised behaviour (answered, their events queued), /readyz says 503,
and once space returns every queued event is written once, none twice.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from tests import rawhttp
from tests.conftest import start_proxy
from tests.test_sdk import in_thread

SIZE = 4 << 20
ROOM = 24 << 10  # left free: a few dozen events


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def log_says(text: str) -> Deferred[None]:
    """
    Fires when a log event's format contains C{text}.
    """
    said: Deferred[None] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if text in (event.get("log_format") or "") and not said.called:
            globalLogPublisher.removeObserver(observe)
            said.callback(None)

    globalLogPublisher.addObserver(observe)
    return said


def readyz(port: int) -> int:
    return rawhttp.status_of(rawhttp.exchange(port, b"GET /readyz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"))


@pytest_twisted.ensureDeferred
async def test_a_full_disk_queues_events_and_writes_each_once_when_space_returns(
    reactor: Any, small_disk: Path, upstream: Any
) -> None:
    proxy = start_proxy(reactor, small_disk, upstream.url)
    port = proxy.service.ports[0].getHost().port
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-disk", max_retries=0)
    user = [{"role": "user", "content": "hi"}]
    try:
        await in_thread(client.chat.completions.create, model="gpt-4o", messages=user)
        await proxy.flushed()
        filler = small_disk / "filler"
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"\0" * max(0, free - ROOM))
        failing = log_says("Event log write failed")

        def calls(count: int) -> list[str]:
            return [client.chat.completions.create(model="gpt-4o", messages=user).id for _ in range(count)]

        answered = await in_thread(calls, 60)  # every call answered, disk or not
        await failing
        assert await in_thread(readyz, port) == 503
        assert proxy.service.journal.queued > 0
        answered += await in_thread(calls, 20)  # still answered while the disk is full
        recovered = log_says("Event log writable again")
        filler.unlink()
        await recovered
        await proxy.flushed()
        assert await in_thread(readyz, port) == 200
    finally:
        await proxy.service.stopService()
    events = proxy.events()  # every line parses
    ids = [e["request_id"] for e in events]
    assert len(ids) == len(set(ids)) == 1 + len(answered)  # each once, none lost
    assert all(e["outcome"] == "ok" for e in events)
