"""Fixed-size batches padded by repeating the last row (`jglow.batching`), and the grid's chunks."""

import jax.numpy as jnp
import numpy as np
import pytest

from jglow.batching import padded_rows
from jglow.posterior.grid import map_in_chunks


def test_padded_rows_repeat_the_last_row_past_the_end():
    np.testing.assert_array_equal(padded_rows(0, 4, 10), [0, 1, 2, 3])
    np.testing.assert_array_equal(padded_rows(8, 4, 10), [8, 9, 9, 9])
    np.testing.assert_array_equal(padded_rows(0, 3, 1), [0, 0, 0])


def test_padded_rows_refuse_an_empty_stack_naming_the_arguments():
    with pytest.raises(ValueError, match=r"n >= 1 rows.*got start=0, size=4, n=0"):
        padded_rows(0, 4, 0)


def test_chunks_padded_with_the_last_row_give_the_unchunked_result():
    xs = jnp.arange(14.0).reshape(7, 2)
    calls = []

    def row_sums(chunk):
        calls.append(chunk.shape)
        return jnp.sum(chunk, axis=1) ** 2

    out = map_in_chunks(row_sums, xs, 3)  # 7 rows in 3 chunks of 3: two padded rows dropped
    assert calls == [(3, 2)] and out.shape == (7,)
    np.testing.assert_array_equal(out, jnp.sum(xs, axis=1) ** 2)
