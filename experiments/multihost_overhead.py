"""Two processes against one process with two devices: step time, and the bytes a step communicates.

    python -m experiments.multihost_overhead --steps=60

Trains the same LeNet-3C1L run (real Fashion-MNIST, ``configs/lenet_fmnist.py:smoke``)
twice on this machine: as one process with two (simulated) CPU devices, and as two
processes on 127.0.0.1 with one device each, whose collectives go through Gloo over
TCP. The two compute the same numbers (tests/test_multihost.py); on one machine the
difference in time is the cost of crossing processes, not a speed-up. Prints the
median step time of each (warm-up steps excluded, from ``metrics.jsonl``) and the
bytes a data-parallel step all-reduces, from the model's size, so that the time on a
real interconnect can be predicted: a ring all-reduce sends and receives
``2 (n - 1) / n`` times the gradient's bytes per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from awn_jax import data, multihost
from awn_jax.config import lenet_config
from awn_jax.models import from_config

REPO = os.path.join(os.path.dirname(__file__), "..")

WARMUP_STEPS = 5


def _run(workdir: str, args: list[str], processes: int, devices: int) -> list[float]:
    """Trains as ``processes`` processes of ``devices`` devices each; seconds per step after the warm-up."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    port = multihost.free_port()

    def launch(i):
        return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                f"--process_id={i}"] if processes > 1 else []

    procs = [subprocess.Popen([sys.executable, "-m", "awn_jax.main", *args, f"--workdir={workdir}", *launch(i)],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"error: a training process failed:\n{err[-2000:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    batch = int(next(a.split("=")[1] for a in args if a.startswith("--config.batch_size=")))
    return [batch / r["images_per_second"] for r in records if r["kind"] == "train" and r["step"] > WARMUP_STEPS]


def gradient_bytes(config) -> int:
    """Bytes of one step's gradient all-reduce (float32 parameters, masked entries included)."""
    info = data.dataset_info(config)
    model = from_config(config, info.num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, *info.image_shape), np.float32)))
    return sum(4 * int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (the first 5 are warm-up)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--variant", default="awn", choices=("awn", "standard", "snet", "usnet"))
    a = parser.parse_args(argv)
    args = ["--config=configs/lenet_fmnist.py:smoke", f"--config.variant={a.variant}",
            f"--config.batch_size={a.batch_size}", f"--config.data.train_examples={a.steps * a.batch_size}",
            "--config.num_epochs=1", "--config.log_every_steps=1", "--config.eval_every_epochs=1",
            "--config.data.test_examples=1000", "--config.sweep.after_training=False"]
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name, processes, devices in (("1 process x 2 devices", 1, 2), ("2 processes x 1 device", 2, 1)):
            results[name] = float(np.median(_run(os.path.join(root, str(processes)), args, processes, devices)))
    config = lenet_config("fashion_mnist", "smoke")
    config.variant = a.variant
    size = gradient_bytes(config)
    base = results["1 process x 2 devices"]
    print(f"LeNet-3C1L {a.variant}, global batch {a.batch_size}, median of {a.steps - WARMUP_STEPS} steps:")
    for name, seconds in results.items():
        print(f"  {name}: {1000 * seconds:.1f} ms/step ({seconds / base:.2f}x)")
    print(f"  all-reduced per step: {size / 1e6:.3f} MB of gradients; a ring all-reduce over n processes sends"
          f" and receives 2(n-1)/n of that per process ({size / 1e6:.3f} MB at n=2, {1.75 * size / 1e6:.3f} MB"
          " at n=8), plus the BatchNorm moments and metrics (a few KB).")


if __name__ == "__main__":
    main()
