"""2-D convolutions written for XLA:CPU, fast in the forward pass and in both derivatives.

The conditioner CNNs have few channels (2–16 in, 4–256 out). XLA:CPU's convolution is slow for
2–4 input channels, and its gradients are slow everywhere at these sizes; a kernel batched by
`vmap` (the stacked flow steps) becomes a grouped convolution whose gradient is slower still
(the conditioning's gradient took 4.1 s of a 10.5 s training step). So:

* the value is computed by whichever exact form is fastest for the shape
  (`_forward`): a fused sum of broadcast products for ≤ 4 input channels, a matmul for a 1×1
  kernel, one matmul to every tap followed by shifted adds for ≤ 4 output channels, XLA's
  convolution otherwise;
* the derivatives come from a custom JVP that is linear in the tangents and written with
  matmuls and slices only (`_linear_in_second`), so that reverse mode (its transpose) is
  matmuls and pads: `im2col(a) @ kernel` when the input has at most as many channels as the
  output, else `a @ kernel_per_tap` followed by shifted adds. Each form's transpose keeps the
  smaller side's channels times the taps.

The shapes and timings that chose these rules are in README, Performance.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jglow.numerics import channel_matmul

# Up to this many input (or output) channels, a large-field convolution avoids XLA's.
FEW_CHANNELS = 4
# Fields with at most this many output pixels (the conditions' 5×5 fields and the coarse
# levels) use XLA's convolution for the value: its fixed cost is small there.
SMALL_FIELD_PIXELS = 25


def conv2d(x, kernel, pad_value=0.0):
    """Stride-1 'same' convolution: `x (N, H, W, Cin)`, `kernel (kh, kw, Cin, Cout)` →
    `(N, H, W, Cout)`.

    Kernel sides are odd; the border is padded with `pad_value` (0 for an ordinary
    convolution, 1 for Glow's ZeroConv). A 1×1 kernel (also the invertible 1×1 convolution)
    is a matmul, or broadcast products for ≤ 4 input channels on a large field.
    """
    kh, kw, _, _ = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv2d needs odd kernel sides, got {kh}x{kw}")
    if kh == kw == 1:
        return valid_conv2d(x, kernel)
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)),
                     constant_values=pad_value)
    return valid_conv2d(padded, kernel)


@jax.custom_jvp
def valid_conv2d(padded, kernel):
    """'VALID' stride-1 convolution `(N, H+kh−1, W+kw−1, Cin)` → `(N, H, W, Cout)`."""
    return _forward(padded, kernel)


def _valid_conv2d_jvp(primals, tangents):
    """Tangent `conv(d_padded, kernel) + conv(padded, d_kernel)`; a zero tangent (an argument not
    being differentiated, e.g. the kernels in a gradient with respect to the conditions) costs
    nothing."""
    padded, kernel = primals
    d_padded, d_kernel = tangents
    out = valid_conv2d(padded, kernel)
    tangent_out = jnp.zeros_like(out)
    if not isinstance(d_padded, SymbolicZero):
        tangent_out = tangent_out + _linear_in_second(d_padded, kernel)
    if not isinstance(d_kernel, SymbolicZero):
        tangent_out = tangent_out + _linear_in_second(padded, d_kernel)
    return out, tangent_out


valid_conv2d.defjvp(_valid_conv2d_jvp, symbolic_zeros=True)


def _forward(padded, kernel):
    kh, kw, channels_in, channels_out = kernel.shape
    height, width = _output_size(padded, kh, kw)
    large_field = height * width > SMALL_FIELD_PIXELS
    if large_field and channels_in <= FEW_CHANNELS:
        return _broadcast_products(padded, kernel)
    if kh == kw == 1:
        return channel_matmul(padded, kernel[0, 0])
    if large_field and channels_out <= FEW_CHANNELS:
        return _taps_then_shift(padded, kernel)
    return lax.conv_general_dilated(padded, kernel, (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _linear_in_second(a, b):
    """The convolution of `a` by `b` in a form whose transpose (either argument) is matmuls."""
    _, _, channels_in, channels_out = b.shape
    if channels_in <= channels_out:
        return channel_matmul(_im2col(a, b.shape[0], b.shape[1]), b.reshape(-1, channels_out))
    return _taps_then_shift(a, b)


def _output_size(padded, kh, kw):
    """`(H, W)` of a 'VALID' `kh × kw` convolution of `padded (N, H+kh−1, W+kw−1, C)`."""
    return padded.shape[1] - kh + 1, padded.shape[2] - kw + 1


def _im2col(padded, kh, kw):
    """`(N, H+kh−1, W+kw−1, C)` → `(N, H, W, kh·kw·C)`, taps in kernel order (row, col, channel)."""
    height, width = _output_size(padded, kh, kw)
    return jnp.concatenate([padded[:, i:i + height, j:j + width, :]
                            for i in range(kh) for j in range(kw)], axis=-1)


def _broadcast_products(padded, kernel):
    """Σ over taps and input channels of (shifted input channel) × (kernel row): one fused loop."""
    kh, kw, channels_in, _ = kernel.shape
    height, width = _output_size(padded, kh, kw)
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i:i + height, j:j + width, :]
            for c in range(channels_in):
                out = out + window[..., c:c + 1] * kernel[i, j, c]
    return out


def _taps_then_shift(padded, kernel):
    """`padded @ kernel` for every tap at once, then the shifted per-tap results summed.

    The per-tap results are split into separate arrays before shifting, so that the transpose
    (reverse mode) concatenates nine small pads instead of summing nine full-width ones.
    """
    kh, kw, channels_in, channels_out = kernel.shape
    height, width = _output_size(padded, kh, kw)
    per_tap = channel_matmul(padded, jnp.transpose(kernel, (2, 0, 1, 3)).reshape(channels_in, -1))
    per_tap = jnp.split(per_tap, kh * kw, axis=-1)
    return sum(per_tap[i * kw + j][:, i:i + height, j:j + width, :]
               for i in range(kh) for j in range(kw))
