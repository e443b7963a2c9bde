"""Memory freed after a large upload goes back to the operating system (glibc only;
elsewhere a no-op).

glibc serves the 256 KiB chunks a socket read gives, and the images joined from them, from
its heap once its mmap threshold has moved up (it does, to the size of each large block
freed), and a heap keeps what is freed in it. Measured with a hundred concurrent 19 MB
uploads (``tests/test_uploads_functional.py`` prints it): peak memory per upload in flight
was about 1.9 times the upload. ``malloc_trim`` after each large body is parsed (its socket
chunks, joined) and again once it is answered (its images) gives the freed pages back: about
1.1 times (323 MiB); trimming only once answered left it at about 1.9 (548 MiB). Fixing the
threshold low instead did as well for uploads, but made every 8-image hit pay for fresh pages
(a quarter slower in the bench): only large bodies pay for this, and they are rare.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

TRIM_AFTER_BYTES = 1024 * 1024  # bodies at least this large trim the heap when done


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (``malloc_trim(0)``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
