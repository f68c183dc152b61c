"""`openevs group ...` against a real `openevs serve` (embedded agents).

The CLI runs as a subprocess configured only by serve's clouds.yaml, through
a group's whole life: create --wait, pause, sync --wait, switchover --wait,
failover --wait, reprotect --wait, extend, update --remove (refused until
paused), delete --wait; plus refusals shown as the API's message, exit 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from openevs.cli import client_groups
from tests.e2e.conftest import ServeProcess
from tests.e2e.test_cli import assert_fits_80_columns, failing, ok, ok_json

pytestmark = pytest.mark.e2e

AZ_A, AZ_B = "az1.dc1", "az2.dc2"


@pytest.fixture
def env(serve_factory: Callable[..., ServeProcess]) -> Iterator[dict[str, str]]:
    serve = serve_factory("serve").start()
    yield serve.client_env()


def make_pair(env: dict[str, str]) -> dict[str, Any]:
    prod = ok_json(env, "volume", "create", "--size", "1", "--az", AZ_A, "--wait")
    dr = ok_json(env, "volume", "create", "--size", "1", "--az", AZ_B, "--wait")
    pair = ok_json(env, "replication", "create", "--volume", prod["id"], "--volume", dr["id"],
                   "--priority-station", AZ_A, "--wait", "--timeout", "90")
    assert pair["status"] == "available" and pair["replication_status"] == "active", pair
    return dict(pair)


def test_group_lifecycle(env: dict[str, str]) -> None:
    pairs = [make_pair(env), make_pair(env)]
    p1, p2 = (p["id"] for p in pairs)

    refused = failing(env, "group", "create", "--pair", p1, "--priority-station", AZ_B)
    assert "priority_station" in refused.stderr and "HTTP 400" in refused.stderr, refused.stderr

    group = ok_json(env, "group", "create", "--pair", p1, "--pair", p2, "--priority-station", AZ_A,
                    "--name", "cli-cg", "--wait", "--timeout", "90")
    gid = group["id"]
    assert group["status"] == "available" and sorted(group["replication_ids"]) == sorted([p1, p2])
    assert set(group) == set(client_groups.SHAPE.fields)
    assert [g["id"] for g in ok_json(env, "group", "list", "--name", "cli-cg")] == [gid]
    dr_of_p1 = pairs[0]["volume_ids"].split(",")[1]
    assert [g["id"] for g in ok_json(env, "group", "list", "--volume-id", dr_of_p1)] == [gid]
    assert gid in ok(env, "group", "list").stdout
    assert_fits_80_columns(ok(env, "group", "list", columns=80).stdout, gid)
    assert_fits_80_columns(ok(env, "group", "list", "--long", "-c", "id", "-c", "pairs", columns=80).stdout,
                           gid, p1, p2)
    assert ok(env, "group", "show", gid, "-f", "value", "-c", "status").stdout == "available\n"
    again = failing(env, "group", "create", "--pair", p1, "--priority-station", AZ_A)
    assert "already in group" in again.stderr and "HTTP 409" in again.stderr, again.stderr

    paused = ok_json(env, "group", "pause", gid, "--wait", "--timeout", "60")
    assert paused["replication_status"] in ("active-stopped", "inactive"), paused
    refused = failing(env, "group", "switchover", gid)
    assert "sync the group first" in refused.stderr and "HTTP 400" in refused.stderr, refused.stderr

    synced = ok(env, "group", "sync", gid, "--wait", "--timeout", "90")
    assert "is available, active" in synced.stderr, synced.stderr
    assert ok_json(env, "group", "show", gid)["replication_status"] == "active"

    switched = ok_json(env, "group", "switchover", gid, "--wait", "--timeout", "90")
    assert switched["status"] == "available" and switched["priority_station"] == AZ_B, switched
    refused = failing(env, "group", "reprotect", gid)
    assert "HTTP 400" in refused.stderr, refused.stderr

    failed_over = ok_json(env, "group", "failover", gid, "--wait", "--timeout", "90")
    assert failed_over["status"] == "failovered" and failed_over["priority_station"] == AZ_A, failed_over

    reprotected = ok_json(env, "group", "reprotect", gid, "--wait", "--timeout", "120")
    assert reprotected["status"] == "available" and reprotected["replication_status"] == "active"

    ok(env, "group", "extend", gid, "--pair", p1, "--size", "2")
    for vid in pairs[0]["volume_ids"].split(","):
        assert ok_json(env, "volume", "show", vid)["size"] == 2
    mismatched = failing(env, "group", "extend", gid, "--pair", p1, "--pair", p2, "--size", "3")
    assert "one --size per --pair" in mismatched.stderr
    smaller = failing(env, "group", "extend", gid, "--pair", p2, "--size", "1")
    assert "must be larger" in smaller.stderr and "HTTP 400" in smaller.stderr, smaller.stderr

    not_paused = failing(env, "group", "update", gid, "--remove", p1)
    assert "paused" in not_paused.stderr and "HTTP 400" in not_paused.stderr, not_paused.stderr
    not_empty = failing(env, "group", "delete", gid)
    assert "remove them first" in not_empty.stderr, not_empty.stderr
    ok(env, "group", "pause", gid, "--wait")
    updated = ok_json(env, "group", "update", gid, "--remove", p1, "--remove", p2, "--name", "emptied",
                      "--wait", "--timeout", "60")
    assert updated["status"] == "available" and updated["replication_ids"] == [], updated
    assert updated["name"] == "emptied"

    deleted = ok(env, "group", "delete", gid, "--wait", "--timeout", "60")
    assert "deleted" in deleted.stderr
    gone = failing(env, "group", "show", gid)
    assert "HTTP 404" in gone.stderr, gone.stderr
    assert ok_json(env, "replication", "show", p1)["replication_consistency_group_id"] is None
