"""Small file helpers shared by the library and the experiments: atomic writes, the workdir layout, tuples.

A training workdir holds::

    .lock                  held (flock) by the live training run; see WorkdirLock
    config.json            the run's config (checkpoints.save_config)
    checkpoints/<step>/    orbax checkpoints of the train state
    metrics.jsonl          one JSON record per log step, eval and final result
    tensorboard/           event files
    eval/                  the sweep at the shared statistics: sweep.{json,csv,png}
    eval_calibrated_<N>w/  US-Net's sweep after calibrating BatchNorm at N widths
    calibration/<N>w/      those calibrated statistics

Every module and experiment names these places through the functions below.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any, Callable

__all__ = [
    "WorkdirBusyError",
    "WorkdirLock",
    "lock_workdir",
    "lock_path",
    "check_workdir_free",
    "atomic_write",
    "replace_directory",
    "remove_stale_temporaries",
    "config_path",
    "checkpoints_dir",
    "metrics_path",
    "tensorboard_dir",
    "eval_dir",
    "sweep_path",
    "calibration_dir",
    "dir_bytes",
    "check_output_file",
    "check_new_directory",
    "nested_tuples",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def nested_tuples(value: Any) -> Any:
    """Lists and tuples, nested ones too, as tuples; anything else as it is.

    Config and model fields hold tuples, the hashable form that Flax modules and jit's static
    arguments need; JSON reads them back as lists, and a notebook or a flag may give lists.
    """
    return tuple(map(nested_tuples, value)) if isinstance(value, (list, tuple)) else value


def atomic_write(path: str, content: str | bytes) -> None:
    """Writes ``content`` (text or bytes) to ``path`` through a temporary file and a rename.

    A reader sees the old file or the new one, never a part of either.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _temporary_name(parent: str, name: str, kind: str) -> str:
    # The writer's pid and host in the name: a later cleanup removes only what a dead process
    # of its own host left (a workdir may be shared by hosts, whose pids mean nothing here).
    return tempfile.mkdtemp(dir=parent, prefix=f".{name}.{kind}-{os.getpid()}@{socket.gethostname()}-")


def _left_by_dead_process(entry: str, kind: str) -> bool:
    """Whether a temporary named by :func:`_temporary_name` was left by a process that is gone."""
    writer = entry.split(kind, 1)[1].rsplit("-", 1)[0]  # "<pid>@<host>"; mkdtemp's suffix has no "-"
    pid, _, host = writer.partition("@")
    if not pid.isdigit() or host != socket.gethostname():
        return False  # not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def remove_stale_temporaries(directory: str, only: str | None = None) -> None:
    """Clears what killed writers left in ``directory``.

    That is :func:`replace_directory`'s hidden halves of dead processes (restoring the
    old directory where a swap was cut between its two renames) and, unless ``only``
    names the one replaced directory to look after, ``atomic_write``'s ``.tmp-*`` files;
    call it without ``only`` only where no other process writes (the training run,
    holding the workdir's lock).
    """
    if not os.path.isdir(directory):
        return
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith(".tmp-") and only is None and os.path.isfile(path):
            os.unlink(path)
            continue
        for kind in (".new-", ".old-"):
            if not (entry.startswith(".") and kind in entry):
                continue
            name = entry[1:].split(kind)[0]
            if (only is None or name == only) and _left_by_dead_process(entry, kind):
                target = os.path.join(directory, name)
                if kind == ".old-" and not os.path.exists(target):
                    os.rename(path, target)
                else:
                    shutil.rmtree(path, ignore_errors=True)


