"""Table 1 / Figure 2: BatchNorm statistics across widths for standard BN, S-Net and AWN.

    python -m experiments.table1_bn_stats --epochs=5

LeNet-3C1L trained at 4 widths (1, 0.75, 0.5, 0.25) in three variants. Trains what
is missing, then writes ``experiments/results/table1_bn_stats/``:

* ``table1.md``/``.json``: training and validation (test-set) top-1 per width;
* ``figure2.png``: over training, each width's batch mean and variance of a hidden
  feature (solid) against the running statistics BatchNorm keeps (dashed);
* ``stats.json``/``stats.md``: the same for 9 features (3 channels in each of the 3
  BatchNorm layers), summarised as the spread of the batch mean across widths and
  the gap between each width's batch mean and its running mean, in units of the
  running standard deviation.

The paper tracked statistics at every step on MNIST; here they are measured from the
checkpoints kept during training (21 per run), on one fixed batch of 512 training
images, in train mode (the statistics BatchNorm normalises with).
"""

from __future__ import annotations

import json
import os
from io import BytesIO

import jax
import jax.numpy as jnp
import numpy as np

from awn_jax import checkpoints, data, evaluation, io
from experiments import runner

WIDTHS = (1.0, 0.75, 0.5, 0.25)
METHODS = ("standard", "snet", "awn")
LAYERS = ("bn1", "bn2", "bn3")
CHANNELS = (0, 3, 7)  # active at every width (8 channels at 0.25 for C=32)
PAPER_VALIDATION = {"standard": (98.49, 98.78, 96.59, 98.49), "snet": (99.05, 98.93, 98.91, 98.69),
                    "awn": (98.97, 98.87, 98.82, 98.43)}
NAMES = {"standard": "standard BN", "snet": "switchable BN (S-Net)", "awn": "AWN"}


def _fixed_batch(train_split, info, n=512):
    images = jnp.asarray(train_split.images[:n])
    return data.preprocess(images, info)  # no augmentation: the same batch at every checkpoint


def _running(stats, layer, width, variant, bn_widths):
    if variant != "snet":
        return stats[layer]["mean"], stats[layer]["var"]
    i = sorted(bn_widths).index(width)
    return stats[layer][f"mean_{i}"], stats[layer][f"var_{i}"]


def track(run_dir: str, train_split: data.Split) -> dict:
    """Batch and running mean/variance per checkpoint, width, layer and channel."""
    ckpt = checkpoints.Checkpointer(run_dir)
    steps = sorted(ckpt.manager.all_steps())
    ckpt.close()
    first = evaluation.restore_run(run_dir, steps[0])
    x = _fixed_batch(train_split, first.info)
    model = first.model
    variant, bn_widths = first.config.variant, model.bn_widths  # S-Net's listed widths, as the model was built
    moments = {w: jax.jit(lambda v, x, w=w: model.apply(v, x, width=w, train=True, mutable=["batch_moments"])[1])
               for w in WIDTHS}
    out = {"steps": steps, "batch_mean": [], "batch_var": [], "running_mean": [], "running_var": []}
    for step in steps:
        run = first if step == steps[0] else evaluation.restore_run(run_dir, step)
        per = {k: np.zeros((len(WIDTHS), len(LAYERS), len(CHANNELS))) for k in
               ("batch_mean", "batch_var", "running_mean", "running_var")}
        for i, w in enumerate(WIDTHS):
            recorded = moments[w](run.variables, x)["batch_moments"]
            for j, layer in enumerate(LAYERS):
                mean, var = recorded[layer]["moments"][0]
                r_mean, r_var = _running(run.variables["batch_stats"], layer, w, variant, bn_widths)
                per["batch_mean"][i, j] = np.asarray(mean)[list(CHANNELS)]
                per["batch_var"][i, j] = np.asarray(var)[list(CHANNELS)]
                per["running_mean"][i, j] = np.asarray(r_mean)[list(CHANNELS)]
                per["running_var"][i, j] = np.asarray(r_var)[list(CHANNELS)]
        for k, v in per.items():
            out[k].append(v.tolist())
    return out


def summarise(tracked: dict) -> dict:
    """Spread of batch means across widths, and batch-vs-running gap, in running-std units,
    averaged over features and the second half of the checkpoints."""
    half = len(tracked["steps"]) // 2
    bm = np.asarray(tracked["batch_mean"])[half:]
    rm = np.asarray(tracked["running_mean"])[half:]
    rv = np.asarray(tracked["running_var"])[half:]
    rs = np.sqrt(rv)
    bv = np.asarray(tracked["batch_var"])[half:]
    spread = (bm.max(axis=1) - bm.min(axis=1)) / rs[:, 0]
    var_spread = (bv.max(axis=1) - bv.min(axis=1)) / rv[:, 0]
    gap = np.abs(bm - rm) / rs
    return {"mean_spread_across_widths": float(spread.mean()), "var_spread_across_widths": float(var_spread.mean()),
            "batch_vs_running_gap": float(gap.mean()),
            "gap_per_width": {str(w): float(gap[:, i].mean()) for i, w in enumerate(WIDTHS)}}


