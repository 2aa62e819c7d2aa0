"""glibc's malloc set to give large freed blocks back to the system, so that a CPU run's peak RSS is its live
tensors, what the estimate counts, and not those plus a heap of freed ones.

By default glibc serves a block below its mmap threshold from its heap, and the threshold rises to the largest
block freed so far (up to 32 MiB): after the first frees nearly every activation comes from the heap, and a freed
one keeps its pages there until a block that fits reuses them. How many pages stay follows the order of the
allocations, not the shapes the estimate reads (docs/memory.md: Bloom-1b4 LoRA peaked 16 % above the estimate,
20 % with gradient checkpointing). A fixed mmap threshold gives every block that large a mapping of its own,
unmapped when freed, as `MALLOC_MMAP_THRESHOLD_` would; set here through mallopt, so that no environment has to
be passed on. A fresh mapping's pages are faulted in when first written, one 4 KiB page at a time, which cost
15-20 % of a step; torch's own THP_MEM_ALLOC_ENABLE asks transparent huge pages for its blocks of 2 MiB and more,
a fault per 2 MiB, and with it the threshold measured no slower than the default (docs/memory.md).

Left alone: another C library, tcmalloc or jemalloc loaded (each returns memory its own way), and any malloc
setting of the user's (a `MALLOC_*_` threshold variable or a glibc.malloc tunable).
"""

from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 2 * 2**20  # the size from which torch asks for huge pages (THP_MEM_ALLOC_ENABLE)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the heap's free top kept: glibc's own ratio when it moves the threshold
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"
_set = False


def left_alone() -> str | None:
    """Why this process's allocator is not set here, or None where it is glibc's with its defaults."""
    try:
        os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return "not glibc"
    for other in ("tcmalloc", "jemalloc"):
        if other in os.environ.get("LD_PRELOAD", "") or other in _mapped_files():
            return f"{other} is loaded"
    given = [v for v in _USER_SETTINGS if v in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        given.append("GLIBC_TUNABLES")
    return f"{given[0]} is set" if given else None


def _mapped_files() -> str:
    try:
        with open("/proc/self/maps") as f:
            return f.read()
    except OSError:
        return ""


def return_freed_memory() -> bool:
    """Set the thresholds, once a process, before the model loads (and huge pages for torch's blocks, where
    torch is not imported yet). False where left alone (left_alone says why)."""
    global _set
    if _set or left_alone():
        return _set
    import ctypes

    libc = ctypes.CDLL(None)
    _set = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if _set:
        _huge_pages_for_tensors()
    return _set


def _huge_pages_for_tensors():
    """torch reads THP_MEM_ALLOC_ENABLE at its first allocation: set before it is imported, where the kernel has
    transparent huge pages, unless the user chose."""
    if "torch" in sys.modules or "THP_MEM_ALLOC_ENABLE" in os.environ:
        return
    try:
        with open(_THP) as f:
            if "[never]" in f.read():
                return
    except OSError:
        return
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
