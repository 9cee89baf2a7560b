"""1 vs 8 simulated devices: a correctness check of data parallelism, not a speed claim.

In a subprocess with ``jax_num_cpu_devices=8`` (or in this process when it already has that many
CPU devices), the same steps of adaptive ASL on a 1-device and an 8-device mesh; max |Δ| of the
loss, Δp, γ− and the parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np

from asl_jax.compile_options import FAST_COMPILE
from benchmarks import _timing
from benchmarks._train_common import (
    ASL_ADAPTIVE,
    LOSS_KEYS,
    LOSS_SETTINGS,
    ROOT,
    BenchModel,
    _compile_train,
    _ms,
    _specs,
    _take_batches,
    make_config,
    programs_for,
)

_SCALING_MARKER = "SCALING_JSON "


@dataclasses.dataclass
class ScalingResult:
    """The same steps on a 1-device and an N-device mesh."""

    loss: str
    steps: int
    batch_size: int
    devices: int
    max_abs_loss: float
    max_abs_gamma_neg: float
    max_abs_delta_p: float
    max_abs_param: float
    max_param: float
    loss_first_last: tuple[float, float]
    gamma_neg_first_last: tuple[float, float]
    step_seconds_1: float
    step_seconds_8: float
    wall_seconds: float
    subprocess: bool


def scaling_check(
    spec: BenchModel,
    *,
    loss: str = ASL_ADAPTIVE,
    steps: int,
    devices: int = 8,
    cache_dir: str = "",
    seed: int = 0,
    compiler_options: dict | None = None,
) -> dict[str, Any]:
    """`steps` train steps on a 1-device and a `devices`-device mesh, in this process.

    Both runs start from the same state (same key) and see the same global batches; the steps
    alternate between the two meshes so that the machine's load hits both alike. The process must
    already have at least `devices` CPU devices.

    Returns:
      The fields of `ScalingResult` but ``wall_seconds`` and ``subprocess``.
    """
    from asl_jax.data import create_source
    from asl_jax.training import make_mesh, shard_batch

    available = jax.devices()
    if len(available) < devices:
        raise RuntimeError(
            f"the 1-vs-{devices}-devices check needs {devices} devices, this process has "
            f"{len(available)} (set jax_num_cpu_devices before JAX initialises)"
        )
    config = make_config(spec, LOSS_SETTINGS[loss], cache_dir=cache_dir)
    source = create_source(config.data, seed=seed)
    host_batches = _take_batches(source, config, steps)
    runs: dict[int, dict[str, Any]] = {}
    for n in (1, devices):
        mesh = make_mesh(available[:n])
        programs = programs_for(config, source, spec, mesh)
        batches = [shard_batch(b, mesh) for b in host_batches]
        state = programs.init(jax.random.key(seed))
        train, _ = _compile_train(programs, state, batches[0], compiler_options)
        runs[n] = {
            "train": train,
            "state": state,
            "batches": batches,
            "metrics": [],
            "seconds": [],
        }
    for i in range(steps):
        for run in runs.values():
            start = time.perf_counter()
            run["state"], metrics = run["train"](run["state"], run["batches"][i])
            jax.block_until_ready((run["state"], metrics))
            run["seconds"].append(time.perf_counter() - start)
            run["metrics"].append({k: float(v) for k, v in jax.device_get(metrics).items()})
    one, many = runs[1], runs[devices]

    def max_diff(key: str) -> float:
        pairs = zip(one["metrics"], many["metrics"], strict=True)
        return max(abs(a[key] - b[key]) for a, b in pairs)

    params_1 = jax.tree.leaves(jax.device_get(one["state"].params))
    params_n = jax.tree.leaves(jax.device_get(many["state"].params))
    final_gamma_1 = float(jax.device_get(one["state"].gamma_neg))
    final_gamma_n = float(jax.device_get(many["state"].gamma_neg))
    return {
        "loss": loss,
        "steps": steps,
        "batch_size": spec.batch_size,
        "devices": devices,
        "max_abs_loss": max_diff("loss"),
        # The γ− each step applied, and the final state's (after the last update).
        "max_abs_gamma_neg": max(max_diff("gamma_neg"), abs(final_gamma_1 - final_gamma_n)),
        "max_abs_delta_p": max_diff("delta_p"),
        "max_abs_param": max(
            float(np.max(np.abs(a - b))) for a, b in zip(params_1, params_n, strict=True)
        ),
        "max_param": max(float(np.max(np.abs(a))) for a in params_1),
        "loss_first_last": (one["metrics"][0]["loss"], one["metrics"][-1]["loss"]),
        "gamma_neg_first_last": (one["metrics"][0]["gamma_neg"], final_gamma_1),
        "step_seconds_1": statistics.median(one["seconds"]),
        "step_seconds_8": statistics.median(many["seconds"]),
    }


def scaling_worker(args: argparse.Namespace) -> None:
    """The subprocess: sets the device count, runs `scaling_check`, prints one JSON line."""
    # Before anything initialises JAX's backend (nothing in this module touches a device at
    # import time).
    jax.config.update("jax_num_cpu_devices", args.devices)
    result = scaling_check(
        _specs(args)["cnn"],
        loss=LOSS_KEYS[args.scaling_loss],
        steps=args.scaling_steps,
        devices=args.devices,
        cache_dir=args.cache_dir,
        seed=args.seed,
        compiler_options=FAST_COMPILE if args.tiny else None,
    )
    print(_SCALING_MARKER + json.dumps(result), flush=True)


def run_scaling(
    *,
    steps: int,
    devices: int = 8,
    loss_key: str = "asl_adaptive",
    tiny: bool = False,
    num_train: int = 0,
    cache_dir: str = "",
    seed: int = 0,
    timeout: float = 900.0,
) -> ScalingResult:
    """The 1-vs-`devices` check, in a fresh Python process with `devices` simulated CPU devices.

    When this process already has that many CPU devices (e.g. under the test suite, which sets
    ``jax_num_cpu_devices=8``), the check runs here instead: same code, no second start-up and
    compilation of the 1-device program.
    """
    spec = _specs(argparse.Namespace(tiny=tiny, num_train=num_train))["cnn"]
    start = time.perf_counter()
    if jax.default_backend() == "cpu" and len(jax.devices()) >= devices:
        data = scaling_check(
            spec,
            loss=LOSS_KEYS[loss_key],
            steps=steps,
            devices=devices,
            cache_dir=cache_dir,
            seed=seed,
            compiler_options=FAST_COMPILE if tiny else None,
        )
        return ScalingResult(**data, wall_seconds=time.perf_counter() - start, subprocess=False)
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_step",
        "--scaling-worker",
        f"--scaling-steps={steps}",
        f"--scaling-loss={loss_key}",
        f"--devices={devices}",
        f"--num-train={num_train}",
        f"--cache-dir={cache_dir}",
        f"--seed={seed}",
    ] + (["--tiny"] if tiny else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # The worker sets the device count itself; an inherited XLA flag would compete with it.
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(
        f for f in flags if not f.startswith("--xla_force_host_platform_device_count")
    )
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(_SCALING_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the 1-vs-{devices}-devices subprocess failed (exit {done.returncode}):\n"
            + done.stderr[-4000:]
        )
    data = json.loads(lines[-1][len(_SCALING_MARKER) :])
    data["loss_first_last"] = tuple(data["loss_first_last"])
    data["gamma_neg_first_last"] = tuple(data["gamma_neg_first_last"])
    return ScalingResult(**data, wall_seconds=wall, subprocess=True)


def scaling_table(result: ScalingResult) -> str:
    """Agreement of the 1-device and N-device runs, and their step times."""
    rows = [
        ["max \\|Δ loss\\| over the steps", f"{result.max_abs_loss:.1e}"],
        ["max \\|Δ γ−\\| over the steps (and final state)", f"{result.max_abs_gamma_neg:.1e}"],
        ["max \\|Δ Δp\\| over the steps", f"{result.max_abs_delta_p:.1e}"],
        [
            "max \\|Δ parameter\\| after the steps (largest \\|parameter\\|)",
            f"{result.max_abs_param:.1e} ({result.max_param:.2f})",
        ],
        [
            "loss, first → last step (1 device)",
            f"{result.loss_first_last[0]:.4f} → {result.loss_first_last[1]:.4f}",
        ],
        [
            "γ−, first step → final state (1 device)",
            f"{result.gamma_neg_first_last[0]:.4f} → {result.gamma_neg_first_last[1]:.4f}",
        ],
        [
            f"median step time, 1 / {result.devices} devices (ms)",
            f"{_ms(result.step_seconds_1)} / {_ms(result.step_seconds_8)} "
            f"(ratio {result.step_seconds_8 / result.step_seconds_1:.2f})",
        ],
    ]
    return _timing.markdown_table(["1 vs 8 devices", "value"], rows)
