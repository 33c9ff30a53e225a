"""Input pipelines: Grain over random-access sources, every batch a pure function of ``(seed, step)``.

A *source* is a split that can read any rows: :class:`awn_jax.data.Split` (in memory,
for the small datasets) or :class:`awn_jax.data.StreamedSplit` (records read on demand
from TFDS ``array_record`` files, decoded and augmented on the host). Both answer
``len(source)`` and ``source.read(indices, keys)``.

Training order: epoch ``e`` visits the examples in :func:`epoch_permutation` ``(seed, e)``;
step ``s`` takes the next ``batch_size`` of them, sorted (sequential reads), and each
process reads only its own contiguous slice. Host-side augmentation draws from
``(seed, step, row of the global batch)``. Nothing depends on what was read before, so a
run resumed at step ``s`` reads exactly the batches an uninterrupted run reads from ``s``
on, whatever the process count: the pipeline's position is the step, which every
checkpoint stores.

Grain runs the reads: ``thread_count`` threads in the training process, or
``worker_count`` worker processes (decoding JPEGs holds the GIL only in part), each
``prefetch`` batches ahead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from typing import Any, Iterator, Protocol

import grain
import numpy as np
from absl import flags

__all__ = ["Source", "PipelineOptions", "epoch_permutation", "train_batches", "eval_batches", "options_from_config"]


class Source(Protocol):
    """A split that reads any rows (``awn_jax.data.Split`` or ``awn_jax.data.StreamedSplit``)."""

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray, keys: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{"image": uint8 (n, H, W, C), "label": int32 (n,)}`` of ``indices``; ``keys`` (n, 3)
        seed the host-side augmentation of each row (None: evaluation, no augmentation)."""
        ...


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """How Grain reads batches (none of it changes what is read).

    Attributes:
      worker_count: worker processes reading and decoding batches (0: threads in this process).
      thread_count: reading threads (per worker process, or in this process).
      prefetch: batches read ahead (per worker).
    """

    worker_count: int = 0
    thread_count: int = 1
    prefetch: int = 2


def options_from_config(config: Any) -> PipelineOptions:
    """The pipeline options of a run's ``config.data``."""
    return PipelineOptions(config.data.workers, config.data.threads, config.data.prefetch)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of examples in ``epoch``: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 1, int(epoch)]).permutation(n)


class _GlobalBatches:
    """The sorted example indices of each step's global batch (each epoch's remainder dropped),
    keeping the last two epochs' permutations."""

    def __init__(self, seed: int, n: int, batch_size: int):
        self.seed, self.n, self.batch_size = seed, n, batch_size
        self.steps_per_epoch = n // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples.")
        self._order = functools.lru_cache(maxsize=2)(functools.partial(epoch_permutation, seed, n=n))

    def __call__(self, step: int) -> np.ndarray:
        epoch, offset = divmod(int(step), self.steps_per_epoch)
        return np.sort(self._order(epoch)[offset * self.batch_size : (offset + 1) * self.batch_size])

    def __getstate__(self):  # the cache stays behind when Grain sends this to a worker process
        return (self.seed, self.n, self.batch_size)

    def __setstate__(self, state):
        self.__init__(*state)


class _TrainBatch:
    """Grain's map from a step to this process's slice of its global batch."""

    def __init__(self, source: Source, batch_size: int, seed: int, process_index: int, process_count: int):
        self.source, self.seed = source, seed
        self.batches = _GlobalBatches(seed, len(source), batch_size)
        self.local = batch_size // process_count
        self.rows = np.arange(process_index * self.local, (process_index + 1) * self.local)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        indices = self.batches(step)[self.rows]
        keys = np.stack([np.full_like(self.rows, self.seed & 0xFFFFFFFF), np.full_like(self.rows, step),
                         self.rows], axis=1)
        return self.source.read(indices, keys)


def _iterate(dataset: grain.MapDataset, options: PipelineOptions) -> grain.IterDataset:
    threads = max(options.thread_count, 1)
    reads = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                      prefetch_buffer_size=max(options.prefetch, threads)))
    if options.worker_count > 0:
        # Grain's worker start reads its absl flags; this library's commands parse their own
        # flag sets, so absl's global ones keep their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        reads = reads.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.worker_count,
                                                               per_worker_buffer_size=max(options.prefetch, 1)))
    return reads


def train_batches(
    source: Source,
    batch_size: int,
    seed: int,
    *,
    stop_step: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    options: PipelineOptions = PipelineOptions(),
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(step, batch)`` pairs for the steps ``[start_step, stop_step)``.

    Every process computes the same global batch (sorted indices, so that reading is
    sequential) and reads only its own contiguous ``batch_size / process_count`` rows:
    the global batch, row for row, does not depend on the process count.
    """
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} does not split over {process_count} processes.")
    read = _TrainBatch(source, batch_size, seed, process_index, process_count)
    with _closing(_iterate(grain.MapDataset.range(start_step, stop_step).map(read), options)) as reads:
        yield from zip(itertools.count(start_step), reads)


@contextlib.contextmanager
def _closing(dataset: grain.IterDataset) -> Iterator[Iterator[Any]]:
    """An iterator over ``dataset`` whose worker processes and shared memory are released on exit,
    also when the caller stops early (``close()`` on the generator, or its collection)."""
    iterator = iter(dataset)
    try:
        yield iterator
    finally:
        iterator.close()


class _EvalBatch:
    """Grain's map from a batch number to an evaluation batch, the last one padded."""

    def __init__(self, source: Source, batch_size: int):
        self.source, self.batch_size = source, batch_size

    def __call__(self, number: int) -> dict[str, np.ndarray]:
        start = number * self.batch_size
        indices = np.arange(start, min(start + self.batch_size, len(self.source)))
        batch = self.source.read(indices)
        n, pad = len(indices), self.batch_size - len(indices)
        return {
            "image": np.concatenate([batch["image"], np.zeros((pad, *batch["image"].shape[1:]), np.uint8)]),
            "label": np.concatenate([batch["label"], np.zeros(pad, np.int32)]),
            "mask": np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]),
        }


def eval_batches(source: Source, batch_size: int,
                 options: PipelineOptions = PipelineOptions()) -> Iterator[dict[str, np.ndarray]]:
    """Batches of a split in order; the last is padded, with ``mask`` 0 on padding."""
    count = -(-len(source) // batch_size)
    with _closing(_iterate(grain.MapDataset.range(count).map(_EvalBatch(source, batch_size)), options)) as reads:
        yield from reads
