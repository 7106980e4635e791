"""The posterior over a rectangular grid of physical parameters θ = (Ωm, σ8), and its summaries.

A grid is `D` increasing 1-D axes; grid point `(i, j)` stands for the cell between the midpoints
to its neighbours (the outer cells extend half a spacing beyond the outer points). The default
grid puts `n` points per axis at the cell centres of the prior box, so a flat prior on the points
is the uniform prior on the box. The prior is flat on the grid unless a log-density is given:
grids reaching outside the training box are allowed (the model then extrapolates) and flagged.

Probabilities are masses per grid point (they sum to 1); densities divide by the cell volume.
The HPD (highest posterior density) region at level `a` is the set of cells whose
`credible_level`, the posterior mass of the cells strictly denser than them, is below `a`.
Log-likelihoods that are not finite are not normalised away silently: they get zero mass and are
counted in `n_nonfinite`. Normalisation and summaries are in float64.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jglow.data import PRIOR_BOX
from jglow.posterior import checks

LEVELS = (0.68, 0.95)
"""The credibility levels of the HPD regions reported."""


def parameter_names(dim: int) -> tuple:
    """`("Omega_m", "sigma_8")` for two parameters, else `("theta_0", …)`."""
    return ("Omega_m", "sigma_8") if dim == 2 else tuple(f"theta_{i}" for i in range(dim))


def grid_axes(grid=30, box=PRIOR_BOX) -> tuple:
    """The axes of a grid: `D` float64 1-D arrays of physical parameter values.

    Args:
      grid: an int `n` (`n` points per axis), a sequence of `D` ints (points per axis), both at
        the cell centres of `box`; or a sequence of `D` 1-D arrays, the axes themselves (any
        increasing values, inside or outside `box`).
      box: `((low, high), …)` per parameter, default `PRIOR_BOX`.
    """
    dim = len(box)
    names = parameter_names(dim)
    if isinstance(grid, (int, np.integer)):
        grid = (grid,) * dim
    if all(isinstance(g, (int, np.integer)) for g in grid):
        counts = tuple(grid)
        if len(counts) != dim or not all(isinstance(n, (int, np.integer)) and n >= 2 for n in counts):
            raise ValueError(f"grid = {counts!r}: expected {dim} point counts (ints >= 2), one "
                             f"per parameter {names}")
        grid = [low + (np.arange(n) + 0.5) * (high - low) / n for (low, high), n in zip(box, counts)]
    return checks.grid_axes(grid, dim, names)


def grid_points(axes) -> np.ndarray:
    """All points of the grid, `(M, D)` float64, the first axis varying slowest (`ij` order)."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def cell_edges(axis) -> np.ndarray:
    """`(n + 1,)` edges of the cells of the points of `axis` `(n,)`: midpoints, half a spacing out."""
    middle = 0.5 * (axis[1:] + axis[:-1])
    return np.concatenate([[2 * axis[0] - middle[0]], middle, [2 * axis[-1] - middle[-1]]])


def cell_volumes(axes) -> np.ndarray:
    """Grid-shaped volumes of the cells (products of cell widths, physical units)."""
    widths = [np.diff(cell_edges(axis)) for axis in axes]
    return np.prod(np.stack(np.meshgrid(*widths, indexing="ij")), axis=0)


def mass_strictly_denser(probability, density) -> np.ndarray:
    """For every cell, the total `probability` of the cells with a larger `density` (same shape)."""
    order = np.argsort(-density, axis=None, kind="stable")
    sorted_density = density.ravel()[order]
    cumulative = np.concatenate([[0.0], np.cumsum(probability.ravel()[order])])
    first_equal = np.searchsorted(-sorted_density, -density.ravel(), side="left")
    return np.minimum(cumulative[first_equal], 1.0).reshape(density.shape)


