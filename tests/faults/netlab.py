"""Network namespaces for the fault harness: one per replicated AZ, maybe one for the
witness, plus a router.

Topology (every name carries a per-run prefix `oevs-<hex6>`, every address is
a link-local 169.254.N.x of our own, N chosen at random among unused /24s):

    root ns  o<h>h 169.254.N.9/30  ── 169.254.N.10 o<h>rh ┐
    ns -a    o<h>a 169.254.N.2/30  ── 169.254.N.1  o<h>ra ├ ns -r (forwarding on)
    ns -b    o<h>b 169.254.N.6/30  ── 169.254.N.5  o<h>rb │
    ns -w    o<h>w 169.254.N.14/30 ── 169.254.N.13 o<h>rw ┤ (only with `witness=True`)
    ns -x    o<h>x 169.254.N.18/30 ── 169.254.N.17 o<h>rx ┘ an outsider: reach, no credential

The router namespace forwards, so the root namespace's own sysctls stay
untouched; the root namespace only gets one route to 169.254.N.0/27. The
controller and the test live in the root namespace, side "h"; the hostile
tests run their intruder in the outsider namespace -x. Faults are
black-hole policy rules in the router between two sides' subnets:
`cut(x, y)` silences x <-> y (both directions), `isolate(x)` cuts x from
every other side (the controller included), `heal()` removes every rule;
`cut()` and `restore()` are the two-AZ forms the older scenarios use.
`Flapper` cuts and heals one link at random intervals in a thread. Traffic
only ever goes to addresses of these namespaces. `close()` deletes the
namespaces (which deletes every veth); it is safe to call twice and is
registered with atexit as a last resort.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import secrets
import subprocess
import threading
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


# side -> (outer host number, router host number) inside 169.254.N.0/27
_HOSTS = {"a": (2, 1), "b": (6, 5), "h": (9, 10), "w": (14, 13), "x": (18, 17)}
SIDES = tuple(_HOSTS)


@dataclass
class NetLab:
    """AZ namespaces (and maybe the witness's) joined by a router; see the module docstring."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    witness: bool = False
    octet: int = 0
    created: list[str] = field(default_factory=list)
    cut_rules: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def prefix(self) -> str:
        return f"oevs-{self.tag}"

    @property
    def sides(self) -> tuple[str, ...]:
        return SIDES if self.witness else ("a", "b", "h", "x")

    def ns(self, side: str) -> str:
        return f"{self.prefix}-{side}"

    def addr(self, host: int) -> str:
        return f"169.254.{self.octet}.{host}"

    def host(self, side: str) -> str:
        return self.addr(_HOSTS[side][0])

    @property
    def host_a(self) -> str:
        return self.host("a")

    @property
    def host_b(self) -> str:
        return self.host("b")

    @property
    def host_w(self) -> str:
        return self.host("w")

    def subnet(self, side: str) -> str:
        return f"{self.addr(_HOSTS[side][0] // 4 * 4)}/30"

    @property
    def host_x(self) -> str:
        return self.host("x")

    @property
    def subnets(self) -> tuple[str, str]:
        return self.subnet("a"), self.subnet("b")

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
        spaces = [side for side in self.sides if side != "h"]
        for side in (*spaces, "r"):
            _ip("netns", "add", self.ns(side))
            self.created.append(self.ns(side))
            _ip("link", "set", "lo", "up", ns=self.ns(side))
        r = self.ns("r")
        subprocess.run(
            ["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True, timeout=20
        )
        for side in self.sides:
            outer, inner = f"o{t}{side}", f"o{t}r{side}"
            outer_ns = None if side == "h" else self.ns(side)
            outer_host, inner_host = _HOSTS[side]
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", r)
            if outer_ns:
                _ip("link", "set", outer, "netns", outer_ns)
            _ip("addr", "add", f"{self.addr(outer_host)}/30", "dev", outer, ns=outer_ns)
            _ip("link", "set", outer, "up", ns=outer_ns)
            _ip("addr", "add", f"{self.addr(inner_host)}/30", "dev", inner, ns=r)
            _ip("link", "set", inner, "up", ns=r)
            if outer_ns:
                _ip("route", "add", "default", "via", self.addr(inner_host), ns=outer_ns)
        _ip("route", "add", f"{self.addr(0)}/27", "via", self.addr(_HOSTS["h"][1]))

    def exec_prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(side)]

    # -- faults -----------------------------------------------------------------

    def cut(self, x: str = "a", y: str = "b") -> None:
        """Black-hole every packet between sides x and y (both directions). Established
        connections see silence, not a reset, as on a real cut. Cutting twice is a no-op."""
        with self._lock:
            for src, dst in ((self.subnet(x), self.subnet(y)), (self.subnet(y), self.subnet(x))):
                if (src, dst) in self.cut_rules:
                    continue
                _ip("rule", "add", "from", src, "to", dst, "blackhole", ns=self.ns("r"))
                self.cut_rules.append((src, dst))

    def isolate(self, x: str) -> None:
        """Cut side x from every other side, the controller's (root namespace) included."""
        for other in self.sides:
            if other != x:
                self.cut(x, other)

    def uncut(self, x: str, y: str) -> None:
        """Remove the rules of `cut(x, y)` only."""
        with self._lock:
            for src, dst in ((self.subnet(x), self.subnet(y)), (self.subnet(y), self.subnet(x))):
                if (src, dst) in self.cut_rules:
                    self.cut_rules.remove((src, dst))
                    _ip("rule", "del", "from", src, "to", dst, "blackhole", ns=self.ns("r"), check=False)

    def heal(self) -> None:
        with self._lock:
            while self.cut_rules:
                src, dst = self.cut_rules.pop()
                _ip("rule", "del", "from", src, "to", dst, "blackhole", ns=self.ns("r"), check=False)

    def restore(self) -> None:
        self.heal()

    def close(self) -> None:
        for name in reversed(self.created):
            _ip("netns", "del", name, check=False)
        self.created.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)


class Flapper:
    """Cut and heal the link x <-> y at random intervals (`low_s`..`high_s`) in a thread,
    until `stop()` (which leaves that link healed). `flips` counts the cuts made."""

    def __init__(self, net: NetLab, x: str, y: str, rng: random.Random,
                 low_s: float = 0.3, high_s: float = 3.0) -> None:  # fmt: skip
        self.net, self.x, self.y, self.rng = net, x, y, rng
        self.low_s, self.high_s = low_s, high_s
        self.flips = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Flapper:
        self._thread.start()
        return self

    def _run(self) -> None:
        cut = False
        while not self._stop.wait(self.rng.uniform(self.low_s, self.high_s)):
            if cut:
                self.net.uncut(self.x, self.y)
            else:
                self.net.cut(self.x, self.y)
                self.flips += 1
            cut = not cut

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.net.uncut(self.x, self.y)


def leftover_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("oevs-")]
