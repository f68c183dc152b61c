"""Fixtures of the replication tests: two agents (two AZs) sharing a short temp dir."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mirror.support import PairedAgent


@pytest.fixture
def agents() -> Iterator[tuple[PairedAgent, PairedAgent]]:
    root = Path(tempfile.mkdtemp(prefix="oevs-m-"))
    a = PairedAgent(root / "a", "az1.dc1")
    b = PairedAgent(root / "b", "az2.dc2")
    a.start()
    b.start()
    yield a, b
    for agent in (a, b):
        agent.kill()
        agent.client.close()
        if agent.log.exists():  # shown by pytest when the test failed
            print(f"--- {agent.az} log ---\n{agent.log.read_text()[-20000:]}")
    shutil.rmtree(root, ignore_errors=True)
