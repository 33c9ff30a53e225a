"""Faults: SIGKILL at random moments (during saves too), SIGTERM/Ctrl-C, disk full, NaN.

The kill loop runs ``AWN_KILL_LOOP_ITERATIONS`` kills (3 here, to stay inside the
test-time budget); for the long version, by hand:

    AWN_KILL_LOOP_ITERATIONS=50 python -m pytest -q tests/test_faults.py -k kill
"""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from awn_jax import checkpoints, data, io, optim, sharding, steps, train
from awn_jax.models import from_config
from awn_jax.config import validate
from helpers import fake_split, tiny_config, write_fake_fmnist

REPO = os.path.join(os.path.dirname(__file__), "..")
ITERATIONS = int(os.environ.get("AWN_KILL_LOOP_ITERATIONS", "3"))


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Starts ``python -m awn_jax.main`` on generated Fashion-MNIST files (unbuffered output)."""
    root = tmp_path_factory.mktemp("faults")
    raw = root / "raw"
    raw.mkdir()
    write_fake_fmnist(raw, n_train=256, n_test=32)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", AWN_JAX_CACHE_DIR=str(root / "cache"))
    common = ["--config=configs/lenet_fmnist.py:smoke", f"--config.data.raw={raw}",
              f"--config.data_dir={root / 'tfds'}", "--config.batch_size=16", "--config.num_epochs=2",
              "--config.data.train_examples=0", "--config.data.test_examples=0", "--config.eval_widths=(1.0,)",
              "--config.sweep.after_training=False", "--config.log_every_steps=1"]

    def start(workdir, *extra):
        return subprocess.Popen([sys.executable, "-m", "awn_jax.main", *common, f"--workdir={workdir}", *extra],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    return start


def _complete_steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _final_state(workdir):
    config = checkpoints.load_config(str(workdir))
    validate(config)
    info = data.get_info(config.dataset)
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
    reference = cli(tmp_path / "reference", "--config.checkpoint_every_steps=1")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()[-3000:]
    killed = tmp_path / "killed"
    rng = random.Random(0)
    during_save = 0
    for i in range(ITERATIONS):
        before = _complete_steps(killed)
        process = cli(killed, "--config.checkpoint_every_steps=1")
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
    final = cli(killed, "--config.checkpoint_every_steps=1")
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


def test_disk_full_during_a_save_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    config = tiny_config(checkpoint_every_steps=2)
    splits = (fake_split(config.dataset, 48, 0), fake_split(config.dataset, 16, 1))
    original = ocp.CheckpointManager.save
    calls = []

    def save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(checkpoints.CheckpointError, match=r"step 4 .*No space left on device.*Intact checkpoints: \[2\]"):
        train.train_and_evaluate(config, str(tmp_path), splits=splits)
    monkeypatch.setattr(ocp.CheckpointManager, "save", original)
    step, state = _final_state(tmp_path)
    assert step == 2 and int(state.step) == 2


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
