"""Time zones made on the spot, so that a local hour starts within seconds.

A schedule boundary only comes at a whole local hour (schedule.py). To cross one in a test
without waiting up to an hour, a test writes a zone of its own with a constant UTC offset
(whole seconds) chosen so that an hour starts at the instant it wants, as a TZif file in a
directory that zoneinfo searches first: `zoneinfo.reset_tzpath` in the test's process,
`PYTHONTZPATH` for a child process.
"""

from __future__ import annotations

import struct
from datetime import datetime
from pathlib import Path
from uuid import uuid4


def tzif(offset_seconds: int) -> bytes:
    """A TZif (version 2) file for a zone at a constant UTC offset, in whole seconds."""
    abbr = b"PBT\0"

    def block() -> bytes:
        counts = struct.pack(">6l", 0, 0, 0, 0, 1, len(abbr))  # one type, no transitions
        return b"TZif2" + bytes(15) + counts + struct.pack(">lBB", offset_seconds, 0, 0) + abbr

    # The footer is a POSIX TZ string, whose offsets count west of Greenwich.
    hours, rest = divmod(abs(offset_seconds), 3600)
    west = f"{'-' if offset_seconds >= 0 else '+'}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return block() + block() + f"\n<PBT>{west}\n".encode()


def zone_with_an_hour_starting_at(folder: Path, boundary: datetime) -> tuple[str, int]:
    """A new zone under `folder` in which a local hour starts at `boundary` (whole seconds):
    its name and that hour."""
    epoch = int(boundary.timestamp())
    offset = -epoch % 3600
    name = f"PrebuilddTest/Boundary_{uuid4().hex[:12]}"
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tzif(offset))
    return name, _local_hour(epoch, offset)


def _local_hour(epoch: int, offset: int) -> int:
    local_seconds = (epoch + offset) % 86400
    if local_seconds % 3600:
        raise AssertionError("the zone does not start an hour at the boundary")
    return local_seconds // 3600
