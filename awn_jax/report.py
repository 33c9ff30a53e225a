"""What a sweep tells: AUCs, plots, comparisons of sweeps, and the width for a budget.

Everything here reads sweep results (as ``awn_jax.sweep.sweep`` returns them or
``sweep.json`` holds them); nothing restores a model.
"""

from __future__ import annotations

import json
import os
from io import BytesIO
from typing import Any, Sequence

import numpy as np

from awn_jax import checkpoints, costs, io
from awn_jax.widths import REFERENCE_WIDTHS

__all__ = [
    "auc_trapezoid",
    "auc_reference_mean",
    "label",
    "plot",
    "figure_png",
    "load_result",
    "compare",
    "choose_width",
    "format_summary",
    "format_choice",
]


def auc_trapezoid(widths: Sequence[float], accuracies: Sequence[float]) -> float:
    """Area under the width-accuracy curve, normalised by the width range."""
    w = np.asarray(widths, np.float64)
    a = np.asarray(accuracies, np.float64)
    if w.ndim != 1 or w.shape != a.shape or len(w) < 2:
        raise ValueError("auc_trapezoid needs matching 1-D widths and accuracies, at least two.")
    order = np.argsort(w)
    w, a = w[order], a[order]
    if w[-1] == w[0]:
        raise ValueError("auc_trapezoid needs at least two distinct widths.")
    return float(np.sum((w[1:] - w[:-1]) * (a[1:] + a[:-1]) / 2) / (w[-1] - w[0]))


def auc_reference_mean(widths: Sequence[float], accuracies: Sequence[float]) -> float:
    """The reference code's AUC: the plain mean of accuracy at its 10 test widths."""
    by_width = {round(float(w), 6): float(a) for w, a in zip(widths, accuracies)}
    keys = [round(w, 6) for w in REFERENCE_WIDTHS]
    missing = [k for k in keys if k not in by_width]
    if missing:
        raise ValueError(f"accuracies at the reference widths {missing} are missing.")
    return float(np.mean([by_width[k] for k in keys]))


def label(summary: dict) -> str:
    """The method's name for a legend: the variant, and US-Net's calibrated widths."""
    name = {"awn": "AWN", "snet": "S-Net", "usnet": "US-Net", "standard": "standard BN"}[summary["variant"]]
    if summary.get("calibrated_widths"):
        name += f" ({summary['calibrated_widths']}w)"
    return name


