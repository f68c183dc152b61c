"""The plans of a group's failover, switchover, reprotect and membership change:
the controller stores one in the group row (`ReplicationGroup.pending`) and validates
it when it is loaded (`load_plan`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from openevs.contract import Model


class PairFlip(Model):
    """One member's role swap: fixed when the request is accepted."""

    epoch: int
    link_export: str
    new_primary: str
    old_primary: str


class FailoverPlan(Model):
    action: Literal["failover"] = "failover"
    pairs: dict[str, PairFlip]
    epoch: int = 0  # the group's arbitration epoch after the flip (0: plans of before: group's + 1)
    force: bool = False  # openevs-force-failover: the witness's live lease was overridden


class SwitchoverPlan(Model):
    action: Literal["reverse"] = "reverse"
    pairs: dict[str, PairFlip]
    epoch: int = 0  # as FailoverPlan's


class ReprotectPlan(Model):
    action: Literal["reprotect"] = "reprotect"


class MembershipPlan(Model):
    action: Literal["update"] = "update"
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


Plan = Annotated[
    FailoverPlan | SwitchoverPlan | ReprotectPlan | MembershipPlan, Field(discriminator="action")
]
_PLAN: TypeAdapter[Plan] = TypeAdapter(Plan)


def load_plan(raw: dict[str, Any] | None) -> Plan | None:
    """The plan stored in a group row (`{}` when none), validated."""
    if not raw:
        return None
    if "action" not in raw:  # rows written before plans carried their kind
        raw = {"action": "update", **raw}
    return _PLAN.validate_python(raw)


def dump_plan(plan: Plan | None) -> dict[str, Any]:
    return {} if plan is None else plan.model_dump(mode="json")
