"""
Fixtures that run the real proxy service and a fake upstream on 127.0.0.1, each on a
port the kernel picks, inside pytest-twisted's reactor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.web.server import Site

from modeltrack.ops.service import ModeltrackService
from modeltrack.ops.settings import Settings
from tests.fakes import FakeUpstream


@dataclass
class Upstream:
    resource: FakeUpstream
    url: str


@dataclass
class Proxy:
    service: ModeltrackService
    url: str
    data_dir: Path

    def events(self) -> list[dict[str, Any]]:
        """
        Every event on disk, live file and sealed segments, oldest first.
        """
        lines: list[dict[str, Any]] = []
        for path in sorted(self.data_dir.glob("events-*.jsonl")) + [self.data_dir / "events.jsonl"]:
            if path.exists():
                lines += [json.loads(line) for line in path.read_text().splitlines()]
        return lines

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.service.admin_port.getHost().port}"

    def flushed(self) -> Deferred[None]:
        return self.service.journal.flush()

    async def settled(self) -> None:
        """
        Every batch result claimed and its event on disk.
        """
        await self.service.resource.batches.wait()
        await self.flushed()


def serving(reactor: Any, resource: Any) -> Any:
    """
    Serve a fake provider's C{resource} on 127.0.0.1 for a test (its origin set as
    C{resource.url}); stops listening after it.
    """
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = pytest_twisted.blockon(endpoint.listen(QuietSite(resource)))
    resource.url = f"http://127.0.0.1:{port.getHost().port}"
    yield resource
    pytest_twisted.blockon(port.stopListening())


class QuietSite(Site):
    """
    The fake provider's site, without an access log: its lines would hold what the
    provider receives (keys in queries included), which tests search the log for.
    """

    def log(self, request: Any) -> None:
        pass


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def upstream(reactor: Any) -> Any:
    resource = FakeUpstream()
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = pytest_twisted.blockon(endpoint.listen(QuietSite(resource)))
    yield Upstream(resource, f"http://127.0.0.1:{port.getHost().port}")
    for request, _ in resource.open_requests:
        if not request.finished and request.channel is not None:
            request.channel.transport.abortConnection()
    pytest_twisted.blockon(port.stopListening())


#: A provider's origin as start_proxy takes it (a keyword per option), and its name.
PROVIDER_URLS = {
    "openai_url": "openai", "anthropic_url": "anthropic", "azure_url": "azure", "bedrock_url": "bedrock",
    "gemini_url": "google", "vertex_url": "vertex",
}


def start_proxy(reactor: Any, data_dir: Path, upstream_url: str, dialects: Any = None, **overrides: Any) -> Proxy:
    """
    The proxy on a port of its own, OpenAI and Anthropic at C{upstream_url}; each
    C{<option>_url} keyword is that provider's origin, C{bedrock_region} and
    C{bedrock_sign} Bedrock's region and signing, the rest L{Settings} fields.
    """
    urls = {"openai": upstream_url, "anthropic": upstream_url}
    urls.update({PROVIDER_URLS[key]: overrides.pop(key) for key in list(overrides) if key in PROVIDER_URLS})
    regions = {"bedrock": overrides.pop("bedrock_region")} if "bedrock_region" in overrides else {}
    signing = frozenset({"bedrock"} if overrides.pop("bedrock_sign", False) else ())
    settings = Settings(
        listen=("tcp:0:interface=127.0.0.1",),
        data_dir=data_dir,
        urls=urls,
        regions=regions,
        signing=signing,
        **{"access_log": True, **overrides},
    )
    service = ModeltrackService(settings, reactor) if dialects is None else ModeltrackService(settings, reactor, dialects)
    service.startService()
    port = service.ports[0].getHost().port
    return Proxy(service, f"http://127.0.0.1:{port}", data_dir)


@pytest.fixture(params=["fast-path", "public-api"])
def proxy(request: Any, reactor: Any, tmp_path: Path, upstream: Upstream) -> Any:
    """
    The proxy on each of its paths: the fast one, and Twisted's public API alone
    (C{--no-fast-path}, and what a Twisted lacking the fast path's internals gets).
    """
    running = start_proxy(reactor, tmp_path, upstream.url, fast_path=request.param == "fast-path")
    assert running.service.fast_path is (request.param == "fast-path")
    yield running
    if running.service.running:
        pytest_twisted.blockon(running.service.stopService())
