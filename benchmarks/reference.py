"""Side-by-side benchmark harness for the PyTorch HIGlow reference.

The reference is friedmanroy/HI-generation (arXiv 2211.12724).  Nothing from it is
vendored here: callers pass the path of a local checkout, which is put on
``sys.path`` so that its ``modules`` package can be imported.  torch is imported
only inside this file (lazily), so the rest of jglow never depends on it.

Usage::

    python benchmarks/reference.py --reference /path/to/HI-generation [--compile] [--malloc]

or, from another script in ``benchmarks/``::

    import reference as ref
    model = ref.build_reference(path)
    ref.time_log_prob(model)                           # {"median_s", "times_s", "maps_per_s", ...}

Paper configuration (the reference's ``cond_evals.ipynb``, cell 2, plus
``clamp_val=1e-3`` and ``add_actnorm=False``, which are the ``CondGlow``
defaults): 64x64x1 maps, ``n_blocks=6`` squeeze+split levels followed by one
final un-squeezed level (7 levels of 20 flow steps in all), hidden width 16,
conditional-prior MLP width 8, 2 conditions, conditional priors.  Trainable
parameters: 4,503,312.

Log-likelihood convention.  ``CondGlow.forward(x, cond)`` returns, per map,
sum of all log|det J| + sum of all prior log densities, where every prior term
is a full diagonal-Gaussian log density including its ``-0.5*d*log(2*pi)``
normalisation.  The reference adds no dequantisation noise and no
``-log(n_bins)`` (or ``log 256``) offset anywhere, so nothing is removed here:
the value returned is the continuous ``log p(x|z)`` in nats.  The only other
scaling in the reference is in its training loss, ``-mean(log_p) / (C*H*W)``
(``train_conditional.py``), which the train-step benchmark reproduces.

Timing functions return dicts: ``median_s`` (median wall time of one call after
warm-up), ``times_s`` (every timed call) and a throughput field.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

PAPER_CONFIG: dict[str, Any] = {
    "n_channels": 1,
    "cond_features": 2,
    "n_flows": 20,
    "n_blocks": 6,
    "temperature": 1,
    "affine": True,
    "hidden_width": 16,
    "learn_priors": True,  # ignored when cond_priors=True
    "start": False,
    "cond_priors": True,
    "input_size": 64,
    "cond_hidden": 8,
    "add_actnorm": False,
    "clamp_val": 1e-3,
}
PAPER_PARAM_COUNT = 4_503_312
N_THREADS = 2
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
}


def _torch():
    import torch

    torch.set_num_threads(N_THREADS)
    return torch


def _import_cond_glow(path: str):
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "modules", "models.py")):
        raise FileNotFoundError(f"{path} does not look like a HI-generation checkout "
                                f"(no modules/models.py)")
    if path not in sys.path:
        sys.path.insert(0, path)
    from modules.models import CondGlow  # noqa: E402  (reference code, imported from the checkout)

    return CondGlow


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """The reference draws its invertible-1x1 initial weights from numpy's global RNG."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def build_reference(path: str, seed: int = 0):
    """Build the paper-configuration reference CondGlow (float32, CPU, 2 threads).

    One forward pass on a tiny batch is run under no_grad, as the reference's
    training script and notebook do: the model records its latent shapes lazily
    on its first forward, and sampling needs them.
    """
    torch = _torch()
    CondGlow = _import_cond_glow(path)
    cfg = dict(PAPER_CONFIG)
    torch.manual_seed(seed)
    with _numpy_seed(seed):
        model = CondGlow(**cfg)
    # no dropout/batchnorm in the model; eval() changes nothing numerically
    model = model.float().eval()
    size = cfg["input_size"]
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(2, cfg["n_channels"], size, size, generator=gen) * 2 - 1
    c = torch.rand(2, cfg["cond_features"], generator=gen) * 2 - 1
    with torch.no_grad():
        model.forward(x, c)
    return model


# ----------------------------------------------------------------------------- timing


