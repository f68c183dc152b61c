"""Fixtures of the agent integration tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.agent.support import AgentProcess


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="oevs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    process = agent_factory()
    process.start()
    return process


@pytest.fixture
def agent_factory(short_dir: Path) -> Iterator[Callable[..., AgentProcess]]:
    made: list[AgentProcess] = []

    def make(
        az: str = "az1.dc1", pool: Path | None = None, sock: Path | None = None
    ) -> AgentProcess:
        process = AgentProcess(short_dir, az, pool=pool, sock=sock)
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()
        process.client.close()
