"""Figure 6: a triangular and a standard LeNet, trained at full width only, swept at every width.

    python -m experiments.figure6_full_width --epochs=5

Both train with ``--config.widths.fixed='(1.0,)'`` (one width per step); the sweep
then runs them at every width in [0.25, 1]. Writes
``experiments/results/figure6_full_width/``: ``figure6.png``, ``figure6.md`` and
``figure6.json`` (top-1 at 1.0, mean top-1 over the 9 reference widths below 1,
AUC, and the narrowest width that keeps 95% of the full-width accuracy).
"""

from __future__ import annotations

import json
import os

import numpy as np

from awn_jax import io
from awn_jax.report import compare
from experiments import runner

METHODS = ("awn_full", "standard_full")


def _metrics(sweep: dict) -> dict:
    rows = sweep["rows"]
    full = next(r["top1"] for r in rows if r["width"] == 1.0)
    below = [r["top1"] for r in rows if r["reference_width"] and r["width"] < 1.0]
    keeps = [r["width"] for r in rows if r["top1"] >= 0.95 * full]
    return {"top1_at_1": 100 * full, "mean_top1_reference_widths_below_1": 100 * float(np.mean(below)),
            "auc_reference_mean": 100 * sweep["summary"]["auc_reference_mean"],
            "narrowest_width_within_95pct_of_full": min(keeps)}


def report(seeds, workroot: str, epochs: int) -> str:
    out = runner.results_dir("figure6_full_width")
    results, paths = {}, []
    for key in METHODS:
        per_seed = []
        for seed in seeds:
            path = io.sweep_path(runner.workdir(runner.spec(key, seed), workroot, epochs))
            if os.path.exists(path):
                per_seed.append(_metrics(runner.load_json(path)))
                if seed == seeds[0]:
                    paths.append((os.path.relpath(path, runner.REPO), runner.METHODS[key][0]))
        if per_seed:
            results[key] = {"seeds": len(per_seed), **{k: runner.mean_std([m[k] for m in per_seed])
                                                       for k in per_seed[0]}}
    if not results:
        raise SystemExit(f"no finished runs under {workroot}/e{epochs}: train first (without --report_only).")
    lines = ["| LeNet trained at width 1 only | seeds | top-1 @1 (%) | mean top-1 @ 9 widths < 1 (%) |"
             " AUC, 10-width mean (%) | narrowest width within 95% of full |", "|---|---|---|---|---|---|"]
    for key, r in results.items():
        lines.append(f"| {runner.METHODS[key][0]} | {r['seeds']} | {r['top1_at_1'][0]:.2f} |"
                     f" {r['mean_top1_reference_widths_below_1'][0]:.2f} | {r['auc_reference_mean'][0]:.2f} |"
                     f" {r['narrowest_width_within_95pct_of_full'][0]:.3f} |")
    if len(results) == 2:
        gap = (results["awn_full"]["mean_top1_reference_widths_below_1"][0]
               - results["standard_full"]["mean_top1_reference_widths_below_1"][0])
        lines.append(f"\nTriangular minus standard, mean top-1 over the widths below 1: {gap:+.2f} points.")
    md = "\n".join(lines)
    io.atomic_write(os.path.join(out, "figure6.md"), md + "\n")
    io.atomic_write(os.path.join(out, "figure6.json"), json.dumps(
        {"epochs": epochs, "seeds": list(seeds), "results": results}, indent=1))
    compare([p for p, _ in paths], os.path.join(out, "figure6.png"), labels=[label for _, label in paths])
    return md


def main() -> None:
    runner.main(__doc__, METHODS, report, runner.SEEDS[:1])


if __name__ == "__main__":
    main()
