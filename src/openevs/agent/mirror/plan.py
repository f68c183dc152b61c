"""What the agent does when a volume's replication config changes, as data.

`plan_config_change(old, new, initial_sync=..., fenced=...)` answers a
`PUT /volumes/{id}/replication` with the list of `Action`s to carry out, in
order; it does no I/O (manager.py carries the actions out). `old` is the
volume's current config, None when the volume is not replicated yet.

Rules this module keeps:

- `standalone` stops the replication (whatever the epoch);
- a lower epoch than the volume's is refused (stale controller state); a
  role change needs a higher epoch;
- the same config again is a no-op, so the controller may repeat any call;
  it unfences a fenced primary (the controller confirmed its epoch);
- a secondary's link export is revoked before anything else changes when
  its role, its link export or its epoch changes: the old primary's
  connections never write again;
- a demoted volume's link export opens only once the change is saved
  (DEMOTE closes it, SAVE opens it again);
- a config is applied completely (data discarded, bitmap reset, ...) before
  it is saved (SAVE), so an agent that crashes half-way is asked again.
"""

from __future__ import annotations

import enum

from openevs.contract import ReplicationConfig
from openevs.domain.replication import Role


class Action(enum.Enum):
    REFUSE_STALE_EPOCH = "refuse_stale_epoch"  # the controller's state is older than ours
    REFUSE_ROLE_CHANGE = "refuse_role_change"  # a new role at the same epoch
    REMOVE = "remove"  # stop replicating: close, revoke the link export, forget bitmap and config
    UNFENCE = "unfence"  # the controller confirmed this primary's epoch
    REVOKE_LINK_EXPORT = "revoke_link_export"  # drop the old link export's connections
    DEMOTE = "demote"  # secondary: writes refused, link export closed until SAVE, forwarding stops
    PROMOTE = "promote"  # primary, unfenced
    CLEAR_BITMAP = "clear_bitmap"  # track writes from now on (nothing differs yet)
    PUNCH = "punch"  # discard the whole DR disk (the initial copy skips what is zero)
    MARK_ALL_DATA = "mark_all_data"  # initial copy: every data extent is dirty, the peer is blank
    SET_MIRRORING = "set_mirroring"
    SAVE = "save"  # persist the config, then it is the volume's; the link export opens
    START = "start"  # a new replica: registered, in its group, running
    REGROUP = "regroup"  # move between groups, start or stop the link, re-evaluate the group


class When(enum.Enum):
    ALWAYS = "always"
    INITIAL = "initial"  # the controller asked for an initial sync
    NEW_LINK = "new_link"  # the link export or the epoch changed: the primary reconnects


# (old role or None for a new replica, new role) -> the steps, in order.
STEPS: dict[tuple[Role | None, Role], tuple[tuple[Action, When], ...]] = {
    (None, Role.PRIMARY): (
        (Action.MARK_ALL_DATA, When.INITIAL),
        (Action.SAVE, When.ALWAYS),
        (Action.START, When.ALWAYS),
    ),
    (None, Role.SECONDARY): (
        (Action.CLEAR_BITMAP, When.ALWAYS),
        (Action.PUNCH, When.INITIAL),
        (Action.SAVE, When.ALWAYS),
        (Action.START, When.ALWAYS),
    ),
    (Role.PRIMARY, Role.PRIMARY): (
        (Action.PROMOTE, When.ALWAYS),
        (Action.MARK_ALL_DATA, When.INITIAL),
        (Action.SET_MIRRORING, When.ALWAYS),
        (Action.SAVE, When.ALWAYS),
        (Action.REGROUP, When.ALWAYS),
    ),
    (Role.PRIMARY, Role.SECONDARY): (  # a demoted primary keeps its bitmap unless resynced
        (Action.DEMOTE, When.ALWAYS),
        (Action.CLEAR_BITMAP, When.INITIAL),
        (Action.PUNCH, When.INITIAL),
        (Action.SET_MIRRORING, When.ALWAYS),
        (Action.SAVE, When.ALWAYS),
        (Action.REGROUP, When.ALWAYS),
    ),
    (Role.SECONDARY, Role.PRIMARY): (
        (Action.REVOKE_LINK_EXPORT, When.ALWAYS),
        (Action.CLEAR_BITMAP, When.ALWAYS),  # promoted: track writes from now on
        (Action.PROMOTE, When.ALWAYS),
        (Action.MARK_ALL_DATA, When.INITIAL),
        (Action.SET_MIRRORING, When.ALWAYS),
        (Action.SAVE, When.ALWAYS),
        (Action.REGROUP, When.ALWAYS),
    ),
    (Role.SECONDARY, Role.SECONDARY): (
        (Action.REVOKE_LINK_EXPORT, When.NEW_LINK),
        (Action.DEMOTE, When.ALWAYS),
        (Action.CLEAR_BITMAP, When.INITIAL),
        (Action.PUNCH, When.INITIAL),
        (Action.SET_MIRRORING, When.ALWAYS),
        (Action.SAVE, When.ALWAYS),
        (Action.REGROUP, When.ALWAYS),
    ),
}


def plan_config_change(
    old: ReplicationConfig | None, new: ReplicationConfig, *, initial_sync: bool, fenced: bool
) -> list[Action]:
    """The actions that take a volume from config `old` to `new`, in order.

    `fenced`: the volume is a primary fenced since the agent started.
    """
    if new.role is Role.STANDALONE:
        return [Action.REMOVE]
    if old is not None:
        if new.epoch < old.epoch:
            return [Action.REFUSE_STALE_EPOCH]
        if new == old:
            return [Action.UNFENCE, Action.REGROUP] if fenced else []
        if new.epoch == old.epoch and new.role is not old.role:
            return [Action.REFUSE_ROLE_CHANGE]
    holds = {
        When.ALWAYS: True,
        When.INITIAL: initial_sync,
        When.NEW_LINK: old is not None
        and (new.link_export != old.link_export or new.epoch != old.epoch),
    }
    steps = STEPS[(old.role if old is not None else None, new.role)]
    return [action for action, when in steps if holds[when]]
