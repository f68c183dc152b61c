"""A split deployment on one host, the way one that outgrew `openevs serve` runs
(README "Growing past one controller"): `openevs api` and `openevs worker`
processes on one PostgreSQL database, and a standalone agent per AZ whose
control API is mutual TLS with certificates of the deployment's own CA.

`ScaleOutStack` starts and stops it; `lifecycle` drives N pairs through
create -> active -> group failover -> reprotect -> delete, spreading the
requests over every API; `transitions` reads what the workers did from the
one log line the reconciler writes per transition it won (driver.py,
flips.py), so a test can check that each was done exactly once.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from tests.e2e.agents import StandaloneAgent
from tests.e2e.conftest import ServeProcess, Session
from tests.support.api import GROUPS, get_json, wait_group
from tests.support.waiting import wait_for

AZ_A, AZ_B = "az1.dc1", "az2.dc2"  # two AZs: no witness, static priority
PAIRS = "/v2/{p}/os-vendor-replications"
VOLUMES = "/v2/{p}/volumes"
# What a worker writes once it won a transition: "<entity> <id>: <from> -> <to>" (driver.py
# Kind.advance, flips.py for a group's flip) or "<entity> <id> deleted" (the delete steps).
TRANSITION = re.compile(
    r"^(\S+ \S+) INFO openevs\.reconciler\.\w+: .+? ([0-9a-f-]{36})(: \S+ -> \S+| deleted)"
)


class ScaleOutStack:
    """`apis` x `openevs api` and `workers` x `openevs worker` on `database_url`, two agents."""

    def __init__(self, root: Path, database_url: str, apis: int = 2, workers: int = 2) -> None:
        self.root = root
        self.pki_dir = root / "pki"
        pki.init_ca(self.pki_dir)
        pki.issue(self.pki_dir, Identity(CertRole.CONTROLLER))
        for az in (AZ_A, AZ_B):
            pki.issue(self.pki_dir, Identity(CertRole.AGENT, az), ip_addresses=["127.0.0.1"])
        controller = pki.files_for(self.pki_dir, "controller")
        self.agents = [
            StandaloneAgent(root, az, ("--pki", str(self.pki_dir)), controller) for az in (AZ_A, AZ_B)
        ]
        env = {
            "OPENEVS_AZS": f"{AZ_A},{AZ_B}",
            "OPENEVS_AGENT_URLS": ",".join(f"{a.az}={a.url}" for a in self.agents),
            "OPENEVS_CONTROL_TLS_CERT": str(controller.cert),
            "OPENEVS_CONTROL_TLS_KEY": str(controller.key),
            "OPENEVS_CONTROL_TLS_CA": str(controller.ca),
            "OPENEVS_AGENT_TIMEOUT_S": "120",
            # one sealing key for every controller process (the first one makes it)
            "OPENEVS_SECRETS_KEY_FILE": str(self.pki_dir / "secrets.key"),
        }

        def process(command: str, i: int) -> ServeProcess:
            return ServeProcess(root / f"{command}-{i}", database_url=database_url, extra_env=env,
                                command=command)  # fmt: skip

        self.workers = [process("worker", i) for i in range(workers)]
        self.apis = [process("api", i) for i in range(apis)]
        self.sessions: list[Session] = []

    def start(self) -> ScaleOutStack:
        for agent in self.agents:
            agent.start()
        # The first process migrates the database and bootstraps the admin; then the
        # others start together (an API is ready once a worker shows every AZ available).
        first, *rest = self.workers
        first.start(wait=False)
        wait_worker(first)
        for sp in (*rest, *self.apis):
            sp.start(wait=False)
        for worker in rest:
            wait_worker(worker)
        for api in self.apis:
            api.wait_ready()
        self.sessions = [api.login() for api in self.apis]
        return self

    def session(self, i: int) -> Session:
        """The i-th request's API, round robin: any API serves what another started."""
        return self.sessions[i % len(self.sessions)]

    def worker_logs(self) -> list[str]:
        return [
            path.read_text(errors="replace")
            for w in self.workers for run in range(1, w.runs + 1) for path in w.log_paths(run)
            if path.exists()
        ]  # fmt: skip

    def transitions(self) -> dict[str, list[str]]:
        """Resource id -> the transitions every worker together logged winning, in time order
        ("creating -> available", ..., "deleted")."""
        found = sorted(
            (m[1], m[2], m[3].removeprefix(": ").strip())
            for text in self.worker_logs() for line in text.splitlines()
            if (m := TRANSITION.match(line))
        )  # fmt: skip
        by_id: dict[str, list[str]] = defaultdict(list)
        for _, ident, what in found:
            by_id[ident].append(what)
        return dict(by_id)

    def raced(self) -> int:
        """Steps a worker ran but another had already moved the row (it left it to them)."""
        return sum(text.count(" meanwhile") for text in self.worker_logs())

    def close(self) -> None:
        for s in self.sessions:
            s.client.close()
        for sp in (*self.apis, *self.workers):
            sp.close()
        for agent in self.agents:
            agent.stop()


def wait_worker(worker: ServeProcess) -> None:
    """Until a started `openevs worker` printed its metrics URL (after migrating)."""
    out, _ = worker.log_paths()

    def up() -> bool:
        worker._check_alive()
        return out.exists() and "metrics: worker" in out.read_text(errors="replace")

    try:
        wait_for("the worker to start", up, 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.logs()}") from None


