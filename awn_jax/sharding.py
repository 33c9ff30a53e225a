"""The data-parallel device mesh: the batch sharded along ``'data'``, everything else replicated.

Steps are written for the global batch, so BatchNorm statistics span every device
and results do not depend on the device count.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["data_mesh", "replicated", "batch_sharded", "global_batch"]


def data_mesh(devices: Sequence[Any] | None = None, batch_size: int | None = None) -> Mesh:
    """A 1-D mesh ``('data',)`` over ``devices`` (default: all devices of all processes).

    Raises:
      ValueError: ``batch_size`` is not a multiple of the device count.
    """
    devices = np.asarray(devices if devices is not None else jax.devices())
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
