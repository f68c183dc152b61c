"""Arbitration on the data path (DESIGN 3): a primary acknowledges a write its peer did
not get only under the witness's grant; without it, I/O is suspended, then fails."""

from __future__ import annotations

import asyncio
import errno
import signal
import time
from collections.abc import Iterator

import pytest

from openevs.agent.nbd.errors import NbdError
from openevs.contract import Arbiter
from openevs.witness.client import units
from tests.integration.mirror.support import MiB, PairedAgent, connect, pair
from tests.support.waiting import wait_for
from tests.support.witness import WitnessProcess

R = 64 * 1024


@pytest.fixture
def witness(agents: tuple[PairedAgent, PairedAgent]) -> Iterator[WitnessProcess]:
    a, _ = agents
    w = WitnessProcess(a.pool.parent.parent / "witness", lease_s=2.0)
    w.start()
    yield w
    w.stop(signal.SIGKILL)


def arbiter(w: WitnessProcess, key: str = "pair:p-vol", epoch: int = 1, timeout_s: float = 60) -> Arbiter:
    return Arbiter(key=key, epoch=epoch, witness=w.address, suspend_timeout_s=timeout_s)


def paired(a: PairedAgent, b: PairedAgent, w: WitnessProcess, **kw: float) -> None:
    a.client.create_volume("vol", 16 * MiB)
    b.client.create_volume("dr", 16 * MiB)
    a.client.grant_export("att", "vol", False)
    pair(a, b, "vol", "dr", arbiter=arbiter(w, **kw))  # type: ignore[arg-type]
    a.wait_status("vol", "active")
    # The initial copy needed a lease (writes there stayed local); in sync it is given back.
    wait_for("the witness reachable and the lease released", lambda: _in_sync_without_lease(a), 10)


def _in_sync_without_lease(a: PairedAgent) -> bool:
    state = a.state("vol").arbitration
    return state is not None and state.witness_reachable and not state.lease


async def write(a: PairedAgent, offset: int, data: bytes = b"w" * R) -> float:
    """One write; returns how long its acknowledgement took."""
    async with await connect(a, "att") as nbd:
        started = time.monotonic()
        await nbd.write(offset, data)
        return time.monotonic() - started


def test_in_sync_a_pair_needs_no_lease(
    agents: tuple[PairedAgent, PairedAgent], witness: WitnessProcess
) -> None:
    a, b = agents
    paired(a, b, witness)
    asyncio.run(write(a, 0))
    state = a.state("vol").arbitration
    assert state is not None and not state.lease and not state.suspended
    # The witness down alone stops nothing while the peer answers.
    witness.stop(signal.SIGKILL)
    wait_for("the witness unreachable", lambda: not a.state("vol").arbitration.witness_reachable)  # type: ignore[union-attr]
    asyncio.run(write(a, R))
    assert a.state("vol").replication_status == "active"
    assert a.checksum("vol") == b.checksum("dr")


def test_link_cut_with_the_witness_goes_on_alone_under_a_lease(
    agents: tuple[PairedAgent, PairedAgent], witness: WitnessProcess
) -> None:
    a, b = agents
    paired(a, b, witness)
    b.kill()
    asyncio.run(write(a, 0))  # granted: acknowledged alone
    state = a.state("vol")
    assert state.replication_status == "inactive" and state.arbitration is not None
    assert state.arbitration.lease and not state.arbitration.suspended
    # The witness knows this side holds the unit, with a live lease.
    [record] = witness.client("test").status(["pair:p-vol"]).records
    assert record.holder == "az1.dc1" and record.epoch == 1 and record.lease_left_s > 0
    # Back in sync: the lease is given back (a failover would not have to wait for it).
    b.start()
    a.wait_status("vol", "active", timeout_s=30)
    wait_for("the lease released", lambda: not a.state("vol").arbitration.lease, 10)  # type: ignore[union-attr]
    wait_for(
        "the witness to see it released",
        lambda: witness.client("test").status(["pair:p-vol"]).records[0].lease_left_s == 0, 10,
    )


def test_cut_from_peer_and_witness_suspends_then_resumes_when_the_peer_returns(
    agents: tuple[PairedAgent, PairedAgent], witness: WitnessProcess
) -> None:
    a, b = agents
    paired(a, b, witness)
    witness.stop(signal.SIGKILL)
    b.kill()

    async def scenario() -> tuple[float, bool]:
        async with await connect(a, "att") as nbd:
            pending = asyncio.ensure_future(nbd.write(2 * MiB, b"s" * R))
            await asyncio.sleep(2.0)
            suspended = not pending.done()
            state = await asyncio.to_thread(a.state, "vol")
            assert state.arbitration is not None and state.arbitration.suspended, state
            assert state.arbitration.suspended_writes == 1
            started = time.monotonic()
            await asyncio.to_thread(b.start)  # the peer returns: the sync copies the region
            await pending
            return time.monotonic() - started, suspended

    waited, suspended = asyncio.run(scenario())
    assert suspended, "a write the peer lacked was acknowledged without the witness"
    print(f"\nresumed {waited:.2f} s after the peer came back")
    a.wait_status("vol", "active", timeout_s=30)
    assert a.checksum("vol") == b.checksum("dr")  # nothing lost


def test_suspended_io_resumes_when_the_witness_returns(
    agents: tuple[PairedAgent, PairedAgent], witness: WitnessProcess
) -> None:
    a, b = agents
    paired(a, b, witness)
    witness.stop(signal.SIGKILL)
    b.kill()

    async def scenario() -> None:
        async with await connect(a, "att") as nbd:
            pending = asyncio.ensure_future(nbd.write(3 * MiB, b"t" * R))
            await asyncio.sleep(1.5)
            assert not pending.done()
            await asyncio.to_thread(witness.start)
            await asyncio.wait_for(pending, 20)

    asyncio.run(scenario())
    assert a.state("vol").arbitration.lease  # type: ignore[union-attr]


def test_suspended_io_fails_with_eio_after_the_timeout(
    agents: tuple[PairedAgent, PairedAgent], witness: WitnessProcess
) -> None:
    a, b = agents
    paired(a, b, witness, timeout_s=1.0)
    witness.stop(signal.SIGKILL)
    b.kill()
    with pytest.raises(NbdError) as err:
        asyncio.run(write(a, 0))
    assert err.value.errno == errno.EIO


def test_the_side_the_witness_gave_away_fails_at_once(
    agents: tuple[PairedAgent, PairedAgent], witness: WitnessProcess
) -> None:
    a, b = agents
    paired(a, b, witness)
    # A failover gave epoch 2 to the DR side (the old primary held no lease: it was in sync).
    [grant] = witness.client("az2.dc2").acquire(units([("pair:p-vol", 2)]))
    assert grant.granted
    b.kill()
    started = time.monotonic()
    with pytest.raises(NbdError) as err:
        asyncio.run(write(a, 0))
    assert err.value.errno == errno.EIO and time.monotonic() - started < 20
    state = a.state("vol").arbitration
    assert state is not None and state.outdated and state.refusal == "stale_epoch"


def test_static_priority_without_a_witness_is_unchanged(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    a.client.create_volume("vol", 16 * MiB)
    b.client.create_volume("dr", 16 * MiB)
    a.client.grant_export("att", "vol", False)
    pair(a, b, "vol", "dr")
    a.wait_status("vol", "active")
    b.kill()
    asyncio.run(write(a, 0))
    assert a.state("vol").arbitration is None
