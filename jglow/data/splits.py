"""Splitting a `MapSet` by simulation: all maps of a simulation land in the same split."""

import numpy as np


def split_by_simulation(mapset, fractions=(0.8, 0.1, 0.1), seed=0):
    """Split `mapset` into parts holding the given fractions of its simulations.

    The distinct simulation indices are shuffled by `numpy.random.default_rng(seed)` and cut
    at `round(cumsum(fractions) · S)` (`S` simulations), so a part may be empty if `S` is small.
    Maps keep their original order inside each part.

    Args:
      mapset: a `MapSet`.
      fractions: non-negative fractions summing to 1 (e.g. train, validation, test).
      seed: int; the split is a deterministic function of it.
    Returns:
      A tuple of `len(fractions)` `MapSet`s.
    """
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions.tolist()}")
    sims = np.random.default_rng(seed).permutation(np.unique(mapset.sim))
    cuts = np.round(np.cumsum(fractions)[:-1] * len(sims)).astype(int)
    return tuple(mapset.take(np.flatnonzero(np.isin(mapset.sim, part)))
                 for part in np.split(sims, cuts))
