"""Fault harness: the controller, one standalone agent per replicated AZ, and faults.

`FaultStack` runs `openevs serve` (API + reconciler; its embedded agent of
the third AZ is unused) with `OPENEVS_AGENT_URLS` naming two standalone
agents, each in its own network namespace (netlab.py) so the link between
the AZs can be cut for real. The deployment is the secure multi-host one of
README.md: a CA in `<root>/pki`, every agent's control API on mutual TLS
with its own certificate, the controller calling them with its own.
Without namespaces (not root, `ip netns add` refused) it says so and falls
back to loopback, where a link cut is SIGSTOP of the DR agent (its peer and the controller then see silence).

Agents can be SIGKILLed and restarted on the same pool, address and ports;
the controller too. `close()` stops every process and removes the
namespaces; fixtures call it from a finalizer.

Figures a scenario wants in the long-run summary go through `record()`:
one JSON line per figure into `$OPENEVS_FAULT_REPORT` (scripts/fault-run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from openevs.agent.client import HttpAgentClient
from openevs.contract import ReplicationState
from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from tests.conftest import free_port
from tests.e2e.conftest import ServeProcess, Session
from tests.faults.netlab import NetLab, NetnsUnavailable
from tests.support.api import get_json, make_disk, wait_group, wait_json
from tests.support.waiting import wait_for

MIB = 1 << 20
AZ_A, AZ_B = "az1.dc1", "az3.dc3"
PAIRS = "/v2/{p}/os-vendor-replications"
GROUPS = "/v2/{p}/os-vendor-replication-consistency-groups"
CONTROL_PORT, NBD_PORT = 8780, 10809  # inside a namespace every port is ours


def trials(ci_default: int) -> int:
    """How many times a scenario repeats: OPENEVS_FAULT_TRIALS, else the CI default."""
    return max(1, int(os.environ.get("OPENEVS_FAULT_TRIALS", ci_default)))


def record(scenario: str, **figures: Any) -> None:
    path = os.environ.get("OPENEVS_FAULT_REPORT")
    line = json.dumps({"scenario": scenario, **figures})
    print(f"\n[fault-figures] {line}")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


class FaultAgent:
    """`openevs agent` of one AZ, maybe inside a namespace; killable and restartable."""

    def __init__(
        self, root: Path, az: str, host: str, exec_prefix: list[str], pki_dir: Path, nbd_tls: str = "optional"
    ) -> None:
        self.root, self.az, self.host, self.exec_prefix = root, az, host, exec_prefix
        self.nbd_tls = nbd_tls
        self.tls = pki.issue(pki_dir, Identity(CertRole.AGENT, az), ip_addresses=[host], force=True).files
        self.controller_tls = pki.files_for(pki_dir, "controller")
        self.pool = root / f"pool-{az}"
        in_ns = bool(exec_prefix)
        self.control_port = CONTROL_PORT if in_ns else free_port()
        self.nbd_port = NBD_PORT if in_ns else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.control_port}"

    def tls_args(self) -> list[str]:
        """Its certificate (control API, link and witness on mutual TLS). Users' NBD stays
        optional TLS unless the stack says otherwise, so the clear-text workloads run
        (NBD TLS: tests/integration/nbd/test_tls.py, and the hostile test, which requires it)."""
        return [
            "--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key), "--tls-ca", str(self.tls.ca),
            "--nbd-tls", self.nbd_tls,
        ]  # fmt: skip

    def client(self, timeout_s: float = 5, tls: TlsFiles | None = None) -> HttpAgentClient:
        return HttpAgentClient(self.az, self.url, timeout_s=timeout_s, tls=tls or self.controller_tls)

    def start(self) -> None:
        self.runs += 1
        log = (self.root / f"agent-{self.az}-{self.runs}.log").open("wb")
        cmd = [
            *self.exec_prefix, sys.executable, "-m", "openevs.cli.main", "agent", "--az", self.az,
            "--pool", str(self.pool), "--listen", f"{self.host}:{self.control_port}",
            "--nbd", f"{self.host}:{self.nbd_port}",
            *self.tls_args(),
        ]  # fmt: skip
        # `ip netns exec` execs the command: the pid is the agent's own.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        with self.client(2) as client:

            def healthy() -> bool:
                assert self.proc is not None and self.proc.poll() is None, f"agent {self.az} exited"
                client.health()
                return True

            wait_for(f"agent {self.az} to start", healthy, 30)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class FaultStack:
    """The controller plus agents of AZ_A (production) and AZ_B (DR)."""

    def __init__(self, root: Path, use_netns: bool = True, nbd_tls: str = "optional") -> None:
        self.root = root
        self.net: NetLab | None = None
        self.fallback_reason = ""
        if use_netns and os.environ.get("OPENEVS_FAULT_NETNS", "1") != "0":
            try:
                self.net = NetLab().create()
            except (NetnsUnavailable, OSError, subprocess.SubprocessError) as exc:
                self.fallback_reason = f"network namespaces unavailable ({exc}); falling back to loopback"
        else:
            self.fallback_reason = "network namespaces disabled; falling back to loopback"
        if self.fallback_reason:
            print(f"\n[fault-harness] {self.fallback_reason}: a link cut is SIGSTOP of the DR agent")
        self.pki_dir = root / "pki"
        pki.init_ca(self.pki_dir)
        pki.issue(self.pki_dir, Identity(CertRole.CONTROLLER))
        if self.net is not None:
            self.agents = {
                AZ_A: FaultAgent(
                    root, AZ_A, self.net.host_a, self.net.exec_prefix("a"), self.pki_dir, nbd_tls
                ),
                AZ_B: FaultAgent(
                    root, AZ_B, self.net.host_b, self.net.exec_prefix("b"), self.pki_dir, nbd_tls
                ),
            }
        else:
            self.agents = {
                az: FaultAgent(root, az, "127.0.0.1", [], self.pki_dir, nbd_tls) for az in (AZ_A, AZ_B)
            }
        controller = pki.files_for(self.pki_dir, "controller")
        self.serve = ServeProcess(
            root / "serve",
            extra_env={
                "OPENEVS_AGENT_URLS": ",".join(f"{az}={a.url}" for az, a in self.agents.items()),
                "OPENEVS_AGENT_TIMEOUT_S": "60",
                "OPENEVS_CONTROL_TLS_CERT": str(controller.cert),
                "OPENEVS_CONTROL_TLS_KEY": str(controller.key),
                "OPENEVS_CONTROL_TLS_CA": str(controller.ca),
            },
        )
        self._session: Session | None = None
        self._cut = False

    @property
    def mode(self) -> str:
        return "netns" if self.net is not None else "loopback"

    def start(self) -> FaultStack:
        for agent in self.agents.values():
            agent.start()
        self.serve.start()
        return self

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self.serve.login()
        return self._session

    def restart_controller(self, kill: bool = True) -> None:
        self.serve.restart(kill=kill)

    def cut_link(self) -> None:
        if self.net is not None:
            self.net.cut()
        else:
            self.agents[AZ_B].pause()
        self._cut = True

    def restore_link(self) -> None:
        if self.net is not None:
            self.net.restore()
        else:
            self.agents[AZ_B].resume()
        self._cut = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._cut:
                self.restore_link()
        if self._session is not None:
            self._session.client.close()
        self.serve.close()
        for agent in self.agents.values():
            agent.stop()
        if self.net is not None:
            self.net.close()


# -- API helpers ---------------------------------------------------------------------


def grant(s: Session, volume_id: str, az: str) -> tuple[str, int, str, bool]:
    """Attach the disk to a stopped server of its AZ; the NBD (host, port, export, read_only)."""
    r = s.post("/v2.1/{p}/servers", {"server": {"name": f"h-{volume_id[:8]}", "availability_zone": az}})
    assert r.status_code == 202, r.text
    sid = r.json()["server"]["id"]
    assert s.post(f"/v2.1/{{p}}/servers/{sid}/action", {"os-stop": None}).status_code == 202
    body = {"volumeAttachment": {"volumeId": volume_id}}
    r = s.post(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments", body)
    assert r.status_code == 200, r.text
    return regrant(s, volume_id)


def regrant(s: Session, volume_id: str) -> tuple[str, int, str, bool]:
    r = s.post(f"/v2/{{p}}/volumes/{volume_id}/action", {"os-initialize_connection": {"connector": {}}})
    assert r.status_code == 200, r.text
    d = r.json()["connection_info"]["data"]
    return d["host"], int(d["port"]), d["export_name"], bool(d["read_only"])


def create_pair(s: Session, prod: str, dr: str, station: str = AZ_A) -> str:
    body = {"replication": {"volume_ids": [prod, dr], "priority_station": station,
                            "replication_model": "hypermetro"}}  # fmt: skip
    r = s.post(PAIRS, body)
    assert r.status_code == 202, r.text
    return str(r.json()["replication"]["id"])


def create_group(s: Session, pair_ids: list[str], station: str = AZ_A) -> str:
    body = {"replication_consistency_group": {"name": "faults", "replication_ids": pair_ids,
                                              "priority_station": station,
                                              "replication_model": "hypermetro"}}  # fmt: skip
    r = s.post(GROUPS, body)
    assert r.status_code == 202, r.text
    return str(r.json()["replication_consistency_group"]["id"])


def group(s: Session, gid: str) -> dict[str, Any]:
    return get_json(s, f"{GROUPS}/{gid}", "replication_consistency_group")


def pair(s: Session, pid: str) -> dict[str, Any]:
    return get_json(s, f"{PAIRS}/{pid}", "replication")


def wait_pair(s: Session, pid: str, pred: Any, timeout_s: float = 90) -> dict[str, Any]:
    return wait_json(s, f"{PAIRS}/{pid}", "replication", pred, timeout_s)


def group_action(s: Session, gid: str, name: str, expect: int | None = 200) -> int:
    r = s.post(f"{GROUPS}/{gid}/action", {name: None})
    assert r.status_code < 500, f"{name}: {r.status_code} {r.text}"
    if expect is not None:
        assert r.status_code == expect, f"{name}: {r.status_code} {r.text}"
    return r.status_code


class Couple:
    """One replicated disk couple: production in AZ_A, DR in AZ_B, and their pair."""

    def __init__(self, s: Session, prod: str, dr: str, pair_id: str) -> None:
        self.prod, self.dr, self.pair_id = prod, dr, pair_id
        self.prod_addr = grant(s, prod, AZ_A)
        self.dr_addr = grant(s, dr, AZ_B)


def make_group(s: Session, n_pairs: int = 2) -> tuple[str, list[Couple]]:
    """n disk couples, paired and active, in one available, active group."""
    disks = [(make_disk(s, AZ_A), make_disk(s, AZ_B)) for _ in range(n_pairs)]
    pair_ids = [create_pair(s, p, d) for p, d in disks]
    for pid in pair_ids:
        wait_pair(s, pid, lambda p: p["status"] == "available" and p["replication_status"] == "active")
    gid = create_group(s, pair_ids)
    wait_group(s, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
    return gid, [Couple(s, p, d, pid) for (p, d), pid in zip(disks, pair_ids, strict=True)]


def agent_roles(stack: FaultStack, volume_ids: list[str]) -> dict[str, ReplicationState]:
    """volume_id -> the agent's replication state, from whichever agent holds it and answers."""
    out: dict[str, ReplicationState] = {}
    for agent in stack.agents.values():
        if not agent.alive:
            continue
        with agent.client() as client:
            for vid in volume_ids:
                with contextlib.suppress(Exception):
                    out[vid] = client.get_replication(vid)
    return out


def writable_primaries(states: dict[str, ReplicationState], couple: Couple) -> list[str]:
    """The disks of a couple that would accept a user write: primary and not fenced."""
    return [
        vid for vid in (couple.prod, couple.dr)
        if vid in states and states[vid].role == "primary" and not states[vid].fenced
    ]  # fmt: skip


def monotonic_ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
