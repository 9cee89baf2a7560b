"""The workdir's records: ``config.json``, ``metrics.jsonl``, ``summary.json`` and TensorBoard.

Only process 0 writes (``enabled=False`` elsewhere). ``metrics.jsonl`` holds one JSON object per
line: train records (``"kind": "train"``) every ``log_every`` steps and evaluation records
(``"kind": "eval"``); values are plain floats, non-finite values are written as ``null``. The
same records can also go to TensorBoard event files in the workdir (:class:`TensorBoardLog`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        return _plain(arr.item() if arr.ndim == 0 else arr.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically (temporary file + rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_plain(obj), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path) as f:
        return json.load(f)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (an unreadable trailing line from a kill is dropped)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class TensorBoardLog:
    """TensorBoard event files of the records, written with tensorboardX (no TensorFlow).

    Every numeric field of a record becomes a scalar ``<kind>/<field>`` at the record's step
    (``train/loss``, ``train/gamma_neg``, ``eval/map``, ``eval/map_ema``, ...), so the event files
    show exactly what ``metrics.jsonl`` holds. ``tensorboard --logdir runs/`` lists every run.

    Args:
      logdir: where the event files go (the run's workdir).
      purge_step: on resume, the first step after the restored checkpoint: TensorBoard hides
        what the interrupted run wrote from that step on, as ``metrics.jsonl`` drops it.
      text: shown under TensorBoard's Text tab as ``config`` (e.g. the run's config).
    """

    def __init__(self, logdir: str | os.PathLike[str], *, purge_step: int | None, text: str = ""):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "TensorBoard logging needs tensorboardX (pip install -e '.[train]'); or turn it "
                "off with --config.tensorboard=False."
            ) from e
        # The suffix keeps a resumed session's file apart from (and sorted after) the earlier
        # ones even within the same second: the file name otherwise has a 1-s timestamp.
        self._writer = SummaryWriter(
            os.fspath(logdir),
            purge_step=purge_step,
            flush_secs=30,
            filename_suffix=f".from{purge_step or 0:010d}",
        )
        if text and purge_step is None:
            # Markdown: indented by four spaces, the config keeps its layout.
            self._writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def write(self, record: Mapping[str, Any]) -> None:
        kind, step = record.get("kind", "record"), int(record["step"])
        for key, value in record.items():
            if key in ("kind", "step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._writer.close()


class MetricsLog:
    """Append-only ``metrics.jsonl`` that stays consistent across resumes.

    Args:
      path: the file.
      keep_until_step: on resume, the restored step: records of later steps (written after the
        checkpoint by the interrupted run) are dropped so the file describes exactly one run.
        None starts a new file.
      enabled: False on processes other than 0 (records are kept in memory only).
      tensorboard: also write every record to TensorBoard event files in the file's directory.
      tensorboard_text: the text shown with them (the run's config).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keep_until_step: int | None = None,
        enabled: bool = True,
        tensorboard: bool = False,
        tensorboard_text: str = "",
    ):
        self.path = os.fspath(path)
        self.enabled = enabled
        self.tensorboard = None
        if enabled and tensorboard:
            self.tensorboard = TensorBoardLog(
                os.path.dirname(os.path.abspath(self.path)),
                purge_step=None if keep_until_step is None else keep_until_step + 1,
                text=tensorboard_text,
            )
        if keep_until_step is None:
            self.records: list[dict[str, Any]] = []
        else:
            self.records = [r for r in read_records(self.path) if r["step"] <= keep_until_step]
        if enabled:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                for record in self.records:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
            os.replace(tmp, self.path)

    def write(self, record: Mapping[str, Any]) -> None:
        record = _plain(dict(record))
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self) -> None:
        """Flushes and closes the TensorBoard files (metrics.jsonl is closed after each write)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def summarize(
    records: Iterable[Mapping[str, Any]], *, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``summary.json`` content from the records: final and best evaluation, final γ−/Δp.

    Returns:
      A dict with ``final`` (the last evaluation record), ``best_map`` / ``best_map_step``,
      ``best_map_ema`` / ``best_map_ema_step`` (a tie goes to the later step),
      ``final_gamma_neg`` (``extra``'s when given: the γ− the loss applies after the last
      step, from the train state; else the value the last logged step applied),
      ``final_delta_p``, ``num_skipped`` and ``extra``'s entries.
    """
    records = list(records)
    evals = [r for r in records if r.get("kind") == "eval"]
    trains = [r for r in records if r.get("kind") == "train"]
    out: dict[str, Any] = dict(extra or {})
    out["final"] = evals[-1] if evals else None
    for key in ("map", "map_ema"):
        scored = [r for r in evals if r.get(key) is not None]
        # max() returns the first maximum: of the reversed records, the latest of equals.
        best = max(reversed(scored), key=lambda r: r[key]) if scored else None
        out[f"best_{key}"] = best[key] if best else None
        out[f"best_{key}_step"] = best["step"] if best else None
    last = trains[-1] if trains else {}
    out.setdefault("final_gamma_neg", last.get("gamma_neg"))
    out["final_delta_p"] = last.get("delta_p")
    out["num_skipped"] = last.get("num_skipped", 0)
    return out
