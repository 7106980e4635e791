"""Invertible 1×1 convolution, LU-parameterised (a flow step's first bijector).

`W = P · (L_strict + I) · (U_strict + diag(sign · exp(log_abs_s)))`, `y = x · Wᵀ` at every pixel,
`log_det = H·W·Σ log_abs_s`. `P` and `sign` are constants: they live in the params under the keys
listed in `CONSTANT_KEYS`, pass through `stop_gradient` here, and the trainer must not update them
(`jglow.trainable_mask`).

`W` and `W⁻¹` depend on the parameters alone: `condition` computes them (`InvConvTerms`), so a
`StepStack` takes them for all its steps at once, outside its scan.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import lax

from jglow.conv import conv2d
from jglow.numerics import lower_triangular_inverse, numpy_generator

CONSTANT_KEYS = ("perm", "sign")


class InvConvTerms(NamedTuple):
    """The 1×1 convolution's matrices, `(C, C)` each."""

    weight: jax.Array          # W
    inverse_weight: jax.Array  # W⁻¹


@dataclasses.dataclass(frozen=True)
class InvConv1x1:
    channels: int

    def init(self, key, x=None):
        """LU of a random orthogonal matrix, so the map starts as a rotation (log-det 0)."""
        rng = numpy_generator(key)
        q, _ = scipy.linalg.qr(rng.standard_normal((self.channels, self.channels)))
        perm, lower, upper = scipy.linalg.lu(q)
        diag = np.diag(upper)
        params = {"lower": np.tril(lower, -1), "upper": np.triu(upper, 1),
                  "log_abs_s": np.log(np.abs(diag)), "perm": perm, "sign": np.sign(diag)}
        return {name: jnp.asarray(value, jnp.float32) for name, value in params.items()}

    def _factors(self, params):
        """`(P, L, U)` with unit-diagonal `L`; masks keep only the strict triangles of the
        params."""
        perm, sign = (lax.stop_gradient(params[k]) for k in CONSTANT_KEYS)
        eye = jnp.eye(self.channels, dtype=params["lower"].dtype)
        lower = jnp.tril(params["lower"], -1) + eye
        upper = jnp.triu(params["upper"], 1) + jnp.diag(sign * jnp.exp(params["log_abs_s"]))
        return perm, lower, upper

    def weight(self, params):
        """`(C, C)` matrix `W = P·L·U`."""
        perm, lower, upper = self._factors(params)
        return perm @ lower @ upper

    def inverse_weight(self, params):
        """`(C, C)` matrix `W⁻¹ = U⁻¹ L⁻¹ Pᵀ` (triangular inverses in XLA's own ops, no LAPACK)."""
        perm, lower, upper = self._factors(params)
        upper_inverse = jnp.swapaxes(lower_triangular_inverse(jnp.swapaxes(upper, -1, -2)), -1, -2)
        return upper_inverse @ lower_triangular_inverse(lower) @ perm.T

    def condition(self, params, z, height, width) -> InvConvTerms:
        """`W` and `W⁻¹`, from the parameters alone (`z`, `height` and `width` are not used)."""
        return InvConvTerms(weight=self.weight(params), inverse_weight=self.inverse_weight(params))

    def forward(self, params, x, cond: InvConvTerms):
        return conv2d(x, cond.weight.T[None, None]), self._log_det(params, x)

    def inverse(self, params, y, cond: InvConvTerms):
        return conv2d(y, cond.inverse_weight.T[None, None]), -self._log_det(params, y)

    @staticmethod
    def _log_det(params, x):
        n, h, w, _ = x.shape
        return jnp.full((n,), h * w * jnp.sum(params["log_abs_s"]), x.dtype)
