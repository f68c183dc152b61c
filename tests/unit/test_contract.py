"""The typed controller <-> agent contract: validation, normalisation, stored plans."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from openevs.contract import (
    ErrorBody,
    ErrorReason,
    Peer,
    ReplicationConfig,
    ReplicationRequest,
    ReplicationState,
)
from openevs.contract_plans import (
    FailoverPlan,
    MembershipPlan,
    PairFlip,
    ReprotectPlan,
    SwitchoverPlan,
    dump_plan,
    load_plan,
)
from openevs.domain.replication import ReplicationStatus, Role

PEER = Peer(host="10.0.0.2", port=10809, export="link-1")


def test_a_primary_config_drops_a_link_export_and_empty_group() -> None:
    config = ReplicationConfig(role=Role.PRIMARY, epoch=3, peer=PEER, link_export="x", group_id="")
    assert config.link_export is None and config.group_id is None
    assert config == ReplicationConfig(role=Role.PRIMARY, epoch=3, peer=PEER)


@pytest.mark.parametrize(
    "fields",
    [
        {"role": "primary", "epoch": 1},  # a mirroring primary needs a peer
        {"role": "secondary", "epoch": 1},  # a secondary needs a link export
        {"role": "primary", "epoch": -1, "mirroring": False},
        {"role": "primary", "epoch": "1", "mirroring": False},  # strict ints
        {"role": "leader", "epoch": 1},
        {"role": "standalone", "epoch": 0, "colour": "red"},  # unknown fields are refused
    ],
)
def test_invalid_configs_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReplicationConfig.model_validate(fields)


def test_a_request_carries_its_config_and_data_actions() -> None:
    request = ReplicationRequest(
        role=Role.PRIMARY, epoch=2, peer=PEER, initial_sync=True, add_dirty=[(0, 4096)]
    )
    assert request.config() == ReplicationConfig(role=Role.PRIMARY, epoch=2, peer=PEER)
    wire = request.model_dump(mode="json")
    assert ReplicationRequest.model_validate(wire) == request


def test_replace_validates_like_a_new_value() -> None:
    paused = ReplicationConfig(role=Role.PRIMARY, epoch=1, mirroring=False)
    with pytest.raises(ValidationError):
        paused.replace(mirroring=True)  # a mirroring primary needs a peer
    assert paused.replace(peer=PEER, mirroring=True).mirroring


def test_a_state_round_trips_through_json() -> None:
    state = ReplicationState(
        volume_id="v", role=Role.PRIMARY, epoch=4, replication_status=ReplicationStatus.COPYING,
        dirty_bytes=65536, sync={"copied_bytes": 1, "total_bytes": 2},
    )  # fmt: skip
    again = ReplicationState.model_validate_json(state.model_dump_json())
    assert again == state and again.sync is not None and again.sync.total_bytes == 2
    assert ReplicationState.standalone("v").role is Role.STANDALONE


def test_error_reasons_map_to_statuses_and_faults() -> None:
    assert ErrorReason.STALE_EPOCH.http_status == 409
    assert ErrorReason.NO_SPACE.pool_fault and not ErrorReason.CONFLICT.pool_fault
    body = ErrorBody.model_validate({"error": {"reason": "not_found", "message": "no"}})
    assert body.error.reason is ErrorReason.NOT_FOUND
    with pytest.raises(ValidationError):
        ErrorBody.model_validate({"error": {"reason": "weird", "message": "no"}})


FLIP = PairFlip(epoch=2, link_export="l2", new_primary="dr", old_primary="prod")


@pytest.mark.parametrize(
    "plan",
    [
        FailoverPlan(pairs={"p": FLIP}),
        SwitchoverPlan(pairs={"p": FLIP}),
        ReprotectPlan(),
        MembershipPlan(add=["a"], remove=["b"]),
    ],
)
def test_plans_round_trip_through_the_row(plan: object) -> None:
    assert load_plan(dump_plan(plan)) == plan  # type: ignore[arg-type]


def test_no_plan_and_old_rows() -> None:
    assert load_plan({}) is None and load_plan(None) is None and dump_plan(None) == {}
    assert load_plan({"add": ["a"], "remove": []}) == MembershipPlan(add=["a"])


@pytest.mark.parametrize(
    "raw",
    [
        {"action": "explode"},
        {"action": "failover"},  # no pairs
        {"action": "failover", "pairs": {"p": {"epoch": 2}}},
        {"action": "reprotect", "extra": 1},
    ],
)
def test_a_corrupt_plan_is_refused_when_loaded(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        load_plan(raw)
