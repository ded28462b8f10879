"""
Adding a provider is its module, its line in the registry, and its tests: a toy one
(tests/toy_provider.py) gets its option from twistd's options, its routes, its error
shape and its events, and the official OpenAI SDK calls it through the proxy.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
import treq
from twisted.python import usage

from modeltrack.ops.options import Options, options_for
from modeltrack.ops.service import ModeltrackService
from modeltrack.providers import registry
from tests import toy_provider
from tests.conftest import Proxy
from tests.test_sdk import in_thread

#: The registry's list with the toy's line in it.
DIALECTS = (toy_provider.DIALECT, *registry.DIALECTS)


def settings_with_the_toy(tmp_path: Path, origin: str) -> Any:
    options = options_for(DIALECTS)()
    options.parseOptions([
        "--data-dir", str(tmp_path), "--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "none",
        "--toy-url", origin, "--openai-url", "http://127.0.0.1:9", "--anthropic-url", "http://127.0.0.1:9",
    ])
    return options


def test_the_toy_declares_its_option(tmp_path: Path) -> None:
    options = settings_with_the_toy(tmp_path, "http://127.0.0.1:7")
    assert options.settings.urls["toy"] == "http://127.0.0.1:7"
    assert "--toy-url" in str(options) and "The toy provider's origin" in str(options)
    with pytest.raises(usage.UsageError):  # without its registry line, no such option
        Options().parseOptions(["--data-dir", str(tmp_path), "--toy-url", "http://127.0.0.1:7"])


@pytest_twisted.ensureDeferred
async def test_the_toy_through_the_openai_sdk(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    # Its price, from pricing.json: a provider genai-prices does not know.
    (tmp_path / "pricing.json").write_text(json.dumps(
        {"providers": {"toy": {"models": {"gpt-4o-2024-08-06": {"input_mtok": 1, "output_mtok": 2}}}}}
    ))
    service = ModeltrackService(settings_with_the_toy(tmp_path, upstream.url).settings, reactor, DIALECTS)
    service.startService()
    proxy = Proxy(service, f"http://127.0.0.1:{service.ports[0].getHost().port}", tmp_path)
    try:
        client = openai.OpenAI(base_url=proxy.url + "/toy/v1", api_key="toy-key-1", max_retries=0)
        answer = await in_thread(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert answer.usage is not None and answer.usage.prompt_tokens == 1200
        refused = await treq.post(proxy.url + "/toy/v1/chat/completions", data=b"[1]", headers={"Authorization": "Bearer k"})
        assert refused.code == 400
        assert (await refused.json())["toy_error"]["kind"] == "invalid_request_error"  # the toy's own shape
        await proxy.flushed()
        ok, rejected = proxy.events()
        assert (ok["provider"], ok["endpoint"], ok["model"], ok["outcome"]) == ("toy", "/v1/chat/completions", "gpt-4o-2024-08-06", "ok")
        assert (ok["input_tokens"], ok["output_tokens"], ok["cache_read_tokens"]) == (1200, 300, 0)  # the toy's reader
        assert Decimal(str(ok["cost_usd"])) == (1200 * 1 + 300 * 2) / Decimal(10**6) and ok["price_source"] == "pricing.json"
        assert ok["key_id"] is not None and rejected["provider"] == "toy" and rejected["outcome"] == "rejected"
        [seen] = upstream.resource.seen  # the toy's origin, its path, the caller's key
        assert seen.path == b"/v1/chat/completions" and (b"Authorization", [b"Bearer toy-key-1"]) in seen.headers
    finally:
        await service.stopService()


def test_the_registry_lists_every_dialect_the_package_defines() -> None:
    """
    The registry tells the truth: every dialect a provider module defines is in it,
    and a configured upstream's comes from the one place too.
    """
    import importlib
    import pkgutil

    from modeltrack import providers
    from modeltrack.providers.dialect import Dialect

    defined = set()
    for found in pkgutil.iter_modules(providers.__path__):
        module = importlib.import_module(f"modeltrack.providers.{found.name}")
        defined |= {value.name for name, value in vars(module).items() if isinstance(value, Dialect) and name.endswith("DIALECT")}
    assert defined == {dialect.name for dialect in registry.DIALECTS}
    served = registry.served({"azure": "https://a.example"}, [("groq", "https://g.example")])
    assert [d.name for d, _ in served] == ["groq", "azure", "google", "vertex", "anthropic", "openai"]
