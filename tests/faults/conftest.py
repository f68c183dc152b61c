"""Fixtures of the fault suite: a `FaultStack` torn down (namespaces included) always."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultStack


@pytest.fixture
def fault_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    stack = FaultStack(tmp_path)
    request.addfinalizer(stack.close)  # before start(): a failed start still cleans up
    stack.start()
    yield stack
