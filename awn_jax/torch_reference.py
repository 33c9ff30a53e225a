"""The AWN models in PyTorch (LeNet-3C1L, MobileNetV2), for the benchmark's side-by-side comparison only.

Written from the authors' semantics (REFERENCE.md), not from their code: triangular
weight masks (``W * M``, the masks of :mod:`awn_jax.masks`), one PyTorch BatchNorm whose
first ``c`` channels serve width ``w`` (statistics updated in place on that prefix), a
classifier reading the active channels, and the training step of the reference code:
one sequential forward and backward pass per width, gradients summed, one SGD-momentum
update. The authors released no MobileNetV2; this one is the layout of
``awn_jax.models.MobileNetV2`` (REFERENCE.md's inferred CIFAR layout), with XLA's 'SAME'
padding, so that both compute the same function. It needs ``torch`` (``pip install -e
'.[bench]'``); no other module imports it. Models run on whatever device they are moved to
(``model.to('cuda')``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from awn_jax.masks import triangular_mask
from awn_jax.models.common import variant_spec
from awn_jax.models.lenet import LeNet3C1L
from awn_jax.models.mobilenet_v2 import CIFAR_BLOCKS, MobileNetV2
from awn_jax.widths import num_channels

__all__ = ["TorchAWNLeNet", "TorchAWNMobileNetV2", "twin_of", "train_step", "from_flax", "to_nchw"]


def _tensor(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding of one spatial side: the extra row, if any, goes after (not PyTorch's)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _WidthConv(torch.nn.Module):
    """A conv on a channel prefix: the kernel sliced to the active counts, masked if triangular.

    Attributes mirror ``awn_jax.layers``: ``triangular`` multiplies the kernel by the exact
    mask (``masks.triangular_mask``), ``depthwise`` convolves each active channel alone.
    """

    def __init__(self, in_features: int, features: int, kernel_size: int, stride: int = 1, padding: str = "SAME",
                 bias: bool = False, triangular: bool = True, depthwise: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.depthwise = kernel_size, stride, padding, depthwise
        self.weight = torch.nn.Parameter(torch.zeros(features, 1 if depthwise else in_features, kernel_size,
                                                     kernel_size))
        self.bias = torch.nn.Parameter(torch.zeros(features)) if bias else None
        if triangular and not depthwise:
            # (out, in, 1, 1): the transpose of the (in, out) mask of Flax kernels.
            mask = torch.from_numpy(np.ascontiguousarray(triangular_mask(in_features, features).T))
            self.register_buffer("mask", mask[:, :, None, None].float())
        else:
            self.mask = None

    def forward(self, x: torch.Tensor, c_out: int | None = None) -> torch.Tensor:
        """The first ``c_out`` outputs from ``x``'s channels (a depthwise conv's: as many as it reads)."""
        c_in = x.shape[1]
        if self.depthwise:
            c_out = c_in
            weight = self.weight[:c_in]
        else:
            weight = self.weight[:c_out, :c_in]
            if self.mask is not None:
                weight = weight * self.mask[:c_out, :c_in]
        bias = None if self.bias is None else self.bias[:c_out]
        pads = (0, 0)
        if self.padding == "SAME":
            (top, bottom), (left, right) = (_same_pads(s, self.kernel_size, self.stride) for s in x.shape[2:])
            if (top, left) == (bottom, right):
                pads = (top, left)
            else:
                x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, weight, bias, self.stride, pads, groups=c_in if self.depthwise else 1)

    def load(self, kernel: Any, bias: Any = None) -> None:
        """Copies a Flax HWIO kernel (and bias)."""
        self.weight.copy_(_tensor(kernel).permute(3, 2, 0, 1))
        if self.bias is not None:
            self.bias.copy_(_tensor(bias))


class _PrefixBatchNorm(torch.nn.BatchNorm2d):
    """One BatchNorm for every width: the first ``c`` channels serve an input of ``c`` channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum, self.eps)

    def load(self, params: dict, stats: dict) -> None:
        """Copies a Flax ``PrefixBatchNorm``'s variables."""
        self.weight.copy_(_tensor(params["scale"]))
        self.bias.copy_(_tensor(params["bias"]))
        self.running_mean.copy_(_tensor(stats["mean"]))
        self.running_var.copy_(_tensor(stats["var"]))


