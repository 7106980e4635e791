"""What a training run is: presets, command-line flags, and the fields a workdir is tied to.

`TrainConfig` holds everything that decides the result of a run (model, data, optimiser, seed)
plus the run's length and bookkeeping (`RESUMABLE_FIELDS`), which may change between the runs
that share a workdir, e.g. to train for more epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

from jglow.config import PADDINGS, GlowConfig, paper_config
from jglow.data.recipe import EXACT_LIKELIHOOD, SIMULATORS
from jglow.train.cli import ArgumentParser, UsageError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run (see `build_parser` for each field's meaning and unit).

    Attributes:
      model: the architecture; `model.image_shape` is `(map_size, map_size, 1)`.
      data: a simulator ("synthetic": lognormal maps with an exact likelihood; "hi-like":
        `jglow.data.hi_like`) or the path of CAMELS maps (a `.npy` file or a folder holding
        one).
      n_sims: simulations of a simulator (15 maps each); ignored for files.
      preprocessing: "minmax" or "sigmoid" (`jglow.data.fit_preprocessing`).
      augment: random cyclic shifts, flips and 90° rotations of training maps.
      fresh_data: simulators only: every epoch trains on newly generated simulations (as
        many as the training split, parameters on a new Latin hypercube), so no map is seen
        twice; validation and test simulations are fixed.
      condition_noise: standard deviation of Gaussian noise added to each training map's
        conditions at every step, in the box coordinates `[−1, 1]` (0: none). The model then
        learns the likelihood smoothed over that scale in θ, so that with a fixed set of
        simulations it varies smoothly between them instead of peaking at each.
      learning_rate: peak Adam learning rate, reached after `warmup_steps`.
      batch_size: global batch (all devices and processes together).
      clip_norm: gradients are clipped to this global norm.
      warmup_steps: linear warm-up of the learning rate from `learning_rate / warmup_steps`.
      schedule: after the warm-up, "plateau" (the paper's: the learning rate is multiplied by
        `plateau_factor` after `plateau_patience` epochs without improvement of the validation
        NLL, never below `min_learning_rate`) or "cosine" (a cosine decay from
        `learning_rate` to `min_learning_rate` at the run's last step).
      ema_decay: the parameters validated, exported and sampled are an exponential moving
        average of the trained ones with this decay per step (0: the trained ones).
      seed: initialisation, data order and augmentation are functions of it (and the step).
      epochs, max_steps: the run stops after `epochs` epochs or `max_steps` steps, the earlier.
      early_stop_patience: stop after this many epochs without a better validation NLL.
      max_nonfinite: stop after this many steps in a row with a non-finite loss or gradient.
      checkpoint_every: also checkpoint every this many steps (0: only at epoch ends).
      keep_checkpoints: the latest checkpoints kept (the best by validation NLL is kept too).
      log_every: steps between training-metric records.
      figure_every: epochs between figure updates (0: never).
    """

    model: GlowConfig
    data: str = "synthetic"
    n_sims: int = 1000
    preprocessing: str = "minmax"
    augment: bool = True
    fresh_data: bool = False
    condition_noise: float = 0.0
    learning_rate: float = 3e-4
    batch_size: int = 64
    clip_norm: float = 2.0
    warmup_steps: int = 200
    schedule: str = "plateau"
    ema_decay: float = 0.0
    plateau_factor: float = 0.8
    plateau_patience: int = 10
    min_learning_rate: float = 1e-5
    seed: int = 0
    epochs: int = 200
    max_steps: Optional[int] = None
    early_stop_patience: int = 30
    max_nonfinite: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    figure_every: int = 1

    def __post_init__(self):
        positive = ("n_sims", "batch_size", "warmup_steps", "plateau_patience", "epochs",
                    "early_stop_patience", "max_nonfinite", "keep_checkpoints", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{_named(name)} must be a positive integer, got {value!r}")
        for name in ("checkpoint_every", "figure_every"):
            if getattr(self, name) < 0:
                raise UsageError(f"{_named(name)} must be >= 0, got {getattr(self, name)!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be a positive integer, got {self.max_steps!r}")
        if not self.learning_rate > 0.0:
            raise UsageError(f"{_named('learning_rate')} must be > 0, got "
                             f"{self.learning_rate!r}")
        if not 0.0 < self.min_learning_rate <= self.learning_rate:
            raise UsageError(f"need 0 < min_learning_rate <= {_named('learning_rate')}, got "
                             f"{self.min_learning_rate} and {self.learning_rate}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule {self.schedule!r}: expected one of {SCHEDULES}")
        if not 0.0 <= self.condition_noise < 1.0:
            raise UsageError(f"--condition-noise must be in [0, 1) (box coordinates), got "
                             f"{self.condition_noise!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if self.fresh_data and self.data not in SIMULATORS:
            raise UsageError(f"fresh data needs a simulator {SIMULATORS}; --data is "
                             f"{self.data!r}, a fixed set of maps")
        if not 0.0 < self.plateau_factor < 1.0 or not self.clip_norm > 0.0:
            raise UsageError(f"need plateau_factor in (0, 1) and clip_norm > 0, got "
                             f"{self.plateau_factor} and {self.clip_norm}")

    def canonical(self) -> "TrainConfig":
        """The same run with `RESUMABLE_FIELDS` at their defaults: equal for all runs that may
        share a workdir (a key for caching what they have in common)."""
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                    if f.name in RESUMABLE_FIELDS}
        return dataclasses.replace(self, **defaults)

    def identity(self) -> dict:
        """The JSON-serialisable fields that a workdir is tied to (all but `RESUMABLE_FIELDS`)."""
        record = dataclasses.asdict(self)
        for name in RESUMABLE_FIELDS:
            record.pop(name)
        record["model"]["image_shape"] = list(self.model.image_shape)
        return record

    @staticmethod
    def with_defaults(record: dict) -> dict:
        """An `identity` record written before some fields existed, with those fields at their
        defaults (the behaviour the older run had)."""
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                    if f.name not in RESUMABLE_FIELDS and f.default is not dataclasses.MISSING}
        return {**defaults, **record}

    @classmethod
    def from_identity(cls, record: dict) -> "TrainConfig":
        """Inverse of `identity` (`RESUMABLE_FIELDS` at their defaults), e.g. from `run.json`."""
        record = dict(record)
        model = dict(record.pop("model"))
        model["image_shape"] = tuple(model["image_shape"])
        return cls(model=GlowConfig(**model), **record)


