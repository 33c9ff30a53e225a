"""Export the sub-network at one width as a plain fixed-width Flax model.

The any-width model stores full-width parameters and slices (and, for AWN, masks)
them at every call. A deployment that needs one width wants none of that: this
module runs the model once at width ``w``, collects the arrays each layer actually
used (the ``effective`` collection: masks folded into the kernels, channels
sliced, BatchNorm statistics of that width), and loads them into an ordinary
network of ``flax.linen.Conv``/``BatchNorm``/``Dense`` layers with those channel
counts::

    plain, plain_vars = export.export(model, variables, (28, 28, 1), width=0.5)
    logits = plain.apply(plain_vars, images)   # == model.apply(variables, images, width=0.5)
    export.save(plain, plain_vars, "/tmp/lenet_w050")
    plain, plain_vars = export.load("/tmp/lenet_w050")

Every variant exports (S-Net and US-Net carry the BatchNorm of that width);
the stored size shrinks with the width.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from awn_jax import checkpoints
from awn_jax.models import LeNet3C1L, MobileNetV2
from awn_jax.models.lenet import max_pool_2x2

__all__ = ["PlainLeNet3C1L", "PlainMobileNetV2", "BlockShape", "export", "save", "load"]

_BN = dict(use_running_average=True, momentum=0.9, epsilon=1e-5)


class PlainLeNet3C1L(nn.Module):
    """LeNet-3C1L with ``channels`` in every conv, from stock Flax layers."""

    channels: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, k in enumerate((3, 3, 5), start=1):
            x = nn.Conv(self.channels, (k, k), padding="VALID", name=f"conv{i}")(x)
            x = nn.relu(nn.BatchNorm(**_BN, name=f"bn{i}")(x))
            if i > 1:
                x = max_pool_2x2(x)
        return nn.Dense(self.num_classes, name="classifier")(x.reshape(x.shape[0], -1))


@dataclasses.dataclass(frozen=True)
class BlockShape:
    """One inverted residual block of a fixed width."""

    hidden: int
    features: int
    strides: int
    expand: bool
    residual: bool


class _PlainInvertedResidual(nn.Module):
    shape: BlockShape

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.shape
        y = x
        if s.expand:
            y = nn.relu6(nn.BatchNorm(**_BN, name="expand_bn")(
                nn.Conv(s.hidden, (1, 1), use_bias=False, name="expand")(y)))
        y = nn.Conv(s.hidden, (3, 3), s.strides, padding="SAME", feature_group_count=s.hidden,
                    use_bias=False, name="depthwise")(y)
        y = nn.relu6(nn.BatchNorm(**_BN, name="depthwise_bn")(y))
        y = nn.BatchNorm(**_BN, name="project_bn")(nn.Conv(s.features, (1, 1), use_bias=False, name="project")(y))
        return y + x if s.residual else y


class PlainMobileNetV2(nn.Module):
    """MobileNetV2 (CIFAR layout) with fixed channel counts, from stock Flax layers."""

    stem: int
    blocks: Sequence[BlockShape]
    head: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.stem, (3, 3), padding="SAME", use_bias=False, name="stem")(x)
        x = nn.relu6(nn.BatchNorm(**_BN, name="stem_bn")(x))
        for i, shape in enumerate(self.blocks):
            x = _PlainInvertedResidual(shape, name=f"blocks_{i}")(x)
        x = nn.Conv(self.head, (1, 1), use_bias=False, name="head")(x)
        x = nn.relu6(nn.BatchNorm(**_BN, name="head_bn")(x))
        return nn.Dense(self.num_classes, name="classifier")(jnp.mean(x, axis=(1, 2)))


def _effective(tree: dict, *path: str) -> dict:
    for name in path:
        tree = tree[name]
    return tree["arrays"][0]


def _plain_lenet(bound: LeNet3C1L, effective: dict) -> nn.Module:
    return PlainLeNet3C1L(_effective(effective, "conv1")["kernel"].shape[-1], bound.num_classes)


def _plain_mobilenet(bound: MobileNetV2, effective: dict) -> nn.Module:
    shapes = []
    for i, block in enumerate(bound.blocks):
        name = f"blocks_{i}"
        shapes.append(BlockShape(
            hidden=_effective(effective, name, "depthwise")["kernel"].shape[-1],
            features=_effective(effective, name, "project")["kernel"].shape[-1],
            strides=block.strides, expand=block.expansion != 1,
            residual=block.strides == 1 and block.in_features == block.features,
        ))
    return PlainMobileNetV2(_effective(effective, "stem")["kernel"].shape[-1], tuple(shapes),
                            _effective(effective, "head")["kernel"].shape[-1], bound.num_classes)


_BUILDERS = {LeNet3C1L: _plain_lenet, MobileNetV2: _plain_mobilenet}
_PLAIN = {"PlainLeNet3C1L": PlainLeNet3C1L, "PlainMobileNetV2": PlainMobileNetV2}


def _fill(target: Any, effective: dict) -> dict:
    """The plain model's variables, each taken from the effective array at the same path."""
    variables = {"params": {}, "batch_stats": {}}

    def put(collection, path, name, value):
        node = variables[collection]
        for p in path:
            node = node.setdefault(p, {})
        want = target[collection]
        for p in (*path, name):
            want = want[p]
        node[name] = jnp.reshape(value, want.shape).astype(want.dtype)

    def walk(tree, path):
        if "arrays" in tree:
            arrays = tree["arrays"][0]
            for name in ("kernel", "bias", "scale"):
                if arrays.get(name) is not None:
                    put("params", path, name, arrays[name])
            for name in ("mean", "var"):
                if name in arrays:
                    put("batch_stats", path, name, arrays[name])
        for key, sub in tree.items():
            if key != "arrays":
                walk(sub, (*path, key))

    walk(effective, ())
    return variables


