"""The sans-IO NBD cores import no I/O: no asyncio, socket, clock or file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import openevs.agent.nbd

NBD = Path(openevs.agent.nbd.__file__).parent
SANS_IO = [
    "protocol",
    "handshake",
    "events",
    "replies",
    "constants",
    "client_protocol",
    "client_handshake",
    "client_events",
]
FORBIDDEN = {"asyncio", "socket", "selectors", "select", "time", "os", "io", "threading", "ssl"}


@pytest.mark.parametrize("module", SANS_IO)
def test_imports_no_io(module: str) -> None:
    tree = ast.parse((NBD / f"{module}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
    assert "open(" not in (NBD / f"{module}.py").read_text()
