"""The input-pipeline benchmark runs and reports on tiny JPEGs (nothing about speed is asserted)."""

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from benchmarks import input as input_benchmark  # noqa: E402


def test_input_benchmark_end_to_end(tmp_path, capsys):
    output, results = tmp_path / "BENCHMARKS.md", tmp_path / "input.json"
    output.write_text("# Benchmarks\n\nNotes that must survive.\n")
    argv = ["--quick", "--dir", str(tmp_path / "jpegs"), "--output", str(output)]
    result = input_benchmark.main([*argv, "--json", str(results)])
    expected = [input_benchmark.OLD, input_benchmark.OLD_FULL]
    expected += [input_benchmark.grain_name(w) for w in (0, 1)]
    if input_benchmark._simplejpeg_version():
        expected.append(input_benchmark.TURBO)
    assert sorted(result) == [32, 48]
    for rates in result.values():
        assert set(expected) <= set(rates)  # and tf.data when TensorFlow is installed
        assert all(r.images_per_s > 0 and r.images_per_cpu_s > 0 for r in rates.values())
    text = output.read_text()
    assert "Notes that must survive." in text and "<!-- input:begin -->" in text
    assert "## Input pipeline" in text and "- Machine: " in text and "On paper" in text
    assert f"| {input_benchmark.grain_name(1)} |" in text
    assert "On paper" in capsys.readouterr().out
    data = json.loads(results.read_text())
    assert data["benchmark"] == "input" and data["machine"]["cpu"]
    assert len(list((tmp_path / "jpegs").glob("*.jpg"))) == 16


def test_cpu_seconds_include_child_processes():
    """A live child that burnt 0.5 CPU-seconds (then waits on its stdin) is counted."""
    before = input_benchmark._tree_cpu_seconds()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
    child = subprocess.Popen([sys.executable, "-c", busy + "input()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while input_benchmark._tree_cpu_seconds() - before < 0.45:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.communicate(b"\n", timeout=30)


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "0"],
        ["--images", "8", "--batch_size", "16"],
        ["--sizes", "4"],
        ["--workers", "-1"],
        ["--sizes", "224,x"],
    ],
)
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        input_benchmark.parse_args(argv)
