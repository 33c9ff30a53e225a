"""Orbax checkpoints of the train state, with the run's config saved beside them."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from awn_jax import io

__all__ = ["CheckpointError", "Checkpointer", "saved_steps", "latest_saved_step", "save_config", "load_config", "check_same_run"]

# Fields a resumed run may change without invalidating its checkpoints.
RESUMABLE_FIELDS = frozenset(
    {"log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval_every_epochs",
     "eval_batch_size", "data_dir", "data.raw", "data.download", "data.in_memory", "data.workers",
     "data.threads", "data.prefetch",
     "sweep.after_training", "sweep.grid_step", "sweep.throughput_repeats",
     "sweep.calibration_batches", "sweep.calibrations"}
)
# Fields of older versions that no longer exist and never changed what a run computes
# (perf.conv_batch_chunk: a CPU lowering, now chosen by awn_jax.conv.training_lowering;
# distributed: now the launch flags, which differ per process).
RETIRED_FIELDS = frozenset({"perf", "distributed"})


class CheckpointError(RuntimeError):
    """A workdir or checkpoint that cannot serve this run; the message says why."""


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(_flat(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Saves ``config`` as ``<workdir>/config.json``."""
    io.atomic_write(io.config_path(workdir), config.to_json_best_effort(indent=2, sort_keys=True))


def _merge(target: ml_collections.ConfigDict, saved: dict, where: str) -> None:
    for key, value in saved.items():
        if key not in target:
            raise CheckpointError(f"{where}: unknown field {key!r}; the file was edited or is from another program.")
        if isinstance(target[key], ml_collections.ConfigDict):
            _merge(target[key], value, where)
        else:
            target[key] = io.nested_tuples(value)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with, over today's defaults for fields it predates."""
    from awn_jax.config import base_config  # config imports the models; keep this module light

    path = io.config_path(workdir)
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{workdir} holds no config.json: it is not a workdir of awn_jax.main.") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the workdir is damaged.") from None
    config = base_config()
    saved = {k: v for k, v in saved.items() if k not in RETIRED_FIELDS} if isinstance(saved, dict) else saved
    try:
        _merge(config, saved, path)
    except (TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: {e}; the file was edited or is damaged.") from None
    return config


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a workdir that was trained with a different config."""
    saved = _flat(json.loads(load_config(workdir).to_json_best_effort()))
    current = _flat(json.loads(config.to_json_best_effort()))
    diffs = [
        f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k not in RESUMABLE_FIELDS and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"{workdir} holds a run with another config ({'; '.join(diffs)}). Use a new"
            " --workdir, or the saved config to resume."
        )


def _checked_directory(workdir: str) -> str:
    directory = io.checkpoints_dir(workdir)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory} is a file, not a checkpoint directory; use another --workdir.")
    return directory


def saved_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints, ascending, read from the directory alone.

    Unlike :class:`Checkpointer`, this builds no orbax manager (whose creation is a
    barrier of all processes), so one process can ask it alone. Orbax writes a step
    into a temporary directory and renames it to the step's number when complete.

    Raises:
      CheckpointError: a file stands where the checkpoint directory belongs.
    """
    directory = _checked_directory(workdir)
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def latest_saved_step(workdir: str) -> int | None:
    """The newest complete checkpoint's step (:func:`saved_steps`), ``None`` if there is none."""
    return max(saved_steps(workdir), default=None)


class Checkpointer:
    """Periodic and final saves under ``<workdir>/checkpoints``, newest ``keep`` kept.

    In a run of several processes, every process creates one and calls ``save``
    together (orbax writes the replicated state once and synchronises the processes).
    """

    def __init__(self, workdir: str, keep: int = 3, create: bool = True):
        """Opens ``<workdir>/checkpoints``; ``create=False`` for readers, which must not write."""
        self.directory = _checked_directory(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            # Saves are waited for anyway; synchronous saves keep orbax's barriers in the
            # foreground, where a lost process surfaces as an error of the step that saves.
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` at ``step`` and waits until it is complete on disk.

        Orbax writes into a temporary directory and renames it when complete, so a
        failed or killed save never replaces an earlier checkpoint.

        Raises:
          CheckpointError: the write failed (disk full, permissions); names the
            checkpoints still intact.
        """
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state))
            self.manager.wait_until_finished()
        except OSError as e:
            intact = [s for s in self.manager.all_steps() if s != step]
            raise CheckpointError(
                f"saving the checkpoint of step {step} in {self.directory} failed ({e.strerror or e});"
                f" free disk space or fix permissions and run again to resume. Intact checkpoints:"
                f" {intact or 'none'}."
            ) from None

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores ``step`` (default: the latest) into the structure of ``target``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax raises many kinds for damaged or foreign files
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} cannot be restored into this model"
                f" ({type(e).__name__}: {str(e).splitlines()[0][:300]}). It is truncated, edited,"
                " or from another model/config."
            ) from None

    def close(self) -> None:
        self.manager.close()
