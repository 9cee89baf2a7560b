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
non-finite training); 2: the command line cannot be used (unknown flag or config key, malformed
value). The one-line message says why.
"""

from __future__ import annotations

from absl import flags

from train import cli


def _define_flags() -> None:
    cli.define_config_flag()
    flags.DEFINE_string("workdir", "runs/default", "Where results and checkpoints go.")
    cli.define_distributed_flags()


def main(argv: list[str]) -> int:
    cli.no_positional_args(argv)
    cli.quiet_logging()
    cli.initialize_distributed()  # before anything touches a device
    import jax

    from asl_jax.training.checkpoint import UnreadableCheckpointError
    from asl_jax.training.config import ConfigError
    from asl_jax.training.lock import WorkdirBusyError
    from asl_jax.training.loop import NonFiniteError, train_and_evaluate
    from asl_jax.training.workdir import WorkdirConfigError
    from train.summary import format_summary

    try:
        result = train_and_evaluate(cli.typed_config(), flags.FLAGS.workdir)
    except (
        ConfigError,
        WorkdirBusyError,
        WorkdirConfigError,
        NonFiniteError,
        UnreadableCheckpointError,
    ) as e:
        return cli.error(str(e))
    if jax.process_index() == 0:
        print(format_summary(result.summary), flush=True)
    if result.interrupted:
        return 128 + result.interrupted
    return 0


if __name__ == "__main__":
    cli.run(main, _define_flags)
