"""Where training metrics go: ``metrics.jsonl``, TensorBoard event files, the console."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

from awn_jax import io

__all__ = ["MetricsLog"]


def _plain(value: Any) -> Any:
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def _summary_writer(directory: str):
    """tensorboardX's ``SummaryWriter``, imported without torch.

    tensorboardX imports torch whenever it is installed (the bench extra; Colab's images)
    for a type annotation alone (it converts torch tensors with a later import of its own),
    and torch's import is seconds of every training command's start. It is hidden for
    tensorboardX's first import only: ``sys.modules`` maps it to None, so ``import torch``
    fails meanwhile (no thread of this library imports it), and this process imports it as
    usual afterwards. A torch already imported is left as it is.
    """
    hide = "tensorboardX" not in sys.modules and "torch" not in sys.modules
    if hide:
        sys.modules.setdefault("torch", None)  # never replaces a torch that another thread imported since
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter(directory)


class MetricsLog:
    """Appends one JSON object per record to ``<workdir>/metrics.jsonl`` and TensorBoard.

    Disabled (``enabled=False``: the processes other than 0), it writes and prints nothing.

    On resume, records after the restored step are dropped so the file holds one
    history without duplicates; so are lines that hold no record (a torn last line of
    a killed run, bytes that are not UTF-8, a record without an integer step), with a
    warning that names the file.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = io.metrics_path(workdir)
        self._writer = None
        self._records: set[tuple[int, str]] = set()
        if not enabled:
            return
        if os.path.exists(self.path):
            kept, unreadable = [], 0
            with open(self.path, "rb") as f:
                for raw in f:
                    record = self._record(raw)
                    if record is None:
                        unreadable += raw.strip() != b""
                    elif record["step"] <= resume_step:
                        kept.append(json.dumps(record) + "\n")
                        self._records.add((record["step"], record.get("kind")))
            if unreadable:
                print(f"warning: {self.path}: dropped {unreadable} line(s) that hold no metrics record.",
                      file=sys.stderr)
            io.atomic_write(self.path, "".join(kept))
        self._writer = _summary_writer(io.tensorboard_dir(workdir))

    @staticmethod
    def _record(raw: bytes) -> dict | None:
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        step = record.get("step") if isinstance(record, dict) else None
        return record if isinstance(step, int) and not isinstance(step, bool) else None

    def has(self, step: int, kind: str) -> bool:
        """Whether the file held a ``kind`` record at ``step`` when this log was opened."""
        return (int(step), kind) in self._records

    def write(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        """Records ``values`` (scalars or per-width lists) at ``step``."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, "time": time.time()}
        record.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key in ("step", "kind", "time"):
                continue
            if isinstance(value, list):
                for i, v in enumerate(value):
                    self._writer.add_scalar(f"{kind}/{key}/{i}", v, step)
            elif isinstance(value, (int, float)):
                self._writer.add_scalar(f"{kind}/{key}", value, step)
        self._writer.flush()

    def console(self, message: str) -> None:
        """Prints ``message`` (process 0 only, in a run of several processes)."""
        if self.enabled:
            print(message, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
