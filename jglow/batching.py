"""Fixed-size batches of a stack of rows, so that a compiled function sees one shape."""

import numpy as np


def padded_rows(start: int, size: int, n: int) -> np.ndarray:
    """Indices `(size,)` int of rows `start, …, start + size − 1` of an `n`-row stack, those at
    or past the end repeating its last row `n − 1` (the padding of a last, partial batch)."""
    if n < 1 or start < 0 or size < 1:
        raise ValueError(f"padded_rows needs n >= 1 rows, start >= 0 and size >= 1; got "
                         f"start={start}, size={size}, n={n}")
    return np.minimum(np.arange(start, start + size), n - 1)
