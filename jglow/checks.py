"""Shape validation done before tracing, with errors that name what was received and expected."""

from jglow.config import GlowConfig


def check_params(params, ensembles: bool = False):
    """The first argument of the model functions must be a `GlowParams` from `jglow.init` or
    `jglow.load`; with `ensembles`, an `EnsembleParams` (`jglow.ensemble`) is accepted too."""
    from jglow.ensemble import EnsembleParams  # local imports: both modules import this one
    from jglow.model import GlowParams

    if isinstance(params, GlowParams) or (ensembles and isinstance(params, EnsembleParams)):
        return
    if isinstance(params, EnsembleParams):
        raise TypeError("params is an EnsembleParams (a mixture of models) but this function "
                        "takes one model's GlowParams; jglow.log_prob, jglow.sample and "
                        "jglow.posterior take an ensemble, jglow.ensemble.member(params, k) "
                        "is one member")
    expected = "GlowParams or EnsembleParams" if ensembles else "GlowParams"
    raise TypeError(f"params must be the {expected} returned by jglow.init or jglow.load, "
                    f"got {type(params).__name__}")


def check_maps(config: GlowConfig, x, name: str = "x") -> int:
    """`x` must be `(N, H, W, C)` with `(H, W, C) == config.image_shape`; returns `N`."""
    shape = tuple(getattr(x, "shape", ()))
    expected = "(N, {}, {}, {})".format(*config.image_shape)
    if len(shape) != 4 or shape[1:] != config.image_shape:
        raise ValueError(f"{name} must have shape {expected} (N, H, W, C), got {shape}")
    return shape[0]


def check_conditions(config: GlowConfig, z, batch: int, name: str = "z") -> None:
    """`z` must be `(batch, cond_dim)`."""
    shape = tuple(getattr(z, "shape", ()))
    if len(shape) != 2 or shape[1] != config.cond_dim:
        raise ValueError(f"{name} must have shape (N, {config.cond_dim}) (N, cond_dim), got "
                         f"{shape}")
    if shape[0] != batch:
        raise ValueError(f"{name} has batch size {shape[0]} but the maps have {batch}; "
                         f"expected {name} of shape ({batch}, {config.cond_dim})")


def check_latents(config: GlowConfig, latents) -> int:
    """`latents` must be `(N, H·W·C)`; returns `N`."""
    shape = tuple(getattr(latents, "shape", ()))
    if len(shape) != 2 or shape[1] != config.dim:
        raise ValueError(f"latents must have shape (N, {config.dim}) (N, H*W*C), got {shape}")
    return shape[0]
