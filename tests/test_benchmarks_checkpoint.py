"""The checkpoint benchmark runs and reports on a tiny model (nothing about speed is asserted)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from benchmarks import checkpoint as checkpoint_benchmark  # noqa: E402


def test_checkpoint_benchmark_end_to_end(tmp_path, capsys):
    output, results = tmp_path / "BENCHMARKS.md", tmp_path / "checkpoint.json"
    output.write_text("# Benchmarks\n\nNotes that must survive.\n")
    argv = ["--tiny", "--rounds", "1", "--steps", "6", "--save-every", "3"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--tmp-dir", str(tmp_path)]
    result = checkpoint_benchmark.main([*argv, "--output", str(output), "--json", str(results)])
    for name in (checkpoint_benchmark.SYNC, checkpoint_benchmark.ASYNC):
        mode = result.modes[name]
        # Saves after steps 3 and 6; step 4 follows a save; steps 2 and 5 are plain (step 1,
        # the first of the round, is left out).
        assert len(mode.saving) == 2 and len(mode.after) == 1 and len(mode.plain) == 2
        assert len(mode.rounds) == 1 and all(t > 0 for t in mode.saving)
    assert result.state_bytes > 0
    text = output.read_text()
    assert "Notes that must survive." in text and "<!-- checkpoint:begin -->" in text
    assert "| synchronous |" in text and "| asynchronous |" in text and "- Machine: " in text
    assert "| synchronous |" in capsys.readouterr().out
    data = json.loads(results.read_text())
    assert data["benchmark"] == "checkpoint" and data["machine"]["cpu"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("asl_jax_ckpt_bench_")]


@pytest.mark.parametrize(
    "argv", [["--rounds", "0"], ["--steps", "0"], ["--steps", "4", "--save-every", "5"]]
)
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        checkpoint_benchmark.parse_args(argv)
