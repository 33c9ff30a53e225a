"""Faults: SIGKILL at random moments (during saves too), SIGTERM/Ctrl-C, a failed save, NaN.

The kill loop runs ``AWN_KILL_LOOP_ITERATIONS`` kills (2 here, one at a random moment and
one during a save, to stay inside the test-time budget); for the long version, by hand:

    AWN_KILL_LOOP_ITERATIONS=50 python -m pytest -q tests/test_faults.py -k kill
"""

import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from awn_jax import checkpoints, data, io, optim, sharding, steps, train
from awn_jax.models import from_config
from awn_jax.config import validate
from helpers import CHECKOUT, checkout_env, fake_split, tiny_config, write_fake_fmnist

ITERATIONS = int(os.environ.get("AWN_KILL_LOOP_ITERATIONS", "2"))
STREAMED = ("--config.data.in_memory=False", "--config.data.threads=2")


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Starts ``python -m awn_jax.main`` on generated Fashion-MNIST files (unbuffered output)."""
    root = tmp_path_factory.mktemp("faults")
    raw = root / "raw"
    raw.mkdir()
    write_fake_fmnist(raw, n_train=256, n_test=32)
    # checkout_env: a script started by path (below) imports this checkout, installed or not.
    env = checkout_env(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", AWN_JAX_CACHE_DIR=str(root / "cache"))
    common = ["--config=configs/lenet_fmnist.py:smoke", f"--config.data.raw={raw}",
              f"--config.data_dir={root / 'tfds'}", "--config.batch_size=16", "--config.num_epochs=2",
              "--config.data.train_examples=0", "--config.data.test_examples=0", "--config.eval_widths=(1.0,)",
              "--config.sweep.after_training=False", "--config.log_every_steps=1"]

    def start(workdir, *extra, program=("-m", "awn_jax.main"), **more_env):
        return subprocess.Popen([sys.executable, *program, *common, f"--workdir={workdir}", *extra],
                                cwd=CHECKOUT, env={**env, **more_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    return start


def _complete_steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _final_state(workdir):
    config = checkpoints.load_config(str(workdir))
    validate(config)
    info = data.dataset_info(config)
    target = steps.abstract_state(from_config(config, info.num_classes), optim.make_optimizer(config, 16),
                                  info.image_shape, sharding.replicated(sharding.data_mesh()))
    ckpt = checkpoints.Checkpointer(str(workdir))
    try:
        return ckpt.latest_step(), ckpt.restore(target)
    finally:
        ckpt.close()


def _wait_for_line(process, pattern, timeout=120):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(lines)[-3000:]}")


def test_sigkill_at_random_moments_resumes_to_an_uninterrupted_run(cli, tmp_path):
    # The killed run streams its records from the array_record files through Grain's threads;
    # the uninterrupted one reads them from memory: resuming from the step's position is exact.
    reference = cli(tmp_path / "reference", "--config.checkpoint_every_steps=1")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()[-3000:]
    killed = tmp_path / "killed"
    rng = random.Random(0)
    during_save = 0
    for i in range(ITERATIONS):
        before = _complete_steps(killed)
        process = cli(killed, "--config.checkpoint_every_steps=1", *STREAMED)
        header = _wait_for_line(process, r"steps \(2 epochs")[-1]
        expected = f"resuming at step {before[-1]}" if before else "from scratch"
        assert expected in header, (before, header)
        if i % 2:  # kill while a checkpoint is being written (orbax's temporary directory exists)
            directory = os.path.join(killed, "checkpoints")
            deadline = time.time() + 60
            while time.time() < deadline and not (
                    os.path.isdir(directory) and any("tmp" in d for d in os.listdir(directory))):
                time.sleep(0.0005)
            during_save += time.time() < deadline
        else:
            time.sleep(rng.uniform(0.5, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stdout.close()
    final = cli(killed, "--config.checkpoint_every_steps=1", *STREAMED)
    output = final.communicate(timeout=300)[0]
    assert final.returncode == 0, output[-3000:]
    assert ITERATIONS < 2 or during_save >= 1
    step_a, state_a = _final_state(tmp_path / "reference")
    step_b, state_b = _final_state(killed)
    assert step_a == step_b == 32
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    train_steps = [json.loads(line)["step"] for line in open(killed / "metrics.jsonl")
                   if json.loads(line)["kind"] == "train"]
    assert train_steps == list(range(1, 33))  # history kept once per step, none lost or repeated


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit_cleanly(cli, tmp_path, signum):
    process = cli(tmp_path, "--config.checkpoint_every_steps=1000", "--config.num_epochs=50")
    _wait_for_line(process, r"^step 3/")
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-3000:]
    stopped = int(re.search(r"stopped at step (\d+); checkpoint saved", output).group(1))
    assert _complete_steps(tmp_path) == [stopped]
    assert "Traceback" not in output


# The training command, with the rename that completes a checkpoint failing at one step: what a
# second writer of the step's name, a full disk or a lost file server does to a real save.
FAILING_SAVE = """
import errno, os, sys
from orbax.checkpoint._src.path import atomicity
from awn_jax.cli.common import exit_with
from awn_jax.cli.train import run

finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def failing_finalize(self):
    if os.path.basename(str(self._final_path)) == os.environ["AWN_FAIL_STEP"]:
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(self._final_path))
    return await finalize(self)

atomicity.AtomicRenameTemporaryPath.finalize = failing_finalize
exit_with(lambda: run(["python -m awn_jax.main", *sys.argv[1:]]))
"""


def test_a_failed_save_in_a_training_process_exits_at_once_and_keeps_earlier_checkpoints(cli, tmp_path):
    script = tmp_path / "failing_save.py"
    script.write_text(FAILING_SAVE)
    process = cli(tmp_path / "wd", "--config.checkpoint_every_steps=3", program=(str(script),), AWN_FAIL_STEP="6")
    output = process.communicate(timeout=120)[0]  # a process that hangs after its error fails here
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert process.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert len(errors) == 1 and "saving the checkpoint of step 6" in errors[0] and "File exists" in errors[0]
    assert errors[0].endswith("Intact checkpoints: [3].")
    step, state = _final_state(tmp_path / "wd")
    assert step == 3 and int(state.step) == 3


def test_a_signal_during_the_sweep_after_training_exits_0_and_the_next_run_sweeps(cli, tmp_path):
    # SIGTERM in the sweep after training, Ctrl-C in the sweep of the rerun, then a rerun that sweeps.
    args = ("--config.num_epochs=1", "--config.sweep.after_training=True")
    for signum in (signal.SIGTERM, signal.SIGINT):
        process = cli(tmp_path, *args, "--config.sweep.throughput_repeats=20")
        _wait_for_line(process, r"^final ")
        process.send_signal(signum)
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0 and "Traceback" not in output, output[-3000:]
        assert (f"{signum.name} after training: training is finished and its checkpoint (step 16) is saved; run"
                " the same command again to sweep.") in output
        assert not os.path.exists(tmp_path / "eval")
    rerun = cli(tmp_path, *args, "--config.sweep.throughput_repeats=0")
    assert rerun.wait(timeout=120) == 0 and os.path.exists(tmp_path / "eval" / "sweep.json")
    rerun.stdout.close()


def test_replace_directory_is_all_or_nothing_and_stale_halves_are_recovered(tmp_path, monkeypatch):
    target = tmp_path / "eval"

    def writer(text):
        return lambda path: open(os.path.join(path, "a.txt"), "w").write(text)

    io.replace_directory(str(target), writer("old"))
    with pytest.raises(ZeroDivisionError):  # the new set fails half-way: the old one stays whole
        io.replace_directory(str(target), lambda path: (writer("half")(path), 1 / 0))
    assert os.listdir(tmp_path) == ["eval"] and (target / "a.txt").read_text() == "old"
    renames = []
    real_rename = os.rename

    def rename(a, b):  # the second rename (new set into place) fails
        renames.append(b)
        if len(renames) == 2:
            raise OSError(errno.EIO, "I/O error")
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        io.replace_directory(str(target), writer("new"))
    monkeypatch.setattr(os, "rename", real_rename)
    assert os.listdir(tmp_path) == ["eval"] and (target / "a.txt").read_text() == "old"
    # A kill between the renames, and a live writer's half that must be left alone.
    host = socket.gethostname()
    dead, live = f"{2 ** 22 + 1}@{host}", f"{os.getpid()}@{host}"  # above pid_max: no process has it
    real_rename(target, tmp_path / f".eval.old-{dead}-a")
    kept = [f".eval.new-{live}-c", f".eval.new-{2 ** 22 + 1}@another-host-d", ".eval.old-backup"]
    for name in [f".eval.new-{dead}-b", *kept]:
        (tmp_path / name).mkdir()
    (tmp_path / ".tmp-xyzsweep.json").write_text("")
    io.remove_stale_temporaries(str(tmp_path), only="eval")
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, ".tmp-xyzsweep.json", "eval"])
    assert (target / "a.txt").read_text() == "old"
    io.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, "eval"])


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tiny_config()
    with pytest.raises(checkpoints.CheckpointError, match="cannot create the workdir .* choose a writable"):
        train.train_and_evaluate(config, str(blocker / "run"), splits=(fake_split(config.dataset, 48),) * 2)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "checkpoints").write_text("a file where the checkpoints go")
    with pytest.raises(checkpoints.CheckpointError, match="is a file, not a checkpoint directory"):
        train.train_and_evaluate(config, str(taken), splits=(fake_split(config.dataset, 48),) * 2)


def test_nan_stops_training_naming_step_and_width_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny_config(learning_rate=1e30, checkpoint_every_steps=1)
    splits = (fake_split(config.dataset, 48, 0), fake_split(config.dataset, 16, 1))
    with pytest.raises(train.TrainingError,
                       match=r"non-finite .* at step \d+ \(widths .*\).*last checkpoint \(step \d+\) is intact"):
        train.train_and_evaluate(config, str(tmp_path), splits=splits)
    step, state = _final_state(tmp_path)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))
    assert int(state.step) == step


def test_atomic_write_replaces_whole_files_with_ordinary_permissions(tmp_path):
    path = tmp_path / "result.json"
    io.atomic_write(str(path), "old")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    with pytest.raises(TypeError):  # the write fails after the temporary file exists
        io.atomic_write(str(path), object())
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["result.json"]  # no temporary left
