"""Hand memory that the allocator keeps after XLA compilation back to the operating system.

Compiling the paper model's training step takes about 1.4 GB of host memory, which glibc's
malloc keeps mapped after the compiler frees it: the process then holds ~2 GB while training
needs ~1.3 GB (benchmarks/bench_train.py). `release_freed_memory` asks glibc to return the
free pages (`malloc_trim(0)`); elsewhere it does nothing.
"""

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)


def release_freed_memory() -> bool:
    """Returns free heap pages to the OS (glibc only); True when glibc did release some."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
