"""PNG plots of a run (matplotlib, Agg backend): the paper's probability-analysis view.

A series with two or more points is drawn as a line; a series with a single point (a run with
one evaluation, or a single train record) as labelled bars, because a lone dot on an empty axis
shows neither the value nor what it is; a series without points as a note saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: One named series of a figure: ``(label, steps, values, matplotlib line style)``.
Series = tuple[str, list[int], list[float], dict[str, Any]]


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get(key) is not None:
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def chart_kind(num_points: int) -> str:
    """How to draw series of ``num_points`` points (the longest of a figure's series).

    Returns:
      ``"line"`` for two or more points, ``"bar"`` for one (a labelled bar per series instead of
      a lone dot), ``"empty"`` for none.
    """
    if num_points >= 2:
        return "line"
    return "bar" if num_points == 1 else "empty"


def draw(ax: Any, series: Sequence[Series], *, scale: float = 1.0, what: str = "record") -> str:
    """Draws ``series`` on ``ax`` as :func:`chart_kind` decides; returns the kind used.

    Args:
      ax: a matplotlib axis.
      series: the figure's series.
      scale: factor applied to every value (100 for percentages).
      what: what a point is (``"record"``, ``"evaluation"``), for the bar chart's caption.
    """
    kind = chart_kind(max((len(xs) for _, xs, _, _ in series), default=0))
    if kind == "line":
        for label, xs, ys, style in series:
            ax.plot(xs, [scale * y for y in ys], label=label, **style)
        ax.set_xlabel("step")
        if len(series) > 1:
            ax.legend(loc="best")
    elif kind == "bar":
        shown = [(label, xs, ys, style) for label, xs, ys, style in series if xs]
        bars = ax.bar(
            [label for label, *_ in shown],
            [scale * ys[-1] for _, _, ys, _ in shown],
            color=[style.get("color", f"C{i}") for i, (*_, style) in enumerate(shown)],
        )
        ax.bar_label(bars, fmt="%.3g")
        steps = sorted({xs[-1] for _, xs, _, _ in shown})
        ax.set_xlabel(f"at step {', '.join(map(str, steps))} (a single {what})")
    else:
        ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center")
    ax.grid(alpha=0.3)
    return kind


def save_figure(fig: Any, path: str) -> str:
    """Writes a matplotlib figure as PNG, closes it and returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def map_figure(evals: Sequence[Mapping[str, Any]]) -> tuple[Any, str]:
    """The validation mAP (regular and EMA model) of the eval records; returns (figure, kind)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series = [
        (label, *_series(evals, key), {"marker": "o", "ms": 3, "color": colour})
        for key, label, colour in (("map", "mAP", "C0"), ("map_ema", "mAP (EMA)", "C1"))
    ]
    kind = draw(ax, series, scale=100.0, what="evaluation")
    ax.set(ylabel="mAP (%)", title="Validation mAP")
    return fig, kind


def _gamma_delta_p_figure(train: Sequence[Mapping[str, Any]], target: float | None) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    gamma = ("γ−", *_series(train, "gamma_neg"), {"color": "C3"})
    delta_p = ("Δp = p̄− − p̄+", *_series(train, "delta_p"), {"color": "C0", "lw": 1})
    ax.set_title("Negative focusing γ− and Δp")
    if chart_kind(len(gamma[1])) != "line":  # one axis for both bars
        draw(ax, [gamma, delta_p])
        return fig
    ax.plot(gamma[1], gamma[2], label=gamma[0], **gamma[3])
    ax.set(xlabel="step", ylabel="γ−")
    ax2 = ax.twinx()
    ax2.plot(delta_p[1], delta_p[2], label=delta_p[0], **delta_p[3])
    if target is not None:
        ax2.axhline(target, color="C0", ls="--", lw=1, label="Δp target")
    ax2.set_ylabel("Δp")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best")
    ax.grid(alpha=0.3)
    return fig


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
    draw(ax, [("train loss", *_series(train, "loss"), {"lw": 1})])
    ax.set(ylabel="train loss", title="Training loss")
    save(fig, "loss.png")

    save(map_figure(evals)[0], "map.png")
    save(_gamma_delta_p_figure(train, delta_p_target), "gamma_delta_p.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    probabilities = [
        ("p̄+ (mean p of positives)", *_series(train, "pos_mean"), {}),
        ("p̄− (mean 1 − p of negatives)", *_series(train, "neg_mean"), {}),
    ]
    draw(ax, probabilities)
    ax.set(ylabel="probability", title="Probability analysis", ylim=(0, 1))
    save(fig, "probabilities.png")
    return written
