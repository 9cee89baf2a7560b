"""The command line of the ``train`` commands: flags, the config, one-line errors, exit codes.

``python -m train``, ``train.compare`` and ``train.sweep`` take the same ``--config`` /
``--config.*`` flags (:func:`define_config_flag`), converted once into the typed config
(:func:`typed_config`).

Flags are defined by functions, called by the module that ``python -m`` runs, so that the
commands can also be imported side by side (tests) without absl's duplicate-flag errors. Every
command starts with :func:`run`, which answers a command line it cannot use (an unknown flag or
config key, a malformed value, a missing required flag) with one line on stderr and exit status 2.
"""

from __future__ import annotations

import difflib
import logging as std_logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from absl import flags, logging

if TYPE_CHECKING:  # imported where used: flags are parsed before JAX starts
    from asl_jax.training.config import Config

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")


#: The exit status of a command line that cannot be used (as for argparse).
USAGE_EXIT = 2


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
        except BrokenPipeError:  # the reader of stdout went away (``| head -1``)
            return _stdout_closed()

    try:
        app.run(checked_main, flags_parser=parse_flags)
    except BrokenPipeError:  # raised outside main: absl's --help, a flush at exit
        sys.exit(_stdout_closed())


#: The exit status of a command whose stdout was closed by its reader: as if killed by SIGPIPE,
#: which is what the shell reports for other programs in ``cmd | head -1``.
BROKEN_PIPE_EXIT = 128 + 13


def _stdout_closed() -> int:
    """Points stdout at /dev/null, so that the interpreter's final flush does not print a second
    ``BrokenPipeError``; nothing is reported: the reader has read what it wanted."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by an object without a descriptor
        pass
    finally:
        os.close(devnull)
    return BROKEN_PIPE_EXIT


def parse_flags(argv: list[str]) -> list[str]:
    """``flags.FLAGS(argv)``; a flag error is printed on one line and exits with 2."""
    try:
        return flags.FLAGS(argv)
    except flags.UnrecognizedFlagError as e:
        _usage_exit(unknown_flag_message(e.flagname))
    except flags.Error as e:
        _usage_exit(_missing_flag_message(str(e)) or _validator_message(str(e)))


def _validator_message(message: str) -> str:
    """A multi-flag validator's own message, without the flag values absl puts before it
    (``flags workdir=None, model=None: ...``)."""
    return re.sub(r"^flags (\w+=.*?, )*\w+=.*?: ", "", message, count=1)


#: What a required flag is, for the line that says it is missing.
REQUIRED_FLAGS = {
    "workdir": "the workdir of a training run",
    "output": "the file to write (.safetensors or .pth)",
}


def _missing_flag_message(message: str) -> str | None:
    """``--workdir is required: the workdir of a training run`` for absl's ``flag
    --workdir=None: Flag --workdir must have a value other than None.``, else None."""
    match = re.search(r"Flag --(\w+) must have a value other than None", message)
    if match is None:
        return None
    name = match.group(1)
    return f"--{name} is required" + (f": {REQUIRED_FLAGS[name]}" if name in REQUIRED_FLAGS else "")


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


def config_keys() -> list[str]:
    """Every dotted key of the config, of blocks (``data``) and fields (``data.name``).

    Derived from the typed config, so the config file is not parsed a second time to know them.
    """
    from asl_jax.training.config import Config

    names = [name for name, _ in Config.walk()]
    blocks = sorted({name.rpartition(".")[0] for name in names if "." in name})
    return sorted(blocks + names)


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


def check_config_flag(argv: Sequence[str], name: str = "config") -> None:
    """Checks ``--name=FILE`` and the ``--name.KEY`` overrides of ``argv`` before absl does.

    Raises:
      UsageError: FILE does not exist, or a KEY is not a key of the config; the message names
        the closest key (``unknown config key data.img_size; did you mean data.image_size?``)
        or lists the keys of the group.
    """
    path, keys = config_overrides(argv, name)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        raise UsageError(f"--{name}={path}: no such file (expected a train/configs/*.py file)")
    if not keys:
        return
    valid = config_keys()
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


def initialize_distributed(**kwargs: Any) -> bool:
    """``jax.distributed`` from the flags of :func:`define_distributed_flags`.

    Call before anything touches a device.

    Raises:
      UsageError: the flags do not describe a multi-host run (naming them).
    """
    from asl_jax.training import parallel

    f = flags.FLAGS
    try:
        return parallel.initialize_distributed(
            f.coordinator_address, f.num_processes, f.process_id, auto=f.distributed, **kwargs
        )
    except ValueError as e:  # the library names its arguments; the command line has flags
        message = re.sub(r"\b(coordinator_address|num_processes|process_id)\b", r"--\1", str(e))
        raise UsageError(message) from None


def typed_config() -> Config:
    """The ``--config`` flag's config (file and overrides), converted and checked once.

    Raises:
      ConfigError: a field of the config has an invalid value (naming it).
    """
    from asl_jax.training.config import validate_config

    return validate_config(flags.FLAGS.config)


def quiet_logging() -> None:
    """absl logs at WARNING unless ``--verbosity`` is given; the library's warnings are printed
    as ``warning: ...`` lines (:func:`warning_lines`).

    Orbax logs every checkpoint step at INFO; the console is kept for progress and results.
    """
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    warning_lines()


class _WarningLines(std_logging.Handler):
    """Prints a warning (or worse) as ``warning: message`` on stderr, the format of every other
    warning of the commands; hands a lower record to the root logger's handlers (absl's)."""

    def emit(self, record: std_logging.LogRecord) -> None:
        if record.levelno < std_logging.WARNING:
            std_logging.getLogger().handle(record)
            return
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging's own report
            self.handleError(record)
            return
        label = "warning" if record.levelno == std_logging.WARNING else "error"
        print(f"{label}: {message}", file=sys.stderr, flush=True)


def warning_lines(logger: str = "asl_jax") -> None:
    """The warnings of ``logger`` (the library's: a skipped bad row of a folder dataset, a
    duplicated image...) as ``warning: ...`` lines instead of absl's ``W1205 07:18:44.578162``
    format. Idempotent."""
    target = std_logging.getLogger(logger)
    if not any(isinstance(h, _WarningLines) for h in target.handlers):
        target.addHandler(_WarningLines())
    target.propagate = False


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
