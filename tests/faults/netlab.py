"""Network namespaces for the fault harness: one per replicated AZ, plus a router.

Topology (every name carries a per-run prefix `oevs-<hex6>`, every address is
a link-local 169.254.N.x of our own, N chosen at random among unused /24s):

    root ns  o<h>h 169.254.N.9/30  ── 169.254.N.10 o<h>rh ┐
    ns -a    o<h>a 169.254.N.2/30  ── 169.254.N.1  o<h>ra ├ ns -r (forwarding on)
    ns -b    o<h>b 169.254.N.6/30  ── 169.254.N.5  o<h>rb ┤
    ns -x    o<h>x 169.254.N.14/30 ── 169.254.N.13 o<h>rx ┘  an outsider: reach, no credential

The router namespace forwards, so the root namespace's own sysctls stay
untouched; the root namespace only gets one route to 169.254.N.0/29. The
controller and the test (root ns) reach both agents, and so does the outsider
namespace -x (the hostile tests run their intruder there); `cut()` black-holes
traffic between the two AZs only (policy rules in the router), `restore()`
removes the rules. Traffic only ever goes to addresses of these namespaces.
`close()` deletes the namespaces (which deletes every veth); it is safe to
call twice and is registered with atexit as a last resort.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import secrets
import subprocess
from dataclasses import dataclass, field


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no CAP_NET_ADMIN)."""


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result


def _used_link_local_octets() -> set[int]:
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    out += subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    used = {169, 254}
    for word in out.split():
        if word.startswith("169.254."):
            with contextlib.suppress(ValueError, IndexError):
                used.add(int(word.split(".")[2].split("/")[0]))
    return used


@dataclass
class NetLab:
    """Two AZ namespaces joined by a router namespace; see the module docstring."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    octet: int = 0
    created: list[str] = field(default_factory=list)
    cut_rules: list[tuple[str, str]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"oevs-{self.tag}"

    def ns(self, side: str) -> str:
        return f"{self.prefix}-{side}"

    def addr(self, host: int) -> str:
        return f"169.254.{self.octet}.{host}"

    @property
    def host_a(self) -> str:
        return self.addr(2)

    @property
    def host_b(self) -> str:
        return self.addr(6)

    @property
    def host_x(self) -> str:
        return self.addr(14)

    @property
    def subnets(self) -> tuple[str, str]:
        return f"{self.addr(0)}/30", f"{self.addr(4)}/30"

    def create(self) -> NetLab:
        if os.geteuid() != 0:
            raise NetnsUnavailable("not root: network namespaces need CAP_NET_ADMIN")
        free = sorted(set(range(64, 250)) - _used_link_local_octets())
        if not free:
            raise NetnsUnavailable("no free 169.254.N.0/24 for the lab")
        self.octet = random.choice(free)
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        t = self.tag
        for side in ("a", "b", "x", "r"):
            _ip("netns", "add", self.ns(side))
            self.created.append(self.ns(side))
            _ip("link", "set", "lo", "up", ns=self.ns(side))
        r = self.ns("r")
        subprocess.run(
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True, timeout=20
        )
        links = (  # (outer name, outer ns, router-side name, outer addr, router addr)
            (f"o{t}a", self.ns("a"), f"o{t}ra", 2, 1),
            (f"o{t}b", self.ns("b"), f"o{t}rb", 6, 5),
            (f"o{t}h", None, f"o{t}rh", 9, 10),
            (f"o{t}x", self.ns("x"), f"o{t}rx", 14, 13),
        )
        for outer, outer_ns, inner, outer_host, inner_host in links:
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", r)
            if outer_ns:
                _ip("link", "set", outer, "netns", outer_ns)
            _ip("addr", "add", f"{self.addr(outer_host)}/30", "dev", outer, ns=outer_ns)
            _ip("link", "set", outer, "up", ns=outer_ns)
            _ip("addr", "add", f"{self.addr(inner_host)}/30", "dev", inner, ns=r)
            _ip("link", "set", inner, "up", ns=r)
        _ip("route", "add", "default", "via", self.addr(1), ns=self.ns("a"))
        _ip("route", "add", "default", "via", self.addr(5), ns=self.ns("b"))
        _ip("route", "add", "default", "via", self.addr(13), ns=self.ns("x"))
        _ip("route", "add", f"{self.addr(0)}/28", "via", self.addr(10))

    def exec_prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(side)]

    # -- faults -----------------------------------------------------------------

    def cut(self) -> None:
        """Black-hole every packet between the two AZs (both directions); the root ns still
        reaches both. Established connections see silence, not a reset, as on a real cut."""
        a, b = self.subnets
        for src, dst in ((a, b), (b, a)):
            _ip("rule", "add", "from", src, "to", dst, "blackhole", ns=self.ns("r"))
            self.cut_rules.append((src, dst))

    def restore(self) -> None:
        while self.cut_rules:
            src, dst = self.cut_rules.pop()
            _ip("rule", "del", "from", src, "to", dst, "blackhole", ns=self.ns("r"), check=False)

    def close(self) -> None:
        for name in reversed(self.created):
            _ip("netns", "del", name, check=False)
        self.created.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)


def leftover_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("oevs-")]
