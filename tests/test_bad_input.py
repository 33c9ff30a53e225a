"""Bad input through the command lines: one clear line, exit status 2, nothing written.

The training CLI runs in-process here (absl flags parsed afresh per case) so that
two dozen cases cost seconds; ``tests/test_train.py`` and ``tests/test_evaluate.py``
check the same contract on real subprocesses (no traceback on stderr).
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from awn_jax import sweep, train
from awn_jax.cli import common, data as data_cli, evaluate as evaluate_cli, export as export_cli, train as train_cli
from helpers import (CHECKOUT, fake_split, tiny_config, truncate_checkpoints, write_fake_cifar, write_fake_fmnist,
                     write_idx)

CONFIG = "configs/lenet_fmnist.py:smoke"


@pytest.fixture(autouse=True)
def _no_global_side_effects(monkeypatch):
    monkeypatch.setattr(common.runtime, "tune_host_allocator", lambda: False)
    monkeypatch.setattr(common.runtime, "tune_xla_cpu", lambda: False)
    monkeypatch.setattr(common, "enable_compilation_cache", lambda *a: "")
    monkeypatch.chdir(CHECKOUT)


def _snapshot(path):
    if not os.path.exists(path):
        return None
    return sorted((os.path.relpath(os.path.join(r, f), path), os.path.getsize(os.path.join(r, f)),
                   os.path.getmtime(os.path.join(r, f))) for r, _, fs in os.walk(path) for f in fs)


def _train_cli(capsys, workdir, *args, config=CONFIG):
    """Runs the training command in-process; returns (exit status, stderr)."""
    code = train_cli.run(["awn_jax.main", f"--config={config}", f"--workdir={workdir}", *args])
    return code, capsys.readouterr().err


def _assert_one_line_error(code, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("args,needles", [
    (["--config.widths.w_min=0"], ["config.widths.w_min", "(0, 1]"]),
    (["--config.widths.w_max=-0.5"], ["config.widths.w_max", "-0.5"]),
    (["--config.widths.w_max=1.5"], ["config.widths.w_max", "1.5"]),
    (["--config.widths.w_min=nan"], ["config.widths.w_min", "nan"]),
    (["--config.widths.fixed=(1.0,'half')"], ["widths.fixed[1]"]),
    (["--config.widths.fixed=(1.0,2.0)"], ["widths.fixed[1]"]),
    (["--config.widths.mode=sandwich", "--config.widths.w_min=0.8", "--config.widths.w_max=0.5"],
     ["exceeds widths.w_max"]),
    (["--config.widths.mode=sandwich", "--config.widths.num=1"], ["sandwich rule needs an integer >= 2"]),
    (["--config.variant=slimable"], ["unknown variant 'slimable'", "awn, standard, snet, usnet"]),
    (["--config.dataset=cifar"], ["unknown dataset 'cifar'", "choose one of"]),
    (["--config.model=lenet"], ["unknown model 'lenet'"]),
    (["--config.optim.schedule=cosin"], ["unknown schedule 'cosin'"]),
    (["--config.batch_size=0"], ["config.batch_size"]),
    (["--config.learning_rate=-1"], ["config.learning_rate"]),
], ids=lambda v: v[0] if isinstance(v, list) and isinstance(v[0], str) and v[0].startswith("--") else "")
def test_bad_config_values(capsys, tmp_path, args, needles):
    code, err = _train_cli(capsys, tmp_path / "wd", *args)
    _assert_one_line_error(code, err, *needles)
    assert not os.path.exists(tmp_path / "wd")


@pytest.mark.parametrize("bad,needle", [
    ("--config.lerning_rate=0.1", 'Did you mean "learning_rate"'),
    ("--config.widths.w_min='half'", "could not convert string to float"),
    ("--config.num_epochs=[1]", "invalid literal for int()"),
    ("--workdirr=/tmp/x", "Unknown command line flag 'workdirr'"),
])
def test_unknown_config_fields_and_malformed_values(capsys, tmp_path, bad, needle):
    code, err = _train_cli(capsys, tmp_path / "wd", bad)
    _assert_one_line_error(code, err, needle)
    assert not os.path.exists(tmp_path / "wd")


def _fmnist(tmp_path, damage=None):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_fake_fmnist(raw, n_train=64, n_test=16)
    if damage:
        damage(raw)
    return raw


def _truncate(raw):
    path = raw / "train-images-idx3-ubyte.gz"
    payload = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(payload[: len(payload) // 2])


def _bad_magic(raw):
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(64, np.uint8), 2051)


def _labels_out_of_range(raw):
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.full(16, 12, np.uint8), 2049)


def _missing_file(raw):
    os.remove(raw / "t10k-images-idx3-ubyte.gz")


@pytest.mark.parametrize("damage,needles", [
    (_truncate, ["truncated"]),
    (_bad_magic, ["magic 2051, expected 2049"]),
    (_labels_out_of_range, ["labels span [12, 12]"]),
    (_missing_file, ["t10k-images-idx3-ubyte.gz"]),
], ids=["truncated", "wrong-magic", "labels-out-of-range", "missing-file"])
def test_bad_data_files(capsys, tmp_path, damage, needles):
    raw = _fmnist(tmp_path, damage)
    code, err = _train_cli(capsys, tmp_path / "wd", f"--config.data.raw={raw}", f"--config.data_dir={tmp_path / 'tfds'}")
    _assert_one_line_error(code, err, *needles)
    assert not os.path.exists(tmp_path / "wd")
    assert not os.path.exists(tmp_path / "tfds" / "fashion_mnist_local")  # no half-prepared dataset left


def test_missing_data_directory_names_the_files_and_the_fix(capsys, tmp_path):
    code, err = _train_cli(capsys, tmp_path / "wd", f"--config.data.raw={tmp_path / 'nowhere'}",
                           f"--config.data_dir={tmp_path / 'tfds'}")
    _assert_one_line_error(code, err, "nowhere")
    assert not os.path.exists(tmp_path / "wd")


def test_a_truncated_cifar_archive(capsys, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_fake_cifar(str(archive), "cifar10")
    archive.write_bytes(archive.read_bytes()[:200])
    code, err = _train_cli(capsys, tmp_path / "wd", f"--config.data.raw={archive}",
                           f"--config.data_dir={tmp_path / 'tfds'}", config="configs/lenet_cifar10.py:smoke")
    _assert_one_line_error(code, err, "truncated")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A workdir with checkpoints and a sweep, trained through the library on generated data."""
    workdir = tmp_path_factory.mktemp("trained") / "wd"
    config = tiny_config(num_epochs=1, **{"sweep.throughput_repeats": 0})
    splits = (fake_split(config.dataset, 48, 0), fake_split(config.dataset, 16, 1))
    train.train_and_evaluate(config, str(workdir), splits=splits)
    sweep.sweep(str(workdir), splits=splits)
    return workdir


