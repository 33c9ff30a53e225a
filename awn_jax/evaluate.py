"""Evaluation: restore a checkpoint, sweep every width, AUC, cost per width, plots.

    python -m awn_jax.evaluate --workdir=workdirs/awn
    python -m awn_jax.evaluate --workdir=workdirs/usnet --calibration=10
    python -m awn_jax.evaluate --compare=workdirs/awn,workdirs/snet --out=fig5.png
    python -m awn_jax.evaluate --workdir=workdirs/awn --budget_macs=3e6   # widest width that fits

For AWN the whole width-accuracy curve comes from one full-width trunk pass per
batch plus one classifier head per width (hidden features at a narrower width are
channel prefixes of the full pass); ``--one_pass=False`` evaluates each width with
its own program instead (the two agree: tests/test_evaluate.py). Every width's
program is compiled once; the persistent compilation cache makes a second sweep
compile nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from awn_jax import calibration as calib_lib
from awn_jax import checkpoints, costs, data, runtime, train
from awn_jax.config import smallest_trained_width, validate
from awn_jax.models import channel_sizes
from awn_jax.widths import distinct_widths, num_channels, reference_widths, width_grid

__all__ = [
    "Run",
    "restore_run",
    "sweep_widths",
    "auc_trapezoid",
    "auc_reference_mean",
    "accuracies_per_width",
    "accuracies_one_pass",
    "sweep",
    "compare",
    "choose_width",
    "enable_compilation_cache",
]

REFERENCE_WIDTHS = tuple(round(w, 6) for w in reference_widths(10, 0.25, 1.0))


@dataclasses.dataclass
class Run:
    """A restored training run."""

    config: ml_collections.ConfigDict
    model: Any
    variables: dict
    step: int
    info: data.DatasetInfo
    checkpoint_bytes: int


def enable_compilation_cache(directory: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache (every program, however fast to compile)."""
    directory = directory or os.environ.get(
        "AWN_JAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "awn_jax", "xla")
    )
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


class _CompileCounter:
    """Counts backend compilations and persistent-cache hits while active."""

    _instance = None

    def __init__(self):
        self.misses = 0
        self.hits = 0
        self.active = False
        jax.monitoring.register_event_listener(self._on_event)

    @classmethod
    def get(cls) -> "_CompileCounter":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_event(self, name, **kwargs):
        if not self.active:
            return
        if name == "/jax/compilation_cache/cache_misses":
            self.misses += 1
        elif name == "/jax/compilation_cache/cache_hits":
            self.hits += 1


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def restore_run(workdir: str, step: int | None = None) -> Run:
    """Restores the latest (or ``step``'s) checkpoint with the config saved beside it.

    Raises:
      CheckpointError: no config/checkpoint, or one that does not fit the model.
    """
    if not os.path.isdir(workdir):
        raise checkpoints.CheckpointError(f"workdir {workdir} does not exist.")
    config = checkpoints.load_config(workdir)
    try:
        validate(config)
    except ValueError as e:
        raise checkpoints.CheckpointError(f"{workdir}/config.json is not a valid config: {e}") from None
    info = data.get_info(config.dataset)
    trainer = train.Trainer(config, info, steps_per_epoch=1, devices=jax.devices()[:1])
    ckpt = checkpoints.Checkpointer(workdir)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise checkpoints.CheckpointError(
                f"no checkpoint in {ckpt.directory}: train first (python -m awn_jax.main ...)."
            )
        if step not in ckpt.manager.all_steps():
            raise checkpoints.CheckpointError(
                f"no checkpoint for step {step} in {ckpt.directory}; have {ckpt.manager.all_steps()}."
            )
        state = ckpt.restore(trainer.abstract_state(), step)
    finally:
        ckpt.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return Run(config, trainer.model, variables, int(step), info,
               _dir_bytes(os.path.join(ckpt.directory, str(step))))


