"""Runs of the experiments: what each trains, and launching them through the CLI.

Every run is an ordinary ``python -m awn_jax.main`` invocation on
``configs/lenet_fmnist.py`` with a few overrides, in its own workdir under the
work root. A run whose sweeps already exist is skipped; an unfinished one resumes
from its last checkpoint, so a script can be stopped and started again at will.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence

from awn_jax import data, io
from awn_jax.config import lenet_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")
DEFAULT_WORKROOT = os.path.join(REPO, "workdirs", "experiments")
CONFIG = "configs/lenet_fmnist.py"
SEEDS = (2019, 2020, 2021)
# What configs/lenet_fmnist.py trains with (the runs override only epochs, seed, checkpoints, widths).
_BASE = lenet_config("fashion_mnist")
US_NET_CALIBRATIONS = tuple(_BASE.sweep.calibrations)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run.

    Attributes:
      method: the method's name in the paper's tables (e.g. ``"AWN+RS"``).
      key: a short file-system name for the method.
      overrides: ``--config.FIELD=VALUE`` overrides beyond epochs and seed.
      seed: ``config.seed``.
    """

    method: str
    key: str
    overrides: tuple[tuple[str, str], ...]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.key}_seed{self.seed}"

    @property
    def variant(self) -> str:
        return dict(self.overrides)["variant"]

    def calibrations(self) -> tuple[int, ...]:
        """The sweeps main writes: one per calibration for US-Net, else one."""
        return US_NET_CALIBRATIONS if self.variant == "usnet" else (0,)


_FOUR = "(1.0,0.75,0.5,0.25)"
METHODS = {
    # key: (paper name, overrides)
    "awn": ("AWN", (("variant", "awn"), ("widths.mode", "fixed"), ("widths.fixed", _FOUR))),
    "snet": ("S-Net", (("variant", "snet"), ("widths.mode", "fixed"), ("widths.fixed", _FOUR))),
    "awn_rs": ("AWN+RS", (("variant", "awn"), ("widths.mode", "sandwich"))),
    "usnet": ("US-Net", (("variant", "usnet"), ("widths.mode", "sandwich"))),
    "standard": ("standard BN", (("variant", "standard"), ("widths.mode", "fixed"), ("widths.fixed", _FOUR))),
    "awn_full": ("triangular, full width only", (("variant", "awn"), ("widths.mode", "fixed"), ("widths.fixed", "(1.0,)"))),
    "standard_full": ("standard, full width only", (("variant", "standard"), ("widths.mode", "fixed"), ("widths.fixed", "(1.0,)"))),
}


def spec(key: str, seed: int) -> RunSpec:
    """The run of method ``key`` (a key of :data:`METHODS`) with ``seed``."""
    method, overrides = METHODS[key]
    return RunSpec(method, key, overrides, seed)


def workdir(run: RunSpec, workroot: str, epochs: int) -> str:
    return os.path.join(workroot, f"e{epochs}", run.name)


def is_done(run: RunSpec, run_dir: str) -> bool:
    return all(os.path.exists(io.sweep_path(run_dir, c)) for c in run.calibrations())


def command(run: RunSpec, run_dir: str, epochs: int, checkpoints: int) -> list[str]:
    """The CLI command of a run; ``checkpoints`` evenly spaced checkpoints are kept."""
    steps_per_epoch = data.epoch_examples(_BASE) // _BASE.batch_size
    every = max(1, epochs * steps_per_epoch // checkpoints)
    args = [sys.executable, "-m", "awn_jax.main", f"--config={CONFIG}", f"--workdir={run_dir}",
            f"--config.num_epochs={epochs}", f"--config.seed={run.seed}",
            f"--config.checkpoint_every_steps={every}", f"--config.keep_checkpoints={checkpoints + 1}"]
    return args + [f"--config.{k}={v}" for k, v in run.overrides]


def train(runs: Iterable[RunSpec], workroot: str, epochs: int, checkpoints: int = 20) -> None:
    """Trains and sweeps every run not done yet, one after another, logging to ``<run>/log.txt``.

    The wall time of each invocation is added to ``<run>/wall_seconds.json``.

    Raises:
      RuntimeError: a run's command failed; its log's tail is in the message.
    """
    for run in runs:
        run_dir = workdir(run, workroot, epochs)
        if is_done(run, run_dir):
            continue
        os.makedirs(run_dir, exist_ok=True)
        cmd = command(run, run_dir, epochs, checkpoints)
        print(f"[{time.strftime('%H:%M:%S')}] {run.name}: {' '.join(cmd[1:])}", flush=True)
        log_path = os.path.join(run_dir, "log.txt")
        start = time.time()
        with open(log_path, "a") as log:
            code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _add_wall_seconds(run_dir, time.time() - start)
        if code != 0:
            with open(log_path) as f:
                tail = "".join(f.readlines()[-15:])
            raise RuntimeError(f"{run.name} failed (exit {code}); {log_path} ends with:\n{tail}")


def _add_wall_seconds(run_dir: str, seconds: float) -> None:
    path = os.path.join(run_dir, "wall_seconds.json")
    total = load_json(path)["seconds"] if os.path.exists(path) else 0.0
    io.atomic_write(path, json.dumps({"seconds": total + seconds}))


def wall_seconds(run_dir: str) -> float:
    """Wall time of a run over all its invocations (training and sweeps)."""
    return load_json(os.path.join(run_dir, "wall_seconds.json"))["seconds"]


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def results_dir(name: str) -> str:
    path = os.path.join(RESULTS, name)
    os.makedirs(path, exist_ok=True)
    return path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    import numpy as np

    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def main(description: str, methods: Sequence[str], report: Callable[[list[int], str, int], str],
         default_seeds: Sequence[int] = SEEDS) -> None:
    """The command line every report script shares: train what is missing, then report."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (the paper: 100)")
    parser.add_argument("--seeds", default=",".join(map(str, default_seeds)), help="comma-separated seeds")
    parser.add_argument("--workroot", default=DEFAULT_WORKROOT, help="where the run workdirs are")
    parser.add_argument("--report_only", action="store_true", help="train nothing; report the finished runs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        train([spec(k, s) for s in seeds for k in methods], args.workroot, args.epochs)
    print(report(seeds, args.workroot, args.epochs))
