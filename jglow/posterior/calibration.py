"""Calibration of grid posteriors on held-out maps with known parameters.

For each map, the truth's HPD credible level (`GridPosterior.credibility`: the posterior mass
denser than the posterior density at the truth) and its marginal CDF per parameter (the rank
statistics). For truths drawn from the prior and a calibrated posterior both are uniform on
[0, 1]. The coverage of the HPD region at level `a` is the fraction of maps with credibility below
`a`; with `N` maps it is Binomial(N, a) / N, which gives the acceptance interval
`Calibration.interval` of one level. The expected-coverage curve is the coverage at every level
in [0, 1] (the empirical CDF of the credibilities). Its band is simultaneous: binomial intervals
at a raised confidence, chosen so that the whole curve of a calibrated posterior stays inside
with the stated probability (with 101 levels, pointwise 99% intervals are left somewhere by about
one calibrated curve in five). Its largest distance from the diagonal, `max_coverage_deviation`,
is the one number to quote. The rank
histograms count the marginal ranks in equal bins; a calibrated bin holds Binomial(N, 1/bins).
"""

import dataclasses
import functools

import numpy as np
import scipy.stats

from jglow.posterior.density import LEVELS, parameter_names

COVERAGE_LEVELS = np.linspace(0.0, 1.0, 101)
"""The credibility levels of the expected-coverage curve."""

RANK_BINS = 10
"""Bins of the marginal rank histograms."""


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """Truth statistics of `N` posteriors.

    Attributes:
      credibility: `(N,)` HPD credible level of each truth (1 outside the box).
      marginal_ranks: `(N, D)` marginal posterior CDF at each truth coordinate.
      n_nonfinite: `(N,)` non-finite log-likelihoods on each map's grid.
      names: `D` parameter names (default `parameter_names(D)`).
    """

    credibility: np.ndarray
    marginal_ranks: np.ndarray
    n_nonfinite: np.ndarray
    names: tuple | None = None

    @property
    def n_maps(self) -> int:
        return int(self.credibility.size)

    @property
    def parameter_names(self) -> tuple:
        """The names of the `D` parameters of `marginal_ranks`."""
        return tuple(self.names or parameter_names(self.marginal_ranks.shape[1]))

    def coverage(self, level: float) -> float:
        """Fraction of truths inside the HPD region at `level`."""
        return float(np.mean(self.credibility < level))

    def interval(self, level, confidence: float = 0.99) -> tuple:
        """`(low, high)` coverage fractions that a calibrated posterior reaches with probability
        `confidence` over `N` maps: the central Binomial(N, level) interval, divided by N.
        `level` a float (floats back) or an array `(L,)` (arrays `(L,)` back)."""
        low, high = scipy.stats.binom.interval(confidence, self.n_maps, level)
        if np.ndim(level):
            return np.asarray(low) / self.n_maps, np.asarray(high) / self.n_maps
        return float(low) / self.n_maps, float(high) / self.n_maps

    def is_nominal(self, level: float, confidence: float = 0.99) -> bool:
        """Whether the coverage at `level` lies inside `interval(level, confidence)`."""
        low, high = self.interval(level, confidence)
        return low <= self.coverage(level) <= high

    def expected_coverage(self, levels=COVERAGE_LEVELS) -> np.ndarray:
        """`(L,)` float64 empirical coverage at each of `levels` `(L,)` in [0, 1]: the fraction
        of truths with credibility below the level (the diagonal when calibrated)."""
        levels = np.asarray(levels, np.float64)
        return np.mean(self.credibility[None, :] < levels[:, None], axis=1)

    def coverage_band(self, levels=COVERAGE_LEVELS, confidence: float = 0.99) -> tuple:
        """`(low (L,), high (L,))`: the simultaneous band of the expected-coverage curve at
        `levels`, inside which the whole curve of a calibrated posterior over `N` maps lies with
        probability `confidence` (`interval` at `simultaneous_confidence`)."""
        levels = np.asarray(levels, np.float64)
        pointwise = simultaneous_confidence(self.n_maps, confidence, tuple(levels.tolist()))
        return self.interval(levels, pointwise)

    def max_coverage_deviation(self, levels=COVERAGE_LEVELS) -> float:
        """The largest `|expected_coverage(a) − a|` over `levels`."""
        levels = np.asarray(levels, np.float64)
        return float(np.max(np.abs(self.expected_coverage(levels) - levels)))

    def inside_band(self, levels=COVERAGE_LEVELS, confidence: float = 0.99) -> bool:
        """Whether the expected-coverage curve lies inside `coverage_band` at every level."""
        empirical = self.expected_coverage(levels)
        low, high = self.coverage_band(levels, confidence)
        return bool(np.all((low <= empirical) & (empirical <= high)))

    def rank_histograms(self, bins: int = RANK_BINS) -> np.ndarray:
        """`(D, bins)` int counts of the marginal ranks in `bins` equal bins of [0, 1]."""
        if not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"bins = {bins!r}: expected a positive int")
        return np.stack([np.histogram(ranks, bins, (0.0, 1.0))[0]
                         for ranks in self.marginal_ranks.T])

    def rank_band(self, bins: int = RANK_BINS, confidence: float = 0.99) -> tuple:
        """`(low, high)` counts of one rank-histogram bin of a calibrated posterior: the central
        Binomial(N, 1/bins) interval at `confidence`."""
        low, high = scipy.stats.binom.interval(confidence, self.n_maps, 1.0 / bins)
        return int(low), int(high)

    def summary(self, confidence: float = 0.99) -> dict:
        """JSON-serialisable coverage at `LEVELS`, intervals, the expected-coverage curve with
        its band, its largest deviation, and the rank-statistic checks and histograms."""
        ks = [scipy.stats.kstest(ranks, "uniform").pvalue for ranks in self.marginal_ranks.T]
        low, high = self.coverage_band(COVERAGE_LEVELS, confidence)
        band = self.rank_band(RANK_BINS, confidence)
        counts = self.rank_histograms(RANK_BINS)
        return {
            "n_maps": self.n_maps,
            "coverage": {str(a): {"empirical": self.coverage(a), "nominal": a,
                                  "interval": list(self.interval(a, confidence)),
                                  "confidence": confidence,
                                  "is_nominal": self.is_nominal(a, confidence)}
                         for a in LEVELS},
            "expected_coverage": {"levels": COVERAGE_LEVELS.tolist(),
                                  "empirical": self.expected_coverage().tolist(),
                                  "band_low": low.tolist(), "band_high": high.tolist(),
                                  "confidence": confidence},
            "max_deviation": self.max_coverage_deviation(),
            "inside_band": self.inside_band(COVERAGE_LEVELS, confidence),
            "rank_histograms": {
                "edges": np.linspace(0.0, 1.0, RANK_BINS + 1).tolist(),
                "counts": {name: row.tolist() for name, row in zip(self.parameter_names, counts)},
                "band": list(band), "confidence": confidence,
                "inside_band": {name: bool(np.all((band[0] <= row) & (row <= band[1])))
                                for name, row in zip(self.parameter_names, counts)}},
            "credibility_ks_pvalue": float(scipy.stats.kstest(self.credibility, "uniform").pvalue),
            "marginal_rank_ks_pvalues": [float(p) for p in ks],
            "n_nonfinite": int(self.n_nonfinite.sum()),
        }


