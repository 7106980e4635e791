"""The posterior over a rectangular grid of physical parameters θ = (Ωm, σ8), and its summaries.

A grid is `D` increasing 1-D axes; grid point `(i, j)` stands for the cell between the midpoints
to its neighbours (the outer cells extend half a spacing beyond the outer points). The default
grid puts `n` points per axis at the cell centres of the prior box, so a flat prior on the points
is the uniform prior on the box. The prior is flat on the grid unless a log-density is given:
grids reaching outside the training box are allowed (the model then extrapolates) and flagged.

Each cell's posterior density is `exp(log_posterior_i − log Z)` (`log_posterior = log_likelihood
+ log_prior`, nats) with the Riemann normaliser `Z = Σ_i exp(log_posterior_i) · volume_i`, and its
mass is density times volume (the masses sum to 1). The HPD (highest posterior density) region at
level `a` is the set of cells whose `credible_level`, the posterior mass of the cells strictly
denser than them, is below `a`. The credible level of a truth (`GridPosterior.credibility`) is the
mass of the cells denser than the posterior density at the truth itself, from the likelihood
evaluated there (`grid_posteriors(..., truths=...)`), not from the cell it falls in.

A zoomed grid (`grid_posteriors(..., zoom=True)`) spends the evaluations of a plain grid on a
coarse pass over the box and a fine grid over the region holding all but `tail` of the coarse
posterior mass (`zoom_counts`, `zoom_region`), so that narrow posteriors are resolved.

Log-likelihoods that are not finite are not normalised away silently: they get zero mass and are
counted in `n_nonfinite`. Normalisation and summaries are in float64.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import scipy.special
from tqdm import tqdm

from jglow import checks
from jglow.data import PRIOR_BOX

LEVELS = (0.68, 0.95)
"""The credibility levels of the HPD regions reported."""

ZOOM_TAIL = 1e-6
"""The coarse posterior mass a zoomed grid may leave outside its fine grid."""


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
    if isinstance(grid, (int, np.integer)) or all(isinstance(g, (int, np.integer)) for g in grid):
        counts = checks.point_counts(grid, dim, names)
        grid = [low + (np.arange(n) + 0.5) * (high - low) / n
                for (low, high), n in zip(box, counts)]
    return checks.grid_axes(grid, dim, names)


def grid_points(axes) -> np.ndarray:
    """All points of the grid, `(M, D)` float64, the first axis varying slowest (`ij` order)."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def cell_edges(axis) -> np.ndarray:
    """`(n + 1,)` edges of the cells of the points of `axis` `(n,)`: the midpoints, and half a
    spacing out at both ends."""
    middle = 0.5 * (axis[1:] + axis[:-1])
    return np.concatenate([[2 * axis[0] - middle[0]], middle, [2 * axis[-1] - middle[-1]]])


def cell_volumes(axes) -> np.ndarray:
    """Grid-shaped volumes of the cells (products of cell widths, physical units)."""
    widths = [np.diff(cell_edges(axis)) for axis in axes]
    return np.prod(np.stack(np.meshgrid(*widths, indexing="ij")), axis=0)


def mass_strictly_denser(probability, density) -> np.ndarray:
    """For every cell, the total `probability` of the cells with a larger `density` (same shape;
    only the order matters, so any increasing function of the density will do)."""
    order = np.argsort(-density, axis=None, kind="stable")
    sorted_density = density.ravel()[order]
    cumulative = np.concatenate([[0.0], np.cumsum(probability.ravel()[order])])
    first_equal = np.searchsorted(-sorted_density, -density.ravel(), side="left")
    return np.minimum(cumulative[first_equal], 1.0).reshape(density.shape)


@dataclasses.dataclass(frozen=True)
class Zoom:
    """Where the fine grid of a zoomed posterior (`grid_posteriors(..., zoom=True)`) was placed.

    Attributes:
      coarse_shape: points per axis of the coarse pass over the box.
      region: `((low, high), …)` physical bounds of the fine grid (the edges of its outer cells).
      tail: the coarse posterior mass the region was allowed to leave out.
      touches_box: whether the padded region reached an edge of the box (and was clipped there).
    """

    coarse_shape: tuple
    region: tuple
    tail: float
    touches_box: bool

    def summary(self) -> dict:
        """A JSON-serialisable dict of the fields."""
        return {"coarse_shape": list(self.coarse_shape),
                "region": [list(interval) for interval in self.region], "tail": self.tail,
                "touches_box": self.touches_box}