def _accepted(r: Any, code: int, what: str) -> dict[str, Any]:
    assert r.status_code == code, f"{what}: {r.status_code} {r.text}"
    return dict(r.json()) if r.content else {}


Pred = Callable[[dict[str, Any]], bool] | None  # None: until the resource is gone (404)


def _wait_all(stack: ScaleOutStack, paths: list[str], key: str, pred: Pred, what: str,
              timeout_s: float = 300) -> None:  # fmt: skip
    """Until `pred` holds for every resource at `paths` (GETs spread over the APIs)."""
    left = list(paths)

    def done() -> bool:
        for i, path in enumerate(list(left)):
            r = stack.session(i).get(path)
            if pred is None and r.status_code == 404 or pred and r.status_code == 200 and pred(r.json()[key]):
                left.remove(path)
        return not left

    try:
        wait_for(what, done, timeout_s, interval_s=0.2)
    except AssertionError as exc:
        states = {p: stack.session(0).get(p).text[:300] for p in left[:5]}
        raise AssertionError(f"{exc}; {len(left)} left, e.g. {states}") from None


def _active(p: dict[str, Any]) -> bool:
    return bool(p["status"] == "available" and p["replication_status"] == "active")


def _group_action(s: Session, gid: str, name: str) -> None:
    _accepted(s.post(f"{GROUPS}/{gid}/action", {name: None}), 200, name)


def lifecycle(stack: ScaleOutStack, pairs: int, group_size: int = 2,
              midway: Callable[[], None] | None = None) -> dict[str, list[str]]:  # fmt: skip
    """Every pair through create -> active -> group failover -> reprotect -> delete;
    `midway` runs once every group's failover is accepted. The ids of what it made."""
    vols = []
    for _ in range(pairs):
        for az in (AZ_A, AZ_B):
            body = {"volume": {"size": 1, "availability_zone": az}}
            r = stack.session(len(vols)).post(VOLUMES, body)
            vols.append(_accepted(r, 202, "create volume")["volume"]["id"])
    vol_paths = [f"{VOLUMES}/{v}" for v in vols]
    _wait_all(stack, vol_paths, "volume", lambda v: v["status"] == "available", "every disk available")
    pair_ids = []
    for i in range(pairs):
        body = {"replication": {"volume_ids": vols[2 * i : 2 * i + 2], "priority_station": AZ_A,
                                "replication_model": "hypermetro"}}  # fmt: skip
        r = stack.session(i).post(PAIRS, body)
        pair_ids.append(_accepted(r, 202, "create pair")["replication"]["id"])
    pair_paths = [f"{PAIRS}/{p}" for p in pair_ids]
    _wait_all(stack, pair_paths, "replication", _active, "every pair active")
    gids = []
    for i in range(0, pairs, group_size):
        key = "replication_consistency_group"
        body = {key: {"name": f"g{i}", "replication_ids": pair_ids[i : i + group_size],
                      "priority_station": AZ_A, "replication_model": "hypermetro"}}  # fmt: skip
        gids.append(_accepted(stack.session(i).post(GROUPS, body), 202, "create group")[key]["id"])
    group_paths = [f"{GROUPS}/{g}" for g in gids]
    _wait_all(stack, group_paths, key, _active, "every group active")
    for i, gid in enumerate(gids):
        _group_action(stack.session(i), gid, "os-failover-replication-consistency-group")
    if midway is not None:
        midway()
    _wait_all(stack, group_paths, key, lambda g: g["status"] == "failovered", "every group failed over")
    for i, gid in enumerate(gids):
        _group_action(stack.session(i + 1), gid, "os-reprotect-replication-consistency-group")
    _wait_all(stack, group_paths, key, _active, "every group reprotected")
    for i, gid in enumerate(gids):
        s = stack.session(i)
        _group_action(s, gid, "os-stop-replication-consistency-group")
        wait_group(s, gid, lambda g: g["replication_status"] in ("active-stopped", "inactive"), 120)
        members = get_json(s, f"{GROUPS}/{gid}", key)["replication_ids"]
        body = {key: {"remove_replication_ids": members}}
        _accepted(s.request("PUT", f"{GROUPS}/{gid}", json=body), 202, "remove members")
    _wait_all(stack, group_paths, key, lambda g: g["status"] == "available" and g["replication_ids"] == [],
              "every group emptied")  # fmt: skip
    for i, gid in enumerate(gids):
        _accepted(stack.session(i).delete(f"{GROUPS}/{gid}"), 202, "delete group")
    for i, pid in enumerate(pair_ids):
        _accepted(stack.session(i).delete(f"{PAIRS}/{pid}"), 202, "delete pair")
    _wait_all(stack, group_paths + pair_paths, "", None, "every group and pair deleted")
    for i, vid in enumerate(vols):
        _accepted(stack.session(i).delete(f"{VOLUMES}/{vid}"), 202, "delete volume")
    _wait_all(stack, vol_paths, "", None, "every disk deleted")
    return {"volumes": vols, "pairs": pair_ids, "groups": gids}


def kill_one_worker(stack: ScaleOutStack) -> None:
    """SIGKILL the last worker (the others carry on alone)."""
    stack.workers[-1].kill()


def elapsed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start
