"""``python -m train.compare``: BCE, focal loss, ASL and ASL + adaptive γ− on the same run.

The paper's comparison at our scale: every loss trains on the same data with the same seed,
model, schedule and config overrides (the ``--config`` / ``--config.*`` flags of
``python -m train``); only ``loss.name`` and ``loss.adaptive`` are set per run:

    python -m train.compare                                        # the default config, 4 runs
    python -m train.compare --config.data.drop_positive_fraction=0.3 --workdir=runs/compare_noise
    python -m train.compare --losses=bce,asl --config.num_steps=256

| ``--losses`` name | loss |
|---|---|
| ``bce``          | binary cross-entropy (``loss.name=bce``) |
| ``focal``        | focal loss, γ+ = γ− = ``loss.focal_gamma``, no margin (``loss.name=focal``) |
| ``asl``          | ASL with ``loss.gamma_pos``, ``loss.gamma_neg``, ``loss.clip`` |
| ``asl_adaptive`` | the same ASL with ``loss.adaptive=True`` (γ− starts at ``loss.gamma_neg``) |
| ``focal_margin`` | focal loss with the logit margin ``loss.margin`` on the positives |
| ``hill``         | Hill: focal margin positives, ``(loss.hill_lambda − p)·p²`` negatives |
| ``splc``         | focal margin, negatives above ``loss.splc_tau`` taken as positives |
| ``wan``          | weak assume negative: BCE, negatives weighted by ``loss.negative_weight`` |
| ``an_ls``        | assume negative with label smoothing ``loss.label_smoothing`` |
| ``llr``          | assume negative, largest losses rejected (``loss.rejection_per_epoch``) |
| ``selective``    | class-aware selective loss for labels {1, 0, -1} (``loss.gamma_unknown``...) |

The first four (the paper's comparison) run by default; the losses for missing labels
(``focal_margin``, ``hill``, ``splc``: Zhang et al., 2021; ``wan``, ``an_ls``: Cole et al., 2021;
``llr``: Kim et al., 2022; ``selective``: Ben-Baruch et al., 2022) when named. With simulated
missing labels (``--config.data.annotation``), ``--config.loss.unknown=negative`` makes the
losses that do not handle unknown labels themselves take them as negatives.

The runs go one after another, each in its own workdir ``WORKDIR/<loss>/`` (a complete
``python -m train`` workdir: evaluate or predict with it). Results in ``WORKDIR``:

- ``compare.json``: per loss the status (``completed``, ``failed``, ``interrupted``, ``not run``),
  best and final validation mAP of the regular and the EMA model (fractions in [0, 1]), CF1, OF1,
  final Δp and γ−, wall time; for a failed run the error and the end of its traceback;
- ``compare.md``: the table (mAP, CF1 and OF1 ×100) and the exact command;
- ``plots/``: ``map.png`` (validation mAP over training per loss), ``delta_p.png`` (Δp per
  loss) and ``gamma_neg.png`` (γ− of the adaptive run).

A run that fails (invalid setting for that loss, non-finite training, ...) is reported and the
others still run; the exit status is then 1. Rerunning the same command reuses what is done:
finished runs are restored from their final checkpoint without training again, interrupted runs
resume where they stopped (same result as uninterrupted), failed runs are retried. A per-loss
workdir holding a run with other result-changing settings is refused (reported as failed): use
another ``--workdir``. ``loss.*`` settings that a loss does not use do not count (see
:data:`USED_LOSS_FIELDS`): rerunning with another ``loss.adaptive_step_size`` reuses the BCE,
focal and ASL runs and refuses only the adaptive one (delete ``WORKDIR/asl_adaptive`` to
retrain it). Ctrl-C / SIGTERM stops the current run at a step boundary with a checkpoint,
writes the results so far and exits with 128 + the signal number.

``--seeds=0,1,2`` repeats the comparison once per seed, in ``WORKDIR/seed_<s>/`` (each a complete
comparison as above, resumable the same way), and writes ``seeds.json`` and ``seeds.md``: per
loss the mean ± standard deviation over seeds of the final mAP, EMA mAP, CF1 and OF1, and the
paired comparison with BCE (mean of the per-seed mAP differences, its standard error and the
p-value of a paired t-test: runs of one seed share data order, augmentation and initialisation).

Single process only (for several hosts, run ``python -m train`` per loss).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import time
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from asl_jax.config_fields import nested_dict
from asl_jax.training.config import Config, ConfigError, validate_config
from asl_jax.training.lock import WorkdirBusyError, holds_workdir_lock
from asl_jax.training.loss_registry import LOSSES, LossConfig, used_fields
from train.summary import percent

#: The runs a comparison can make: every registered loss, and each adaptive one with the
#: adaptive γ− rule; per run, its ``loss.name`` and ``loss.adaptive``.
RUNS: dict[str, dict[str, Any]] = {
    **{name: {"name": name, "adaptive": False} for name in LOSSES},
    **{
        f"{name}_adaptive": {"name": name, "adaptive": True}
        for name, spec in LOSSES.items()
        if spec.adaptive
    },
}
#: The ``loss.*`` fields each run uses. A finished run is reused when only fields it does not use
#: changed (e.g. ``loss.adaptive_step_size`` for BCE): see :func:`keep_unused_loss_fields`.
USED_LOSS_FIELDS: dict[str, frozenset[str]] = {
    run: used_fields(loss["name"], adaptive=loss["adaptive"]) for run, loss in RUNS.items()
}
LABELS = {
    run: LOSSES[loss["name"]].label + (" + adaptive γ−" if loss["adaptive"] else "")
    for run, loss in RUNS.items()
}
#: The runs of ``--losses``' default: the paper's comparison (the losses the registry marks
#: ``compared``), in its order; the losses for missing labels are run when named.
DEFAULT_LOSSES = tuple(run for run, loss in RUNS.items() if LOSSES[loss["name"]].compared)
#: Δp is reported as its mean over the train records of the last fraction of the steps: the
#: value of a single logged batch is noisy (±0.03 at batch 64).
DELTA_P_TAIL = 0.1
#: Lines of a failed run's traceback kept in compare.json.
TRACEBACK_LINES = 12


def parse_losses(text: str) -> tuple[str, ...]:
    """``"bce,asl"`` -> ``("bce", "asl")``; ValueError for unknown, duplicate or no names."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in RUNS]
    if unknown or not names:
        raise ValueError(
            f"--losses={text!r}: expected a comma-separated list of {', '.join(RUNS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--losses={text!r}: a loss is listed twice")
    return names


