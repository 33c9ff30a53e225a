"""The data-parallel device mesh: the batch sharded along ``'data'``, everything else replicated.

Steps are written for the global batch, so BatchNorm statistics span every device
and results do not depend on the device count.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["data_mesh", "replicated", "batch_sharded", "global_batch", "shard_whole_batch", "replicate"]


def data_mesh(devices: Sequence[Any] | None = None, batch_size: int | None = None) -> Mesh:
    """A 1-D mesh ``('data',)`` over ``devices`` (default: all devices of all processes).

    Devices are ordered by process, so each process's slice of a global batch
    (``awn_jax.input_pipeline.train_batches``) is a contiguous block of rows.

    Raises:
      ValueError: ``batch_size`` is not a multiple of the device count.
    """
    devices = list(devices if devices is not None else jax.devices())
    devices = np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id)))
    if batch_size is not None and batch_size % devices.size:
        raise ValueError(
            f"config.batch_size {batch_size} is not divisible by the {devices.size}"
            " devices; use a multiple of the device count."
        )
    return Mesh(devices, ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value (parameters, statistics, optimizer state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split across the mesh."""
    return NamedSharding(mesh, P("data"))


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's slice of a global batch -> global arrays sharded over the mesh."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _from_host(value: Any, sharding: NamedSharding) -> jax.Array:
    """``value``, whole on every process, as a global array (each device takes its own index)."""
    if isinstance(value, jax.Array) and value.sharding.is_equivalent_to(sharding, value.ndim):
        return value
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def shard_whole_batch(mesh: Mesh, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch that every process holds whole (evaluation) -> arrays sharded over the mesh."""
    sharding = batch_sharded(mesh)
    return {k: _from_host(v, sharding) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf (whole on every process, or already replicated on ``mesh``) replicated over the mesh.

    Unlike ``jax.device_put``, this works when the mesh spans devices of other processes.
    """
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _from_host(x, sharding), tree)
