"""The config-change plan of agent/mirror/plan.py, for every cell of its table."""

from __future__ import annotations

import itertools

import pytest

from openevs.agent.mirror.plan import STEPS, Action, plan_config_change
from openevs.contract import Peer, ReplicationConfig
from openevs.domain.replication import Role

A = Action
PEER = Peer(host="10.0.0.2", port=10809, export="link-v1")


def config(
    role: Role, epoch: int = 5, *, mirroring: bool = True, link: str = "link-v1", group: str | None = None
) -> ReplicationConfig:
    return ReplicationConfig(
        role=role, epoch=epoch, pair_id="p1", group_id=group, mirroring=mirroring,
        peer=PEER if role is Role.PRIMARY else None,
        link_export=link if role is Role.SECONDARY else None,
    )  # fmt: skip


P, S = Role.PRIMARY, Role.SECONDARY

CASES = [
    # stop replicating: whatever the epoch or the state
    ("standalone, new", None, config(Role.STANDALONE), False, False, [A.REMOVE]),
    ("standalone, primary", config(P), config(Role.STANDALONE, 9), True, True, [A.REMOVE]),
    ("standalone, stale epoch", config(S), config(Role.STANDALONE, 1), False, False, [A.REMOVE]),
    # a new replica
    ("new primary", None, config(P), False, False, [A.SAVE, A.START]),
    ("new primary, initial", None, config(P), True, False, [A.MARK_ALL_DATA, A.SAVE, A.START]),
    ("new secondary", None, config(S), False, False, [A.CLEAR_BITMAP, A.SAVE, A.START]),
    (
        "new secondary, initial", None, config(S), True, False,
        [A.CLEAR_BITMAP, A.PUNCH, A.SAVE, A.START],
    ),
    # refused
    ("stale primary", config(P, 5), config(P, 4), False, False, [A.REFUSE_STALE_EPOCH]),
    ("stale secondary", config(S, 5), config(S, 4), True, False, [A.REFUSE_STALE_EPOCH]),
    ("stale, role change", config(S, 5), config(P, 4), False, True, [A.REFUSE_STALE_EPOCH]),
    ("stale, same otherwise", config(P, 5), config(P, 4), False, True, [A.REFUSE_STALE_EPOCH]),
    ("promote at same epoch", config(S, 5), config(P, 5), False, False, [A.REFUSE_ROLE_CHANGE]),
    ("demote at same epoch", config(P, 5), config(S, 5), True, True, [A.REFUSE_ROLE_CHANGE]),
    # the same config again
    ("same primary", config(P), config(P), False, False, []),
    ("same primary, initial asked", config(P), config(P), True, False, []),
    ("same primary, fenced", config(P), config(P), False, True, [A.UNFENCE, A.REGROUP]),
    ("same secondary", config(S), config(S), True, False, []),
    # primary stays primary
    (
        "primary, pause", config(P), config(P, mirroring=False), False, False,
        [A.PROMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "primary, new epoch while fenced", config(P, 5), config(P, 6), False, True,
        [A.PROMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "primary, new group", config(P), config(P, group="g1"), False, False,
        [A.PROMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "primary, resync", config(P, 5), config(P, 6), True, False,
        [A.PROMOTE, A.MARK_ALL_DATA, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    # demoted
    (
        "demote", config(P, 5), config(S, 6), False, False,
        [A.DEMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "demote, fenced, initial", config(P, 5), config(S, 6), True, True,
        [A.DEMOTE, A.CLEAR_BITMAP, A.PUNCH, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    # promoted
    (
        "promote", config(S, 5), config(P, 6), False, False,
        [A.REVOKE_LINK_EXPORT, A.CLEAR_BITMAP, A.PROMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "promote, initial", config(S, 5), config(P, 6, mirroring=False), True, False,
        [
            A.REVOKE_LINK_EXPORT, A.CLEAR_BITMAP, A.PROMOTE, A.MARK_ALL_DATA, A.SET_MIRRORING,
            A.SAVE, A.REGROUP,
        ],
    ),
    # secondary stays secondary
    (
        "secondary, pause (same link)", config(S), config(S, mirroring=False), False, False,
        [A.DEMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "secondary, new link export", config(S), config(S, link="link-v2"), False, False,
        [A.REVOKE_LINK_EXPORT, A.DEMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "secondary, new epoch", config(S, 5), config(S, 6), False, False,
        [A.REVOKE_LINK_EXPORT, A.DEMOTE, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "secondary, resync to a new link", config(S, 5), config(S, 6, link="link-v2"), True, False,
        [A.REVOKE_LINK_EXPORT, A.DEMOTE, A.CLEAR_BITMAP, A.PUNCH, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
    (
        "secondary, resync on the same link", config(S, 5), config(S, 5, group="g1"), True, False,
        [A.DEMOTE, A.CLEAR_BITMAP, A.PUNCH, A.SET_MIRRORING, A.SAVE, A.REGROUP],
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "initial", "fenced", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan(
    old: ReplicationConfig | None, new: ReplicationConfig, initial: bool, fenced: bool,
    expected: list[Action],
) -> None:  # fmt: skip
    assert plan_config_change(old, new, initial_sync=initial, fenced=fenced) == expected


def test_every_row_of_the_table_is_tested() -> None:
    tested = {
        (old.role if old is not None else None, new.role)
        for _, old, new, *_rest in CASES
        if new.role is not Role.STANDALONE
    }
    assert tested == set(STEPS)


def _old_chain(
    old: ReplicationConfig | None, new: ReplicationConfig, initial: bool, fenced: bool
) -> list[Action]:
    """The if/else chain the agent's manager had before the table, step by step."""
    if new.role is Role.STANDALONE:
        return [A.REMOVE]
    out: list[Action] = []
    if old is None:
        if new.role is Role.SECONDARY:
            out.append(A.CLEAR_BITMAP)
            if initial:
                out.append(A.PUNCH)
        elif initial:
            out.append(A.MARK_ALL_DATA)
        return [*out, A.SAVE, A.START]
    if new.epoch < old.epoch:
        return [A.REFUSE_STALE_EPOCH]
    if new == old:
        return [A.UNFENCE, A.REGROUP] if fenced else []
    if new.epoch == old.epoch and new.role is not old.role:
        return [A.REFUSE_ROLE_CHANGE]
    if old.role is Role.SECONDARY and (
        new.role is not Role.SECONDARY or new.link_export != old.link_export or new.epoch != old.epoch
    ):
        out.append(A.REVOKE_LINK_EXPORT)
    if new.role is Role.SECONDARY:
        out.append(A.DEMOTE)
        if initial:
            out += [A.CLEAR_BITMAP, A.PUNCH]
    else:
        if old.role is Role.SECONDARY:
            out.append(A.CLEAR_BITMAP)
        out.append(A.PROMOTE)
        if initial:
            out.append(A.MARK_ALL_DATA)
    return [*out, A.SET_MIRRORING, A.SAVE, A.REGROUP]


def _configs() -> list[ReplicationConfig]:
    roles = (P, S, Role.STANDALONE)
    return [
        config(role, epoch, mirroring=mirroring, link=link, group=group)
        for role, epoch, mirroring, link, group in itertools.product(
            roles, (4, 5, 6), (True, False), ("link-v1", "link-v2"), (None, "g1")
        )
    ]


def test_the_table_decides_as_the_old_chain_did_in_every_combination() -> None:
    olds: list[ReplicationConfig | None] = [None, *(c for c in _configs() if c.role is not Role.STANDALONE)]
    count = 0
    for old, new, initial, fenced in itertools.product(olds, _configs(), (False, True), (False, True)):
        if old is None and fenced:
            continue  # only a running replica can be fenced
        got = plan_config_change(old, new, initial_sync=initial, fenced=fenced)
        assert got == _old_chain(old, new, initial, fenced), (old, new, initial, fenced)
        count += 1
    assert count > 5000