def export(model: nn.Module, variables: Any, image_shape: Sequence[int], width: float) -> tuple[nn.Module, dict]:
    """The sub-network of ``model`` at ``width`` as a plain Flax model and its variables.

    Args:
      model: a :class:`~awn_jax.models.LeNet3C1L` or :class:`~awn_jax.models.MobileNetV2`
        of any variant.
      variables: its variables (US-Net: calibrated statistics if it has them).
      image_shape: one input's shape, e.g. ``(28, 28, 1)``.
      width: the width to export.

    Returns:
      ``(plain_model, plain_variables)``; ``plain_model.apply(plain_variables, x)``
      equals ``model.apply(variables, x, width=width)`` in eval mode.
    """
    builder = _BUILDERS.get(type(model))
    if builder is None:
        raise ValueError(
            f"export knows LeNet3C1L and MobileNetV2, not {type(model).__name__}; for one's own"
            " model, apply it with mutable=['effective'] and load those arrays into a plain twin."
        )
    x = jnp.zeros((1, *image_shape), jnp.float32)
    _, state = model.apply(variables, x, width=width, mutable=["effective"])
    effective = jax.device_get(state["effective"])
    plain = builder(model.bind(variables), effective)
    target = jax.eval_shape(plain.init, jax.random.key(0), x)
    return plain, _fill(target, effective)


def save(model: nn.Module, variables: dict, directory: str) -> None:
    """Saves an exported model: ``model.json`` (its class and fields) and an orbax checkpoint.

    Raises:
      ValueError: ``directory`` exists and is not empty (nothing is overwritten).
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and os.listdir(directory):
        raise ValueError(f"{directory} exists and is not empty; export to a new directory.")
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
    if "blocks" in fields:
        fields["blocks"] = [dataclasses.asdict(b) for b in fields["blocks"]]
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(directory, "variables"), variables)
    checkpoints.atomic_write(os.path.join(directory, "model.json"),
                             json.dumps({"class": type(model).__name__, "fields": fields}, indent=1))


def load(directory: str) -> tuple[nn.Module, dict]:
    """Loads what :func:`save` wrote.

    Raises:
      checkpoints.CheckpointError: not an exported model.
    """
    path = os.path.join(os.path.abspath(directory), "model.json")
    try:
        with open(path) as f:
            spec = json.load(f)
        cls = _PLAIN[spec["class"]]
    except (OSError, ValueError, KeyError) as e:
        raise checkpoints.CheckpointError(f"{directory} holds no exported model ({e}); export one first.") from None
    fields = dict(spec["fields"])
    if "blocks" in fields:
        fields["blocks"] = tuple(BlockShape(**b) for b in fields["blocks"])
    model = cls(**fields)
    with ocp.StandardCheckpointer() as ckpt:
        variables = ckpt.restore(os.path.join(os.path.abspath(directory), "variables"))
    return model, variables


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: export a trained workdir's model at one width."""
    import argparse
    import sys

    from awn_jax import costs, evaluate

    parser = argparse.ArgumentParser(prog="python -m awn_jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="training workdir (its latest checkpoint)")
    parser.add_argument("--width", type=float, required=True, help="the width to export, in (0, 1]")
    parser.add_argument("--out", required=True, help="new directory for the exported model")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        run = evaluate.restore_run(args.workdir, args.step)
        plain, variables = export(run.model, run.variables, run.info.image_shape, args.width)
        save(plain, variables, args.out)
    except (checkpoints.CheckpointError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    on_disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.out) for f in fs)
    print(f"exported {type(plain).__name__} at width {args.width:g} (step {run.step}) to {args.out}:"
          f" {costs.model_size_bytes(variables) / 1024:.1f} KiB of variables, {on_disk / 1024:.1f} KiB on disk"
          f" (the any-width model: {costs.model_size_bytes(run.variables) / 1024:.1f} KiB, checkpoint"
          f" {run.checkpoint_bytes / 1024:.1f} KiB with optimizer state).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
