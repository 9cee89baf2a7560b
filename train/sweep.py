"""``python -m train.sweep``: a loss over a grid of its settings, with seeds and error bars.

The question the paper's ablations answer, on your data: which γ− and which probability margin
m? Every point of the grid trains the loss (``--loss``, default ASL) once per seed, through the
same code as ``python -m train.compare --seeds`` (one comparison of that single loss per point):

    python -m train.sweep --grid=loss.gamma_neg=0,1,2,4,6 --grid=loss.clip=0,0.05,0.1,0.2
    python -m train.sweep --grid=loss.gamma_neg=2,4 --seeds=0,1,2 --config.num_steps=512
    python -m train.sweep --loss=hill --grid=loss.hill_lambda=1,1.5,2

``--loss`` takes any ``train.compare --losses`` name; ``--grid=KEY=V1,V2,...`` one of the fields
that loss reads that are real numbers (for ASL ``loss.gamma_neg``, ``loss.gamma_pos``,
``loss.clip``); several ``--grid`` flags span their product. Each point's runs live in
``WORKDIR/<key=value,...>/seed_<s>/<loss>/`` (complete training workdirs). Results in
``WORKDIR``:

- ``sweep.json``: per point its settings and, over the seeds whose run completed, the mean,
  standard deviation and values of the final mAP, EMA mAP, CF1 and OF1; failed runs are listed;
- ``sweep.md``: the table and the command;
- ``plots/map_vs_<key>.png`` for each swept key: mAP against that key, one line per value of the
  other swept keys, error bars = standard deviation over seeds (when several ran).

A failed run is reported and the others still run (exit status 1 at the end). Rerunning the same
command reuses finished runs and resumes interrupted ones; Ctrl-C / SIGTERM stops at a step
boundary with a checkpoint and exits with 128 + the signal number.
"""

from __future__ import annotations

import itertools
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from asl_jax.config_fields import nested_dict
from asl_jax.training.config import Config
from asl_jax.training.lock import WorkdirBusyError, holds_workdir_lock
from asl_jax.training.loss_registry import COMMON_FIELDS, LossConfig
from train.compare import (
    LABELS,
    RUNS,
    SEED_METRICS,
    USED_LOSS_FIELDS,
    compare_seeds,
    format_mean_sd,
    parse_seeds,
)

#: The loss a sweep trains unless ``--loss`` says otherwise.
SWEPT_LOSS = "asl"


def grid_keys(loss: str = SWEPT_LOSS) -> tuple[str, ...]:
    """Keys ``--grid`` accepts for the run ``loss``: the fields it reads that are real numbers."""
    if loss not in RUNS:
        raise ValueError(f"--loss={loss!r}: expected one of {', '.join(RUNS)}")
    return tuple(
        sorted(
            f"loss.{name}"
            for name in USED_LOSS_FIELDS[loss] - COMMON_FIELDS
            if isinstance(getattr(LossConfig(), name), float)
        )
    )


#: The keys of the default loss, ASL.
GRID_KEYS = grid_keys()


def parse_grid(specs: Sequence[str], loss: str = SWEPT_LOSS) -> dict[str, tuple[float, ...]]:
    """``["loss.gamma_neg=0,2,4", "loss.clip=0,0.05"]`` -> ``{key: values}``, in flag order."""
    from train.cli import did_you_mean

    keys = grid_keys(loss)
    grid: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            hint = did_you_mean(key, keys) if sep else "expected KEY=V1,V2,..."
            raise ValueError(
                f"--grid={spec!r}: {hint or 'unknown key'} (keys of {loss}: {', '.join(keys)})"
            )
        if key in grid:
            raise ValueError(f"--grid: {key} is given twice")
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"--grid={spec!r}: the values must be numbers") from None
        if not values or len(set(values)) != len(values):
            raise ValueError(f"--grid={spec!r}: expected distinct numbers, e.g. {key}=0,1,2")
        grid[key] = values
    if not grid:
        raise ValueError(f"give at least one --grid=KEY=V1,V2,... (keys: {', '.join(keys)})")
    return grid


