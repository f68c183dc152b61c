"""The snapshot rules of domain/snapshots.py: which disk statuses allow a snapshot, names."""

from __future__ import annotations

import pytest

from openevs.domain.errors import InvalidInput, InvalidState
from openevs.domain.snapshots import check_can_snapshot, check_snapshot_text
from openevs.domain.states import VolumeStatus


@pytest.mark.parametrize("status", list(VolumeStatus))
@pytest.mark.parametrize("force", [False, True])
def test_which_disk_statuses_allow_a_snapshot(status: VolumeStatus, force: bool) -> None:
    allowed = status == "available" or (force and status in ("in-use", "attaching"))
    if allowed:
        check_can_snapshot(status, force)
        return
    with pytest.raises(InvalidState) as info:
        check_can_snapshot(status, force)
    assert ("\"force\": true" in str(info.value)) == (status in ("in-use", "attaching"))


def test_names() -> None:
    check_snapshot_text("snap-001", "Daily backup")
    check_snapshot_text(None, None)
    with pytest.raises(InvalidInput, match="reserved"):
        check_snapshot_text("autobk_snapshot_1", None)
    with pytest.raises(InvalidInput, match="255"):
        check_snapshot_text(None, "d" * 256)
