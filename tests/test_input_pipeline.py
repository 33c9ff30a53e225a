"""The input pipeline: in-memory and streamed splits give the same batches, a pure function of
(seed, step); ImageNet's preparation, decoding and augmentation on generated files."""

import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from awn_jax import data, images, imagenet, input_pipeline
from helpers import CHECKOUT, write_fake_fmnist

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    """The same generated Fashion-MNIST split, in memory and streamed from its array_record files."""
    root = tmp_path_factory.mktemp("fmnist")
    raw = root / "raw"
    raw.mkdir()
    write_fake_fmnist(raw, n_train=50, n_test=20)
    args = (str(root / "tfds"), str(raw))
    memory = data.load_split("fashion_mnist", "train", *args)
    streamed = data.stream_split(data.DATASETS["fashion_mnist"], "train", *args)
    test = (data.load_split("fashion_mnist", "test", *args),
            data.stream_split(data.DATASETS["fashion_mnist"], "test", *args))
    return {"memory": memory, "streamed": streamed, "test": test}


@pytest.fixture(scope="module")
def synthetic_imagenet(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("imagenet"))
    imagenet.write_synthetic(data_dir, 40, validation_examples=12, classes=4, sizes=(40, 120))
    return data_dir


def _ids(batch):
    """Each generated row's identity: its pixel bytes."""
    return [row.tobytes() for row in batch["image"]]