class TorchAWNLeNet(torch.nn.Module):
    """LeNet-3C1L with triangular convs (AWN), ``channels`` wide, for square ``(N, C, H, H)`` images.

    ``final_side`` is the side of the last pooled map (4 for 28-pixel images); ``bn_momentum`` is
    Flax's (the old value's weight: PyTorch's 0.1 is 0.9).
    """

    def __init__(self, channels: int = 45, num_classes: int = 10, in_channels: int = 1, final_side: int = 4,
                 bn_momentum: float = 0.9):
        super().__init__()
        self.channels, self.final_side = channels, final_side
        conv = dict(padding="VALID", bias=True)
        self.conv1 = _WidthConv(in_channels, channels, 3, triangular=False, **conv)  # reads every image channel
        self.conv2 = _WidthConv(channels, channels, 3, **conv)
        self.conv3 = _WidthConv(channels, channels, 5, **conv)
        self.bns = torch.nn.ModuleList(_PrefixBatchNorm(channels, momentum=1 - bn_momentum) for _ in range(3))
        self.classifier = torch.nn.Linear(channels * final_side**2, num_classes)

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        """Logits at ``width`` for NCHW images ``x``."""
        c = num_channels(width, self.channels)
        x = F.relu(self.bns[0](self.conv1(x, c)))
        x = F.max_pool2d(F.relu(self.bns[1](self.conv2(x, c))), 2)
        x = F.max_pool2d(F.relu(self.bns[2](self.conv3(x, c))), 2)
        return F.linear(x.flatten(1), self.classifier.weight[:, : c * self.final_side**2], self.classifier.bias)

    def load_flax(self, variables: dict) -> None:
        """Copies a Flax ``LeNet3C1L(variant='awn')``'s variables (NHWC -> NCHW layouts)."""
        params, stats = variables["params"], variables["batch_stats"]
        for name in ("conv1", "conv2", "conv3"):
            getattr(self, name).load(params[name]["kernel"], params[name]["bias"])
        for i, bn in enumerate(self.bns):
            bn.load(params[f"bn{i + 1}"], stats[f"bn{i + 1}"])
        kernel = _tensor(params["classifier"]["kernel"])  # (h, w, c, classes) -> (classes, c * h * w)
        self.classifier.weight.copy_(kernel.permute(3, 2, 0, 1).reshape(kernel.shape[3], -1))
        self.classifier.bias.copy_(_tensor(params["classifier"]["bias"]))


