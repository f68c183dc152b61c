"""The intruder of the hostile tests: run inside the outsider namespace, it tries
every control route of the agents and the witness port with one credential (or
none) and prints what it got back, as JSON, on stdout.

    python -m tests.faults.intruder SPEC.json

SPEC: {"cert": path or null, "key": path or null,
       "agents": [{"url": "https://host:port", "routes": [[method, path, body], ...]}],
       "witness": [host, port] or null, "witness_side": "az1.dc1",
       "nbd": [{"host", "port", "exports": [names], "links": [link export names]}] (optional)}

It does not verify the servers (an intruder does not care who answers) and it
presents the credential it was given. An outcome is "refused" (the TLS
handshake failed or the connection was closed before an HTTP answer) or the
HTTP status and the first bytes of the body; for the witness, the bytes it
answered to a Hello and a forced Acquire; for NBD, intruder_nbd.py.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx

from openevs.witness import protocol as p
from tests.faults.intruder_nbd import try_nbd


def _context(cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


def try_route(client: httpx.Client, method: str, url: str, body: Any) -> dict[str, Any]:
    try:
        r = client.request(method, url, json=body)
    except (httpx.TransportError, ssl.SSLError, OSError) as exc:
        return {"outcome": "refused", "why": type(exc).__name__}
    return {"outcome": "answered", "status": r.status_code, "body": r.text[:200]}


def try_witness(host: str, port: int, side: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    hello = p.Connection(p.Role.CLIENT).send(p.Hello(side=side))
    got = b""
    try:
        with socket.create_connection((host, port), timeout=5) as plain, ctx.wrap_socket(plain) as sock:
            sock.sendall(hello)
            sock.settimeout(3)
            while chunk := sock.recv(65536):
                got += chunk
    except (ssl.SSLError, OSError) as exc:
        return {"outcome": "refused" if not got else "answered", "why": type(exc).__name__, "bytes": len(got)}
    return {"outcome": "refused" if not got else "answered", "bytes": len(got)}


def try_plain_witness(host: str, port: int, side: str) -> dict[str, Any]:
    hello = p.Connection(p.Role.CLIENT).send(p.Hello(side=side))
    got = b""
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(hello)
            sock.settimeout(3)
            while chunk := sock.recv(65536):
                got += chunk
    except OSError as exc:
        return {"outcome": "refused" if not got else "answered", "why": type(exc).__name__}
    return {"outcome": "refused" if not got else "answered", "bytes": len(got)}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = _context(spec.get("cert"), spec.get("key"))
    out: dict[str, Any] = {"routes": [], "witness": None}
    with httpx.Client(verify=ctx, timeout=5) as client, httpx.Client(timeout=5) as plain:
        for agent in spec["agents"]:
            for method, path, body in agent["routes"]:
                url = agent["url"] + path
                out["routes"].append({"method": method, "url": url, **try_route(client, method, url, body)})
                plain_url = url.replace("https://", "http://", 1)
                out["routes"].append(
                    {"method": method, "url": plain_url, **try_route(plain, method, plain_url, body)}
                )
    if spec.get("witness"):
        host, port = spec["witness"]
        side = spec["witness_side"]
        out["witness"] = [try_witness(host, port, side, ctx), try_plain_witness(host, port, side)]
    out["nbd"] = [r for target in spec.get("nbd", []) for r in try_nbd(target, ctx)]
    return out


if __name__ == "__main__":
    print(json.dumps(run(json.loads(Path(sys.argv[1]).read_text()))))
