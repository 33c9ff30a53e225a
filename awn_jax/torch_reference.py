"""The reference AWN LeNet-3C1L in PyTorch, for the benchmark's side-by-side comparison only.

Written from the authors' semantics (REFERENCE.md), not from their code: triangular
weight masks (``W * M``, the masks of :mod:`awn_jax.masks`), one PyTorch BatchNorm whose
first ``c`` channels serve width ``w`` (statistics updated in place on that prefix), a
classifier reading the active channels, and the training step of the reference code:
one sequential forward and backward pass per width, gradients summed, one SGD-momentum
update. It needs ``torch`` (``pip install -e '.[bench]'``); no other module imports it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from awn_jax.masks import triangular_mask
from awn_jax.widths import num_channels

__all__ = ["TorchAWNLeNet", "train_step", "from_flax"]


class TorchAWNLeNet(torch.nn.Module):
    """LeNet-3C1L with triangular convs (AWN), ``channels`` wide, for ``(N, C, 28, 28)`` images."""

    def __init__(self, channels: int = 45, num_classes: int = 10, in_channels: int = 1, final_side: int = 4):
        super().__init__()
        self.channels, self.final_side = channels, final_side
        self.conv1 = torch.nn.Conv2d(in_channels, channels, 3)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3)
        self.conv3 = torch.nn.Conv2d(channels, channels, 5)
        self.bns = torch.nn.ModuleList(torch.nn.BatchNorm2d(channels) for _ in range(3))
        self.classifier = torch.nn.Linear(channels * final_side**2, num_classes)
        # (out, in, 1, 1) masks; conv1 reads every image channel.
        for name in ("conv2", "conv3"):
            mask = torch.from_numpy(np.ascontiguousarray(triangular_mask(channels, channels).T))
            self.register_buffer(f"{name}_mask", mask[:, :, None, None].float())

    def _conv(self, name: str, x: torch.Tensor, c: int) -> torch.Tensor:
        conv = getattr(self, name)
        weight = conv.weight if name == "conv1" else conv.weight * getattr(self, f"{name}_mask")
        return F.conv2d(x, weight[:c, : x.shape[1]], conv.bias[:c])

    def _norm(self, i: int, x: torch.Tensor, c: int) -> torch.Tensor:
        bn = self.bns[i]
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            self.training, bn.momentum, bn.eps)

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        c = num_channels(width, self.channels)
        x = F.relu(self._norm(0, self._conv("conv1", x, c), c))
        x = F.max_pool2d(F.relu(self._norm(1, self._conv("conv2", x, c), c)), 2)
        x = F.max_pool2d(F.relu(self._norm(2, self._conv("conv3", x, c), c)), 2)
        return F.linear(x.flatten(1), self.classifier.weight[:, : c * self.final_side**2], self.classifier.bias)


def train_step(model: TorchAWNLeNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, widths: Sequence[float]) -> list[float]:
    """The reference step: a forward and backward pass per width, gradients summed, one update.

    Returns:
      The loss at each width.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for w in widths:
        loss = F.cross_entropy(model(images, w), labels)
        loss.backward()
        losses.append(float(loss.detach()))
    optimizer.step()
    return losses


def from_flax(model: TorchAWNLeNet, variables: dict) -> TorchAWNLeNet:
    """Copies a Flax ``LeNet3C1L(variant='awn')``'s variables into ``model`` (NHWC -> NCHW layouts)."""
    params, stats = variables["params"], variables["batch_stats"]

    def t(a):
        return torch.from_numpy(np.array(a, np.float32))

    with torch.no_grad():
        for name in ("conv1", "conv2", "conv3"):
            getattr(model, name).weight.copy_(t(params[name]["kernel"]).permute(3, 2, 0, 1))
            getattr(model, name).bias.copy_(t(params[name]["bias"]))
        for i, bn in enumerate(model.bns):
            bn.weight.copy_(t(params[f"bn{i + 1}"]["scale"]))
            bn.bias.copy_(t(params[f"bn{i + 1}"]["bias"]))
            bn.running_mean.copy_(t(stats[f"bn{i + 1}"]["mean"]))
            bn.running_var.copy_(t(stats[f"bn{i + 1}"]["var"]))
        kernel = t(params["classifier"]["kernel"])  # (h, w, c, classes) -> (classes, c * h * w)
        model.classifier.weight.copy_(kernel.permute(3, 2, 0, 1).reshape(kernel.shape[3], -1))
        model.classifier.bias.copy_(t(params["classifier"]["bias"]))
    return model