def sweep_widths(config: ml_collections.ConfigDict, sizes: Sequence[int]) -> list[float]:
    """Widths of the sweep: every distinct configuration (LeNet) or a grid (MobileNetV2),
    plus the 10 reference widths, within ``[w_min, 1]``."""
    w_min = min(smallest_trained_width(config), 0.25)
    if config.sweep.grid_step > 0:
        widths = width_grid(w_min, 1.0, config.sweep.grid_step)
    else:
        widths = distinct_widths(sizes, w_min, 1.0)
    return sorted(set(widths) | {w for w in REFERENCE_WIDTHS if w >= w_min})


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
    missing = [w for w in REFERENCE_WIDTHS if w not in by_width]
    if missing:
        raise ValueError(f"accuracies at the reference widths {missing} are missing.")
    return float(np.mean([by_width[w] for w in REFERENCE_WIDTHS]))


def _topk_correct(logits, labels, mask):
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    top1 = jnp.sum((top5[..., 0] == labels) * mask)
    return top1, jnp.sum(jnp.any(top5 == labels[..., None], axis=-1) * mask)


def _prepared_batches(split: data.Split, info: data.DatasetInfo, batch_size: int):
    preprocess = jax.jit(lambda im: data.preprocess(im, info))
    for batch in data.eval_batches(split, batch_size):
        yield preprocess(batch["image"]), jnp.asarray(batch["label"]), jnp.asarray(batch["mask"])


def accuracies_per_width(
    model: Any, variables: dict, split: data.Split, info: data.DatasetInfo,
    widths: Sequence[float], batch_size: int,
) -> dict[float, tuple[float, float]]:
    """Top-1 and top-5 at each width, one compiled program per width."""
    programs = {
        w: jax.jit(lambda v, x, y, m, w=w: _topk_correct(model.apply(v, x, width=w), y, m))
        for w in widths
    }
    totals = {w: np.zeros(2) for w in widths}
    for images, labels, mask in _prepared_batches(split, info, batch_size):
        for w in widths:
            totals[w] += np.asarray(programs[w](variables, images, labels, mask))
    return {w: (t[0] / len(split), t[1] / len(split)) for w, t in totals.items()}


def accuracies_one_pass(
    model: Any, variables: dict, split: data.Split, info: data.DatasetInfo,
    widths: Sequence[float], batch_size: int,
) -> dict[float, tuple[float, float]]:
    """Top-1 and top-5 at every width from one full-width trunk pass per batch (AWN only)."""
    if model.variant != "awn":
        raise ValueError(
            f"the one-pass sweep needs prefix-invariant features (AWN); {model.variant!r}"
            " features change with width: use the per-width sweep."
        )
    sample = jnp.zeros((1, *info.image_shape), jnp.float32)
    size = jax.eval_shape(lambda: model.apply(variables, sample, method=model.features)).shape[-1]
    counts = jnp.asarray([num_channels(w, size) for w in widths], jnp.int32)

    @jax.jit
    def correct(v, x, y, m):
        feats = model.apply(v, x, width=1.0, method=model.features)
        channel = jnp.arange(size)

        def head(count):
            logits = model.apply(v, feats * (channel < count).astype(feats.dtype), method=model.classify)
            return jnp.stack(_topk_correct(logits, y, m))

        return jax.lax.map(head, counts)

    totals = np.zeros((len(widths), 2))
    for images, labels, mask in _prepared_batches(split, info, batch_size):
        totals += np.asarray(correct(variables, images, labels, mask))
    return {w: (t[0] / len(split), t[1] / len(split)) for w, t in zip(widths, totals)}


def _throughput(model, variables, info, widths, batch_size, repeats) -> dict[float, float | None]:
    """Inference images/s at each width: median of ``repeats`` timed batches after warm-up
    (None when ``repeats`` is 0)."""
    if repeats <= 0:
        return {w: None for w in widths}
    x = jnp.zeros((batch_size, *info.image_shape), jnp.float32)
    out = {}
    for w in widths:
        forward = jax.jit(lambda v, x, w=w: model.apply(v, x, width=w))
        forward(variables, x).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(variables, x).block_until_ready()
            times.append(time.perf_counter() - start)
        out[w] = batch_size / float(np.median(times))
    return out


