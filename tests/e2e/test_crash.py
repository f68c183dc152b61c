"""`openevs serve` killed with SIGKILL in the middle of disk work, then started
again on the same data dir, converges: every disk reaches a terminal status,
each AZ's pool holds exactly the files of the disks that exist, and no agent
of the killed serve survives it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AZS, ServeProcess, Session, cmdline, pid_alive
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

TRANSITIONAL = {"creating", "deleting", "extending"}
TERMINAL = {"available", "in-use", "error", "error_deleting", "error_extending"}
CONVERGE_TIMEOUT_S = 45.0
POOL_BOOKKEEPING = {"exports.json"}  # the agent's export grants, not a disk


@dataclass
class Burst:
    """Requests fired from a thread pool; `accepted` holds what answered 202."""

    session: Session
    accepted: list[Any] = field(default_factory=list)
    unknown: list[Any] = field(default_factory=list)  # no answer: applied or not
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)

    def _client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(timeout=10)
        return self.local.client  # type: ignore[no-any-return]

    def _send(self, method: str, path: str, body: Any, tag: Any) -> None:
        try:
            r = self._client().request(method, self.session.url(path), json=body,
                                       headers={"X-Auth-Token": self.session.token})
        except httpx.HTTPError:  # serve was killed under this request
            with self.lock:
                self.unknown.append(tag)
            return
        with self.lock:
            if r.status_code == 202:
                self.accepted.append(r.json()["volume"]["id"] if tag is None else tag)
            else:
                self.failed.append(f"{r.status_code} {r.text[:200]}")

    def fire(self, requests: Iterable[tuple[str, str, Any, Any]], kill_after: int,
             kill: Callable[[], None]) -> dict[str, int]:
        """Send every request (8 at a time); once `kill_after` were accepted, look at
        the API's view and call kill while the rest are still in flight."""
        seen: dict[str, int] = {}
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(self._send, *req) for req in requests]
            wait_for(f"{kill_after} requests accepted",
                     lambda: len(self.accepted) >= kill_after or all(f.done() for f in futures),
                     timeout_s=30, interval_s=0.005)
            try:
                for v in self.session.volumes():
                    seen[v["status"]] = seen.get(v["status"], 0) + 1
            except (httpx.HTTPError, AssertionError):
                pass
            kill()
        return seen


def create_requests(n: int, size_gb: int = 1) -> list[tuple[str, str, Any, Any]]:
    return [
        ("POST", "/v2/{p}/volumes",
         {"volume": {"size": size_gb, "availability_zone": AZS[i % len(AZS)], "name": f"c{i}"}},
         None)
        for i in range(n)
    ]


