"""The partition matrix (issue 10), one function per scenario, drawn or fixed timings.

    a  the link between the AZs cut; both still see the witness and the controller
    b  the production AZ isolated from everything while its users go on writing;
       fail over (the witness's grant at a higher epoch), heal, reprotect
    c  the DR AZ isolated
    d  the witness isolated
    e  the controller isolated, and the link between the AZs cut meanwhile
    f  the link between the AZs flapping (cut and heal every 0.3..3 s)
    g  any of them with a process (agent of either AZ, the witness, or with the real
       controller (controlled.py) the controller) SIGKILLed at a random moment and
       restarted a little later; with the real controller, automatic failover on or off

Every trial runs the writers against every production disk from before the
fault to after the heal, and ends with `Trial.finish()`: the checker's
verdict on the whole history, read back on the final primary.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.faults.checker import Verdict
from tests.faults.netlab import Flapper
from tests.faults.partitions import PartitionStack, Trial

SCENARIOS = "abcdef"
LINK_DOWN_S = 5.0  # mirror/link.py REQUEST_TIMEOUT_S: a black-holed link counts as down after this


@dataclass
class Draw:
    scenario: str
    fault_s: float = 7.0
    failover_after_s: float = 6.5  # (b): the DR side is promoted this long after the isolation
    kill: str | None = None  # "a" | "b" | "w" | "h" (the controller)
    kill_at_s: float = 0.0  # after the fault began
    restart_after_s: float = 1.0
    arbitrated: bool = True
    suspend_timeout_s: float = 3.0
    seed: int = 0
    controller: str = "agents"  # who drives: the test ("agents"), or serve: "manual" | "auto" failover

    @property
    def label(self) -> str:
        kill = f"+kill {self.kill}" if self.kill else ""
        drive = "" if self.controller == "agents" else f" [{self.controller}]"
        return f"{self.scenario}{kill}{'' if self.arbitrated else ' (no witness)'}{drive}"


def draw(rng: random.Random, seed: int, kill_targets: str = "abw", controller: str = "agents") -> Draw:
    """A random trial: the scenario, its timings, and (g) maybe a kill."""
    scenario = rng.choice(SCENARIOS)
    d = Draw(scenario=scenario, seed=seed, suspend_timeout_s=round(rng.uniform(1.0, 8.0), 1),
             controller=controller)  # fmt: skip
    d.fault_s = round(rng.uniform(10.0, 30.0) if scenario == "f" else rng.uniform(2.0, 12.0), 1)
    d.failover_after_s = round(rng.uniform(LINK_DOWN_S + 1.0, LINK_DOWN_S + 4.0), 1)
    if rng.random() < 0.5:
        d.kill = rng.choice(kill_targets)
        d.kill_at_s = round(rng.uniform(0.0, d.fault_s), 1)
        d.restart_after_s = round(rng.uniform(0.3, 3.0), 1)
    return d


@dataclass
class Result:
    draw: Draw
    verdict: Verdict
    figures: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        v = self.verdict
        return {**asdict(self.draw), "acked": v.acked, "failed": v.failed, "lost": v.lost_writes,
                "two_primaries": v.two_primaries, "split": len(v.split_instants) + len(v.final_split),
                "suspend_s": v.suspend_s, **self.figures}  # fmt: skip


class Killer:
    """SIGKILL one process at a moment of the trial, start it again a little later."""

    def __init__(self, stack: PartitionStack, trial: Trial, d: Draw) -> None:
        self.stack, self.trial, self.d = stack, trial, d
        self.unpushed: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Killer:
        if self.d.kill:
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.d.kill is not None
        try:
            time.sleep(self.d.kill_at_s)
            self.stack.kill(self.d.kill)
            time.sleep(self.d.restart_after_s)
            if not self.stack.restart(self.d.kill, self.trial):
                self.unpushed.add(self.d.kill)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def join(self) -> None:
        """Wait for the restart; then re-send roles the controller could not send then."""
        if self.d.kill:
            self._thread.join(60)
            if self.error is not None:
                raise self.error
            for side in self.unpushed:
                self.stack.wait_healthy(side)
                self.trial.push_roles(side)


def run(stack: PartitionStack, d: Draw) -> Result:
    stack.ensure_up()
    trial = stack.trial(arbitrated=d.arbitrated, suspend_timeout_s=d.suspend_timeout_s).setup()
    try:
        trial.start_writers("a")
        trial.wait_acks(20)
        figures = FAULTS[d.scenario](stack, trial, d)
        return Result(d, trial.finish(), figures)
    finally:
        stack.net.heal()
        trial.stop_probes()  # a failed trial must not leave its probes running
        trial.cleanup()


def _during(stack: PartitionStack, trial: Trial, d: Draw, fault: Any, hold_s: float | None = None) -> Killer:
    """Begin the fault, arm the killer, hold the fault; the caller heals."""
    fault()
    killer = Killer(stack, trial, d).start()
    time.sleep(d.fault_s if hold_s is None else hold_s)
    return killer


def _heal_and_sync(stack: PartitionStack, trial: Trial, killer: Killer) -> dict[str, Any]:
    stack.net.heal()
    killer.join()
    trial.wait_active(trial.primary, timeout_s=90)
    trial.wait_acks(10)  # the users still write after the heal
    return {}


def cut_link(stack: PartitionStack, trial: Trial, d: Draw) -> dict[str, Any]:
    killer = _during(stack, trial, d, lambda: stack.net.cut("a", "b"))
    return _heal_and_sync(stack, trial, killer)


def isolate_dr(stack: PartitionStack, trial: Trial, d: Draw) -> dict[str, Any]:
    killer = _during(stack, trial, d, lambda: stack.net.isolate("b"))
    return _heal_and_sync(stack, trial, killer)


def isolate_witness(stack: PartitionStack, trial: Trial, d: Draw) -> dict[str, Any]:
    killer = _during(stack, trial, d, lambda: stack.net.isolate("w"))
    return _heal_and_sync(stack, trial, killer)


def isolate_controller(stack: PartitionStack, trial: Trial, d: Draw) -> dict[str, Any]:
    def fault() -> None:
        stack.net.isolate("h")
        stack.net.cut("a", "b")

    killer = _during(stack, trial, d, fault)
    return _heal_and_sync(stack, trial, killer)


def flapping(stack: PartitionStack, trial: Trial, d: Draw) -> dict[str, Any]:
    flapper = Flapper(stack.net, "a", "b", random.Random(d.seed))
    killer = _during(stack, trial, d, flapper.start)
    flapper.stop()
    return {"flaps": flapper.flips, **_heal_and_sync(stack, trial, killer)}


def isolate_primary(stack: PartitionStack, trial: Trial, d: Draw) -> dict[str, Any]:
    """(b): isolate the production AZ, fail over after `failover_after_s`, let the DR side's
    users write, heal, let the old side's users try again, reprotect."""
    t0 = time.monotonic()
    killer = _during(stack, trial, d, lambda: stack.net.isolate("a"), hold_s=d.failover_after_s)
    promoted_s = trial.failover() - t0
    trial.start_writers("b")
    trial.wait_acks(20)
    time.sleep(max(0.0, d.fault_s - d.failover_after_s))
    stack.net.heal()
    killer.join()
    time.sleep(1.0)  # the old primary's users meet the healed network (and its refusals)
    trial.stop_writers()
    trial.reprotect()
    old_acks = [e["t"] for e in trial.history() if e["k"] == "ack" and str(e["w"]).startswith("a")]
    last_old_ack_s = round(max(old_acks) - t0, 2) if old_acks else None
    return {"promoted_after_s": round(promoted_s, 2), "old_primary_last_ack_s": last_old_ack_s}


FAULTS = {
    "a": cut_link,
    "b": isolate_primary,
    "c": isolate_dr,
    "d": isolate_witness,
    "e": isolate_controller,
    "f": flapping,
}
