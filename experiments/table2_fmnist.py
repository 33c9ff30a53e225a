"""Table 2 (Fashion-MNIST row) and Figure 5: AUC of AWN, S-Net, AWN+RS and US-Net.

    python -m experiments.table2_fmnist --epochs=5

Trains what is missing (``runner.train``), then writes
``experiments/results/table2_fmnist/``: ``table2.md`` (mean ± std over seeds, the
paper's number beside it), ``table2.csv``/``table2.json`` (every seed),
``figure5.png`` (accuracy vs width, first seed, all methods) and
``curves.csv`` (accuracy per width, mean over seeds).
"""

from __future__ import annotations

import csv
import json
import os
from io import StringIO

import numpy as np

from awn_jax import io
from awn_jax.report import compare
from experiments import runner

PAPER_AUC = {"AWN": 90.67, "S-Net": 83.78, "AWN+RS": 91.06, "US-Net 4w": 90.40, "US-Net 10w": 90.70,
             "US-Net 20w": 90.74}
METHODS = ("awn", "snet", "awn_rs", "usnet")


def _columns(key: str) -> list[tuple[str, int]]:
    """(column name, calibration) pairs of a method."""
    method = runner.METHODS[key][0]
    if key == "usnet":
        return [(f"US-Net {n}w", n) for n in runner.US_NET_CALIBRATIONS]
    return [(method, 0)]


def collect(seeds, workroot: str, epochs: int) -> list[dict]:
    """One record per (column, seed): AUCs, sizes, wall time, the sweep's rows."""
    records = []
    for key in METHODS:
        for seed in seeds:
            run = runner.spec(key, seed)
            run_dir = runner.workdir(run, workroot, epochs)
            for column, calibration in _columns(key):
                path = io.sweep_path(run_dir, calibration)
                if not os.path.exists(path):
                    continue
                sweep = runner.load_json(path)
                s = sweep["summary"]
                records.append({
                    "method": column, "seed": seed, "epochs": epochs, "step": s["step"],
                    "auc_reference_mean": 100 * s["auc_reference_mean"], "auc_trapezoid": 100 * s["auc_trapezoid"],
                    "top1_at_1": 100 * next(r["top1"] for r in sweep["rows"] if r["width"] == 1.0),
                    "top1_at_0.25": 100 * next(r["top1"] for r in sweep["rows"] if r["width"] == 0.25),
                    "model_kib": s["model_bytes"] / 1024, "run_wall_minutes": runner.wall_seconds(run_dir) / 60,
                    "sweep_path": os.path.relpath(path, runner.REPO), "rows": sweep["rows"],
                })
    return records


def table(records: list[dict]) -> str:
    lines = ["| method | seeds | AUC, 10-width mean (%) | paper (%) | ours − paper | AUC, trapezoid (%) |"
             " top-1 @1 (%) | top-1 @0.25 (%) | model size (KiB) | wall per run (min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for column in PAPER_AUC:
        rs = [r for r in records if r["method"] == column]
        if not rs:
            continue
        stat = {k: runner.mean_std([r[k] for r in rs]) for k in
                ("auc_reference_mean", "auc_trapezoid", "top1_at_1", "top1_at_0.25", "run_wall_minutes")}
        ref = stat["auc_reference_mean"][0]

        def pm(key):
            mean, std = stat[key]
            return f"{mean:.2f} ± {std:.2f}" if len(rs) > 1 else f"{mean:.2f}"

        lines.append(
            f"| {column} | {len(rs)} | {pm('auc_reference_mean')} | {PAPER_AUC[column]:.2f} |"
            f" {ref - PAPER_AUC[column]:+.2f} | {pm('auc_trapezoid')} | {pm('top1_at_1')} | {pm('top1_at_0.25')} |"
            f" {rs[0]['model_kib']:.1f} | {stat['run_wall_minutes'][0]:.1f} |")
    return "\n".join(lines)


def mean_curves(records: list[dict]) -> str:
    """CSV: width, then the mean top-1 of each method over seeds (widths every method swept)."""
    by_method = {}
    for r in records:
        by_method.setdefault(r["method"], []).append({row["width"]: row["top1"] for row in r["rows"]})
    widths = sorted(set.intersection(*(set(c) for curves in by_method.values() for c in curves)))
    out = StringIO()
    writer = csv.writer(out)
    writer.writerow(["width", *by_method])
    for w in widths:
        writer.writerow([w, *(f"{100 * np.mean([c[w] for c in curves]):.3f}" for curves in by_method.values())])
    return out.getvalue()


def report(seeds, workroot: str, epochs: int) -> str:
    records = collect(seeds, workroot, epochs)
    if not records:
        raise SystemExit(f"no finished runs under {workroot}/e{epochs}: train first (without --report_only).")
    out = runner.results_dir("table2_fmnist")
    md = table(records)
    io.atomic_write(os.path.join(out, "table2.md"), md + "\n")
    io.atomic_write(os.path.join(out, "table2.json"), json.dumps(
        [{k: v for k, v in r.items() if k != "rows"} for r in records], indent=1))
    text = StringIO()
    fields = [k for k in records[0] if k not in ("rows",)]
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    io.atomic_write(os.path.join(out, "table2.csv"), text.getvalue())
    io.atomic_write(os.path.join(out, "curves.csv"), mean_curves(records))
    first = [r for r in records if r["seed"] == seeds[0]]
    print(compare([r["sweep_path"] for r in first], os.path.join(out, "figure5.png"),
                           labels=[r["method"] for r in first]))
    return md


def main() -> None:
    runner.main(__doc__, METHODS, report, runner.SEEDS)


if __name__ == "__main__":
    main()