def _raw_config(base: Config | Mapping[str, Any], loss: str) -> dict[str, Any]:
    """The nested dict of ``base`` (a Config or the mapping of a config file) set up for
    ``loss`` (a key of :data:`RUNS`)."""
    raw = nested_dict(base)
    raw["loss"] = {**raw.get("loss", {}), **RUNS[loss]}
    raw["name"] = f"{raw.get('name', Config.name)}:{loss}"
    return raw


def loss_config(base: Config | Mapping[str, Any], loss: str) -> Config:
    """The typed config of the run of ``loss`` (a key of :data:`RUNS`) from the shared config.

    Each run's config is checked on its own: a setting only one loss cannot use (the adaptive
    rule's bounds...) fails that run only.

    Raises:
      ConfigError: the run's config is invalid.
    """
    return validate_config(_raw_config(base, loss))


def keep_unused_loss_fields(config: Config, loss: str, run_dir: str) -> tuple[Config, list[str]]:
    """Takes the ``loss.*`` fields ``loss`` does not use from ``run_dir/config.json``, if any.

    The training loop refuses to resume a workdir whose config differs in any result-changing
    field; for one loss of the comparison, a field it does not use cannot change its result, so
    its existing run stays valid (changing ``loss.gamma_neg`` retrains ASL, not BCE).

    Returns:
      The config to run, and the fields taken over (whose value differed), as ``"loss.x"``.
    """
    from asl_jax.training.records import read_json

    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return config, []
    try:
        old = read_json(path).get("loss", {})
    except (OSError, ValueError, AttributeError):
        return config, []  # the training loop reports an unusable workdir
    taken = {
        field: old[field]
        for field in config.loss.to_dict()
        if field not in USED_LOSS_FIELDS[loss]
        and field in old
        and old[field] != getattr(config.loss, field)
    }
    if not taken:
        return config, []
    try:
        loss_block = dataclasses.replace(config.loss, **taken)
    except ValueError:
        return config, []  # the training loop reports the refused workdir
    return dataclasses.replace(config, loss=loss_block), [f"loss.{field}" for field in taken]


def describe_loss(config: Any) -> str:
    """A short description of the loss settings, e.g. ``γ+=0, γ−=4, m=0.05``."""
    loss = config.loss
    spec = LOSSES[loss.name]
    text = spec.describe(loss)
    if loss.adaptive and spec.adaptive:
        text += f"; adaptive: Δp target {loss.delta_p_target:g}, λ={loss.adaptive_step_size:g}"
    return text


