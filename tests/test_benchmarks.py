"""The benchmark scripts keep working: their harness on a tiny size, one round, nothing timed.

These tests check that the benchmark code runs and reports; they assert nothing about speed.
"""

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# benchmarks/ is a top-level directory of the repository, not part of the installed package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _machine, _timing  # noqa: E402
from benchmarks import loss as loss_benchmark  # noqa: E402


def test_loss_benchmark_end_to_end(tmp_path, capsys):
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nHand-written notes that must survive.\n")
    results = loss_benchmark.main(
        [
            "--sizes",
            "8x5",
            "--rounds",
            "1",
            "--seed",
            "1",
            "--output",
            str(output),
            "--json",
            str(tmp_path / "loss.json"),
        ]
    )
    (result,) = results
    assert result.rounds == 1
    expected = {
        loss_benchmark.OPTAX_BCE,
        loss_benchmark.OURS,
        loss_benchmark.OURS_TRACED,
        loss_benchmark.OURS_DETACHED,
        loss_benchmark.AUTODIFF_OFFICIAL,
        loss_benchmark.AUTODIFF_LOG,
        loss_benchmark.VALUE_ONLY,
        loss_benchmark.GRAD_ONLY,
    }
    assert expected <= set(result.timings)
    for timing in result.timings.values():
        assert len(timing.samples) == 1 and timing.median > 0
    # Every implementation of ASL computes the same loss and gradient as ours.
    for name, error in result.grad_error.items():
        assert error < 1e-4, name
        assert result.value_error[name] < 1e-4, name
    text = output.read_text()
    assert "Hand-written notes that must survive." in text
    assert text.count("<!-- loss:begin -->") == 1 and text.count("<!-- loss:end -->") == 1
    for heading in ("## Loss kernel", "### 8×5", "### Goals", "### On paper"):
        assert heading in text
    assert "| **ASL, static γ (ours)** |" in text
    assert "static γ ≤ 1.5× optax BCE" in capsys.readouterr().out


def test_hlo_stats_counts_per_element_work():
    z = jnp.zeros((4, 6), jnp.float32)
    compiled = jax.jit(lambda z: (jnp.exp(z) / (1.0 + jnp.log(z + 2.0))).sum()).lower(z).compile()
    stats = loss_benchmark.hlo_stats(compiled, z.size)
    assert stats.transcendentals == {"exponential": 1, "log": 1, "divide": 1}
    assert stats.transcendental_total == 3
    assert stats.arrays_read >= 1 and stats.fusions >= 1
    # Shapes other than B×K (here the scalar of the reduction) are not counted.
    assert loss_benchmark.hlo_stats(compiled, 7).transcendental_total == 0


def test_interleaved_timings_rounds_and_order():
    calls = []
    timings = _timing.interleaved_timings(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=3,
        warmup=1,
        min_sample_seconds=0.0,
    )
    assert list(timings) == ["a", "b"]
    assert all(len(t.samples) == 3 and t.calls_per_sample == 1 for t in timings.values())
    assert calls.count("a") == calls.count("b") == 4  # 1 warm-up + 3 rounds
    with pytest.raises(ValueError, match="rounds"):
        _timing.interleaved_timings({"a": lambda: None}, rounds=0)


def test_update_section_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "B.md"
    _timing.update_section(path, "loss", "first")
    _timing.update_section(path, "train_step", "other")
    path.write_text(path.read_text() + "\nnotes\n")
    _timing.update_section(path, "loss", "second")
    text = path.read_text()
    assert "second" in text and "first" not in text
    assert "other" in text and text.rstrip().endswith("notes")
    assert text.index("<!-- loss:begin -->") < text.index("<!-- train_step:begin -->")
    path.write_text("<!-- loss:begin -->\n")
    with pytest.raises(ValueError, match="unbalanced"):
        _timing.update_section(path, "loss", "x")


def test_reference_formulations_agree_with_ours():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(-1, 3, size=(16, 12)), jnp.float32)
    y = jnp.asarray(rng.uniform(size=(16, 12)) < 0.3, jnp.float32)
    ours = jax.value_and_grad(lambda z: loss_benchmark.asymmetric_loss(z, y).sum())(z)
    for fn in (loss_benchmark.official_formulation_asl, loss_benchmark.log_space_asl):
        value, grad = jax.value_and_grad(fn)(z, y)
        np.testing.assert_allclose(value, ours[0], rtol=1e-5)
        np.testing.assert_allclose(grad, ours[1], rtol=1e-4, atol=1e-6)


def test_json_output_records_the_machine(tmp_path):
    path = tmp_path / "out" / "loss.json"
    argv = ["--sizes", "4x3", "--rounds", "1", "--no-torch", "--no-breakdown"]
    loss_benchmark.main([*argv, "--output", "", "--json", str(path)])
    data = json.loads(path.read_text())
    machine = data["machine"]
    assert machine["cpu"] and machine["logical_cores"] == os.cpu_count()
    assert machine["jax_devices"] and all(isinstance(d, str) for d in machine["jax_devices"])
    assert machine["python"] == platform.python_version()
    for package in ("jax", "jaxlib", "flax", "optax"):
        assert machine["versions"][package] == importlib.metadata.version(package)
    assert data["benchmark"] == "loss" and data["command"].startswith("python -m benchmarks.loss")
    (result,) = data["results"]
    assert (result["batch"], result["classes"]) == (4, 3)
    assert result["timings"][loss_benchmark.OURS]["median_seconds"] > 0
    assert _machine.machine_info()["versions"]["flax"] is not None


@pytest.mark.parametrize("module", ["loss", "train_step", "checkpoint", "models", "input"])
def test_benchmarks_update_the_document_only_when_asked(module):
    """A plain ``python -m benchmarks.X`` prints and writes benchmarks/results/*.json: the
    published sections of BENCHMARKS.md (other machines, other sizes) are left alone."""
    import importlib

    from benchmarks import _timing

    bench = importlib.import_module(f"benchmarks.{module}")
    args = bench.parse_args([])
    assert _timing.document_path(args) == ""
    assert args.json == f"benchmarks/results/{module}.json"
    assert _timing.document_path(bench.parse_args(["--update-doc"])) == "BENCHMARKS.md"
    assert _timing.document_path(bench.parse_args(["--output", "other.md"])) == "other.md"