@dataclasses.dataclass(frozen=True, eq=False)
class GridPosterior:
    """The normalised posterior of one map on a grid (module docstring).

    Attributes:
      axes: `D` float64 arrays `(n_d,)`, the physical parameter values of the grid.
      log_likelihood: grid-shaped float64 nats, as evaluated (non-finite values kept).
      log_prior: grid-shaped float64 log prior (up to a constant).
      probability: grid-shaped posterior mass per cell, summing to 1.
      credible_level: grid-shaped mass of the cells strictly denser than each cell.
      n_nonfinite: how many log-likelihoods were NaN or infinite (given zero mass); on a zoomed
        grid, those of the coarse pass included.
      box: the training prior box `((low, high), …)`.
      names: parameter names, `("Omega_m", "sigma_8")`.
      truth: `(D,)` float64 physical truth whose likelihood was evaluated, or `None`.
      truth_log_likelihood: `log p(map | truth)` in nats (NaN as evaluated), or `None`.
      truth_log_prior: the log prior at the truth, on the scale of `log_prior`, or `None`.
      zoom: where a zoomed grid was placed (`Zoom`), `None` for a plain grid.
    """

    axes: tuple
    log_likelihood: np.ndarray
    log_prior: np.ndarray
    probability: np.ndarray
    credible_level: np.ndarray
    n_nonfinite: int
    box: tuple
    names: tuple
    truth: np.ndarray | None = None
    truth_log_likelihood: float | None = None
    truth_log_prior: float | None = None
    zoom: Zoom | None = None

    @property
    def log_posterior(self) -> np.ndarray:
        """Grid-shaped `log_likelihood + log_prior` (nats), `-inf` where the mass is zero."""
        usable = np.isfinite(self.log_likelihood) & (self.log_prior > -np.inf)
        return np.where(usable, self.log_likelihood + self.log_prior, -np.inf)

    @property
    def log_normaliser(self) -> float:
        """`log Z`, `Z = Σ_i exp(log_posterior_i) · volume_i` (the Riemann sum of the grid), so
        that the density of cell `i` is `exp(log_posterior_i − log Z)`."""
        return float(scipy.special.logsumexp(self.log_posterior + np.log(cell_volumes(self.axes))))

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
    def cells_per_std(self) -> np.ndarray:
        """`(D,)` posterior standard deviation over the mean cell width of each axis: how well
        the grid resolves the posterior (below about 1, means and widths are biased)."""
        return self.std / np.array([np.mean(np.diff(cell_edges(axis))) for axis in self.axes])

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

    @property
    def zoom_touches_box(self) -> bool | None:
        """Whether the region of a zoomed grid reached the box edge; `None` for a plain grid."""
        return None if self.zoom is None else self.zoom.touches_box

    def _outside_box_mask(self):
        outside = [(axis < low) | (axis > high) for axis, (low, high) in zip(self.axes, self.box)]
        return np.logical_or.reduce(np.meshgrid(*outside, indexing="ij"))

    def in_box(self, theta) -> bool:
        """Whether `theta` `(D,)` lies in the training prior box (edges included)."""
        return all(low <= t <= high for t, (low, high) in zip(np.asarray(theta, np.float64),
                                                                self.box))

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

    def credible_level_at(self, log_likelihood: float, log_prior: float = 0.0) -> float:
        """The HPD credible level of a point with this `log_likelihood` (nats) and `log_prior`
        (the scale of `self.log_prior`): the mass of the cells whose density is greater than
        the posterior density there, `exp(log_likelihood + log_prior − log Z)` with the grid's
        `log Z`. A NaN or `-inf` value is a zero density: level 1."""
        value = float(log_likelihood) + float(log_prior)
        if np.isnan(value) or value == -np.inf:
            return 1.0
        return float(min(self.probability[self.log_posterior > value].sum(), 1.0))

    def evaluated_at(self, theta) -> bool:
        """Whether `theta` `(D,)` is the truth whose likelihood was evaluated (to 1e-6)."""
        return self.truth is not None and bool(
            np.allclose(np.asarray(theta, np.float64), self.truth, rtol=1e-6, atol=0.0))

    def credibility(self, theta=None) -> float:
        """The HPD credible level of the evaluated truth (`theta`, default `self.truth`, must be
        it): the posterior mass of the cells denser than the posterior density at the truth.

        The truth lies in the HPD region at level `a` iff `credibility() < a`; for truths drawn
        from the prior and a calibrated posterior it is uniform on [0, 1] (up to the grid's
        Riemann sums). A truth outside the box has level 1; one inside the box but outside the
        grid (a zoomed grid) is ranked by its density like any other.

        Raises:
          ValueError: no truth was evaluated (`grid_posteriors(..., truths=...)`), or `theta`
            is another point (`cell_credibility` gives the value snapped to its cell).
        """
        if self.truth is None:
            raise ValueError("this posterior has no evaluated truth; expected one from "
                             "grid_posteriors(..., truths=...) (cell_credibility(theta) gives "
                             "the value snapped to the grid cell)")
        if theta is not None and not self.evaluated_at(theta):
            raise ValueError(f"theta = {np.asarray(theta).tolist()} is not the evaluated truth "
                             f"{self.truth.tolist()}; expected that truth (evaluate another "
                             f"point with grid_posteriors(..., truths=...))")
        if not self.in_box(self.truth):
            return 1.0
        return self.credible_level_at(self.truth_log_likelihood, self.truth_log_prior)

    def cell_credibility(self, theta) -> float:
        """The credible level of `theta` `(D,)` snapped to its grid cell: the mass strictly
        denser than the cell holding it (1 outside the grid). Biased where the posterior is not
        resolved by the grid; `credibility` is the level at the truth itself."""
        index = self.cell_index(theta)
        return 1.0 if index is None else float(self.credible_level[index])

    def covers(self, theta, level: float) -> bool:
        """Whether the HPD region at `level` contains the evaluated truth `theta`."""
        return self.credibility(theta) < level

    @property
    def truth_log_density(self) -> float:
        """`log` of the posterior density at the evaluated truth, per unit parameter volume."""
        if self.truth is None:
            raise ValueError("this posterior has no evaluated truth; expected one from "
                             "grid_posteriors(..., truths=...)")
        return self.truth_log_likelihood + self.truth_log_prior - self.log_normaliser

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
        """A JSON-serialisable dict of the summaries, and of the ranks of `truth` `(D,)`
        (default the evaluated truth, if any). The truth's `credibility`, `covered` and
        `log_density` need the evaluated truth; `cell_credibility` is the snapped value."""
        truth = self.truth if truth is None else truth
        out = {
            "names": list(self.names),
            "grid_shape": list(self.probability.shape),
            "grid_range": [[float(axis[0]), float(axis[-1])] for axis in self.axes],
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "cells_per_std": self.cells_per_std.tolist(),
            "map": self.map_estimate.tolist(),
            "hpd": {str(level): {"volume": self.hpd_volume(level),
                                 "density_level": self.hpd_density(level)} for level in LEVELS},
            "outside_box": self.outside_box,
            "mass_outside_box": self.mass_outside_box,
            "n_nonfinite": self.n_nonfinite,
            "box": [list(interval) for interval in self.box],
            "zoom": None if self.zoom is None else self.zoom.summary(),
            "zoom_touches_box": self.zoom_touches_box,
        }
        if truth is not None:
            out["truth"] = {"theta": np.asarray(truth, np.float64).tolist(),
                            "cell_credibility": self.cell_credibility(truth),
                            "marginal_cdf": self.marginal_cdf(truth).tolist()}
            if self.evaluated_at(truth):
                log_density = self.truth_log_density
                out["truth"].update(
                    credibility=self.credibility(),
                    covered={str(level): self.covers(truth, level) for level in LEVELS},
                    log_likelihood=_finite_or_none(self.truth_log_likelihood),
                    log_density=_finite_or_none(log_density))
        return out


