"""A workload that knows every acknowledged write, and the verifier that checks them.

Each target disk gets one writer (queue depth 1, so at most one write per
disk is in flight and therefore of unknown fate). A write covers 1..16
blocks of 4 KiB (4 KiB..64 KiB) at the start of a 64 KiB slot inside
`region_bytes`; block i of write `seq` holds bytes derived from
(disk, seq, i), so its content names it. The log keeps, per 4 KiB block,
the latest acknowledged (seq, checksum) and, per disk, the write in flight.

`verify()` reads a disk and returns every acknowledged block that is not
there: a block must hold its latest acknowledged write, or the one write
that was in flight when the workload stopped (it may have landed).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from dataclasses import dataclass, field

from openevs.agent.nbd.client import NbdClient

BLOCK = 4096
SLOT = 64 * 1024
BLOCKS_PER_SLOT = SLOT // BLOCK


def block_bytes(disk: str, seq: int, index: int) -> bytes:
    return hashlib.sha256(f"{disk}:{seq}:{index}".encode()).digest() * (BLOCK // 32)


def checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass
class DiskLog:
    """What one disk must hold: block offset -> (seq, checksum) of its latest acked write."""

    acked: dict[int, tuple[int, str]] = field(default_factory=dict)
    inflight: dict[int, tuple[int, str]] | None = None  # the write of unknown fate
    acks: int = 0
    errors: list[str] = field(default_factory=list)
    bytes_acked: int = 0


@dataclass
class Lost:
    disk: str
    offset: int
    seq: int
    found: str


class Workload:
    """Writers for `targets` (disk id -> NBD (host, port, export)), in a thread of their own."""

    def __init__(self, targets: dict[str, tuple[str, int, str]], region_bytes: int = 64 << 20,
                 seed: int = 0, pace_s: float = 0.0) -> None:  # fmt: skip
        self.targets = targets
        self.slots = region_bytes // SLOT
        self.rng = random.Random(seed)
        self.pace_s = pace_s
        self.logs = {disk: DiskLog() for disk in targets}
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.acked_at: list[float] = []  # monotonic time of every ack (for rates)

    @property
    def errors(self) -> list[str]:
        return [e for log in self.logs.values() for e in log.errors]

    @property
    def acks(self) -> int:
        return sum(log.acks for log in self.logs.values())

    def start(self) -> Workload:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            assert not self._thread.is_alive(), "the workload did not stop"

    def wait_acks(self, n: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acks < n:
            assert time.monotonic() < deadline, f"only {self.acks} of {n} writes acknowledged"
            assert self._thread is not None and self._thread.is_alive() or self.acks >= n, self.errors
            time.sleep(0.02)

    def acks_since(self, t: float) -> int:
        return sum(1 for a in self.acked_at if a >= t)

    async def _run(self) -> None:
        await asyncio.gather(*(self._writer(disk, addr) for disk, addr in self.targets.items()))

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    async def _writer(self, disk: str, addr: tuple[str, int, str]) -> None:
        log = self.logs[disk]
        try:
            client = await NbdClient.connect(*addr)
        except Exception as exc:  # noqa: BLE001 - the scenario reads it
            log.errors.append(f"connect: {exc!r}")
            return
        try:
            while not self._stop.is_set():
                seq = self._next_seq()
                slot = self.rng.randrange(self.slots)
                nblocks = self.rng.randint(1, BLOCKS_PER_SLOT)
                blocks = [block_bytes(disk, seq, i) for i in range(nblocks)]
                offset = slot * SLOT
                log.inflight = {offset + i * BLOCK: (seq, checksum(b)) for i, b in enumerate(blocks)}
                try:
                    await client.write(offset, b"".join(blocks))
                except Exception as exc:  # noqa: BLE001 - an unacknowledged write; fate unknown
                    log.errors.append(f"write seq {seq} at {offset}: {exc!r}")
                    return
                log.acked.update(log.inflight)
                log.inflight = None
                log.acks += 1
                log.bytes_acked += nblocks * BLOCK
                self.acked_at.append(time.monotonic())
                if self.pace_s:
                    await asyncio.sleep(self.pace_s)
        finally:
            client.abort()


async def _read_blocks(addr: tuple[str, int, str], offsets: list[int]) -> dict[int, bytes]:
    client = await NbdClient.connect(*addr)
    out: dict[int, bytes] = {}
    try:
        slots = sorted({o - o % SLOT for o in offsets})
        for slot in slots:
            data = await client.read(slot, SLOT)
            for i in range(BLOCKS_PER_SLOT):
                out[slot + i * BLOCK] = data[i * BLOCK : (i + 1) * BLOCK]
    finally:
        await client.close()
    return out


def verify(log: DiskLog, disk: str, addr: tuple[str, int, str]) -> list[Lost]:
    """Every acknowledged block of `disk` that `addr` does not hold (the lost writes)."""
    found = asyncio.run(_read_blocks(addr, list(log.acked)))
    lost = []
    for offset, (seq, want) in sorted(log.acked.items()):
        got = checksum(found[offset])
        if got == want:
            continue
        if log.inflight and offset in log.inflight and log.inflight[offset][1] == got:
            continue  # the unacknowledged last write landed: allowed
        lost.append(Lost(disk, offset, seq, got))
    return lost


def region_digest(addr: tuple[str, int, str], region_bytes: int = 64 << 20) -> str:
    async def go() -> str:
        client = await NbdClient.connect(*addr)
        h = hashlib.sha256()
        try:
            for off in range(0, region_bytes, 4 << 20):
                h.update(await client.read(off, 4 << 20))
        finally:
            await client.close()
        return h.hexdigest()

    return asyncio.run(go())
