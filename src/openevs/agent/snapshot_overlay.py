"""The write-back overlay of a disk with snapshots (docs/decisions.md "Snapshots").

A first write to a region the newest snapshot has not preserved yet does
not wait for the copy-before-write: its bytes (its partial edge blocks
completed from the disk file) are pwritten into `overlay.data` at the same
offset, the region's entry in `overlay.map` (the mask of the 4 KiB blocks
the overlay holds) is set, and the write is acknowledged (page cache, like
any write). The region is *pending*: its live content is the overlay's
blocks over the disk file, and the disk file still holds the old bytes,
which are the newest snapshot's view. `VolumeChain.drain` (in the
background, and for every FLUSH or FUA before it answers) preserves
pending regions as before, in batches (one fdatasync for many), then
copies their blocks into the disk file and clears them.

Rules this module keeps:

- a block is recorded in the map only after its overlay bytes were
  pwritten whole (so a process killed at any point, whose page cache the
  kernel keeps, leaves no block recorded with torn content), and cleared
  before its overlay bytes are punched;
- the map's header names the boot it was written in: after a reboot (a
  power cut) the overlay is discarded whole. Nothing it held was flushed
  (a flush drains before it answers), and the disk file still holds each
  pending region's content from before its first write since the drain;
- the header also names the snapshot pending regions preserve into (the
  newest when the overlay filled): chain.json may name a newer one whose
  switch a crash cut short (`VolumeChain.load` drops it);
- the disk file of a pending region is written by the drain only;
- the agent's overlays together hold at most `Budget.cap_regions` regions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from pathlib import Path

from openevs.agent.mirror.engine import REGION_BYTES
from openevs.agent.nbd.export import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from openevs.agent.pool import data_extents
from openevs.agent.snapshot_chain import regions_of

DATA_FILE = "overlay.data"
MAP_FILE = "overlay.map"
HEADER_BYTES = 128
ENTRY_BYTES = 2  # per region: the mask of the 4 KiB blocks the overlay holds
BLOCK_BYTES = 4096
BLOCKS = REGION_BYTES // BLOCK_BYTES
FULL_MASK = (1 << BLOCKS) - 1
MAGIC = b"OEVSOVL1"
DEFAULT_CAP_BYTES = 2 << 30
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> bytes:
    try:
        with open(_BOOT_ID_PATH, "rb") as f:
            return f.read().strip()[:48]
    except OSError:
        return b"unknown"


def cap_bytes_from_env() -> int:
    """`OPENEVS_SNAPSHOT_OVERLAY_MIB` (the agent's, over all its disks); 0 turns the overlay off."""
    raw = os.environ.get("OPENEVS_SNAPSHOT_OVERLAY_MIB")
    return DEFAULT_CAP_BYTES if raw is None else max(0, int(raw)) << 20


class Budget:
    """The overlay space of every disk of an agent together: at most `cap_regions` pending
    regions (page cache and pool space); past it, first writes copy before they write."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_regions = cap_bytes // REGION_BYTES
        self.used = 0

    def has_room(self, regions: int) -> bool:
        return self.used + regions <= self.cap_regions

    @property
    def high(self) -> bool:
        """Half full: the drains run without waiting for their disk to go idle."""
        return self.used * 2 >= self.cap_regions


BUDGET = Budget(cap_bytes_from_env())


def _pread_full(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            return data + bytes(length - len(data))
        data += more
    return data


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """[offset, offset+length) of `src` to the same offsets of `dst`, in the kernel when it can
    (copy_file_range: no copy through user space, no GIL held), else pread/pwrite."""
    end = offset + length
    try:
        while offset < end:
            n = os.copy_file_range(src, dst, end - offset, offset, offset)
            if n <= 0:
                break  # past the end of `src`: the rest reads as zeros
            offset += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    if offset < end:
        _pwrite_all(dst, _pread_full(src, offset, end - offset), offset)


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class Overlay:
    """One disk's pending regions: their bytes, their record, and the in-memory map."""

    def __init__(self, directory: Path, budget: Budget | None = None) -> None:
        self.directory = directory
        self.data_path = directory / DATA_FILE
        self.map_path = directory / MAP_FILE
        self.budget = BUDGET if budget is None else budget
        self.pending: dict[int, int] = {}  # region -> seq of its last write
        self.masks: dict[int, int] = {}  # region -> its 4 KiB blocks the overlay holds (bit i)
        self.seq = 0
        self.drained = 0  # copy steps so far: readers in threads re-check against it
        self.base = ""  # the snapshot the pending regions preserve into
        self._fd = -1
        self._map_fd = -1

    # -- files ------------------------------------------------------------

    def load(self) -> str | None:
        """Pending regions left by a killed process; their base snapshot (None: nothing pending)."""
        try:
            map_fd = os.open(self.map_path, os.O_RDWR)
        except FileNotFoundError:
            self.data_path.unlink(missing_ok=True)
            return None
        try:
            header = _pread_full(map_fd, 0, HEADER_BYTES)
            size = os.fstat(map_fd).st_size
            masks: dict[int, int] = {}
            if header.startswith(MAGIC) and header[8:56].rstrip(b"\0") == boot_id():
                for offset, length in data_extents(map_fd, HEADER_BYTES, max(0, size - HEADER_BYTES)):
                    chunk = _pread_full(map_fd, offset, length - length % ENTRY_BYTES)
                    first = (offset - HEADER_BYTES) // ENTRY_BYTES
                    entries = struct.unpack(f"<{len(chunk) // ENTRY_BYTES}H", chunk)
                    masks.update((first + i, m) for i, m in enumerate(entries) if m)
        finally:
            os.close(map_fd)
        if not masks:  # empty, or written before a reboot: nothing in it was flushed
            self.remove()
            return None
        self.base = header[56:HEADER_BYTES].rstrip(b"\0").decode()
        self._open()
        self.masks = masks
        self.pending = dict.fromkeys(masks, 0)
        self.budget.used += len(masks)
        return self.base

    def _open(self) -> None:
        if self._fd < 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._map_fd = os.open(self.map_path, os.O_RDWR | os.O_CREAT, 0o600)

    def begin(self, snapshot_id: str) -> None:
        """The overlay is empty and a region is about to be recorded: name its base first."""
        self.base = snapshot_id
        self._open()
        self._write_header()

    def rebase(self, snapshot_id: str) -> None:
        """The base snapshot was deleted: pending regions now preserve into `snapshot_id`."""
        self.base = snapshot_id
        if self._fd >= 0 and self.pending:
            self._write_header()

    def _write_header(self) -> None:
        snapshot_id = self.base
        header = MAGIC + boot_id().ljust(48, b"\0") + snapshot_id.encode().ljust(HEADER_BYTES - 56, b"\0")
        _pwrite_all(self._map_fd, header[:HEADER_BYTES], 0)

    def close(self) -> None:
        """Closed (the agent stops, the disk goes): what is pending stays in the files."""
        for fd in (self._fd, self._map_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._map_fd = -1
        self.budget.used -= len(self.pending)
        self.pending = {}
        self.masks = {}

    def remove(self) -> None:
        self.close()
        self.map_path.unlink(missing_ok=True)
        self.data_path.unlink(missing_ok=True)

    # -- the write path (synchronous, in the event loop) --------------------

    def any_pending(self, offset: int, length: int) -> bool:
        pending = self.pending
        return bool(pending) and any(r in pending for r in regions_of(offset, length))

    def has_room(self, regions: int) -> bool:
        return self.budget.has_room(regions)

    def put(self, disk_fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """The write's bytes into the overlay, its edge blocks whole; then recorded.

        The overlay holds 4 KiB blocks: a block the overlay lacks reads from the disk
        file, which holds the live bytes of every block not in the overlay."""
        self._open()
        fd, masks = self._fd, self.masks
        length = len(data)
        end = offset + length
        b0, b1 = offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES + 1
        head, tail = b0 * BLOCK_BYTES, b1 * BLOCK_BYTES
        if offset > head and not self._holds(b0):
            _pwrite_all(fd, _pread_full(disk_fd, head, offset - head), head)
        _pwrite_all(fd, data, offset)
        if end < tail and not self._holds(b1 - 1):
            _pwrite_all(fd, _pread_full(disk_fd, end, tail - end), end)
        first, last = b0 // BLOCKS, (b1 - 1) // BLOCKS
        new = []
        for r in range(first, last + 1):
            lo, hi = max(b0, r * BLOCKS) - r * BLOCKS, min(b1, (r + 1) * BLOCKS) - r * BLOCKS
            new.append(masks.get(r, 0) | (((1 << (hi - lo)) - 1) << lo))
        if any(masks.get(r) != m for r, m in zip(range(first, last + 1), new, strict=True)):
            record = struct.pack(f"<{len(new)}H", *new)
            _pwrite_all(self._map_fd, record, HEADER_BYTES + first * ENTRY_BYTES)
        self.seq += 1
        seq, pending = self.seq, self.pending
        added = 0
        for r, m in zip(range(first, last + 1), new, strict=True):
            masks[r] = m
            added += r not in pending
            pending[r] = seq
        self.budget.used += added

    def _holds(self, block: int) -> bool:
        region, bit = divmod(block, BLOCKS)
        return bool(self.masks.get(region, 0) >> bit & 1)

    # -- reads --------------------------------------------------------------

    def patch(self, buf: bytearray | memoryview, offset: int) -> None:
        """Overwrite the overlay's blocks in `buf` (read from the disk file at `offset`)."""
        view = memoryview(buf)
        end = offset + len(view)
        for run_start, run_stop in self._held_runs(offset, len(view)):
            lo, hi = max(offset, run_start), min(end, run_stop)
            if lo < hi:
                view[lo - offset : hi - offset] = _pread_full(self._fd, lo, hi - lo)

    def _held_runs(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Byte ranges [start, stop) of the overlay's blocks in pending regions meeting the range."""
        out: list[tuple[int, int]] = []
        masks = self.masks
        if not masks:
            return out
        for r in regions_of(offset, length):
            mask = masks.get(r)
            if not mask:
                continue
            base = r * REGION_BYTES
            if mask == FULL_MASK:
                spans = [(base, base + REGION_BYTES)]
            else:
                block = BLOCK_BYTES
                spans = [(base + i * block, base + (i + 1) * block) for i in range(BLOCKS) if mask >> i & 1]
            for lo, hi in spans:
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
        return out

    def _pending_runs(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Byte ranges [start, stop) of consecutive pending regions meeting the range."""
        out: list[tuple[int, int]] = []
        pending = self.pending
        if not pending:
            return out
        for r in regions_of(offset, length):
            if r in pending:
                lo, hi = r * REGION_BYTES, (r + 1) * REGION_BYTES
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
        return out

    def extents(self, base: list[tuple[int, int]], offset: int, length: int) -> list[tuple[int, int]]:
        """`base` (the disk file's (length, flags) extents from offset) with pending regions as data."""
        runs = self._pending_runs(offset, length)
        if not runs:
            return base
        pieces: list[tuple[int, int, int]] = []  # (start, stop, flags)
        pos = offset
        for ext_len, flags in base:
            pieces.append((pos, pos + ext_len, flags))
            pos += ext_len
        for lo, hi in runs:
            lo, hi = max(lo, offset), min(hi, offset + length)
            cut: list[tuple[int, int, int]] = []
            for s, e, f in pieces:
                if e <= lo or s >= hi:
                    cut.append((s, e, f))
                    continue
                if s < lo:
                    cut.append((s, lo, f))
                cut.append((max(s, lo), min(e, hi), 0))
                if e > hi:
                    cut.append((hi, e, f))
            pieces = cut
        merged: list[tuple[int, int]] = []
        for s, e, f in pieces:
            if merged and merged[-1][1] == f:
                merged[-1] = (merged[-1][0] + e - s, f)
            else:
                merged.append((e - s, f))
        return merged

    def pending_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) of every pending run (for a copy that must see them as data)."""
        out: list[tuple[int, int]] = []
        for r in sorted(self.pending):
            lo = r * REGION_BYTES
            if out and out[-1][0] + out[-1][1] == lo:
                out[-1] = (out[-1][0], out[-1][1] + REGION_BYTES)
            else:
                out.append((lo, REGION_BYTES))
        return out

    # -- the drain ------------------------------------------------------------

    def copy_data(self, first: int, count: int, disk_fd: int) -> None:
        """Blocking (a thread may run it): the overlay's blocks of regions [first, first+count)
        into the disk file. Writes may change them meanwhile: `clear` only those whose seq
        did not change."""
        size = os.fstat(disk_fd).st_size
        for lo, hi in self._held_runs(first * REGION_BYTES, count * REGION_BYTES):
            hi = min(hi, size)
            if lo < hi:
                copy_range(self._fd, disk_fd, lo, hi - lo)

    def clear(self, first: int, count: int) -> None:
        """In the loop, after their copy: the regions are no longer pending (record first)."""
        start, length = first * REGION_BYTES, count * REGION_BYTES
        _pwrite_all(self._map_fd, bytes(count * ENTRY_BYTES), HEADER_BYTES + first * ENTRY_BYTES)
        for r in range(first, first + count):
            del self.pending[r]
            del self.masks[r]
        self.budget.used -= count
        with contextlib.suppress(OSError):  # else the space comes back at `reset`
            fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, length)
        self.drained += 1

    def reset(self) -> None:
        """Nothing pending: give the overlay's space back (the map first)."""
        if self.pending or self._fd < 0:
            return
        os.ftruncate(self._map_fd, 0)
        os.ftruncate(self._fd, 0)