def _finite_or_none(value: float):
    return float(value) if np.isfinite(value) else None


def posterior_on_grid(axes, log_likelihood, log_prior, box=PRIOR_BOX, *, truth=None,
                      truth_log_likelihood=None, truth_log_prior=0.0,
                      zoom=None) -> GridPosterior:
    """Normalise `log_likelihood + log_prior` (both grid-shaped) into a `GridPosterior`.

    The mass of cell `i` is `exp(log_posterior_i) · volume_i / Z` (module docstring). Non-finite
    log-likelihoods get zero mass and are counted. `truth` `(D,)` with its
    `truth_log_likelihood` (nats) and `truth_log_prior` gives the credible level at the truth;
    `zoom` records where a zoomed grid was placed. Raises `ValueError` if no grid point has a
    finite log-likelihood and a non-zero prior, or if `truth` comes without its likelihood.
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
    if truth is not None and truth_log_likelihood is None:
        raise ValueError("truth was given without truth_log_likelihood; expected both")
    log_post = np.where(usable, log_likelihood + log_prior, -np.inf)
    weights = np.exp(log_post - log_post.max()) * cell_volumes(axes)
    probability = weights / weights.sum()
    credible_level = mass_strictly_denser(probability, log_post)
    if truth is not None:
        truth = np.asarray(truth, np.float64)
        truth_log_likelihood, truth_log_prior = float(truth_log_likelihood), float(truth_log_prior)
    return GridPosterior(axes, log_likelihood, log_prior, probability, credible_level,
                         int((~finite).sum()), tuple(tuple(map(float, b)) for b in box),
                         parameter_names(len(axes)), truth,
                         None if truth is None else truth_log_likelihood,
                         None if truth is None else truth_log_prior, zoom)


def _checked_prior(log_prior, expected_size: int, description: str) -> np.ndarray:
    """`log_prior` as float64, refusing a wrong size, NaN or +inf (-inf is zero prior)."""
    log_prior = np.asarray(log_prior, np.float64)
    if log_prior.size != expected_size:
        raise ValueError(f"log_prior has shape {log_prior.shape}; expected {description}")
    if np.isnan(log_prior).any() or np.isposinf(log_prior).any():
        raise ValueError("log_prior has NaN or +inf values; expected finite values or -inf "
                         "(zero prior)")
    return log_prior


def prior_on_grid(log_prior, axes) -> np.ndarray:
    """The grid-shaped log prior: `None` (flat), a callable of physical `thetas` `(M, D)` →
    `(M,)`, or a grid-shaped array. NaN or +inf values are an error; -inf means zero prior."""
    shape = tuple(axis.size for axis in axes)
    if log_prior is None:
        return np.zeros(shape)
    if callable(log_prior):
        log_prior = log_prior(jnp.asarray(grid_points(axes), jnp.float32))
    if np.ndim(log_prior) not in (1, len(shape)):
        raise ValueError(f"log_prior has shape {np.shape(log_prior)}; expected the grid shape "
                         f"{shape} (or ({int(np.prod(shape))},) from a callable)")
    return _checked_prior(log_prior, int(np.prod(shape)), f"the grid shape {shape} (or "
                          f"({int(np.prod(shape))},) from a callable)").reshape(shape)


def _refuse_array_prior(log_prior, use: str) -> None:
    """Raise unless `log_prior` is `None` or a callable (it must be evaluated off a grid)."""
    if log_prior is not None and not callable(log_prior):
        raise ValueError(f"log_prior is an array of shape {np.shape(log_prior)}, which cannot be "
                         f"evaluated {use}; expected None (flat) or a callable of thetas (M, D) "
                         f"-> (M,)")


def prior_at(log_prior, thetas) -> np.ndarray:
    """`(N,)` float64 log prior at physical `thetas` `(N, D)`: 0 for `None` (flat), else the
    callable evaluated there (a grid-shaped array cannot be: `ValueError`)."""
    _refuse_array_prior(log_prior, "at truths")
    if log_prior is None:
        return np.zeros(len(thetas))
    return _checked_prior(log_prior(jnp.asarray(thetas, jnp.float32)), len(thetas),
                          f"({len(thetas)},) from the callable at {len(thetas)} truths")


def zoom_counts(grid=30, dim: int = 2) -> tuple:
    """The points per axis `(coarse, fine)` of a zoomed grid with the budget of a plain one.

    With `n_d` points per axis for the plain grid (`grid`: an int or `dim` ints, each >= 3), the
    coarse pass has `c_d = max(2, round(n_d / 3))` points per axis and the fine grid
    `f_d = max(2, floor(n_d · s))` with `s = (1 − Π c / Π n)^(1/dim)`, so that
    `Π c + Π f <= Π n` evaluations per map: 30×30 gives a coarse 10×10 and a fine 28×28
    (884 of 900), 5×5 a coarse 2×2 and a fine 4×4.
    """
    counts = np.array(checks.point_counts(grid, dim, parameter_names(dim)))
    if counts.min() < 3:
        raise ValueError(f"grid = {tuple(counts.tolist())}: a zoomed grid needs at least 3 points "
                         f"per axis; expected larger counts (or zoom=False)")
    coarse = np.maximum(2, np.rint(counts / 3)).astype(int)
    scale = (1.0 - np.prod(coarse) / np.prod(counts)) ** (1.0 / dim)
    fine = np.maximum(2, np.floor(counts * scale + 1e-9)).astype(int)
    return tuple(coarse.tolist()), tuple(fine.tolist())


def zoom_region(coarse: GridPosterior, tail: float, box) -> tuple:
    """`(region, touches_box)`: the bounding box of the HPD region of `coarse` at level
    `1 − tail` (the edges of its cells), padded by one coarse cell on each side and clipped to
    `box`, as `((low, high), …)`; and whether the padded box reached an edge of `box`."""
    mask = coarse.hpd_mask(1.0 - tail)
    dim = len(coarse.axes)
    region, touches = [], False
    for d, (axis, (low, high)) in enumerate(zip(coarse.axes, box)):
        rows = np.flatnonzero(mask.any(axis=tuple(a for a in range(dim) if a != d)))
        edges = cell_edges(axis)
        widths = np.diff(edges)
        start = edges[rows[0]] - widths[rows[0]]
        stop = edges[rows[-1] + 1] + widths[rows[-1]]
        tolerance = 1e-9 * (high - low)
        touches = touches or start <= low + tolerance or stop >= high - tolerance
        region.append((float(max(start, low)), float(min(stop, high))))
    return tuple(region), bool(touches)


def _evaluate(log_likelihood, maps, points, truths) -> tuple:
    """One likelihood call on `maps` `(B, H, W)` at `points` `(M, D)` followed by `truths`
    `(B, D)` (or `None`): `(table (B, M), at_truth (B,) or None)` float64 nats, `at_truth[b]`
    the log-likelihood of map `b` at its own truth (the diagonal of the truths' block)."""
    thetas = points if truths is None else np.concatenate([points, truths])
    table = np.asarray(log_likelihood(jnp.asarray(maps), jnp.asarray(thetas, jnp.float32)),
                       np.float64)
    expected = (maps.shape[0], thetas.shape[0])
    if table.shape != expected:
        raise ValueError(f"log_likelihood returned shape {table.shape}; expected {expected} "
                         f"(maps, grid points{'' if truths is None else ' and truths'})")
    m = points.shape[0]
    return table[:, :m], None if truths is None else np.diagonal(table[:, m:]).copy()


def _zoomed_posterior(log_likelihood, single_map, coarse, fine_counts, log_prior, box, tail,
                      truth) -> GridPosterior:
    """The posterior of `single_map` `(1, H, W)` on its fine grid, placed by its `coarse`
    posterior (`zoom_region`); `truth` holds the `posterior_on_grid` truth arguments but the
    log-likelihood, which is evaluated here with the fine grid."""
    region, touches = zoom_region(coarse, tail, box)
    axes = grid_axes(fine_counts, region)
    table, at_truth = _evaluate(log_likelihood, single_map, grid_points(axes),
                                truth["truth"][None] if truth else None)
    fine = posterior_on_grid(axes, table[0], prior_on_grid(log_prior, axes), box, **truth,
                             truth_log_likelihood=None if at_truth is None else at_truth[0],
                             zoom=Zoom(tuple(a.size for a in coarse.axes), region, float(tail),
                                       touches))
    return dataclasses.replace(fine, n_nonfinite=fine.n_nonfinite + coarse.n_nonfinite)


def grid_posteriors(log_likelihood, maps, grid=30, box=PRIOR_BOX, log_prior=None,
                    map_batch=16, progress=None, truths=None, zoom=False,
                    tail=ZOOM_TAIL) -> list:
    """The grid posterior of each of several raw maps.

    Args:
      log_likelihood: `(maps (B, H, W), thetas (M, D)) -> (B, M)` nats
        (`jglow.posterior.likelihood`).
      maps: raw maps `(B, H, W)`, finite and positive (else `ValueError` naming the map).
      grid: see `grid_axes`; default 30×30 at the cell centres of `box`. With `zoom`, point
        counts only, the budget of evaluations per map (`zoom_counts`).
      box: the training prior box, for the default grid and the outside-box flag.
      log_prior: see `prior_on_grid`; default flat on the grid. With `truths` or `zoom`, `None`
        or a callable.
      map_batch: maps per likelihood call (they share the work that depends only on θ).
      progress: a label to show a progress bar over the calls (stderr) under; None for none.
      truths: physical `(B, D)` truths of the maps, or `None`. Each map's likelihood is also
        evaluated at its own truth (the batch's truths are appended to the points of the call
        and the diagonal is taken), for `GridPosterior.credibility`.
      zoom: a coarse pass over `box` shared by the maps of a batch, then for each map its own
        fine grid (one likelihood call per map, with its truth) over the bounding box of its
        coarse HPD region at level `1 − tail`, padded by one coarse cell and clipped to `box`
        (`zoom_region`); the posterior is the fine grid's.
      tail: with `zoom`, the coarse mass the fine grid may leave out, in (0, 1).
    Returns:
      A list of `B` `GridPosterior`.
    """
    maps = checks.raw_maps(maps)
    dim = len(box)
    if truths is not None:
        truths = checks.truths(truths, maps.shape[0], dim)
        truth_priors = prior_at(log_prior, truths)
    if zoom:
        if not 0.0 < tail < 1.0:
            raise ValueError(f"tail = {tail!r}: expected a mass in (0, 1)")
        _refuse_array_prior(log_prior, "on a zoomed grid")
        coarse_counts, fine_counts = zoom_counts(grid, dim)
        axes = grid_axes(coarse_counts, box)
    else:
        axes = grid_axes(grid, box)
    prior = prior_on_grid(log_prior, axes)
    points = grid_points(axes)
    posteriors = []
    starts = range(0, maps.shape[0], map_batch)
    for start in tqdm(starts, desc=progress, unit="call", disable=progress is None, leave=False):
        batch = maps[start:start + map_batch]
        batch_truths = None if truths is None or zoom else truths[start:start + map_batch]
        table, at_truth = _evaluate(log_likelihood, batch, points, batch_truths)
        for b, row in enumerate(table):
            truth = {} if truths is None else {"truth": truths[start + b],
                                               "truth_log_prior": truth_priors[start + b]}
            if zoom:
                coarse = posterior_on_grid(axes, row, prior, box)
                posteriors.append(_zoomed_posterior(log_likelihood, batch[b:b + 1], coarse,
                                                    fine_counts, log_prior, box, tail, truth))
            else:
                posteriors.append(posterior_on_grid(
                    axes, row, prior, box, **truth,
                    truth_log_likelihood=None if at_truth is None else at_truth[b]))
    return posteriors


def grid_posterior(log_likelihood, single_map, grid=30, box=PRIOR_BOX, log_prior=None,
                   truth=None, zoom=False, tail=ZOOM_TAIL) -> GridPosterior:
    """The grid posterior of one raw map `(H, W)`; `truth` `(D,)` or `None`; other arguments as
    `grid_posteriors`."""
    if np.ndim(single_map) != 2:
        raise ValueError(f"single_map must have shape (H, W), got {np.shape(single_map)}; use "
                         f"grid_posteriors for a batch")
    truths = None if truth is None else np.asarray(truth, np.float64)[None]
    return grid_posteriors(log_likelihood, np.asarray(single_map)[None], grid, box, log_prior,
                           truths=truths, zoom=zoom, tail=tail)[0]
