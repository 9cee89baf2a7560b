"""Data parallelism: one path, ``jax.jit`` with ``NamedSharding`` over a mesh of all devices.

The train state is replicated (``P()``), the batch is split along its first axis over the mesh
axis ``"data"`` (``P("data")``) and the state is donated. XLA inserts the all-reduces, so the
loss, the batch-norm moments and Δp are computed over the global batch: one device, eight
devices or several hosts give the same numbers (up to float summation order).

Several hosts: call :func:`initialize_distributed` first; each host then feeds its own slice of
every global batch and :func:`shard_batch` assembles the global array with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from asl_jax.compile_options import FAST_COMPILE

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    heartbeat_timeout_s: int | None = None,
) -> bool:
    """Connects this process to the others of a multi-host run (``jax.distributed``).

    Must run before anything touches a JAX device. On CPU the cross-process collectives use gloo
    (the flag is set explicitly so that the behaviour does not depend on JAX's default).

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: total number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      auto: with no explicit arguments, let JAX detect the cluster (Cloud TPU, SLURM, Open MPI,
        Kubernetes...).
      heartbeat_timeout_s: after how long without heartbeats a process counts as lost (and the
        others stop); default JAX's (100 s).

    Returns:
      True when ``jax.distributed`` was initialised, False for a single-process run.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit) and not auto:
        return False
    if not auto and any(v is None for v in explicit):
        raise ValueError(
            "multi-host run: coordinator_address, num_processes and process_id must be "
            f"given together (got {coordinator_address!r}, {num_processes!r}, {process_id!r})"
        )
    if num_processes is not None and num_processes <= 0:
        raise ValueError(f"num_processes={num_processes}: expected a positive integer")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id}: expected a value in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **(
            {}
            if heartbeat_timeout_s is None
            else {"heartbeat_timeout_seconds": heartbeat_timeout_s}
        ),
    )
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all hosts).

    The axis type is set to ``Auto``: with explicit axes (``jax.make_mesh``'s default) sharding
    would become part of the types of traced values.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),),
        (DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices,
    )


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value (the train state)."""
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over ``"data"``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch arrays from this host's slice of every field.

    Args:
      batch: host-local NumPy arrays whose leading axis is this host's rows (the global batch
        size divided by the number of processes).
      mesh: the data mesh.

    Returns:
      Global ``jax.Array`` s sharded along ``"data"``.
    """
    sharding = data_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def on_cpu(mesh: Mesh) -> bool:
    """Whether the mesh's devices are CPUs (the XLA:CPU options apply)."""
    return mesh.devices.flat[0].platform == "cpu"


def jit_train_step(
    step_fn: Callable[..., Any], mesh: Mesh, cpu_options: Mapping[str, Any] | None = None
) -> Callable[..., Any]:
    """``jax.jit`` of ``step_fn(state, batch) -> (state, metrics)`` on ``mesh``, state donated.

    ``cpu_options``: XLA compiler options used when the mesh's devices are CPUs (ignored on
    accelerators), e.g. :func:`asl_jax.models.cpu_compiler_options`.
    """
    rep, dat = replicated_sharding(mesh), data_sharding(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(rep, dat),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
        compiler_options=_options_on(mesh, cpu_options),
    )


def jit_eval_step(
    eval_fn: Callable[..., Any], mesh: Mesh, cpu_options: Mapping[str, Any] | None = None
) -> Callable[..., Any]:
    """``jax.jit`` of ``eval_fn(state, batch) -> outputs``; outputs replicated on every host.

    ``cpu_options``: as for :func:`jit_train_step`.
    """
    rep, dat = replicated_sharding(mesh), data_sharding(mesh)
    return jax.jit(
        eval_fn,
        in_shardings=(rep, dat),
        out_shardings=rep,
        compiler_options=_options_on(mesh, cpu_options),
    )


def _options_on(mesh: Mesh, cpu_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # None, not {}: jax.jit's own default, so that programs without options are compiled
    # exactly as before.
    return dict(cpu_options) if cpu_options and on_cpu(mesh) else None


def jit_init(init_fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """``jax.jit`` of a state initialiser whose output is placed replicated on ``mesh``.

    Initialising under ``jit`` with a replicated output sharding works the same on one host or
    many (no host-to-device copy of a host value onto non-addressable devices). The initialiser
    runs once, so on CPU it is compiled with :data:`~asl_jax.compile_options.FAST_COMPILE`:
    about 5× faster to compile (random initialisers unroll into many ops) for a run time that does
    not matter.
    """
    options = _options_on(mesh, FAST_COMPILE)
    return jax.jit(init_fn, out_shardings=replicated_sharding(mesh), compiler_options=options)
