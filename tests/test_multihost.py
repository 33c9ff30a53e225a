"""Several processes, one run: real processes on 127.0.0.1 (CPU, one device each, Gloo collectives).

A run of two processes must compute what one process computes, with one device or
two: the same loss at every step, the same parameters and BatchNorm statistics, the
same sweep. Its checkpoints resume with either process count; a dead process stops
the others with an error line within a bounded time; SIGTERM to all saves once.

The tests that start real processes are marked ``slow``; each run trains a few
steps of LeNet-3C1L on generated Fashion-MNIST files.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from awn_jax import checkpoints, data, evaluation, io, multihost, sweep as sweep_lib
from awn_jax.config import lenet_config
from awn_jax.cli import train as train_cli
from helpers import CHECKOUT, write_fake_fmnist


STEPS = 18  # 48 examples / batch 8 x 3 epochs
BOUND_S = 60  # a dead process must be noticed within this


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    raw = root / "raw"
    raw.mkdir()
    write_fake_fmnist(raw, n_train=48, n_test=20)
    data.prepare("fashion_mnist", str(raw), str(root / "tfds"))  # before processes race to prepare it
    return root


def _flags(files, *extra):
    return ["--config=configs/lenet_fmnist.py:smoke", f"--config.data.raw={files / 'raw'}",
            f"--config.data_dir={files / 'tfds'}", "--config.data.train_examples=0", "--config.data.test_examples=0",
            "--config.batch_size=8", "--config.num_epochs=3", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=2", "--config.eval_batch_size=10", "--config.eval_every_epochs=3",
            "--config.sweep.throughput_repeats=0", "--config.widths.mode=sandwich",
            # Sandwich and sweep widths on a grid: few programs to compile.
            "--config.widths.grid_step=0.25", "--config.sweep.grid_step=0.25", *extra]


def _env(devices=1):
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}")


def _start(files, module, args, processes=1, devices=1):
    """``python -m module args`` as ``processes`` processes of one run (or one plain process)."""
    port = multihost.free_port()

    def launch(i):
        return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}",
                "--distributed_timeout=60"] if processes > 1 else []

    return [subprocess.Popen([sys.executable, "-m", module, *args, *launch(i)], cwd=CHECKOUT,
                             env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(processes)]


def _finish(procs, timeout=240):
    """``[(returncode, stdout, stderr)]``; a process still running after ``timeout`` fails the test."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1, deadline - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"a process did not exit within {timeout} s: {[p.args[-1] for p in procs]}")
    return out


def _logged_steps(workdir):
    with contextlib.suppress(FileNotFoundError):
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [r["step"] for r in map(json.loads, filter(str.strip, f)) if r["kind"] == "train"]
    return []


def _wait_for_step(workdir, step, procs, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(_logged_steps(workdir), default=0) >= step:
            return
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"the run ended before step {step}: {_finish(procs)}")
        time.sleep(0.02)
    pytest.fail(f"step {step} not reached within {timeout} s")


def _ours(stdout: str) -> list[str]:
    """What our code printed (Gloo itself announces each connection on stdout)."""
    return [line for line in stdout.splitlines() if not line.startswith("[Gloo]")]


def _sigterm(procs):
    """SIGTERM every process at one moment (stopped meanwhile, so none finishes first)."""
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.send_signal(signal.SIGCONT)


