"""The CAMELS LH prior box of the two conditioning parameters, the affine map between the box
and `[−1, 1]^D`, and a Latin hypercube over the box."""

import numpy as np

PRIOR_BOX = ((0.1, 0.5), (0.6, 1.0))
"""`((Ωm_min, Ωm_max), (σ8_min, σ8_max))`: the uniform prior of the CAMELS LH design."""


def to_unit_box(theta, low, high):
    """Physical parameters `theta (..., D)` → box coordinates `2 (θ − low) / (high − low) − 1`,
    in `[−1, 1]` on the box `[low, high]` (`low`, `high`: `(D,)`); numpy or jax arrays."""
    return 2.0 * (theta - low) / (high - low) - 1.0


def from_unit_box(u, low, high):
    """The inverse of `to_unit_box`: box coordinates `u (..., D)` → physical parameters."""
    return low + 0.5 * (u + 1.0) * (high - low)


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
