"""The PyTorch twins of the AWN models (the benchmark's optional comparison) compute what the Flax models do.

Skipped where torch is not installed (it is the optional ``bench`` extra, not a test dependency).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from awn_jax.models.lenet import LeNet3C1L
from awn_jax.models.mobilenet_v2 import MobileNetV2
from helpers import random_variables

torch = pytest.importorskip("torch")
from awn_jax import torch_reference  # noqa: E402  (needs torch: after the skip)

# Every kind of block: expansion 1 and 6, a residual one, stride 2 on an even (10) and an odd (5) map.
SMALL_BLOCKS = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 1, 2))
WIDTHS = (1.0, 0.6, 0.35)


def _twin(model, variables, shape):
    return torch_reference.from_flax(torch_reference.twin_of(model, shape[1:]), variables)


CASES = {"lenet": (LeNet3C1L(), (6, 28, 28, 1)),
         "mobilenet_v2": (MobileNetV2(block_settings=SMALL_BLOCKS, last_channels=40), (6, 10, 10, 3))}


@pytest.mark.parametrize("name", CASES)
def test_the_pytorch_twin_gives_the_flax_models_logits_and_batchnorm_updates(name):
    model, shape = CASES[name]
    images = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    variables = random_variables(model, images)
    twin = _twin(model, variables, shape)
    nchw = torch_reference.to_nchw(images)
    # Eval mode at every width, then train mode (batch statistics, running statistics updated on the
    # active prefix only): one program.
    expected = jax.jit(lambda v, x: ([model.apply(v, x, width=w) for w in WIDTHS],
                                     model.apply(v, x, width=0.6, train=True, mutable=["batch_stats"])))
    logits, (train_logits, updated) = expected(variables, images)
    twin.eval()
    with torch.no_grad():
        for w, want in zip(WIDTHS, logits):
            np.testing.assert_allclose(twin(nchw, w).numpy(), want, rtol=1e-4, atol=2e-5)
        twin.train()
        np.testing.assert_allclose(twin(nchw, 0.6).numpy(), train_logits, rtol=1e-4, atol=2e-5)
    bn = twin.bns[1] if name == "lenet" else twin.blocks[1].expand_bn
    stats = updated["batch_stats"]["bn2"] if name == "lenet" else updated["batch_stats"]["blocks_1"]["expand_bn"]
    np.testing.assert_allclose(bn.running_var.numpy(), stats["var"], rtol=1e-4)
    np.testing.assert_allclose(bn.running_mean.numpy(), stats["mean"], rtol=1e-4, atol=1e-6)


def test_the_pytorch_twins_summed_gradients_are_the_flax_models():
    model, shape = CASES["mobilenet_v2"]
    images = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    labels = jnp.arange(shape[0]) % 10
    variables = random_variables(model, images)
    twin = _twin(model, variables, shape)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.0)  # the update leaves the gradients to read

    widths = (1.0, 0.35)

    def loss(params):
        total = 0.0
        for w in widths:
            logits, _ = model.apply({**variables, "params": params}, images, width=w, train=True,
                                    mutable=["batch_stats"])
            total += optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return total

    grads = jax.jit(jax.grad(loss))(variables["params"])
    nchw = torch_reference.to_nchw(images)
    torch_reference.train_step(twin, optimizer, nchw, torch.from_numpy(np.array(labels)).long(), widths)
    pairs = [(twin.stem.weight, grads["stem"]["kernel"]),
             (twin.blocks[1].expand.weight, grads["blocks_1"]["expand"]["kernel"]),  # triangular, masked zeros
             (twin.blocks[2].depthwise.weight, grads["blocks_2"]["depthwise"]["kernel"]),
             (twin.head.weight, grads["head"]["kernel"])]
    for weight, grad in pairs:
        np.testing.assert_allclose(weight.grad.numpy(), np.transpose(grad, (3, 2, 0, 1)), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(twin.classifier.weight.grad.numpy(), grads["classifier"]["kernel"].T,
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(twin.blocks[1].project_bn.weight.grad.numpy(),
                               grads["blocks_1"]["project_bn"]["scale"], rtol=1e-3, atol=1e-5)


def test_only_float32_awn_lenet_and_mobilenet_v2_have_a_pytorch_twin():
    with pytest.raises(ValueError, match=r"No PyTorch twin of LeNet3C1L\(variant='standard', dtype=None\): there are"
                                         " twins of the float32 AWN LeNet3C1L and MobileNetV2 only."):
        torch_reference.twin_of(LeNet3C1L(variant="standard"), (28, 28, 1))
    with pytest.raises(ValueError, match="No PyTorch twin of MobileNetV2.*dtype=<class 'jax.numpy.bfloat16'>"):
        torch_reference.twin_of(MobileNetV2(dtype=jnp.bfloat16), (32, 32, 3))
    for shape in ((12, 12, 1), (28, 30, 1)):
        with pytest.raises(ValueError, match=r"The LeNet3C1L twin takes square images of at least 16 pixels a side,"
                                             rf" got \({shape[0]}, {shape[1]}, 1\)"):
            torch_reference.twin_of(LeNet3C1L(), shape)
    # The BatchNorm momentum follows the model's (Flax's weight of the old value).
    twin = torch_reference.twin_of(MobileNetV2(bn_momentum=0.99, block_settings=SMALL_BLOCKS), (10, 10, 3))
    momenta = [m.momentum for m in twin.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert momenta and all(m == pytest.approx(0.01) for m in momenta)
