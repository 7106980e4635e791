"""The CAMELS LH prior box of the two conditioning parameters and a Latin hypercube over it."""

import numpy as np

PRIOR_BOX = ((0.1, 0.5), (0.6, 1.0))
"""`((Ωm_min, Ωm_max), (σ8_min, σ8_max))`: the uniform prior of the CAMELS LH design (SPEC §4)."""


def latin_hypercube(n, box=PRIOR_BOX, rng=None):
    """`n` points `(n, D)` float64 on a Latin hypercube over `box` (`D` pairs `(low, high)`).

    Each axis is cut into `n` equal strata; every stratum holds exactly one point, placed
    uniformly inside it, and the strata are paired across axes by independent random
    permutations. `rng` is a `numpy.random.Generator` (a fresh default one if `None`).
    """
    rng = np.random.default_rng() if rng is None else rng
    low, high = np.asarray(box, dtype=np.float64).T
    strata = np.stack([rng.permutation(n) for _ in range(len(low))], axis=1)
    unit = (strata + rng.uniform(size=strata.shape)) / n
    return low + unit * (high - low)
