"""Export a trained workdir's model at one width as a plain fixed-width Flax model.

    python -m awn_jax.export --workdir=workdirs/awn --width=0.5 --out=exported/lenet_w050

The result is an ordinary network of flax.linen Conv/BatchNorm/Dense layers with the
masks folded and the channels sliced, saved as its own orbax checkpoint with a
model.json beside it (awn_jax.export.load reads it back). --channel_multiple=4 pads
every channel count to a multiple of 4 with zero channels: the same logits, and on
backends that are faster at aligned counts, faster. A US-Net run exports with its BatchNorm
calibrated per width: --calibration=4 (or 10, 20) reuses the calibration its sweep stored for
the step, or else calibrates on training batches (the dataset must be at hand) and stores it
in the workdir.

    python -m awn_jax.export --workdir=workdirs/awn --width=0.5 --format=stablehlo --out=exported/w050

writes instead a portable program, model.stablehlo (jax.export's serialized StableHLO
for CPU, CUDA and TPU: uint8 NHWC images of any batch size in, normalised inside,
float32 logits out), and model.json (input, normalisation, output, class names, width,
channels, MACs); it runs with JAX alone:
jax.export.deserialize(open("model.stablehlo", "rb").read()).call(images).
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from awn_jax import costs, evaluation, export, io
from awn_jax.cli import common
from awn_jax.widths import validate_width

PROG = "python -m awn_jax.export"


def define_flags() -> flags.FlagValues:
    """The export command's flags."""
    fv = common.new_flags()
    flags.DEFINE_string("workdir", None, "Training workdir (its latest checkpoint).", flag_values=fv)
    flags.DEFINE_float("width", None, "The width to export, in (0, 1].", flag_values=fv)
    flags.DEFINE_string("out", None, "New directory for the exported model.", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=fv)
    flags.DEFINE_enum("format", "flax", list(export.FORMATS), "flax: a plain Flax model (export.load);"
                      " stablehlo: a portable jax.export program.", flag_values=fv)
    flags.DEFINE_integer("channel_multiple", 1, "Round every channel count up to a multiple of this, with zero"
                         " channels (the same logits; aligned counts can run faster).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("calibration", 0, "US-Net (required there): BatchNorm calibrated at this many widths, as"
                         " the sweep's eval_calibrated_<N>w (one stored for the step is reused; else training"
                         " batches calibrate it, stored in the workdir).", lower_bound=0, flag_values=fv)
    flags.mark_flags_as_required(["workdir", "width", "out"], flag_values=fv)
    return fv


def main(fv: flags.FlagValues, args: list[str]) -> int:
    """Exports, saves and prints the sizes."""
    validate_width(fv.width, "--width")
    io.check_new_directory(fv.out, "--out")
    run = evaluation.restore_run(fv.workdir, fv.step)
    model, variables = evaluation.calibrated(run, fv.calibration, fv.workdir, required=True)
    if fv.format == "stablehlo":
        meta = export.save_stablehlo(model, variables, run.info, fv.width, fv.out, fv.channel_multiple)
        print(f"exported {meta['model']}/{meta['variant']} at width {fv.width:g} (step {run.step}) to"
              f" {fv.out}/model.stablehlo: {io.dir_bytes(fv.out) / 1024:.1f} KiB, {meta['macs_per_image'] / 1e6:.3f}"
              f" MMACs per image, for {', '.join(meta['platforms'])}; uint8 NHWC images in, logits out"
              " (model.json).")
        return 0
    plain, plain_variables = export.export(model, variables, run.info.image_shape, fv.width, fv.channel_multiple)
    export.save(plain, plain_variables, fv.out)
    on_disk = io.dir_bytes(fv.out)
    print(f"exported {type(plain).__name__} at width {fv.width:g} (step {run.step}) to {fv.out}:"
          f" {costs.model_size_bytes(plain_variables) / 1024:.1f} KiB of variables, {on_disk / 1024:.1f} KiB on disk"
          f" (the any-width model: {costs.model_size_bytes(variables) / 1024:.1f} KiB, checkpoint"
          f" {run.checkpoint_bytes / 1024:.1f} KiB with optimizer state).")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the command on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, define_flags(), argv, PROG, __doc__)


if __name__ == "__main__":
    common.exit_with(run)
