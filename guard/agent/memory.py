"""The agent's heap: file-sized buffers from mmap, and freed memory given back when idle."""

from __future__ import annotations

_M_MMAP_THRESHOLD = -3      # glibc mallopt() parameters
_M_ARENA_MAX = -8


def tune_malloc() -> None:
    """Serve file-sized buffers (>= 2 MiB) from mmap, so freeing one returns it at once.

    glibc otherwise raises its mmap threshold to the largest buffer freed so far, and a
    10 MB buffer freed in a worker thread's arena then stays resident: malloc_trim() does
    not shrink the top of a thread arena. Measured: 51 -> 40 MB RSS after ten 10 MB scans,
    no measurable cost per scan. Fixing the threshold also stops its dynamic growth.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 2 << 20)
        # Two heaps for a dozen threads: the GIL serialises most allocations anyway, and
        # every extra heap keeps its own freed-but-resident pages.
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass                                # not glibc: nothing to tune


def release_memory() -> None:
    """glibc keeps freed heap for reuse; after a burst of large files, return it."""
    import gc
    gc.collect()          # parser objects left in reference cycles hold file buffers
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass                                # not glibc: nothing to give back
