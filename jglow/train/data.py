"""The training data: loading, splitting by simulation, preprocessing, and the data order.

The data spec, its loading and the split's constants are the library's (`jglow.data.recipe`),
so runs with different `--seed` share their validation and test simulations.
The order of training maps is a function of `(seed, step)` only (`batch_indices`), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import NamedTuple, Optional

import numpy as np

from jglow.data import (BOX_SIZE, SPLIT_FRACTIONS, SPLIT_SEED, SYNTHETIC_SEED, MapSet,
                        Preprocessing, fit_preprocessing, load_mapset, split_by_simulation,
                        synthetic_log_prob)
from jglow.data.recipe import EXACT_LIKELIHOOD, simulate
from jglow.data.validation import map_chunks
from jglow.train.config import TrainConfig, UsageError

FRESH_DATA_STREAM = 1
"""Fresh training simulations of epoch `e` of a run with seed `s` are drawn from the seed
`(SYNTHETIC_SEED, FRESH_DATA_STREAM, s, e)`, a stream apart from the fixed data set's."""


class Split(NamedTuple):
    """One split in model space.

    Attributes:
      x: `(N, H, W, 1)` float32 preprocessed maps.
      z: `(N, D)` float32 conditions in [-1, 1].
      maps: `(N, H, W)` raw maps (a memory map or copy; kept for validation only, else None).
      params: `(N, D)` physical parameters.
      sim: `(N,)` simulation indices.
    """

    x: np.ndarray
    z: np.ndarray
    maps: Optional[np.ndarray]
    params: np.ndarray
    sim: np.ndarray


class Data(NamedTuple):
    """Training and validation splits, the fitted preprocessing, and the best possible NLL.

    Attributes:
      exact_val_nll: `(N_val,)` nats, `−log p(x)` of each validation map in model space under
        the generator's exact density (synthetic data only, else None).
      test_sims: simulations held out for testing (never trained or validated on).
    """

    train: Split
    val: Split
    preprocessing: Preprocessing
    exact_val_nll: Optional[np.ndarray]
    test_sims: np.ndarray


def _model_space(mapset: MapSet, preprocessing: Preprocessing, keep_maps: bool) -> Split:
    """Preprocess `mapset` chunk by chunk into a `Split`."""
    x = np.empty((*mapset.maps.shape, 1), np.float32)
    for part in map_chunks(mapset.maps):
        x[part] = np.asarray(preprocessing.forward_maps(np.asarray(mapset.maps[part])))
    z = np.asarray(preprocessing.forward_params(mapset.params), np.float32)
    maps = np.asarray(mapset.maps) if keep_maps else None
    return Split(x, z, maps, mapset.params, mapset.sim)


def exact_nll(split: Split, preprocessing: Preprocessing) -> np.ndarray:
    """`−log p(x)` in nats `(N,)` of the maps of `split` in model space, under the synthetic
    generator's exact density: `log p(x) = log p(map) − forward_log_det(map)`."""
    log_p_maps = np.asarray(synthetic_log_prob(split.maps, split.params, BOX_SIZE), np.float64)
    log_det = np.asarray(preprocessing.forward_log_det(split.maps), np.float64)
    return -(log_p_maps - log_det)


def prepare(config: TrainConfig) -> Data:
    """Load, split by simulation, fit the preprocessing on the training split, preprocess."""
    mapset = load_mapset(config.data, config.model.image_shape[0], config.n_sims)
    train_set, val_set, test_set = split_by_simulation(mapset, SPLIT_FRACTIONS, SPLIT_SEED)
    if len(val_set) == 0 or len(train_set) < config.batch_size:
        raise UsageError(
            f"{config.data}: {len(np.unique(mapset.sim))} simulations give {len(train_set)} "
            f"training and {len(val_set)} validation maps; need a non-empty validation split "
            f"and at least --batch-size {config.batch_size} training maps")
    preprocessing = fit_preprocessing(train_set.maps, config.preprocessing)
    train = _model_space(train_set, preprocessing, keep_maps=False)
    val = _model_space(val_set, preprocessing, keep_maps=True)
    exact = exact_nll(val, preprocessing) if config.data == EXACT_LIKELIHOOD else None
    return Data(train, val, preprocessing, exact, np.unique(test_set.sim))


def fingerprint(data: Data) -> str:
    """A SHA-256 digest (64 hex digits) of `data`: the fitted preprocessing, the maps,
    conditions and simulations of the training and validation splits, and the test
    simulations. Equal data, bit for bit, give equal digests."""
    digest = hashlib.sha256(json.dumps(data.preprocessing.to_dict()).encode())
    for array in (data.train.x, data.train.z, data.train.sim, data.val.x, data.val.z,
                  data.val.sim, data.test_sims):
        digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()


def epoch_training_set(config: TrainConfig, data: Data, epoch: int) -> Split:
    """The training maps of epoch `epoch`: `data.train`, or with `config.fresh_data` as many new
    simulations of the simulator `config.data` as it holds (a new Latin hypercube over the prior
    box, preprocessed by `data.preprocessing`), a function of `(config.seed, epoch)` only, so a
    resumed run sees the same maps."""
    if not config.fresh_data:
        return data.train
    n_sims = len(np.unique(data.train.sim))
    seed = [SYNTHETIC_SEED, FRESH_DATA_STREAM, config.seed, epoch]
    mapset = simulate(config.data, n_sims, config.model.image_shape[0], seed)
    return _model_space(mapset, data.preprocessing, keep_maps=False)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches per epoch (the last incomplete batch of each epoch's order is dropped)."""
    return n_train // batch_size


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, n_train: int, batch_size: int) -> np.ndarray:
    """Indices `(batch_size,)` of the training maps of global step `step` (0-based).

    Epoch `e = step // steps_per_epoch` visits the maps in the order of a permutation drawn
    from `(seed, e)`; the step takes the next `batch_size` of them.
    """
    epoch, index = divmod(step, steps_per_epoch(n_train, batch_size))
    return _epoch_order(seed, epoch, n_train)[index * batch_size:(index + 1) * batch_size]
