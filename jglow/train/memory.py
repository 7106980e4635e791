"""Hand memory that the allocator keeps after XLA compilation back to the operating system.

Compiling the paper model's training step takes about 0.2 GB of host memory (1.4 GB with
XLA:CPU's default fusion emitters, see `jglow.compilation`), which glibc's malloc keeps mapped
after the compiler frees it: the process holds 0.84 GB after compiling and 0.73 GB once it is
released (benchmarks/bench_train.py). `release_freed_memory` asks glibc to return the free
pages (`malloc_trim(0)`); elsewhere it does nothing.
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
