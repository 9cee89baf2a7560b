"""What the ``train`` commands share: config and multi-host flags, and reopening a finished run.

``python -m train`` and ``python -m train.compare`` take the same ``--config`` / ``--config.*``
flags (:func:`define_config_flag`); ``python -m train.evaluate`` and ``python -m train.predict``
reopen a workdir written by them (:func:`open_run`): its ``config.json``, class names and a
checkpoint, restored into the programs the config builds.

Flags are defined by functions, called by the module that ``python -m`` runs, so that the
commands can also be imported side by side (tests) without absl's duplicate-flag errors. Every
command starts with :func:`run`, which answers a command line it cannot use (an unknown flag or
config key, a malformed value, a missing required flag) with one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags, logging

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")


#: The exit status of a command line that cannot be used (as for argparse).
USAGE_EXIT = 2


class RunError(Exception):
    """A workdir cannot be used as asked (missing, no checkpoint, no such step...).

    The message says what is wrong and what to do; the commands print it and exit with status 1.
    """


class UsageError(Exception):
    """A command line that cannot be used; :func:`run` prints it on one line and exits with 2."""


def run(main: Callable[[list[str]], int], define_flags: Callable[[], None]) -> None:
    """``absl.app.run(main)`` after ``define_flags()``, with one-line command-line errors.

    absl prints a flag-parsing error on two lines and exits with 1; a mistyped ``--config.*`` key
    ends in ml_collections' chained traceback. Here both (and :class:`UsageError` raised by
    ``define_flags`` or ``main``) print ``error: ...`` on one line and exit with
    :data:`USAGE_EXIT`.
    """
    from absl import app

    try:
        # Defining the config flag already reads the config file and the --config.* overrides.
        define_flags()
    except flags.DuplicateFlagError:
        raise  # a bug of the command, not of its command line
    except (UsageError, flags.Error) as e:
        _usage_exit(str(e))

    def checked_main(argv: list[str]) -> int:
        try:
            return main(argv)
        except UsageError as e:
            return error(str(e), status=USAGE_EXIT)

    app.run(checked_main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """``flags.FLAGS(argv)``; a flag error is printed on one line and exits with 2."""
    try:
        return flags.FLAGS(argv)
    except flags.UnrecognizedFlagError as e:
        _usage_exit(unknown_flag_message(e.flagname))
    except flags.Error as e:
        _usage_exit(str(e))


def _usage_exit(message: str) -> None:
    # Only the first line: absl and ml_collections add hints on further lines.
    first = (message.strip().splitlines() or ["cannot parse the command line"])[0]
    sys.exit(error(first, status=USAGE_EXIT))


def did_you_mean(name: str, valid: Sequence[str], prefix: str = "") -> str | None:
    """``did you mean X?`` for the entry of ``valid`` closest to ``name``, or None.

    difflib's similarity ratio, with its default cutoff (0.6): below it, the nearest name is
    mostly unrelated, and the callers list what ``name`` could have been instead.
    """
    matches = difflib.get_close_matches(name, valid, n=1)
    return f"did you mean {prefix}{matches[0]}?" if matches else None


def unknown_flag_message(name: str) -> str:
    """``unknown flag --name; did you mean --x?`` with the closest defined flag.

    Without a close one, the message lists the command's own flags (not absl's logging flags).
    """
    package = __name__.split(".")[0]
    own = sorted(
        {
            f.name
            for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
            if module.split(".")[0] in (package, "__main__") or module == sys.argv[0]
            for f in module_flags
        }
    )
    hint = did_you_mean(name, list(flags.FLAGS), prefix="--")
    if hint is None:
        listed = ", ".join(f"--{n}" for n in own)
        hint = f"the flags of this command are {listed} (--helpfull lists all)"
    return f"unknown flag --{name}; {hint}"


def config_keys(config: Any) -> list[str]:
    """Every dotted key of a ``ConfigDict``, of groups (``data``) and leaves (``data.name``)."""
    import ml_collections

    keys = []
    for name, value in config.items():
        keys.append(name)
        if isinstance(value, ml_collections.ConfigDict):
            keys += [f"{name}.{key}" for key in config_keys(value)]
    return keys


def config_overrides(argv: Sequence[str], name: str = "config") -> tuple[str | None, list[str]]:
    """The config file given as ``--name=FILE`` (None when absent) and the ``--name.KEY`` keys."""
    path, keys = None, []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":  # the end of the flags
            break
        if m := re.match(rf"--?(?:no)?{re.escape(name)}\.([^=]+)", arg):
            keys.append(m.group(1))
        elif m := re.fullmatch(rf"--?{re.escape(name)}=(.*)", arg):
            path = m.group(1)
        elif re.fullmatch(rf"--?{re.escape(name)}", arg) and i + 1 < len(args):
            path = args[i + 1]
    return path, keys


def check_config_flag(
    argv: Sequence[str], name: str = "config", default: str = DEFAULT_CONFIG
) -> None:
    """Checks ``--name=FILE`` and the ``--name.KEY`` overrides of ``argv`` before absl does.

    Raises:
      UsageError: FILE does not exist, or a KEY is not a key of the config; the message names
        the closest key (``unknown config key data.img_size; did you mean data.image_size?``)
        or lists the keys of the group. A config file that fails to load keeps its traceback.
    """
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    path, keys = config_overrides(argv, name)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        raise UsageError(f"--{name}={path}: no such file (expected a train/configs/*.py file)")
    if not keys:
        return
    # The parser of --config itself: the same file, the same get_config(ARG) of FILE:ARG.
    valid = config_keys(ConfigFileFlagParser(name, lock_config=False).parse(path or default))
    for key in keys:
        if key in valid:
            continue
        # Not the key's own groups: "data" is no answer to "data.foo".
        candidates = [k for k in valid if not key.startswith(f"{k}.")]
        group = key.rpartition(".")[0]
        if group not in valid:
            group = ""
        hint = did_you_mean(key, candidates) or (
            f"the keys of {group or name} are "
            + ", ".join(k for k in valid if k.rpartition(".")[0] == group)
        )
        raise UsageError(f"unknown config key {key}; {hint}")


def define_config_flag() -> Any:
    """``--config`` (a ``train/configs/*.py`` file, default ``default.py``) and ``--config.*``.

    Raises:
      UsageError: a ``--config.KEY`` of the command line is not a key of the config.
    """
    from ml_collections import config_flags

    check_config_flag(sys.argv)
    return config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Training config file (train/configs/*.py).", lock_config=True
    )


def define_distributed_flags() -> None:
    """``--coordinator_address``, ``--num_processes``, ``--process_id`` and ``--distributed``."""
    flags.DEFINE_string(
        "coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator."
    )
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
    flags.DEFINE_bool(
        "distributed", False, "Multi-host with the cluster's auto-detection (jax.distributed)."
    )


def initialize_distributed() -> bool:
    """``jax.distributed`` from the flags of :func:`define_distributed_flags`.

    Call before anything touches a device.
    """
    from asl_jax.training import parallel

    f = flags.FLAGS
    return parallel.initialize_distributed(
        f.coordinator_address, f.num_processes, f.process_id, auto=f.distributed
    )


def quiet_logging() -> None:
    """absl logs at WARNING unless ``--verbosity`` is given.

    Orbax logs every checkpoint step at INFO; the console is kept for progress and results.
    """
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def no_positional_args(argv: list[str]) -> None:
    """Raises :class:`UsageError` when a command that takes none gets positional arguments."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def error(message: str, status: int = 1) -> int:
    """Prints ``error: message`` to stderr and returns the exit status (default 1)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def multi_run_status(result: Mapping[str, Any], failure: str) -> int:
    """The exit status of a command that trains several runs (compare, its seeds, sweep).

    128 + the signal number when ``result["status"]`` is ``interrupted`` (with a hint that
    rerunning resumes), 1 with ``error: failure`` when it is ``failed``, otherwise 0.
    """
    if result["status"] == "interrupted":
        print("Interrupted: rerun the same command to resume.", file=sys.stderr, flush=True)
        return 128 + int(result["signal"])
    if result["status"] == "failed":
        return error(failure)
    return 0


@dataclasses.dataclass
class OpenRun:
    """A trained run, reopened from its workdir by :func:`open_run`.

    Attributes:
      workdir: absolute path of the workdir.
      config: the run's config (``ml_collections.ConfigDict`` from ``config.json``).
      class_names: the class names, in label-index order.
      step: the step of the restored checkpoint.
      checkpoint: the checkpoint's directory.
      state: the restored :class:`~asl_jax.training.TrainState`.
      programs: the run's :class:`~asl_jax.training.Programs` (``programs.eval`` gives the
        probabilities of the regular and the EMA model).
      mesh: the device mesh the state lives on.
      summary: ``summary.json`` (None when the run did not write one).
    """

    workdir: str
    config: Any
    class_names: tuple[str, ...]
    step: int
    checkpoint: str
    state: Any
    programs: Any
    mesh: Any
    summary: dict[str, Any] | None


def _fill_missing(config: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Sets, recursively, every field of ``defaults`` that ``config`` lacks."""
    for key, value in defaults.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _fill_missing(config[key], value)
        else:
            config.setdefault(key, value)


def read_workdir_config(workdir: str) -> Any:
    """The validated config of ``workdir/config.json``.

    Raises:
      RunError: no such directory, no ``config.json``, or an invalid one.
    """
    import ml_collections

    from asl_jax.training.config import OPERATIONAL_FIELDS, ConfigError, validate_config
    from asl_jax.training.loop import added_field_defaults
    from asl_jax.training.records import read_json
    from train.configs.default import get_config

    if not os.path.isdir(workdir):
        raise RunError(
            f"workdir {workdir} does not exist (train with: python -m train --workdir=…)"
        )
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise RunError(f"{path} not found: {workdir} is not a workdir of python -m train")
    stored = read_json(path)
    # Fields added to the project since the run was trained count as what they meant for it
    # (result fields: as the loop reads them on resume) or as their defaults (operational ones,
    # async_checkpoints...: they do not change what the run computed).
    _fill_missing(stored, added_field_defaults(stored))
    defaults = get_config()
    for name in OPERATIONAL_FIELDS:
        if "." not in name and name not in stored and name in defaults:
            stored[name] = defaults[name]
    config = ml_collections.ConfigDict(stored)
    try:
        validate_config(config)
    except ConfigError as e:
        raise RunError(f"{path}: {e}") from e
    return config


def read_class_names(workdir: str) -> tuple[str, ...]:
    """The run's class names: ``classes.txt`` of the workdir (written by the training loop)."""
    path = os.path.join(workdir, "classes.txt")
    if not os.path.isfile(path):
        raise RunError(f"{workdir} has no classes.txt: it is not a workdir written by training")
    with open(path, encoding="utf-8") as f:
        return tuple(line.rstrip("\n") for line in f if line.strip())


def build_source(config: Any) -> Any:
    """The data source of ``config`` (``RunError`` when it cannot be built, e.g. data moved)."""
    from asl_jax.data import create_source

    try:
        return create_source(config.data, seed=int(config.seed))
    except (ValueError, OSError) as e:
        raise RunError(f"cannot build the data source data.name={config.data.name!r}: {e}") from e


def data_mesh(batch_size: int) -> Any:
    """A mesh over as many local devices as divide ``batch_size`` (evaluation on any machine).

    The training mesh may have had more (or other) devices; the restored state is replicated, so
    any number of devices that splits the batch evenly works.
    """
    import jax

    from asl_jax.training.parallel import make_mesh

    devices = jax.local_devices()
    n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
    return make_mesh(devices[:n])


def _checkpoint_step(
    steps: list[int],
    ckpt_dir: str,
    summary: dict[str, Any] | None,
    summary_path: str,
    *,
    step: int | None,
    best: bool,
    ema: bool,
) -> int:
    """The checkpoint step :func:`open_run` restores (``RunError`` naming the kept steps)."""
    if not steps:
        raise RunError(f"no checkpoint in {ckpt_dir}")
    if best:
        key = "best_map_ema" if ema else "best_map"
        if summary is None or summary.get(f"{key}_step") is None:
            raise RunError(
                f"--best needs the evaluations of {summary_path}, which is missing or has "
                "none; give --step or omit it for the latest checkpoint"
            )
        step = int(summary[f"{key}_step"])
        if step not in steps:
            # Training keeps the best checkpoints; this one was removed or set aside since.
            raise RunError(
                f"the best {'EMA ' if ema else ''}mAP ({100 * summary[key]:.2f}%) was "
                f"evaluated at step {step}, but {ckpt_dir} has no checkpoint of that step "
                f"(checkpoints of steps {', '.join(map(str, steps))}); give --step"
            )
    elif step is None:
        step = steps[-1]
    elif step not in steps:
        raise RunError(
            f"no checkpoint of step {step} in {ckpt_dir} (checkpoints of steps "
            f"{', '.join(map(str, steps))})"
        )
    return step


def _restore(ckpt: Any, state: Any, step: int) -> Any:
    """``ckpt.restore(state, step)``, with a one-line ``RunError`` when it cannot be read."""
    from asl_jax.training.checkpoint import read_error

    try:
        return ckpt.restore(state, step)
    except Exception as e:  # TensorStore / Orbax read errors of damaged files
        others = [s for s in ckpt.all_steps() if s != step]
        hint = f"give --step with one of {', '.join(map(str, others))}" if others else "retrain"
        raise RunError(
            f"the checkpoint of step {step} ({ckpt.path(step)}) cannot be read "
            f"({read_error(e)}); {hint}"
        ) from None


def open_run(
    workdir: str | os.PathLike[str],
    *,
    step: int | None = None,
    best: bool = False,
    ema: bool = False,
    batch_size: int | None = None,
) -> OpenRun:
    """Reopens a trained run: config, class names, programs and a restored checkpoint.

    Args:
      workdir: a workdir of ``python -m train`` (or of one loss of ``python -m train.compare``).
      step: the checkpoint to restore (default: the latest).
      best: restore the checkpoint of the best validation mAP of ``summary.json`` (of the EMA
        model when ``ema``); exclusive with ``step``.
      ema: with ``best``, use the EMA model's best step.
      batch_size: the batch size the caller will feed ``programs.eval`` (default: the run's
        evaluation batch size); the mesh is chosen so that it divides it.

    Returns:
      An :class:`OpenRun`.

    Raises:
      RunError: missing workdir or config, no checkpoint, the step asked for has no checkpoint
        (the message lists those that exist), or its checkpoint cannot be read.
    """
    import jax

    from asl_jax.training.checkpoint import Checkpointer
    from asl_jax.training.evaluation import eval_batch_size
    from asl_jax.training.loop import build_programs
    from asl_jax.training.records import read_json

    if step is not None and best:
        raise ValueError("give either step or best=True, not both")
    workdir = os.path.abspath(os.fspath(workdir))
    config = read_workdir_config(workdir)
    summary_path = os.path.join(workdir, "summary.json")
    summary = read_json(summary_path) if os.path.isfile(summary_path) else None

    ckpt_dir = os.path.join(workdir, "checkpoints")
    # Checked before Checkpointer(), which would create the directory.
    if not os.path.isdir(ckpt_dir):
        raise RunError(f"no checkpoint in {workdir} (no checkpoints/ directory)")
    ckpt = Checkpointer(ckpt_dir)
    try:
        step = _checkpoint_step(
            sorted(ckpt.all_steps()), ckpt_dir, summary, summary_path, step=step, best=best, ema=ema
        )
        class_names = read_class_names(workdir)
        batch_size = batch_size or eval_batch_size(config)
        mesh = data_mesh(batch_size)
        # total_steps only shapes the learning-rate schedule, not the optimizer state's
        # structure that the checkpoint is restored into; the run's own value keeps the
        # compiled programs shared with training when both happen in one process.
        total_steps = int((summary or {}).get("total_steps") or config.num_steps or 1)
        programs = build_programs(
            config,
            num_classes=len(class_names),
            image_size=int(config.data.image_size),
            total_steps=total_steps,
            mesh=mesh,
        )
        state = _restore(ckpt, programs.init(jax.random.key(int(config.seed))), step)
        return OpenRun(
            workdir=workdir,
            config=config,
            class_names=class_names,
            step=step,
            checkpoint=ckpt.path(step),
            state=state,
            programs=programs,
            mesh=mesh,
            summary=summary,
        )
    finally:
        ckpt.close()
