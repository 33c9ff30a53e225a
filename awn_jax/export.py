"""Export the sub-network at one width as a plain fixed-width Flax model.

The any-width model stores full-width parameters and slices (and, for AWN, masks)
them at every call. A deployment that needs one width wants none of that: this
module runs the model once at width ``w``, collects the arrays each layer actually
used (the ``effective`` collection: masks folded into the kernels, channels
sliced, BatchNorm statistics of that width), and loads them into the same model
built with the ``plain`` variant (``awn_jax.models.common.PlainSpec``): an ordinary
network of ``flax.linen.Conv``/``BatchNorm``/``Dense`` layers with those channel
counts::

    plain, plain_vars = export.export(model, variables, (28, 28, 1), width=0.5)
    logits = plain.apply(plain_vars, images)   # == model.apply(variables, images, width=0.5)
    export.save(plain, plain_vars, "/tmp/lenet_w050")
    plain, plain_vars = export.load("/tmp/lenet_w050")

Every variant exports (S-Net and US-Net carry the BatchNorm of that width: US-Net's
calibrated statistics when its model is calibrated, ``evaluation.calibrated``, as the
export command does); the stored size shrinks with the width.

For serving without this library (or without Flax), :func:`save_stablehlo` writes
the exported model as a portable program: ``jax.export``'s serialized StableHLO, for
CPU, CUDA and TPU, any batch size, uint8 images in and logits out::

    exported = jax.export.deserialize(open("model.stablehlo", "rb").read())
    logits = exported.call(images_uint8_nhwc)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from awn_jax import checkpoints, costs, data, io
from awn_jax.conv import conv2d
from awn_jax.models import MODELS, PLAIN, channel_sizes, variant_spec
from awn_jax.widths import validate_width

__all__ = ["FORMATS", "PLATFORMS", "export", "save", "load", "serialize", "save_stablehlo"]

FORMATS = ("flax", "stablehlo")
# Where a StableHLO export runs (jax.export lowers for each; one file serves all).
PLATFORMS = ("cpu", "cuda", "tpu")

_CLASSES = {cls.__name__: cls for cls in MODELS.values()}
# Program choices, not part of the exported model.
_UNSAVED = ("parent", "name", "conv_lowering")


def _padded(value: Any, shape: Sequence[int], fill: float) -> Any:
    """``value`` with its channel axes extended by ``fill`` to fit ``shape`` (a padded plain layer's).

    Arrays whose rank matches are extended axis by axis. A dense kernel over a map,
    ``(h, w, c, out)``, whose plain twin takes the map flattened, ``(h * w * c', out)``,
    is extended on its channel axis, so each pixel's channels stay together.
    """
    value = np.asarray(value)  # on the host: no program to compile per array shape
    if value.shape == tuple(shape):
        return value
    if value.ndim > 2 and len(shape) == 2:
        spatial = int(np.prod(value.shape[:-2]))
        shape = (*value.shape[:-2], shape[0] // spatial, shape[1])
    if len(shape) != value.ndim or any(v > t for v, t in zip(value.shape, shape)):
        raise ValueError(f"an array of shape {value.shape} does not fit the plain model's {tuple(shape)};"
                         " was the plain model built from the same fields?")
    return np.pad(value, [(0, t - v) for v, t in zip(value.shape, shape)], constant_values=fill)


def _fill(target: Any, effective: dict) -> dict:
    """The plain model's variables, each taken from the effective array at the same path.

    A plain model with padded channel counts gets the effective arrays extended with
    zeros, and BatchNorm variances with ones: the added channels stay zero.
    """
    variables = {"params": {}, "batch_stats": {}}

    def put(collection, path, name, value):
        node = variables[collection]
        for p in path:
            node = node.setdefault(p, {})
        want = target[collection]
        for p in (*path, name):
            want = want[p]
        value = _padded(value, want.shape, 1.0 if name == "var" else 0.0)
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
    if jax.tree.structure(variables) != jax.tree.structure(dict(target)):
        raise ValueError("the plain model's variables do not match the arrays the model used;"
                         " was it built from the same fields?")
    return variables


def export(model: nn.Module, variables: Any, image_shape: Sequence[int], width: float,
           channel_multiple: int = 1) -> tuple[nn.Module, dict]:
    """The sub-network of ``model`` at ``width`` as a plain Flax model and its variables.

    Args:
      model: a registered model (``awn_jax.models.MODELS``: LeNet-3C1L, MobileNetV2, the
        ResNets) of any trainable variant.
      variables: its variables (US-Net: those of its calibrated model, ``evaluation.calibrated``;
        its trained statistics are shared by every width and fit none).
      image_shape: one input's shape, e.g. ``(28, 28, 1)``.
      width: the width to export.
      channel_multiple: round every channel count up to a multiple of this, with zero
        channels (the same logits; e.g. 8 serves the width-1 LeNet's 45 channels as 48,
        1.39x the images/s on XLA:CPU: docs/PERFORMANCE_NOTES.md). 1: as the width sets them.

    Returns:
      ``(plain_model, plain_variables)``: the same model class with variant ``plain``
      at ``width`` (its channel counts padded with zero channels to ``channel_multiple``);
      ``plain_model.apply(plain_variables, x)`` equals ``model.apply(variables, x, width=width)``
      in eval mode.
    """
    if type(model) not in MODELS.values():
        raise ValueError(
            f"export knows {', '.join(_CLASSES)}, not {type(model).__name__}; for one's own"
            " model, apply it with mutable=['effective'] and load those arrays into a plain twin."
        )
    if model.variant == PLAIN:
        raise ValueError(f"this {type(model).__name__} is already a plain model (width {model.plain_width}).")
    width = validate_width(width)
    spec = variant_spec(model.variant, model.width_multiplier, model.bn_widths)
    # The plain model's own checks, before the forward pass below.
    variant_spec(PLAIN, spec.multiplier, None, plain_width=width, plain_channel_multiple=channel_multiple)
    plain = model.clone(variant=PLAIN, width_multiplier=spec.multiplier, bn_widths=None, plain_width=width,
                        plain_channel_multiple=channel_multiple, conv_lowering=conv2d)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    # One program: run eagerly, every operation compiled on its own (MobileNetV2: 10.3 s -> 1.6 s).
    # The model is closed over, not a static argument: its fields need not be hashable.
    forward = jax.jit(lambda v, x: model.apply(v, x, width=width, mutable=["effective"])[1]["effective"])
    effective = jax.device_get(forward(variables, x))
    target = jax.eval_shape(plain.init, jax.random.key(0), x)
    return plain, _fill(target, effective)


def _fields(model: nn.Module) -> dict[str, Any]:
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in _UNSAVED}
    if fields.get("dtype") is not None:
        fields["dtype"] = jnp.dtype(fields["dtype"]).name
    return fields


def _new_directory(directory: str) -> str:
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and os.listdir(directory):
        raise ValueError(f"{directory} exists and is not empty; export to a new directory.")
    return directory


def save(model: nn.Module, variables: dict, directory: str) -> None:
    """Saves an exported model: ``model.json`` (its class and fields) and an orbax checkpoint.

    Raises:
      ValueError: ``directory`` exists and is not empty (nothing is overwritten).
    """
    directory = _new_directory(directory)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(directory, "variables"), variables)
    io.atomic_write(os.path.join(directory, "model.json"),
                    json.dumps({"class": type(model).__name__, "fields": _fields(model)}, indent=1))


def load(directory: str) -> tuple[nn.Module, dict]:
    """Loads what :func:`save` wrote.

    Raises:
      checkpoints.CheckpointError: not an exported model.
    """
    path = os.path.join(os.path.abspath(directory), "model.json")
    try:
        with open(path) as f:
            spec = json.load(f)
        if spec.get("format") == "stablehlo":
            raise ValueError("it is a StableHLO export: run it with jax.export.deserialize(<model.stablehlo>)")
        cls = _CLASSES[spec["class"]]
        fields = {name: io.nested_tuples(value) for name, value in spec["fields"].items()}
        if fields.get("variant") != PLAIN:
            raise ValueError(f"variant {fields.get('variant')!r} is not {PLAIN!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise checkpoints.CheckpointError(f"{directory} holds no exported model ({e}); export one first.") from None
    if fields.get("dtype") is not None:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    model = cls(**fields)
    with ocp.StandardCheckpointer() as ckpt:
        variables = ckpt.restore(os.path.join(os.path.abspath(directory), "variables"))
    return model, variables


def serialize(model: nn.Module, variables: dict, info: data.DatasetInfo) -> bytes:
    """An exported (plain) model as a portable program: serialized ``jax.export`` StableHLO.

    The program takes a batch of uint8 NHWC images of ``info.image_shape``, in the
    dataset's pixel format, of any batch size (the batch dimension is symbolic),
    normalises them inside (``info.mean``, ``info.std``, as training did) and returns
    float32 logits ``(batch, classes)``. The variables are constants of the program. It
    is lowered for CPU, CUDA and TPU (``PLATFORMS``).

    Args:
      model: a plain model (:func:`export`'s first result).
      variables: its variables.
      info: the dataset the model was trained on.

    Raises:
      ValueError: ``model`` is an any-width model, not an export.
    """
    if getattr(model, "variant", None) != PLAIN:
        raise ValueError("serialize takes an exported fixed-width model: call export.export(...) first.")

    def forward(images: jax.Array) -> jax.Array:
        return model.apply(variables, data.preprocess(images, info)).astype(jnp.float32)

    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *info.image_shape), jnp.uint8)
    return bytes(jax.export.export(jax.jit(forward), platforms=PLATFORMS)(images).serialize())


def save_stablehlo(any_width: nn.Module, any_width_variables: dict, info: data.DatasetInfo, width: float,
                   directory: str, channel_multiple: int = 1) -> dict:
    """Writes ``model.stablehlo`` (:func:`serialize`) and ``model.json`` (what a server needs) for ``width``.

    Args:
      any_width: the trained any-width model.
      any_width_variables: its variables.
      info: its dataset.
      width: the width to export.
      directory: a new (or empty) directory.
      channel_multiple: as :func:`export`'s.

    Returns:
      The ``model.json`` contents: input shape, dtype and layout, the normalisation done
      inside, output, class names, width, channel counts (as padded) and the multiple, MACs
      and parameters per image (of the width itself, padding excluded).

    Raises:
      ValueError: ``directory`` exists and is not empty (nothing is overwritten).
    """
    width = validate_width(width)
    directory = _new_directory(directory)
    plain, variables = export(any_width, any_width_variables, info.image_shape, width, channel_multiple)
    program = serialize(plain, variables, info)
    [cost] = costs.width_costs(any_width, any_width_variables, info.image_shape, [width])
    meta = {
        "format": "stablehlo", "file": "model.stablehlo", "platforms": list(PLATFORMS),
        "load": "jax.export.deserialize(open('model.stablehlo', 'rb').read()).call(images)",
        "input": {"shape": [None, *info.image_shape], "dtype": "uint8", "layout": "NHWC",
                  "pixels": "0..255, as stored in the dataset"},
        "normalisation": {"inside": True, "formula": "(images / 255 - mean) / std", "mean": list(info.mean),
                          "std": list(info.std)},
        "output": {"shape": [None, info.num_classes], "dtype": "float32", "meaning": "logits"},
        "class_names": list(info.class_names), "dataset": info.name,
        "model": type(any_width).__name__, "variant": any_width.variant, "width": width,
        "channels": channel_sizes(variables["params"]), "channel_multiple": channel_multiple,
        "macs_per_image": cost.macs,
        "params": cost.params, "jax_version": jax.__version__,
    }
    text = json.dumps(meta, indent=1)  # before writing anything
    os.makedirs(directory, exist_ok=True)
    try:
        io.atomic_write(os.path.join(directory, "model.stablehlo"), program)
        io.atomic_write(os.path.join(directory, "model.json"), text)  # last: readers look for it
    except BaseException:
        for name in ("model.stablehlo", "model.json"):
            if os.path.exists(os.path.join(directory, name)):
                os.unlink(os.path.join(directory, name))
        raise
    return meta


if __name__ == "__main__":  # the command lives in awn_jax.cli.export
    from awn_jax.cli.common import exit_with
    from awn_jax.cli.export import run

    exit_with(run)
