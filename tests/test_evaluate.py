"""Evaluation: AUC arithmetic, the accuracy loop (training = sweep), sweeps (one pass = per width),
calibration, outputs, bad input."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import calibration, checkpoints, costs, data, evaluation, export, report, sweep, train
from awn_jax.cli import export as export_cli
from awn_jax.models import LeNet3C1L
from awn_jax.predict import Predictor
from awn_jax.widths import REFERENCE_WIDTHS, calibration_widths, num_channels
from helpers import CHECKOUT, apply, fake_split, tiny_config, truncate_checkpoints



def test_auc_trapezoid_normalises_by_the_width_range():
    assert report.auc_trapezoid([0.25, 0.5, 1.0], [0.8, 0.8, 0.8]) == pytest.approx(0.8)
    # Linear accuracy: the area is the mean of the end points, whatever the spacing.
    assert report.auc_trapezoid([0.25, 0.3, 1.0], [0.5, 0.52, 0.8]) == pytest.approx(0.65)
    # Hand-computed: (0.25 * (0.6 + 0.7) / 2 + 0.5 * (0.7 + 0.9) / 2) / 0.75 = 0.5625 / 0.75
    assert report.auc_trapezoid([1.0, 0.25, 0.5], [0.9, 0.6, 0.7]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least two"):
        report.auc_trapezoid([0.5], [0.9])
    with pytest.raises(ValueError, match="two distinct"):
        report.auc_trapezoid([0.5, 0.5], [0.9, 0.8])


def test_auc_reference_mean_uses_exactly_the_ten_reference_widths():
    widths = list(REFERENCE_WIDTHS) + [0.3, 0.6]
    accs = [0.1 * i for i in range(10)] + [100.0, 100.0]
    assert report.auc_reference_mean(widths, accs) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="missing"):
        report.auc_reference_mean([0.25, 1.0], [0.5, 0.6])


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """Tiny trained AWN, S-Net and US-Net workdirs on generated data."""
    root = tmp_path_factory.mktemp("runs")
    splits = (fake_split("fashion_mnist", 64, 0), fake_split("fashion_mnist", 40, 1))
    runs = {}
    # US-Net's sandwich widths and sweeps on a grid: a few programs to compile instead of one per width
    # drawn or swept (its sweeps run per width; AWN's sweep covers every channel configuration).
    usnet = {"widths.mode": "sandwich", "widths.grid_step": 0.25, "sweep.grid_step": 0.25}
    for variant, overrides in (("awn", {}), ("snet", {"sweep.grid_step": 0.25}), ("usnet", usnet)):
        config = tiny_config(variant=variant, num_epochs=1, **{"sweep.throughput_repeats": 0,
                                                               "sweep.calibration_batches": 2},
                             **overrides)
        train.train_and_evaluate(config, str(root / variant), splits=splits)
        runs[variant] = str(root / variant)
    return runs, splits


def test_one_pass_sweep_equals_per_width_sweep(trained_runs, tmp_path):
    runs, splits = trained_runs
    # On a 0.1 grid (and the reference's widths): the per-width sweep compiles one program per width.
    workdir = tmp_path / "awn"
    shutil.copytree(runs["awn"], workdir)
    config = json.loads((workdir / "config.json").read_text())
    config["sweep"]["grid_step"] = 0.1
    (workdir / "config.json").write_text(json.dumps(config))
    fast = sweep.sweep(str(workdir), splits=splits, write=False)
    slow = sweep.sweep(str(workdir), splits=splits, one_pass=False, write=False)
    assert fast["summary"]["one_pass"] and not slow["summary"]["one_pass"]
    assert len(fast["rows"]) == len(slow["rows"]) >= 15
    for a, b in zip(fast["rows"], slow["rows"]):
        assert a["width"] == b["width"]
        assert a["top1"] == pytest.approx(b["top1"], abs=1 / 40 + 1e-9)  # at most one tie-flip
        assert a["top5"] == pytest.approx(b["top5"], abs=1 / 40 + 1e-9)
    assert np.mean([a["top1"] == b["top1"] for a, b in zip(fast["rows"], slow["rows"])]) > 0.9


@pytest.mark.parametrize("variant", ["awn", "usnet"])
def test_training_time_accuracy_equals_the_sweeps_at_the_same_checkpoint(trained_runs, variant):
    """Training evaluates through the same accuracy loop as the sweep: the same numbers."""
    runs, splits = trained_runs
    final = [json.loads(line) for line in open(os.path.join(runs[variant], "metrics.jsonl"))
             if json.loads(line)["kind"] == "final"][-1]
    result = sweep.sweep(runs[variant], splits=splits, write=False)
    assert result["summary"]["step"] == final["step"]
    top1 = {r["width"]: r["top1"] for r in result["rows"]}
    assert final["widths"] == [1.0, 0.75, 0.5, 0.25]
    assert [top1[w] for w in final["widths"]] == final["accuracy"]


def test_accuracies_on_two_devices_equal_one_device(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    run = subprocess.run([sys.executable, "-c", TWO_DEVICE_EVAL.format(tests=os.path.dirname(__file__))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = json.loads(run.stdout.strip().splitlines()[-1])
    assert one == two


TWO_DEVICE_EVAL = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax
    from awn_jax import data, evaluation, sharding
    from awn_jax.models import LeNet3C1L
    from helpers import fake_split
    assert jax.device_count() == 2
    model = LeNet3C1L(variant="awn")
    split, info = fake_split("fashion_mnist", 37, 3), data.get_info("fashion_mnist")
    variables = jax.jit(model.init)(jax.random.key(0), jax.numpy.zeros((1, 28, 28, 1)))
    out = [evaluation.accuracies(model, variables, split, info, (1.0, 0.5, 0.3), 15,
                                 mesh=sharding.data_mesh(devices)) for devices in (jax.devices()[:1], jax.devices())]
    print(json.dumps([sorted(o.items()) for o in out]))
""")


