"""What every command shares: flag parsing, the error contract, process-level settings.

The contract: bad input (a flag, a config value, a data file, a workdir) is reported
in one line starting ``error:`` on stderr with exit status 2, before anything is
written; ``--debug`` shows the traceback instead.

Each command builds its flags afresh in its own ``absl.flags.FlagValues`` (no global
flag registry), so several commands can run in one process, as the tests do.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable, Sequence

from absl import flags, logging

from awn_jax import checkpoints, config as config_lib, data, io, runtime
from awn_jax.compilation import enable_compilation_cache

__all__ = ["USER_ERRORS", "UsageError", "new_flags", "run"]

# Errors that the user can fix; reported in one line.
USER_ERRORS = (config_lib.ConfigError, data.DataError, checkpoints.CheckpointError, io.WorkdirBusyError, ValueError)


class UsageError(ValueError):
    """A flag is missing or contradicts another; the message says which."""


def new_flags() -> flags.FlagValues:
    """A fresh flag registry with the flags every command has (``--debug``, ``--tune_allocator``)."""
    fv = flags.FlagValues()
    flags.DEFINE_bool("debug", False, "Show tracebacks for errors instead of one-line messages.", flag_values=fv)
    flags.DEFINE_bool("tune_allocator", True, "Keep freed host memory for reuse (glibc), so XLA:CPU's temporaries"
                      " are not page-faulted every step (docs/PERFORMANCE_NOTES.md).", flag_values=fv)
    return fv


def _config_file(argv: Sequence[str]) -> str | None:
    """The ``--config`` value of ``argv`` (``--config=FILE`` or ``--config FILE``), if any."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_problem(path: str, error: BaseException) -> str:
    """One line on why the config file ``path`` (``FILE[:ARG]``) could not be loaded."""
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
        return f"config file {file} does not exist; pass a file such as configs/lenet_fmnist.py"
    if isinstance(error, SyntaxError):
        return f"config file {file} has a syntax error at line {error.lineno}: {error.msg}; fix the file"
    text = str(error)
    if "get_config" in text and isinstance(error, AttributeError):
        return f"config file {file} defines no get_config(); it must return an ml_collections.ConfigDict"
    if "Error whilst parsing config file" in text:  # config_flags wraps get_config's exception
        text = [line for line in text.splitlines() if line.strip()][-1].strip()
    return f"config file {path}: get_config failed ({text}); fix the file or its argument"


def _check_config_module(file: str) -> None:
    """Raises what makes ``file`` unusable as a config module, before config_flags loads it.

    config_flags defers a missing file's error to the first use of the config, and reloads
    into a module of a fixed name, so a file without ``get_config`` can inherit the one of a
    config loaded earlier in the same process; a fresh module sees neither problem.
    """
    if not os.path.isfile(file):
        raise FileNotFoundError(file)
    spec = importlib.util.spec_from_file_location("_awn_jax_config_check", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise AttributeError(f"module {file!r} has no attribute 'get_config'")


def _parse(fv: flags.FlagValues, argv: Sequence[str], prog: str, doc: str, max_args: int) -> list[str]:
    """absl's parsing with every problem reported in one line (exit 2); ``--help`` prints the flags."""
    def print_help_and_exit():
        print(f"{doc.strip()}\n\nflags:\n{fv.get_help()}")
        sys.exit(0)

    if any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
        print_help_and_exit()
    full_help = "--helpfull" in argv
    argv = [a for a in argv if a != "--helpfull"]
    path = _config_file(argv)
    try:
        if path is not None:
            _check_config_module(path.split(":", 1)[0])
        rest = fv(argv)
    except flags.Error as e:
        problem = str(e).splitlines()[0]
        if "Error whilst parsing config file" in str(e):
            problem = _config_problem(path, e)
    except AttributeError as e:
        text = str(e.args[0] if e.args else e).strip("'").replace("\\'", "'").replace("\\n", " ")
        if "get_config" in text:
            problem = _config_problem(path, e)
        else:  # config_flags: an override names no config field
            problem = f"unknown config field {' '.join(text.split())}"
    except Exception as e:  # a config file that fails to load raises whatever it raises
        if path is None:
            raise
        problem = _config_problem(path, e)
    else:
        if full_help:  # after parsing, so that --config's fields are listed
            print_help_and_exit()
        if len(rest) - 1 > max_args:
            problem = f"unexpected arguments: {' '.join(rest[1 + max_args:])}"
        else:
            return rest[1:]
    print(f"error: {problem} ({prog} --helpfull lists the flags)", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[flags.FlagValues, list[str]], int | None], fv: flags.FlagValues,
        argv: Sequence[str] | None, prog: str, doc: str, *, max_args: int = 0,
        errors: tuple[type[BaseException], ...] = ()) -> int:
    """Parses ``argv`` into ``fv``, applies process settings and runs ``main(fv, args)`` under the contract.

    Args:
      main: the command, given the flags and the positional arguments; returns an exit
        status (None: 0).
      fv: the command's flags (from :func:`new_flags`).
      argv: the command line, program name first (default ``sys.argv``).
      prog: how the user invokes the command, for messages.
      doc: what ``--help`` prints above the flags (the command's module docstring).
      max_args: positional arguments the command takes at most.
      errors: more exception types this command reports in one line.

    Returns:
      The exit status: 0, 2 for bad input, or what ``main`` returned.
    """
    argv = list(sys.argv if argv is None else argv)
    try:
        args = _parse(fv, argv, prog, doc, max_args)
    except SystemExit as e:  # --help, or a flag that cannot be parsed
        return int(e.code or 0)
    if fv.tune_allocator:
        runtime.tune_host_allocator()
    enable_compilation_cache()
    if not fv.debug:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        return main(fv, args) or 0
    except (*USER_ERRORS, UsageError, *errors) as e:
        if fv.debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
