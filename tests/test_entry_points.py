"""The real entry points in subprocesses, each bounded in time (a hang fails, it does not stall).

Inputs and faults that the in-process tests (``test_bad_input``) cannot show: what a
process does after the error (it must exit), tracebacks that escape the error wrapper,
files a refused command must leave untouched, and a rerun or a resume of a finished run.
"""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from awn_jax import sweep, train
from helpers import CHECKOUT, apply, fake_split, tiny_config, write_fake_fmnist

BOUND_S = 120


def _run(module, *args, env=None):
    """``python -m module args``; a run past BOUND_S raises (subprocess.TimeoutExpired)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=CHECKOUT, capture_output=True,
                          text=True, timeout=BOUND_S, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))


def _one_line_error(result, *needles):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _snapshot(path):
    return sorted((os.path.relpath(os.path.join(r, f), path), os.path.getsize(os.path.join(r, f)),
                   os.path.getmtime(os.path.join(r, f))) for r, _, fs in os.walk(path) for f in fs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished, swept run on generated Fashion-MNIST files, and the flags that resume it."""
    root = tmp_path_factory.mktemp("finished")
    raw = root / "raw"
    raw.mkdir()
    write_fake_fmnist(raw, n_train=48, n_test=16)
    config = tiny_config(num_epochs=1, **{"sweep.throughput_repeats": 0, "data.raw": str(raw),
                                          "data_dir": str(root / "tfds")})
    splits = (fake_split(config.dataset, 48, 0), fake_split(config.dataset, 16, 1))
    train.train_and_evaluate(config, str(root / "wd"), splits=splits)
    sweep.sweep(str(root / "wd"), splits=splits)
    resume = ["--config=configs/lenet_fmnist.py:smoke", f"--config.data.raw={raw}",
              f"--config.data_dir={root / 'tfds'}", "--config.batch_size=16", "--config.num_epochs=1",
              "--config.eval_batch_size=32", "--config.log_every_steps=2", "--config.checkpoint_every_steps=3",
              "--config.sweep.throughput_repeats=0"]
    return root / "wd", resume


def _copy(finished, tmp_path, name="wd"):
    shutil.copytree(finished[0], tmp_path / name)
    return tmp_path / name


