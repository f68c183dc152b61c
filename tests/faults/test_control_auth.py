"""No credential, no access: standalone agents and a witness in their own network
namespaces, on mutual TLS, attacked from an outsider namespace that reaches them.

The intruder (intruder.py, run in the outsider namespace) tries every route of
the agents' control API (enumerated from the app, with the ids of real volumes,
exports and groups filled in), over TLS and in plain HTTP, and the witness
port: first with no certificate, a peer agent's, an agent of another AZ's, and
a controller certificate of another CA; then, after a CA rotation that ends
with the old CA dropped, with the controller's and an agent's certificates
stolen before it. The agents' NBD ports require TLS: with no certificate, the
other CA's and the stolen ones, the intruder also tries them (intruder_nbd.py)
in clear text with a user's valid export name it stole (NBD_REP_ERR_TLS_REQD),
over TLS with that user's export name after the user's connection was
terminated (revoked), a guessed one and the pair's link export, and the link
upgrade with the link export. Every attempt is refused; the agents' volumes,
replication roles and epochs, export grants and the witness's records are the
same before and after; the controller kept working through the rotation
without a restart; and the agents still serve their users (NBD over TLS,
write and read back), the intruder's namespace included.

Then the logs of the whole run (controller, agents, witness) are searched for
every secret it made: the admin password, the session's token, the NBD
export names of both disks, the link export of the pair, and every private key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openevs.agent.control import create_control_app
from openevs.agent.nbd.client import NbdClient
from openevs.agent.node import StorageNode
from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from openevs.security.sealing import Sealer
from openevs.security.tls import public_client_context
from openevs.witness.client import WitnessClient, units
from tests.conftest import free_port
from tests.e2e.conftest import ADMIN_PASSWORD
from tests.faults.harness import AZ_A, AZ_B, FaultStack, make_group, record, wait_pair
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

WITNESS_PORT = 8790
REPO = Path(__file__).resolve().parents[2]


def control_routes(tmp: Path, volume_id: str, group_id: str, export: str) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every route of the control API, with real ids in it."""
    app = create_control_app(StorageNode("az-routes", tmp / "routes-pool"))
    bodies = {
        "PUT": {"size_bytes": 1 << 20, "volume_id": volume_id, "read_only": False},
        "POST": {"size_bytes": 1},
    }
    routes = []
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        path = getattr(route, "path", "")
        filled = path.format(volume_id=volume_id, group_id=group_id, name=export, snapshot_id="snap-1")
        for method in sorted(methods - {"HEAD"}):
            body = bodies.get(method)
            if filled == "/replication/batch":  # a valid batch: what an intruder would send
                demoted = {"role": "secondary", "epoch": 99, "link_export": "intruder-link"}
                body = {"items": [{"volume_id": volume_id, "request": demoted}]}
            routes.append((method, filled, body))
    assert len(routes) >= 18, routes
    return routes


class Witness:
    """`openevs witness` with its certificate, in the DR agent's namespace."""

    def __init__(self, stack: FaultStack) -> None:
        agent = stack.agents[AZ_B]
        self.host = agent.host
        self.port = WITNESS_PORT if agent.exec_prefix else free_port()
        issued = pki.issue(stack.pki_dir, Identity(CertRole.WITNESS), ip_addresses=[self.host], force=True)
        self.tls = issued.files
        cmd = [*agent.exec_prefix, sys.executable, "-m", "openevs.witness",
               "--listen", f"{self.host}:{self.port}",
               "--state", str(stack.root / "witness"), "--lease-s", "60", "--tls-cert", str(self.tls.cert),
               "--tls-key", str(self.tls.key), "--tls-ca", str(self.tls.ca)]  # fmt: skip
        self.log = stack.root / "witness.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.controller = pki.files_for(stack.pki_dir, "controller")
        wait_for("the witness", lambda: self.client().ping() or True, 30)

    def client(self, side: str = "controller", tls: TlsFiles | None = None) -> WitnessClient:
        return WitnessClient(self.host, self.port, side, timeout_s=3, tls=tls or self.controller)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def snapshot(stack: FaultStack, witness: Witness, keys: list[str]) -> dict[str, Any]:
    """Everything an intruder could have changed, as the controller sees it."""
    state: dict[str, Any] = {}
    for az, agent in stack.agents.items():
        with agent.client() as client:
            state[az] = {
                "volumes": sorted((v.volume_id, v.size_bytes) for v in client.list_volumes()),
                "replication": sorted(
                    (s.volume_id, s.role, s.epoch, s.mirroring, s.fenced)
                    for s in client.list_replication().values()
                ),
                "exports": sorted((e.name, e.volume_id, e.read_only) for e in client.list_exports()),
            }
    status = witness.client().status(keys)
    state["witness"] = sorted((r.key, r.epoch, r.holder) for r in status.records)
    return state