def _described(raw: Mapping[str, Any]) -> Any:
    """The loss settings of a run's raw config, for its entry and log line (also when invalid:
    the run then fails, and its entry says why)."""
    return types.SimpleNamespace(
        loss=types.SimpleNamespace(**{**LossConfig().to_dict(), **raw["loss"]})
    )


def _tail_mean(records: Sequence[Mapping[str, Any]], key: str, total_steps: int) -> float | None:
    start = total_steps * (1.0 - DELTA_P_TAIL)
    values = [
        r[key]
        for r in records
        if r.get("kind") == "train" and r["step"] >= start and r.get(key) is not None
    ]
    return float(sum(values) / len(values)) if values else None


def _entry(loss: str, config: Any, workdir: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "loss": loss,
        "label": LABELS[loss],
        "settings": describe_loss(config),
        "status": status,
        "workdir": workdir,
        **extra,
    }


def run_entry(loss: str, config: Any, result: Any, resumed_from: int | None) -> dict[str, Any]:
    """The compare.json entry of a run that returned (completed or interrupted)."""
    summary = result.summary
    final = summary.get("final") or {}
    status = "completed" if result.interrupted is None else "interrupted"
    return {
        **_entry(loss, config, result.workdir, status),
        "step": summary["step"],
        "total_steps": summary["total_steps"],
        "resumed_from": resumed_from,
        "best_map": summary.get("best_map"),
        "best_map_step": summary.get("best_map_step"),
        "best_map_ema": summary.get("best_map_ema"),
        "best_map_ema_step": summary.get("best_map_ema_step"),
        "final_map": final.get("map"),
        "final_map_ema": final.get("map_ema"),
        "final_cf1": final.get("cf1"),
        "final_of1": final.get("of1"),
        "final_cf1_ema": final.get("cf1_ema"),
        "final_of1_ema": final.get("of1_ema"),
        "final_delta_p": summary.get("final_delta_p"),
        "delta_p_end": _tail_mean(result.records, "delta_p", summary["total_steps"]),
        "final_gamma_neg": summary.get("final_gamma_neg"),
        "num_skipped": summary.get("num_skipped"),
        "wall_time_s": summary.get("wall_time_s"),
        # The batch size the run used: smaller than the config's on a small train split.
        "batch_size": _recorded_batch_size(result.workdir),
    }


def _recorded_batch_size(workdir: str) -> int | None:
    from asl_jax.training.records import read_json

    path = os.path.join(workdir, "config.json")
    return int(read_json(path)["batch_size"]) if os.path.exists(path) else None


def failed_entry(loss: str, config: Any, workdir: str, exc: BaseException) -> dict[str, Any]:
    """The compare.json entry of a run that raised ``exc``."""
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return _entry(
        loss,
        config,
        workdir,
        "failed",
        error=f"{type(exc).__name__}: {exc}",
        traceback="\n".join(lines[-TRACEBACK_LINES:]),
    )


def _latest_step(workdir: str) -> int | None:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        return None
    steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()]
    return max(steps) if steps else None


