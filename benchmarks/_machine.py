"""What a benchmark ran on, and its results as JSON: one helper shared by every benchmark script.

`machine_info()` records the CPU model, the core counts, ``jax.devices()``, the versions of
Python, jax, jaxlib, flax and optax (and any extra package asked for), the load average and the
date. `write_results_json()` writes ``{"benchmark", "command", "machine", "results"}`` to a file,
converting the benchmarks' dataclasses (timings included) to plain JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BASE_PACKAGES",
    "machine_info",
    "machine_label",
    "machine_markdown",
    "to_jsonable",
    "write_results_json",
]

# Always recorded, whatever the benchmark imports.
BASE_PACKAGES = ("jax", "jaxlib", "flax", "optax")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask; `os.cpu_count()` off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _devices() -> list[str]:
    import jax

    return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]


def machine_info(packages: Sequence[str] = ("numpy",)) -> dict:
    """What the figures were measured on.

    Keys: ``cpu`` (model name), ``logical_cores`` (`os.cpu_count()`), ``usable_cores``,
    ``jax_devices`` (one string per device of `jax.devices()`), ``python``, ``platform``,
    ``versions`` (jax, jaxlib, flax, optax and `packages`; None when not installed),
    ``load_average``, ``xla_flags``, ``date``. Calling it initialises JAX's backend.
    """
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    names = list(dict.fromkeys([*BASE_PACKAGES, *packages]))
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "jax_devices": _devices(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in names},
        "load_average": load,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_label(info: dict) -> str:
    """One line naming the machine, for the caption of a table."""
    return (
        f"{info['cpu']}, {info['usable_cores']} usable cores, "
        f"jax {info['versions'].get('jax')}, {info['date']}"
    )


def machine_markdown(info: dict) -> str:
    """`machine_info` as a short Markdown list."""
    versions = ", ".join(
        f"{name} {version}" for name, version in info["versions"].items() if version is not None
    )
    missing = [name for name, version in info["versions"].items() if version is None]
    devices = info.get("jax_devices") or []
    lines = [
        f"- Machine: {info['cpu']}, {info['usable_cores']} usable cores "
        f"({info['logical_cores']} logical), Python {info['python']}, {info['platform']}",
        f"- Versions: {versions}" + (f" (not installed: {', '.join(missing)})" if missing else ""),
    ]
    if devices:
        more = f", … ({len(devices)} in all)" if len(devices) > 4 else ""
        shown = ", ".join(devices[:4]) + more
        lines.append(f"- JAX devices: {shown}")
    if info["load_average"] is not None:
        lines.append(
            "- Load average when the run started: "
            + " / ".join(f"{x:.2f}" for x in info["load_average"])
        )
    if info["xla_flags"]:
        lines.append(f"- XLA_FLAGS: `{info['xla_flags']}`")
    lines.append(f"- Date: {info['date']}")
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values for the benchmarks' results (dataclasses, timings, NumPy scalars)."""
    from benchmarks._timing import Timing

    if isinstance(obj, Timing):
        return {
            "median_seconds": obj.median,
            "q1_seconds": obj.quantile(0.25),
            "q3_seconds": obj.quantile(0.75),
            "spread": obj.spread,
            "calls_per_sample": obj.calls_per_sample,
            "samples_seconds": list(obj.samples),
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # NumPy / JAX scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return repr(obj)


def write_results_json(
    path: str | os.PathLike, benchmark: str, command: str, machine: dict, results: Any
) -> Path:
    """Writes ``{"benchmark", "command", "machine", "results"}`` to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": benchmark,
        "command": command,
        "machine": to_jsonable(machine),
        "results": to_jsonable(results),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
