"""The workdir lock: one writer per workdir, refused with a one-line message, free again when its holder dies."""

import json
import os
import select
import signal
import socket
import subprocess
import sys

import pytest

from awn_jax import io
from helpers import checkout_env

# Takes the lock, says so, then waits to be killed.
HOLD = """
import sys, time
from awn_jax import io
lock = io.lock_workdir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""

# Tries the lock once: prints the refusal and exits 3, or prints "locked".
TRY = """
import sys
from awn_jax import io
try:
    with io.lock_workdir(sys.argv[1]):
        print("locked", flush=True)
except io.WorkdirBusyError as err:
    print(err, flush=True)
    sys.exit(3)
"""


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=checkout_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture
def holder(tmp_path):
    """A subprocess holding the lock of ``tmp_path / "run"``; killed at the end in any case."""
    workdir = str(tmp_path / "run")
    proc = _python(HOLD, workdir)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline().strip() == "locked", proc.stderr.read()
        yield workdir, proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _expected_message(workdir: str, pid: int) -> str:
    return (f"workdir {workdir} is in use by process {pid} on host {socket.gethostname()} since ")


def test_a_second_start_from_another_process_is_refused_with_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    with io.lock_workdir(workdir) as lock:
        assert lock.held
        proc = _python(TRY, workdir)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        message = out.strip()
        assert "\n" not in message and message.startswith(_expected_message(workdir, os.getpid()))
        assert message.endswith(" UTC (another training of it is running); wait for it to finish"
                                " or stop it, or use another --workdir.")
    # released: another process may take it now
    proc = _python(TRY, workdir)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == "locked", err


def test_a_live_holder_is_named_and_a_killed_holder_is_taken_over(holder):
    workdir, proc = holder
    with pytest.raises(io.WorkdirBusyError) as err:
        io.lock_workdir(workdir)
    assert str(err.value).startswith(_expected_message(workdir, proc.pid))
    assert isinstance(err.value, RuntimeError)

    proc.send_signal(signal.SIGKILL)  # no clean-up: the stale .lock file stays
    proc.wait()
    assert os.path.exists(io.lock_path(workdir))
    with io.lock_workdir(workdir):
        with open(io.lock_path(workdir)) as f:
            info = json.load(f)
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()


def test_readers_need_no_lock(holder):
    workdir, _ = holder
    io.atomic_write(io.config_path(workdir), "{}")  # flock is advisory: files stay readable and writable
    with open(io.config_path(workdir)) as f:
        assert f.read() == "{}"


def test_the_lock_lives_beside_the_run_files_and_leaves_them_alone(tmp_path):
    workdir = str(tmp_path / "run")
    io.atomic_write(io.config_path(workdir), '{"seed": 1}')
    io.atomic_write(io.metrics_path(workdir), "{}\n")
    os.makedirs(os.path.join(io.checkpoints_dir(workdir), "100"))
    before = sorted(os.listdir(workdir))
    for _ in range(2):  # taken, released, taken again
        with io.lock_workdir(workdir):
            assert sorted(os.listdir(workdir)) == sorted(before + [".lock"])
    with open(io.config_path(workdir)) as f:
        assert f.read() == '{"seed": 1}'


def test_a_missing_workdir_is_created_and_a_garbled_lock_file_is_harmless(tmp_path):
    workdir = str(tmp_path / "new" / "run")
    with io.lock_workdir(workdir):
        assert os.path.isfile(io.lock_path(workdir))
    with open(io.lock_path(workdir), "w") as f:
        f.write("not json\x00" * 100)
    lock = io.WorkdirLock(workdir)
    with lock:
        with pytest.raises(io.WorkdirBusyError, match=r"in use by another process \(another training"):
            with open(io.lock_path(workdir), "w") as f:  # the holder's details lost: still refused
                f.write("garbage")
            io.lock_workdir(workdir)
    assert not lock.held


def test_one_process_cannot_take_its_own_workdir_twice_and_release_is_idempotent(tmp_path):
    workdir = str(tmp_path / "run")
    lock = io.lock_workdir(workdir)
    assert lock.acquire() is lock  # re-acquiring the held object is a no-op
    with pytest.raises(io.WorkdirBusyError, match=f"process {os.getpid()} "):
        io.lock_workdir(workdir)
    lock.release()
    lock.release()
    with pytest.raises(ValueError):
        with io.lock_workdir(workdir):
            raise ValueError("the body failed")
    io.lock_workdir(workdir).release()  # the failing body released it