def _calibrated_variables(run: Run, num: int, train_split: data.Split | None, workdir: str):
    """US-Net variables calibrated at ``num`` widths: loaded if stored for this step, else computed and stored."""
    c = run.config
    widths = calib_lib.calibration_widths(num, smallest_trained_width(c))
    model = run.model.clone(bn_widths=widths)
    sample = jnp.zeros((1, *run.info.image_shape), jnp.float32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), sample))["batch_stats"]
    stored = calib_lib.load_calibration(workdir, num, run.step, target)
    if stored is not None:
        return model, {"params": run.variables["params"], "batch_stats": stored[1]}
    if train_split is None:
        train_split = train.load_data(c)[0]
    batches = []
    for step, batch in data.train_batches(train_split, c.batch_size, c.seed):
        if step >= c.sweep.calibration_batches:
            break
        rng = jax.random.fold_in(jax.random.key(c.seed), step)
        batches.append(data.preprocess(jnp.asarray(batch["image"]), run.info, rng))
    variables = calib_lib.calibrate(model, run.variables["params"], run.variables["batch_stats"],
                                    batches, widths)
    calib_lib.save_calibration(workdir, num, widths, run.step, variables["batch_stats"])
    return model, variables


def sweep(
    workdir: str,
    *,
    step: int | None = None,
    calibration: int = 0,
    one_pass: bool | None = None,
    throughput_repeats: int | None = None,
    splits: tuple[data.Split, data.Split] | None = None,
    test_examples: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluates a run at every sweep width and writes ``<workdir>/eval*/sweep.{json,csv,png}``.

    Args:
      workdir: a training workdir.
      step: checkpoint step (default: the latest).
      calibration: US-Net only: calibrate BatchNorm at this many widths first
        (0: the shared training statistics).
      one_pass: AWN's one-pass sweep (default: on for AWN).
      throughput_repeats: timed batches per width (default ``config.sweep.throughput_repeats``).
      splits: in-memory ``(train, test)`` splits instead of loading the dataset.
      test_examples: evaluate the first N test images (0: all; default: the run's config).
      write: write the result files.

    Returns:
      ``{"summary": {...}, "rows": [...]}`` as written to ``sweep.json``.
    """
    counter = _CompileCounter.get()
    counter.misses = counter.hits = 0
    counter.active = True
    start = time.perf_counter()
    try:
        run = restore_run(workdir, step)
        c = run.config
        if calibration and c.variant != "usnet":
            raise ValueError(f"--calibration is for US-Net; this run is {c.variant!r}.")
        if splits is None and test_examples is not None:
            c.data.test_examples = test_examples
        train_split, test_split = splits if splits is not None else (None, train.load_data(c)[1])
        model, variables = run.model, run.variables
        if calibration:
            model, variables = _calibrated_variables(run, calibration, train_split, workdir)
        sample = jnp.zeros((1, *run.info.image_shape), jnp.float32)
        widths = sweep_widths(c, channel_sizes(run.variables["params"]))
        use_one_pass = (c.variant == "awn") if one_pass is None else one_pass
        accuracy_fn = accuracies_one_pass if use_one_pass else accuracies_per_width
        eval_start = time.perf_counter()
        acc = accuracy_fn(model, variables, test_split, run.info, widths, c.eval_batch_size)
        accuracy_seconds = time.perf_counter() - eval_start
        repeats = c.sweep.throughput_repeats if throughput_repeats is None else throughput_repeats
        speed = _throughput(model, variables, run.info, widths, c.eval_batch_size, repeats)
        width_costs = costs.width_costs(model, variables, run.info.image_shape, widths)
        feature_size = jax.eval_shape(lambda: model.apply(variables, sample, method=model.features)).shape[-1]
    finally:
        counter.active = False
    rows = [
        {"width": w, "channels": num_channels(w, feature_size), "top1": acc[w][0], "top5": acc[w][1],
         "params": wc.params, "macs": wc.macs, "images_per_second": speed[w],
         "batch_ms": None if speed[w] is None else 1000 * c.eval_batch_size / speed[w],
         "reference_width": round(w, 6) in REFERENCE_WIDTHS}
        for w, wc in zip(widths, width_costs)
    ]
    tops = [r["top1"] for r in rows]
    summary = {
        "workdir": os.path.abspath(workdir), "model": c.model, "variant": c.variant,
        "dataset": c.dataset, "step": run.step, "calibrated_widths": calibration,
        "num_widths": len(rows), "test_examples": len(test_split), "eval_batch_size": c.eval_batch_size,
        "auc_trapezoid": auc_trapezoid(widths, tops), "auc_reference_mean": auc_reference_mean(widths, tops),
        "one_pass": use_one_pass, "model_bytes": costs.model_size_bytes(variables),
        "checkpoint_bytes_on_disk": run.checkpoint_bytes, "accuracy_seconds": accuracy_seconds,
        "sweep_seconds": time.perf_counter() - start, "programs_compiled": counter.misses,
        "programs_from_cache": counter.hits,
    }
    result = {"summary": summary, "rows": rows}
    if write:
        _write_outputs(_eval_dir(workdir, calibration), result)
    return result




def _eval_dir(workdir: str, calibration: int) -> str:
    return os.path.join(workdir, "eval" if not calibration else f"eval_calibrated_{calibration}w")


def _write_outputs(directory: str, result: dict) -> None:
    """sweep.json, sweep.csv and sweep.png, each written atomically."""
    os.makedirs(directory, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(result["rows"][0]))
    writer.writeheader()
    writer.writerows(result["rows"])
    png = _plot([result], two_panels=True)
    checkpoints.atomic_write(os.path.join(directory, "sweep.csv"), text.getvalue())
    checkpoints.atomic_write(os.path.join(directory, "sweep.png"), png)
    checkpoints.atomic_write(os.path.join(directory, "sweep.json"), json.dumps(result, indent=1))


def _label(summary: dict) -> str:
    name = {"awn": "AWN", "snet": "S-Net", "usnet": "US-Net", "standard": "standard BN"}[summary["variant"]]
    if summary.get("calibrated_widths"):
        name += f" ({summary['calibrated_widths']}w)"
    return name


def _plot(results: Sequence[dict], two_panels: bool, labels: Sequence[str] | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if two_panels else 1, figsize=(11 if two_panels else 6, 4), squeeze=False)
    for i, result in enumerate(results):
        s, rows = result["summary"], result["rows"]
        label = f"{labels[i] if labels else _label(s)}  AUC {100 * s['auc_reference_mean']:.2f}"
        widths = [r["width"] for r in rows]
        tops = [100 * r["top1"] for r in rows]
        axes[0][0].plot(widths, tops, marker=".", label=label)
        if two_panels:
            axes[0][1].plot([r["macs"] / 1e6 for r in rows], tops, marker=".", label=label)
    axes[0][0].set(xlabel="width", ylabel="top-1 accuracy (%)", title="accuracy vs width")
    if two_panels:
        axes[0][1].set(xlabel="MMACs per image", ylabel="top-1 accuracy (%)", title="accuracy vs MACs")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _load_result(path: str) -> dict:
    candidate = os.path.join(path, "eval", "sweep.json") if os.path.isdir(path) else path
    if os.path.isdir(path) and not os.path.exists(candidate):
        found = sorted(d for d in os.listdir(path) if d.startswith("eval") and
                       os.path.exists(os.path.join(path, d, "sweep.json")))
        if found:
            candidate = os.path.join(path, found[0], "sweep.json")
    try:
        with open(candidate) as f:
            return json.load(f)
    except FileNotFoundError:
        raise checkpoints.CheckpointError(
            f"no sweep at {candidate}: run python -m awn_jax.evaluate --workdir=... first."
        ) from None


def compare(paths: Sequence[str], out: str | None = None, labels: Sequence[str] | None = None) -> str:
    """Overlays several sweeps (workdirs, eval dirs or sweep.json files) and returns the AUC table.

    Args:
      paths: the sweeps.
      out: write the overlay plot (PNG) here.
      labels: one legend label per sweep (default: the variant's name).
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"compare got {len(labels)} labels for {len(paths)} sweeps; give one per sweep.")
    results = [_load_result(p) for p in paths]
    lines = ["| run | variant | AUC (10-width mean) | AUC (trapezoid) | size (KiB) | step |", "|---|---|---|---|---|---|"]
    for i, (p, r) in enumerate(zip(paths, results)):
        s = r["summary"]
        lines.append(f"| {p} | {labels[i] if labels else _label(s)} | {100 * s['auc_reference_mean']:.2f} | "
                     f"{100 * s['auc_trapezoid']:.2f} | {s['model_bytes'] / 1024:.1f} | {s['step']} |")
    if out:
        checkpoints.atomic_write(out, _plot(results, two_panels=False, labels=labels))
    return "\n".join(lines)


def choose_width(result: dict, *, budget_macs: float | None = None, budget_ms: float | None = None) -> dict:
    """The widest swept width within a budget, and what the sweep measured there.

    Args:
      result: a sweep (as :func:`sweep` returns or ``sweep.json`` holds).
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
                " version): sweep again with --throughput_repeats=3."
            )
        width = costs.width_for_budget({w: r["batch_ms"] for w, r in rows.items()}, budget_ms, " ms")
    return rows[width]


def format_summary(result: dict) -> str:
    """A short human-readable summary of one sweep."""
    s = result["summary"]
    return (
        f"{s['model']}/{_label(s)} on {s['dataset']} at step {s['step']}: {s['num_widths']} widths,"
        f" AUC {100 * s['auc_reference_mean']:.2f} (10-width mean), {100 * s['auc_trapezoid']:.2f}"
        f" (trapezoid); sweep {s['sweep_seconds']:.1f} s (accuracy {s['accuracy_seconds']:.1f} s),"
        f" {s['programs_compiled']} programs compiled, {s['programs_from_cache']} from cache;"
        f" model {s['model_bytes'] / 1024:.1f} KiB."
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: sweep a workdir, or compare several."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m awn_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="training workdir to sweep")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--calibration", type=int, default=0,
                        help="US-Net: calibrate BatchNorm at this many widths (paper: 4, 10, 20)")
    parser.add_argument("--one_pass", choices=["auto", "true", "false"], default="auto",
                        help="AWN one-pass sweep (auto: on for AWN)")
    parser.add_argument("--throughput_repeats", type=int, default=None,
                        help="timed batches per width for images/s (0: skip)")
    parser.add_argument("--test_examples", type=int, default=None,
                        help="first N test images (0: all; default: as in training)")
    parser.add_argument("--compare", default=None, help="comma-separated workdirs or sweep.json files")
    parser.add_argument("--out", default=None, help="with --compare: write the overlay plot here")
    parser.add_argument("--budget_macs", type=float, default=None,
                        help="pick the widest width within this many MACs per image (reuses the sweep if saved)")
    parser.add_argument("--budget_ms", type=float, default=None,
                        help="pick the widest width whose measured time per eval batch fits (reuses the sweep)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    runtime.tune_host_allocator()
    enable_compilation_cache()
    try:
        if args.compare:
            print(compare(args.compare.split(","), args.out))
            return 0
        if not args.workdir:
            parser.error("give --workdir (or --compare)")
        budget = args.budget_macs is not None or args.budget_ms is not None
        saved = os.path.join(_eval_dir(args.workdir, args.calibration), "sweep.json")
        if budget and args.step is None and os.path.exists(saved):
            result = _load_result(saved)
        else:
            one_pass = {"auto": None, "true": True, "false": False}[args.one_pass]
            result = sweep(args.workdir, step=args.step, calibration=args.calibration, one_pass=one_pass,
                           throughput_repeats=args.throughput_repeats, test_examples=args.test_examples)
            print(format_summary(result))
            print(f"wrote {os.path.dirname(saved)}/sweep.json, sweep.csv, sweep.png")
        if budget:
            row = choose_width(result, budget_macs=args.budget_macs, budget_ms=args.budget_ms)
            ms = "" if row.get("batch_ms") is None else f", {row['batch_ms']:.2f} ms per batch of" \
                f" {result['summary'].get('eval_batch_size', '?')}"
            print(f"width {row['width']:g} ({row['channels']} channels in the last layer): "
                  f"{row['macs'] / 1e6:.2f} MMACs per image{ms}; top-1 {100 * row['top1']:.2f}% "
                  f"measured by the sweep at step {result['summary']['step']}.")
    except (checkpoints.CheckpointError, data.DataError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
