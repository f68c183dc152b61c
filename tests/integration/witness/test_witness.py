"""A real `openevs witness` process, spoken to by both clients over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openevs.witness.client import AsyncWitnessClient, WitnessClient, WitnessFailed, WitnessUnreachable, units
from tests.support.witness import WitnessProcess

A, B = "az1.dc1", "az2.dc2"


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[WitnessProcess]:
    w = WitnessProcess(tmp_path / "witness")
    w.start()
    yield w
    w.stop(signal.SIGKILL)


def test_grants_refusals_and_status_over_the_wire(witness: WitnessProcess) -> None:
    a, b = witness.client(A), witness.client(B)
    [grant] = a.acquire(units([("group:g1", 1)]))
    assert grant.granted and grant.holder == A and grant.lease_s == 2.0
    [refused] = b.acquire(units([("group:g1", 2)]))
    assert not refused.granted and refused.refusal == "lease_live" and 0 < refused.lease_left_s <= 2
    status = b.status(["group:g1", "pair:unknown"], sides=[A, B, "az3"])
    assert [(r.key, r.epoch, r.holder) for r in status.records] == [("group:g1", 1, A)]
    seen = {s.side: s.seen_ago_s for s in status.sides}
    assert seen["az3"] is None and seen[A] is not None and seen[A] < 5
    a.release(units([("group:g1", 1)]))
    [grant] = b.acquire(units([("group:g1", 2)]))
    assert grant.granted and grant.holder == B
    [stale] = a.acquire(units([("group:g1", 1)]))
    assert not stale.granted and stale.refusal == "stale_epoch"


def test_records_survive_a_kill_and_leases_count_as_live_after_it(witness: WitnessProcess) -> None:
    witness.client(A).acquire(units([("pair:p1", 5), ("pair:p2", 1)]))
    witness.stop(signal.SIGKILL)
    witness.start()
    assert (witness.state / "records.log").read_text().count("\n") == 2
    b = witness.client(B)
    [early] = b.acquire(units([("pair:p1", 6)]))
    assert early.refusal == "lease_live"  # the witness cannot know the lease ran out
    [old] = b.acquire(units([("pair:p1", 5)]))
    assert old.refusal == "held_by_peer"
    time.sleep(witness.lease_s)
    [late] = b.acquire(units([("pair:p1", 6)]))
    assert late.granted


def test_the_async_client_batches_and_reconnects(witness: WitnessProcess) -> None:
    async def scenario() -> None:
        client = AsyncWitnessClient("127.0.0.1", witness.port, A, timeout_s=2)
        grants = await client.acquire(units([(f"pair:p{i}", 1) for i in range(500)]))
        assert all(g.granted for g in grants) and len(grants) == 500
        assert client.lease_s == 2.0
        witness.stop(signal.SIGKILL)
        with pytest.raises(WitnessUnreachable):
            await client.ping()
        await asyncio.to_thread(witness.start)
        await client.ping()  # a new connection
        [renewed] = await client.acquire(units([("pair:p1", 1)]))
        assert renewed.granted
        await client.close()

    asyncio.run(scenario())


def test_a_silent_peer_is_unreachable_not_a_hang() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts, never answers
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(WitnessUnreachable):
            WitnessClient("127.0.0.1", port, A, timeout_s=0.5).ping()
        assert time.monotonic() - start < 5


def test_garbage_does_not_disturb_other_clients(witness: WitnessProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", witness.port)) as sock:
        sock.sendall(b"\x00\x00\x00\x05hello")
        sock.settimeout(5)
        assert sock.recv(100) == b""  # dropped
    witness.client(A).ping()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, to run out of space for real."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_grant_not_the_witness(small_disk: Path) -> None:
    witness = WitnessProcess(small_disk / "witness")
    witness.start()
    try:
        a = witness.client(A)
        assert a.acquire(units([("pair:p1", 1)]))[0].granted
        filler = small_disk / "filler"
        with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"x" * 512)
        many = units([(f"pair:q{i}", 1) for i in range(200)])  # more than the journal's last page holds
        with pytest.raises(WitnessFailed, match="cannot save"):
            a.acquire(many)
        assert a.acquire(units([("pair:p1", 1)]))[0].granted  # a renewal writes nothing
        a.ping()  # still serving
        filler.unlink()
        assert all(g.granted for g in a.acquire(many))  # back once there is room
    finally:
        witness.stop(signal.SIGKILL)


def test_the_journal_is_whole_after_a_failed_append(small_disk: Path) -> None:
    from openevs.witness.arbiter import Record
    from openevs.witness.store import RecordStore, StoreError

    store = RecordStore(small_disk / "w")
    store.load()
    store.save([Record("pair:a", 1, A)])
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"x" * 512)
    with pytest.raises(StoreError):
        store.save([Record(f"pair:b{i}", 1, A) for i in range(300)])
    filler.unlink()
    store.save([Record("pair:c", 2, B)])
    store.close()
    again = RecordStore(small_disk / "w")
    assert {r.key: (r.epoch, r.holder) for r in again.load()} == {"pair:a": (1, A), "pair:c": (2, B)}
    again.close()
