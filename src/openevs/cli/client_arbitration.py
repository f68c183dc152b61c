"""What `replication show` and `group show` say in words about arbitration:
why a primary's I/O is suspended and what would resume it (DESIGN 3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def arbitration_words(obj: Mapping[str, Any]) -> str | None:
    """A sentence for the `arbitration` extension object, or None when there is nothing to say."""
    arb = obj.get("arbitration")
    if not isinstance(arb, Mapping):
        return None
    witness = arb.get("witness") or "the witness"
    if arb.get("outdated"):
        return (
            f"Writes the peer lacks fail: {witness} gave this unit to the other side (a failover at a"
            " higher epoch). Reprotect or fail back to write here again."
        )
    if arb.get("suspended"):
        return (
            f"I/O is suspended: the primary cannot reach its peer and has no grant from {witness}"
            f" (witness {'reachable' if arb.get('witness_reachable') else 'unreachable'}). Writes"
            " resume as soon as the replication link or the witness is back; they fail with EIO"
            " after OPENEVS_SUSPEND_IO_TIMEOUT_S. A failover moves the service to the DR side."
        )
    if not arb.get("witness_reachable"):
        return (
            f"{witness} is unreachable: replication goes on while both sides see each other, but a"
            " link failure now would suspend I/O, and a failover is refused (400) until it is back."
        )
    if arb.get("lease"):
        return f"The primary writes alone under the lease of {witness} (its peer is out of reach)."
    return None
