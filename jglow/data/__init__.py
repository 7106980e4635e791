"""Data for jglow (SPEC §4–5): the `MapSet` record, synthetic CAMELS-like maps with an exact
likelihood, loaders of the real CAMELS files, preprocessing, splits and augmentation.

No module of this package imports `jglow.model` (only numpy, jax and the standard library).
"""

from jglow.data.augment import augment
from jglow.data.camels import load_camels
from jglow.data.mapset import MapSet
from jglow.data.preprocessing import Preprocessing, fit_preprocessing
from jglow.data.prior import PRIOR_BOX, latin_hypercube
from jglow.data.splits import split_by_simulation
from jglow.data.synthetic import (sample_synthetic, synthetic_log_prob, synthetic_maps,
                                  synthetic_spectrum)

__all__ = ["MapSet", "PRIOR_BOX", "Preprocessing", "augment", "fit_preprocessing",
           "latin_hypercube", "load_camels", "sample_synthetic", "split_by_simulation",
           "synthetic_log_prob", "synthetic_maps", "synthetic_spectrum"]
