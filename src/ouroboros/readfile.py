"""Reading a file that something hostile may have written (an agent's notes or description, an
editable file a run may have replaced): a regular file only (a link is not followed, a FIFO or
device is not opened for reading), at most `cap` bytes, decoded as UTF-8 with bad bytes replaced.
None when there is no such regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_regular(path: Path, cap: int = 1 << 20) -> str | None:
    data = read_regular_bytes(path, cap)
    return None if data is None else data.decode("utf-8", errors="replace")


def read_regular_bytes(path: Path, cap: int = 1 << 20, whole: bool = False) -> bytes | None:
    """The first `cap` bytes of a regular file; with whole=True, None for a file larger than `cap`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (whole and st.st_size > cap):
            return None
        chunks, left = [], cap
        while left > 0:
            data = os.read(fd, min(left, 1 << 16))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)
