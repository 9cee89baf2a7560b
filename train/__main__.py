"""``python -m train``: train and evaluate a multi-label classifier with ASL.

    python -m train                                   # shapes, small CNN, ~5 min on 2 CPU cores
    python -m train --config=train/configs/coco.py --config.batch_size=256 --workdir=runs/coco
    python -m train --config.loss.adaptive=True --workdir=runs/adaptive

Several hosts (run on every host; process 0's coordinator at HOST:PORT):

    python -m train --coordinator_address=HOST:PORT --num_processes=N --process_id=I ...
    python -m train --distributed ...                 # cluster auto-detection (TPU pod, SLURM...)

Interrupting (Ctrl-C, SIGTERM) saves a checkpoint at the next step and exits with 128 + the
signal number (130 / 143); rerunning the same command resumes. Exit status 1: the run failed
(invalid config, refused workdir, non-finite training); the message says why.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Training config file (train/configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where results and checkpoints go.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host with the cluster's auto-detection (jax.distributed)."
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax logs every checkpoint step at INFO; keep the console for progress and results.
        logging.set_verbosity(logging.WARNING)
    from asl_jax.training import parallel

    # Before anything touches a device.
    parallel.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value
    )
    import jax

    from asl_jax.training.config import ConfigError
    from asl_jax.training.loop import (
        NonFiniteError,
        WorkdirConfigError,
        format_summary,
        train_and_evaluate,
    )

    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, WorkdirConfigError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        print(format_summary(result.summary), flush=True)
    if result.interrupted:
        return 128 + result.interrupted
    return 0


if __name__ == "__main__":
    app.run(main)
