"""The partition harness: two AZ agents, a standalone witness, each in its namespace.

`PartitionStack` is the long-lived part: the lab (netlab.py with the
witness namespace "w"), the agents of AZ_A (side "a") and AZ_B (side "b"),
and `openevs witness` in "w". The test process is the controller (side
"h"): it drives the agents over their control APIs the way the reconciler
does (configure, fail over, reprotect, re-send roles after a restart) and
asks the witness for a failover grant the way the controller's failover
does, so the partition matrix runs without the controller's own processes.

`Trial` is one run on a fresh consistency group of `n_pairs` pairs: its
probes (probe.py) run inside the namespaces — a writer against every
production disk, a history recorder on each agent — and `verdict()` reads
the final primaries back over NBD and hands everything to checker.py.
Arbitration is on when the stack has a witness and the trial asks for it
(`arbitrated=False` is static priority, the run that shows what the
witness prevents).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from openevs.agent.nbd.client import NbdClient
from openevs.contract import AgentUnavailable, Arbiter, Peer, ReplicationRequest
from openevs.domain.replication import Role
from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.witness.client import WitnessUnreachable, units
from tests.faults import checker
from tests.faults.harness import AZ_A, AZ_B, NBD_PORT
from tests.faults.netlab import NetLab, NetnsUnavailable
from tests.faults.nsprocs import NsWitness, PartitionAgent, Probe
from tests.faults.probe import BLOCK, SLOT, checksum
from tests.support.waiting import wait_for

MIB = 1 << 20
SIDE_OF = {AZ_A: "a", AZ_B: "b"}


class FailoverRefused(Exception):
    """The witness did not grant the DR side a higher epoch (unreachable, or a live lease)."""


def open_stack(make: Callable[[Path], PartitionStack], prefix: str) -> Iterator[PartitionStack]:
    """A started stack in a fresh directory, closed at the end (fixtures); skips the test
    where network namespaces cannot be made."""
    import pytest

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        stack = make(root)
    except (NetnsUnavailable, OSError) as exc:
        pytest.skip(f"the partition matrix needs network namespaces: {exc}")
    try:
        yield stack.start()
    finally:
        stack.close()


class PartitionStack:
    def __init__(self, root: Path, lease_s: float = 2.0) -> None:
        self.root = root
        self.net = NetLab(witness=True).create()
        self.pki_dir = root / "pki"  # the secure deployment of README.md: every control link mutual TLS
        pki.init_ca(self.pki_dir)
        pki.issue(self.pki_dir, Identity(CertRole.CONTROLLER))
        self.agents = {
            side: PartitionAgent(root, az, self.net.host(side), self.net.exec_prefix(side), self.pki_dir)
            for side, az in (("a", AZ_A), ("b", AZ_B))
        }
        self.witness = NsWitness(root, self.net, lease_s, self.pki_dir)
        self.trials = 0

    def start(self) -> PartitionStack:
        for agent in self.agents.values():
            agent.start()
        self.witness.start()
        return self

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.witness.stop()
        self.net.close()

    def controller_reaches(self, side: str) -> bool:
        return (self.net.subnet("h"), self.net.subnet(side)) not in self.net.cut_rules

    def kill(self, side: str) -> None:
        if side == "w":
            self.witness.kill()
        else:
            self.agents[side].kill()

    def ensure_up(self) -> None:
        """Between trials: every process running and answering (a trial that failed may
        have left one down or half started); restart what does not answer."""
        for side, agent in self.agents.items():
            try:
                assert agent.alive
                self.wait_healthy(side, 10)
            except AssertionError:
                if agent.alive:
                    agent.kill()
                agent.start()
        if not self.witness.alive:
            self.witness.start()

    def wait_healthy(self, side: str, timeout_s: float = 90) -> None:
        def healthy() -> bool:
            with self.agents[side].client(1) as client:
                client.health()
            return True

        wait_for(f"agent {side} healthy", healthy, timeout_s)

    def restart(self, side: str, trial: Trial) -> bool:
        """Start a killed process again. An agent gets its roles re-sent (a restarted primary
        is fenced until then) when the controller reaches it; False: not yet."""
        if side == "w":
            self.witness.start(wait=False)
            return True
        self.agents[side].launch()
        if not self.controller_reaches(side):
            return False
        self.wait_healthy(side)
        trial.push_roles(side)
        return True

    def trial(self, arbitrated: bool = True, n_pairs: int = 2, suspend_timeout_s: float = 3.0) -> Trial:
        self.trials += 1
        return Trial(self, self.trials, arbitrated, n_pairs, suspend_timeout_s)


class Trial:
    """One consistency group on the stack, its probes, and its verdict."""

    def __init__(self, stack: PartitionStack, n: int, arbitrated: bool, n_pairs: int,
                 suspend_timeout_s: float) -> None:  # fmt: skip
        self.stack, self.n, self.arbitrated = stack, n, arbitrated
        self.dir = stack.root / f"trial-{n}"
        self.dir.mkdir()
        tag = secrets.token_hex(3)
        self.group = f"g{n}-{tag}"
        self.pairs = {f"p{n}-{i}-{tag}": (f"a{n}-{i}-{tag}", f"b{n}-{i}-{tag}") for i in range(n_pairs)}
        self.suspend_timeout_s = suspend_timeout_s
        self.epoch = 1
        self.primary = "a"  # the side of the production disks
        self.links = {pid: f"link-{secrets.token_hex(4)}" for pid in self.pairs}
        self.exports: dict[str, str] = {}  # disk -> the export its users write through
        self.desired: dict[str, dict[str, ReplicationRequest]] = {"a": {}, "b": {}}
        self.probes: list[Probe] = []
        self.writers: dict[str, Probe] = {}
        self.region_bytes = 8 * MIB
        self.failovers = 0
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    # -- configs, the way the reconciler builds them --------------------------------------

    @property
    def key(self) -> str:
        return f"group:{self.group}"

    def arbiter(self) -> Arbiter | None:
        if not self.arbitrated:
            return None
        return Arbiter(key=self.key, epoch=self.epoch, witness=self.stack.witness.address,
                       suspend_timeout_s=self.suspend_timeout_s)  # fmt: skip

    def disk(self, pid: str, side: str) -> str:
        return self.pairs[pid][0 if side == "a" else 1]

    def _set(self, side: str, disk: str, request: ReplicationRequest, timeout_s: float = 10,
             retry_s: float = 0.0) -> None:  # fmt: skip
        """Send a role (and remember it for `push_roles`); retry an agent that is restarting."""
        deadline = time.monotonic() + retry_s
        with self._lock:
            self.desired[side][disk] = request.model_copy(update={"initial_sync": False, "add_dirty": []})
            while True:
                try:
                    with self.stack.agents[side].client(timeout_s) as client:
                        client.set_replication(disk, request)
                    return
                except AgentUnavailable:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)

    def _secondary(self, pid: str, side: str, initial: bool = False) -> ReplicationRequest:
        return ReplicationRequest(role=Role.SECONDARY, epoch=self.epoch, pair_id=pid, group_id=self.group,
                                  link_export=self.links[pid], initial_sync=initial)  # fmt: skip

    def _primary(self, pid: str, side: str, mirroring: bool, **extra: Any) -> ReplicationRequest:
        peer = "b" if side == "a" else "a"
        return ReplicationRequest(
            role=Role.PRIMARY, epoch=self.epoch, pair_id=pid, group_id=self.group,
            peer=Peer(host=self.stack.net.host(peer), port=NBD_PORT, export=self.links[pid]),
            mirroring=mirroring, arbiter=self.arbiter(), **extra,
        )  # fmt: skip

    def setup(self, record: bool = True) -> Trial:
        """The group, active; with `record`, its history recorders."""
        a, b = self.stack.agents["a"], self.stack.agents["b"]
        for pid, (pa, pb) in self.pairs.items():
            with a.client() as ca, b.client() as cb:
                ca.create_volume(pa, 16 * MIB)
                cb.create_volume(pb, 16 * MIB)
                ca.grant_export(f"att-{pa}", pa, False)
            self.exports[pa] = f"att-{pa}"
            self._set("b", pb, self._secondary(pid, "b", initial=True))
            self._set("a", pa, self._primary(pid, "a", True, initial_sync=True))
        self.wait_active("a")
        if record:
            self.start_recorders()
        return self

    def start_recorders(self) -> None:
        """A history recorder inside each AZ's namespace, sampling its own agent."""
        for side in ("a", "b"):
            disks = [self.disk(pid, side) for pid in self.pairs]
            spec = {"log": str(self.dir / f"sample-{side}.jsonl"), "az": self.stack.agents[side].az,
                    "agent": self.stack.agents[side].url, "volumes": disks, "sample_s": 0.05}  # fmt: skip
            self.probes.append(Probe(self.stack.net, side, "sample", spec, self.dir))

    def wait_active(self, side: str, timeout_s: float = 60) -> None:
        disks = [self.disk(pid, side) for pid in self.pairs]

        def active() -> bool:
            with self.stack.agents[side].client(2) as client:
                return all(client.get_replication(d).replication_status == "active" for d in disks)

        wait_for(f"the group {self.group} active on {side}", active, timeout_s)

    def push_roles(self, side: str) -> None:
        """What the controller does when an agent is back: re-send its disks' roles."""
        with self._lock, self.stack.agents[side].client(5) as client:
            for disk, request in self.desired[side].items():
                client.set_replication(disk, request)

    # -- the users ---------------------------------------------------------------------------

    def start_writers(self, side: str, pace_s: float = 0.01) -> None:
        name = f"{side}{len(self.writers) + 1}"
        host = self.stack.net.host(side)
        disks = {pid: self.disk(pid, side) for pid in self.pairs}
        targets = [{"pair": pid, "disk": disk, "host": host, "port": NBD_PORT, "export": self.exports[disk]}
                   for pid, disk in disks.items()]  # fmt: skip
        spec = {"log": str(self.dir / f"writes-{name}.jsonl"), "writer": name, "seed": self.n,
                "region_bytes": self.region_bytes, "pace_s": pace_s, "targets": targets}  # fmt: skip
        self.writers[name] = Probe(self.stack.net, side, "write", spec, self.dir)

    def acks(self) -> int:
        return sum(1 for e in self.history() if e["k"] == "ack")

    def wait_acks(self, n: int, timeout_s: float = 90) -> None:
        start = self.acks()
        wait_for(f"{n} more acknowledged writes", lambda: self.acks() >= start + n, timeout_s)

    def stop_writers(self) -> None:
        for probe in self.writers.values():
            probe.stop()

    def stop_probes(self) -> None:
        self.stop_writers()
        for probe in self.probes:
            probe.stop()

    # -- failover and reprotect, the way the controller does them -----------------------------

    def failover(self, timeout_s: float = 20) -> float:
        """Promote the DR side at a higher epoch, with the witness's grant when arbitrated;
        fence the old primaries first where they answer. Returns when the DR disks were promoted."""
        new_epoch = self.epoch + 1
        if self.arbitrated:
            self._grant(new_epoch, timeout_s)
        self.epoch = new_epoch
        for pid, (pa, _) in self.pairs.items():
            try:
                self._set("a", pa, self._secondary(pid, "a"), timeout_s=1)
            except AgentUnavailable:
                break  # not reached: it fences itself (its witness refuses it the epoch)
        for pid, (_, pb) in self.pairs.items():
            self._set("b", pb, self._primary(pid, "b", False), retry_s=120)
            with self.stack.agents["b"].client() as cb:
                cb.grant_export(f"rw-{pb}", pb, False)
            self.exports[pb] = f"rw-{pb}"
        self.primary = "b"
        self.failovers += 1
        return time.monotonic()

    def _grant(self, epoch: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                [grant] = self.stack.witness.client(AZ_B).acquire(units([(self.key, epoch)]))
            except WitnessUnreachable as exc:  # an operator asks again, until the deadline
                last = f"the witness is unreachable: {exc}"
            else:
                if grant.granted:
                    return
                last = f"{grant.refusal} (held by {grant.holder} at epoch {grant.epoch})"
            time.sleep(0.2)
        raise FailoverRefused(f"the witness did not grant epoch {epoch}: {last}")

    def reprotect(self, timeout_s: float = 60) -> None:
        """After failover and heal: the old primaries become secondaries of the new ones,
        resyncing the regions either side wrote alone."""
        for pid, (pa, pb) in self.pairs.items():
            with self.stack.agents["a"].client() as ca:
                dirty = ca.get_replication_dirty(pa)
            self._set("a", pa, self._secondary(pid, "a"))
            self._set("b", pb, self._primary(pid, "b", True, add_dirty=dirty.ranges))
        self.wait_active("b", timeout_s)

    # -- the verdict --------------------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.dir.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                    out.append(json.loads(line))
        return out

    def topology(self) -> checker.Topology:
        az_a, az_b = self.stack.agents["a"].az, self.stack.agents["b"].az
        az_of = {d: az for pa, pb in self.pairs.values() for d, az in ((pa, az_a), (pb, az_b))}
        return checker.Topology(pairs=self.pairs, az_of=az_of, groups={self.group: tuple(self.pairs)})

    def finish(self) -> checker.Verdict:
        """Stop every probe, read the final primaries back and check the history."""
        self.stop_probes()
        self.events = self.history()
        found = {pid: self._read_back(pid) for pid in self.pairs}
        final_az = {pid: self.stack.agents[self.primary].az for pid in self.pairs}
        return checker.check(self.events, self.topology(), found, final_az)

    def _read_back(self, pid: str) -> dict[int, str]:
        disk = self.disk(pid, self.primary)
        offsets = checker.blocks_to_read(self.events, pid)

        async def read() -> dict[int, str]:
            client = await NbdClient.connect(self.stack.net.host(self.primary), NBD_PORT, self.exports[disk])
            try:
                out = {}
                for slot in sorted({o - o % SLOT for o in offsets}):
                    data = await client.read(slot, SLOT)
                    for i in range(SLOT // BLOCK):
                        out[slot + i * BLOCK] = checksum(data[i * BLOCK : (i + 1) * BLOCK])
                return out
            finally:
                await client.close()

        return asyncio.run(read())

    def cleanup(self) -> None:
        """Drop the trial's disks from both agents (best effort: the next trial starts clean)."""
        for side in ("a", "b"):
            with self.stack.agents[side].client(5) as client:
                for pid in self.pairs:
                    disk = self.disk(pid, side)
                    with contextlib.suppress(Exception):
                        client.revoke_export(self.exports.get(disk, f"att-{disk}"))
                    with contextlib.suppress(Exception):
                        client.delete_replication(disk)
                    with contextlib.suppress(Exception):
                        client.delete_volume(disk)
