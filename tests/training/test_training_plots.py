"""Tests of asl_jax.training.plots: every plot is written, and a single point is drawn as bars."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from asl_jax.training.plots import chart_kind, draw, map_figure, plot_run

PLOTS = ["gamma_delta_p.png", "loss.png", "map.png", "probabilities.png"]


def _history(num_train, num_eval):
    """metrics.jsonl records: train records every 10 steps, then evaluations every 10 steps."""
    train = [
        {
            "kind": "train",
            "step": 10 * (i + 1),
            "loss": 1.0 / (i + 1),
            "gamma_neg": 4.0 - 0.1 * i,
            "delta_p": 0.2 - 0.01 * i,
            "pos_mean": 0.3 + 0.01 * i,
            "neg_mean": 0.6 + 0.01 * i,
        }
        for i in range(num_train)
    ]
    evals = [
        {"kind": "eval", "step": 10 * (i + 1), "map": 0.5 + 0.01 * i, "map_ema": 0.4 + 0.01 * i}
        for i in range(num_eval)
    ]
    return train + evals


@pytest.mark.parametrize(
    ("num_points", "kind"), [(0, "empty"), (1, "bar"), (2, "line"), (9, "line")]
)
def test_chart_kind(num_points, kind):
    assert chart_kind(num_points) == kind


@pytest.mark.parametrize(
    ("num_eval", "kind", "bars", "lines"), [(0, "empty", 0, 0), (1, "bar", 2, 0), (8, "line", 0, 2)]
)
def test_map_figure_draws_the_kind_chart_kind_chose(num_eval, kind, bars, lines):
    fig, got = map_figure([r for r in _history(0, num_eval) if r["kind"] == "eval"])
    ax = fig.axes[0]
    assert got == kind
    assert (len(ax.patches), len(ax.lines)) == (bars, lines)
    if kind == "bar":  # one bar per model, labelled with its value in %
        assert [t.get_text() for t in ax.texts] == ["50", "40"]
        assert "step 10" in ax.get_xlabel()
    plt.close(fig)


def test_draw_uses_the_longest_series():
    fig, ax = plt.subplots()
    kind = draw(ax, [("a", [1], [0.5], {}), ("b", [1, 2], [0.1, 0.2], {})])
    assert kind == "line" and len(ax.lines) == 2
    plt.close(fig)


@pytest.mark.parametrize(
    ("num_train", "num_eval"), [(1, 1), (20, 8), (0, 0)], ids=["single", "multi", "empty"]
)
@pytest.mark.parametrize("target", [None, 0.1])
def test_plot_run_writes_every_png(tmp_path, num_train, num_eval, target):
    written = plot_run(_history(num_train, num_eval), tmp_path / "plots", delta_p_target=target)
    assert sorted(p.rsplit("/", 1)[1] for p in written) == PLOTS
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