def test_sweep_rows_cover_every_configuration_and_report_costs(trained_runs):
    runs, splits = trained_runs
    result = sweep.sweep(runs["awn"], splits=splits)
    rows, summary = result["rows"], result["summary"]
    assert {num_channels(r["width"], 45) for r in rows} == set(range(11, 46))
    assert sum(r["reference_width"] for r in rows) == 10
    macs = [r["macs"] for r in rows]
    assert macs == sorted(macs) and macs[-1] == costs.width_cost(
        LeNet3C1L(), jax.eval_shape(lambda: LeNet3C1L().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))),
        (28, 28, 1), 1.0).macs
    assert summary["step"] == 4 and summary["test_examples"] == 40
    assert summary["auc_reference_mean"] == pytest.approx(
        np.mean([r["top1"] for r in rows if r["reference_width"]]))
    written = json.load(open(os.path.join(runs["awn"], "eval", "sweep.json")))
    assert written["summary"]["auc_trapezoid"] == summary["auc_trapezoid"]
    csv_lines = open(os.path.join(runs["awn"], "eval", "sweep.csv")).read().splitlines()
    assert len(csv_lines) == len(rows) + 1 and csv_lines[0].startswith("width,channels,top1")
    assert open(os.path.join(runs["awn"], "eval", "sweep.png"), "rb").read(4) == b"\x89PNG"


def test_snet_sweep_uses_the_next_larger_listed_batchnorm(trained_runs):
    runs, splits = trained_runs
    run = evaluation.restore_run(runs["snet"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 28, 28, 1)), jnp.float32)
    # 0.6 is served by 0.75's BatchNorm: overwrite 0.75's statistics and see the output move.
    stats = flax.core.unfreeze(run.variables["batch_stats"])
    before = apply(run.model, run.variables, x, width=0.6)
    stats["bn1"]["mean_2"] = stats["bn1"]["mean_2"] + 1.0
    after = apply(run.model, {"params": run.variables["params"], "batch_stats": stats}, x, width=0.6)
    untouched = apply(run.model, {"params": run.variables["params"], "batch_stats": stats}, x, width=0.5)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(untouched, apply(run.model, run.variables, x, width=0.5))


