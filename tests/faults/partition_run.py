"""The randomized partition runner behind `scripts/fault-run --partitions N`.

    python -m tests.faults.partition_run N [--seed S] [--replay SEED] [--out FILE.jsonl]
                                           [--controller agents|manual|auto]

Trial i draws its scenario, timings and kill from seed S+i (scenarios.draw),
runs it on one long-lived PartitionStack (the test drives the agents as the
controller does), or with `--controller manual|auto` on a ControlledStack
(`openevs serve` drives them; failover by the API or automatic, and the
controller is one more kill target), and appends its row to `--out`.
A trial that fails (the checker's verdict, or the harness could not carry
it out) is reported with its seed; `--replay SEED` runs that one trial
again; `--table ROWS.jsonl` prints the table of an earlier run. The logs of
failed trials stay in the run's directory. At the end: the table (trials per scenario, writes acknowledged,
lost, two primaries, split groups, suspend durations p50/max).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tests.faults.controlled import ControlledStack
from tests.faults.partitions import PartitionStack
from tests.faults.scenarios import SCENARIOS, draw, run

NAMES = {
    "a": "a link cut",
    "b": "b primary AZ isolated, failover",
    "c": "c DR AZ isolated",
    "d": "d witness isolated",
    "e": "e controller isolated + link cut",
    "f": "f flapping link",
}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| scenario | trials | with a kill | acked writes | lost | two primaries | split groups"
            " | harness errors | suspend p50 s | suspend max s |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for s in (*SCENARIOS, "all"):
        mine = [r for r in rows if s == "all" or r["scenario"] == s]
        if not mine:
            continue
        ok = [r for r in mine if "error" not in r]
        suspends = [x for r in ok for x in r["suspend_s"]]
        p50 = f"{statistics.median(suspends):.2f}" if suspends else "-"
        top = f"{max(suspends):.2f}" if suspends else "-"
        lines.append(
            f"| {NAMES.get(s, s)} | {len(mine)} | {sum(1 for r in mine if r['kill'])} "
            f"| {sum(r['acked'] for r in ok)} | {sum(r['lost'] for r in ok)} "
            f"| {sum(r['two_primaries'] for r in ok)} | {sum(r['split'] for r in ok)} "
            f"| {len(mine) - len(ok)} | {p50} | {top} |"
        )
    return "\n".join(lines)


def one(stack: PartitionStack, seed: int, controller: str) -> dict[str, Any]:
    kill_targets = "abw" if controller == "agents" else "abwh"
    d = draw(random.Random(seed), seed, kill_targets, controller)
    if isinstance(stack, ControlledStack):
        d.suspend_timeout_s = stack.suspend_timeout_s
    started = time.monotonic()
    try:
        result = run(stack, d)
        row = result.row()
        if not result.verdict.ok:
            row["failed_check"] = True
    except Exception as exc:  # noqa: BLE001 - the top of the runner's loop: report, go on
        row = {**d.__dict__, "error": f"{type(exc).__name__}: {exc}"[:300], "acked": 0, "lost": 0,
               "two_primaries": 0, "split": 0, "suspend_s": []}  # fmt: skip
        traceback.print_exc()
    row["took_s"] = round(time.monotonic() - started, 1)
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="partition_run")
    ap.add_argument("trials", type=int, nargs="?", default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--replay", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--controller", choices=("agents", "manual", "auto"), default="agents",
                    help="who drives: the test as the controller (agents), or `openevs serve` with"
                         " manual or automatic failover")  # fmt: skip
    ap.add_argument("--table", metavar="ROWS.jsonl", default=None, help="only print the table of a run")
    args = ap.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line]))
        return 0
    seeds = [args.replay] if args.replay is not None else [args.seed + i for i in range(args.trials)]
    out = Path(args.out or tempfile.mkstemp(prefix="openevs-partitions-", suffix=".jsonl")[1])
    root = Path(tempfile.mkdtemp(prefix="oevs-prun-"))
    print(f"partition trials: {len(seeds)}, seeds {seeds[0]}..{seeds[-1]}, rows in {out}, logs in {root}")
    rows: list[dict[str, Any]] = []
    if args.controller == "agents":
        stack = PartitionStack(root).start()
    else:
        stack = ControlledStack(root, auto_failover=args.controller == "auto").start()
    try:
        for i, seed in enumerate(seeds):
            row = one(stack, seed, args.controller)
            rows.append(row)
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            bad = "error" in row or row.get("failed_check")
            if not bad:  # keep the logs of failed trials only
                shutil.rmtree(root / f"trial-{stack.trials}", ignore_errors=True)
            print(f"[{i + 1}/{len(seeds)}] seed {seed} {row['scenario']} kill={row['kill']} "
                  f"acked {row['acked']} lost {row['lost']} two-primaries {row['two_primaries']} "
                  f"{row['took_s']} s{'  FAILED: ' + str(row.get('error', 'checker')) if bad else ''}",
                  flush=True)  # fmt: skip
    finally:
        stack.close()
    print()
    print(table(rows))
    failed = [r["seed"] for r in rows if "error" in r or r.get("failed_check")]
    if failed:
        print(f"\nfailed trials (replay with --replay SEED): {failed}")
    return 1 if any(r.get("failed_check") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
