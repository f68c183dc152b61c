"""Rules of EVS disks that need no database: sizes, names, metadata."""

from __future__ import annotations

from typing import Any

from openevs.domain import codes
from openevs.domain.errors import InvalidInput

MIN_SIZE_GB = 1
MAX_SIZE_GB = 32768
MAX_TEXT_BYTES = 255
MAX_METADATA_BYTES = (1 << 20) - 1
GIB = 1 << 30

_ENCRYPTED_KEY = "__system__encrypted"
_CMK_KEY = "__system__cmkid"
_PASSTHROUGH_KEY = "hw:passthrough"
_FULL_CLONE_KEY = "full_clone"


def check_text(value: str | None, what: str, code: str | None = None) -> None:
    if value is not None and len(value.encode()) > MAX_TEXT_BYTES:
        raise InvalidInput(
            f"{what} has {len(value.encode())} bytes; it can have at most {MAX_TEXT_BYTES}",
            code=code,
        )


def check_size(size_gb: int) -> None:
    if not MIN_SIZE_GB <= size_gb <= MAX_SIZE_GB:
        raise InvalidInput(
            f"size must be between {MIN_SIZE_GB} and {MAX_SIZE_GB} GB, got {size_gb}",
            code=codes.VOLUME_SIZE_INVALID,
        )


def check_new_size(old_gb: int, new_gb: int) -> None:
    if new_gb <= old_gb:
        raise InvalidInput(
            f"new_size ({new_gb} GB) must be greater than the current size ({old_gb} GB)",
            code=codes.NEW_SIZE_NOT_LARGER,
        )
    check_size(new_gb)


def check_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """Validate disk metadata (string keys and values, documented special keys)."""
    total = 0
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise InvalidInput(f"metadata value of {key!r} must be a string")
        if not key or len(key.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput("metadata keys must be 1-255 bytes")
        if len(value.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput(f"metadata value of {key!r} can have at most 255 bytes")
        total += len(key.encode()) + len(value.encode())
    if total > MAX_METADATA_BYTES:
        raise InvalidInput("metadata must be smaller than 1048576 bytes", code=codes.METADATA_TOO_LARGE)
    if metadata.get(_ENCRYPTED_KEY, "0") not in ("0", "1"):
        raise InvalidInput(f"metadata {_ENCRYPTED_KEY} must be '0' or '1'")
    if metadata.get(_ENCRYPTED_KEY) == "1" and len(metadata.get(_CMK_KEY, "")) != 36:
        raise InvalidInput(f"an encrypted disk needs metadata {_CMK_KEY} of exactly 36 bytes")
    if metadata.get(_PASSTHROUGH_KEY, "false") not in ("true", "false"):
        raise InvalidInput(f"metadata {_PASSTHROUGH_KEY} must be 'true' or 'false'")
    if metadata.get(_FULL_CLONE_KEY, "0") not in ("0", "1"):
        raise InvalidInput(f"metadata {_FULL_CLONE_KEY} must be '0' or '1'")
    return dict(metadata)