class _InvertedResidual(torch.nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 (linear), residual when shapes match."""

    def __init__(self, in_features: int, features: int, expansion: int, stride: int, momentum: float):
        super().__init__()
        self.hidden, self.features = in_features * expansion, features
        self.expand = _WidthConv(in_features, self.hidden, 1) if expansion != 1 else None
        self.expand_bn = _PrefixBatchNorm(self.hidden, momentum=momentum) if expansion != 1 else None
        self.depthwise = _WidthConv(self.hidden, self.hidden, 3, stride, depthwise=True)
        self.depthwise_bn = _PrefixBatchNorm(self.hidden, momentum=momentum)
        self.project = _WidthConv(self.hidden, features, 1)
        self.project_bn = _PrefixBatchNorm(features, momentum=momentum)
        self.residual = stride == 1 and in_features == features

    def forward(self, x: torch.Tensor, width: float) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = F.relu6(self.expand_bn(self.expand(y, num_channels(width, self.hidden))))
        y = F.relu6(self.depthwise_bn(self.depthwise(y)))
        y = self.project_bn(self.project(y, num_channels(width, self.features)))
        return y + x if self.residual else y

    def load_flax(self, params: dict, stats: dict) -> None:
        for name in ("expand", "depthwise", "project"):
            if getattr(self, name) is not None:
                getattr(self, name).load(params[name]["kernel"])
                getattr(self, f"{name}_bn").load(params[f"{name}_bn"], stats[f"{name}_bn"])


class TorchAWNMobileNetV2(torch.nn.Module):
    """MobileNetV2 with triangular 1x1 convs and sliced depthwise convs (AWN), for ``(N, C, H, W)`` images.

    The arguments are ``awn_jax.models.MobileNetV2``'s: every base count times ``multiplier``
    (rounded as the Flax model rounds it), hidden counts the input count times the expansion;
    ``bn_momentum`` is Flax's (the old value's weight: PyTorch's 0.1 is 0.9).
    """

    def __init__(self, num_classes: int = 10, multiplier: float = math.sqrt(2),
                 block_settings: Sequence[tuple[int, int, int, int]] = CIFAR_BLOCKS, stem_channels: int = 32,
                 stem_strides: int = 1, last_channels: int = 1280, in_channels: int = 3, bn_momentum: float = 0.9):
        super().__init__()
        full = variant_spec("awn", multiplier, None).channels
        momentum = 1 - bn_momentum
        channels = self.stem_features = full(stem_channels)
        self.stem = _WidthConv(in_channels, channels, 3, stem_strides, triangular=False)
        self.stem_bn = _PrefixBatchNorm(channels, momentum=momentum)
        blocks = []
        for t, c, n, s in block_settings:
            for i in range(n):
                blocks.append(_InvertedResidual(channels, full(c), t, s if i == 0 else 1, momentum))
                channels = full(c)
        self.blocks = torch.nn.ModuleList(blocks)
        self.last = full(last_channels)
        self.head = _WidthConv(channels, self.last, 1)
        self.head_bn = _PrefixBatchNorm(self.last, momentum=momentum)
        self.classifier = torch.nn.Linear(self.last, num_classes)

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        """Logits at ``width`` for NCHW images ``x``."""
        x = F.relu6(self.stem_bn(self.stem(x, num_channels(width, self.stem_features))))
        for block in self.blocks:
            x = block(x, width)
        x = F.relu6(self.head_bn(self.head(x, num_channels(width, self.last))))
        c = x.shape[1]
        return F.linear(x.mean((2, 3)), self.classifier.weight[:, :c], self.classifier.bias)

    def load_flax(self, variables: dict) -> None:
        """Copies a Flax ``MobileNetV2(variant='awn')``'s variables (NHWC -> NCHW layouts)."""
        params, stats = variables["params"], variables["batch_stats"]
        self.stem.load(params["stem"]["kernel"])
        self.stem_bn.load(params["stem_bn"], stats["stem_bn"])
        for i, block in enumerate(self.blocks):
            block.load_flax(params[f"blocks_{i}"], stats[f"blocks_{i}"])
        self.head.load(params["head"]["kernel"])
        self.head_bn.load(params["head_bn"], stats["head_bn"])
        self.classifier.weight.copy_(_tensor(params["classifier"]["kernel"]).T)
        self.classifier.bias.copy_(_tensor(params["classifier"]["bias"]))


def twin_of(model: LeNet3C1L | MobileNetV2, image_shape: Sequence[int]) -> torch.nn.Module:
    """The PyTorch twin of a Flax AWN model, its parameters still zero (:func:`from_flax` copies them).

    Args:
      model: an AWN (``variant='awn'``) ``LeNet3C1L`` or ``MobileNetV2`` (either layout), float32.
      image_shape: the model's ``(H, W, C)`` images.

    Returns:
      A :class:`TorchAWNLeNet` or :class:`TorchAWNMobileNetV2` of the same channel counts,
      layout and BatchNorm momentum.

    Raises:
      ValueError: there is no twin of ``model`` (another model, variant or dtype), or LeNet's
        images are not square or leave no map to pool.
    """
    supported = isinstance(model, (LeNet3C1L, MobileNetV2)) and model.variant == "awn"
    if not supported or np.dtype(model.dtype or np.float32) != np.float32:
        raise ValueError(f"No PyTorch twin of {type(model).__name__}(variant={getattr(model, 'variant', None)!r},"
                         f" dtype={getattr(model, 'dtype', None)!r}): there are twins of the float32 AWN LeNet3C1L"
                         " and MobileNetV2 only.")
    spec = variant_spec(model.variant, model.width_multiplier, None)
    height, width, in_channels = image_shape
    if isinstance(model, LeNet3C1L):
        side = ((height - 4) // 2 - 4) // 2  # two 3x3 VALID convs, a pool, a 5x5 VALID conv, a pool
        if height != width or side < 1:
            raise ValueError(f"The LeNet3C1L twin takes square images of at least 16 pixels a side, got"
                             f" {tuple(image_shape)}.")
        return TorchAWNLeNet(spec.channels(model.base_channels), model.num_classes, in_channels, side,
                             model.bn_momentum)
    return TorchAWNMobileNetV2(model.num_classes, spec.multiplier, model.block_settings, model.stem_channels,
                               model.stem_strides, model.last_channels, in_channels, model.bn_momentum)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, widths: Sequence[float]) -> list[float]:
    """The reference step: a forward and backward pass per width, gradients summed, one update.

    Args:
      model: a twin (train mode is set here).
      optimizer: over ``model``'s parameters.
      images: NCHW, on ``model``'s device.
      labels: class indices, on ``model``'s device.
      widths: the step's widths, in order.

    Returns:
      The loss at each width (read back once, after the update, so that an accelerator
      is not waited for between widths).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for w in widths:
        loss = F.cross_entropy(model(images, w), labels)
        loss.backward()
        losses.append(loss.detach())
    optimizer.step()
    return [float(loss) for loss in losses]


def from_flax(model: torch.nn.Module, variables: dict) -> torch.nn.Module:
    """Copies a Flax AWN model's variables into its PyTorch twin.

    Args:
      model: the twin (:func:`twin_of`), on the CPU (move it after).
      variables: the Flax model's ``{'params', 'batch_stats'}``, host arrays.

    Returns:
      ``model``.
    """
    with torch.no_grad():
        model.load_flax(variables)
    return model


def to_nchw(images: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """NHWC images (a JAX or NumPy array) as the twins take them: a contiguous NCHW tensor on ``device``."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous().to(device)
