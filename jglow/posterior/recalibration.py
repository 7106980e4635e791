"""Post-hoc recalibration of a likelihood by a temperature, fitted on validation simulations.

A model trained on a fixed set of simulations can learn a likelihood that is too sharp in θ:
its posteriors are too narrow for their errors. The tempered likelihood `log L(x | θ) / T`
(`TemperedLikelihood`) widens every posterior by about `sqrt(T)` without moving its peak.
`fit_temperature` chooses `T` on posteriors of validation maps (simulations neither trained on
nor used for judging): the `T` whose credible levels of the truths are closest to uniform (the
Cramér–von Mises distance of their empirical distribution to the diagonal). It is then applied,
unchanged, to test maps; a report must say which numbers are recalibrated. A temperature
restores coverage, not accuracy: the posterior means and their errors are those of `T = 1`.
"""

import flax.struct
import numpy as np

from jglow.posterior.density import GridPosterior, posterior_on_grid

TEMPERATURES = np.geomspace(0.25, 16.0, 121)
"""The temperatures `fit_temperature` tries (5% apart)."""


@flax.struct.dataclass
class TemperedLikelihood:
    """`log L(maps | θ) / temperature` of a likelihood `likelihood` (the protocol of
    `jglow.posterior.likelihood`: raw maps `(B, H, W)`, physical `thetas (M, D)` →
    `(B, M)` nats)."""

    likelihood: object
    temperature: float = flax.struct.field(pytree_node=False)

    @property
    def box(self):
        """The prior box of the tempered likelihood."""
        return self.likelihood.box

    def __call__(self, maps, thetas):
        return self.likelihood(maps, thetas) / self.temperature


def tempered_posterior(posterior: GridPosterior, temperature: float) -> GridPosterior:
    """The posterior of the same grid with the likelihood tempered by `temperature` (the
    truth's likelihood too, if evaluated). On a zoomed grid placed for `T = 1` this is exact on
    that grid; the mass a wider posterior puts outside it is left out."""
    truth = {} if posterior.truth is None else {
        "truth": posterior.truth, "truth_log_prior": posterior.truth_log_prior,
        "truth_log_likelihood": posterior.truth_log_likelihood / temperature}
    return posterior_on_grid(posterior.axes, posterior.log_likelihood / temperature,
                             posterior.log_prior, posterior.box, zoom=posterior.zoom, **truth)


def credible_levels(posteriors, temperature: float = 1.0) -> np.ndarray:
    """`(N,)` HPD credible levels of the evaluated truths of `posteriors` at `temperature`."""
    return np.array([tempered_posterior(p, temperature).credibility() for p in posteriors])


def coverage_distance(levels) -> float:
    """The Cramér–von Mises distance `∫ (F(a) − a)² da` of the empirical distribution `F` of
    credible levels `levels (N,)` to the uniform one (0 for perfectly calibrated levels)."""
    levels = np.sort(np.asarray(levels, np.float64))
    n = len(levels)
    ranks = (2 * np.arange(1, n + 1) - 1) / (2 * n)
    return float(1 / (12 * n * n) + np.mean((levels - ranks) ** 2))


def fit_temperature(posteriors, temperatures=TEMPERATURES) -> float:
    """The temperature of `temperatures` whose tempered posteriors of `posteriors` (each with
    an evaluated truth; validation maps) have credible levels closest to uniform
    (`coverage_distance`). Raises `ValueError` for fewer than 10 posteriors."""
    if len(posteriors) < 10:
        raise ValueError(f"fitting a temperature needs at least 10 posteriors with evaluated "
                         f"truths, got {len(posteriors)}")
    distances = [coverage_distance(credible_levels(posteriors, t)) for t in temperatures]
    return float(temperatures[int(np.argmin(distances))])
