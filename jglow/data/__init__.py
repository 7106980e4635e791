"""Data for jglow: the `MapSet` record, synthetic CAMELS-like maps with an exact
likelihood, loaders of the real CAMELS files, the data recipe every run shares (`recipe`: data
specs, the split's constants), preprocessing, splits and augmentation.

No module of this package imports `jglow.model` (only numpy, jax and the standard library).
"""

from jglow.data.augment import augment
from jglow.data.camels import load_camels
from jglow.data.mapset import MapSet
from jglow.data.preprocessing import Preprocessing, fit_preprocessing
from jglow.data.prior import PRIOR_BOX, latin_hypercube
from jglow.data.recipe import (BOX_SIZE, MAPS_PER_SIM, SPLIT_FRACTIONS, SPLIT_SEED, SYNTHETIC_SEED,
                               DataSpecError, load_mapset)
from jglow.data.splits import split_by_simulation
from jglow.data.synthetic import (sample_synthetic, synthetic_log_prob, synthetic_maps,
                                  synthetic_spectrum)

__all__ = ["BOX_SIZE", "DataSpecError", "MAPS_PER_SIM", "MapSet", "PRIOR_BOX", "Preprocessing",
           "SPLIT_FRACTIONS", "SPLIT_SEED", "SYNTHETIC_SEED", "augment", "fit_preprocessing",
           "latin_hypercube", "load_camels", "load_mapset", "sample_synthetic",
           "split_by_simulation", "synthetic_log_prob", "synthetic_maps", "synthetic_spectrum"]