SCHEDULES = ("plateau", "cosine")

RESUMABLE_FIELDS = ("epochs", "max_steps", "early_stop_patience", "max_nonfinite",
                    "checkpoint_every", "keep_checkpoints", "log_every", "figure_every")
"""Fields that may differ between runs sharing a workdir: they do not change what one step does."""


def quick_preset() -> TrainConfig:
    """A demonstration: a small model on 32×32 synthetic maps, about a minute on 2 CPU cores.
    Its likelihood is close to the exact one but its posteriors are not calibrated (README,
    Results); `standard` is the preset to infer with. Circular padding, as in `standard`."""
    model = GlowConfig(image_shape=(32, 32, 1), levels=3, steps=4, hidden=16, cond_hidden=8,
                       padding="circular")
    return TrainConfig(model=model, n_sims=400, learning_rate=1e-3, batch_size=64,
                       warmup_steps=50, epochs=5, early_stop_patience=5, checkpoint_every=100)


def standard_preset() -> TrainConfig:
    """The preset to infer with on 32×32 maps: circular padding (the maps are of a periodic box;
    on synthetic maps it took the quick model's NLL gap to the exact likelihood from 0.027 to
    0.002 bits/dim at 1,125 steps, benchmarks/RESULTS.md), fresh synthetic simulations every
    epoch (on a fixed set of simulations, noise on the conditions instead: `FIXED_SET_CHANGES`),
    a cosine learning-rate decay and an averaged model, 4,488 steps that train in about 10
    minutes on 2 CPU cores (README, Results, gives what it reaches)."""
    model = GlowConfig(image_shape=(32, 32, 1), levels=4, steps=6, hidden=32, cond_hidden=16,
                       padding="circular")
    return TrainConfig(model=model, n_sims=1000, fresh_data=True, learning_rate=1e-3,
                       batch_size=64, warmup_steps=200, schedule="cosine", ema_decay=0.998,
                       epochs=24, early_stop_patience=24, checkpoint_every=500)


