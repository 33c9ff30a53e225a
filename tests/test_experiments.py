"""The experiment scripts: the commands they run and the tables they write (no training)."""

import json
import os
import shutil

import pytest

from experiments import figure6_full_width, runner, table2_fmnist, train_all


def test_runs_are_cli_commands_with_the_stated_protocol():
    cmd = runner.command(runner.spec("awn_rs", 2020), "/w", epochs=5, checkpoints=20)
    assert cmd[1:4] == ["-m", "awn_jax.main", "--config=configs/lenet_fmnist.py"]
    assert {"--config.num_epochs=5", "--config.seed=2020", "--config.variant=awn",
            "--config.widths.mode=sandwich", "--config.checkpoint_every_steps=117"} <= set(cmd)
    runs = train_all.all_runs([1, 2, 3])
    assert len(runs) == 15 and len({r.name for r in runs}) == 15
    assert [r.key for r in runs[:4]] == ["awn", "snet", "awn_rs", "usnet"]  # first seed's Table 2 first
    assert runner.spec("usnet", 1).calibrations() == (4, 10, 20) and runner.spec("awn", 1).calibrations() == (0,)


def _sweep(path, auc, top1, widths=(0.25, 0.5, 0.75, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"width": w, "top1": top1(w), "reference_width": True} for w in widths]
    path.write_text(json.dumps({"summary": {"step": 10, "auc_reference_mean": auc, "auc_trapezoid": auc,
                                            "model_bytes": 2048}, "rows": rows}))


def test_table2_reports_mean_and_std_over_seeds_beside_the_paper(tmp_path):
    for seed, auc in ((1, 0.90), (2, 0.92)):
        run_dir = runner.workdir(runner.spec("awn", seed), str(tmp_path), 5)
        _sweep(tmp_path / run_dir / "eval" / "sweep.json", auc, lambda w: 0.9)
        (tmp_path / run_dir / "wall_seconds.json").write_text('{"seconds": 60}')
    records = table2_fmnist.collect([1, 2], str(tmp_path), 5)
    line = next(line for line in table2_fmnist.table(records).splitlines() if line.startswith("| AWN |"))
    assert "| 2 | 91.00 ± 1.41 | 90.67 | +0.33 |" in line and "| 1.0 |" in line  # wall minutes


def test_figure6_quantifies_the_gap_below_full_width(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(figure6_full_width, "compare", lambda *a, **k: "")
    widths = (0.25, 0.5, 0.75, 1.0)
    for key, slope in (("awn_full", 0.1), ("standard_full", 0.8)):
        run_dir = runner.workdir(runner.spec(key, 7), str(tmp_path), 5)
        _sweep(tmp_path / run_dir / "eval" / "sweep.json", 0.5, lambda w, s=slope: 0.9 - s * (1 - w), widths)
    md = figure6_full_width.report([7], str(tmp_path), 5)
    # mean below 1: awn 0.9 - 0.1 * 0.5 = 85%, standard 0.9 - 0.8 * 0.5 = 50%
    assert "+35.00 points" in md
    with pytest.raises(SystemExit, match="no finished runs"):
        figure6_full_width.report([8], str(tmp_path), 5)


def test_convergence_sweeps_each_kept_checkpoint_once_and_tables_it_beside_the_paper(tmp_path, monkeypatch):
    from awn_jax import checkpoints, io
    from awn_jax.config import lenet_config
    from experiments import convergence

    monkeypatch.setattr(runner, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(convergence.data, "open_data", lambda config: ("train", "test"))
    swept = []

    def fake_sweep(run_dir, *, step, calibration, throughput_repeats, splits, write):
        assert splits == ("train", "test") and not write and throughput_repeats == 0
        swept.append((os.path.basename(run_dir), step, calibration))
        auc = 0.80 + step / 1e6
        rows = [{"width": w, "top1": auc + w / 100} for w in (0.25, 1.0)]
        return {"summary": {"auc_reference_mean": auc, "auc_trapezoid": auc - 0.01}, "rows": rows}

    monkeypatch.setattr(convergence, "sweep", fake_sweep)
    steps_per_epoch = 60000 // 128
    for key, epochs in (("awn_rs", (5, 10, 25)), ("usnet", (5,))):
        run_dir = runner.workdir(runner.spec(key, convergence.SEED), str(tmp_path), 100)
        os.makedirs(run_dir)
        checkpoints.save_config(run_dir, lenet_config("fashion_mnist"))
        for e in epochs:
            os.makedirs(os.path.join(io.checkpoints_dir(run_dir), str(e * steps_per_epoch)))
    five_epoch = tmp_path / "results" / "table2_fmnist"
    five_epoch.mkdir(parents=True)
    (five_epoch / "table2.csv").write_text("method,seed,epochs,auc_reference_mean\nAWN+RS,2019,5,89.5\n"
                                           "AWN+RS,2020,5,89.7\nAWN+RS,2021,5,89.9\nAWN+RS,2019,100,99\n")
    md = convergence.report(str(tmp_path), 100)
    assert sorted(swept) == [("awn_rs_seed2019", 2340, 0), ("awn_rs_seed2019", 4680, 0),
                             ("awn_rs_seed2019", 11700, 0), ("usnet_seed2019", 2340, 10)]
    lines = md.splitlines()
    assert lines[2] == "| AWN+RS | 5 | 80.23 | 91.06 | -10.83 | 79.23 | 81.23 | 80.48 |"
    assert [line.split("|")[1:3] for line in lines[2:6]] == [
        [" AWN+RS ", " 5 "], [" AWN+RS ", " 10 "], [" AWN+RS ", " 25 "], [" US-Net 10w ", " 5 "]]
    # Each method's paper / 5-epoch (3 seeds; the 100-epoch row is not one of them) / newest full-length AUC.
    assert lines[9:] == ["| AWN+RS | 91.06 | 89.70 ± 0.20 (3 seeds) | 81.17 | 25 |",
                         "| US-Net 10w | 90.70 | not run | 80.23 | 5 |"]
    # A second report sweeps only the checkpoint saved since.
    run_dir = runner.workdir(runner.spec("awn_rs", convergence.SEED), str(tmp_path), 100)
    os.makedirs(os.path.join(io.checkpoints_dir(run_dir), str(30 * steps_per_epoch)))
    swept.clear()
    convergence.report(str(tmp_path), 100)
    assert swept == [("awn_rs_seed2019", 30 * steps_per_epoch, 0)]
    # Another work root's runs are not this cache's: everything is swept again.
    shutil.copytree(tmp_path / "e100", tmp_path / "other" / "e100")
    swept.clear()
    convergence.report(str(tmp_path / "other"), 100)
    assert len(swept) == 5
    out = tmp_path / "results" / "convergence"
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "convergence.csv").read_text().splitlines()) == 1 + 5


