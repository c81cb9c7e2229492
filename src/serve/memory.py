"""How the process's C heap behaves: the glibc allocator settings the service runs with, and
handing freed memory back to the system after a burst."""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

logger = logging.getLogger(__name__)
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to tune
        return None


def tune_allocator() -> None:
    """Keep freed tensor buffers in the heap instead of returning them to the kernel.

    glibc otherwise unmaps large activations after every forward pass and page-faults them back
    in on the next (25,000 faults per batch of 4; the pass ~30% slower; BENCHMARKS.md). Up to
    ``TRIM_THRESHOLD_BYTES`` of free heap stays mapped for the next pass; more than that (a burst
    of large decodes) is trimmed, and :func:`release_free_memory` hands back the rest.
    """
    libc = _libc()
    if libc is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)
    libc.mallopt(m_trim_threshold, TRIM_THRESHOLD_BYTES)


def release_free_memory() -> None:
    """Return free pages of every malloc arena to the system (``malloc_trim(0)``).

    Called after large decodes: without it, memory freed inside the arenas of the decoding
    threads stays resident after a burst of large images.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
        logger.debug("returned free heap memory to the system")
