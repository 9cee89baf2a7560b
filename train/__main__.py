"""``python -m train``: train and evaluate a multi-label classifier with ASL.

    python -m train                                   # shapes, small CNN, a few minutes on a CPU
    python -m train --config=train/configs/coco.py --config.batch_size=256 --workdir=runs/coco
    python -m train --config.loss.adaptive=True --workdir=runs/adaptive

Several hosts (run on every host; process 0's coordinator at HOST:PORT):

    python -m train --coordinator_address=HOST:PORT --num_processes=N --process_id=I ...
    python -m train --distributed ...                 # cluster auto-detection (TPU pod, SLURM...)

Interrupting (Ctrl-C, SIGTERM) saves a checkpoint at the next step and exits with 128 + the
signal number (130 / 143); rerunning the same command resumes. Exit status 1: the run failed
(invalid config, refused workdir: another run is writing it or it holds other settings,
non-finite training, a checkpoint that cannot be saved); 2: the command line cannot be used
(unknown flag or config key, malformed value). The one-line message says why. On several hosts, a
process whose peer died (killed, host lost) says so in one line, naming the peer and the last
checkpoint, and exits with 1 (see ``train/supervise.py``; ``--heartbeat_timeout_s`` sets how soon
a silent peer counts as lost).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from train import cli, supervise


def _define_flags() -> None:
    cli.define_config_flag()
    flags.DEFINE_string("workdir", "runs/default", "Where results and checkpoints go.")
    cli.define_distributed_flags()
    flags.DEFINE_integer(
        "heartbeat_timeout_s",
        None,
        "Multi-host: seconds without heartbeats after which a process counts as lost (default "
        "JAX's, 100).",
    )


def main(argv: list[str]) -> int:
    cli.no_positional_args(argv)
    cli.quiet_logging()
    f = flags.FLAGS
    multi_host = f.num_processes is not None or f.distributed
    if multi_host and not os.environ.get(supervise.CHILD_ENV):
        # The training runs in a child: a lost peer aborts it in C++ (see train/supervise.py).
        return supervise.supervise(
            [sys.executable, "-m", "train", *sys.argv[1:]],
            workdir=f.workdir,
            process_id=f.process_id,
            num_processes=f.num_processes,
        )
    cli.initialize_distributed(heartbeat_timeout_s=f.heartbeat_timeout_s)  # before any device
    import jax

    from asl_jax.training.checkpoint import CheckpointSaveError, UnreadableCheckpointError
    from asl_jax.training.config import ConfigError
    from asl_jax.training.lock import WorkdirBusyError
    from asl_jax.training.loop import NonFiniteError, train_and_evaluate
    from asl_jax.training.workdir import WorkdirConfigError
    from train.summary import format_summary

    try:
        result = train_and_evaluate(cli.typed_config(), flags.FLAGS.workdir)
    except (
        CheckpointSaveError,
        ConfigError,
        WorkdirBusyError,
        WorkdirConfigError,
        NonFiniteError,
        UnreadableCheckpointError,
    ) as e:
        return cli.error(str(e))
    except (jax.errors.JaxRuntimeError, ValueError) as e:
        # A lost peer fails the next collective: in the step (JaxRuntimeError) or in a host-side
        # all-gather while the run closes (ValueError), whichever comes first.
        line = multi_host and supervise.lost_peer_line(
            e, workdir=f.workdir, process_id=jax.process_index(), num_processes=jax.process_count()
        )
        if not line:
            raise
        cli.error(line)
        sys.stdout.flush()
        # Exiting normally would wait for the coordination service, which aborts in C++.
        os._exit(1)
    if jax.process_index() == 0:
        print(format_summary(result.summary), flush=True)
    if result.interrupted:
        return 128 + result.interrupted
    return 0


if __name__ == "__main__":
    cli.run(main, _define_flags)
