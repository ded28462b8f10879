"""
What relaying a Realtime session costs: frames per second through one connection, and
the latency each frame gains, against a direct connection to the same upstream.

The upstream (a `websockets` server in its own process) answers two client events: an
`echo` with one frame back at once (latency: round trips timed at the client, direct
and through the proxy, interleaved), and a `response.create` with a burst of
`response.output_audio.delta` frames (16 KiB of base64 each, a second of audio) ended by
a `response.done` with usage (throughput: frames received per second; every burst is
one event, checked). The proxy runs under twistd as users run it.

    python bench/realtime.py [--smoke] [--out bench/REALTIME.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import PYTHON, SMOKE, Harness, free_port, percentile, read_events  # noqa: E402

DELTA = json.dumps({"type": "response.output_audio.delta", "response_id": "resp_1", "delta": "UklGR" * 3300})
USAGE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "cached_tokens": 64,
                                 "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0}},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}


async def _serve(port: int) -> None:
    import websockets

    async def session(ws: Any) -> None:
        await ws.send(json.dumps({"type": "session.created", "session": {"model": "gpt-realtime", "id": "sess_bench"}}))
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "echo":
                await ws.send(message)
            elif event["type"] == "response.create":
                count = event["response"]["metadata"]["frames"]
                await ws.send(json.dumps({"type": "response.created", "response": {"id": "resp_1"}}))
                for _ in range(count):
                    await ws.send(DELTA)
                await ws.send(json.dumps({"type": "response.done", "response": {"id": "resp_1", "status": "completed",
                                                                                "usage": USAGE}}))

    async with websockets.serve(session, "127.0.0.1", port, compression=None, max_size=None):
        await asyncio.Future()


def latencies(url: str, rounds: int) -> list[float]:
    from websockets.sync.client import connect

    times = []
    with connect(url, additional_headers={"Authorization": "Bearer sk-bench"}, compression=None, max_size=None) as ws:
        ws.recv()  # session.created
        message = json.dumps({"type": "echo", "pad": "x" * 200})
        for _ in range(rounds):
            start = time.perf_counter()
            ws.send(message)
            ws.recv()
            times.append((time.perf_counter() - start) * 1000)
    return times


def burst(url: str, frames: int) -> float:
    """Frames per second received in one response of C{frames} audio deltas."""
    from websockets.sync.client import connect

    with connect(url, additional_headers={"Authorization": "Bearer sk-bench"}, compression=None, max_size=None) as ws:
        ws.recv()
        start = time.perf_counter()
        ws.send(json.dumps({"type": "response.create", "response": {"metadata": {"frames": frames}}}))
        received = 0
        while '"response.done"' not in ws.recv()[:40]:
            received += 1
        assert received == frames + 1  # response.created and the deltas
        return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rounds, frames, bursts = (200, 500, 2) if args.smoke else (5000, 20000, 5)
    workdir = Path(tempfile.mkdtemp(prefix="mt-realtime-"))
    harness = Harness(SMOKE, workdir)
    try:
        up_port = free_port()
        upstream = harness.start("ws-upstream", [PYTHON, str(BENCH / "realtime.py"), "--upstream", str(up_port)], up_port)
        data = workdir / "data"
        proxy = harness.modeltrack(upstream, upstream, data)
        direct = f"ws://127.0.0.1:{up_port}/v1/realtime?model=gpt-realtime"
        relayed = f"ws://127.0.0.1:{proxy.port}/v1/realtime?model=gpt-realtime"
        latencies(relayed, 50)  # warm
        direct_ms, relayed_ms = [], []
        for _ in range(5):  # interleaved: the machine's drift falls on both
            direct_ms += latencies(direct, rounds // 5)
            relayed_ms += latencies(relayed, rounds // 5)
        direct_fps = [burst(direct, frames) for _ in range(bursts)]
        relayed_fps = [burst(relayed, frames) for _ in range(bursts)]
        time.sleep(1.0)  # the last events to the writer thread
        events = [e for e in read_events(data) if e["endpoint"] == "/v1/realtime"]
    finally:
        harness.stop_all()
    result = {
        "rounds": rounds, "frames": frames, "bursts": bursts,
        "direct_p50_ms": percentile(direct_ms, 0.5), "direct_p99_ms": percentile(direct_ms, 0.99),
        "relayed_p50_ms": percentile(relayed_ms, 0.5), "relayed_p99_ms": percentile(relayed_ms, 0.99),
        "direct_frames_per_s": sorted(direct_fps)[len(direct_fps) // 2],
        "relayed_frames_per_s": sorted(relayed_fps)[len(relayed_fps) // 2],
        "events": len(events), "events_expected": bursts,
        "exact": len(events) == bursts and all(e["cost_usd"] == 0.0069656 for e in events),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(render(result))


def render(r: dict[str, Any]) -> str:
    return f"""# Realtime relay cost

`python bench/realtime.py --out bench/REALTIME.md` on this machine ({os.cpu_count()} cores):
one WebSocket session at a time, the proxy under twistd with its defaults, the upstream a
`websockets` server in its own process.

| | direct | through modeltrack | added |
| --- | --- | --- | --- |
| round trip of one frame, p50 ({r['rounds']} rounds, interleaved) | {r['direct_p50_ms']:.3f} ms | {r['relayed_p50_ms']:.3f} ms | {r['relayed_p50_ms'] - r['direct_p50_ms']:.3f} ms |
| round trip of one frame, p99 | {r['direct_p99_ms']:.3f} ms | {r['relayed_p99_ms']:.3f} ms | {r['relayed_p99_ms'] - r['direct_p99_ms']:.3f} ms |
| audio deltas received per second (16 KiB each; median of {r['bursts']} bursts of {r['frames']}) | {r['direct_frames_per_s']:,.0f} | {r['relayed_frames_per_s']:,.0f} | |

Every burst was one response and one event at $0.0069656 (gpt-realtime, the API
reference's usage): {r['events']} of {r['events_expected']}, exact: {r['exact']}.
The round trip goes through the proxy twice (the client's frame up, the echo down).
"""


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        asyncio.run(_serve(int(sys.argv[2])))
    else:
        main()
