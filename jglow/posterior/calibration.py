"""Calibration of grid posteriors on held-out maps with known parameters.

For each map, the truth's HPD credibility (`GridPosterior.credibility`: the mass denser than the
truth's cell) and its marginal CDF per parameter (the rank statistics, uniform on [0, 1] when the
posterior is calibrated and the truths are drawn from the prior). The coverage of the HPD region
at level `a` is the fraction of maps with credibility below `a`; with `N` maps and a calibrated
posterior, the number covered is Binomial(N, a) (up to the grid's resolution), which gives the
acceptance interval `Calibration.interval`.
"""

import dataclasses

import numpy as np
import scipy.stats

from jglow.posterior.density import LEVELS


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """Truth statistics of `N` posteriors.

    Attributes:
      credibility: `(N,)` HPD credibility of each truth (1 if outside the grid).
      marginal_ranks: `(N, D)` marginal posterior CDF at each truth coordinate.
      n_nonfinite: `(N,)` non-finite log-likelihoods on each map's grid.
    """

    credibility: np.ndarray
    marginal_ranks: np.ndarray
    n_nonfinite: np.ndarray

    @property
    def n_maps(self) -> int:
        return int(self.credibility.size)

    def coverage(self, level: float) -> float:
        """Fraction of truths inside the HPD region at `level`."""
        return float(np.mean(self.credibility < level))

    def interval(self, level: float, confidence: float = 0.99) -> tuple:
        """`(low, high)` coverage fractions that a calibrated posterior reaches with probability
        `confidence` over `N` maps: the central Binomial(N, level) interval, divided by N."""
        low, high = scipy.stats.binom.interval(confidence, self.n_maps, level)
        return float(low) / self.n_maps, float(high) / self.n_maps

    def is_nominal(self, level: float, confidence: float = 0.99) -> bool:
        """Whether the coverage at `level` lies inside `interval(level, confidence)`."""
        low, high = self.interval(level, confidence)
        return low <= self.coverage(level) <= high

    def summary(self, confidence: float = 0.99) -> dict:
        """JSON-serialisable coverage at `LEVELS`, intervals and rank-statistic checks."""
        ks = [scipy.stats.kstest(ranks, "uniform").pvalue for ranks in self.marginal_ranks.T]
        return {
            "n_maps": self.n_maps,
            "coverage": {str(a): {"empirical": self.coverage(a), "nominal": a,
                                  "interval": list(self.interval(a, confidence)),
                                  "confidence": confidence, "is_nominal": self.is_nominal(a, confidence)}
                         for a in LEVELS},
            "credibility_ks_pvalue": float(scipy.stats.kstest(self.credibility, "uniform").pvalue),
            "marginal_rank_ks_pvalues": [float(p) for p in ks],
            "n_nonfinite": int(self.n_nonfinite.sum()),
        }


def calibrate(posteriors, truths) -> Calibration:
    """The truth statistics of `posteriors` (`GridPosterior`s) given physical `truths` `(N, D)`."""
    if not posteriors:
        raise ValueError("posteriors is empty; expected at least one GridPosterior")
    truths = np.asarray(truths, np.float64)
    if truths.shape != (len(posteriors), len(posteriors[0].axes)):
        raise ValueError(f"truths has shape {truths.shape}; expected "
                         f"({len(posteriors)}, {len(posteriors[0].axes)}), one row per posterior")
    return Calibration(
        np.array([p.credibility(t) for p, t in zip(posteriors, truths)]),
        np.stack([p.marginal_cdf(t) for p, t in zip(posteriors, truths)]),
        np.array([p.n_nonfinite for p in posteriors]))
