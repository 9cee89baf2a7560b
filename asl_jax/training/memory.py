"""An early check that the input a config asks for fits in memory.

Without it, an absurd ``data.image_size`` or batch size fails deep inside NumPy or XLA with a raw
out-of-memory error (or gets the process killed) minutes into a run.
:func:`check_dataset_memory` and :func:`check_batch_memory` estimate, before any data is
generated or program compiled, the memory that cannot be avoided and refuse the config when it
exceeds what is available:

- the input batch on each device: ``ceil(batch / devices) × H × W × 3 × 4`` bytes (the float32
  images the step computes on; the activations come on top of it, so this is a lower bound), for
  the train batch (``batch_size``) and the evaluation batch (``eval_batch_size``);
- the ``shapes`` dataset, which is generated whole in host memory:
  ``(num_train + num_val) × H × W × 3`` bytes (uint8).

Available memory is the device's free memory when it reports one (``memory_stats()``: GPU,
TPU); CPU devices do not, and share the host's RAM, so their batches count together against
the host's available RAM (``MemAvailable`` of ``/proc/meminfo``, else ``os.sysconf``). A host
whose available memory cannot be read is not checked.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax

from asl_jax.training.config import Config, ConfigError

#: Bytes of one input value inside the step (float32 images).
INPUT_BYTES = 4


@dataclasses.dataclass(frozen=True)
class Available:
    """Memory that a need is compared with.

    Attributes:
      per_device: free bytes of one device, or None when the devices share the host's RAM.
      host: available bytes of the host's RAM, or None when unknown.
      where: what was measured, for the message (``"GPU memory"``, ``"host RAM"``).
    """

    per_device: int | None
    host: int | None
    where: str


def host_available_bytes() -> int | None:
    """Available RAM of this host: ``MemAvailable`` (Linux), else free pages; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(devices: Sequence[Any] | None = None) -> Available:
    """The free memory of ``devices`` (default: this host's devices) and of the host."""
    devices = list(jax.local_devices() if devices is None else devices)
    host = host_available_bytes()
    try:
        stats = devices[0].memory_stats() if devices else None
    except Exception:  # some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return Available(free, host, f"{devices[0].platform.upper()} memory")
    return Available(None, host, "host RAM")


def gib(n: float) -> str:
    """``n`` bytes in GiB (MiB below 1 GiB), for messages."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def batch_bytes(batch_size: int, image_size: int, num_devices: int) -> int:
    """Bytes of one device's share of a batch of float32 ``image_size``² RGB images."""
    return math.ceil(batch_size / num_devices) * image_size * image_size * 3 * INPUT_BYTES


def check_dataset_memory(config: Config, *, available: Available | None = None) -> None:
    """Refuses a ``shapes`` config whose dataset does not fit in the host's RAM.

    Called before the dataset is generated (the other sources read their images batch by batch).

    Raises:
      ConfigError: naming ``data.image_size``, the memory needed and the memory available.
    """
    if config.data.name != "shapes":
        return
    size = config.data.image_size
    images = config.data.num_train + config.data.num_val
    need = images * size * size * 3
    available = available_memory() if available is None else available
    _refuse_above(
        need,
        available.host,
        "host RAM",
        f"data.image_size={size}: the shapes dataset ({images} images of {size}×{size}×3 uint8) "
        f"needs {gib(need)}",
        "lower data.image_size or data.num_train / data.num_val",
    )


def check_batch_memory(
    config: Config,
    *,
    num_devices: int,
    local_devices: int,
    available: Available | None = None,
) -> None:
    """Refuses a config whose input batches alone do not fit in memory (module docstring).

    Called once the train batch size is final (it may have been lowered to fit the split).

    Args:
      config: a validated training config.
      num_devices: devices of the mesh (a batch is split over them).
      local_devices: devices of this host (on CPU their batches share its RAM).
      available: the memory to compare with (default: :func:`available_memory`).

    Raises:
      ConfigError: naming the batch field and ``data.image_size``, the memory needed and the
        memory available.
    """
    size = config.data.image_size
    available = available_memory() if available is None else available
    shared = available.per_device is None
    for field in ("batch_size", "eval_batch_size"):
        batch = getattr(config, field)
        if batch == 0:  # eval_batch_size 0 = batch_size, checked already
            continue
        per_device = batch_bytes(batch, size, num_devices)
        need = per_device * local_devices if shared else per_device
        what = f"the {local_devices} device(s) of this host" if shared else "each device"
        _refuse_above(
            need,
            available.host if shared else available.per_device,
            available.where,
            f"{field}={batch} with data.image_size={size}: the input batch alone needs "
            f"{gib(need)} on {what} ({math.ceil(batch / num_devices)} images of "
            f"{size}×{size}×3 float32 per device, before any activation)",
            f"lower {field} or data.image_size",
        )


def _refuse_above(need: int, free: int | None, where: str, what: str, advice: str) -> None:
    if free is not None and need > free:
        raise ConfigError(f"{what}, more than the {gib(free)} of {where} available; {advice}")
