"""`python -m openevs.agent` and `python -m openevs.agent.nbd`: options, help, usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    ("module", "options"),
    [
        ("openevs.agent", ("--az", "--pool", "--listen", "--nbd")),
        ("openevs.agent.nbd", ("--port", "--host", "--read-only", "--name", "--uvloop")),
    ],
)
def test_help_lists_every_option(module: str, options: tuple[str, ...]) -> None:
    result = run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert f"python -m {module}" in result.stdout
    for option in options:
        assert option in result.stdout


def test_agent_usage_errors_exit_2_and_say_why() -> None:
    missing = run("openevs.agent", "--pool", "/nonexistent")
    assert missing.returncode == 2 and "--az" in missing.stderr
    bad = run("openevs.agent", "--az", "az1.dc1", "--pool", "/nonexistent", "--nbd", "nowhere")
    assert bad.returncode == 2 and "--nbd must look like HOST:PORT, got 'nowhere'" in bad.stderr
