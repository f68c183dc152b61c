"""An agent's descriptors: raised to the hard limit at start and reported in /health;
when they run out, the control API says so (503 resource_shortage, one log
line per interval, no traceback) and works again once some are free."""

from __future__ import annotations

import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openevs.contract import AgentRequestFailed, ErrorReason, ReplicationRequest
from openevs.domain.replication import Role
from tests.integration.agent.support import AgentProcess
from tests.support.waiting import wait_for

MiB = 1 << 20
FD_LIMIT = 64
Limited = Callable[[int, int], "LimitedAgent"]


class LimitedAgent(AgentProcess):
    """An agent whose soft descriptor limit starts low and whose hard limit is `hard`."""

    def __init__(self, root: Path, soft: int, hard: int) -> None:
        super().__init__(root)
        self.limits = (soft, hard)

    def start(self) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.limits)

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=limit)  # fmt: skip
        wait_for("agent health", self.client.health)


@pytest.fixture
def limited(short_dir: Path) -> Iterator[Callable[[int, int], LimitedAgent]]:
    made: list[LimitedAgent] = []

    def make(soft: int, hard: int) -> LimitedAgent:
        agent = LimitedAgent(short_dir, soft, hard)
        made.append(agent)
        agent.start()
        return agent

    yield make
    for agent in made:
        agent.kill()


def secondary(epoch: int = 1) -> ReplicationRequest:
    """A secondary with a dirty region: its bitmap file is open from then on."""
    return ReplicationRequest(role=Role.SECONDARY, epoch=epoch, pair_id="p", link_export="link-x",
                              add_dirty=[(0, 65536)])  # fmt: skip


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one_and_reported(limited: Limited) -> None:
    agent = limited(128, 4096)
    health = agent.client.health()
    assert (health.fd_soft_limit, health.fd_hard_limit) == (4096, 4096)
    assert 0 < health.open_fds < 4096


def test_out_of_descriptors_the_control_api_says_so_and_recovers(limited: Limited) -> None:
    agent = limited(FD_LIMIT, FD_LIMIT)
    client = agent.client
    made: list[str] = []
    refused: AgentRequestFailed | None = None
    for i in range(4 * FD_LIMIT):  # each holds its bitmap open
        vid = f"v{i}"
        client.create_volume(vid, MiB)
        try:
            client.set_replication(vid, secondary())
        except AgentRequestFailed as exc:
            refused = exc
            break
        made.append(vid)
    assert refused is not None, "the agent never ran short of descriptors"
    assert refused.reason is ErrorReason.RESOURCE_SHORTAGE and refused.status == 503, refused
    assert "file descriptors" in str(refused), refused
    for _ in range(3):  # asked again while short: the same clear answer
        with pytest.raises(AgentRequestFailed) as again:
            client.set_replication(f"v{len(made)}", secondary())
        assert again.value.reason is ErrorReason.RESOURCE_SHORTAGE
    log = agent.log.read_text()
    assert log.count("short of file descriptors") == 1, log
    assert "Traceback" not in log, log
    # Free some: the refused request now succeeds (nothing of it was left half-made).
    for vid in made[:3]:
        client.delete_replication(vid)
    state = client.set_replication(f"v{len(made)}", secondary())
    assert state.role is Role.SECONDARY
