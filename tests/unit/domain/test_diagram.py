"""docs/state-machines.md is what scripts/draw_state_machines.py draws from the tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_diagram_is_current() -> None:
    spec = importlib.util.spec_from_file_location("draw", ROOT / "scripts" / "draw_state_machines.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "state-machines.md").read_text() == module.render()