def paper_preset() -> TrainConfig:
    """The HIGlow model and optimiser (Adam 3e-4, batch 64, clip 2, ×0.8 plateau).

    Flow steps are rematerialised in the backward pass (`remat_steps`): on the 2-core CPU this
    made the step faster as well as smaller, 0.88–1.30 s against 1.28–1.83 s
    (benchmarks/RESULTS.md, Training step).
    """
    return TrainConfig(model=dataclasses.replace(paper_config(), remat_steps=True))


FIXED_SET_CHANGES = {"standard": {"condition_noise": 0.2}}
"""What a preset changes when it trains on a fixed set of simulations (a simulator without
fresh data, or files) and the flag is not given: on 1,000 fixed HI-like simulations, noise of
0.2 on the conditions gave the best-calibrated and most accurate posteriors of 0, 0.05, 0.1 and
0.2 (benchmarks/RESULTS.md, HI-like maps)."""

PRESET_NOTES = {
    "quick": "the quick preset is a demonstration (about a minute on a CPU): its posteriors are "
             "not calibrated; train --preset standard to infer with (README, Results)",
}
"""What `python -m train.main` prints after a run of a preset, so nobody mistakes it for more."""

PRESETS = {"quick": quick_preset, "standard": standard_preset, "paper": paper_preset}


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m train.main`."""
    parser = ArgumentParser(
        description="Train a conditional Glow on HI maps, data-parallel over every local device. "
                    "Re-running the same command in the same --workdir resumes the run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--preset", choices=sorted(PRESETS), default="quick",
        help="quick: a demonstration (32×32 maps, 3 levels × 4 steps, a minute on a CPU); "
             "standard: 32×32 maps trained to be inferred with (cosine decay, averaged "
             "parameters; fresh simulations on the synthetic data, condition noise 0.2 on a "
             "fixed set; about 10 minutes on a 2-core CPU); paper: the HIGlow "
             "model (64×64, 6 levels × 20 steps, hidden 16) and optimiser")
    add("--data", default="synthetic",
        help="a simulator: 'synthetic' (lognormal CAMELS-like maps with an exact likelihood) "
             "or 'hi-like' (HI-like maps from 2LPT density with four feedback parameters); or "
             "a path: a CAMELS .npy of maps (parameter file beside it) or a folder holding one")
    add("--map-size", type=int, help="pixels per side of the maps the model sees; real maps "
        "are block-averaged down to it (default: the preset's, 32 quick / 64 paper)")
    add("--n-sims", type=int, help="simulations of a simulator, 15 maps each (default: "
        "preset's)")
    add("--levels", type=int, help="override: squeeze/split levels L")
    add("--steps", type=int, help="override: flow steps K per level (not training steps)")
    add("--hidden", type=int, help="override: hidden channels of the conditioner CNNs")
    add("--padding", choices=PADDINGS, help="override: border of the conditioner CNNs' 3×3 "
        "convolutions; circular suits maps of a periodic box (synthetic and CAMELS maps), zero "
        "is HIGlow's (default: the preset's, circular quick/standard, zero paper)")
    add("--lr", type=float, help="override: peak Adam learning rate")
    add("--batch-size", type=int, help="override: global batch, divisible by the device count")
    add("--epochs", type=int, help="override: number of epochs")
    add("--max-steps", type=int, help="stop after this many training steps in all")
    add("--patience", type=int, help="early stopping: epochs without a better validation NLL")
    add("--warmup-steps", type=int, help="override: steps of linear learning-rate warm-up")
    add("--max-nonfinite", type=int,
        help="stop after this many steps in a row with a non-finite loss or gradient "
             "(such steps never update the parameters)")
    add("--checkpoint-every", type=int, help="also checkpoint every this many steps (0: only "
        "at epoch ends)")
    add("--figure-every", type=int, help="epochs between figure updates (0: no figures)")
    add("--fresh-data", action=argparse.BooleanOptionalAction, default=None,
        help="simulators: train every epoch on newly generated simulations, never "
             "repeating a map (default: the preset's on the synthetic data, else off)")
    add("--schedule", choices=SCHEDULES, help="learning rate after the warm-up: the paper's "
        "reduce-on-plateau, or a cosine decay to the floor at the last step (default: "
        "the preset's)")
    add("--ema-decay", type=float, help="validate, export and sample an exponential moving "
        "average of the parameters with this decay per step; 0: off (default: the preset's)")
    add("--condition-noise", type=float, help="standard deviation of Gaussian noise on each "
        "training map's conditions, in box coordinates [-1, 1] (default: the preset's; "
        "standard on a fixed set of simulations: 0.2)")
    add("--no-augment", action="store_true", help="do not augment training maps by shifts, "
        "flips and rotations")
    add("--preprocessing", choices=("minmax", "sigmoid"),
        help="map transform: log10 then min/max to [-1, 1], or the paper's log10, "
             "standardise, 2·sigmoid − 1")
    add("--seed", type=int, help="seed of initialisation, data order and augmentation")
    add("--workdir", default="workdir", help="checkpoints, metrics.jsonl, figures/ and the "
        "best model (jglow.load(workdir)) go here")
    add("--overwrite", action="store_true", help="start afresh in a workdir that holds a run "
        "with a different configuration (its run files are deleted)")
    add("--accelerator", choices=("cpu", "gpu", "tpu"),
        help="platform to train on (default: JAX's default backend); refused if absent")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--coordinator", help="multi-host: address host:port of process 0 "
        "(jax.distributed.initialize)")
    add("--num-processes", type=int, help="multi-host: number of processes")
    add("--process-id", type=int, help="multi-host: index of this process")
    add("--peer-timeout", type=int, default=60,
        help="multi-host: seconds without a heartbeat after which a process counts as dead and "
             "the others end (exit 134); also the longest a process ending on an error waits "
             "at exit for the others")
    return parser


_OVERRIDES = {"n_sims": "n_sims", "lr": "learning_rate", "batch_size": "batch_size",
              "epochs": "epochs", "max_steps": "max_steps", "patience": "early_stop_patience",
              "warmup_steps": "warmup_steps", "max_nonfinite": "max_nonfinite",
              "checkpoint_every": "checkpoint_every", "figure_every": "figure_every",
              "preprocessing": "preprocessing", "seed": "seed", "fresh_data": "fresh_data",
              "schedule": "schedule", "ema_decay": "ema_decay",
              "condition_noise": "condition_noise"}
_MODEL_OVERRIDES = ("levels", "steps", "hidden", "padding")


def _named(field: str) -> str:
    """A `TrainConfig` field as a message names it: its flag (`--epochs`), with the field's
    name where they differ (`learning_rate (--lr)`), or the name alone if no flag sets it."""
    flags = [flag for flag, name in _OVERRIDES.items() if name == field]
    if not flags:
        return field
    flag = "--" + flags[0].replace("_", "-")
    return flag if flags[0] == field else f"{field} ({flag})"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset named by `args.preset` with every flag given on the command line applied."""
    config = PRESETS[args.preset]()
    model_changes = {name: getattr(args, name) for name in _MODEL_OVERRIDES
                     if getattr(args, name) is not None}
    if args.map_size is not None:
        model_changes["image_shape"] = (args.map_size, args.map_size, 1)
    try:
        model = dataclasses.replace(config.model, **model_changes)
    except ValueError as error:
        raise UsageError(f"invalid model flags {model_changes}: {error}") from error
    changes = {field: getattr(args, flag) for flag, field in _OVERRIDES.items()
               if getattr(args, flag) is not None}
    if args.data != EXACT_LIKELIHOOD and args.fresh_data is None:
        changes["fresh_data"] = False  # a preset's fresh data is a lever of the lognormal maps
    config = dataclasses.replace(config, model=model, data=args.data,
                                 augment=not args.no_augment, **changes)
    if not config.fresh_data and args.condition_noise is None:
        config = dataclasses.replace(config, **FIXED_SET_CHANGES.get(args.preset, {}))
    return config


def data_line(config: TrainConfig) -> str:
    """One line saying what the run trains on: fresh or fixed simulations, or a file."""
    if config.fresh_data:
        return (f"data: {config.data}, {config.n_sims} simulations, new training simulations "
                f"every epoch")
    if config.data in SIMULATORS:
        return f"data: {config.data}, a fixed set of {config.n_sims} simulations"
    return f"data: the fixed set of simulations in {config.data}"