def _timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _inputs(batch: int, seed: int):
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 64, 64, generator=gen) * 2 - 1
    c = torch.rand(batch, 2, generator=gen) * 2 - 1
    return x, c


def _summary(times: list[float], **extra) -> dict[str, Any]:
    med = statistics.median(times)
    out = {"median_s": med, "times_s": [round(t, 5) for t in times]}
    out.update({k: (v(med) if callable(v) else v) for k, v in extra.items()})
    return out


def time_log_prob(model, batch: int = 64, repeats: int = 7, seed: int = 0) -> dict[str, Any]:
    """Forward log p(x|z) under no_grad on a batch; ``maps_per_s`` = batch / median."""
    torch = _torch()
    x, c = _inputs(batch, seed)

    def run():
        with torch.no_grad():
            model.forward(x, c)

    times = _timed(run, repeats)
    return _summary(times, batch=batch, maps_per_s=lambda m: batch / m)


def time_sampling(model, n: int = 64, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """``CondGlow.sample(cond, N)`` (N(0,1) latents, full reverse pass, no clipping)."""
    torch = _torch()
    _, c = _inputs(n, seed)

    def run():
        with torch.no_grad():
            model.sample(cond=c, N=n)

    times = _timed(run, repeats)
    return _summary(times, n=n, maps_per_s=lambda m: n / m)


def time_train_step(model, batch: int = 64, repeats: int = 5, seed: int = 0, lr: float = 3e-4,
                    clip: float = 2.0) -> dict[str, Any]:
    """One step of the reference training loop (train_conditional.py, without augmentation/data
    loading).

    zero_grad(set_to_none) -> loss = -mean(log p)/(C*H*W) -> backward ->
    clip_grad_norm_(2) -> Adam(lr=3e-4).step().  Runs on a deep copy so the
    caller's model is left untouched; the first (Adam-state-creating) step is the
    warm-up.
    """
    torch = _torch()
    m = copy.deepcopy(model).train()
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    x, c = _inputs(batch, seed)
    dims = x.shape[1] * x.shape[2] * x.shape[3]

    def run():
        opt.zero_grad(set_to_none=True)
        _, lp = m.forward(x, c)
        loss = -torch.mean(lp) / dims
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
        opt.step()
        return loss

    times = _timed(run, repeats)
    return _summary(times, batch=batch, steps_per_s=lambda t: 1 / t, maps_per_s=lambda t: batch / t)


def grid_posterior(model, x_nchw, grid: int = 30, batch: int = 128):
    """The reference notebook's parameter inference (cond_evals.ipynb, cells 4-5).

    One map ``x`` of shape (1,1,64,64); conditions on a ``grid x grid`` mesh of
    linspace(-1,1) (normalised Omega_m, sigma_8; ``np.meshgrid`` so Omega_m varies
    fastest); ``model.forward(img, cond=eval_conds[i:i+batch])`` in a Python loop
    with the batch-1 map broadcast against up to ``batch`` conditions; the
    posterior is ``exp(logp - logsumexp(logp))`` (flat prior).  Returns
    (eval_conds, logp, posterior) as torch tensors.
    """
    torch = _torch()
    xx, yy = np.meshgrid(np.linspace(-1, 1, num=grid), np.linspace(-1, 1, num=grid))
    eval_conds = torch.concat([torch.from_numpy(xx.flatten()[:, None]).float(),
                               torch.from_numpy(yy.flatten()[:, None]).float()], dim=1)
    m_total = grid * grid
    with torch.no_grad():
        logp = []
        for i in range(0, m_total, batch):
            _, lp = model.forward(x_nchw, cond=eval_conds[i:i + batch])
            logp.append(lp)
        logp = torch.concat(logp)
        post = torch.exp(logp - torch.logsumexp(logp, dim=0))
    return eval_conds, logp, post


def time_grid_posterior(model, grid: int = 30, batch: int = 128, repeats: int = 3,
                        seed: int = 0) -> dict[str, Any]:
    """Time ``grid_posterior`` for one map (default 900 conditions in 8 batches of <=128)."""
    x, _ = _inputs(1, seed)
    times = _timed(lambda: grid_posterior(model, x, grid=grid, batch=batch), repeats)
    return _summary(times, grid=grid, batch=batch, n_conditions=grid * grid,
                    conditions_per_s=lambda m: grid * grid / m)


def time_compiled_log_prob(model, batch: int = 64, repeats: int = 7,
                           seed: int = 0) -> dict[str, Any]:
    """``torch.compile(model)`` forward under no_grad; ``compile_s`` is the first call
    (trace+codegen)."""
    torch = _torch()
    x, c = _inputs(batch, seed)
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        _, lp_c = compiled(x, c)
    compile_s = time.perf_counter() - t0
    with torch.no_grad():
        _, lp = model(x, c)
    max_abs_diff = float((lp_c - lp).abs().max())

    def run():
        with torch.no_grad():
            compiled(x, c)

    times = _timed(run, repeats)
    return _summary(times, batch=batch, compile_s=compile_s, max_abs_diff_vs_eager=max_abs_diff,
                    maps_per_s=lambda m: batch / m)


# ----------------------------------------------------------------------------- CLI


def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux /proc/stat), for a contention check."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except Exception:  # noqa: BLE001 - informational only
        return None


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _git_head(path: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="path of a local HI-generation checkout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64, help="batch for log_prob and the train step")
    ap.add_argument("--sample-n", type=int, default=64)
    ap.add_argument("--grid", type=int, default=30)
    ap.add_argument("--grid-batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats for log_prob/sampling")
    ap.add_argument("--train-repeats", type=int, default=5)
    ap.add_argument("--grid-repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile (slow to compile)")
    ap.add_argument("--malloc", action="store_true",
                    help=f"re-run this process with "
                         f"{' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    if args.malloc and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these at process start, so they cannot be set from inside.
        env = dict(os.environ, **MALLOC_ENV)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

    torch = _torch()
    t_start = time.perf_counter()
    busy0, own0 = _cpu_busy_s(), _own_cpu_s()
    t0 = time.perf_counter()
    model = build_reference(args.reference, seed=args.seed)
    build_s = time.perf_counter() - t0
    n_params = count_parameters(model)

    res: dict[str, Any] = {
        "reference_commit": _git_head(args.reference),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "config": PAPER_CONFIG,
        "n_params": n_params,
        "n_params_ok": n_params == PAPER_PARAM_COUNT,
        "build_s": build_s,
    }
    res["log_prob"] = time_log_prob(model, batch=args.batch, repeats=args.repeats, seed=args.seed)
    res["sampling"] = time_sampling(model, n=args.sample_n, repeats=max(3, args.repeats - 2),
                                    seed=args.seed)
    res["train_step"] = time_train_step(model, batch=args.batch, repeats=args.train_repeats,
                                        seed=args.seed)
    res["grid_posterior"] = time_grid_posterior(model, grid=args.grid, batch=args.grid_batch,
                                                repeats=args.grid_repeats, seed=args.seed)
    if args.compile:
        res["compiled_log_prob"] = time_compiled_log_prob(model, batch=args.batch,
                                                          repeats=args.repeats, seed=args.seed)
    res["total_s"] = time.perf_counter() - t_start
    busy1, own1 = _cpu_busy_s(), _own_cpu_s()
    # CPU seconds used by *other* processes while this ran; large values mean the timings are
    # contended.
    res["other_processes_cpu_s"] = (None if busy0 is None
                                    else round((busy1 - busy0) - (own1 - own0), 2))
    res["loadavg_end"] = os.getloadavg()
    # Flag runs where other processes took more than 10% of the CPU time available to us.
    oc = res["other_processes_cpu_s"]
    res["contended"] = None if oc is None else bool(oc > 0.1 * N_THREADS * res["total_s"])

    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return res


if __name__ == "__main__":
    main()