def _copy(trained, tmp_path, name="wd"):
    target = tmp_path / name
    shutil.copytree(trained, target)
    return target


def _resume_args(raw, tmp_path):
    return [f"--config.data.raw={raw}", f"--config.data_dir={tmp_path / 'tfds'}", "--config.batch_size=16",
            "--config.num_epochs=1",
            "--config.eval_batch_size=32", "--config.log_every_steps=2", "--config.checkpoint_every_steps=3",
            "--config.sweep.throughput_repeats=0"]


@pytest.mark.parametrize("case,needles", [
    ("other-config", ["holds a run with another config", "variant: saved 'awn', now 'standard'"]),
    ("edited-config", ["is not valid JSON"]),
    ("truncated-checkpoint", ["cannot be restored"]),
])
def test_bad_workdirs_when_resuming(capsys, tmp_path, trained, case, needles):
    workdir = _copy(trained, tmp_path)
    raw = _fmnist(tmp_path)
    args = _resume_args(raw, tmp_path)
    if case == "other-config":
        args.append("--config.variant=standard")
    elif case == "edited-config":
        (workdir / "config.json").write_text('{"model": "lenet3c1l", ')
    else:
        truncate_checkpoints(workdir)
    before = _snapshot(workdir)
    code, err = _train_cli(capsys, workdir, *args)
    _assert_one_line_error(code, err, *needles)
    assert _snapshot(workdir) == before  # nothing written or overwritten


