"""Log-likelihoods of raw maps at physical parameters θ = (Ωm, σ8), in nats.

A likelihood here is a callable `log_likelihood(maps, thetas) -> (B, M)`: `log p(map_b | θ_m)`
for raw maps `(B, H, W)` (physical units, e.g. HI column density) and physical parameters
`thetas` `(M, D)`. It must be traceable by JAX in `thetas` (the gradient-based MAP and sampler
differentiate it) and should be a pytree (the two classes below are; a plain function is wrapped
by `as_pytree`), so that its arrays are passed to `jax.jit` as arguments, not baked in as
constants. The grid posterior, the gradient methods and the calibration take any such callable,
so the same code runs on a trained model and on the exact synthetic likelihood.
"""

import flax.struct
import jax
import jax.numpy as jnp

from jglow import checks as model_checks
from jglow.compilation import jit
from jglow.data import BOX_SIZE, synthetic_log_prob
from jglow.data.preprocessing import Preprocessing
from jglow.model_params import GlowParams
from jglow.posterior.grid import default_chunk_size, grid_log_prob_unchecked, map_in_chunks


@flax.struct.dataclass
class ModelLikelihood:
    """`log p(map | θ)` of a trained model, as a density of the raw map.

    `log p(map | θ) = log p_model(x | z) + log |det ∂x/∂map|` with `x = forward_maps(map)` and
    `z = forward_params(θ)` from `preprocessing` (`jglow.data.fit_preprocessing`), evaluated by
    `grid_log_prob` with `chunk_size` (None: the default of `jglow.posterior.grid`).
    """

    params: GlowParams
    preprocessing: Preprocessing = flax.struct.field(pytree_node=False)
    chunk_size: int = flax.struct.field(pytree_node=False, default=None)

    @property
    def box(self):
        """The training prior box `((low, high), …)` of the preprocessing."""
        return self.preprocessing.box

    def __call__(self, maps, thetas):
        """Raw maps `(B, H, W)`, physical `thetas` `(M, D)` → `(B, M)` float32 nats."""
        x = self.preprocessing.forward_maps(maps)
        model_checks.check_maps(self.params.config, x, "preprocessed maps")
        zs = self.preprocessing.forward_params(thetas)
        chunk = self.chunk_size or default_chunk_size(zs.shape[0], x.shape[0], params=self.params)
        log_prob = grid_log_prob_unchecked(self.params, x, zs, min(chunk, zs.shape[0]))
        return log_prob + self.preprocessing.forward_log_det(maps)[:, None]


@flax.struct.dataclass
class SyntheticLikelihood:
    """The exact density of the synthetic generator, `jglow.data.synthetic_log_prob`.

    `box_size` is the side of the maps' box in Mpc/h; parameters are evaluated `chunk_size` at a
    time (memory `chunk_size · B` spectra).
    """

    box_size: float = flax.struct.field(pytree_node=False, default=BOX_SIZE)
    chunk_size: int = flax.struct.field(pytree_node=False, default=64)

    def __call__(self, maps, thetas):
        """Raw maps `(B, n, n)`, physical `thetas` `(M, 2)` → `(B, M)` float32 nats."""
        thetas = jnp.asarray(thetas, jnp.float32)
        return _synthetic_table(maps, thetas, self.box_size, min(self.chunk_size, thetas.shape[0]))


@jit(static_argnames=("box_size", "chunk_size"))
def _synthetic_table(maps, thetas, box_size, chunk_size):
    """`synthetic_log_prob` of `maps` `(B, n, n)` at each row of `thetas` `(M, 2)` → `(B, M)`."""
    at_theta = lambda theta: synthetic_log_prob(maps, theta, box_size)  # noqa: E731
    return map_in_chunks(jax.vmap(at_theta), thetas, chunk_size).T


def as_pytree(fn):
    """`fn` itself if it is a pytree holding its arrays; a plain function as a leafless
    `jax.tree_util.Partial`, so it can be passed through `jax.jit` as static structure."""
    leaves = jax.tree_util.tree_leaves(fn)
    if len(leaves) == 1 and leaves[0] is fn:
        return jax.tree_util.Partial(fn)
    return fn