def _history(workdir, step=None):
    """``{step: losses}`` of metrics.jsonl up to ``step``, and the variables of ``step``'s checkpoint."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train" and r["step"] <= (step or STEPS)}
    return losses, evaluation.restore_run(workdir, step).variables


def _assert_same_run(workdir, reference, step=None, exact=False):
    """The same loss at every step and the same variables at ``step`` (default: the end);
    ``exact``: to the bit, else to float32 rounding."""
    losses, variables = _history(workdir, step)
    ref_losses, ref_variables = _history(reference, step)
    assert sorted(losses) == list(range(1, (step or STEPS) + 1)) == sorted(ref_losses)
    if exact:
        assert losses == ref_losses
        for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(ref_variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        return
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [ref_losses[s] for s in sorted(losses)],
                               rtol=1e-5, atol=1e-6)
    # Relative to each tensor's scale (float32 sums in another order differ by rounding, which
    # training amplifies a little), with a floor for the conv biases before BatchNorm: their exact
    # gradient is zero, so they hold only rounding noise (~1e-9) that has no scale of its own.
    errors = {jax.tree_util.keystr(path): float(np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 0.1))
              for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(variables),
                                      map(np.asarray, jax.tree.leaves(ref_variables)))}
    assert max(errors.values()) < 1e-5, "; ".join(f"{k}: {v:.1e}" for k, v in errors.items())


def _train_here(files, workdir, *extra):
    """The one-process, one-device reference, trained in this process through the same command."""
    assert train_cli.run(["prog", *_flags(files, *extra), f"--workdir={workdir}"]) == 0


def _train_several_ways(files, root, variant, one_device=True):
    """A run trained as 2 processes (p2), 1 process with 2 devices (d2) and, with
    ``one_device``, 1 process with 1 device (d1)."""
    extra = (f"--config.variant={variant}", "--config.sweep.after_training=False", "--config.keep_checkpoints=10")
    two_processes = _start(files, "awn_jax.main", [*_flags(files, *extra), f"--workdir={root / 'p2'}"], 2)
    two_devices = _start(files, "awn_jax.main", [*_flags(files, *extra), f"--workdir={root / 'd2'}"], devices=2)
    if one_device:
        _train_here(files, root / "d1", *extra)
    for rc, stdout, stderr in _finish(two_processes + two_devices):
        assert rc == 0, stderr[-3000:]
    return root


@pytest.fixture(scope="session")
def awn_runs(files, tmp_path_factory):
    return _train_several_ways(files, tmp_path_factory.mktemp("awn"), "awn")


@pytest.fixture(scope="session")
def usnet_runs(files, tmp_path_factory):
    # No one-device run: how a device count changes the sums is the data-parallel step's,
    # which AWN's d1 covers; US-Net's own steps are covered by p2 == d2.
    return _train_several_ways(files, tmp_path_factory.mktemp("usnet"), "usnet", one_device=False)


@pytest.fixture(params=["awn_runs", "usnet_runs"])
def runs(request):
    return request.getfixturevalue(request.param)


@pytest.mark.slow
def test_two_processes_compute_what_one_process_with_two_devices_computes(runs):
    _assert_same_run(runs / "p2", runs / "d2", exact=True)


@pytest.mark.slow
def test_two_processes_compute_what_one_device_computes_for_the_first_steps(awn_runs):
    # One device sums the batch in another order than two; training amplifies that rounding
    # (measured on this fake data, AWN: 2e-6 of the scale after 4 steps, 7e-5 after 12).
    _assert_same_run(awn_runs / "p2", awn_runs / "d1", step=4)


@pytest.mark.slow
def test_a_stored_calibration_is_restored_on_every_process(files, usnet_runs):
    run = usnet_runs / "p2"
    here = sweep_lib.sweep(str(run), calibration=4, throughput_repeats=0)  # calibrates and stores
    procs = _start(files, "awn_jax.evaluate", [f"--workdir={run}", "--calibration=4", "--throughput_repeats=0"], 2)
    (rc0, out0, err0), (rc1, out1, err1) = _finish(procs)
    assert rc0 == rc1 == 0, err0[-2000:] + err1[-2000:]
    assert "wrote" in out0 and _ours(out1) == []
    again = json.loads((run / "eval_calibrated_4w" / "sweep.json").read_text())
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in here["rows"]]


@pytest.mark.slow
def test_a_busy_workdir_is_refused_by_every_process(files, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with io.lock_workdir(str(tmp_path)):
        procs = _start(files, "awn_jax.main", [*_flags(files), f"--workdir={tmp_path}"], 2)
        (rc0, _, err0), (rc1, _, err1) = _finish(procs, timeout=BOUND_S)
    assert rc0 == rc1 == 2, err0[-2000:] + err1[-2000:]
    assert "is in use by" in err0 and "another process of this run refused to start" in err1, err0 + err1
    assert "Traceback" not in err0 + err1


def test_a_workdir_of_an_older_version_with_config_distributed_still_loads(tmp_path):
    config = lenet_config("fashion_mnist")
    saved = json.loads(config.to_json_best_effort())
    saved["distributed"] = False  # the field this version retired in favour of the launch flags
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert checkpoints.load_config(str(tmp_path)) == config


@pytest.mark.slow
def test_awn_survives_a_dead_process_sigterm_and_changes_of_process_count(files, tmp_path, awn_runs):
    """AWN+RS through every fault in turn, equal at the end to an uninterrupted two-device run."""
    run, ref = tmp_path / "run", awn_runs / "d2"
    args = [*_flags(files, "--config.keep_checkpoints=10"), f"--workdir={run}"]

    # 1. One of two processes dies: the other reports it in one line within the bound.
    procs = _start(files, "awn_jax.main", args, 2)
    _wait_for_step(run, 3, procs)
    procs[1].kill()
    killed = time.monotonic()
    (rc, _, stderr), _ = _finish(procs, timeout=BOUND_S)
    assert time.monotonic() - killed < BOUND_S
    assert rc == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "error: process 0 of 2: another process of this run stopped" in stderr

    # 2. Both restart and resume; SIGTERM to both saves once, at the step they agree on.
    procs = _start(files, "awn_jax.main", args, 2)
    _wait_for_step(run, max(_logged_steps(run)) + 2, procs)
    _sigterm(procs)
    (rc0, out0, err0), (rc1, out1, err1) = _finish(procs)
    assert rc0 == rc1 == 0, err0[-2000:] + err1[-2000:]
    stopped = int(out0.split("stopped at step ")[1].split(";")[0])
    assert _ours(out1) == [], "only process 0 prints"
    saved = sorted(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit())
    assert saved[-1] == stopped < STEPS

    # 3. Resume with one process of two devices (2 -> 1), interrupted again.
    procs = _start(files, "awn_jax.main", args, devices=2)
    _wait_for_step(run, stopped + 2, procs)
    _sigterm(procs)
    [(rc, out, err)] = _finish(procs)
    assert rc == 0 and "stopped at step" in out, err[-2000:]

    # 4. Resume with two processes (1 -> 2) to the end, then the sweep on both; process 0 writes.
    # (The evaluation command on two processes: test_a_stored_calibration_is_restored_on_every_process.)
    (rc0, out0, err0), (rc1, out1, err1) = _finish(_start(files, "awn_jax.main", args, 2))
    assert rc0 == rc1 == 0, err0[-2000:] + err1[-2000:]
    assert "AUC" in out0 and _ours(out1) == []
    _assert_same_run(run, ref)
    sweep = json.loads((run / "eval" / "sweep.json").read_text())
    ref_sweep = sweep_lib.sweep(str(ref), throughput_repeats=0, write=False)  # on one device
    assert [r["top1"] for r in sweep["rows"]] == [r["top1"] for r in ref_sweep["rows"]]


@pytest.mark.parametrize("launch, needle", [
    (["--num_processes=2", "--process_id=0"], "--coordinator_address missing"),
    (["--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=0"], "is not HOST:PORT"),
    (["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"], "outside [0, 2)"),
    (["--coordinator_address=no-such-host.invalid:1234", "--num_processes=2", "--process_id=1"],
     "cannot be resolved"),
    (["--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
      "--distributed_timeout=2"], "cannot reach the coordinator 127.0.0.1:"),
    (["--coordinator_address=127.0.0.1:{busy}", "--num_processes=2", "--process_id=0"], "choose a free port"),
])
def test_bad_launches_are_one_line_errors_within_the_timeout(files, tmp_path, capsys, launch, needle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        launch = [a.format(port=multihost.free_port(), busy=busy.getsockname()[1]) for a in launch]
        start = time.monotonic()
        status = train_cli.run(["prog", *_flags(files), f"--workdir={tmp_path / 'w'}", *launch])
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "w").exists()
    assert not multihost.joined()


def test_config_distributed_names_its_replacement(files, tmp_path, capsys):
    assert train_cli.run(["prog", *_flags(files), f"--workdir={tmp_path}", "--config.distributed=True"]) == 2
    assert "now the flag --distributed" in capsys.readouterr().err


def test_agreement_on_one_process_is_the_local_value():
    assert multihost.all_agree(True) and not multihost.all_agree(False)
    assert multihost.any_process(True) and not multihost.any_process(False)