def test_usnet_calibration_is_a_cumulative_average_per_width(trained_runs):
    runs, splits = trained_runs
    run = evaluation.restore_run(runs["usnet"])
    widths = calibration_widths(4, 0.25)
    assert widths == (0.25, 0.5, 0.75, 1.0)
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.normal(size=(8, 28, 28, 1)), jnp.float32) for _ in range(3)]
    model = run.model.clone(bn_widths=widths)
    variables = calibration.calibrate(model, run.variables["params"], run.variables["batch_stats"], batches, widths)
    # Slow reference: the first conv's pre-BN output at width 0.5, averaged over batches.
    c = num_channels(0.5, 32)
    means, variances = [], []
    for x in batches:
        y = run.model.apply({"params": run.variables["params"]}, x, 0.5, method=lambda m, x, w: m.conv1(x, w))
        flat = np.asarray(y, np.float64).reshape(-1, c)
        means.append(flat.mean(0))
        variances.append(flat.var(0, ddof=1))
    np.testing.assert_allclose(variables["batch_stats"]["bn1"]["mean_1"], np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(variables["batch_stats"]["bn1"]["var_1"], np.mean(variances, 0), rtol=1e-4, atol=1e-5)
    sizes = [variables["batch_stats"]["bn1"][f"mean_{i}"].shape[0] for i in range(4)]
    assert sizes == [num_channels(w, 32) for w in widths]
    # Evaluation at 0.6 uses 0.75's calibrated statistics (the next larger).
    x = batches[0]
    stats = flax.core.unfreeze(variables["batch_stats"])
    base = apply(model, variables, x, width=0.6)
    stats["bn2"]["mean_2"] = stats["bn2"]["mean_2"] + 1.0
    assert not np.allclose(base, apply(model, {"params": variables["params"], "batch_stats": stats}, x, width=0.6))
    with pytest.raises(ValueError, match="US-Net's post-training step"):
        calibration.calibrate(LeNet3C1L(variant="awn"), None, None, batches, widths)


def test_calibrated_sweeps_grow_the_model_and_are_stored(trained_runs):
    runs, splits = trained_runs
    sizes = {}
    for num in (4, 10):
        result = sweep.sweep(runs["usnet"], splits=splits, calibration=num)
        sizes[num] = result["summary"]["model_bytes"]
        assert os.path.exists(os.path.join(runs["usnet"], f"eval_calibrated_{num}w", "sweep.json"))
        assert os.path.exists(os.path.join(runs["usnet"], "calibration", f"{num}w", "widths.json"))
    plain = sweep.sweep(runs["usnet"], splits=splits, write=False)["summary"]["model_bytes"]
    assert plain < sizes[4] < sizes[10]
    again = sweep.sweep(runs["usnet"], splits=splits, calibration=4, write=False)  # loads the stored one
    assert again["summary"]["auc_trapezoid"] == json.load(open(os.path.join(
        runs["usnet"], "eval_calibrated_4w", "sweep.json")))["summary"]["auc_trapezoid"]
    with pytest.raises(ValueError, match="--calibration is for US-Net"):
        sweep.sweep(runs["awn"], splits=splits, calibration=4, write=False)


def test_a_usnet_run_exports_and_serves_with_its_calibration_and_not_without(trained_runs, tmp_path, capsys):
    runs, splits = trained_runs
    workdir, width = runs["usnet"], 0.5
    run = evaluation.restore_run(workdir)
    model, variables = evaluation.calibrated(run, 4, workdir, splits[0])  # stored, as a sweep stores it
    images = np.random.default_rng(0).integers(0, 256, (5, *run.info.image_shape)).astype(np.uint8)
    x = data.preprocess(jnp.asarray(images), run.info)
    served = apply(model, variables, x, width=width)
    assert np.max(np.abs(served - apply(run.model, run.variables, x, width=width))) > 1e-2  # calibration matters

    out = tmp_path / "exported"
    args = ["export", f"--workdir={workdir}", f"--width={width}", f"--out={out}"]
    assert export_cli.run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --calibration=N" in err[0], err
    assert not out.exists()
    assert export_cli.run([*args, "--calibration=4"]) == 0
    plain, plain_variables = export.load(str(out))
    np.testing.assert_allclose(apply(plain, plain_variables, x), served, rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="give --calibration=N"):
        Predictor.from_workdir(workdir, widths=(width,))
    predictor = Predictor.from_workdir(workdir, widths=(width,), calibration=4, batch_sizes=(5,), repeats=1)
    np.testing.assert_allclose(predictor.programs[width](images), served, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="--calibration is for US-Net"):
        Predictor.from_workdir(runs["awn"], widths=(width,), calibration=4)

def test_compare_overlays_runs_and_prints_the_auc_table(trained_runs, tmp_path):
    runs, splits = trained_runs
    for variant in ("awn", "snet"):
        sweep.sweep(runs[variant], splits=splits)
    table = report.compare([runs["awn"], runs["snet"]], str(tmp_path / "fig.png"))
    assert "| AWN |" in table and "| S-Net |" in table
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def _no_eval_written(workdir):
    return not any(d.startswith("eval") for d in os.listdir(workdir))


def test_bad_workdirs_give_one_clear_error_and_write_nothing(trained_runs, tmp_path):
    runs, splits = trained_runs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="no config.json"):
        sweep.sweep(str(empty), splits=splits)
    assert _no_eval_written(empty)
    # Config but no checkpoints.
    shutil.copy(os.path.join(runs["awn"], "config.json"), empty / "config.json")
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
        sweep.sweep(str(empty), splits=splits)
    # A checkpoint of another model: the S-Net's checkpoints beside the AWN's config.
    foreign = tmp_path / "foreign"
    shutil.copytree(runs["snet"], foreign)
    shutil.copy(os.path.join(runs["awn"], "config.json"), foreign / "config.json")
    shutil.rmtree(foreign / "eval", ignore_errors=True)
    with pytest.raises(checkpoints.CheckpointError, match="cannot be restored"):
        sweep.sweep(str(foreign), splits=splits)
    assert _no_eval_written(foreign)
    # A truncated checkpoint: every data file cut short.
    broken = tmp_path / "broken"
    shutil.copytree(runs["awn"], broken)
    shutil.rmtree(broken / "eval", ignore_errors=True)
    truncate_checkpoints(broken)
    with pytest.raises(checkpoints.CheckpointError):
        sweep.sweep(str(broken), splits=splits)
    assert _no_eval_written(broken)


