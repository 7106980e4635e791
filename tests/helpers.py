"""Shared test utilities: tiny configurations, moving parameters off their initialisation, and
waiting on subprocesses."""

import pathlib
import time

import jax
import jax.numpy as jnp
import optax

import jglow


def tiny_config(**overrides):
    """A 16×16×1 model with 2 levels of 2 steps: seconds to compile, enough to exercise every
    path."""
    settings = dict(image_shape=(16, 16, 1), levels=2, steps=2, hidden=8, cond_hidden=8)
    settings.update(overrides)
    return jglow.GlowConfig(**settings)


def toy_batch(config, n, seed=0):
    """Correlated, non-Gaussian maps whose law depends on conditions in [−1, 1]:
    `(x (n,H,W,C), z (n,D))`."""
    key_x, key_z = jax.random.split(jax.random.PRNGKey(seed))
    z = jax.random.uniform(key_z, (n, config.cond_dim), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(key_x, (n, *config.image_shape))
    smooth = 0.5 * (noise + jnp.roll(noise, 1, axis=1))
    x = (smooth * (1.0 + 0.5 * z[:, :1, None, None]) + 0.3 * z[:, 1:, None, None]
         + 0.2 * jnp.sin(3.0 * smooth))
    return x, z


def adam_steps(loss_fn, params, mask, steps=10, learning_rate=1e-3):
    """`steps` Adam updates of `loss_fn(params)`, leaving the leaves where `mask` is False
    untouched.

    Used to move zero-initialised couplings and injectors off the identity before checking
    inverses and log-dets: a zero network proves nothing.
    """
    labels = jax.tree_util.tree_map(lambda trainable: "train" if trainable else "frozen", mask)
    optimizer = optax.multi_transform(
        {"train": optax.adam(learning_rate), "frozen": optax.set_to_zero()}, labels)
    state = optimizer.init(params)
    grad_fn = jax.jit(jax.grad(loss_fn))
    for _ in range(steps):
        updates, state = optimizer.update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
    return params


def trained_model(config, n=16, steps=10, seed=0):
    """`(params, x, z)`: a model fitted for a few Adam steps to `toy_batch`, so no net is zero."""
    x, z = toy_batch(config, n, seed)
    params = jglow.init(jax.random.PRNGKey(seed), config, x, z)
    params = adam_steps(lambda p: -jnp.mean(jglow.log_prob(p, x, z)), params,
                        jglow.trainable_mask(params), steps=steps)
    return params, x, z


def wait_until(condition, processes, timeout: float, what: str, logs=()) -> None:
    """Poll `condition()` every 10 ms until it holds. Fails, killing the `processes`
    (`subprocess.Popen`s) and showing the tails of the files `logs`, if one of them ends first
    or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = [p.returncode for p in processes if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            for process in processes:
                process.kill()
                process.wait()
            tails = "\n".join(f"--- {path}:\n{pathlib.Path(path).read_text()[-2000:]}"
                              for path in logs)
            raise AssertionError(f"{what}: not seen within {timeout} s (ended with "
                                 f"{ended or 'none ended'})\n{tails}")
        time.sleep(0.01)
