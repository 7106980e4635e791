"""What the commands say of maps they can use but the model was not trained for."""

import numpy as np

OUT_OF_RANGE = 0.5
"""A map with more than this fraction of its pixels outside the training maps' range is warned
of (`range_warnings`)."""
SHOWN = 5
"""Such maps named one per line; the rest are counted in one more line."""


def range_warnings(preprocessing, maps, source: str) -> list:
    """`warning:` lines for the raw maps `(N, H, W)` of `source` (e.g. "--map maps.npy") whose
    pixels lie mostly (`OUT_OF_RANGE`) outside the range of the training maps
    (`Preprocessing.trained_range`), each with that fraction; `SHOWN` maps are named, the rest
    counted."""
    fractions = preprocessing.fraction_outside(maps)
    low, high = preprocessing.trained_range()
    bad = np.flatnonzero(fractions > OUT_OF_RANGE)
    lines = [f"warning: {source}: map {i} has {fractions[i]:.0%} of its pixels outside the range "
             f"the model was trained on (log10 in [{low:.3g}, {high:.3g}] dex); its likelihood "
             f"there is an extrapolation" for i in bad[:SHOWN]]
    if len(bad) > SHOWN:
        lines.append(f"warning: {source}: {len(bad) - SHOWN} more maps have most of their pixels "
                     f"outside that range")
    return lines
