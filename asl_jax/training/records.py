"""The workdir's JSON files: ``config.json``, ``metrics.jsonl`` and ``summary.json``.

Only process 0 writes (``enabled=False`` elsewhere). ``metrics.jsonl`` holds one JSON object per
line: train records (``"kind": "train"``) every ``log_every`` steps and evaluation records
(``"kind": "eval"``); values are plain floats, non-finite values are written as ``null``.
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


class MetricsLog:
    """Append-only ``metrics.jsonl`` that stays consistent across resumes.

    Args:
      path: the file.
      keep_until_step: on resume, the restored step: records of later steps (written after the
        checkpoint by the interrupted run) are dropped so the file describes exactly one run.
        None starts a new file.
      enabled: False on processes other than 0 (records are kept in memory only).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keep_until_step: int | None = None,
        enabled: bool = True,
    ):
        self.path = os.fspath(path)
        self.enabled = enabled
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


def summarize(
    records: Iterable[Mapping[str, Any]], *, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``summary.json`` content from the records: final and best evaluation, final γ−/Δp.

    Returns:
      A dict with ``final`` (the last evaluation record), ``best_map`` / ``best_map_step``,
      ``best_map_ema`` / ``best_map_ema_step`` (a tie goes to the later step),
      ``final_gamma_neg``, ``final_delta_p``, ``num_skipped`` and ``extra``'s entries.
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
    out["final_gamma_neg"] = last.get("gamma_neg")
    out["final_delta_p"] = last.get("delta_p")
    out["num_skipped"] = last.get("num_skipped", 0)
    return out
