"""Probe: how long a first sweep's costs take (``costs.width_costs``), per model.

    python experiments/costs_probe.py [--models=lenet3c1l,mobilenet_v2] [--sweep_repeats=0]

For each model in turn, in one process: the default config's sweep widths, and the
seconds of the first ``costs.width_costs`` call over all of them (abstract traces,
nothing computed). Name one model per run to time it in a fresh process. With
``--sweep_repeats=N``, also ``awn_jax.bench``'s sweep table for those widths: the
accuracy sweep and the widths' costs (cached by then) beside one full-width pass over
the same 10,000 random images (median of N), with random weights.

To compare two versions of the library, run the script by its path with each checkout
first on the path, ``PYTHONPATH=<checkout> python experiments/costs_probe.py`` (it
prints the awn_jax it imported), alternating them: the CPU's speed moves between runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import awn_jax
from awn_jax import config as config_lib, costs, data, models
from awn_jax.cli.bench import sweep_table
from awn_jax.models import channel_sizes
from awn_jax.widths import sweep_widths

CONFIGS = {"lenet3c1l": lambda: config_lib.lenet_config("fashion_mnist"),
           "mobilenet_v2": lambda: config_lib.mobilenet_config("cifar10")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--sweep_repeats", type=int, default=0,
                        help="time the accuracy sweep beside one full-width pass, median of this many (0: not)")
    args = parser.parse_args()
    print(f"awn_jax from {awn_jax.__file__}")
    for name in args.models.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(CONFIGS)}.")
        config = CONFIGS[name]()
        info = data.DATASETS[config.dataset]
        model = models.from_config(config, info.num_classes)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *info.image_shape)))
        widths = sweep_widths(config, channel_sizes(variables["params"]))
        start = time.perf_counter()
        result = costs.width_costs(model, variables, info.image_shape, widths)
        seconds = time.perf_counter() - start
        print(f"{name}: {len(widths)} widths, first width_costs call {seconds:.3f} s"
              f" (MACs summed over the widths: {sum(c.macs for c in result):,})")
        if args.sweep_repeats > 0:
            weights = model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape)))
            sweep_table(model, weights, info, widths, config.eval_batch_size, args.sweep_repeats)


if __name__ == "__main__":
    main()
