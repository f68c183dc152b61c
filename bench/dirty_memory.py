"""Memory per TiB of dirty regions: the old Python `set` against the region set (BitMap).

Each case runs in a fresh interpreter and prints the growth of its resident
memory while it holds the regions of 1/16 TiB (65536 regions of 64 KiB per
GiB), scaled to one TiB, for a disk dirty all along (one run) and one dirty
in every other region (the worst case for runs). The ratio is new/old,
measured in the same run.

    nice -n 10 .venv/bin/python bench/dirty_memory.py
"""

from __future__ import annotations

import subprocess
import sys

REGIONS = (1 << 40) // (64 * 1024) // 16  # 1/16 TiB of regions
SCALE = 16

CASE = """
import sys
from pathlib import Path

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

from openevs.agent.mirror.regions import BitMap, span
kind, layout, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = rss()
step = 1 if layout == "full" else 2
if kind == "set":
    held = set(range(0, n, step))
elif layout == "full":
    held = span(0, n)
else:
    held = BitMap(range(0, n, step))
print(rss() - before)
"""


def measure(kind: str, layout: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CASE, kind, layout, str(REGIONS)], check=True, capture_output=True, text=True
    )
    return int(out.stdout) * SCALE


def main() -> None:
    print(f"{'dirty layout':<22}{'set MiB/TiB':>14}{'BitMap MiB/TiB':>16}{'new/old':>10}")
    for layout, label in (("full", "all regions"), ("every-other", "every other region")):
        old, new = measure("set", layout), measure("bitmap", layout)
        print(f"{label:<22}{old / 2**20:>14.1f}{new / 2**20:>16.2f}{new / max(old, 1):>10.4f}")


if __name__ == "__main__":
    main()
