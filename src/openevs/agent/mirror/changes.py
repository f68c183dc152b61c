"""Which replicated volumes changed state, in order: what makes the controller's
measurement cost what changed, not what exists.

Every state change of a replica (its `Changes.notify()`, a config change,
a removal) bumps one counter and moves the volume to the end of an ordered
map, so `changed_since(v)` walks back only over the volumes changed after
version `v`. The controller keeps the last version it read (with the
agent's boot id: a restarted agent starts again at 0) and asks for what
changed since; it still reads everything now and then as a safety net.
"""

from __future__ import annotations


class ChangeLog:
    def __init__(self) -> None:
        self.version = 0
        self._changed: dict[str, int] = {}  # volume -> version of its last change, in that order

    def touch(self, volume_id: str) -> None:
        self.version += 1
        self._changed.pop(volume_id, None)
        self._changed[volume_id] = self.version

    def changed_since(self, version: int) -> list[str]:
        """The volumes changed after `version`, oldest change first."""
        out: list[str] = []
        for volume_id in reversed(self._changed):
            if self._changed[volume_id] <= version:
                break
            out.append(volume_id)
        out.reverse()
        return out
