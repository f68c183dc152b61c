"""The partition scenarios' probes: processes that run INSIDE an AZ's network namespace.

    python -m tests.faults.probe write SPEC.json   # the users of that AZ's disks
    python -m tests.faults.probe sample SPEC.json  # the history recorder of that AZ's agent

Both talk to their own AZ's agent only, so they go on when the AZ is cut
from everything else, and both stop on SIGTERM. Everything they see is one
JSON line per event in the spec's `log`, written unbuffered so a history
survives whatever happens to the rest of the test; times are
`time.monotonic()` (CLOCK_MONOTONIC: one clock for every process of the
host, whatever the namespace), so histories of several probes merge.

`write`: one writer per target disk, queue depth 1 (at most one write of
unknown fate per disk). A write covers 1..16 blocks of 4 KiB at the start of
a 64 KiB slot; block i of write `seq` by writer `w` holds bytes derived from
(w, seq, i), so its content names it. Lines: `sent` (before the write,
with every block's checksum), then `ack` or `fail`. A write without an
outcome line is of unknown fate (the probe stopped while it was in
flight). After a failure the writer reconnects and goes on (the users of a
suspended disk keep trying).

`sample`: every `sample_s`, the agent's replication state of each volume
(`state`, with the instants just before and after the request), or `down`
when the agent did not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from openevs.agent.client import HttpAgentClient
from openevs.agent.nbd.client import NbdClient
from openevs.contract import AgentRequestFailed, AgentUnavailable

BLOCK = 4096
SLOT = 64 * 1024
BLOCKS_PER_SLOT = SLOT // BLOCK
RETRY_S = 0.2


def block_bytes(writer: str, seq: int, index: int) -> bytes:
    return hashlib.sha256(f"{writer}:{seq}:{index}".encode()).digest() * (BLOCK // 32)


def checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class History:
    """An append-only JSON-lines file, one line per event, flushed at once."""

    def __init__(self, path: str) -> None:
        self._fh: IO[str] = Path(path).open("a", buffering=1)  # noqa: SIM115 - open for the probe's life
        self._lock = threading.Lock()

    def add(self, **event: Any) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")

    def close(self) -> None:
        self._fh.close()


async def _writer(
    spec: dict[str, Any], target: dict[str, Any], history: History, stop: asyncio.Event
) -> None:
    name = f"{spec['writer']}/{target['disk']}"
    rng = random.Random(f"{spec.get('seed', 0)}:{name}")
    slots = int(spec["region_bytes"]) // SLOT
    pace_s = float(spec.get("pace_s", 0.0))
    seq = 0
    client: NbdClient | None = None
    while not stop.is_set():
        if client is None:
            try:
                client = await NbdClient.connect(target["host"], int(target["port"]), target["export"])
            except Exception as exc:  # noqa: BLE001 - the disk is not reachable now; try again
                history.add(k="noconn", w=name, t=time.monotonic(), err=repr(exc)[:200])
                await asyncio.sleep(RETRY_S)
                continue
        seq += 1
        offset = rng.randrange(slots) * SLOT
        blocks = [block_bytes(name, seq, i) for i in range(rng.randint(1, BLOCKS_PER_SLOT))]
        history.add(k="sent", w=name, pair=target["pair"], disk=target["disk"], seq=seq, off=offset,
                    sums=[checksum(b) for b in blocks], t=time.monotonic())  # fmt: skip
        try:
            await client.write(offset, b"".join(blocks))
        except Exception as exc:  # noqa: BLE001 - refused or cut: fate unknown, logged as failed
            history.add(k="fail", w=name, seq=seq, t=time.monotonic(), err=repr(exc)[:200])
            client.abort()
            client = None
            await asyncio.sleep(RETRY_S)
            continue
        history.add(k="ack", w=name, seq=seq, t=time.monotonic())
        if pace_s:
            await asyncio.sleep(pace_s)
    if client is not None:
        client.abort()


async def write(spec: dict[str, Any]) -> None:
    history = History(spec["log"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.ensure_future(_writer(spec, t, history, stop)) for t in spec["targets"]]
    await stop.wait()
    # A write still in flight (maybe suspended) stays of unknown fate: no outcome line.
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    history.close()


def sample(spec: dict[str, Any]) -> None:
    history = History(spec["log"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    interval_s = float(spec.get("sample_s", 0.05))
    with HttpAgentClient(spec["az"], spec["agent"], timeout_s=interval_s * 10) as agent:
        while not stop.is_set():
            for volume in spec["volumes"]:
                before = time.monotonic()
                try:
                    state = agent.get_replication(volume)
                except (AgentUnavailable, AgentRequestFailed) as exc:
                    history.add(k="down", az=spec["az"], vol=volume, t=before, err=str(exc)[:200])
                    continue
                history.add(k="state", az=spec["az"], vol=volume, t0=before, t=time.monotonic(),
                            st=state.model_dump(mode="json", exclude_none=True))  # fmt: skip
            stop.wait(interval_s)
    history.close()


def main(argv: list[str]) -> None:
    mode, spec_path = argv
    spec = json.loads(Path(spec_path).read_text())
    if mode == "write":
        asyncio.run(write(spec))
    elif mode == "sample":
        sample(spec)
    else:
        raise SystemExit(f"usage: probe write|sample SPEC.json (got {mode!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