SIMULATED_CURVES = 4000
"""Calibrated curves drawn to set the simultaneous band (a fixed seed: the band is a constant)."""


@functools.lru_cache(maxsize=32)
def simultaneous_confidence(n_maps: int, confidence: float, levels: tuple) -> float:
    """The pointwise confidence whose binomial intervals at `levels` hold the whole
    expected-coverage curve of `n_maps` calibrated credibilities (uniform on [0, 1]) with
    probability `confidence`, estimated from `SIMULATED_CURVES` simulated curves and found by
    bisection (to 1e-4)."""
    levels = np.asarray(levels, np.float64)
    uniform = np.random.default_rng(0).uniform(size=(SIMULATED_CURVES, n_maps))
    counts = np.stack([np.sum(uniform < level, axis=1) for level in levels], axis=1)

    def held(pointwise):
        low, high = scipy.stats.binom.interval(pointwise, n_maps, levels)
        return np.mean(np.all((low <= counts) & (counts <= high), axis=1))

    low, high = confidence, 1.0 - 1e-9
    while high - low > 1e-4:
        middle = 0.5 * (low + high)
        low, high = (low, middle) if held(middle) >= confidence else (middle, high)
    return high


def calibrate(posteriors, truths=None) -> Calibration:
    """The truth statistics of `posteriors` (`GridPosterior`s with evaluated truths, from
    `grid_posteriors(..., truths=...)`); `truths` `(N, D)` physical, if given, must be those."""
    if not posteriors:
        raise ValueError("posteriors is empty; expected at least one GridPosterior")
    if truths is None:
        missing = [i for i, p in enumerate(posteriors) if p.truth is None]
        if missing:
            raise ValueError(f"posterior {missing[0]} has no evaluated truth; expected "
                             f"posteriors from grid_posteriors(..., truths=...)")
        truths = np.stack([p.truth for p in posteriors])
    truths = np.asarray(truths, np.float64)
    if truths.shape != (len(posteriors), len(posteriors[0].axes)):
        raise ValueError(f"truths has shape {truths.shape}; expected "
                         f"({len(posteriors)}, {len(posteriors[0].axes)}), one row per posterior")
    return Calibration(
        np.array([p.credibility(t) for p, t in zip(posteriors, truths)]),
        np.stack([p.marginal_cdf(t) for p, t in zip(posteriors, truths)]),
        np.array([p.n_nonfinite for p in posteriors]), tuple(posteriors[0].names))
