"""
What issue 16 asks the bench: requests per CPU-second of the proxy's whole process tree
on the bench's non-streaming call, --workers 1 against 2 (the load split between them,
calls and concurrent streams),
and what a budget held in Redis adds to the latency at one connection, against the same
budget in memory. Same harness as bench/run.py (nginx upstream, wrk), rounds interleaved.

    .venv/bin/python bench/scale.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def tree(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [p for child in children for p in tree(int(child))]


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += bench.cpu_seconds(pid)
        except FileNotFoundError:
            pass
    return total


def role(pid: int) -> str:
    """
    What a process of the tree is: the supervisor, worker N, the index, ...
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    if b"index" in argv:
        return "index"
    worker = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"MODELTRACK_WORKER=")), None)
    if worker is not None:
        return f"worker {worker}"
    return "supervisor" if b"--workers" in argv else "proxy"


def events_per_series(data_dir: Path) -> dict[str, int]:
    return {path.name: sum(1 for _ in path.open("rb")) for path in data_dir.glob("events*.jsonl")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams per round (0: skip)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="modeltrack-scale-"))
    harness = bench.Harness(bench.FULL, workdir)
    redis = None
    try:
        nginx = harness.nginx()
        streams_upstream = harness.stream_upstream()
        redis_port = bench.free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
        )
        bench.wait_for_port(redis_port, 30)

        def proxy(name: str, *options: str) -> bench.Process:
            port = bench.free_port()
            data = workdir / name
            data.mkdir()
            if "--budget" in options:
                options = tuple(o for o in options if o != "--budget")
                (data / "budgets.json").write_text(json.dumps({"budgets": [{"scope": "all", "monthly_limit": 1e9, "action": "block"}]}))
            argv = [
                str(Path(bench.PYTHON).parent / "twistd"), "-n", "--pidfile=", "modeltrack",
                "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096", "--data-dir", str(data),
                "--openai-url", f"http://127.0.0.1:{nginx.port}", "--anthropic-url", f"http://127.0.0.1:{streams_upstream.port}",
                "--admin-listen", "none", *options,
            ]
            return harness.start(name, argv, port, {"PYTHONPATH": str(bench.REPO)})

        contenders = {
            "workers=1": proxy("w1"),
            "workers=2": proxy("w2", "--workers", "2"),
        }
        for process in contenders.values():
            harness.wrk(process.port, 2)  # warm up
        found: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        #: CPU seconds per second of load, per process of the tree (by its command line).
        shares: dict[str, dict[str, list[float]]] = {name: {} for name in contenders}
        for _ in range(args.rounds):
            for name, process in contenders.items():
                pids = tree(process.pid)
                each = {pid: cpu_of([pid]) for pid in pids}
                started = time.monotonic()
                result = harness.wrk(process.port, args.seconds, 64)
                wall = time.monotonic() - started
                each = {pid: cpu_of([pid]) - before for pid, before in each.items()}
                used = sum(each.values())
                found[name].append((result["rps"], result["requests"] / used if used else 0.0))
                for pid, seconds in each.items():
                    shares[name].setdefault(role(pid), []).append(seconds / wall)
        split = events_per_series(workdir / "w2")
        streamed: dict[str, list[tuple[float, float, int]]] = {name: [] for name in contenders}
        for _ in range(args.rounds if args.streams else 0):
            for name, process in contenders.items():
                load = harness.stream_load(process.port, args.streams, 40, 50, 1000)
                streamed[name].append((load["ttfb_ms"]["p99"], load["chunk_delay_ms"]["p99"], load["errors"] + load["incomplete"]))
        # The concurrent streams, by the worker that carried each (opened within a second, held two).
        after = events_per_series(workdir / "w2")
        stream_split = {series: after[series] - split.get(series, 0) for series in after}
        latency = {
            "in-memory budget": proxy("mem", "--budget"),
            "Redis budget": proxy("redis", "--budget", "--redis-url", f"redis://127.0.0.1:{redis_port}/0"),
        }
        p50: dict[str, list[float]] = {name: [] for name in latency}
        for process in latency.values():
            harness.wrk(process.port, 2, 1, bench.BUDGET_BODY)
        for _ in range(args.rounds):
            for name, process in latency.items():
                p50[name].append(harness.wrk(process.port, args.seconds, 1, bench.BUDGET_BODY)["p50_ms"])
        print(f"Machine: {bench.machine()['cpu']}, {bench.machine()['cores']} cores; {args.rounds} interleaved rounds of {args.seconds:g} s")
        for name, rows in found.items():
            rps = [r for r, _ in rows]
            per_cpu = [c for _, c in rows]
            print(f"{name}: {statistics.median(rps):,.0f} req/s (rounds {min(rps):,.0f}-{max(rps):,.0f}), "
                  f"{statistics.median(per_cpu):,.0f} req per CPU-second of the process tree (rounds {min(per_cpu):,.0f}-{max(per_cpu):,.0f})")
        for name, rows in streamed.items():
            if rows:
                print(f"{name}: {args.streams} concurrent streams of 40 chunks at 20/s: TTFB p99 {statistics.median(r[0] for r in rows):.1f} ms, "
                      f"chunk delay p99 {statistics.median(r[1] for r in rows):.1f} ms (medians of {len(rows)} rounds), "
                      f"{sum(r[2] for r in rows)} failed or cut")
        for name, by_role in shares.items():
            print(f"{name}: CPU per second of load, median of rounds: " + ", ".join(
                f"{who} {statistics.median(values):.2f}" for who, values in sorted(by_role.items())
            ))
        total = sum(split.values())
        print("workers=2 events per worker: " + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in sorted(split.items())))
        streams_total = sum(stream_split.values())
        if streams_total:
            print("workers=2 concurrent streams per worker: "
                  + ", ".join(f"{k} {v} ({v / streams_total:.0%})" for k, v in sorted(stream_split.items())))
        for name, values in p50.items():
            print(f"{name}: p50 {statistics.median(values):.3f} ms at 1 connection (rounds {min(values):.3f}-{max(values):.3f})")
    finally:
        harness.stop_all()
        if redis is not None:
            redis.terminate()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
