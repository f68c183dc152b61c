"""`openevs snapshot create|list|show|delete` against a real `openevs serve`,
checked through the CLI's output and the API."""

from __future__ import annotations

import pytest

from openevs.cli import client_snapshots
from tests.e2e.conftest import ServeProcess
from tests.e2e.test_cli import assert_fits_80_columns, env, failing, ok, ok_json  # noqa: F401 - env: fixture

pytestmark = pytest.mark.e2e


def test_snapshot_lifecycle(env: dict[str, str], shared_serve: ServeProcess) -> None:  # noqa: F811
    vol = ok_json(env, "volume", "create", "--size", "1", "--az", "az1.dc1", "--wait", "--timeout", "60")
    snap = ok_json(env, "snapshot", "create", "--volume", vol["id"], "--name", "cli-snap", "--wait",
                   "--timeout", "60")  # fmt: skip
    assert (snap["status"], snap["volume_id"], snap["name"]) == ("available", vol["id"], "cli-snap")
    assert set(snap) == set(client_snapshots.SHAPE.fields)
    assert snap["id"] in {s["id"] for s in ok_json(env, "snapshot", "list", "--volume", vol["id"])}
    assert_fits_80_columns(ok(env, "snapshot", "list", columns=80).stdout, snap["id"])
    assert ok(env, "snapshot", "show", snap["id"], "-f", "value", "-c", "status").stdout == "available\n"
    assert "snapshot" in failing(env, "volume", "delete", vol["id"]).stderr  # it has one
    # Rollback: the v3 route, through the catalog's evs endpoint.
    rolled = ok(env, "snapshot", "rollback", snap["id"], "--wait", "--timeout", "60")
    assert "rolled back" in rolled.stderr, rolled.stderr
    assert ok_json(env, "volume", "show", vol["id"])["status"] == "available"
    assert "deleted" in ok(env, "snapshot", "delete", snap["id"], "--wait", "--timeout", "60").stderr
    ok(env, "volume", "delete", vol["id"], "--wait", "--timeout", "60")
    session = shared_serve.login()
    try:
        assert session.get(f"/v2/{{p}}/snapshots/{snap['id']}").status_code == 404
    finally:
        session.client.close()
