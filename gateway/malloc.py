"""Large buffers go back to the operating system when freed (glibc only; elsewhere a no-op).

glibc serves allocations from 128 KiB up with their own ``mmap``, returned to the system on
``free``, but it raises that threshold to the size of each such block freed. After the first
upload, the 256 KiB chunks a socket read gives and the images joined from them come from the
heap instead, whose freed space the process keeps: measured with a hundred concurrent 19 MB
uploads, peak memory per upload in flight was about 1.9 times the upload with the moving
threshold and 1.05 times with it fixed (``tests/test_uploads_functional.py`` prints it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed


@functools.cache
def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at 128 KiB for this process; False where there is no
    glibc (musl, macOS) or it refused."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.warning("could not fix malloc's mmap threshold: memory may follow the uploads")
    return done
