"""`python -m benchmarks.train_step` keeps working: tiny sizes, one round, nothing timed.

The benchmark's figures are not checked (no timed assertions); its plumbing is: every part
runs, reports what it should, writes its own BENCHMARKS.md section and leaves the others alone.
"""

import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is a top-level directory of the repository, not part of the installed package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _machine, _timing  # noqa: E402
from benchmarks import train_step as bench  # noqa: E402


def test_train_step_benchmark_end_to_end(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    other = "<!-- loss:begin -->\n## Loss kernel\nowned by benchmarks.loss\n<!-- loss:end -->"
    output.write_text(f"# Benchmarks\n\nHand-written notes that must survive.\n\n{other}\n")
    # Compilation is nearly all of this test's time, so every part uses the one train-step
    # program (BCE): the step timings, the breakdown's full step, the images/s loop and the
    # 1-device side of the 1-vs-8 check. conftest.py gives this process 8 CPU devices, so that
    # check runs in-process (the code the subprocess runs, without a second start-up).
    argv = [
        "--tiny",
        "--models=cnn",
        "--losses=bce",
        "--reference-loss=bce",
        "--scaling-loss=bce",
        "--rounds=1",
        "--loop-rounds=1",
        "--loop-steps=2",
        "--folder-images=16",
        "--folder-pixels=24",
        "--scaling-steps=2",
        f"--cache-dir={tmp_path / 'cache'}",
        f"--output={output}",
        f"--json={tmp_path / 'train_step.json'}",
    ]
    out = bench.main(argv)

    (step,) = out["steps"]
    assert set(step.timings) == {bench.BCE, *bench._PARTS, *bench._LOSS_ALONE}
    assert all(len(t.samples) == 1 and t.median > 0 for t in step.timings.values())
    assert len(bench.breakdown_rows(step)) == 4

    throughput = out["throughput"]
    assert set(throughput.timings) == {
        bench.SHAPES_PIPELINE,
        bench.STEP_ALONE,
        bench.SHAPES_LOOP,
        bench.FOLDER_MEMORY,
        bench.FOLDER_PIPELINE,
        bench.FOLDER_LOOP,
    }
    assert throughput.steps[bench.FOLDER_LOOP] == 16 // step.spec.batch_size
    assert all(throughput.images_per_second(n) > 0 for n in throughput.timings)

    scaling = out["scaling"]
    assert not scaling.subprocess and scaling.devices == 8 and scaling.steps == 2
    # Data parallelism computes the same steps (float32 summation order aside).
    assert scaling.max_abs_loss < 1e-4 and scaling.max_abs_param < 1e-4

    text = output.read_text()
    assert "Hand-written notes that must survive." in text and other in text
    assert text.count("<!-- train_step:begin -->") == 1
    assert text.count("<!-- train_step:end -->") == 1
    section = text.split("<!-- train_step:begin -->")[1].split("<!-- train_step:end -->")[0]
    assert section.strip() == out["markdown"].strip()
    for heading in ("## Training step", "### small CNN", "### Images/s", "### 1 vs 8"):
        assert heading in section
    # Every table says which machine it was measured on; no generated interpretation.
    assert section.count("Measured on: ") == 3 and "### Analysis" not in section
    data = json.loads((tmp_path / "train_step.json").read_text())
    assert data["benchmark"] == "train_step" and data["results"]["scaling"]["devices"] == 8


def _timing_of(name, seconds):
    return _timing.Timing(name, tuple(seconds), 1)


def test_render_goals_and_tables_from_figures():
    spec = bench.TINY_BENCH_MODELS["cnn"]
    per_round = {
        bench.BCE: [1.0, 1.1, 0.9],
        bench.ASL_STATIC: [1.0, 1.08, 0.92],  # within the goal, no consistent difference
        bench.ASL_ADAPTIVE: [1.2, 1.3, 1.1],  # 1.2× BCE: misses it
        bench.ASL_DETACHED: [1.0, 1.1, 0.9],
        bench.FOCAL: [1.0, 1.1, 0.9],
        bench.PART_AUGMENT: [0.01] * 3,
        bench.PART_FORWARD: [0.3] * 3,
        bench.PART_BACKWARD: [0.95] * 3,
        bench.LOSS_ALONE_ASL: [0.001] * 3,
        bench.LOSS_ALONE_BCE: [0.001] * 3,
    }
    step = bench.StepResult(
        spec=spec,
        rounds=3,
        timings={name: _timing_of(name, s) for name, s in per_round.items()},
        compile_seconds=dict.fromkeys(bench.LOSS_SETTINGS, 1.0),
        flops=dict.fromkeys(bench.LOSS_SETTINGS, 2e9),
        program_stats=dict.fromkeys(bench.LOSS_SETTINGS, (100, 2.0**20)),
        num_classes=30,
        final_gamma_neg=3.9,
    )
    assert step.ratio(bench.ASL_ADAPTIVE) == pytest.approx(1.2)
    assert step.paired_ratio(bench.ASL_ADAPTIVE)[0] == pytest.approx(1.2)
    met = {name: ok for _, name, ok, _ in bench.goals([step])}
    assert met == {bench.ASL_STATIC: True, bench.ASL_ADAPTIVE: False}
    parts = {part.split(" (")[0]: marginal for part, _, marginal in bench.breakdown_rows(step)}
    assert parts["forward"] == pytest.approx(0.29) and parts["optimizer"] == pytest.approx(0.05)

    markdown = bench.render_markdown([step], None, None, _machine.machine_info(), "python -m x")
    assert "✅ 1.000×" in markdown and "❌ 1.200×" in markdown
    assert "| **ASL, adaptive γ−** |" in markdown
    # The per-round ratio and its IQR, the fusions and XLA temporaries: in the step table (the
    # generated prose that repeated them is gone).
    assert "| 1.200 | 1.200 (1.191–1.211) |" in markdown
    assert "| 100 | 1.0 |" in markdown and "It is not the loss" not in markdown
    # The loss alone: 1 ms of a 1 s step.
    assert "BCE 1.000 ms, i.e. 0.100% and 0.100% of the BCE step" in markdown


def test_parse_args_rejects_bad_values():
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds=0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--folder-images=-1"])
    args = bench.parse_args([])
    assert args.models == ["cnn", "resnet18"] and args.scaling_loss == "asl_adaptive"
    assert args.reference_loss == "asl"