@dataclasses.dataclass(frozen=True, eq=False)
class GridPosterior:
    """The normalised posterior of one map on a grid (module docstring).

    Attributes:
      axes: `D` float64 arrays `(n_d,)`, the physical parameter values of the grid.
      log_likelihood: grid-shaped float64 nats, as evaluated (non-finite values kept).
      log_prior: grid-shaped float64 log prior (up to a constant).
      probability: grid-shaped posterior mass per point, summing to 1.
      credible_level: grid-shaped mass of the cells strictly denser than each cell.
      n_nonfinite: how many log-likelihoods were NaN or infinite (given zero mass).
      box: the training prior box `((low, high), …)`.
      names: parameter names, `("Omega_m", "sigma_8")`.
    """

    axes: tuple
    log_likelihood: np.ndarray
    log_prior: np.ndarray
    probability: np.ndarray
    credible_level: np.ndarray
    n_nonfinite: int
    box: tuple
    names: tuple

    @property
    def density(self) -> np.ndarray:
        """Posterior density per unit parameter volume, grid-shaped."""
        return self.probability / cell_volumes(self.axes)

    @property
    def marginals(self) -> tuple:
        """`D` arrays `(n_d,)`: the marginal mass per point of each axis (each sums to 1)."""
        dim = len(self.axes)
        return tuple(self.probability.sum(axis=tuple(a for a in range(dim) if a != d))
                     for d in range(dim))

    @property
    def marginal_densities(self) -> tuple:
        """`D` arrays `(n_d,)`: the marginal densities per unit of each parameter."""
        return tuple(m / np.diff(cell_edges(axis)) for m, axis in zip(self.marginals, self.axes))

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean `(D,)`."""
        return np.array([m @ axis for m, axis in zip(self.marginals, self.axes)])

    @property
    def std(self) -> np.ndarray:
        """Posterior standard deviation `(D,)`."""
        return np.sqrt([m @ np.square(axis - mu)
                        for m, axis, mu in zip(self.marginals, self.axes, self.mean)])

    @property
    def map_estimate(self) -> np.ndarray:
        """The grid point of highest posterior density `(D,)`."""
        index = np.unravel_index(np.argmax(self.density), self.density.shape)
        return np.array([axis[i] for axis, i in zip(self.axes, index)])

    @property
    def outside_box(self) -> bool:
        """Whether any grid point lies outside the training prior box."""
        return bool(self._outside_box_mask().any())

    @property
    def mass_outside_box(self) -> float:
        """Posterior mass of the grid points outside the training prior box."""
        return float(self.probability[self._outside_box_mask()].sum())

    def _outside_box_mask(self):
        outside = [(axis < low) | (axis > high) for axis, (low, high) in zip(self.axes, self.box)]
        return np.logical_or.reduce(np.meshgrid(*outside, indexing="ij"))

    def hpd_mask(self, level: float) -> np.ndarray:
        """Grid-shaped bool: the cells of the HPD region of credibility `level`."""
        return self.credible_level < level

    def hpd_volume(self, level: float) -> float:
        """Parameter-space volume (area for D = 2) of the HPD region at `level`."""
        return float(cell_volumes(self.axes)[self.hpd_mask(level)].sum())

    def hpd_density(self, level: float) -> float:
        """The density on the boundary of the HPD region at `level` (its lowest density)."""
        return float(self.density[self.hpd_mask(level)].min())

    def cell_index(self, theta):
        """Index of the grid cell containing `theta` `(D,)`, or `None` outside the grid."""
        index = []
        for axis, value in zip(self.axes, np.asarray(theta, np.float64)):
            edges = cell_edges(axis)
            if not edges[0] <= value <= edges[-1]:
                return None
            index.append(min(int(np.searchsorted(edges, value, side="right")) - 1, axis.size - 1))
        return tuple(index)

    def credibility(self, theta) -> float:
        """The HPD rank of `theta`: the mass strictly denser than its cell (1 outside the grid).

        `theta` lies in the HPD region at level `a` iff `credibility(theta) < a`; for truths drawn
        from the prior and a calibrated posterior it is uniform on [0, 1] (up to the grid).
        """
        index = self.cell_index(theta)
        return 1.0 if index is None else float(self.credible_level[index])

    def covers(self, theta, level: float) -> bool:
        """Whether the HPD region at `level` contains `theta`."""
        return self.credibility(theta) < level

    def marginal_cdf(self, theta) -> np.ndarray:
        """`(D,)` marginal posterior CDF at each coordinate of `theta` (mass spread uniformly
        over each cell): the per-parameter rank statistic of a truth, uniform if calibrated."""
        cdfs = []
        for marginal, axis, value in zip(self.marginals, self.axes, np.asarray(theta, np.float64)):
            edges = cell_edges(axis)
            covered = np.clip((value - edges[:-1]) / np.diff(edges), 0.0, 1.0)
            cdfs.append(float(marginal @ covered))
        return np.array(cdfs)

    def summary(self, truth=None) -> dict:
        """A JSON-serialisable dict of the summaries (and of the truth's ranks if given)."""
        out = {
            "names": list(self.names),
            "grid_shape": list(self.probability.shape),
            "grid_range": [[float(axis[0]), float(axis[-1])] for axis in self.axes],
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "map": self.map_estimate.tolist(),
            "hpd": {str(level): {"volume": self.hpd_volume(level),
                                 "density_level": self.hpd_density(level)} for level in LEVELS},
            "outside_box": self.outside_box,
            "mass_outside_box": self.mass_outside_box,
            "n_nonfinite": self.n_nonfinite,
            "box": [list(interval) for interval in self.box],
        }
        if truth is not None:
            out["truth"] = {"theta": np.asarray(truth, np.float64).tolist(),
                            "credibility": self.credibility(truth),
                            "covered": {str(level): self.covers(truth, level) for level in LEVELS},
                            "marginal_cdf": self.marginal_cdf(truth).tolist()}
        return out


def posterior_on_grid(axes, log_likelihood, log_prior, box=PRIOR_BOX) -> GridPosterior:
    """Normalise `log_likelihood + log_prior` (both grid-shaped) into a `GridPosterior`.

    Non-finite log-likelihoods get zero mass and are counted. Raises `ValueError` if no grid
    point has a finite log-likelihood and a non-zero prior.
    """
    shape = tuple(axis.size for axis in axes)
    log_likelihood = np.asarray(log_likelihood, np.float64).reshape(shape)
    log_prior = np.asarray(log_prior, np.float64).reshape(shape)
    finite = np.isfinite(log_likelihood)
    usable = finite & (log_prior > -np.inf)
    if not usable.any():
        raise ValueError(f"no grid point has a finite log-likelihood and a non-zero prior "
                         f"({int((~finite).sum())} of {finite.size} log-likelihoods are not "
                         f"finite); expected at least one")
    log_post = np.where(usable, log_likelihood + log_prior, -np.inf)
    weights = np.exp(log_post - log_post.max())
    probability = weights / weights.sum()
    credible_level = mass_strictly_denser(probability, probability / cell_volumes(axes))
    return GridPosterior(axes, log_likelihood, log_prior, probability, credible_level,
                         int((~finite).sum()), tuple(tuple(map(float, b)) for b in box),
                         parameter_names(len(axes)))


def prior_on_grid(log_prior, axes) -> np.ndarray:
    """The grid-shaped log prior: `None` (flat), a callable of physical `thetas` `(M, D)` →
    `(M,)`, or a grid-shaped array. NaN or +inf values are an error; -inf means zero prior."""
    shape = tuple(axis.size for axis in axes)
    if log_prior is None:
        return np.zeros(shape)
    if callable(log_prior):
        log_prior = np.asarray(log_prior(jnp.asarray(grid_points(axes), jnp.float32)), np.float64)
    log_prior = np.asarray(log_prior, np.float64)
    if log_prior.size != np.prod(shape) or log_prior.ndim not in (1, len(shape)):
        raise ValueError(f"log_prior has shape {log_prior.shape}; expected the grid shape {shape} "
                         f"(or ({int(np.prod(shape))},) from a callable)")
    if np.isnan(log_prior).any() or np.isposinf(log_prior).any():
        raise ValueError("log_prior has NaN or +inf values; expected finite values or -inf "
                         "(zero prior)")
    return log_prior.reshape(shape)


def grid_posteriors(log_likelihood, maps, grid=30, box=PRIOR_BOX, log_prior=None,
                    map_batch=16, progress=None) -> list:
    """The grid posterior of each of several raw maps.

    Args:
      log_likelihood: `(maps (B, H, W), thetas (M, D)) -> (B, M)` nats
        (`jglow.posterior.likelihood`).
      maps: raw maps `(B, H, W)`, finite and positive (else `ValueError` naming the map).
      grid: see `grid_axes`; default 30×30 at the cell centres of `box`.
      box: the training prior box, for the default grid and the outside-box flag.
      log_prior: see `prior_on_grid`; default flat on the grid.
      map_batch: maps per likelihood call (they share the work that depends only on θ).
      progress: a label to show a progress bar over the calls (stderr) under; None for none.
    Returns:
      A list of `B` `GridPosterior`.
    """
    maps = checks.raw_maps(maps)
    axes = grid_axes(grid, box)
    prior = prior_on_grid(log_prior, axes)
    points = jnp.asarray(grid_points(axes), jnp.float32)
    posteriors = []
    starts = range(0, maps.shape[0], map_batch)
    for start in tqdm(starts, desc=progress, unit="call", disable=progress is None, leave=False):
        batch = maps[start:start + map_batch]
        table = np.asarray(log_likelihood(jnp.asarray(batch), points))
        if table.shape != (batch.shape[0], points.shape[0]):
            raise ValueError(f"log_likelihood returned shape {table.shape}; expected "
                             f"{(batch.shape[0], points.shape[0])} (maps, grid points)")
        posteriors += [posterior_on_grid(axes, row, prior, box) for row in table]
    return posteriors


def grid_posterior(log_likelihood, single_map, grid=30, box=PRIOR_BOX,
                   log_prior=None) -> GridPosterior:
    """The grid posterior of one raw map `(H, W)`; arguments as `grid_posteriors`."""
    if np.ndim(single_map) != 2:
        raise ValueError(f"single_map must have shape (H, W), got {np.shape(single_map)}; use "
                         f"grid_posteriors for a batch")
    return grid_posteriors(log_likelihood, np.asarray(single_map)[None], grid, box, log_prior)[0]
