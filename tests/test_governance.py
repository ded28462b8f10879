"""
Every dollar counted, where it cannot be metered too: one credential per call, no
metered route reached by a near-miss path, and routes billed but not meterable from
their answers (fine-tuning, vector stores, containers, WebRTC calls, ...) recorded as
unpriced spend and governed by --unmetered-billable.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted

from modeltrack.controls.budgets import Budget
from modeltrack.controls.gate import UnmeteredBillable
from tests.conftest import start_proxy
from tests.fakes import CHAT_USAGE
from tests.memory import Harness, answer, body_of, status_of
from tests.test_sdk import in_thread

CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def raw(h: Harness, path: str, headers: list[tuple[str, str]], body: bytes = CHAT) -> Any:
    """
    Send one request with exactly these header lines (repeats included).
    """
    channel, transport = h.connect()
    lines = [f"POST {path} HTTP/1.1", "Host: proxy.local", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}"]
    channel.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
    return transport


@pytest.mark.parametrize(
    "path, headers",
    [
        ("/v1/chat/completions", [("Authorization", "Bearer sk-a"), ("Authorization", "Bearer sk-b")]),
        ("/v1/messages", [("x-api-key", "sk-ant-a"), ("Authorization", "Bearer sk-ant-b")]),
        ("/v1/messages", [("x-api-key", "sk-ant-a"), ("x-api-key", "sk-ant-a")]),
    ],
)
def test_two_credentials_are_refused_before_anything_is_forwarded(path: str, headers: list[tuple[str, str]]) -> None:
    h = Harness()
    transport = raw(h, path, headers)
    assert status_of(transport) == 400 and h.agent.calls == []
    assert json.loads(body_of(transport))["error"]["type"] == "ambiguous_credentials"
    [event] = h.journal.events()
    assert event["outcome"] == "rejected" and event["key_id"] is None and event["error_type"] == "ambiguous_credentials"


def test_a_known_key_riding_along_an_unknown_one_gets_nothing_through() -> None:
    from modeltrack.controls.keys import KeyBook, KeyEntry, UnknownKeys

    h = Harness()
    known = h.keys.fingerprint(b"sk-known")
    h.keys.set_book(KeyBook({known: KeyEntry(known, "known")}, UnknownKeys.DENY))
    transport = raw(h, "/v1/chat/completions", [("Authorization", "Bearer sk-stranger"), ("Authorization", "Bearer sk-known")])
    assert status_of(transport) == 400 and h.agent.calls == []
    # One credential, and the dialect reads only Authorization: another header is the provider's to ignore.
    transport = raw(h, "/v1/chat/completions", [("Authorization", "Bearer sk-known"), ("x-api-key", "sk-other")])
    answer(h.agent.calls[0], {"model": "gpt-4o-2024-08-06", "choices": [], "usage": CHAT_USAGE})
    assert status_of(transport) == 200 and h.journal.events()[-1]["key_id"] == known


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions/", "/v1/Chat/Completions", "/v1//chat/completions", "/v1/v1/chat/completions",
        "/openai/v1/chat/completions/", "/v1/messages/", "/v1/responses/", "/v1/embeddings//",
    ],
)
def test_a_near_miss_of_a_metered_route_is_refused_not_relayed(path: str) -> None:
    h = Harness()
    transport = raw(h, path, [("Authorization", "Bearer sk-x")])
    assert status_of(transport) == 404 and h.agent.calls == []


def billable_harness(policy: UnmeteredBillable, budgets: list[Budget] | None = None) -> Harness:
    h = Harness(budgets=budgets)
    h.gate.unmetered_billable = policy
    return h


JOB = json.dumps({"model": "gpt-4o-mini-2024-07-18", "training_file": "file-1"}).encode()


def test_a_billable_route_is_an_unpriced_event_with_its_basis() -> None:
    h = billable_harness(UnmeteredBillable.BLOCK_UNDER_BUDGET)
    transport = raw(h, "/v1/fine_tuning/jobs", [("Authorization", "Bearer sk-x"), ("X-ModelTrack-Team", "ml")], JOB)
    [call] = h.agent.calls
    answer(call, {"id": "ftjob-1", "object": "fine_tuning.job"})
    assert status_of(transport) == 200
    [event] = h.journal.events()
    assert (event["endpoint"], event["route_class"], event["outcome"], event["priced"]) == (
        "/v1/fine_tuning/jobs", "billable", "ok", False
    )
    assert event["price_note"].startswith("fine-tuning: per trained token") and event["team"] == "ml"
    assert event["cost_usd"] is None and event["key_id"] is not None
    # Reading the job back is free: no event.
    channel, got = h.connect()
    channel.dataReceived(b"GET /v1/fine_tuning/jobs/ftjob-1 HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer sk-x\r\n\r\n")
    answer(h.agent.calls[1], {"id": "ftjob-1"})
    assert status_of(got) == 200 and len(h.journal.events()) == 1


@pytest.mark.parametrize(
    "policy, budget, refused",
    [
        (UnmeteredBillable.BLOCK_UNDER_BUDGET, Budget("ml", Decimal(100)), True),
        (UnmeteredBillable.BLOCK_UNDER_BUDGET, Budget("ml", Decimal(100), action="warn"), False),
        (UnmeteredBillable.BLOCK_UNDER_BUDGET, Budget("web", Decimal(100)), False),
        (UnmeteredBillable.ALLOW, Budget("ml", Decimal(100)), False),
        (UnmeteredBillable.DENY, None, True),
    ],
)
def test_the_policy_for_billable_calls(policy: UnmeteredBillable, budget: Budget | None, refused: bool) -> None:
    h = billable_harness(policy, [budget] if budget else None)
    transport = raw(h, "/v1/vector_stores", [("Authorization", "Bearer sk-x"), ("X-ModelTrack-Team", "ml")], b"{}")
    if refused:
        assert status_of(transport) == 403 and h.agent.calls == []
        body = json.loads(body_of(transport))
        assert body["error"]["type"] == "unmetered_billable" and "--unmetered-billable" in body["error"]["message"]
        [event] = h.journal.events()
        assert (event["outcome"], event["route_class"], event["endpoint"]) == ("rejected", "billable", "/v1/vector_stores")
    else:
        answer(h.agent.calls[0], {"id": "vs_1", "object": "vector_store"})
        assert status_of(transport) == 200
        [event] = h.journal.events()
        assert event["outcome"] == "ok" and event["price_note"] == "vector store storage: per GB-day"


@pytest_twisted.ensureDeferred
async def test_billable_calls_through_the_sdk_and_in_the_report(reactor: Any, tmp_path: Path, upstream: Any, capsys: Any) -> None:
    from modeltrack import cli

    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-ft", max_retries=0)
        job = await in_thread(client.fine_tuning.jobs.create, model="gpt-4o-mini-2024-07-18", training_file="file-1")
        assert job.id == "ftjob-1"
        await in_thread(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        near = openai.OpenAI(base_url=proxy.url + "/v1/chat/completions/", api_key="sk-ft", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            await in_thread(near.post, "", body={"model": "gpt-4o"}, cast_to=object)
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert cli.main(["report", "--data-dir", str(tmp_path), "--by", "endpoint", "--format", "json"]) == 0
    rows = {row["endpoint"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["/v1/fine_tuning/jobs"]["billable_unmetered"] == 1 and rows["/v1/fine_tuning/jobs"]["unpriced"] == 1
    assert rows["/v1/chat/completions"]["billable_unmetered"] == 0 and len(rows) == 2


@pytest.mark.parametrize(
    "path, route",
    [
        ("/v1/images/variations", "/v1/images/variations"),
    ],
)
def test_routes_not_yet_metered_are_held_by_a_block_budget(path: str, route: str) -> None:
    # A route whose answers cannot be metered: a team at a block limit cannot spend through it.
    h = billable_harness(UnmeteredBillable.BLOCK_UNDER_BUDGET, [Budget("ml", Decimal(100))])
    transport = raw(h, path, [("Authorization", "Bearer sk-x"), ("X-ModelTrack-Team", "ml")], b"{}")
    assert status_of(transport) == 403 and h.agent.calls == []
    [event] = h.journal.events()
    assert (event["route_class"], event["endpoint"], event["outcome"]) == ("billable", route, "rejected")


def test_azure_classes_its_deployment_paths_too() -> None:
    from modeltrack.providers import azure

    found = azure.route(b"POST", "/openai/deployments/my-dep/images/variations")
    assert found is not None and found[0].billing is not None and found[0].path == "/openai/images/variations"
    edits = azure.route(b"POST", "/openai/deployments/my-dep/images/edits")
    assert edits is not None and edits[0].metered and edits[0].deployment == "my-dep"
    speech = azure.route(b"POST", "/openai/deployments/my-dep/audio/speech")
    assert speech is not None and speech[0].metered and speech[0].deployment == "my-dep"
