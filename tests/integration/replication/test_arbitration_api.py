"""Arbitration through the real API (DESIGN 3): a live controller (uvicorn, the
reconciler) and the session's three real agents, each serving an embedded witness.

Configs the reconciler sends carry the arbiter (a group's members the group's
key); two AZs are static priority; a failover needs the witness's grant (409
while the old primary holds a live lease, 400 with the witness down, the force
action overrides); a primary cut from its peer (SIGSTOP of the DR agent) and
its witness suspends writes and resumes when either returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openevs.agent.client import HttpAgentClient
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.errors import NbdError
from openevs.agent.supervisor import AgentSupervisor
from openevs.contract import ArbitrationState
from openevs.db.models import Agent
from openevs.services.arbitration import FORCE_ACTION
from openevs.witness.client import WitnessClient
from tests.conftest import free_port
from tests.integration.conftest import Api
from tests.integration.replication.test_group_api import FAILOVER, STOP, act, fault, make_group, make_pairs
from tests.support.api import wait_group, wait_json
from tests.support.waiting import wait_for
from tests.support.witness import WitnessProcess

PAIRS = "/v2/{p}/os-vendor-replications"
A, B, C = "az1.dc1", "az2.dc2", "az3.dc3"
R = 64 * 1024


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[WitnessProcess]:
    w = WitnessProcess(tmp_path / "witness", lease_s=2.0)
    w.start()
    yield w
    w.stop(signal.SIGKILL)


@pytest.fixture
def witnessed(controller_factory: Callable[..., Api], witness: WitnessProcess) -> Api:
    """A controller whose pairs are arbitrated by the standalone `witness`."""
    return controller_factory(witness=f"127.0.0.1:{witness.port}", suspend_io_timeout_s=120)


def pair_of(api: Api, pid: str) -> dict[str, Any]:
    return dict(api.get(f"{PAIRS}/{pid}").json()["replication"])


def disks(api: Api, pid: str) -> tuple[str, str]:
    prod, dr = pair_of(api, pid)["volume_ids"].split(",")
    return prod, dr


def agent_arbitration(supervisor: AgentSupervisor, az: str, volume_id: str) -> ArbitrationState | None:
    return supervisor.client_for(az).get_replication(volume_id).arbitration


@contextlib.contextmanager
def frozen(supervisor: AgentSupervisor, az: str) -> Iterator[None]:
    """The agent of `az` stops answering (SIGSTOP): its link and its control API hang."""
    pid = supervisor.pid(az)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def controller_cut_from(api: Api, az: str) -> Iterator[None]:
    """The controller no longer reaches the agent of `az` (which goes on running)."""
    real = api.runtime.agents[az]
    api.runtime.agents[az] = HttpAgentClient(az, f"http://127.0.0.1:{free_port()}", timeout_s=1)

    def unhealthy() -> bool:
        with api.runtime.db.session() as session:
            row = session.get(Agent, az)
            return row is not None and not row.healthy

    try:
        wait_for(f"the controller to see {az} unavailable", unhealthy, 30)
        yield
    finally:
        api.runtime.agents[az] = real


def held(w: WitnessProcess, key: str, holder: str) -> bool:
    records = w.client("test").status([key]).records
    return bool(records) and records[0].holder == holder and records[0].lease_left_s > 0


async def nbd_to(supervisor: AgentSupervisor, az: str, volume_id: str) -> NbdClient:
    """An NBD connection to a disk, granted on its agent directly (not through the controller)."""
    agent = supervisor.client_for(az)
    name = f"t-{uuid.uuid4().hex}"
    await asyncio.to_thread(agent.grant_export, name, volume_id, False)
    port = (await asyncio.to_thread(agent.health)).nbd_port
    return await NbdClient.connect("127.0.0.1", port, name)


def test_configs_carry_the_embedded_witness_of_the_third_az(api: Api, supervisor: AgentSupervisor) -> None:
    [pid] = make_pairs(api, 1, A, B)
    prod, _ = disks(api, pid)
    pair = wait_json(api, f"{PAIRS}/{pid}", "replication", lambda p: p["arbitration"] is not None)
    assert pair["arbitration"]["witness"].startswith(C), pair
    assert pair["arbitration"]["witness_reachable"] and not pair["arbitration"]["suspended"]
    state = agent_arbitration(supervisor, A, prod)
    assert state is not None and state.witness.startswith(C)
    # A group member is arbitrated as the group: a paused group's primary holds the
    # lease of group:<id> at the embedded witness of az3.
    gid = make_group(api, [pid])
    assert act(api, gid, {STOP: None}).status_code == 200
    wait_group(api, gid, lambda g: g["replication_status"] == "active-stopped")
    port = supervisor.client_for(C).health().witness_port
    embedded = WitnessClient("127.0.0.1", port, "test")
    wait_for(
        "the group's lease held by az1",
        lambda: [(r.holder, r.epoch) for r in embedded.status([f"group:{gid}"]).records] == [(A, 1)],
    )
    group = wait_group(api, gid, lambda g: g["arbitration"] is not None and g["arbitration"]["lease"])
    assert group["arbitration"]["witness"].startswith(C)


def test_two_azs_are_static_priority(
    controller_factory: Callable[..., Api], supervisor: AgentSupervisor
) -> None:
    api = controller_factory(azs=f"{A},{B}")
    [pid] = make_pairs(api, 1, A, B)
    prod, _ = disks(api, pid)
    wait_json(api, f"{PAIRS}/{pid}", "replication", lambda p: p["replication_status"] == "active")
    assert pair_of(api, pid)["arbitration"] is None
    assert agent_arbitration(supervisor, A, prod) is None


def test_failover_needs_the_witness_grant(
    witnessed: Api, witness: WitnessProcess, supervisor: AgentSupervisor
) -> None:
    api = witnessed
    [pid] = make_pairs(api, 1, A, B)
    prod, _ = disks(api, pid)
    gid = make_group(api, [pid])
    # Paused, the primary acknowledges writes alone: it holds the witness's lease.
    assert act(api, gid, {STOP: None}).status_code == 200
    wait_for("az1 to hold the group's lease", lambda: held(witness, f"group:{gid}", A))
    with controller_cut_from(api, A):
        r = act(api, gid, {FAILOVER: None})
        message = fault(r)["message"]
        assert r.status_code == 409 and "lease" in message and "runs out" in message and A in message, r.text
        witness.stop()
        r = act(api, gid, {FAILOVER: None})
        message = fault(r)["message"]
        assert r.status_code == 400 and f"127.0.0.1:{witness.port}" in message and FORCE_ACTION in message
        witness.start()
        assert wait_group(api, gid, lambda g: True)["status"] == "available"  # nothing changed
        # The operator's override: the witness gives the group to az2 although az1's lease is live.
        assert act(api, gid, {FORCE_ACTION: None}).status_code == 200, "force refused"
        group = wait_group(api, gid, lambda g: g["status"] == "failovered")
        assert group["priority_station"] == B
        # The old primary still runs, cut from the controller: the witness's higher epoch
        # outdates it, and a write its peer lacks is refused, not acknowledged.
        def outdated() -> bool:
            state = agent_arbitration(supervisor, A, prod)
            return state is not None and state.outdated

        wait_for("the old primary to learn it lost", outdated)

        async def write_old_primary() -> None:
            async with await nbd_to(supervisor, A, prod) as nbd:
                await nbd.write(0, b"x" * R)

        with pytest.raises(NbdError) as refused:
            asyncio.run(write_old_primary())
        assert refused.value.errno == errno.EIO


def test_cut_from_peer_and_witness_suspends_then_resumes(
    witnessed: Api, witness: WitnessProcess, supervisor: AgentSupervisor
) -> None:
    api = witnessed
    [pid] = make_pairs(api, 1, A, B)
    prod, _ = disks(api, pid)
    wait_json(api, f"{PAIRS}/{pid}", "replication", lambda p: (p["arbitration"] or {}).get("witness_reachable"))  # noqa: E501

    def suspended() -> bool:
        state = agent_arbitration(supervisor, A, prod)
        return state is not None and state.suspended

    async def scenario() -> None:
        async with await nbd_to(supervisor, A, prod) as nbd:
            await nbd.write(0, b"a" * R)  # in sync: no witness needed
            witness.stop()
            with frozen(supervisor, B):
                pending = asyncio.ensure_future(nbd.write(R, b"b" * R))
                await asyncio.to_thread(wait_for, "the write to be suspended", suspended, 30)
                pair = await asyncio.to_thread(
                    wait_json, api, f"{PAIRS}/{pid}", "replication",
                    lambda p: (p["arbitration"] or {}).get("suspended"), 60,
                )  # fmt: skip
                assert not pending.done(), "a write its peer lacked was acknowledged without the witness"
                assert pair["fault_level"] == "2" and pair["failure_detail"] == "37100043", pair
                assert pair["replication_status"] == "inactive", pair
                # The witness returns: the grant comes, the write is acknowledged.
                await asyncio.to_thread(witness.start)
                await asyncio.wait_for(pending, 30)
                # Cut from the witness again; once the lease ran out writes wait again...
                witness.stop()
                await asyncio.to_thread(
                    wait_for, "the lease to run out",
                    lambda: not agent_arbitration(supervisor, A, prod).lease, 30,  # type: ignore[union-attr]
                )  # fmt: skip
                pending = asyncio.ensure_future(nbd.write(2 * R, b"c" * R))
                await asyncio.to_thread(wait_for, "the write to be suspended", suspended, 30)
                assert not pending.done()
            # ...until the peer answers again: the sync copies the region, the write is acknowledged.
            await asyncio.wait_for(pending, 60)

    asyncio.run(scenario())
    pair = wait_json(
        api, f"{PAIRS}/{pid}", "replication",
        lambda p: p["replication_status"] == "active" and p["fault_level"] == "0", 60,
    )  # fmt: skip
    assert pair["failure_detail"] is None and not pair["arbitration"]["suspended"], pair
    witness.start()


def test_configs_follow_an_embedded_witness_that_restarted_on_another_port(
    api: Api, supervisor: AgentSupervisor
) -> None:
    [pid] = make_pairs(api, 1, A, B)
    prod, _ = disks(api, pid)
    old = supervisor.client_for(C).health().witness_port

    def names(port: int) -> bool:
        state = agent_arbitration(supervisor, A, prod)
        return state is not None and state.witness.endswith(f":{port})")

    wait_for("the primary's arbiter to name az3's witness", lambda: names(old))
    pid_c = supervisor.pid(C)
    assert pid_c is not None
    os.kill(pid_c, signal.SIGKILL)  # the supervisor restarts it, its witness on a new ephemeral port
    new = wait_for("az3's agent back with a new witness port",
                   lambda: (p := supervisor.client_for(C).health().witness_port) != old and p, 30)
    wait_for("the primary's arbiter to name the new port", lambda: names(new), 30)
