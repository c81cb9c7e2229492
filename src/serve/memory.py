"""How the process's C heap behaves: the glibc allocator settings the service runs with."""

from __future__ import annotations

import ctypes
import sys


def tune_allocator() -> None:
    """Keep freed tensor buffers in the heap instead of returning them to the kernel.

    glibc otherwise unmaps large activations after every forward pass and page-faults them back
    in on the next (25,000 faults per batch of 4; the pass ~30% slower; BENCHMARKS.md). The
    cost is that resident memory keeps its high-water mark.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 4 * 1024 * 1024 * 1024 - 1)
