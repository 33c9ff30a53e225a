"""Probe: what an XLA:CPU flag changes in compile time and speed, measured in fresh processes.

    python experiments/xla_flags_probe.py [--flag=--xla_cpu_use_fusion_emitters=false]
        [--models=lenet3c1l,resnet20,mobilenet_v2] [--rounds=2] [--steps=5]

XLA reads its flags once per process, so each measurement is a child process. For each
round and model, one child runs with ``--flag`` and one with the flag at XLA's default
(``--default``, which must name the same flag), in alternating order; every child applies
the library's other flags (``runtime.tune_xla_cpu`` adds none that a child names) and no
compilation cache. A child times, for the model's
AWN+RS training config at batch 128 on random data:

- the train step's first call (compiling it, then one step) and its images/s
  (median of ``--steps``);
- inference at width 1 (batch 256): tracing and compiling it, and images/s (median of
  ``--steps``).

The table gives each figure per round, and the median ratio of the flag's figure to the
default's, over the rounds: the CPU's speed moves between runs, so only ratios from one
run compare.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time

CHILD_TIMEOUT_S = 900
FIGURES = (("train_first_call_s", "train step: first call (compile + 1 step), s"),
           ("train_images_per_s", "train step: images/s"),
           ("inference_compile_s", "inference w=1: lower + compile, s"),
           ("inference_images_per_s", "inference w=1: images/s"))


def _config(name: str):
    from awn_jax import config as config_lib

    if name == "lenet3c1l":
        config = config_lib.lenet_config("fashion_mnist")
    elif name == "mobilenet_v2":
        config = config_lib.mobilenet_config("cifar10")
    else:
        config = config_lib.resnet_config(name, "cifar10")
    config.widths.mode = "sandwich"  # AWN+RS: one trunk pass for the drawn widths
    config.batch_size = 128
    return config


def measure(name: str, steps_timed: int) -> dict[str, float]:
    """One model's four figures, measured in this process.

    Args:
      name: ``lenet3c1l``, ``mobilenet_v2`` or a ResNet (``resnet20``).
      steps_timed: train steps and inference passes per median.

    Returns:
      The figures by the keys of ``FIGURES``.
    """
    from awn_jax import runtime

    runtime.tune_xla_cpu()
    runtime.tune_host_allocator()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from awn_jax import data, optim, sharding, train
    from awn_jax.models import from_config
    from awn_jax.timing import median_seconds

    jax.config.update("jax_enable_compilation_cache", False)
    config = _config(name)
    info = data.dataset_info(config)
    model = from_config(config, info.num_classes)
    tx = optim.make_optimizer(config, 1000)
    mesh = sharding.data_mesh()
    state = train.initial_state(config, model, tx, info, mesh)
    jax.block_until_ready(state)
    step_fn = train.make_train_step(config, model, tx, info, mesh)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (128, *info.image_shape), dtype=np.uint8),
             "label": rng.integers(0, info.num_classes, 128).astype(np.int32)}
    start = time.perf_counter()
    state, _, _ = step_fn(state, batch, 0)
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    counter = iter(range(1, 10**9))

    def one_step():
        nonlocal state
        state, _, _ = step_fn(state, batch, next(counter))
        return state

    train_rate = 128 / median_seconds(one_step, steps_timed)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = jnp.zeros((256, *info.image_shape), jnp.float32)
    forward = jax.jit(lambda v, x: model.apply(v, x, width=1.0))
    start = time.perf_counter()
    compiled = forward.lower(variables, x).compile()
    compile_seconds = time.perf_counter() - start
    inference_rate = 256 / median_seconds(lambda: compiled(variables, x), steps_timed)
    return {"train_first_call_s": first, "train_images_per_s": train_rate,
            "inference_compile_s": compile_seconds, "inference_images_per_s": inference_rate}


def _child(name: str, flag: str, steps_timed: int) -> dict[str, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
    try:
        run = subprocess.run([sys.executable, __file__, "--child", f"--models={name}", f"--steps={steps_timed}"],
                             env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the {name} child with {flag} ran past {CHILD_TIMEOUT_S} s") from None
    lines = run.stdout.strip().splitlines()
    if run.returncode or not lines:
        raise SystemExit(f"the {name} child with {flag} failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    """Parses the command line; runs one child's measurement, or the alternating table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", default="--xla_cpu_use_fusion_emitters=false", help="the flag to measure")
    parser.add_argument("--default", default="--xla_cpu_use_fusion_emitters=true",
                        help="the same flag at XLA's default (named, so that tune_xla_cpu adds neither)")
    parser.add_argument("--models", default="lenet3c1l,resnet20,mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps and inference passes per figure")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.models, args.steps)))
        return
    if args.flag.split("=", 1)[0] != args.default.split("=", 1)[0]:
        parser.error(f"--default={args.default} names another flag than --flag={args.flag}; give the same flag"
                     " at XLA's default value, so that the two children differ in it alone")
    print(f"jaxlib {importlib.metadata.version('jaxlib')}; XLA_FLAGS from the environment:"
          f" {os.environ.get('XLA_FLAGS', '')!r}")
    print(f"| model | figure | round | {args.flag} | {args.default} | ratio |\n|---|---|---|---|---|---|")
    for name in args.models.split(","):
        results = []
        for i in range(args.rounds):
            order = (args.flag, args.default) if i % 2 == 0 else (args.default, args.flag)
            got = {flag: _child(name, flag, args.steps) for flag in order}
            results.append((got[args.flag], got[args.default]))
        for key, label in FIGURES:
            ratios = [new[key] / old[key] for new, old in results]
            for i, (new, old) in enumerate(results):
                print(f"| {name} | {label} | {i + 1} | {new[key]:,.2f} | {old[key]:,.2f} | {ratios[i]:.2f}x |")
            print(f"| {name} | {label} | median | | | {statistics.median(ratios):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
