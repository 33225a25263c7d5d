"""Data parallelism with jax.jit + NamedSharding on a `jax.make_mesh` mesh.

Mesh axes: 'data' (the batch is split along it) and 'networks' (stacked
per-group networks may be split along it; size 1 unless config.mesh.networks
says otherwise). Parameters are replicated over 'data'. Programs are written
for the GLOBAL batch: means, batch statistics and affinities are over all
devices' examples, so results do not depend on the device count.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tag_jax.data import pipeline
from tag_jax.errors import UserError

DATA = "data"
NETWORKS = "networks"


def create_mesh(mesh_config) -> jax.sharding.Mesh:
    """Mesh (data, networks) over the first data*networks devices; data=-1 takes all that remain."""
    devices = jax.devices()
    networks = mesh_config.networks
    data = mesh_config.data if mesh_config.data > 0 else len(devices) // max(networks, 1)
    if data < 1 or networks < 1 or data * networks > len(devices):
        raise UserError(
            f"config.mesh data={mesh_config.data} x networks={networks} does not fit the "
            f"{len(devices)} available devices"
        )
    return jax.make_mesh(
        (data, networks),
        (DATA, NETWORKS),
        devices=devices[: data * networks],
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
    )


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh, streams: bool = False) -> NamedSharding:
    """Leading (example) axis split over 'data'; with streams, batches (S, B, ...) of S data
    streams (seeds) split over 'data' on their example axis."""
    return NamedSharding(mesh, P(None, DATA) if streams else P(DATA))


def jit_train_step(step_fn, state_sharding, mesh, streams: bool = False, compiler_options=None):
    """jit of (state, batch) -> (state, metrics): state as `state_sharding`, batch split over
    'data' (see batch_sharding), metrics replicated, the input state donated; compiler_options:
    the method's (Method.compiler_options)."""
    return jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch_sharding(mesh, streams)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
        compiler_options=compiler_options,
    )


def global_batch(local_batch: dict, mesh, streams: bool = False) -> dict:
    """This process's rows (numpy) -> global jax.Arrays sharded over 'data' (see batch_sharding)."""
    sharding = batch_sharding(mesh, streams)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def device_batches(local_batches, mesh, *, ahead: int, streams: bool = False):
    """global_batch of each of this process's batches, in order. ahead >= 1: read and copied to
    the devices by a background thread at most `ahead` batches ahead of the consumer (so the host's
    work overlaps the steps); close the generator to stop it. ahead = 0: in the caller's thread."""
    on_devices = (global_batch(batch, mesh, streams) for batch in local_batches)
    return pipeline.prefetched(on_devices, ahead=ahead)


def check_divisible(batch_size: int, mesh, what: str) -> None:
    size = mesh.shape[DATA]
    if batch_size % size:
        raise UserError(
            f"config.{what} {batch_size} must be divisible by the {size} devices of the "
            f"'data' mesh axis; change it or set config.mesh.data"
        )