def test_evaluate_and_export_command_lines(capsys, tmp_path, trained):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert evaluate_cli.run(["evaluate", f"--workdir={empty}"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "holds no config.json")
    assert os.listdir(empty) == []
    workdir = _copy(trained, tmp_path)
    with open(workdir / "eval" / "sweep.json") as f:
        cheapest = min(r["macs"] for r in json.load(f)["rows"])
    before = _snapshot(workdir)
    assert evaluate_cli.run(["evaluate", f"--workdir={workdir}", "--budget_macs=1000"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, f"costs {cheapest:g} MACs")
    assert export_cli.run(["export", f"--workdir={workdir}", "--width=1.5", f"--out={tmp_path / 'out'}"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "1.5")
    assert not os.path.exists(tmp_path / "out")
    assert _snapshot(workdir) == before


def test_a_budget_reuses_the_saved_sweep_unless_a_flag_asks_for_another(capsys, tmp_path, trained, monkeypatch):
    workdir = _copy(trained, tmp_path)
    saved = json.loads((workdir / "eval" / "sweep.json").read_text())
    assert all(r["batch_ms"] is None for r in saved["rows"])  # swept without timing
    calls = []

    def timed_sweep(path, **kwargs):  # the sweep the flags ask for, with latencies
        calls.append(kwargs)
        return {**saved, "rows": [dict(r, batch_ms=1.0) for r in saved["rows"]]}

    monkeypatch.setattr(sweep, "sweep", timed_sweep)
    args = ["evaluate", f"--workdir={workdir}", "--budget_ms=5"]
    assert evaluate_cli.run(args) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "measured no latency", "--throughput_repeats=3")
    assert calls == []
    assert evaluate_cli.run([*args, "--throughput_repeats=3"]) == 0  # the advice works
    assert calls[-1]["throughput_repeats"] == 3 and "width" in capsys.readouterr().out
    for flag, key, value in (("--test_examples=8", "test_examples", 8), ("--one_pass=false", "one_pass", False),
                             ("--step=3", "step", 3)):
        assert evaluate_cli.run([*args, flag]) == 0
        assert calls[-1][key] == value, flag
    assert len(calls) == 4
    assert evaluate_cli.run([*args, "--test_examples=-5"]) != 0
    assert "--test_examples" in capsys.readouterr().err and len(calls) == 4
    monkeypatch.undo()
    with pytest.raises(ValueError, match="test_examples -5 is not an integer >= 0"):
        sweep.sweep(str(workdir), test_examples=-5, write=False)

@pytest.mark.parametrize("content,needles", [
    (None, ["does not exist", "configs/lenet_fmnist.py"]),
    ("def get_config(:\n", ["syntax error at line 1"]),
    ("x = 1\n", ["defines no get_config()"]),
    ("def get_config(arg=None):\n    raise RuntimeError('no such protocol')\n", ["get_config failed", "no such protocol"]),
], ids=["missing", "syntax-error", "no-get_config", "get_config-raises"])
def test_bad_config_files(capsys, tmp_path, content, needles):
    path = tmp_path / "config.py"
    if content is not None:
        path.write_text(content)
    code, err = _train_cli(capsys, tmp_path / "wd", config=str(path))
    _assert_one_line_error(code, err, str(path), *needles)
    assert not os.path.exists(tmp_path / "wd")


def test_a_second_config_file_is_the_one_checked_and_helpfull_lists_the_flags_and_config_fields(capsys, tmp_path):
    code, err = _train_cli(capsys, tmp_path / "wd", f"--config={tmp_path / 'missing.py'}")  # absl takes the last
    _assert_one_line_error(code, err, str(tmp_path / "missing.py"), "does not exist")
    assert not os.path.exists(tmp_path / "wd")
    for command, args in ((train_cli, []), (train_cli, [f"--config={CONFIG}"]), (export_cli, []),
                          (evaluate_cli, [])):
        assert command.run(["prog", *args, "--helpfull"]) == 0  # required flags missing: still the help
        out = capsys.readouterr().out
        assert "--workdir" in out and "tune_xla_cpu" in out
        assert ("--config.learning_rate=" in out) == bool(args), out[-500:]


def test_compare_refuses_broken_sweeps_and_unwritable_plots(capsys, tmp_path, trained):
    workdir = _copy(trained, tmp_path)
    other = _copy(trained, tmp_path, "other")
    broken = json.loads((other / "eval" / "sweep.json").read_text())
    del broken["summary"]
    (other / "eval" / "sweep.json").write_text(json.dumps(broken))
    compare = ["evaluate", f"--compare={workdir},{other}"]
    assert evaluate_cli.run([*compare, f"--out={tmp_path / 'fig.png'}"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "lacks summary", "sweep.json")
    (other / "eval" / "sweep.json").write_text("{not json")
    assert evaluate_cli.run(compare) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "is not a valid sweep.json", str(other))
    good = ["evaluate", f"--compare={workdir},{workdir}"]
    assert evaluate_cli.run([*good, f"--out={tmp_path}"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "is a directory")
    assert evaluate_cli.run([*good, f"--out={tmp_path / 'missing' / 'fig.png'}"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "does not exist")
    assert evaluate_cli.run([*good, f"--out={workdir / 'config.json' / 'fig.png'}"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "is a file")


def test_export_refuses_outputs_it_cannot_create_before_any_work(capsys, tmp_path, trained):
    workdir = _copy(trained, tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("taken")
    for out, needle in ((a_file, "is a file; name a new directory"), (a_file / "sub", "which is a file"),
                        (workdir, "exists and is not empty")):
        assert export_cli.run(["export", f"--workdir={workdir}", "--width=0.5", f"--out={out}"]) == 2
        _assert_one_line_error(2, capsys.readouterr().err, needle)
    assert a_file.read_text() == "taken"


def test_a_second_training_on_a_live_workdir_is_refused_naming_the_holder(capsys, tmp_path, trained):
    workdir = _copy(trained, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from awn_jax import io; io.lock_workdir(sys.argv[1]);"
         " print('locked', flush=True); time.sleep(60)", str(workdir)],
        stdout=subprocess.PIPE, text=True, cwd=CHECKOUT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(workdir)
        args = _resume_args(_fmnist(tmp_path), tmp_path)
        code, err = _train_cli(capsys, workdir, *args)
        _assert_one_line_error(code, err, f"is in use by process {holder.pid} on host", "use another --workdir")
        assert _snapshot(workdir) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale, and the run resumes.
    code, err = _train_cli(capsys, workdir, *args)
    assert code == 0, err


def test_data_command_reports_bad_input_with_exit_status_2(capsys, tmp_path):
    assert data_cli.run(["data"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "name one dataset", "fashion_mnist")
    assert data_cli.run(["data", "fashion_mnist", f"--raw={tmp_path / 'nowhere'}",
                         f"--data_dir={tmp_path / 'tfds'}"]) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "nowhere")
    assert not os.path.exists(tmp_path / "tfds" / "fashion_mnist_local")