def attack(stack: FaultStack, routes: list[tuple[str, str, Any]], witness: Witness, tls: TlsFiles | None,
           side: str, nbd: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    spec = {
        "cert": str(tls.cert) if tls else None,
        "key": str(tls.key) if tls else None,
        "agents": [{"url": a.url, "routes": routes} for a in stack.agents.values()],
        "witness": [witness.host, witness.port],
        "witness_side": side,
        "nbd": nbd or [],
    }
    spec_path = stack.root / f"intruder-{len(list(stack.root.glob('intruder-*')))}.json"
    spec_path.write_text(json.dumps(spec))
    prefix = stack.net.exec_prefix("x") if stack.net is not None else []
    done = subprocess.run([*prefix, sys.executable, "-m", "tests.faults.intruder", str(spec_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def assert_all_refused(result: dict[str, Any], who: str) -> int:
    answered = [r for r in result["routes"] if r["outcome"] != "refused"]
    assert not answered, f"{who}: answered {answered[:5]}"
    witness_answers = [w for w in result["witness"] if w["outcome"] != "refused"]
    assert not witness_answers, f"{who}: the witness answered {witness_answers}"
    nbd_answers = [n for n in result["nbd"] if n["outcome"] != "refused"]
    assert not nbd_answers, f"{who}: NBD answered {nbd_answers}"
    return len(result["routes"]) + len(result["witness"]) + len(result["nbd"])


def sealer_of(stack: FaultStack) -> Sealer:
    return Sealer.from_file(stack.serve.data_dir / "pki" / "secrets.key")


def nbd_targets(stack: FaultStack, valid: str, revoked: str, link: str) -> list[dict[str, Any]]:
    """What the intruder tries on each agent's NBD port (intruder_nbd.py)."""
    guessed = "att-" + "A" * 32
    return [
        {"host": a.host, "port": a.nbd_port, "plain_only": [valid],
         "exports": [revoked, guessed, link], "links": [link]}
        for a in stack.agents.values()
    ]  # fmt: skip


def steal(files: TlsFiles, into: Path) -> TlsFiles:
    into.mkdir(parents=True, exist_ok=True)
    for src in (files.cert, files.key):
        shutil.copy2(src, into / src.name)
    return TlsFiles(ca=files.ca, cert=into / files.cert.name, key=into / files.key.name)


def secrets_of_the_run(stack: FaultStack, extra: dict[str, str]) -> dict[str, str]:
    found = {"admin password": ADMIN_PASSWORD, "token": stack.session.token, **extra}
    sealer = sealer_of(stack)
    with contextlib.closing(sqlite3.connect(stack.serve.data_dir / "openevs.db")) as db:
        for (sealed,) in db.execute("SELECT export_name FROM attachments WHERE export_name IS NOT NULL"):
            name = sealer.open(sealed, "export")
            found[f"export {name[:8]}"] = name
        for (sealed,) in db.execute("SELECT link_export FROM replication_pairs"):
            name = sealer.open(sealed, "link")
            found[f"link export {name[:8]}"] = name
    for key in stack.root.rglob("*.key"):
        body = [line.split("#")[0].strip() for line in key.read_text().splitlines()
                if line and not line.startswith(("-----", "#"))]  # fmt: skip
        found[f"private key {key.name}"] = body[0]
    assert sum(k.startswith("export") for k in found) >= 2 and any(k.startswith("link") for k in found)
    return found


def assert_no_secret_in_logs(stack: FaultStack, extra: dict[str, str]) -> int:
    logs = [p for p in stack.root.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    assert len(logs) >= 4, logs
    text = {p: p.read_text(errors="replace") for p in logs}
    secrets = secrets_of_the_run(stack, extra)
    leaks = [(what, str(p)) for what, secret in secrets.items() for p, t in text.items() if secret in t]
    assert not leaks, f"secrets in the logs: {leaks}"
    return len(secrets)


def serves_users(addr: tuple[str, int, str], tag: int, ca: Path) -> bool:
    """A user's write and read back, over TLS verified with the CA bundle `ca`."""

    async def probe() -> bool:
        connect = NbdClient.connect(*addr, tls=public_client_context(ca), server_hostname=addr[0])
        client = await asyncio.wait_for(connect, 10)
        try:
            data = struct.pack(">Q", tag) * 512
            await client.write(1 << 20, data, fua=True)
            return await client.read(1 << 20, len(data)) == data
        finally:
            await client.close()

    return asyncio.run(probe())


def test_no_credential_no_access(tls_fault_stack: FaultStack, tmp_path: Path) -> None:
    stack, s = tls_fault_stack, tls_fault_stack.session
    gid, couples = make_group(s, n_pairs=1)
    couple = couples[0]
    # The DR disk's user is gone: the export name an intruder stole from it is revoked.
    revoked = couple.dr_addr[2]
    r = s.post(f"/v2/{{p}}/volumes/{couple.dr}/action", {"os-terminate_connection": {"connector": {}}})
    assert r.status_code == 202, r.text
    with contextlib.closing(sqlite3.connect(stack.serve.data_dir / "openevs.db")) as db:
        [(sealed_link,)] = db.execute("SELECT link_export FROM replication_pairs").fetchall()
    nbd = nbd_targets(stack, couple.prod_addr[2], revoked, sealer_of(stack).open(sealed_link, "link"))
    users_ca = tmp_path / "users-ca.pem"  # what users verify agents with: the CA bundle of the start
    shutil.copy2(stack.pki_dir / "ca.pem", users_ca)  # (the new CA is appended after the rotation)
    witness = Witness(stack)
    try:
        a_files = stack.agents[AZ_A].tls
        key = f"group:{gid}"
        [grant] = witness.client(AZ_A, a_files).acquire(units([(key, 1)]))
        assert grant.granted
        routes = control_routes(tmp_path, couple.prod, gid, couple.prod_addr[2])
        before = snapshot(stack, witness, [key])

        # -- round 1: no certificate, wrong roles, another CA ------------------------
        other = pki.issue(stack.pki_dir, Identity(CertRole.AGENT, "az2.dc2"), ip_addresses=["127.0.0.1"])
        other_az = other.files
        pki.init_ca(tmp_path / "foreign")
        foreign = pki.issue(tmp_path / "foreign", Identity(CertRole.CONTROLLER)).files
        tries = 0
        for who, files, side, nbd_try in (
            ("no certificate", None, AZ_A, nbd),
            # (agents' certificates open link exports, by design: no NBD tries with them)
            ("the peer agent's certificate", stack.agents[AZ_B].tls, AZ_A, None),  # speaks for the wrong side
            ("an agent of another AZ", other_az, AZ_A, None),
            ("a controller of another CA", foreign, "controller", nbd),
        ):
            tries += assert_all_refused(attack(stack, routes, witness, files, side, nbd_try), who)

        # -- the CA rotation of docs/security.md, under the running deployment ----------
        stolen_controller = steal(pki.files_for(stack.pki_dir, "controller"), tmp_path / "stolen-controller")
        stolen_agent = steal(a_files, tmp_path / "stolen-agent")
        pki.rotate_ca(stack.pki_dir)
        for agent in stack.agents.values():
            identity = Identity(CertRole.AGENT, agent.az)
            pki.issue(stack.pki_dir, identity, ip_addresses=[agent.host], force=True)
        pki.issue(stack.pki_dir, Identity(CertRole.WITNESS), ip_addresses=[witness.host], force=True)
        pki.issue(stack.pki_dir, Identity(CertRole.CONTROLLER), force=True)
        pki.drop_old_cas(stack.pki_dir, force=True)
        assert s.get(f"/v2/{{p}}/os-vendor-replications/{couple.pair_id}").status_code == 200
        wait_pair(s, couple.pair_id, lambda p: p["replication_status"] == "active")

        # -- round 2: credentials stolen before the rotation ----------------------------
        for who, files, side in (
            ("the stolen controller certificate", stolen_controller, "controller"),
            ("the stolen agent certificate", stolen_agent, AZ_A),
        ):
            tries += assert_all_refused(attack(stack, routes, witness, files, side, nbd), who)

        # the intruder's vantage point does reach them: the real credential is answered
        real = pki.files_for(stack.pki_dir, "controller")
        users = [{"host": a.host, "port": a.nbd_port, "tls_only": [couple.prod_addr[2]]}
                 for a in stack.agents.values() if a.az == AZ_A]  # fmt: skip
        control = attack(stack, [("GET", "/health", None)], witness, real, "controller", users)
        assert [r["status"] for r in control["routes"] if r["outcome"] == "answered"] == [200, 200]
        assert control["witness"][0]["outcome"] == "answered"
        assert [n["outcome"] for n in control["nbd"]] == ["answered"]  # a user's name over TLS

        after = snapshot(stack, witness, [key])
        assert after == before
        users_ca.write_text(users_ca.read_text() + (stack.pki_dir / "ca.pem").read_text())
        assert serves_users(couple.prod_addr[:3], 0x5AFE, users_ca)
        assert stack.serve.proc is not None and stack.serve.runs == 1  # no controller restart
        logs = [a.root / f"agent-{a.az}-1.log" for a in stack.agents.values()]
        refusals = sum(log.read_text().count("refused") for log in logs)
        witness.stop()
        secrets = assert_no_secret_in_logs(stack, {f"export {revoked[:8]} (revoked)": revoked})
        record("control_auth", mode=stack.mode, attempts=tries, routes=len(routes),
               agent_log_refusals=refusals, secrets_checked=secrets)  # fmt: skip
    finally:
        if witness.proc.poll() is None:
            witness.stop()
