"""A training process sets glibc's malloc (memory/allocator.py) so that a freed activation-sized block goes back
to the system at once: RSS then follows the live tensors the estimate counts. A user's own allocator or malloc
settings are left alone."""

import os
import subprocess
import sys

import pytest

from llm_tuning.memory import allocator

# In a fresh process: an activation-sized block, freed, and how much RSS that gave back. Under glibc's defaults the
# first such block is mapped and its free raises the mmap threshold to its size; the second one then comes from
# the heap, below a small block that keeps the heap's top from being trimmed, and its pages stay when freed.
SCRIPT = r"""
import ctypes, os, sys
from llm_tuning.memory import allocator

if sys.argv[1] == "set":
    assert allocator.return_freed_memory(), allocator.left_alone()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 2 * allocator.MMAP_THRESHOLD


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


first = libc.malloc(size)
ctypes.memset(first, 1, size)
libc.free(first)
block = libc.malloc(size)
ctypes.memset(block, 1, size)
pin = libc.malloc(4096)
before = rss()
libc.free(block)
print(before - rss(), os.environ.get("THP_MEM_ALLOC_ENABLE"))
"""


def _returned(mode: str) -> tuple[int, str]:
    """(bytes of RSS the free gave back, THP_MEM_ALLOC_ENABLE afterwards) in a fresh process."""
    drop = ("LD_PRELOAD", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in drop}
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    returned, thp = r.stdout.split()
    return int(returned), thp


@pytest.mark.skipif(allocator.left_alone() == "not glibc", reason="glibc's malloc only")
def test_a_freed_block_goes_back_to_the_system_once_set():
    size = 2 * allocator.MMAP_THRESHOLD
    returned, thp = _returned("default")
    assert returned < size // 10 and thp == "None"  # glibc's default keeps the freed block's pages in its heap
    returned, thp = _returned("set")
    assert returned >= size * 9 // 10
    # torch, imported after it, asks for huge pages for its large blocks (a fault per 2 MiB, not per 4 KiB)
    # where the kernel has them
    thp_file = "/sys/kernel/mm/transparent_hugepage/enabled"
    huge = os.path.exists(thp_file) and "[never]" not in open(thp_file).read()
    assert thp == ("1" if huge else "None")


def test_a_users_own_allocator_settings_are_left_alone(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "LD_PRELOAD", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    if allocator.left_alone() == "not glibc":
        pytest.skip("glibc's malloc only")
    assert allocator.left_alone() is None
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator.left_alone() == "MALLOC_TRIM_THRESHOLD_ is set"
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert allocator.left_alone() == "GLIBC_TUNABLES is set"


TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_tcmalloc_preloaded_is_left_alone():
    if not os.path.exists(TCMALLOC):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{TCMALLOC} missing: .ci/run installs libtcmalloc-minimal4")
        pytest.skip("libtcmalloc-minimal4 is not installed (apt-get install libtcmalloc-minimal4)")
    code = "from llm_tuning.memory import allocator; print(allocator.left_alone(), allocator.return_freed_memory())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "LD_PRELOAD": TCMALLOC}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tcmalloc", "is", "loaded", "False"]
