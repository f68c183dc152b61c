"""Fixtures of the fault suite: a `FaultStack` torn down (namespaces included)
always; and the integration suite's live controller (`api`, `controller_factory`)
for the races and hostile-input tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultStack
from tests.integration.conftest import (  # noqa: F401 - fixtures shared with the integration suite
    agent_data_dir,
    api,
    controller_factory,
    sealer,
    supervisor,
)


@pytest.fixture
def fault_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    stack = FaultStack(tmp_path)
    request.addfinalizer(stack.close)  # before start(): a failed start still cleans up
    stack.start()
    yield stack


@pytest.fixture
def tls_fault_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    """The same, with users' NBD on TLS required (the hostile test)."""
    stack = FaultStack(tmp_path, nbd_tls="required")
    request.addfinalizer(stack.close)
    stack.start()
    yield stack