def plot(results: Sequence[dict], two_panels: bool, labels: Sequence[str] | None = None) -> bytes:
    """PNG bytes: accuracy vs width (and, with ``two_panels``, vs MACs) of each sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if two_panels else 1, figsize=(11 if two_panels else 6, 4), squeeze=False)
    for i, result in enumerate(results):
        s, rows = result["summary"], result["rows"]
        name = f"{labels[i] if labels else label(s)}  AUC {100 * s['auc_reference_mean']:.2f}"
        widths = [r["width"] for r in rows]
        tops = [100 * r["top1"] for r in rows]
        axes[0][0].plot(widths, tops, marker=".", label=name)
        if two_panels:
            axes[0][1].plot([r["macs"] / 1e6 for r in rows], tops, marker=".", label=name)
    axes[0][0].set(xlabel="width", ylabel="top-1 accuracy (%)", title="accuracy vs width")
    if two_panels:
        axes[0][1].set(xlabel="MMACs per image", ylabel="top-1 accuracy (%)", title="accuracy vs MACs")
    return figure_png(fig)


def figure_png(fig: Any, legend_size: int = 8) -> bytes:
    """A matplotlib figure as PNG bytes, every axis with a grid and a legend; the figure is closed."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def load_result(path: str) -> dict:
    """A sweep from a workdir (its ``eval/``, else its first ``eval*/``), an eval directory or a sweep.json.

    Raises:
      CheckpointError: no sweep there.
    """
    candidate = io.sweep_path(path) if os.path.isdir(path) else path
    if os.path.isdir(path) and not os.path.exists(candidate):
        found = sorted(d for d in os.listdir(path) if d.startswith("eval") and
                       os.path.exists(os.path.join(path, d, "sweep.json")))
        if found:
            candidate = os.path.join(path, found[0], "sweep.json")
    try:
        with open(candidate) as f:
            result = json.load(f)
    except FileNotFoundError:
        raise checkpoints.CheckpointError(
            f"no sweep at {candidate}: run python -m awn_jax.evaluate --workdir=... first."
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise checkpoints.CheckpointError(f"{candidate} is not a valid sweep.json ({e}); sweep again.") from None
    missing = [k for k in ("summary", "rows") if not isinstance(result, dict) or k not in result]
    if missing:
        raise checkpoints.CheckpointError(
            f"{candidate} lacks {' and '.join(missing)}: it was edited or written by another program; sweep again."
        )
    return result


def compare(paths: Sequence[str], out: str | None = None, labels: Sequence[str] | None = None) -> str:
    """Overlays several sweeps (workdirs, eval dirs or sweep.json files) and returns the AUC table.

    Args:
      paths: the sweeps.
      out: write the overlay plot (PNG) here.
      labels: one legend label per sweep (default: the variant's name).
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"compare got {len(labels)} labels for {len(paths)} sweeps; give one per sweep.")
    results = [load_result(p) for p in paths]
    lines = ["| run | variant | AUC (10-width mean) | AUC (trapezoid) | size (KiB) | step |",
             "|---|---|---|---|---|---|"]
    for i, (p, r) in enumerate(zip(paths, results)):
        s = r["summary"]
        lines.append(f"| {p} | {labels[i] if labels else label(s)} | {100 * s['auc_reference_mean']:.2f} | "
                     f"{100 * s['auc_trapezoid']:.2f} | {s['model_bytes'] / 1024:.1f} | {s['step']} |")
    if out:
        io.atomic_write(out, plot(results, two_panels=False, labels=labels))
    return "\n".join(lines)


def choose_width(result: dict, *, budget_macs: float | None = None, budget_ms: float | None = None) -> dict:
    """The widest swept width within a budget, and what the sweep measured there.

    Args:
      result: a sweep.
      budget_macs: multiply-accumulates per image.
      budget_ms: measured milliseconds per batch of the sweep's ``eval_batch_size``
        on the device that ran the sweep.

    Returns:
      The sweep's row at that width (``width``, ``top1``, ``macs``, ``batch_ms``, ...).

    Raises:
      ValueError: no budget or both given, no latency measured, or no width fits (the
        message names the cheapest width's cost).
    """
    if (budget_macs is None) == (budget_ms is None):
        raise ValueError("give exactly one budget: --budget_macs or --budget_ms.")
    rows = {r["width"]: r for r in result["rows"]}
    if budget_macs is not None:
        width = costs.width_for_budget({w: r["macs"] for w, r in rows.items()}, budget_macs, " MACs")
    else:
        if any(r.get("batch_ms") is None for r in rows.values()):
            raise ValueError(
                "this sweep measured no latency (throughput_repeats 0, or a sweep from an older"
                " version): sweep again with --throughput_repeats=3 (with a budget too, it replaces the saved sweep)."
            )
        width = costs.width_for_budget({w: r["batch_ms"] for w, r in rows.items()}, budget_ms, " ms")
    return rows[width]


def format_summary(result: dict) -> str:
    """A short human-readable summary of one sweep."""
    s = result["summary"]
    return (
        f"{s['model']}/{label(s)} on {s['dataset']} at step {s['step']}: {s['num_widths']} widths,"
        f" AUC {100 * s['auc_reference_mean']:.2f} (10-width mean), {100 * s['auc_trapezoid']:.2f}"
        f" (trapezoid); sweep {s['sweep_seconds']:.1f} s (accuracy {s['accuracy_seconds']:.1f} s),"
        f" {s['programs_compiled']} programs compiled, {s['programs_from_cache']} from cache;"
        f" model {s['model_bytes'] / 1024:.1f} KiB."
    )


def format_choice(result: dict, row: dict) -> str:
    """One line on the width :func:`choose_width` picked."""
    ms = "" if row.get("batch_ms") is None else (
        f", {row['batch_ms']:.2f} ms per batch of {result['summary'].get('eval_batch_size', '?')}")
    return (f"width {row['width']:g} ({row['channels']} channels in the last layer): "
            f"{row['macs'] / 1e6:.2f} MMACs per image{ms}; top-1 {100 * row['top1']:.2f}% "
            f"measured by the sweep at step {result['summary']['step']}.")