def test_refusals_are_one_line_and_leave_every_file_as_it_was(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    (tmp_path / "bad.json").write_text("{not json")
    no_sweep = _copy(finished, tmp_path, "no_sweep")
    shutil.rmtree(no_sweep / "eval")
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(workdir / "config.json", untrained)
    watched = [workdir, no_sweep, untrained]
    before = [_snapshot(p) for p in watched]
    cases = [
        (("awn_jax.export", f"--workdir={workdir}", "--width=0.5", "--out=/proc/exported"),
         ["cannot create a directory in /proc"]),
        (("awn_jax.export", f"--workdir={workdir}", "--width=0.5", f"--out={a_file}/sub"), ["which is a file"]),
        (("awn_jax.export", f"--workdir={workdir}", "--width=0.5", f"--out={tmp_path / 'out'}", "--channel_multiple=0"),
         ["--channel_multiple=0", "not a positive integer"]),
        (("awn_jax.data", "fashion_mnist", f"--data_dir={a_file}"), ["data directory", "is a file"]),
        (("awn_jax.main", *finished[1], f"--config.data_dir={a_file}", f"--workdir={tmp_path / 'new'}"),
         ["data directory", "is a file"]),
        (("awn_jax.main", *finished[1], "--config.data.train_examples=-5", f"--workdir={tmp_path / 'new'}"),
         ["config.data.train_examples", "-5"]),
        (("awn_jax.main", *finished[1], "--config.sweep.grid_step=1e-6", f"--workdir={tmp_path / 'new'}"),
         ["config.sweep.grid_step"]),
        (("awn_jax.evaluate", f"--workdir={a_file}"), ["is a file, not a training workdir"]),
        (("awn_jax.export", f"--workdir={a_file}", "--width=0.5", f"--out={tmp_path / 'out'}"),
         ["is a file, not a training workdir"]),
        (("awn_jax.evaluate", "--compare=,"), ["--compare lists no sweeps"]),
        (("awn_jax.evaluate", f"--compare={tmp_path / 'bad.json'},{workdir}"), [str(tmp_path / "bad.json")]),
        # Validated before the sweep that a workdir without one would run.
        (("awn_jax.evaluate", f"--workdir={no_sweep}", "--budget_macs=-5"), ["--budget_macs=-5", "positive"]),
        # Readers do not create a checkpoints/ directory.
        (("awn_jax.evaluate", f"--workdir={untrained}"), ["no checkpoint in", "train first"]),
        (("awn_jax.export", f"--workdir={untrained}", "--width=0.5", f"--out={tmp_path / 'out'}"),
         ["no checkpoint in"]),
    ]
    for args, needles in cases:
        _one_line_error(_run(*args), *needles)
    assert [_snapshot(p) for p in watched] == before
    assert sorted(os.listdir(tmp_path)) == ["a_file", "bad.json", "no_sweep", "untrained", "wd"]
    assert a_file.read_text() == "not a directory"


def test_a_damaged_metrics_log_a_changed_sweep_setting_and_a_rerun_of_a_finished_run(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    finals = sum(json.loads(line)["kind"] == "final" for line in open(workdir / "metrics.jsonl"))
    with open(workdir / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": null}\n\xff\xfe not UTF-8\n')
    (workdir / ".tmp-abcconfig.json").write_text("left by a killed write")
    result = _run("awn_jax.main", *finished[1], "--config.sweep.grid_step=0.25", f"--workdir={workdir}")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{workdir / 'metrics.jsonl'}: dropped 2 line(s) that hold no metrics record" in result.stderr
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert sum(r["kind"] == "final" for r in records) == finals == 1  # the rerun adds no second final record
    # The resumed run's sweep setting is the one used (0.25 grid: 4 widths + the reference's 10).
    rows = json.loads((workdir / "eval" / "sweep.json").read_text())["rows"]
    assert {0.25, 0.5, 0.75, 1.0} <= {r["width"] for r in rows} and len(rows) < 20
    assert not (workdir / ".tmp-abcconfig.json").exists()


def test_a_sweep_replaces_its_outputs_as_one_set_and_clears_what_a_killed_one_left(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    # A sweep killed between its two renames: the old set moved aside, the new one not yet in place.
    dead = f"{2 ** 22 + 12345}@{socket.gethostname()}"  # above pid_max: no process has it
    os.rename(workdir / "eval", workdir / f".eval.old-{dead}-x1")
    (workdir / f".eval.new-{dead}-x2").mkdir()
    (workdir / f".eval.new-{dead}-x2" / "sweep.csv").write_text("half of a newer sweep")
    result = _run("awn_jax.evaluate", f"--workdir={workdir}", "--throughput_repeats=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(workdir / "eval")) == ["sweep.csv", "sweep.json", "sweep.png"]
    assert not [e for e in os.listdir(workdir) if e.startswith(".eval")]


def test_a_reader_racing_a_trainer_that_deletes_checkpoints_takes_the_new_latest(finished, tmp_path, monkeypatch):
    # In-process: the deletion is injected at the moment of reading, which a subprocess cannot time.
    from awn_jax import checkpoints, evaluation

    workdir = _copy(finished, tmp_path)
    directory = workdir / "checkpoints"
    (latest,) = checkpoints.saved_steps(str(workdir))
    shutil.copytree(directory / str(latest), directory / str(latest - 1))
    restore = checkpoints.Checkpointer.restore

    def deleted_while_read(self, target, step=None):
        if step == latest and (directory / str(latest)).exists():
            shutil.rmtree(directory / str(latest))  # the trainer's keep_checkpoints, mid-read
            raise checkpoints.CheckpointError("cannot be restored (Event loop is closed)")
        return restore(self, target, step)

    monkeypatch.setattr(checkpoints.Checkpointer, "restore", deleted_while_read)
    assert evaluation.restore_run(str(workdir)).step == latest - 1
    shutil.copytree(directory / str(latest - 1), directory / str(latest))
    with pytest.raises(checkpoints.CheckpointError,
                       match=rf"step {latest} .* was deleted while it was read .* choose one of \[{latest - 1}\]"):
        evaluation.restore_run(str(workdir), step=latest)


SERVE = """
import sys
import jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
images = np.load(sys.argv[2])
assert "awn_jax" not in sys.modules and "flax" not in sys.modules
np.save(sys.argv[3], np.concatenate([np.asarray(exported.call(images[:3])), np.asarray(exported.call(images[3:]))]))
"""


def test_a_stablehlo_export_runs_without_this_library_and_equals_the_any_width_model(finished, tmp_path):
    import jax.numpy as jnp
    import numpy as np

    from awn_jax import checkpoints, data, evaluation, export

    workdir, _ = finished
    out = tmp_path / "exported"
    result = _run("awn_jax.export", f"--workdir={workdir}", "--width=0.4", "--format=stablehlo", f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["input"] == {"shape": [None, 28, 28, 1], "dtype": "uint8", "layout": "NHWC",
                             "pixels": "0..255, as stored in the dataset"}
    assert meta["width"] == 0.4 and meta["channels"] == [18] and meta["class_names"][9] == "Ankle boot"
    assert meta["platforms"] == ["cpu", "cuda", "tpu"]
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    serve = subprocess.run([sys.executable, "-c", SERVE, str(out / "model.stablehlo"), str(tmp_path / "images.npy"),
                            str(tmp_path / "logits.npy")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=BOUND_S, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert serve.returncode == 0, serve.stderr[-2000:]
    run = evaluation.restore_run(str(workdir))
    expected = apply(run.model, run.variables, data.preprocess(jnp.asarray(images), run.info), width=0.4)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=1e-5, atol=1e-5)
    full = json.loads((workdir / "eval" / "sweep.json").read_text())["rows"][-1]
    assert full["width"] == 1.0 and meta["macs_per_image"] < full["macs"] / 2  # the narrow width costs less
    with pytest.raises(checkpoints.CheckpointError, match="StableHLO export"):
        export.load(str(out))


def test_the_predictor_picks_the_widest_width_within_a_budget_and_equals_the_model(finished, tmp_path):
    import jax.numpy as jnp
    import numpy as np

    from awn_jax import data, evaluation, export
    from awn_jax.predict import Predictor

    workdir, _ = finished
    run = evaluation.restore_run(str(workdir))
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28, 1)).astype(np.uint8)

    def direct(width):
        return apply(run.model, run.variables, data.preprocess(jnp.asarray(images), run.info), width=width)

    predictor = Predictor.from_workdir(str(workdir), widths=(1.0, 0.25), batch_sizes=(1, 4), repeats=1)
    assert list(predictor.programs) == [0.25, 1.0] and predictor.macs[0.25] < predictor.macs[1.0]
    narrow = predictor.predict(images, budget_macs=predictor.macs[1.0] - 1)
    assert narrow.width == 0.25 and narrow.macs == predictor.macs[0.25]
    np.testing.assert_allclose(narrow.logits, direct(0.25), rtol=1e-5, atol=1e-5)  # 6 images: chunks 4 + 2 (padded)
    wide = predictor.predict(images, budget_ms=1e9)
    assert wide.width == 1.0 and wide.ms == 2 * predictor.latency_ms[1.0][4]
    np.testing.assert_allclose(wide.logits, direct(1.0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no width fits a budget of 1e-09 ms: the cheapest, width"):
        predictor.predict(images, budget_ms=1e-9)
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, 28, 28, 1\)"):
        predictor.predict(images.astype(np.float32), budget_ms=1e9)
    with pytest.raises(ValueError, match="exactly one budget"):
        predictor.predict(images)
    # The same from a portable export, without the model code.
    export.save_stablehlo(run.model, run.variables, run.info, 0.25, str(tmp_path / "w025"))
    served = Predictor.from_exports([str(tmp_path / "w025")], batch_sizes=(4,), repeats=1)
    assert served.class_names[0] == "T-shirt/top"
    np.testing.assert_allclose(served.predict(images, budget_macs=1e12).logits, direct(0.25), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least one export"):
        Predictor.from_exports([])
    with pytest.raises(ValueError, match=f"{tmp_path} holds no StableHLO export"):
        Predictor.from_exports([str(tmp_path)])
    with pytest.raises(ValueError, match="two exports of width 0.25"):
        Predictor.from_exports([str(tmp_path / "w025")] * 2, repeats=1)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "w025", other)
    meta = json.loads((other / "model.json").read_text())
    meta.update(width=0.5, dataset="mnist")
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="exports are of different models, data or inputs"):
        Predictor.from_exports([str(tmp_path / "w025"), str(other)], repeats=1)
    with pytest.raises(ValueError, match="N >= 1"):
        served.predict(images[:0], budget_ms=1e9)
    with pytest.raises(ValueError, match="batch_sizes must be positive integers"):
        Predictor({1.0: served.programs[0.25]}, {1.0: 1}, (28, 28, 1), batch_sizes=(True,))


def test_the_predict_command_writes_one_csv_row_per_image(finished, tmp_path):
    import numpy as np
    from PIL import Image

    workdir, _ = finished
    (tmp_path / "photos").mkdir()
    for i in range(3):  # RGB and another size: converted and resized
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / "photos" / f"im{i}.png")
    out = tmp_path / "preds.csv"
    args = ["awn_jax.predict", f"--workdir={workdir}", f"--inputs={tmp_path / 'photos'}", f"--out={out}",
            "--repeats=1", "--widths=0.25,1.0"]
    result = _run(*args, "--budget_macs=1e12")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == ["im0.png", "im1.png", "im2.png"]
    assert {r["width"] for r in rows} == {"1"} and all(r["class_name"] for r in rows)
    _one_line_error(_run(*args), "exactly one budget")
    _one_line_error(_run(*args, "--budget_ms=-1"), "--budget_ms=-1 is not a positive number")
    _one_line_error(_run(*args[:3], "--exported=x", f"--out={out}", "--budget_ms=5"), "give --workdir or --exported")
    assert not (tmp_path / "x").exists()
    # Served from a portable export, over an .npy array of one-channel images.
    from awn_jax import evaluation, export

    run = evaluation.restore_run(str(workdir))
    export.save_stablehlo(run.model, run.variables, run.info, 0.5, str(tmp_path / "w050"))
    np.save(tmp_path / "x.npy", np.random.default_rng(2).integers(0, 256, (5, 28, 28)).astype(np.uint8))
    result = _run("awn_jax.predict", f"--exported={tmp_path / 'w050'}", f"--inputs={tmp_path / 'x.npy'}",
                  f"--out={out}", "--repeats=1", "--budget_macs=1e12", "--batch_size=4")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == [f"x.npy[{i}]" for i in range(5)] and {r["width"] for r in rows} == {"0.5"}


def test_the_benchmark_says_when_it_skips_the_pytorch_comparison(monkeypatch, capsys):
    from awn_jax.cli import bench

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    bench.torch_comparison("lenet3c1l", steps_timed=1, matmul=1e11, step_flops=1e10)
    assert capsys.readouterr().out.strip() == ("PyTorch comparison skipped: torch is not installed"
                                               " (pip install -e '.[bench]').")


def test_the_benchmark_says_what_a_speedup_over_pytorch_would_take_of_the_matmul_rate():
    from awn_jax import costs
    from awn_jax.cli import bench

    full = costs.WidthCost(width=1.0, params=0, macs=500, computed_macs=1000)
    rows = bench.speedup_needs(3.0, torch_train=100.0, train_flops_per_image=4000.0, torch_inference=200.0,
                               full=full, matmul=2.4e6)
    # 3 x 100 images/s x 4,000 FLOPs; 3 x 200 images/s x 2 x 1,000 MACs; half of each without the zeros.
    assert rows == [("train step", 1.2e6, 0.5, 0.6e6, 0.25), ("inference at w = 1", 1.2e6, 0.5, 0.6e6, 0.25)]


def test_the_benchmark_times_the_sweep_beside_one_full_width_pass_over_the_same_images(capsys):
    import jax
    import jax.numpy as jnp

    from awn_jax import data
    from awn_jax.cli import bench
    from awn_jax.models import LeNet3C1L

    model, info = LeNet3C1L(base_channels=4), data.get_info("fashion_mnist")
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape))))()
    bench.sweep_table(model, variables, info, (1.0, 0.5, 0.25), batch=32, repeats=1, examples=64)
    rows = [line.split(" | ") for line in capsys.readouterr().out.strip().splitlines()[2:]]
    assert [r[0] for r in rows] == ["| sweep of 3 widths", "| their costs (costs.width_costs, once)",
                                    "| one pass at width 1"]
    assert rows[2][2] == "1.00x |" and float(rows[0][1]) > 0 and float(rows[1][1]) >= 0