def test_trained_widths_compares_a_fixed_width_runs_trained_widths_with_the_others(tmp_path, monkeypatch):
    from awn_jax import checkpoints, io
    from awn_jax.config import lenet_config
    from experiments import trained_widths

    config = lenet_config("fashion_mnist")
    config.widths.mode, config.widths.fixed = "fixed", (1.0, 0.5)
    checkpoints.save_config(str(tmp_path), config)
    for epoch in (10, 20):
        os.makedirs(os.path.join(io.checkpoints_dir(str(tmp_path)), str(epoch * (60000 // 128))))

    def fake_sweep(workdir, *, step, throughput_repeats, write):
        assert workdir == str(tmp_path) and throughput_repeats == 0 and not write
        late = step == 20 * (60000 // 128)
        return {"rows": [{"width": 0.25, "top1": 0.80, "reference_width": True},
                         {"width": 0.3, "top1": 0.99},  # not a reference width: left out
                         {"width": 0.5, "top1": 0.86, "reference_width": True},
                         {"width": 0.75, "top1": 0.84 - 0.02 * late, "reference_width": True},
                         {"width": 1.0, "top1": 0.90, "reference_width": True}]}

    monkeypatch.setattr(trained_widths.sweep, "sweep", fake_sweep)
    lines = trained_widths.table(str(tmp_path), [10, 20]).splitlines()
    assert lines[0] == "| epoch | 0.25 | 0.5* | 0.75 | 1* | mean, trained* | mean, others | difference |"
    assert lines[2:] == ["| 10 | 80.00 | 86.00 | 84.00 | 90.00 | 88.00 | 82.00 | 6.00 |",
                         "| 20 | 80.00 | 86.00 | 82.00 | 90.00 | 88.00 | 81.00 | 7.00 |"]
    with pytest.raises(ValueError, match="no checkpoint at epoch 5 "):
        trained_widths.table(str(tmp_path), [5])
    config.widths.fixed = (0.25, 0.5, 0.75, 1.0)  # every reference width trained: nothing to compare
    checkpoints.save_config(str(tmp_path), config)
    with pytest.raises(ValueError, match="it needs trained and untrained ones"):
        trained_widths.table(str(tmp_path), [10])
    config.widths.mode = "sandwich"
    checkpoints.save_config(str(tmp_path / "rs"), config)
    with pytest.raises(ValueError, match="give a widths.mode=fixed run"):
        trained_widths.table(str(tmp_path / "rs"), [10])


def test_cascade_curve_counts_each_image_at_the_width_it_stops_at():
    import numpy as np

    from experiments import cascade_fmnist

    labels = np.array([0, 1, 0])
    # Image 0 is sure at 0.25; image 1 at 0.5; image 2 only at 1.0 (and wrong before it).
    stage_logits = {0.25: np.array([[5.0, 0.0], [0.0, 0.1], [0.0, 0.1]]),
                    0.5: np.array([[5.0, 0.0], [0.0, 5.0], [0.0, 0.1]]),
                    1.0: np.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])}
    macs = {0.25: 1e6, 0.5: 2e6, 1.0: 6e6}
    low, high = cascade_fmnist.cascade_curve(stage_logits, labels, macs, [0.0, 0.9])
    assert low["accuracy"] == pytest.approx(200 / 3) and low["mean_mmacs"] == 1.0 and low["at_0.25"] == 1.0
    assert high["accuracy"] == 100.0 and high["mean_mmacs"] == pytest.approx(3.0)
    assert (high["at_0.25"], high["at_0.5"], high["at_1"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
