"""The posterior over the conditioning parameters (Ωm, σ8) of a map.

* `grid_log_prob(params, x, zs)`: model-space log-likelihoods of maps at many conditions in one
  jit-compiled, chunked, vmapped call (`jglow.posterior.grid`).
* Likelihoods of raw maps at physical θ: `ModelLikelihood(params, preprocessing)` for a trained
  model, `SyntheticLikelihood()` for the exact synthetic density (`jglow.posterior.likelihood`).
* `grid_posterior` / `grid_posteriors`: normalised posteriors on a grid with marginals, mean,
  std, MAP, HPD regions, an outside-the-box flag, the credible level at evaluated truths, and
  zoomed grids (a coarse pass, then a fine grid where the posterior is; `zoom_counts`)
  (`jglow.posterior.density`).
* `gradient_map`, `sample_posterior`: MAP by projected Adam, MALA sampler, via `∇_θ log p`
  (`jglow.posterior.gradient`).
* `calibrate`: HPD coverage, the expected-coverage curve with its Binomial band, and rank
  statistics of truths (`jglow.posterior.calibration`).
* `plot_posterior`, `plot_coverage`: figures (`jglow.posterior.plots`).
"""

from jglow.posterior.calibration import Calibration, calibrate
from jglow.posterior.density import (LEVELS, ZOOM_TAIL, GridPosterior, Zoom, grid_axes,
                                     grid_points, grid_posterior, grid_posteriors,
                                     posterior_on_grid, zoom_counts)
from jglow.posterior.gradient import (PointEstimate, PosteriorSamples, gradient_map,
                                      sample_posterior)
from jglow.posterior.grid import grid_log_prob
from jglow.posterior.likelihood import ModelLikelihood, SyntheticLikelihood
from jglow.posterior.plots import plot_coverage, plot_posterior

__all__ = ["LEVELS", "ZOOM_TAIL", "Calibration", "GridPosterior", "ModelLikelihood",
           "PointEstimate", "PosteriorSamples", "SyntheticLikelihood", "Zoom", "calibrate",
           "gradient_map", "grid_axes", "grid_log_prob", "grid_points", "grid_posterior",
           "grid_posteriors", "plot_coverage", "plot_posterior", "posterior_on_grid",
           "sample_posterior", "zoom_counts"]
