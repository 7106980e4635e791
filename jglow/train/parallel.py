"""Data parallelism: a 1-D device mesh, replicated state, batches sharded along the mesh.

Every process computes the same global batch indices and feeds the rows of its own devices
(`local_rows`); `jax.make_array_from_process_local_data` assembles the global array. One
`jax.jit` with `NamedSharding`s runs the step on every device. Inside it, the model runs on
each device's rows only (`reduce_over_shards`, a `shard_map`), and one all-reduce combines
the results: left to the SPMD partitioner, the model's per-step conditioner convolutions were
all-gathered across devices, and its several independent collectives deadlocked XLA:CPU with 4
forced host devices on 2 cores. The same code runs on one device, many devices, many hosts.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jglow.compilation import jit
from jglow.train.config import UsageError

AXIS = "data"


def select_devices(accelerator: str | None) -> list:
    """All devices of `accelerator` ("cpu", "gpu", "tpu"; None: JAX's default backend), over
    every process. Raises `UsageError` listing what JAX sees when there are none."""
    try:
        devices = jax.devices(accelerator)
    except RuntimeError as error:
        raise UsageError(f"--accelerator {accelerator}: JAX finds no {accelerator} device "
                         f"({error}); it sees {jax.devices()}. Choose one of the platforms "
                         f"listed, or install the jax plugin for {accelerator}") from error
    if not devices:
        raise UsageError(f"--accelerator {accelerator}: no devices; JAX sees {jax.devices()}")
    return devices


def make_mesh(devices) -> Mesh:
    """A 1-D mesh named `AXIS` over `devices`."""
    return Mesh(np.asarray(devices), (AXIS,))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices (and so over the processes)."""
    if batch_size % mesh.size:
        raise UsageError(f"--batch-size {batch_size} does not divide by the {mesh.size} "
                         f"devices of the mesh; choose a multiple of {mesh.size}")


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def local_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch that this process's devices hold."""
    rows = sharded(mesh).addressable_devices_indices_map((batch_size,))
    starts = sorted(index[0].start or 0 for index in rows.values())
    stops = sorted(index[0].stop or batch_size for index in rows.values())
    return slice(starts[0], stops[-1])


def global_batch(mesh: Mesh, *arrays):
    """Global arrays sharded on the batch axis from full global numpy batches (every process
    passes the same global batch; only its own rows are transferred)."""
    batch_size = arrays[0].shape[0]
    rows = local_rows(mesh, batch_size)
    return tuple(jax.make_array_from_process_local_data(sharded(mesh), a[rows], a.shape)
                 for a in arrays)


def replicate(mesh: Mesh, tree):
    """`tree` placed on every device of the mesh (identical on every process)."""
    return jax.device_put(tree, replicated(mesh))


def host_value(tree):
    """Numpy copies of the leaves of a tree of replicated (or single-device) arrays; works
    on multi-host arrays too, through this process's first shard."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_shards[0].data), tree)


def jit_on_mesh(fn, mesh: Mesh, replicated_args: int, sharded_args: int,
                donate_first: bool = False):
    """`jit(fn)` (`jglow.compilation`) for `fn(*replicated_args, *sharded_args)`: the first
    `replicated_args` arguments and every output replicated, the next `sharded_args` split on
    their batch axis."""
    in_shardings = (replicated(mesh),) * replicated_args + (sharded(mesh),) * sharded_args
    return jit(fn, in_shardings=in_shardings, out_shardings=replicated(mesh),
               donate_argnums=(0,) if donate_first else ())


def reduce_over_shards(fn, mesh: Mesh, reduce=lax.pmean):
    """`fn(replicated, *batch_args)` evaluated by each device on its own rows of the batch
    arguments, the results (a pytree) combined over the devices by `reduce` (`lax.pmean`:
    the mean, right for means over equal shards; `lax.psum`: the sum) and so replicated."""
    def per_device(first, *rest):
        return reduce(fn(first, *rest), AXIS)

    def combined(first, *rest):
        specs = (PartitionSpec(),) + (PartitionSpec(AXIS),) * len(rest)
        # check_vma=False: the model's scans start from constants (not typed as varying over
        # the mesh); `fn` contains no collective, so nothing depends on that typing.
        return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(),
                             check_vma=False)(first, *rest)

    return combined