def replace_directory(directory: str, write: Callable[[str], None]) -> None:
    """Replaces ``directory`` as a whole by a new one that ``write(path)`` fills.

    Readers see the complete old set of files or the complete new one, never a mix.
    A kill leaves at most a hidden half beside it, which the next
    :func:`remove_stale_temporaries` of the parent clears.
    """
    parent, name = os.path.split(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    new = _temporary_name(parent, name, "new")
    try:
        write(new)
        os.chmod(new, 0o777 & ~_UMASK)  # mkdtemp creates 0700; results are meant to be shared
        old = None
        # No signal handler may raise between the two renames (the commands turn SIGTERM and
        # Ctrl-C into exceptions); a signal that arrives meanwhile is delivered after.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if os.path.exists(directory):
                old = _temporary_name(parent, name, "old")
                os.rename(directory, old)  # onto the empty placeholder
            try:
                os.rename(new, directory)
            except OSError:
                if old:
                    os.rename(old, directory)
                raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def config_path(workdir: str) -> str:
    """``<workdir>/config.json``."""
    return os.path.join(workdir, "config.json")


def checkpoints_dir(workdir: str) -> str:
    """``<workdir>/checkpoints`` (absolute: orbax needs it)."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def metrics_path(workdir: str) -> str:
    """``<workdir>/metrics.jsonl``."""
    return os.path.join(workdir, "metrics.jsonl")


def tensorboard_dir(workdir: str) -> str:
    """``<workdir>/tensorboard``."""
    return os.path.join(workdir, "tensorboard")


def eval_dir(workdir: str, calibration: int = 0) -> str:
    """Where a sweep's files go: ``eval`` or, for US-Net calibrated at N widths, ``eval_calibrated_<N>w``."""
    return os.path.join(workdir, "eval" if not calibration else f"eval_calibrated_{calibration}w")


def sweep_path(workdir: str, calibration: int = 0) -> str:
    """The sweep's ``sweep.json``."""
    return os.path.join(eval_dir(workdir, calibration), "sweep.json")


def calibration_dir(workdir: str, num: int) -> str:
    """US-Net's statistics calibrated at ``num`` widths (absolute: orbax needs it)."""
    return os.path.join(os.path.abspath(workdir), "calibration", f"{num}w")


def dir_bytes(path: str) -> int:
    """Bytes of every file under ``path`` (files deleted meanwhile, e.g. by a training run, count 0)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except FileNotFoundError:
                pass
    return total


def check_output_file(path: str, what: str) -> None:
    """Refuses, before any work, an output file path that cannot be written.

    Raises:
      ValueError: ``path`` is a directory, or its directory does not exist or is a file.
    """
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory; name a file, e.g. {os.path.join(path, 'plot.png')}.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        problem = "is a file" if os.path.exists(parent) else "does not exist"
        raise ValueError(f"{what} {path}: its directory {parent} {problem}; create the directory or choose"
                         " another path.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{what} {path}: its directory {parent} is not writable; choose another path.")


def check_new_directory(path: str, what: str) -> None:
    """Refuses, before any work, a path that cannot become a new directory.

    Raises:
      ValueError: ``path`` is a file or a non-empty directory, or lies under a file or an
        unwritable directory.
    """
    if os.path.isfile(path):
        raise ValueError(f"{what} {path} is a file; name a new directory.")
    if os.path.isdir(path):
        if os.listdir(path):
            raise ValueError(f"{what} {path} exists and is not empty; name a new directory.")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{what} {path} lies under {parent}, which is a file; name a new directory elsewhere.")
    try:  # by trying: permissions alone miss read-only file systems and /proc
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".probe-"))
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot create a directory in {parent} ({e.strerror or e}); name a"
                         " directory in a writable place.") from None


# ----------------------------------------------------------------------------- the workdir lock


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's lock; the message is one line naming it and the fix."""


def lock_path(workdir: str) -> str:
    """``<workdir>/.lock``."""
    return os.path.join(workdir, ".lock")


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {int(info['pid'])} on host {info['host']} since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _read_holder(fd: int) -> str:
    # The holder writes its details just after taking the lock: give it a moment.
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return _describe_holder(text)
        time.sleep(0.01)
    return "another process"


def _busy(workdir: str, holder: str) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"workdir {workdir} is in use by {holder} (another training of it is"
        " running); wait for it to finish or stop it, or use another --workdir."
    )


def check_workdir_free(workdir: str) -> None:
    """Refuses a workdir that a live process holds, writing nothing (for checks before the lock).

    Raises:
      WorkdirBusyError: a live process holds its lock.
    """
    try:
        fd = os.open(lock_path(workdir), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file (or no workdir): nobody holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise _busy(workdir, _read_holder(fd)) from None
    finally:
        os.close(fd)  # also releases the probe's lock


class WorkdirLock:
    """An exclusive, non-blocking lock on a workdir: ``fcntl.flock`` on ``<workdir>/.lock``.

    Training takes it for the whole run; readers (a sweep or an export of a finished run)
    never need it. The lock belongs to the open
    file, so the kernel releases it when the holder exits in any way, ``SIGKILL``
    included: a lock left by a dead process is taken over by the next start, with no
    clean-up. (Children forked without ``exec`` share the open file and keep the lock
    while they live.) The file stays after release, holding the last holder's details;
    its presence means nothing, only the flock does. Within one process, a second
    ``WorkdirLock`` on the same workdir is refused too. A lock that is never released
    is held until the process exits.

    The holder's pid, host and start time are written into the file, for the message
    of a refused start.

    Use ``with lock_workdir(workdir): ...`` or ``acquire()`` / ``release()``.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = lock_path(workdir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> "WorkdirLock":
        """Takes the lock, creating the workdir if need be.

        Raises:
          WorkdirBusyError: another live process (or another lock object) holds it.
        """
        if self._fd is not None:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise _busy(self.workdir, holder) from None
        try:
            since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
            os.ftruncate(fd, 0)
            os.pwrite(fd, (info + "\n").encode(), 0)
        except BaseException:
            os.close(fd)  # releases the lock
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock (a no-op when not held). The file stays: removing it would race."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def lock_workdir(workdir: str) -> WorkdirLock:
    """Takes ``workdir``'s lock now and returns it; ``with lock_workdir(w): ...`` releases it on exit.

    Raises:
      WorkdirBusyError: a live process already holds it (a dead holder's lock is free).
    """
    return WorkdirLock(workdir).acquire()
