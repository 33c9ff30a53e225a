"""Issue 19's convergence: AUC and top-1 against epochs of the full-length runs.

    python -m experiments.convergence              # train (resumable), then report
    python -m experiments.convergence --report_only  # report what the runs have so far

The runs are seed 2019 on the real Fashion-MNIST for 100 epochs (the paper's length),
AWN+RS and AWN first, then US-Net and S-Net; each keeps 20 evenly spaced checkpoints
(every 5 epochs, ``runner.command``). The report sweeps every kept checkpoint (US-Net
calibrated at 10 widths, the paper's middle column), caches each point in
``experiments/results/convergence/points.json`` (a checkpoint is swept once), and writes
``convergence.md`` (table at epochs 5, 10, 25, 50, 75, 100 beside the paper's AUC, then
each method's paper / 5-epoch (``table2_fmnist``) / newest full-length AUC),
``convergence.csv`` (every point) and ``convergence.png``. Runs still training are
reported up to their newest checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from io import StringIO

from awn_jax import checkpoints, data, io
from awn_jax.report import figure_png
from awn_jax.sweep import sweep
from experiments import runner
from experiments.table2_fmnist import PAPER_AUC

ORDER = ("awn_rs", "awn", "usnet", "snet")
SEED = 2019
US_NET_CALIBRATION = 10
TABLE_EPOCHS = (5, 10, 25, 50, 75, 100)
POINT_FIELDS = ("method", "epoch", "step", "auc_reference_mean", "auc_trapezoid", "top1_at_1", "top1_at_0.25")


def _column(key: str) -> str:
    return f"US-Net {US_NET_CALIBRATION}w" if key == "usnet" else runner.METHODS[key][0]


def _steps_per_epoch(run_dir: str) -> int:
    config = checkpoints.load_config(run_dir)
    return data.epoch_examples(config) // config.batch_size


def _point(key: str, run_dir: str, step: int, splits) -> dict:
    result = sweep(run_dir, step=step, calibration=US_NET_CALIBRATION if key == "usnet" else 0,
                   throughput_repeats=0, splits=splits, write=False)
    s, rows = result["summary"], result["rows"]
    top1 = {r["width"]: 100 * r["top1"] for r in rows}
    return {"method": _column(key), "epoch": step / _steps_per_epoch(run_dir),
            "step": step, "auc_reference_mean": 100 * s["auc_reference_mean"],
            "auc_trapezoid": 100 * s["auc_trapezoid"], "top1_at_1": top1[1.0], "top1_at_0.25": top1[0.25]}


def collect(workroot: str, epochs: int, cache_path: str) -> list[dict]:
    """Every kept checkpoint's point, sweeping only those not in the cache.

    The cache holds the points of one work root's runs of one length; another work
    root or length starts it afresh.
    """
    origin = {"workroot": os.path.abspath(workroot), "epochs": epochs}
    cache = runner.load_json(cache_path) if os.path.exists(cache_path) else {}
    if cache.get("origin") != origin:
        cache = {"origin": origin, "points": {}}
    points = cache["points"]
    for key in ORDER:
        run_dir = runner.workdir(runner.spec(key, SEED), workroot, epochs)
        if not os.path.isdir(run_dir):
            continue
        todo = [s for s in checkpoints.saved_steps(run_dir) if f"{key}/{s}" not in points]
        if not todo:
            continue
        config = checkpoints.load_config(run_dir)
        splits = data.open_data(config)
        for step in todo:
            points[f"{key}/{step}"] = _point(key, run_dir, step, splits)
            # Saved after each point: a stopped report resumes where it was.
            io.atomic_write(cache_path, json.dumps(cache, indent=1, sort_keys=True))
            print(f"{key} step {step}: AUC {points[f'{key}/{step}']['auc_reference_mean']:.2f}", flush=True)
    return sorted(points.values(), key=lambda p: (ORDER.index(_key(p["method"])), p["step"]))


def _key(column: str) -> str:
    return next(k for k in ORDER if _column(k) == column)


def table(points: list[dict]) -> str:
    """Markdown: one row per (method, table epoch that has a checkpoint), the paper's AUC beside it."""
    lines = ["| method | epoch | AUC, 10-width mean (%) | paper, 100 epochs (%) | ours − paper |"
             " AUC, trapezoid (%) | top-1 @1 (%) | top-1 @0.25 (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        if round(p["epoch"], 6) not in TABLE_EPOCHS:
            continue
        paper = PAPER_AUC[p["method"]]
        lines.append(f"| {p['method']} | {p['epoch']:g} | {p['auc_reference_mean']:.2f} | {paper:.2f} |"
                     f" {p['auc_reference_mean'] - paper:+.2f} | {p['auc_trapezoid']:.2f} | {p['top1_at_1']:.2f} |"
                     f" {p['top1_at_0.25']:.2f} |")
    return "\n".join(lines)


def comparison(points: list[dict], five_epoch: list[dict]) -> str:
    """Markdown: per method, the paper's AUC, the 5-epoch runs' (3 seeds, He init) and the full-length run's newest.

    ``five_epoch`` holds ``table2_fmnist``'s rows (``table2.csv``); its 5-epoch rows are used.
    """
    lines = ["| method | paper, 100 epochs (%) | 5 epochs, 3 seeds, He init (%) |"
             " full length, reference init, newest checkpoint (%) | its epoch |",
             "|---|---|---|---|---|"]
    for method in dict.fromkeys(p["method"] for p in points):
        newest = max((p for p in points if p["method"] == method), key=lambda p: p["step"])
        five = [float(r["auc_reference_mean"]) for r in five_epoch
                if r["method"] == method and int(r["epochs"]) == 5]
        mean, std = runner.mean_std(five) if five else (None, None)
        five_text = f"{mean:.2f} ± {std:.2f} ({len(five)} seeds)" if five else "not run"
        lines.append(f"| {method} | {PAPER_AUC[method]:.2f} | {five_text} | {newest['auc_reference_mean']:.2f} |"
                     f" {round(newest['epoch'], 1):g} |")
    return "\n".join(lines)


def plot(points: list[dict]) -> bytes:
    """PNG: AUC against epochs (the paper's value dashed), and top-1 at widths 1 and 0.25."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (auc_ax, top_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, method in enumerate(dict.fromkeys(p["method"] for p in points)):
        mine = [p for p in points if p["method"] == method]
        color = f"C{i}"
        epochs = [p["epoch"] for p in mine]
        auc_ax.plot(epochs, [p["auc_reference_mean"] for p in mine], marker=".", color=color, label=method)
        auc_ax.axhline(PAPER_AUC[method], color=color, linestyle="--", linewidth=0.8)
        top_ax.plot(epochs, [p["top1_at_1"] for p in mine], marker=".", color=color, label=f"{method} @1")
        top_ax.plot(epochs, [p["top1_at_0.25"] for p in mine], marker="x", linestyle=":", color=color,
                    label=f"{method} @0.25")
    auc_ax.set(xlabel="epoch", ylabel="AUC, 10-width mean (%)", title="AUC (dashed: the paper at 100 epochs)")
    top_ax.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1 at widths 1 and 0.25")
    return figure_png(fig, legend_size=7)


def report(workroot: str, epochs: int) -> str:
    out = runner.results_dir("convergence")
    points = collect(workroot, epochs, os.path.join(out, "points.json"))
    if not points:
        raise SystemExit(f"no checkpoints under {workroot}/e{epochs}: train first (without --report_only).")
    five_epoch_path = os.path.join(runner.RESULTS, "table2_fmnist", "table2.csv")  # read only: no directory made
    five_epoch = []
    if os.path.exists(five_epoch_path):
        with open(five_epoch_path, newline="") as f:
            five_epoch = list(csv.DictReader(f))
    md = table(points) + "\n\n" + comparison(points, five_epoch)
    io.atomic_write(os.path.join(out, "convergence.md"), md + "\n")
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=POINT_FIELDS)
    writer.writeheader()
    writer.writerows({k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()} for p in points)
    io.atomic_write(os.path.join(out, "convergence.csv"), text.getvalue())
    io.atomic_write(os.path.join(out, "convergence.png"), plot(points))
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (the paper: 100)")
    parser.add_argument("--workroot", default=runner.DEFAULT_WORKROOT, help="where the run workdirs are")
    parser.add_argument("--report_only", action="store_true", help="train nothing; report the checkpoints so far")
    args = parser.parse_args()
    if not args.report_only:
        runner.train([runner.spec(k, SEED) for k in ORDER], args.workroot, args.epochs)
    print(report(args.workroot, args.epochs))


if __name__ == "__main__":
    main()
