"""What every command shares: flag parsing, the error contract, process-level settings.

The contract: bad input (a flag, a config value, a data file, a workdir) is reported
in one line starting ``error:`` on stderr with exit status 2, before anything is
written; ``--debug`` shows the traceback instead.

Each command builds its flags afresh in its own ``absl.flags.FlagValues`` (no global
flag registry), so several commands can run in one process, as the tests do.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import traceback
from typing import Callable, NoReturn, Sequence

import jax
from absl import flags, logging

from awn_jax import checkpoints, config as config_lib, data, io, multihost, runtime
from awn_jax.compilation import enable_compilation_cache

__all__ = ["USER_ERRORS", "UsageError", "new_flags", "define_launch_flags", "join_run", "check_budgets", "run",
           "exit_with"]

# This project's own errors: their messages are the user's to read, never a lost process.
_OWN_ERRORS = (config_lib.ConfigError, data.DataError, checkpoints.CheckpointError, io.WorkdirBusyError,
               multihost.DistributedError)
# Errors that the user can fix; reported in one line.
USER_ERRORS = (*_OWN_ERRORS, ValueError)
# How JAX's runtime words a collective or coordination failure: another process is gone.
_LOST_PROCESS = re.compile(r"\bGloo \w+ failed|coordination service|heartbeat timeout|Connection reset by peer|"
                           r"Connection closed|Socket closed", re.IGNORECASE)


def _lost_process(error: BaseException) -> bool:
    """Whether ``error`` is JAX's runtime reporting a collective with a process that is gone.

    The runtime raises ``JaxRuntimeError`` from a computation and ``ValueError`` from some
    host-side collectives (``multihost_utils``), with the same words.
    """
    return (isinstance(error, (jax.errors.JaxRuntimeError, ValueError)) and not isinstance(error, _OWN_ERRORS)
            and bool(_LOST_PROCESS.search(str(error))))


class UsageError(ValueError):
    """A flag is missing or contradicts another; the message says which."""


def new_flags() -> flags.FlagValues:
    """A fresh flag registry with the flags every command has (``--debug``, ``--tune_allocator``, ``--tune_xla_cpu``)."""
    fv = flags.FlagValues()
    flags.DEFINE_bool("debug", False, "Show tracebacks for errors instead of one-line messages.", flag_values=fv)
    flags.DEFINE_bool("tune_allocator", True, "Keep freed host memory for reuse (glibc), so XLA:CPU's temporaries"
                      " are not page-faulted every step (docs/PERFORMANCE_NOTES.md).", flag_values=fv)
    flags.DEFINE_bool("tune_xla_cpu", True, "Add runtime.XLA_CPU_FLAGS to XLA_FLAGS: XLA:CPU's own convolutions, not"
                      " YNNPACK's (the LeNet AWN train step 1.2-1.3x faster), and its older emitters (MobileNetV2's"
                      " 1.6x; docs/PERFORMANCE_NOTES.md). False adds nothing; an XLA_FLAGS inherited from the"
                      " environment still applies.", flag_values=fv)
    return fv


def define_launch_flags(fv: flags.FlagValues) -> None:
    """Defines in ``fv`` the flags with which one process joins a run of several.

    They carry ``jax.distributed.initialize``'s argument names.
    """
    flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of process 0's coordinator"
                        " (a free port on process 0's host).", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Several processes: how many.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0..num_processes-1.",
                         flag_values=fv)
    flags.DEFINE_bool("distributed", False, "Join a run of several processes that JAX detects by itself (TPU pod"
                      " slice, SLURM, Open MPI, Kubernetes).", flag_values=fv)
    flags.DEFINE_integer("distributed_timeout", 120, "Seconds to wait for all processes at start, and for a silent"
                         " process before the run is declared failed.", flag_values=fv)


def join_run(fv: flags.FlagValues) -> None:
    """Joins the run of several processes the launch flags describe (nothing for a single process).

    Call first in a command's ``main``, before anything uses JAX.

    Args:
      fv: flags with the launch flags (:func:`define_launch_flags`).

    Raises:
      DistributedError: bad launch flags, or the processes did not all connect in time.
    """
    multihost.initialize(multihost.Launch(fv.coordinator_address, fv.num_processes, fv.process_id,
                                          auto=fv.distributed, timeout_s=fv.distributed_timeout))


def check_budgets(fv: flags.FlagValues, required: bool = False) -> None:
    """Refuses, before any work, a ``--budget_macs``/``--budget_ms`` that is not positive, or both.

    Raises:
      UsageError: a bad budget, both budgets, or (``required``) none.
    """
    for name, unit in (("budget_macs", "per image (MACs)"), ("budget_ms", "per batch (milliseconds)")):
        value = getattr(fv, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UsageError(f"--{name}={value:g} is not a positive number; give the budget {unit}.")
    given = (fv.budget_macs is not None) + (fv.budget_ms is not None)
    if given > 1 or (required and not given):
        raise UsageError("give exactly one budget: --budget_macs or --budget_ms.")


def _config_file(argv: Sequence[str]) -> str | None:
    """The ``--config`` value of ``argv`` (``--config=FILE`` or ``--config FILE``), if any: the last, as absl takes."""
    path = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def _config_fields(fv: flags.FlagValues) -> str:
    """``--config.FIELD=value`` lines of the loaded config, for ``--helpfull`` (empty without one)."""
    try:
        config = fv["config"].value if "config" in fv else None
    except Exception:  # a config file that does not load: its own error is reported without --helpfull
        return ""
    if config is None:
        return ""

    def lines(node, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                yield from lines(value, f"{prefix}{key}.")
            else:
                yield f"  --config.{prefix}{key}={value!r}"

    return "\n\nconfig fields (override any with --config.FIELD=VALUE):\n" + "\n".join(lines(config, ""))


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
    def print_help_and_exit(more: str = ""):
        print(f"{doc.strip()}\n\nflags:\n{fv.get_help()}{more}")
        sys.exit(0)

    if any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
        print_help_and_exit()
    full_help = "--helpfull" in argv
    argv = [a for a in argv if a != "--helpfull"]
    path, problem = _config_file(argv), None
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
        elif text.strip("\"' ") == "distributed":  # retired in favour of the launch flags
            problem = ("--config.distributed is now the flag --distributed (launch settings differ per"
                       " process, so they are flags, not part of the run's config)")
        else:  # config_flags: an override names no config field
            problem = f"unknown config field {' '.join(text.split())}"
    except Exception as e:  # a config file that fails to load raises whatever it raises
        if path is None:
            raise
        problem = _config_problem(path, e)
    else:
        if len(rest) - 1 > max_args:
            problem = f"unexpected arguments: {' '.join(rest[1 + max_args:])}"
        elif not full_help:
            return rest[1:]
    if full_help:  # after parsing, so that --config's fields are listed; a problem does not stop it
        if problem:
            print(f"note: {problem}", file=sys.stderr)
        print_help_and_exit(_config_fields(fv))
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
      The exit status: 0, 2 for bad input, 1 when another process of the run was lost
      (or for a bug, in a run of several processes), or what ``main`` returned.
    """
    argv = list(sys.argv if argv is None else argv)
    try:
        args = _parse(fv, argv, prog, doc, max_args)
    except SystemExit as e:  # --help, or a flag that cannot be parsed
        return int(e.code or 0)
    if fv.tune_allocator:
        runtime.tune_host_allocator()
    if fv.tune_xla_cpu:
        runtime.tune_xla_cpu()
    enable_compilation_cache()
    if not fv.debug:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    several = False
    try:
        status = main(fv, args) or 0
    except KeyboardInterrupt:  # outside the training loop (which saves and stops on Ctrl-C)
        if not multihost.joined():
            raise
        several, status = True, 130
    except Exception as e:
        several = multihost.joined()
        lost = several and _lost_process(e)
        user = isinstance(e, (*USER_ERRORS, UsageError, *errors)) and not lost
        if not several and (fv.debug or not user):
            raise
        if fv.debug or not (user or lost):  # a bug: show where, as a single process would
            traceback.print_exc()
        else:
            print(f"error: {_one_line(e, several)}", file=sys.stderr)
        status = 2 if user else 1
    if status and several:
        # JAX's orderly exit waits at a barrier for every other process, which a failed run may never
        # reach; a failed process leaves at once, and the others' next collective fails with it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _one_line(error: BaseException, several: bool) -> str:
    """The error's message in one line; in a run of several processes, says which process and why."""
    text = " ".join(str(error).split()) or type(error).__name__
    if not several:
        return text
    where = f"process {jax.process_index()} of {jax.process_count()}"
    if _lost_process(error):
        return (f"{where}: another process of this run stopped or became unreachable ({text[:300]}). The"
                " checkpoints on disk are intact: start every process again to resume.")
    return f"{where}: {text}"


def exit_with(command: Callable[[], int]) -> NoReturn:
    """Runs ``command`` as this process's entry point and exits with its status.

    A failed command leaves at once (``os._exit``): a thread that an orbax or JAX
    failure left running would otherwise keep the process alive after its error line.
    Ctrl-C outside the training loop (which saves and stops by itself) is one line too.
    """
    try:
        status = command()
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C).", file=sys.stderr)
        status = 130
    except SystemExit:
        raise
    except BaseException:  # a bug: its traceback, then out
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (`| head`): nothing more to say
            pass
    if status:
        os._exit(status)
    sys.exit(0)