@pytest.mark.parametrize("kind", ["memory", "streamed"])
def test_batches_are_a_function_of_seed_and_step(fmnist, kind):
    s = fmnist[kind]
    first = list(input_pipeline.train_batches(s, 8, seed=3, stop_step=14))  # 6 steps an epoch: two boundaries
    assert [step for step, _ in first] == list(range(14))
    epoch0 = [row for _, b in first[:6] for row in _ids(b)]
    assert len(set(epoch0)) == 48  # an epoch draws without replacement
    resumed = list(input_pipeline.train_batches(s, 8, seed=3, start_step=9, stop_step=14))
    assert [step for step, _ in resumed] == list(range(9, 14))
    for (_, a), (_, b) in zip(first[9:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = next(input_pipeline.train_batches(s, 8, seed=4, stop_step=1))[1]
    assert not np.array_equal(other["image"], first[0][1]["image"])


def test_streamed_and_in_memory_splits_give_the_same_batches_and_hold_nothing(fmnist):
    memory, streamed = fmnist["memory"], fmnist["streamed"]
    for (step, a), (_, b) in zip(input_pipeline.train_batches(memory, 8, seed=1, start_step=4, stop_step=9),
                                 input_pipeline.train_batches(streamed, 8, seed=1, start_step=4, stop_step=9)):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # The streamed split is a handle on files: what a worker process receives holds no images.
    assert len(pickle.dumps(streamed)) < 20_000 < memory.images.nbytes


@pytest.mark.parametrize("kind", ["memory", "streamed"])
def test_each_process_reads_its_slice_of_the_global_batch(fmnist, kind):
    s = fmnist[kind]
    whole = next(input_pipeline.train_batches(s, 8, seed=0, stop_step=1))[1]
    parts = [next(input_pipeline.train_batches(s, 8, seed=0, stop_step=1, process_index=i, process_count=2))[1]
             for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        next(input_pipeline.train_batches(s, 8, seed=0, stop_step=1, process_count=3))


def test_worker_processes_and_threads_read_the_same_batches(fmnist):
    s = fmnist["streamed"]
    threads = list(input_pipeline.train_batches(s, 8, seed=5, stop_step=7,
                                                options=input_pipeline.PipelineOptions(thread_count=3)))
    workers = list(input_pipeline.train_batches(s, 8, seed=5, stop_step=7,
                                                options=input_pipeline.PipelineOptions(worker_count=2, prefetch=2)))
    assert [step for step, _ in workers] == list(range(7))
    for (_, a), (_, b) in zip(threads, workers):
        np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.parametrize("which", [0, 1], ids=["memory", "streamed"])
def test_eval_batches_pad_and_mask_the_last_batch(fmnist, which):
    split = fmnist["test"][which]
    batches = list(input_pipeline.eval_batches(split, 8))
    assert len(batches) == 3 and all(b["image"].shape == (8, 28, 28, 1) for b in batches)
    assert sum(b["mask"].sum() for b in batches) == 20
    assert batches[-1]["mask"].tolist() == [1.0] * 4 + [0.0] * 4
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:20], fmnist["test"][0].labels)


def test_synthetic_imagenet_has_the_tfds_format_and_the_real_labels(synthetic_imagenet):
    import tensorflow_datasets as tfds

    train = tfds.data_source("imagenet2012", split="train", data_dir=synthetic_imagenet,
                             decoders={"image": tfds.decode.SkipDecoding()})
    synsets = imagenet.synsets()
    assert len(train) == 40 and len(synsets) == 1000
    for record in train:
        name = record["file_name"].decode()
        assert synsets[record["label"]] == name.split("_")[0] and record["label"] < 4
        assert record["image"][:2] == b"\xff\xd8"  # JPEG bytes, stored as distributed
    validation = tfds.data_source("imagenet2012", split="validation", data_dir=synthetic_imagenet,
                                  decoders={"image": tfds.decode.SkipDecoding()})
    with open(os.path.join(os.path.dirname(tfds.__file__), "datasets/imagenet2012/validation_labels.txt")) as f:
        truth = f.read().split()
    got = {r["file_name"].decode(): synsets[r["label"]] for r in validation}
    assert got == {f"ILSVRC2012_val_{i + 1:08d}.JPEG": truth[i] for i in range(12)}


def test_imagenet_streams_decoded_crops_augmented_by_key(synthetic_imagenet):
    info = dataclasses.replace(data.DATASETS["imagenet2012"], image_shape=(48, 48, 3))
    train = data.stream_split(info, "train", synthetic_imagenet)
    batches = list(input_pipeline.train_batches(train, 8, seed=0, stop_step=6))
    assert batches[0][1]["image"].shape == (8, 48, 48, 3) and batches[0][1]["image"].dtype == np.uint8
    again = list(input_pipeline.train_batches(train, 8, seed=0, start_step=5, stop_step=6))
    np.testing.assert_array_equal(batches[5][1]["image"], again[0][1]["image"])
    # Epoch 1 revisits the examples of epoch 0 with other crops.
    first = {tuple(b["label"]) for _, b in batches[:5]}
    assert len(first) > 1 and not any(np.array_equal(batches[5][1]["image"], b["image"]) for _, b in batches[:5])
    validation = data.stream_split(info, "validation", synthetic_imagenet)
    evaluated = list(input_pipeline.eval_batches(validation, 5))
    assert [b["mask"].sum() for b in evaluated] == [5, 5, 2]


def _jpeg(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")  # lossless, so pixels can be compared
    return out.getvalue()


def test_evaluation_crop_is_the_centre_of_the_resized_image():
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.decode_eval(_jpeg(square), 224), square[16:240, 16:240])
    wide = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    out = images.decode_eval(_jpeg(wide), 56)  # shorter side to 64: no resize, centre 56 x 56
    np.testing.assert_array_equal(out, wide[4:60, 36:92])


@pytest.mark.parametrize("shape", [(500, 375), (60, 400), (400, 30)])
def test_random_resized_crops_keep_the_area_and_aspect_ranges(shape):
    width, height = shape
    for seed in range(200):
        left, top, right, bottom = images.random_resized_crop_box(width, height, np.random.default_rng(seed), 0.25)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        if (w, h) != (width, height) and not (left, top) == ((width - w) // 2, (height - h) // 2):
            assert 0.25 * width * height * 0.97 <= w * h
            assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    corners = {images.decode_train(_jpeg(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)),
                                 np.random.default_rng(s), 32)[0, 0].tobytes() for s in range(8)}
    assert len(corners) > 1  # crops and flips vary with the key


def test_imagenet_preparation_names_the_files_it_looked_for(tmp_path):
    with pytest.raises(data.DataError, match="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar") as e:
        imagenet.prepare(str(tmp_path), str(tmp_path / "tfds"))
    assert str(tmp_path / "ILSVRC2012_img_val.tar") in str(e.value)
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w"):
        pass
    with pytest.raises(data.DataError, match=r"missing: \S*ILSVRC2012_img_val.tar\. "):
        imagenet.prepare(str(tmp_path), str(tmp_path / "tfds"))
    with pytest.raises(data.DataError, match="python -m awn_jax.data synthetic imagenet2012"):
        data.stream_split(data.DATASETS["imagenet2012"], "train", str(tmp_path / "tfds"))
    with pytest.raises(data.DataError, match="only streamed"):
        data.load_split("imagenet2012", "train", str(tmp_path / "tfds"))


_READ_ALL = """
import dataclasses, sys
from awn_jax import data, input_pipeline
info = dataclasses.replace(data.DATASETS["imagenet2012"], image_shape=(64, 64, 3))
split = data.stream_split(info, "train", sys.argv[1])
held = [split.source[i] for i in range(len(split))] if sys.argv[2] == "whole" else None
for step, batch in input_pipeline.train_batches(split, 32, seed=0, stop_step=15):
    pass
# VmHWM, not ru_maxrss: the latter starts from the parent's size at fork.
print(next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_the_dataset(tmp_path):
    """15 steps of decoded, augmented batches from 100 and from 1,000 generated JPEGs (~5 and
    ~50 MB of files): the reading process's peak memory stays put; holding the 1,000 records,
    as a whole-split load would, shows up as ~50 MB more (the check can fail).

    The readers run with one glibc malloc arena. With an arena per thread, a run's peak moved by
    up to 15 MB from run to run (233-248 MB over the same 100 records, one suite run failed
    on it); with one, 8 alternated runs of each size lay within 225-226 MB, and the whole load at
    278 MB. Each streamed peak is still the lower of two runs, alternated; the whole load is
    measured once.
    """
    directories = {}
    for n in (100, 1000):
        directories[n] = str(tmp_path / str(n))
        imagenet.write_synthetic(directories[n], n, validation_examples=1, sizes=(200, 400))

    def peak(n, mode):
        out = subprocess.run([sys.executable, "-c", _READ_ALL, directories[n], mode], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_ARENA_MAX="1"))
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    runs = [(n, peak(n, "stream")) for _ in range(2) for n in (100, 1000)]
    stream = {n: min(p for m, p in runs if m == n) for n in (100, 1000)}
    whole = peak(1000, "whole")
    assert stream[1000] - stream[100] < 12, (runs, whole)
    assert whole - stream[1000] > 30, (runs, whole)


@pytest.mark.slow
def test_the_imagenet_smoke_config_trains_through_the_main_command(synthetic_imagenet, tmp_path):
    # LeNet in place of MobileNetV2: the ImageNet MobileNetV2 takes a minute to compile on a 2-core
    # CPU (its layout is tested in test_train.py and test_models.py); this test is about the data path.
    env = dict(os.environ, JAX_PLATFORMS="cpu", AWN_JAX_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run(
        [sys.executable, "-m", "awn_jax.main", "--config=configs/mbv2_imagenet.py:smoke",
         f"--config.data_dir={synthetic_imagenet}", f"--workdir={tmp_path / 'run'}", "--config.data.image_size=32",
         "--config.data.workers=1", "--config.sweep.after_training=False", "--config.eval_widths=(1.0,)",
         "--config.model=lenet3c1l"],
        cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "lenet3c1l/awn on imagenet2012: 1 steps (1 epochs x 1)" in run.stdout
    final = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert final["kind"] == "final" and len(final["accuracy"]) == 1
