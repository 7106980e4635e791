"""`MapSet`: the immutable record of maps, their parameters and their simulation indices."""

import dataclasses

import numpy as np


def _read_only(array, dtype):
    """A read-only view of `array` as `dtype` (a copy only when the dtype differs).

    A memory map stays a memory map: nothing is read from disk here.
    """
    view = np.asarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


@dataclasses.dataclass(frozen=True, eq=False)
class MapSet:
    """Maps with their physical parameters and simulation indices (all numpy, read-only).

    Attributes:
      maps: `(N, H, W)` float32, strictly positive (e.g. HI column density in
        (M⊙/h)/(Mpc/h)²); may be a read-only memory map of a file on disk.
      params: `(N, D)` float32 physical parameters of each map (default `D = 2`: Ωm, σ8).
      sim: `(N,)` int64 simulation index of each map; maps of one simulation share `params`.
    """

    maps: np.ndarray
    params: np.ndarray
    sim: np.ndarray

    def __post_init__(self):
        maps = _read_only(self.maps, np.float32)
        params = _read_only(self.params, np.float32)
        sim = _read_only(self.sim, np.int64)
        if maps.ndim != 3:
            raise ValueError(f"MapSet.maps must have shape (N, H, W), got {maps.shape}")
        n = maps.shape[0]
        if params.ndim != 2 or params.shape[0] != n:
            raise ValueError(f"MapSet.params must have shape ({n}, D) to match maps {maps.shape}, "
                             f"got {params.shape}")
        if sim.shape != (n,):
            raise ValueError(f"MapSet.sim must have shape ({n},) to match maps {maps.shape}, "
                             f"got {sim.shape}")
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "sim", sim)

    def __len__(self):
        return self.maps.shape[0]

    def take(self, indices):
        """The maps at `indices` (an integer array or a slice), as a new `MapSet`.

        Fancy indexing reads the selected maps into memory (also from a memory map).
        """
        return MapSet(self.maps[indices], self.params[indices], self.sim[indices])
