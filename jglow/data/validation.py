"""Reading `.npy` files of numbers, scanning (possibly memory-mapped) map stacks in bounded
chunks, and the positivity check."""

import os

import numpy as np

from jglow.errors import InputError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a `.npy` file (`numpy.save`) and of a zip archive such as `.npz`."""


def load_numbers(path, flag: str) -> np.ndarray:
    """The array of real numbers in the `.npy` file `path`, memory-mapped (read-only).

    Raises `InputError` naming `flag` and `path` for a folder, an `.npz` archive, a file that is
    not `.npy`, or an array of other values (strings, Python objects, complex numbers), read
    from its header before any data; `FileNotFoundError` for an absent file.
    """
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: a folder; expected a .npy file of one array "
                         f"(numpy.save)")
    with open(path, "rb") as handle:
        magic = handle.read(len(NPY_MAGIC))
        if magic.startswith(ZIP_MAGIC):
            raise InputError(f"{flag} {path}: an .npz archive; expected a .npy file of one "
                             f"array (numpy.save)")
        if magic != NPY_MAGIC:
            raise InputError(f"{flag} {path}: not a .npy file; expected one array saved by "
                             f"numpy.save")
        handle.seek(0)
        major, _ = np.lib.format.read_magic(handle)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        _, _, dtype = read_header(handle)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(f"{flag} {path}: holds values of dtype {dtype}; expected real numbers")
    return np.load(path, mmap_mode="r")


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
