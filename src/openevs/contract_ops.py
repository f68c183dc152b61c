"""The operators' part of the controller <-> agent contract: online verify and the
resync limit (agent/verify.py serves it, agent/client.py calls it).

The same rules as `openevs.contract`: frozen models that refuse unknown
fields, validated on both sides.
"""

from __future__ import annotations

from pydantic import Field, StrictInt

from openevs.contract import Model

VERIFY_MAX_BYTES = 64 << 20  # one hash request covers at most this much
VERIFY_REGION_BYTES = 64 << 10  # the agents' region (agent/mirror/engine.py REGION_BYTES)


class HashRequest(Model):
    """Hash [offset, offset+length) region by region (64 KiB) with a keyed BLAKE2b."""

    offset: StrictInt = Field(ge=0, multiple_of=VERIFY_REGION_BYTES)
    length: StrictInt = Field(gt=0, le=VERIFY_MAX_BYTES)
    key: str = Field(pattern=r"^[0-9a-f]{32}$")  # 16 bytes, hex: new for every verify


class RegionHashes(Model):
    first_region: int
    digests: list[str]  # one per region, in order
    # Primary only: its write counter when hashing began, and the regions that were
    # being written, dirty or being copied then (their hashes prove nothing).
    write_seq: int = 0
    busy: list[int] = Field(default_factory=list)


class ChangesRequest(Model):
    offset: StrictInt = Field(ge=0)
    length: StrictInt = Field(gt=0, le=VERIFY_MAX_BYTES)
    since_seq: StrictInt = Field(ge=0)


class ResyncRate(Model):
    """A pair's resync limit on its primary (bytes/s, 0: only the agent's own limit)."""

    resync_rate_bytes_per_s: StrictInt = Field(ge=0, le=1 << 40)


class RegionChanges(Model):
    """Regions of the range written since `since_seq`, or busy (writing, dirty, copying) now."""

    regions: list[int]
