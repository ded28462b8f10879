"""
An A/B of two versions of modeltrack on this machine: the working tree against an
earlier commit (a git worktree of it, made and removed here), both up side by side on
the bench's nginx upstream, interleaved so that drift in the machine's load hits both
alike:

- throughput at 32 connections: wrk rounds, the two taking turns (each round's order
  alternates), and each one's CPU time per request in those rounds (from /proc: the
  steadiest figure on a shared machine, where req/s moves with the neighbours' load);
- added latency at one connection: call by call, the two and direct calls in turn.

    .venv/bin/python bench/ab.py 05566f6                 # 6 rounds of 5 s, 3,000 calls each
    .venv/bin/python bench/ab.py 05566f6 --rounds 10 --seconds 5 --pairs 5000

Each version runs under twistd from a .tac file that imports its own plugin module
(modeltrack.ops.tap, or modeltrack.tap before the layout moved it), with the same
options and a fresh data dir. Prints one JSON object: each round and the medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PYTHON, REPO, Harness, Plan, Process, cpu_seconds, free_port, interleaved_latency  # noqa: E402

TAC = """
import os, shlex
from twisted.application.service import Application
try:
    from modeltrack.ops import tap
except ImportError:
    from modeltrack import tap
options = tap.Options()
options.parseOptions(shlex.split(os.environ["MODELTRACK_AB_ARGS"]))
application = Application("modeltrack")
tap.makeService(options).setServiceParent(application)
"""


def start(harness: Harness, name: str, tree: Path, upstream: Process, workdir: Path) -> Process:
    port = free_port()
    tac = workdir / "modeltrack.tac"
    tac.write_text(TAC)
    arguments = (
        f"--listen tcp:{port}:interface=127.0.0.1:backlog=4096 --openai-url http://127.0.0.1:{upstream.port} "
        f"--anthropic-url http://127.0.0.1:{upstream.port} --data-dir {workdir / ('data-' + name)} "
        "--admin-listen tcp:0:interface=127.0.0.1"
    )
    twistd = str(Path(PYTHON).parent / "twistd")
    argv = [twistd, "-n", "--pidfile=", "-y", str(tac)]
    return harness.start(name, argv, port, {"PYTHONPATH": str(tree), "MODELTRACK_AB_ARGS": arguments})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the commit to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=3000, help="calls each at one connection")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="modeltrack-ab-"))
    before = workdir / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(before), args.before], cwd=REPO, check=True)
    harness = Harness(Plan(args.seconds, args.rounds, args.pairs, 0, 0, 0, 0, 0, 0, 0, 0, 0), workdir)
    results: dict[str, Any] = {"before": args.before, "rounds": {"before": [], "after": []}, "cpu_us": {"before": [], "after": []}}
    try:
        nginx = harness.nginx()
        contenders = {"before": start(harness, "before", before, nginx, workdir), "after": start(harness, "after", REPO, nginx, workdir)}
        for process in contenders.values():
            harness.wrk(process.port, 2)  # warm-up
        for i in range(args.rounds):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for name in order:
                before_cpu = cpu_seconds(contenders[name].pid)
                measured = harness.wrk(contenders[name].port, args.seconds)
                spent = cpu_seconds(contenders[name].pid) - before_cpu
                results["rounds"][name].append(measured["rps"])
                results["cpu_us"][name].append(round(spent / max(1, measured["requests"]) * 1e6, 1))
        results["rps_median"] = {name: statistics.median(rps) for name, rps in results["rounds"].items()}
        results["cpu_us_median"] = {name: statistics.median(us) for name, us in results["cpu_us"].items()}
        targets = {"direct": nginx.port, "before": contenders["before"].port, "after": contenders["after"].port}
        results["one_connection"] = interleaved_latency(targets, args.pairs)
    finally:
        harness.stop_all()
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
