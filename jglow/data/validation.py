"""Scanning (possibly memory-mapped) map stacks in bounded chunks, and the positivity check."""

import numpy as np

from jglow.errors import InputError

CHUNK_BYTES = 1 << 26
"""About 64 MiB of maps are read at a time, so a 3.75 GB memory map is never loaded whole."""


def map_chunks(maps):
    """Slices of consecutive maps of the stack `maps` `(N, H, W)`, about `CHUNK_BYTES` each."""
    n = maps.shape[0]
    bytes_per_map = max(1, int(np.prod(maps.shape[1:])) * maps.dtype.itemsize)
    step = max(1, CHUNK_BYTES // bytes_per_map)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def check_positive_chunk(chunk, offset=0, source="maps"):
    """Raise `InputError` if a map of `chunk` `(n, H, W)` has a pixel that is not finite and > 0.

    The message names `source`, the index of the first bad map (`offset` + its index in the
    chunk), the bad value and its pixel.
    """
    chunk = np.asarray(chunk)
    ok = np.isfinite(chunk) & (chunk > 0)
    bad_maps = ~ok.reshape(chunk.shape[0], -1).all(axis=1)
    if bad_maps.any():
        i = int(np.argmax(bad_maps))
        row, col = np.unravel_index(int(np.argmin(ok[i])), ok.shape[1:])
        raise InputError(
            f"{source}: map {offset + i} has pixel value {float(chunk[i, row, col])} at "
            f"(row {row}, column {col}); expected strictly positive, finite values")


def check_positive_maps(maps, source="maps"):
    """Raise `InputError` naming the first map of `maps` `(N, H, W)` with a non-positive or
    non-finite pixel; scans in chunks of about `CHUNK_BYTES`."""
    for part in map_chunks(maps):
        check_positive_chunk(maps[part], part.start, source)