@holds_workdir_lock
def compare(
    base_config: Config | Mapping[str, Any],
    workdir: str | os.PathLike[str],
    losses: Sequence[str] = DEFAULT_LOSSES,
    *,
    command: str | None = None,
    source: Any = None,
    train_fn: Callable[..., Any] | None = None,
    handle_signals: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Trains ``base_config`` once per loss and writes compare.json, compare.md and plots/.

    Args:
      base_config: the shared training config (``train/configs/*.py`` plus overrides).
      workdir: where the per-loss workdirs and the results go.
      losses: keys of :data:`RUNS`, in the order to run them.
      command: the command line recorded in compare.md (default: this process's).
      source: the dataset; default ``create_source(base_config.data, seed=base_config.seed)``,
        built once and shared by every run.
      train_fn: the training function (default
        :func:`asl_jax.training.train_and_evaluate`; tests substitute failing ones).
      handle_signals: let the runs handle SIGINT / SIGTERM (stop at a step boundary).
      log: where progress lines go (default: stderr).

    Returns:
      The content of ``compare.json``: ``command``, ``workdir``, ``losses``, ``status``
      (``completed``, ``failed`` when a run failed, ``interrupted``), ``signal`` (the signal
      number that interrupted a run, else None), ``runs`` (one entry per
      loss, in order; see the module docstring), ``config`` (the shared config).
    """
    from asl_jax.data import create_source
    from asl_jax.training.loop import train_and_evaluate

    train_fn = train_and_evaluate if train_fn is None else train_fn
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    workdir = os.path.abspath(os.fspath(workdir))
    losses = parse_losses(",".join(losses))
    if command is None:
        command = shlex.join(["python", "-m", "train.compare", *sys.argv[1:]])
    base = validate_config(_raw_config(base_config, "bce"))  # the part the runs share
    if source is None:
        source = create_source(base.data, seed=base.seed)
    os.makedirs(workdir, exist_ok=True)

    runs: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {}
    interrupted: int | None = None
    for i, loss in enumerate(losses):
        run_dir = os.path.join(workdir, loss)
        if interrupted is not None:
            described = _described(_raw_config(base_config, loss))
            runs.append(_entry(loss, described, run_dir, "not run"))
            continue
        entry, result = _run_one(
            base_config,
            loss,
            run_dir,
            prefix=f"[{i + 1}/{len(losses)}] {LABELS[loss]}",
            source=source,
            train_fn=train_fn,
            handle_signals=handle_signals,
            log=log,
        )
        runs.append(entry)
        if result is not None:
            records[loss] = list(result.records)
        if entry["status"] == "interrupted":
            interrupted = int(signal.SIGINT) if result is None else int(result.interrupted)
            interrupted = interrupted or int(signal.SIGTERM)

    result = {
        "command": command,
        "workdir": workdir,
        "losses": list(losses),
        "status": _status(runs, interrupted),
        "signal": interrupted,
        "runs": runs,
        "config": nested_dict(base_config),
    }
    _write_results(result, records, log)
    return result


def _run_one(
    base_config: Config | Mapping[str, Any],
    loss: str,
    run_dir: str,
    *,
    prefix: str,
    source: Any,
    train_fn: Callable[..., Any],
    handle_signals: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], Any]:
    """Trains (or resumes, or reuses) the run of ``loss``: its compare.json entry, and the
    training result (None when the run raised)."""
    from asl_jax.training.workdir import WorkdirConfigError

    described = _described(_raw_config(base_config, loss))
    log(f"{prefix} ({describe_loss(described)}) -> {run_dir}")
    resumed_from = _latest_step(run_dir)
    start = time.time()
    try:
        config = loss_config(base_config, loss)
        if resumed_from is not None:
            config, _ = keep_unused_loss_fields(config, loss, run_dir)
        result = train_fn(config, run_dir, source=source, handle_signals=handle_signals)
    except KeyboardInterrupt:  # a second Ctrl-C aborts the run without a checkpoint
        error = "KeyboardInterrupt: aborted (second Ctrl-C)"
        return _entry(loss, described, run_dir, "interrupted", error=error), None
    except WorkdirConfigError as e:  # a rerun with another setting: one line, nothing lost
        log(f"{prefix} refused: {e}")
        error = f"{type(e).__name__}: {e}"
        return _entry(loss, described, run_dir, "failed", error=error), None
    except Exception as e:  # one bad run must not cost the others
        log(f"{prefix} FAILED:\n{traceback.format_exc()}")
        return failed_entry(loss, described, run_dir, e), None
    entry = run_entry(loss, config, result, resumed_from)
    verb = "reused" if resumed_from == entry["total_steps"] else "done"
    log(
        f"{prefix} {verb} in {time.time() - start:.0f} s: "
        f"final mAP {percent(entry['final_map'])} (EMA {percent(entry['final_map_ema'])}), "
        f"best {percent(entry['best_map'])}"
    )
    return entry, result


def _status(runs: Sequence[Mapping[str, Any]], interrupted: int | None) -> str:
    if interrupted is not None:
        return "interrupted"
    if any(r["status"] == "failed" for r in runs):
        return "failed"
    return "completed"


def _write_results(
    result: dict[str, Any],
    records: Mapping[str, list[dict[str, Any]]],
    log: Callable[[str], None],
) -> None:
    """compare.json, compare.md and the plots of a comparison's ``result`` in its workdir."""
    from asl_jax.training.records import write_json

    workdir = result["workdir"]
    result, records = _with_earlier_runs(result, records, log)
    write_json(os.path.join(workdir, "compare.json"), result)
    with open(os.path.join(workdir, "compare.md"), "w", encoding="utf-8") as f:
        f.write(format_markdown(result))
    try:
        plot_compare(result["runs"], records, os.path.join(workdir, "plots"))
    except Exception as e:  # plots are a convenience: never lose the results to them
        log(f"warning: could not write plots: {e!r}")


def _with_earlier_runs(
    result: dict[str, Any],
    records: Mapping[str, list[dict[str, Any]]],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """This comparison's results merged into the workdir's earlier compare.json: the runs of
    losses not run this time are kept, and so is an earlier result of a loss whose run was
    refused (its workdir holds a run with another config, which is still what it reports)."""
    from asl_jax.training.records import read_json, read_records

    workdir = result["workdir"]
    path = os.path.join(workdir, "compare.json")
    if not os.path.exists(path):
        return result, dict(records)
    try:
        earlier = {r["loss"]: r for r in read_json(path)["runs"] if r.get("loss") in RUNS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"warning: {path} cannot be read ({e}); it is replaced by this comparison's results")
        return result, dict(records)
    new = {r["loss"]: r for r in result["runs"]}
    merged: dict[str, dict[str, Any]] = {}
    for loss in [*earlier, *(n for n in new if n not in earlier)]:
        entry = new.get(loss)
        refused = entry is not None and entry.get("error", "").startswith("WorkdirConfigError")
        if entry is None or (refused and earlier.get(loss, {}).get("status") != "failed"):
            entry = earlier[loss]
        merged[loss] = entry
    records = dict(records)
    for loss, entry in merged.items():
        metrics = os.path.join(workdir, loss, "metrics.jsonl")
        if entry is not new.get(loss) and loss not in records and os.path.exists(metrics):
            records[loss] = read_records(metrics)
    return {**result, "losses": list(merged), "runs": list(merged.values())}, records


def _x100(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def format_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of compare.md (mAP, CF1, OF1 ×100)."""
    header = (
        "| loss | settings | mAP best (step) | mAP final | EMA mAP best | EMA mAP final "
        "| CF1 | OF1 | Δp end | γ− end | time (s) | status |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in runs:
        if r["status"] in ("completed", "interrupted"):
            best = f"{_x100(r['best_map'])} ({r['best_map_step']})"
            cells = [
                best,
                _x100(r["final_map"]),
                _x100(r["best_map_ema"]),
                _x100(r["final_map_ema"]),
                _x100(r["final_cf1"]),
                _x100(r["final_of1"]),
                _num(r["delta_p_end"]),
                _num(r["final_gamma_neg"], ".2f"),
                _num(r["wall_time_s"], ".0f"),
            ]
            status = r["status"]
            if r["status"] == "interrupted":
                status += f" at step {r['step']}"
        else:
            cells = ["–"] * 9
            status = r["status"]
        lines.append(f"| {r['label']} | {r['settings']} | " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines)


def _setup_line(config: Mapping[str, Any], runs: Sequence[Mapping[str, Any]] = ()) -> str:
    data = config["data"]
    what = f"data {data['name']}"
    details = []
    if data["name"] == "shapes":
        details.append(f"{data['num_train']} train / {data['num_val']} val images")
    if data.get("drop_positive_fraction"):
        details.append(f"{100 * data['drop_positive_fraction']:g}% of the train positives dropped")
    if data.get("annotation", "complete") != "complete":
        details.append(f"train labels annotated {data['annotation']}")
    if details:
        what += f" ({', '.join(details)})"
    steps = (
        f"{config['num_steps']} steps" if config["num_steps"] else f"{config['num_epochs']} epochs"
    )
    batch = f"{config['batch_size']}"
    used = sorted({r["batch_size"] for r in runs if r.get("batch_size") is not None})
    if used and used != [config["batch_size"]]:
        batch = f"{', '.join(map(str, used))} (the config's {batch} did not fit the train split)"
    return (
        f"Setup: {what} at {data['image_size']} px; model {config['model']['name']} "
        f"(width {config['model']['width']}); {steps} of batch {batch}, "
        f"{config['optimizer']} lr {config['learning_rate']:g} {config['schedule']}; "
        f"seed {config['seed']}."
    )


def format_markdown(result: Mapping[str, Any]) -> str:
    """compare.md: the command, the setup, the table and the errors of failed runs."""
    parts = [
        "# Loss comparison",
        "",
        "```",
        result["command"],
        "```",
        "",
        _setup_line(result["config"], result["runs"]),
        "",
        format_table(result["runs"]),
        "",
        "Validation mAP (regular and EMA model), CF1 and OF1 (final regular model, threshold "
        f"{result['config']['threshold']:g}) in %. Δp end = p̄− − p̄+ averaged over the train "
        f"batches of the last {100 * DELTA_P_TAIL:g}% of the steps; γ− end = the γ− the loss "
        "applied at the last step (0 for BCE, γ for focal).",
    ]
    failed = [r for r in result["runs"] if r["status"] == "failed"]
    if failed:
        parts += ["", "Failed runs:", ""]
        for r in failed:
            parts.append(f"- {r['label']}: `{r['error'].splitlines()[0]}`")
    return "\n".join(parts) + "\n"


#: The results that :func:`aggregate_seeds` summarises over seeds (keys of a compare.json run).
SEED_METRICS = ("final_map", "final_map_ema", "final_cf1", "final_of1")
#: The loss every other loss is compared with, seed by seed (``--baseline``'s default).
BASELINE = "bce"


def parse_baseline(name: str, losses: Sequence[str]) -> str:
    """``--baseline``: one of the runs of ``--losses``; ValueError naming them otherwise."""
    if name not in losses:
        raise ValueError(f"--baseline={name!r}: expected one of the runs of --losses: "
                         f"{', '.join(losses)}")  # fmt: skip
    return name


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; distinct non-negative integers."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"--seeds={text!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds={text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


def aggregate_seeds(
    results: Mapping[int, Mapping[str, Any]], baseline: str = BASELINE
) -> list[dict[str, Any]]:
    """Per loss, mean ± sd over seeds of :data:`SEED_METRICS` and the paired test against
    ``baseline``.

    Args:
      results: seed -> that seed's compare.json content.
      baseline: the run every other is compared with (a ``--losses`` name).

    Returns:
      One entry per loss (in run order): ``loss``, ``label``, ``seeds`` (those whose run
      completed), per metric ``{"values", "mean", "std", "n"}`` and ``vs_baseline``: per metric
      the :func:`~asl_jax.training.statistics.paired_difference` over the seeds where both the
      loss and the baseline completed (None for the baseline itself or without its run).
    """
    from asl_jax.training.statistics import mean_and_std, paired_difference

    by_loss: dict[str, dict[int, Mapping[str, Any]]] = {}
    labels: dict[str, str] = {}
    for seed, result in results.items():
        for run in result["runs"]:
            labels[run["loss"]] = run["label"]
            if run["status"] == "completed":
                by_loss.setdefault(run["loss"], {})[seed] = run
    out = []
    for loss, label in labels.items():
        runs = by_loss.get(loss, {})
        entry: dict[str, Any] = {"loss": loss, "label": label, "seeds": sorted(runs)}
        for key in SEED_METRICS:
            values = [runs[s][key] for s in sorted(runs) if runs[s][key] is not None]
            entry[key] = {"values": values, **mean_and_std(values)} if values else None
        reference = by_loss.get(baseline, {})
        paired = [s for s in sorted(runs) if s in reference]
        entry["vs_baseline"] = None
        if loss != baseline and paired:
            entry["vs_baseline"] = {
                key: paired_difference(
                    [runs[s][key] for s in paired], [reference[s][key] for s in paired]
                )
                for key in SEED_METRICS
            }
        out.append(entry)
    return out


def format_mean_sd(cell: Mapping[str, Any] | None) -> str:
    """``97.50 ± 0.89`` (×100) of a :func:`aggregate_seeds` cell; ``–`` for None."""
    if cell is None:
        return "–"
    sd = "" if cell["std"] is None else f" ± {100 * cell['std']:.2f}"
    return f"{100 * cell['mean']:.2f}{sd}"


def _versus(test: Mapping[str, Any] | None) -> str:
    if test is None:
        return "–"
    if test["stderr"] is None:
        return f"{100 * test['mean']:+.2f}"
    return f"{100 * test['mean']:+.2f} ± {100 * test['stderr']:.2f} (p = {test['p']:.2g})"


def format_seed_table(entries: Sequence[Mapping[str, Any]], baseline: str = BASELINE) -> str:
    """The Markdown table of seeds.md: mean ± sd over seeds, and mAP minus the baseline's, seed
    by seed."""
    label = LABELS[baseline]
    lines = [
        f"| loss | seeds | mAP | EMA mAP | CF1 | OF1 | mAP − {label} mAP (± s.e., paired t-test) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cells = [format_mean_sd(e[key]) for key in SEED_METRICS]
        versus = _versus(e["vs_baseline"]["final_map"]) if e["vs_baseline"] else "–"
        seeds = ",".join(map(str, e["seeds"])) or "none completed"
        lines.append(f"| {e['label']} | {seeds} | {' | '.join(cells)} | {versus} |")
    return "\n".join(lines)


@holds_workdir_lock
def compare_seeds(
    base_config: Config | Mapping[str, Any],
    workdir: str | os.PathLike[str],
    losses: Sequence[str],
    seeds: Sequence[int],
    *,
    baseline: str = BASELINE,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`compare` once per seed, in ``WORKDIR/seed_<s>/``, then seeds.json and seeds.md.

    Args:
      base_config: the shared config; ``seed`` is set per comparison.
      workdir: where the per-seed comparisons and the summary go.
      losses: as :func:`compare`.
      seeds: the seeds, in the order to run them.
      baseline: the run of ``losses`` that the paired differences are taken against.
      **kwargs: passed to :func:`compare` (``command``, ``train_fn``, ...).

    Returns:
      The content of seeds.json: ``seeds``, ``status`` (``interrupted`` as soon as one
      comparison is, then the later seeds are not run; ``failed`` when a run failed),
      ``signal``, ``losses`` (:func:`aggregate_seeds`) and ``comparisons`` (seed -> its
      compare.json path).
    """
    from asl_jax.training.records import write_json

    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    status, interrupted = "completed", None
    for seed in seeds:
        config = {**nested_dict(base_config), "seed": seed}
        result = compare(config, os.path.join(workdir, f"seed_{seed}"), losses, **kwargs)
        results[seed] = result
        if result["status"] == "failed":
            status = "failed"
        if result["status"] == "interrupted":
            status, interrupted = "interrupted", result["signal"]
            break
    summary = {
        "seeds": list(seeds),
        "status": status,
        "signal": interrupted,
        "baseline": baseline,
        "losses": aggregate_seeds(results, baseline),
        "comparisons": {
            str(s): os.path.join(r["workdir"], "compare.json") for s, r in results.items()
        },
    }
    write_json(os.path.join(workdir, "seeds.json"), summary)
    with open(os.path.join(workdir, "seeds.md"), "w", encoding="utf-8") as f:
        f.write(
            f"# Loss comparison over seeds {', '.join(map(str, seeds))}\n\n"
            + format_seed_table(summary["losses"], baseline)
            + "\n\nMean ± sample standard deviation over the seeds whose run completed, in %. "
            f"The last column: the mean of the per-seed differences to {LABELS[baseline]} (same "
            "seed = same data order, augmentation and initialisation), its standard error and "
            "the two-sided p-value of a paired t-test.\n"
        )
    return summary


def plot_compare(
    runs: Sequence[Mapping[str, Any]],
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    out_dir: str | os.PathLike[str],
) -> list[str]:
    """Writes ``map.png``, ``delta_p.png`` and (with an adaptive run) ``gamma_neg.png``.

    Args:
      runs: the compare.json entries (their ``loss`` and ``label``).
      records: the metrics.jsonl records of each loss that ran.
      out_dir: the ``plots/`` directory (created).

    Returns:
      The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asl_jax.training.plots import draw, save_figure

    os.makedirs(out_dir, exist_ok=True)
    done = [(r["loss"], r["label"]) for r in runs if r["loss"] in records]
    colours = {loss: f"C{i}" for i, loss in enumerate(RUNS)}
    written = []

    def series(loss: str, label: str, kind: str, key: str, **style: Any) -> Any:
        points = [
            (r["step"], r[key])
            for r in records[loss]
            if r.get("kind") == kind and r.get(key) is not None
        ]
        style = {"color": colours[loss], **style}
        return (label, [p[0] for p in points], [p[1] for p in points], style)

    def figure(lines: list[Any], ylabel: str, title: str, name: str, **kwargs: Any) -> Any:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if draw(ax, lines, **kwargs) == "line" and name == "delta_p.png":
            ax.axhline(0.0, color="k", lw=0.5)
        ax.set(ylabel=ylabel, title=title)
        written.append(save_figure(fig, os.path.join(out_dir, name)))

    maps = []
    for loss, label in done:
        maps.append(series(loss, label, "eval", "map", marker="o", ms=3))
        maps.append(series(loss, f"{label} (EMA)", "eval", "map_ema", ls="--", lw=1))
    figure(
        maps,
        "validation mAP (%)",
        "mAP over training (dashed: EMA)",
        "map.png",
        scale=100.0,
        what="evaluation",
    )
    delta_p = [series(loss, label, "train", "delta_p", lw=1) for loss, label in done]
    figure(delta_p, "Δp = p̄− − p̄+", "Probability gap Δp (train batches)", "delta_p.png")
    adaptive = [(loss, label) for loss, label in done if RUNS[loss]["adaptive"]]
    if adaptive:
        gammas = [series(loss, label, "train", "gamma_neg") for loss, label in adaptive]
        figure(gammas, "γ−", "Adaptive γ− over training", "gamma_neg.png")
    return written


def main(argv: list[str]) -> int:
    from absl import flags

    from train import cli

    cli.no_positional_args(argv)
    cli.quiet_logging()
    try:
        losses = parse_losses(flags.FLAGS.losses)
        seeds = parse_seeds(flags.FLAGS.seeds) if flags.FLAGS.seeds else None
        baseline = parse_baseline(flags.FLAGS.baseline, losses)
    except ValueError as e:  # an unusable command line
        return cli.error(str(e), status=cli.USAGE_EXIT)
    base = flags.FLAGS.config
    try:
        # The shared part of the config is checked once, before any run starts (as BCE, which
        # leaves out the checks that only concern one loss: those fail that loss's run only).
        loss_config(base, "bce")
    except ConfigError as e:
        return cli.error(str(e))
    if seeds is not None:
        return _main_seeds(base, flags.FLAGS.workdir, losses, seeds, baseline)
    try:
        result = compare(base, flags.FLAGS.workdir, losses)
    except WorkdirBusyError as e:
        return cli.error(str(e))
    except ValueError as e:  # the data source cannot be built
        return cli.error(f"data.name={base.data.name!r}: {e}")
    print(format_table(result["runs"]), flush=True)
    plots_dir = os.path.join(result["workdir"], "plots")
    plots = sorted(os.listdir(plots_dir)) if os.path.isdir(plots_dir) else []
    print(
        f"Results in {result['workdir']}: compare.json, compare.md, plots/ "
        f"({', '.join(plots)}), and one workdir per loss ({', '.join(f'{n}/' for n in losses)}).",
        flush=True,
    )
    failed = [r["loss"] for r in result["runs"] if r["status"] == "failed"]
    refused = [
        r["loss"] for r in result["runs"] if r.get("error", "").startswith("WorkdirConfigError")
    ]
    if refused and len(refused) == len(failed):
        message = (
            f"{len(refused)} run(s) refused: {', '.join(refused)} (their workdirs hold runs with "
            "another config, whose results compare.md keeps: use another --workdir, or rerun "
            "with the original config)"
        )
    else:
        message = f"{len(failed)} run(s) failed: {', '.join(failed)} (see compare.md)"
    return cli.multi_run_status(result, message)


def _main_seeds(
    base: Any, workdir: str, losses: Sequence[str], seeds: Sequence[int], baseline: str
) -> int:
    """``--seeds``: one comparison per seed, then the table over seeds."""
    from train import cli

    try:
        summary = compare_seeds(base, workdir, losses, seeds, baseline=baseline)
    except WorkdirBusyError as e:
        return cli.error(str(e))
    except ValueError as e:  # the data source cannot be built
        return cli.error(f"data.name={base.data.name!r}: {e}")
    print(format_seed_table(summary["losses"], baseline), flush=True)
    out = os.path.abspath(workdir)
    print(f"Results in {out}: seeds.json, seeds.md, and one comparison per seed (seed_<s>/).")
    return cli.multi_run_status(summary, "some runs failed (see seed_<s>/compare.md)")


def _define_flags() -> None:
    from absl import flags

    from train import cli

    cli.define_config_flag()
    flags.DEFINE_string("workdir", "runs/compare", "Where the runs and the results go.")
    flags.DEFINE_string(
        "losses", ",".join(DEFAULT_LOSSES), f"Comma-separated losses among {', '.join(RUNS)}."
    )
    flags.DEFINE_string(
        "seeds",
        "",
        "Comma-separated seeds (e.g. 0,1,2): one comparison per seed in WORKDIR/seed_<s>/, and "
        "mean ± sd with a paired test against --baseline in seeds.md. Default: the config's "
        "seed only.",
    )
    flags.DEFINE_string(
        "baseline",
        BASELINE,
        "With --seeds: the run of --losses that every other is compared with, seed by seed.",
    )


if __name__ == "__main__":
    from train import cli

    cli.run(main, _define_flags)
