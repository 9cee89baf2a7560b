"""Tests of asl_jax.training.records: metrics.jsonl across resumes, and its TensorBoard mirror."""

import glob
import json
import os
import struct

import pytest

from asl_jax.training.records import MetricsLog, read_records, summarize

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def _events(logdir):
    """Every Event of the event files of ``logdir``, in file order (TFRecord framing)."""
    events = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]  # after length and its CRC
            events.append(event_pb2.Event.FromString(payload))
            offset += 12 + length + 4
    return events


def _scalars_as_tensorboard_shows_them(logdir):
    """{tag: {step: value}}, applying the purge a resumed run writes, as TensorBoard does."""
    scalars = {}
    for event in _events(logdir):
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
            for values in scalars.values():
                for step in [s for s in values if s >= event.step]:
                    del values[step]
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def _train(step, loss):
    return {"kind": "train", "step": step, "loss": loss, "gamma_neg": 4.0, "skipped": 0}


def test_tensorboard_holds_the_records_of_metrics_jsonl(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True, tensorboard_text="seed: 0")
    for step in (1, 2, 3):
        log.write(_train(step, 1.0 / step))
    log.write({"kind": "eval", "step": 3, "map": 0.5, "map_ema": float("nan")})
    log.close()
    scalars = _scalars_as_tensorboard_shows_them(tmp_path)
    assert scalars["train/loss"] == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert scalars["train/gamma_neg"] == {1: 4.0, 2: 4.0, 3: 4.0}
    assert scalars["eval/map"] == {3: 0.5}
    assert "eval/map_ema" not in scalars  # non-finite: null in metrics.jsonl, absent here
    texts = [v for e in _events(tmp_path) for v in e.summary.value if v.tag.startswith("config")]
    assert texts and b"seed: 0" in texts[0].tensor.string_val[0]


def test_a_resumed_run_hides_what_the_interrupted_run_wrote_after_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(path, tensorboard=True)
    for step in (1, 2, 3, 4):
        first.write(_train(step, 10.0 + step))  # steps 3 and 4 came after the checkpoint
    first.close()
    resumed = MetricsLog(path, keep_until_step=2, tensorboard=True)
    for step in (3, 4):
        resumed.write(_train(step, 20.0 + step))
    resumed.close()
    assert [r["loss"] for r in read_records(path)] == [11.0, 12.0, 23.0, 24.0]
    shown = _scalars_as_tensorboard_shows_them(tmp_path)["train/loss"]
    assert shown == {1: 11.0, 2: 12.0, 3: 23.0, 4: 24.0}


def test_other_processes_and_disabled_logs_write_no_event_file(tmp_path):
    MetricsLog(tmp_path / "a.jsonl", enabled=False, tensorboard=True).close()
    MetricsLog(tmp_path / "b.jsonl", tensorboard=False).close()
    assert not glob.glob(str(tmp_path / "events.out.tfevents.*"))


def test_summary_of_the_records():
    records = [
        _train(1, 2.0),
        {"kind": "eval", "step": 1, "map": 0.4, "map_ema": 0.3},
        _train(2, 1.0),
        {"kind": "eval", "step": 2, "map": 0.6, "map_ema": 0.2},
    ]
    summary = summarize(records, extra={"status": "completed"})
    assert summary["final"]["step"] == 2 and summary["status"] == "completed"
    assert (summary["best_map"], summary["best_map_step"]) == (0.6, 2)
    assert (summary["best_map_ema"], summary["best_map_ema_step"]) == (0.3, 1)
    assert json.loads(json.dumps(summary)) == summary