def accuracies(run_dir: str, train_split: data.Split) -> dict:
    """Training- and test-set top-1 at the four widths, final checkpoint, eval mode."""
    sweep = runner.load_json(io.sweep_path(run_dir))
    test = {r["width"]: r["top1"] for r in sweep["rows"]}
    run = evaluation.restore_run(run_dir)
    acc = evaluation.accuracies(run.model, run.variables, train_split, run.info, WIDTHS,
                                run.config.eval_batch_size)
    return {"train": [100 * acc[w][0] for w in WIDTHS], "validation": [100 * test[w] for w in WIDTHS]}


def _plot(tracked: dict, path: str, layer: int = 2, channel: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(tracked), figsize=(4.2 * len(tracked), 6.5), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, (key, t) in enumerate(tracked.items()):
        steps = t["steps"]
        for row, stat in enumerate(("mean", "var")):
            ax = axes[row][col]
            batch = np.asarray(t[f"batch_{stat}"])[:, :, layer, channel]
            running = np.asarray(t[f"running_{stat}"])[:, :, layer, channel]
            for i, w in enumerate(WIDTHS):
                ax.plot(steps, batch[:, i], color=colors[i], label=f"batch, w={w:g}")
                if key == "snet" or i == 0:
                    ax.plot(steps, running[:, i], color=colors[i] if key == "snet" else "k", ls="--",
                            label=f"running, w={w:g}" if key == "snet" else "running (shared)")
            ax.set_title(f"{NAMES[key]}: {LAYERS[layer]} ch {CHANNELS[channel]} {stat}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("training step")
        axes[0][col].legend(fontsize=6)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    io.atomic_write(path, buffer.getvalue())


def report(seeds, workroot: str, epochs: int) -> str:
    """Reports the first seed's runs (statistics tracking needs one run per variant)."""
    seed = seeds[0]
    out = runner.results_dir("table1_bn_stats")
    tracked, summary, acc = {}, {}, {}
    for key in METHODS:
        run_dir = runner.workdir(runner.spec(key, seed), workroot, epochs)
        train_split = data.open_data(checkpoints.load_config(run_dir))[0]
        tracked[key] = track(run_dir, train_split)
        summary[key] = summarise(tracked[key])
        acc[key] = accuracies(run_dir, train_split)
    lines = ["| BatchNorm | " + " | ".join(f"train @{w:g}" for w in WIDTHS) + " | "
             + " | ".join(f"val @{w:g} (paper, MNIST)" for w in WIDTHS) + " |",
             "|---|" + "---|" * (2 * len(WIDTHS))]
    for key in METHODS:
        lines.append(f"| {NAMES[key]} | " + " | ".join(f"{a:.2f}" for a in acc[key]["train"]) + " | "
                     + " | ".join(f"{a:.2f} ({p:.2f})" for a, p in zip(acc[key]["validation"], PAPER_VALIDATION[key]))
                     + " |")
    lines += ["", "| BatchNorm | batch-mean spread across widths | batch-variance spread across widths |"
              " batch vs running mean gap | gap @1 | gap @0.75 | gap @0.5 | gap @0.25 |", "|---|---|---|---|---|---|---|---|"]
    for key in METHODS:
        s = summary[key]
        lines.append(f"| {NAMES[key]} | {s['mean_spread_across_widths']:.4f} | {s['var_spread_across_widths']:.4f} |"
                     f" {s['batch_vs_running_gap']:.4f} | "
                     + " | ".join(f"{s['gap_per_width'][str(w)]:.4f}" for w in WIDTHS) + " |")
    md = "\n".join(lines)
    io.atomic_write(os.path.join(out, "table1.md"), md + "\n")
    io.atomic_write(os.path.join(out, "table1.json"), json.dumps(
        {"seed": seed, "epochs": epochs, "widths": WIDTHS, "accuracy": acc, "paper_validation": PAPER_VALIDATION,
         "statistics_summary": summary}, indent=1))
    io.atomic_write(os.path.join(out, "stats.json"), json.dumps(
        {"layers": LAYERS, "channels": CHANNELS, "widths": WIDTHS, "tracked": tracked}))
    _plot(tracked, os.path.join(out, "figure2.png"))
    return md


def main() -> None:
    runner.main(__doc__, METHODS, report, runner.SEEDS[:1])


if __name__ == "__main__":
    main()
