"""The agent's change log (agent/mirror/changes.py): what changed since a version."""

from __future__ import annotations

from openevs.agent.mirror.changes import ChangeLog


def test_only_volumes_changed_after_the_version_are_returned_oldest_first() -> None:
    log = ChangeLog()
    for vid in ("a", "b", "c"):
        log.touch(vid)
    seen = log.version
    assert log.changed_since(seen) == []
    log.touch("a")
    log.touch("d")
    assert log.changed_since(seen) == ["a", "d"]
    assert log.changed_since(0) == ["b", "c", "a", "d"]  # a volume appears once, at its last change
    assert log.version == seen + 2


def test_a_volume_touched_again_moves_past_the_cursor() -> None:
    log = ChangeLog()
    log.touch("a")
    log.touch("b")
    cursor = log.version
    log.touch("b")
    assert log.changed_since(cursor) == ["b"]