def agent_processes(pool_dir: Path) -> list[int]:
    """Every live `openevs.agent` process serving pool_dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            args = cmdline(pid)
            if "openevs.agent" in args and str(pool_dir.resolve()) in args and pid_alive(pid):
                pids.append(pid)
    return pids


def kill_and_check_agents_die(serve: ServeProcess) -> None:
    agents = serve.agent_pids()
    assert agents.keys() == set(AZS), agents
    serve.kill()
    for az, pid in agents.items():
        wait_for(f"agent of {az} (pid {pid}) to die with serve", lambda p=pid: not pid_alive(p), 10)
        assert agent_processes(serve.pool_dir(az)) == [], f"an agent of {az} outlived serve"
    # No clean stop: the pid files still name the dead agents.
    assert serve.agent_pids() == agents


def converge(serve: ServeProcess, session: Session) -> list[dict[str, Any]]:
    """Wait until no disk is in a transitional status; return the disks."""
    def settled() -> list[dict[str, Any]] | None:
        volumes = session.volumes()
        return volumes if not any(v["status"] in TRANSITIONAL for v in volumes) else None

    try:
        volumes = wait_for("every disk to reach a terminal status", settled, CONVERGE_TIMEOUT_S, 0.1)
    except AssertionError as exc:
        stuck = {v["id"]: v["status"] for v in session.volumes() if v["status"] in TRANSITIONAL}
        raise AssertionError(f"{exc}; stuck: {stuck}\n{serve.logs()}") from None
    assert {v["status"] for v in volumes} <= TERMINAL, volumes
    return volumes


def check_pools_match(serve: ServeProcess, volumes: list[dict[str, Any]]) -> None:
    for az in AZS:
        want = {f"{v['id']}.img" for v in volumes if v["availability_zone"] == az}
        have = serve.pool_files()[az] - POOL_BOOKKEEPING
        assert have == want, (
            f"pool of {az}: leftovers {sorted(have - want)}, missing {sorted(want - have)}"
        )


def check_one_agent_per_pool(serve: ServeProcess) -> None:
    pids = serve.agent_pids()
    for az in AZS:
        assert agent_processes(serve.pool_dir(az)) == [pids[az]], f"agents of {az}"


def restart_after_kill(serve: ServeProcess) -> Session:
    dead = set(serve.agent_pids().values())
    serve.start()
    check_one_agent_per_pool(serve)
    assert not set(serve.agent_pids().values()) & dead
    return serve.login()


def plant_crash_leftovers(serve: ServeProcess) -> None:
    """What a kill at an instant too short to hit by timing leaves behind: a
    half-made file (killed before its rename) and a file whose row is gone."""
    pool = serve.pool_dir("az2.dc2")
    (pool / f".tmp-{uuid.uuid4()}").write_bytes(b"half written")
    with (pool / f"{uuid.uuid4()}.img").open("wb") as fh:
        fh.truncate(1 << 30)


def test_kill_during_creation(serve_factory: Callable[..., ServeProcess]) -> None:
    serve = serve_factory().start()
    session = serve.login()
    accepted: list[str] = []
    seen_in_flight = 0
    # Kill early (most creates still in flight), and right after the last
    # create was accepted (the reconciler is still making files).
    for kill_after in (2, 24):
        burst = Burst(session)
        seen = burst.fire(create_requests(24), kill_after, lambda: kill_and_check_agents_die(serve))
        seen_in_flight += seen.get("creating", 0)
        accepted += burst.accepted
        session.client.close()
        if kill_after > 2:
            plant_crash_leftovers(serve)

        session = restart_after_kill(serve)
        volumes = converge(serve, session)
        by_id = {v["id"]: v for v in volumes}
        for vid in accepted:
            assert vid in by_id, f"accepted volume {vid} is lost"
            assert by_id[vid]["status"] in ("available", "error"), by_id[vid]
        assert all(v["status"] == "available" for v in volumes), "a killed create ended in error"
        check_pools_match(serve, volumes)
    assert seen_in_flight > 0, "serve was never killed while a disk was being created"
    session.client.close()


def test_kill_during_deletion_and_extension(serve_factory: Callable[..., ServeProcess]) -> None:
    serve = serve_factory().start()
    session = serve.login()
    with ThreadPoolExecutor(8) as pool:
        ids = [
            r.json()["volume"]["id"]
            for r in pool.map(lambda req: session.post(req[1], req[2]), create_requests(36))
        ]
    converge(serve, session)

    deleted: list[str] = []
    extended: list[str] = []
    unknown: list[str] = []
    seen_in_flight = 0
    for round_, kill_after in enumerate((2, 17)):
        batch = ids[round_ * 18:(round_ + 1) * 18]
        to_delete, to_extend = batch[:12], batch[12:]
        requests = [("DELETE", f"/v2/{{p}}/volumes/{vid}", None, ("delete", vid))
                    for vid in to_delete]
        requests += [("POST", f"/v2/{{p}}/volumes/{vid}/action", {"os-extend": {"new_size": 2}},
                      ("extend", vid)) for vid in to_extend]
        burst = Burst(session)
        seen = burst.fire(requests, kill_after, lambda: kill_and_check_agents_die(serve))
        seen_in_flight += seen.get("deleting", 0) + seen.get("extending", 0)
        deleted += [vid for kind, vid in burst.accepted if kind == "delete"]
        extended += [vid for kind, vid in burst.accepted if kind == "extend"]
        unknown += [vid for _, vid in burst.unknown]
        session.client.close()

        session = restart_after_kill(serve)
        volumes = converge(serve, session)
        by_id = {v["id"]: v for v in volumes}
        for vid in deleted:
            assert vid not in by_id, f"accepted delete of {vid} left {by_id.get(vid)}"
        for vid in extended:
            assert (by_id[vid]["status"], by_id[vid]["size"]) == ("available", 2), by_id[vid]
        for vid in set(ids) - set(deleted) - set(unknown):
            assert vid in by_id, f"volume {vid} vanished without a delete"
            assert by_id[vid]["status"] == "available", by_id[vid]
            assert by_id[vid]["size"] == (2 if vid in extended else 1), by_id[vid]
        check_pools_match(serve, volumes)
        for v in volumes:  # each file has the size the API shows
            path = serve.pool_dir(v["availability_zone"]) / f"{v['id']}.img"
            assert path.stat().st_size == v["size"] << 30, v
    assert deleted and extended
    assert seen_in_flight > 0, "serve was never killed while a disk was being deleted or grown"
    session.client.close()
