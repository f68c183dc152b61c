"""The replication link between two agents: a bounded pool of connections carries
every pair's traffic, and the peer serves a pair's handle only in its newest session."""

from __future__ import annotations

import asyncio
import errno

from openevs.agent.mirror import wire
from openevs.agent.mirror.link_pool import CONNECTIONS, LinkConnection, open_link_connection
from openevs.agent.mirror.wire import Kind
from openevs.contract import ReplicationRequest
from openevs.domain.replication import Role
from tests.integration.mirror.support import MiB, PairedAgent, connect, pair, write_blocks

PAIRS = 12


def test_every_pair_shares_a_few_connections_and_holds_no_descriptor_of_its_own(
    agents: tuple[PairedAgent, PairedAgent],
) -> None:
    a, b = agents
    for i in range(PAIRS):
        a.client.create_volume(f"v{i}", 16 * MiB)
        b.client.create_volume(f"d{i}", 16 * MiB)
    a.client.grant_export("att", "v0", False)
    before = {agent.az: agent.client.health().open_fds for agent in (a, b)}
    for i in range(PAIRS):
        pair(a, b, f"v{i}", f"d{i}", link=f"link-{i}")
    for i in range(PAIRS):
        a.wait_status(f"v{i}", "active")

    async def write() -> None:
        async with await connect(a, "att") as nbd:
            await write_blocks(nbd, range(0, 16 * MiB, 3 * MiB), 200_000)
            await nbd.flush()

    asyncio.run(write())
    assert a.checksum("v0") == b.checksum("d0")  # synchronous mirroring through the shared link
    health = a.client.health()
    assert health.peer_connections == CONNECTIONS and health.replica_count == PAIRS
    assert health.fd_soft_limit == health.fd_hard_limit > 0
    # Per pair: two descriptors (primary: the data file and the bitmap; DR side: the link's writable
    # file and the bitmap); per peer agent: the pool's connections; plus the user export.
    added = {agent.az: agent.client.health().open_fds - before[agent.az] for agent in (a, b)}
    assert added[a.az] <= 2 * PAIRS + CONNECTIONS + 1, added
    assert added[b.az] <= 2 * PAIRS + CONNECTIONS, added


async def _request(conn: LinkConnection, kind: Kind, handle: int = 0, payload: bytes = b"",
                   length: int = 0) -> wire.LinkReply:  # fmt: skip
    return await conn.send(kind, handle, 0, length or len(payload), payload)


def test_a_newer_session_makes_the_older_handle_stale(agents: tuple[PairedAgent, PairedAgent]) -> None:
    _, b = agents
    b.client.create_volume("dr", 4 * MiB)
    b.client.set_replication(
        "dr", ReplicationRequest(role=Role.SECONDARY, epoch=1, pair_id="p", link_export="link-s")
    )

    async def go() -> None:
        lost: list[str] = []
        one = await open_link_connection("127.0.0.1", b.nbd_port, "token-1", lambda _c, r: lost.append(r))
        other = await open_link_connection("127.0.0.1", b.nbd_port, "token-2", lambda _c, r: lost.append(r))
        try:
            missing = await _request(one, Kind.OPEN, payload=b"no-such-link~s1")
            assert missing.error == errno.ENOENT
            first = wire.decode_opened((await _request(one, Kind.OPEN, payload=b"link-s~s1")).payload)
            assert first.size_bytes == 4 * MiB and not first.read_only
            assert (await _request(one, Kind.WRITE, first.handle, b"x" * 4096)).error == 0
            second = wire.decode_opened((await _request(one, Kind.OPEN, payload=b"link-s~s2")).payload)
            assert second.handle != first.handle
            stale = await _request(one, Kind.WRITE, first.handle, b"y" * 4096)
            assert stale.error == errno.ESTALE  # a write of the old session never lands now
            assert (await _request(one, Kind.WRITE, second.handle, b"z" * 4096)).error == 0
            assert (await _request(one, Kind.FLUSH, second.handle)).error == 0
            # Another link session cannot use this one's handle.
            assert (await _request(other, Kind.WRITE, second.handle, b"w" * 4096)).error == errno.ESTALE
            # Once the DR disk stops being a secondary, its link export is revoked.
            await asyncio.to_thread(b.client.delete_replication, "dr")
            assert (await _request(one, Kind.WRITE, second.handle, b"v" * 4096)).error == errno.ESTALE
        finally:
            one.abort("done")
            other.abort("done")

    asyncio.run(go())
    assert b.image("dr").read_bytes()[:4096] == b"z" * 4096
