"""
Bedrock through the proxy as users call it: Claude through C{AnthropicBedrock} (InvokeModel,
streamed and not), Converse through boto3's C{bedrock-runtime} client (over the TLS
listener: botocore sends a Bedrock API key only over https), against a fake Bedrock that
streams real event-stream frames.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anthropic
import boto3
import botocore.config
import pytest
import pytest_twisted
import treq

from tests.conftest import serving, start_proxy
from tests.fake_bedrock import FakeBedrock, invoke_stream
from tests.test_listen_tls import ca_and_server
from tests.test_sdk import SONNET_COST, in_thread

GLOBAL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
REGIONAL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
KEY = "bedrock-api-key-CANARY-0001"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def bedrock(reactor: Any) -> Any:
    yield from serving(reactor, FakeBedrock())


def claude(proxy: Any) -> anthropic.AnthropicBedrock:
    return anthropic.AnthropicBedrock(base_url=proxy.url + "/bedrock", api_key=KEY, aws_region="us-east-1", max_retries=0)


@pytest_twisted.ensureDeferred
async def test_claude_invoke_streamed_and_not_costs_the_same(reactor: Any, tmp_path: Path, bedrock: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", bedrock_url=bedrock.url)
    client = claude(proxy)

    def calls() -> list[str]:
        answer = client.messages.create(model=GLOBAL, max_tokens=100, messages=USER)
        with client.messages.stream(model=GLOBAL, max_tokens=100, messages=USER) as stream:
            streamed = stream.get_final_text()
        client.messages.create(model=REGIONAL, max_tokens=100, messages=USER)
        return [answer.content[0].text, streamed]

    try:
        assert await in_thread(calls) == ["Hello world", "Hello world"]
    finally:
        await proxy.service.stopService()
    plain, streamed, regional = proxy.events()
    for event in (plain, streamed):
        assert (event["provider"], event["model"], event["requested_model"]) == ("bedrock", GLOBAL, GLOBAL)
        assert event["endpoint"] in ("/model/{modelId}/invoke", "/model/{modelId}/invoke-with-response-stream")
        assert event["outcome"] == "ok" and event["usage_complete"] is True
        assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"]) == (52120, 50000, 2000)
        assert Decimal(str(event["cost_usd"])) == SONNET_COST  # global. profile: Anthropic's own rates
    assert streamed["streaming"] is True and plain["streaming"] is False
    # A regional profile costs 10 % more, as genai-prices prices it.
    assert Decimal(str(regional["cost_usd"])) == SONNET_COST * Decimal("1.1")
    # The key went to Bedrock untouched, the model id encoded as the SDK sent it (its colons not).
    seen = bedrock.seen[0]
    assert seen.header(b"authorization") == [f"Bearer {KEY}".encode()]
    assert seen.path == b"/model/" + quote(GLOBAL, safe=":").encode() + b"/invoke"
    assert KEY.encode() not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


@pytest_twisted.ensureDeferred
async def test_converse_through_boto3_over_tls(reactor: Any, tmp_path: Path, bedrock: Any, monkeypatch: Any) -> None:
    bundle, cert, key, _, _ = ca_and_server(tmp_path, "bedrock CA")
    proxy = start_proxy(
        reactor, tmp_path / "data", "http://127.0.0.1:9", bedrock_url=bedrock.url,
        tls_cert=cert, tls_key=key, listen_tls=("tcp:0:interface=127.0.0.1",),
    )
    port = proxy.service.ports[1].getHost().port
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", KEY)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)

    def calls() -> list[Any]:
        client = boto3.client(
            "bedrock-runtime", region_name="us-east-1", endpoint_url=f"https://localhost:{port}/bedrock",
            verify=str(bundle), config=botocore.config.Config(retries={"max_attempts": 1}),
        )
        messages = [{"role": "user", "content": [{"text": "hi"}]}]
        answer = client.converse(modelId=GLOBAL, messages=messages)
        stream = client.converse_stream(modelId=GLOBAL, messages=messages)
        events = list(stream["stream"])
        try:
            client.converse(modelId="fail-400", messages=messages)
        except client.exceptions.ValidationException as e:
            refused = e.response["Error"]["Code"]
        return [answer["usage"], events[-1]["metadata"]["usage"], refused]

    try:
        plain_usage, streamed_usage, refused = await in_thread(calls)
    finally:
        await proxy.service.stopService()
    assert plain_usage == streamed_usage and plain_usage["cacheReadInputTokens"] == 50000
    assert refused == "ValidationException"
    plain, streamed, failed = proxy.events()
    assert Decimal(str(plain["cost_usd"])) == Decimal(str(streamed["cost_usd"])) == SONNET_COST
    assert streamed["endpoint"] == "/model/{modelId}/converse-stream" and streamed["streaming"] is True
    assert (failed["outcome"], failed["status_code"], failed["error_type"]) == ("upstream_error", 400, "ValidationException")
    assert bedrock.seen[0].header(b"authorization") == [f"Bearer {KEY}".encode()]


@pytest_twisted.ensureDeferred
async def test_a_broken_or_failing_stream_reaches_the_client_as_sent(reactor: Any, tmp_path: Path, bedrock: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", bedrock_url=bedrock.url)
    try:
        bodies = {}
        for model in ("bad-frames", "throttled"):
            response = await treq.post(
                f"{proxy.url}/bedrock/model/{model}/invoke-with-response-stream",
                data=json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": USER}).encode(),
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            )
            bodies[model] = await response.content()
        counted = await treq.post(
            f"{proxy.url}/bedrock/model/{quote(GLOBAL, safe='')}/count-tokens", data=b"{}",
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert json.loads(await counted.content()) == {"inputTokens": 42}
    finally:
        await proxy.service.stopService()
    frames = invoke_stream()
    broken = bytearray(frames[2])
    broken[-1] ^= 0xFF
    assert bodies["bad-frames"] == frames[0] + frames[1] + bytes(broken) + b"".join(frames[3:])
    bad, throttled = proxy.events()  # count-tokens is relayed: no event
    assert (bad["outcome"], bad["error_type"]) == ("stream_error", "invalid_event_stream")
    assert (throttled["outcome"], throttled["error_type"]) == ("stream_error", "throttlingException")


@pytest_twisted.ensureDeferred
async def test_an_arn_is_priced_through_its_alias(reactor: Any, tmp_path: Path, bedrock: Any) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", bedrock_url=bedrock.url, config_poll_seconds=3600)
    client = claude(proxy)
    try:
        await in_thread(client.messages.create, model=arn, max_tokens=10, messages=USER)
        (tmp_path / "pricing.json").write_text(json.dumps({"aliases": {arn: GLOBAL}}))
        proxy.service.control_files.reload()
        await in_thread(client.messages.create, model=arn, max_tokens=10, messages=USER)
    finally:
        await proxy.service.stopService()
    unmapped, mapped = proxy.events()
    assert unmapped["requested_model"] == arn and unmapped["priced"] is False and unmapped["cost_usd"] is None
    assert (mapped["requested_model"], mapped["model"]) == (arn, GLOBAL)
    assert Decimal(str(mapped["cost_usd"])) == SONNET_COST
    assert bedrock.seen[0].path == b"/model/" + quote(arn, safe=":").encode() + b"/invoke"


@pytest_twisted.ensureDeferred
async def test_sign_mode_signs_with_the_proxys_credentials(
    reactor: Any, tmp_path: Path, bedrock: Any, monkeypatch: Any
) -> None:
    from botocore.credentials import Credentials

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPROXYEXAMPLE0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "proxy-secret-CANARY-0001")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "proxy-session-token-0001")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bedrock.credentials = Credentials("AKIAPROXYEXAMPLE0001", "proxy-secret-CANARY-0001", "proxy-session-token-0001")
    listed = "caller-key-CANARY-0002"
    from modeltrack.controls.keys import fingerprint, install_secret

    key_id = fingerprint(install_secret(tmp_path / "state"), listed.encode())
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{"key_id": key_id, "name": "ranker", "team": "search"}]}))
    proxy = start_proxy(
        reactor, tmp_path, "http://127.0.0.1:9", bedrock_url=bedrock.url, bedrock_region="us-east-1", bedrock_sign=True
    )

    def calls() -> list[Any]:
        client = anthropic.AnthropicBedrock(base_url=proxy.url + "/bedrock", api_key=listed, aws_region="us-east-1", max_retries=0)
        answer = client.messages.create(model=GLOBAL, max_tokens=100, messages=USER)
        with client.messages.stream(model=GLOBAL, max_tokens=100, messages=USER) as stream:
            streamed = stream.get_final_text()
        stranger = anthropic.AnthropicBedrock(
            base_url=proxy.url + "/bedrock", api_key="stranger-key", aws_region="us-east-1", max_retries=0
        )
        try:
            stranger.messages.create(model=GLOBAL, max_tokens=100, messages=USER)
        except anthropic.AuthenticationError as e:
            refused = e.status_code
        return [answer.content[0].text, streamed, refused]

    try:
        assert await in_thread(calls) == ["Hello world", "Hello world", 401]
        # An AWS client's own signature and session headers are dropped, never forwarded.
        response = await treq.post(
            f"{proxy.url}/bedrock/model/{quote(GLOBAL, safe=':')}/converse", data=b'{"messages":[]}',
            headers={
                "Authorization": f"Bearer {listed}", "X-Amz-Security-Token": "caller-token-CANARY",
                "X-Amz-Date": "20200101T000000Z", "Content-Type": "application/json",
            },
        )
        assert response.code == 200, await response.content()
    finally:
        await proxy.service.stopService()
    assert len(bedrock.seen) == 3  # the stranger reached nothing
    for seen in bedrock.seen:  # each passed the fake's signature check
        assert seen.header(b"authorization")[0].startswith(b"AWS4-HMAC-SHA256 Credential=AKIAPROXYEXAMPLE0001/")
        assert seen.header(b"x-amz-security-token") == [b"proxy-session-token-0001"]
        assert listed.encode() not in repr(seen.headers).encode()
    assert b"caller-token-CANARY" not in repr(bedrock.seen[-1].headers).encode()
    ok = [e for e in proxy.events() if e["outcome"] == "ok"]
    assert len(ok) == 3 and all(e["key_name"] == "ranker" and e["team"] == "search" for e in ok)
    assert Decimal(str(ok[0]["cost_usd"])) == Decimal(str(ok[1]["cost_usd"])) == SONNET_COST


@pytest_twisted.ensureDeferred
async def test_the_fake_refuses_a_signature_from_other_credentials(
    reactor: Any, tmp_path: Path, bedrock: Any, monkeypatch: Any
) -> None:
    from botocore.credentials import Credentials

    from modeltrack.controls.keys import fingerprint, install_secret

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPROXYEXAMPLE0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-bedrock-knows")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    bedrock.credentials = Credentials("AKIAPROXYEXAMPLE0001", "the-real-secret", None)
    key_id = fingerprint(install_secret(tmp_path / "state"), KEY.encode())
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{"key_id": key_id, "name": "ranker"}]}))
    proxy = start_proxy(
        reactor, tmp_path, "http://127.0.0.1:9", bedrock_url=bedrock.url, bedrock_region="us-east-1", bedrock_sign=True
    )
    try:
        with pytest.raises(anthropic.PermissionDeniedError):
            await in_thread(claude(proxy).messages.create, model=GLOBAL, max_tokens=10, messages=USER)
    finally:
        await proxy.service.stopService()
    (event,) = proxy.events()
    assert (event["status_code"], event["error_type"]) == (403, "InvalidSignatureException")


def test_sign_mode_stops_start_up_without_credentials(reactor: Any, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask here
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(SystemExit) as stopped:
        start_proxy(reactor, tmp_path, "http://127.0.0.1:9", bedrock_url="http://127.0.0.1:9", bedrock_region="us-east-1", bedrock_sign=True)
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        "modeltrack: --bedrock-sign: botocore found no AWS credentials (environment, profile or instance role)\n"
    )


def test_bedrock_options(capsys: Any) -> None:
    from modeltrack.ops.options import Options

    def settings(*argv: str) -> Any:
        options = Options()
        options.parseOptions(["--data-dir", "/tmp", *argv])
        return options.settings

    for argv, problem in (
        (["--bedrock-sign"], "--bedrock-sign: needs --bedrock-region"),
        (["--bedrock-region", "mars"], "--bedrock-region: 'mars' is not an AWS region"),
    ):
        with pytest.raises(SystemExit):
            settings(*argv)
        assert capsys.readouterr().err.startswith("modeltrack: " + problem)
    assert settings("--bedrock-region", "eu-west-1").urls["bedrock"] == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    assert "bedrock" not in settings().urls  # no Bedrock routes unless asked


def test_sign_mode_without_botocore_says_what_to_install(monkeypatch: Any, capsys: Any) -> None:
    import importlib.util

    from modeltrack.ops.options import Options

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "botocore" else real(name, *a))
    with pytest.raises(SystemExit):
        Options().parseOptions(["--data-dir", "/tmp", "--bedrock-region", "us-east-1", "--bedrock-sign"])
    assert capsys.readouterr().err == "modeltrack: --bedrock-sign: needs botocore: pip install 'modeltrack[aws]'\n"


@pytest_twisted.ensureDeferred
async def test_any_model_is_metered_by_bedrocks_token_headers(reactor: Any, tmp_path: Path, bedrock: Any) -> None:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    llama = "meta.llama3-70b-instruct-v1:0"
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", bedrock_url=bedrock.url)
    try:
        response = await treq.post(
            f"{proxy.url}/bedrock/model/{llama}/invoke", data=json.dumps({"prompt": "hi", "max_gen_len": 5}).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        assert json.loads(await response.content())["generation"] == "Hello world"
    finally:
        await proxy.service.stopService()
    (event,) = proxy.events()
    assert (event["model"], event["input_tokens"], event["output_tokens"], event["usage_complete"]) == (llama, 20, 5, True)
    expected = calc_price(PriceUsage(input_tokens=20, output_tokens=5), llama, provider_id="aws").total_price
    assert Decimal(str(event["cost_usd"])) == Decimal(expected)