def grid_points(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of the grid's values (the last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def point_name(point: Mapping[str, float]) -> str:
    """The directory of a point: ``gamma_neg=4,clip=0.05``."""
    return ",".join(f"{key.split('.', 1)[1]}={value:g}" for key, value in point.items())


@holds_workdir_lock
def sweep(
    base_config: Config | Mapping[str, Any],
    workdir: str | os.PathLike[str],
    grid: Mapping[str, Sequence[float]],
    seeds: Sequence[int],
    *,
    loss: str = SWEPT_LOSS,
    **kwargs: Any,
) -> dict[str, Any]:
    """Trains ``loss`` at every grid point once per seed; writes sweep.json, sweep.md and plots/.

    Args:
      base_config: the shared config; the grid's keys are set per point, ``seed`` per run.
      workdir: where the points and the results go.
      grid: key -> values (see :func:`parse_grid`).
      seeds: the seeds of every point.
      loss: the run to train (a ``train.compare --losses`` name).
      **kwargs: passed to :func:`train.compare.compare` (``command``, ``train_fn``, ...).

    Returns:
      The content of sweep.json: ``command``, ``loss``, ``grid``, ``seeds``, ``status``
      (``completed``, ``failed``, ``interrupted``), ``signal`` and ``points`` (``settings``,
      ``dir``, ``seeds`` completed, ``failed`` seeds, and per metric of
      :data:`train.compare.SEED_METRICS` the mean,
      std, values and n, or None).
    """
    from asl_jax.training.records import write_json

    workdir = os.path.abspath(os.fspath(workdir))
    kwargs.setdefault("command", shlex.join(["python", "-m", "train.sweep", *sys.argv[1:]]))
    points, status, signal = [], "completed", None
    for point in grid_points(grid):
        entry: dict[str, Any] = {"settings": dict(point), "dir": point_name(point)}
        if signal is None:
            config = nested_dict(base_config)
            config["loss"] = {
                **config["loss"],
                **{key.split(".", 1)[1]: value for key, value in point.items()},
            }
            summary = compare_seeds(
                config, os.path.join(workdir, entry["dir"]), (loss,), seeds, baseline=loss, **kwargs
            )
            (result,) = summary["losses"]
            entry["seeds"] = result["seeds"]
            entry["failed"] = [s for s in seeds if s not in result["seeds"]]
            entry.update({key: result[key] for key in SEED_METRICS})
            if summary["status"] == "interrupted":
                status, signal = "interrupted", summary["signal"]
            elif summary["status"] == "failed" and status == "completed":
                status = "failed"
        else:
            entry.update(seeds=[], failed=[], **dict.fromkeys(SEED_METRICS))
        points.append(entry)
    result = {
        "command": kwargs["command"],
        "loss": loss,
        "grid": {key: list(values) for key, values in grid.items()},
        "seeds": list(seeds),
        "status": status,
        "signal": signal,
        "points": points,
    }
    write_json(os.path.join(workdir, "sweep.json"), result)
    with open(os.path.join(workdir, "sweep.md"), "w", encoding="utf-8") as f:
        f.write(format_markdown(result))
    plot_sweep(result, os.path.join(workdir, "plots"))
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """The Markdown table: one row per grid point, mean ± sd over seeds (×100)."""
    keys = list(result["grid"])
    header = [*keys, "seeds", "mAP", "EMA mAP", "CF1", "OF1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in result["points"]:
        settings = [f"{p['settings'][key]:g}" for key in keys]
        seeds = ",".join(map(str, p["seeds"])) or "none"
        if p["failed"]:
            seeds += f" (failed: {','.join(map(str, p['failed']))})"
        cells = [format_mean_sd(p[key]) for key in SEED_METRICS]
        lines.append("| " + " | ".join([*settings, seeds, *cells]) + " |")
    return "\n".join(lines)


def format_markdown(result: Mapping[str, Any]) -> str:
    return (
        f"# {LABELS[result.get('loss', SWEPT_LOSS)]} sweep\n\n```\n{result['command']}\n```\n\n"
        f"{format_table(result)}\n\n"
        "Final validation mAP (regular and EMA model), CF1 and OF1 in %: mean ± sample standard "
        "deviation over the seeds whose run completed.\n"
    )


def plot_sweep(result: Mapping[str, Any], out_dir: str) -> list[str]:
    """``map_vs_<key>.png`` per swept key: mAP against it, a line per value of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asl_jax.training.plots import save_figure

    os.makedirs(out_dir, exist_ok=True)
    keys, written = list(result["grid"]), []
    for key in keys:
        others = [k for k in keys if k != key]
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        groups: dict[tuple[float, ...], list[Mapping[str, Any]]] = {}
        for p in result["points"]:
            if p["final_map"] is not None:
                groups.setdefault(tuple(p["settings"][k] for k in others), []).append(p)
        for rest, members in groups.items():
            members.sort(key=lambda p: p["settings"][key])
            xs = [p["settings"][key] for p in members]
            ys = [100 * p["final_map"]["mean"] for p in members]
            errors = [100 * (p["final_map"]["std"] or 0.0) for p in members]
            names = [f"{k.split('.', 1)[1]}={v:g}" for k, v in zip(others, rest, strict=True)]
            label = ", ".join(names) or None
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
        ax.set(xlabel=key, ylabel="final validation mAP (%)", title=f"mAP against {key}")
        ax.grid(alpha=0.3)
        if others and groups:
            ax.legend()
        written.append(
            save_figure(fig, os.path.join(out_dir, f"map_vs_{key.split('.', 1)[1]}.png"))
        )
    return written


def main(argv: list[str]) -> int:
    from absl import flags

    from train import cli

    cli.no_positional_args(argv)
    cli.quiet_logging()
    f = flags.FLAGS
    try:
        grid = parse_grid(f.grid or [], f.loss)
        seeds = parse_seeds(f.seeds) if f.seeds else (f.config.seed,)
    except ValueError as e:
        return cli.error(str(e), status=cli.USAGE_EXIT)
    from asl_jax.training.config import ConfigError
    from train.compare import loss_config

    try:
        loss_config(f.config, f.loss)
        result = sweep(f.config, f.workdir, grid, seeds, loss=f.loss)
    except (ConfigError, WorkdirBusyError) as e:
        return cli.error(str(e))
    except ValueError as e:  # the data source cannot be built
        return cli.error(f"data.name={f.config.data.name!r}: {e}")
    print(format_table(result), flush=True)
    print(f"Results in {os.path.abspath(f.workdir)}: sweep.json, sweep.md, plots/.", flush=True)
    return cli.multi_run_status(
        result, "some runs failed (see sweep.md and each point's compare.md)"
    )


def _define_flags() -> None:
    from absl import flags

    from train import cli

    cli.define_config_flag()
    flags.DEFINE_string("workdir", "runs/sweep", "Where the runs and the results go.")
    flags.DEFINE_string("loss", SWEPT_LOSS, f"The loss to sweep, one of {', '.join(RUNS)}.")
    flags.DEFINE_multi_string(
        "grid",
        None,
        "KEY=V1,V2,... with KEY a real-valued field the loss reads (for ASL: "
        f"{', '.join(GRID_KEYS)}); repeat for a product.",
    )
    flags.DEFINE_string(
        "seeds", "", "Comma-separated seeds of every point (default: the config's)."
    )


if __name__ == "__main__":
    from train import cli

    cli.run(main, _define_flags)
