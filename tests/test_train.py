"""The training loop: configs, resume, NaN stop, config errors, metrics, devices, CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import checkpoints, config as config_lib, data, optim, sharding, train
from awn_jax.cli import train as train_cli
from awn_jax.models import MobileNetV2, from_config
from awn_jax.widths import step_widths
from helpers import CHECKOUT, checkout_env, fake_split, load_config, tiny_config

# The MobileNetV2 and ResNet configs are built, not trained, below: tests/test_notebooks.py trains
# mbv2_cifar10's config (mobilenet_config("cifar10"), on fewer blocks: the same code) through
# train_and_evaluate on CPU, and mbv2_cifar100 differs from it only in its data; the whole CIFAR
# layout runs in tests/test_models.py, and the ResNets' steps are tested in tests/test_steps.py.
CONFIGS = ["lenet_fmnist", "lenet_cifar10", "lenet_cifar100"]


def _splits(dataset, n_train=48, n_test=20):
    return fake_split(dataset, n_train, 0), fake_split(dataset, n_test, 1)


def _params_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_and_trains_a_few_steps(name, tmp_path):
    config = load_config(name)
    config_lib.validate(config)
    smoke = tiny_config(name, num_epochs=1, eval_widths=(1.0, config.widths.w_min))
    result = train.train_and_evaluate(smoke, str(tmp_path), splits=_splits(smoke.dataset, 32, 16))
    assert result["step"] == 2 and not result["interrupted"]
    assert set(result["accuracy"]) == {1.0, config.widths.w_min}
    assert os.path.exists(tmp_path / "config.json")
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {r["kind"] for r in records} >= {"train", "eval", "final"}
    assert len(os.listdir(tmp_path / "tensorboard")) >= 1


@pytest.mark.parametrize("name,classes", [("mbv2_cifar10", 10), ("mbv2_cifar100", 100), ("resnet20_fmnist", 10),
                                          ("resnet20_cifar10", 10), ("resnet56_cifar100", 100),
                                          ("mbv2_imagenet", 1000), ("resnet50_imagenet", 1000)])
def test_large_model_configs_build_their_models(name, classes):
    config = load_config(name)
    config_lib.validate(config)
    config_lib.validate(tiny_config(name))
    info = data.dataset_info(config)
    model = from_config(config, info.num_classes)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, *info.image_shape)))[0])
    assert out.shape == (2, classes)


@pytest.mark.parametrize("epochs,milestones,decays_at", [
    (100, (0.5, 0.75), {50: 1, 75: 1}),  # the paper's LeNet protocol
    (350, (250 / 350, 300 / 350), {250: 1, 300: 1}),  # MobileNetV2 AWN+RS
    (3, (0.5, 0.75), {2: 2}),  # both on epoch 2: decayed twice there, as PyTorch's MultiStepLR does
    (4, (0.1,), {1: 1}),  # never before the first epoch's end
    (1, (0.5, 0.75), {}),  # a one-epoch run has no boundary inside it
])
def test_step_schedule_decays_at_the_nearest_epoch_boundary_once_per_milestone(epochs, milestones, decays_at):
    config = config_lib.base_config()
    config.num_epochs, config.optim.milestones, config.learning_rate = epochs, milestones, 0.5
    spe = 7
    schedule = optim.make_schedule(config, spe)
    rates = np.asarray([schedule(step) for step in range(epochs * spe)])
    decays = np.cumsum([decays_at.get(step // spe, 0) if step % spe == 0 else 0 for step in range(epochs * spe)])
    np.testing.assert_allclose(rates, 0.5 * 0.1 ** decays, rtol=1e-6)
    assert config.optim.decay_factor == 0.1

def test_interrupted_run_resumes_to_the_same_params(tmp_path):
    # Per-width passes with random widths (AWN's one-pass resume: tests/test_faults.py's kill loop).
    config = tiny_config(variant="usnet", **{"widths.mode": "sandwich", "widths.grid_step": 0.25})
    splits = _splits(config.dataset)  # 3 steps per epoch, 6 in all
    straight = train.train_and_evaluate(config, str(tmp_path / "a"), splits=splits)
    stopped = train.train_and_evaluate(config, str(tmp_path / "b"), splits=splits, stop_after_steps=4)
    assert stopped["interrupted"] and stopped["step"] == 4
    resumed = train.train_and_evaluate(config, str(tmp_path / "b"), splits=splits)
    assert resumed["step"] == straight["step"] == 6
    _params_equal(resumed["state"].params, straight["state"].params)
    _params_equal(resumed["state"].batch_stats, straight["state"].batch_stats)
    assert resumed["accuracy"] == straight["accuracy"]
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps))  # no duplicated history after resuming


def test_a_workdir_of_another_config_is_refused(tmp_path):
    config = tiny_config()
    train.train_and_evaluate(config, str(tmp_path), splits=_splits(config.dataset), stop_after_steps=1)
    other = tiny_config(variant="standard")
    with pytest.raises(checkpoints.CheckpointError, match="variant: saved 'awn', now 'standard'"):
        train.train_and_evaluate(other, str(tmp_path), splits=_splits(other.dataset))


@pytest.mark.parametrize("field,value,match", [
    ("learning_rate", -0.1, "config.learning_rate"),
    ("variant", "slimmable", "unknown variant 'slimmable'"),
    ("dataset", "mnist", "unknown dataset 'mnist'"),
    ("widths.w_min", 1.5, "config.widths.w_min"),
    ("widths.w_min", 0.0, "config.widths.w_min"),
    ("widths.num", 1, "sandwich rule needs an integer >= 2"),
    ("optim.schedule", "cosine", "unknown schedule 'cosine'"),
    ("batch_size", 0, "config.batch_size"),
    ("widths.fixed", (1.0, "half"), "widths.fixed\\[1\\]"),
    ("data.train_examples", -5, "config.data.train_examples: -5 is not an integer >= 0"),
    ("sweep.grid_step", 1e-6, "config.sweep.grid_step: 1e-06.*\\[0.001, 1\\)"),
    ("sweep.grid_step", 2.0, "config.sweep.grid_step: 2.0"),
    ("sweep.grid_step", -1.0, "config.sweep.grid_step: -1.0"),
    ("sweep.calibration_batches", 0, "config.sweep.calibration_batches"),
    ("optim.milestones", ("a",), "config.optim.milestones"),
    ("optim.milestones", (None,), "config.optim.milestones"),
    ("optim.decay_factor", 0.0, "config.optim.decay_factor: 0.0 is not in \\(0, 1\\]"),
    ("optim.decay_factor", 10.0, "config.optim.decay_factor"),
    ("eval_widths", (), "config.eval_widths: no widths listed"),
    ("sweep.calibrations", (), "config.sweep.calibrations"),
    ("weight_decay", float("inf"), "config.weight_decay: inf"),
    ("model_args.width_multiplier", -1.0, "config.model_args.width_multiplier"),
])
def test_invalid_configs_are_rejected_naming_the_field(field, value, match):
    config = tiny_config(**{"widths.mode": "sandwich"} if field == "widths.num" else {})
    target = config
    *parents, leaf = field.split(".")
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(config)


def test_sandwich_widths_can_be_drawn_on_a_grid():
    config = tiny_config(**{"widths.mode": "sandwich", "widths.grid_step": 0.05, "widths.num": 6})
    for step in range(20):
        widths = step_widths(config, step)
        assert widths[0] == 1.0 and 0.25 in widths
        assert all(abs(w / 0.05 - round(w / 0.05)) < 1e-9 and 0.25 <= w <= 1.0 for w in widths)
    # Bounds off the grid are trained as they are (rounded, 0.39 would be 0.4 and 0.97 0.96).
    config.widths.grid_step, config.widths.w_min, config.widths.w_max = 0.02, 0.39, 0.97
    for step in range(20):
        widest, narrowest, *middle = step_widths(config, step)
        assert (widest, narrowest) == (0.97, 0.39)
        assert all(abs(w / 0.02 - round(w / 0.02)) < 1e-9 or w in (0.39, 0.97) for w in middle)
        assert all(0.39 <= w <= 0.97 for w in middle)
    config.widths.grid_step = 1.5
    with pytest.raises(config_lib.ConfigError, match="widths.grid_step"):
        config_lib.validate(config)


def test_snet_lists_the_widths_it_trains_unless_told_otherwise_and_trains_only_listed_ones():
    config = tiny_config(variant="snet", **{"widths.fixed": (1.0, 0.6)})
    config_lib.validate(config)
    assert from_config(config, 10).bn_widths == (0.6, 1.0)
    mbv2 = load_config("mbv2_cifar10")  # trains at 0.35, which S-Net's usual four widths do not list
    mbv2.variant, mbv2.widths.mode = "snet", "fixed"
    config_lib.validate(mbv2)
    assert from_config(mbv2, 10).bn_widths == (0.35, 0.5, 0.75, 1.0)
    config.widths.fixed = (1.0, 0.5)  # inside the usual four: listed at those four, as before (old checkpoints)
    assert from_config(config, 10).bn_widths == (0.25, 0.5, 0.75, 1.0)
    config.model_args.bn_widths = (0.25, 0.5, 1.0)
    assert from_config(config, 10).bn_widths == (0.25, 0.5, 1.0)
    config.widths.fixed = (1.0, 0.6)
    with pytest.raises(config_lib.ConfigError, match="config.widths.fixed: S-Net trains its listed BatchNorm widths"):
        config_lib.validate(config)
    config.model_args.bn_widths, config.widths.fixed = None, (0.35, 0.6)  # evaluation and the sweep reach 1
    with pytest.raises(config_lib.ConfigError, match="config.widths.fixed: S-Net's widest listed BatchNorm is at 0.6"):
        config_lib.validate(config)
    config.model_args.bn_widths, config.widths.mode = None, "sandwich"
    with pytest.raises(config_lib.ConfigError, match="config.widths.mode: S-Net"):
        config_lib.validate(config)


def test_mobilenet_block_settings_build_the_model_and_survive_the_saved_config(tmp_path):
    config = load_config("mbv2_cifar10")
    assert from_config(config, 10).block_settings == MobileNetV2.block_settings  # unset: the model's own
    # As the README's flag gives them.
    argv = ["prog", f"--config={CHECKOUT}/configs/mbv2_cifar10.py", f"--workdir={tmp_path}",
            "--config.model_args.block_settings=((1,8,1,1),(6,12,2,2))"]
    fv = train_cli.define_flags(argv)
    fv(argv)
    config = fv.config
    model = from_config(config_lib.validate(config), 10)
    assert model.block_settings == ((1, 8, 1, 1), (6, 12, 2, 2))
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert sorted(k for k in params if k.startswith("blocks")) == ["blocks_0", "blocks_1", "blocks_2"]  # 1 + 2
    # config.json stores them as nested lists; a resumed run reads back the same tuples, and
    # another layout is another run.
    checkpoints.save_config(str(tmp_path), config)
    assert checkpoints.load_config(str(tmp_path)).model_args.block_settings == ((1, 8, 1, 1), (6, 12, 2, 2))
    checkpoints.check_same_run(str(tmp_path), config)
    other = load_config("mbv2_cifar10")
    other.model_args.block_settings = ((1, 8, 1, 1),)
    with pytest.raises(checkpoints.CheckpointError, match="model_args.block_settings: saved"):
        checkpoints.check_same_run(str(tmp_path), other)
    # Stages given as lists (a notebook, a flag in list syntax) build a model that hashes, as jit needs.
    other.model_args.block_settings = ([1, 8, 1, 1], [6, 12, 2, 2])
    assert hash(from_config(config_lib.validate(other), 10)) == hash(model)
    imagenet = load_config("mbv2_imagenet")  # MobileNetV2's other layout takes them too
    imagenet.model_args.block_settings = ((1, 16, 1, 1),)
    assert from_config(config_lib.validate(imagenet), 1000).block_settings == ((1, 16, 1, 1),)
    for settings, match in [((), "block_settings: no stages listed"),
                            ((1, 8, 1, 1), r"\(1, 8, 1, 1\) is one stage, not a tuple of stages; write \(\(1, 8"),
                            (((1, 8, 1),), r"block_settings\[0\]: \(1, 8, 1\) is not a stage"),
                            (((1, 8, 1, 1), (6, 0, 2, 2)), r"block_settings\[1\]: .* 4 positive integers")]:
        config.model_args.block_settings = settings
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.validate(config)
    lenet = tiny_config(**{"model_args.block_settings": ((1, 8, 1, 1),)})
    with pytest.raises(config_lib.ConfigError, match="set for model 'lenet3c1l'; only MobileNetV2"):
        config_lib.validate(lenet)


TENSORBOARD_WITHOUT_TORCH = """
import glob, sys
from awn_jax.metrics_log import MetricsLog
before = __import__("torch") if sys.argv[2] == "torch first" else None
log = MetricsLog(sys.argv[1])
log.write(3, "train", {"loss": 0.5, "acc": [0.25, 0.75]})
log.close()
assert sys.modules.get("torch") is before, "the training log imported torch, or dropped the one imported"
import torch  # this process can still import it
print(torch.FAKE, len(glob.glob(sys.argv[1] + "/tensorboard/events.out.tfevents.*")))
"""


@pytest.mark.parametrize("first", ["log first", "torch first"])
def test_the_training_log_writes_tensorboard_events_without_importing_torch(tmp_path, first):
    # A stand-in torch first on the path: tensorboardX imports torch whenever it can.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("FAKE = 'fake torch'\nTensor = object\n")
    env = checkout_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    run = subprocess.run([sys.executable, "-c", TENSORBOARD_WITHOUT_TORCH, str(tmp_path / "wd"), first],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["fake", "torch", "1"]
    assert json.loads((tmp_path / "wd" / "metrics.jsonl").read_text())["loss"] == 0.5


def _main(*args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "awn_jax.main", *args], cwd=CHECKOUT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_reports_bad_input_in_one_line_without_traceback(tmp_path):
    bad = _main("--config=configs/lenet_fmnist.py", f"--workdir={tmp_path}", "--config.learning_rate=-1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: config.learning_rate")
    assert "Traceback" not in bad.stderr
    unknown = _main("--config=configs/lenet_fmnist.py", f"--workdir={tmp_path}", "--config.lerning_rate=0.1")
    assert unknown.returncode != 0 and "lerning_rate" in unknown.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_a_batch_that_the_devices_cannot_share_is_refused():
    # Training on 1 device, 2 devices and 2 processes computes the same: tests/test_multihost.py.
    two = [jax.devices()[0]] * 2  # the check needs only the count
    with pytest.raises(ValueError, match="config.batch_size 15 is not divisible by the 2 devices"):
        sharding.data_mesh(two, 15)