def test_cli_error_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "awn_jax.evaluate", f"--workdir={tmp_path}"], cwd=CHECKOUT,
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert run.returncode == 2 and run.stderr.strip().startswith("error:") and "Traceback" not in run.stderr


SECOND_SWEEP = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from awn_jax import compilation, sweep, train
    from helpers import fake_split, tiny_config, truncate_checkpoints
    compilation.enable_compilation_cache({cache!r})
    splits = (fake_split("fashion_mnist", 32, 0), fake_split("fashion_mnist", 20, 1))
    config = tiny_config(variant="standard", num_epochs=1, **{{"sweep.throughput_repeats": 1, "sweep.grid_step": 0.25}})
    if {train!r}:
        train.train_and_evaluate(config, {workdir!r}, splits=splits)
    result = sweep.sweep({workdir!r}, splits=splits, write=False)
    s = result["summary"]
    print(json.dumps([s["programs_compiled"], s["programs_from_cache"], len(result["rows"])]))
""")


def test_a_second_sweep_compiles_nothing(tmp_path):
    counts = []
    for first in (True, False):
        script = SECOND_SWEEP.format(tests=os.path.dirname(__file__), cache=str(tmp_path / "cache"),
                                     workdir=str(tmp_path / "wd"), train=first)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
        assert run.returncode == 0, run.stderr[-2000:]
        counts.append(json.loads(run.stdout.strip().splitlines()[-1]))
    widths = counts[0][2]
    assert widths >= 10 and counts[0][0] >= widths  # a per-width sweep: one program per width, and more
    assert counts[1][0] == 0 and counts[1][1] >= counts[0][0]