def test_the_benchmark_times_the_block_triangular_lowering_beside_masked_convs(capsys):
    from awn_jax.cli import bench

    bench.blocks_table("lenet3c1l", repeats=1, rounds=1, block_counts=(1, 2))
    rows = [line.split(" | ") for line in capsys.readouterr().out.strip().splitlines()[2:]]
    assert [r[:2] for r in rows] == [["| one masked conv, round 1", "1.000"], ["| 2 blocks, round 1", "0.755"]]
    assert all(float(rate.strip(" |").replace(",", "")) > 0 for r in rows for rate in r[2:])


def test_every_command_tunes_xla_cpu_before_it_runs_unless_told_not_to(monkeypatch):
    from awn_jax.cli import common

    calls = []
    monkeypatch.setattr(common.runtime, "tune_xla_cpu", lambda: calls.append("tune_xla_cpu") or True)
    monkeypatch.setattr(common.runtime, "tune_host_allocator", lambda: False)
    monkeypatch.setattr(common, "enable_compilation_cache", lambda *a: "")

    def main(fv, args):
        calls.append("main")

    assert common.run(main, common.new_flags(), ["prog"], "prog", "doc") == 0
    assert calls == ["tune_xla_cpu", "main"]
    calls.clear()
    assert common.run(main, common.new_flags(), ["prog", "--notune_xla_cpu"], "prog", "doc") == 0
    assert calls == ["main"]
