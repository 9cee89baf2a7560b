"""PNG plots of a run (matplotlib, Agg backend): the paper's probability-analysis view."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get(key) is not None:
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def save_figure(fig: Any, path: str) -> str:
    """Writes a matplotlib figure as PNG, closes it and returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(
    records: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    delta_p_target: float | None = None,
) -> list[str]:
    """Writes ``loss.png``, ``map.png``, ``gamma_delta_p.png`` and ``probabilities.png``.

    Args:
      records: the records of ``metrics.jsonl``.
      out_dir: the ``plots/`` directory (created).
      delta_p_target: drawn as a dashed line on the Δp axis (the adaptive rule's target).

    Returns:
      The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        written.append(save_figure(fig, os.path.join(out_dir, name)))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*_series(train, "loss"), lw=1)
    ax.set(xlabel="step", ylabel="train loss", title="Training loss")
    ax.grid(alpha=0.3)
    save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("map", "mAP"), ("map_ema", "mAP (EMA)")):
        xs, ys = _series(evals, key)
        ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, label=label)
    ax.set(xlabel="step", ylabel="mAP (%)", title="Validation mAP")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "map.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*_series(train, "gamma_neg"), color="C3", label="γ−")
    ax.set(xlabel="step", ylabel="γ−", title="Negative focusing γ− and Δp")
    ax2 = ax.twinx()
    ax2.plot(*_series(train, "delta_p"), color="C0", lw=1, label="Δp = p̄− − p̄+")
    if delta_p_target is not None:
        ax2.axhline(delta_p_target, color="C0", ls="--", lw=1, label="Δp target")
    ax2.set_ylabel("Δp")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best")
    ax.grid(alpha=0.3)
    save(fig, "gamma_delta_p.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*_series(train, "pos_mean"), label="p̄+ (mean p of positives)")
    ax.plot(*_series(train, "neg_mean"), label="p̄− (mean 1 − p of negatives)")
    ax.set(xlabel="step", ylabel="probability", title="Probability analysis", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "probabilities.png")
    return written
