"""ResNets with the CIFAR stem (He et al., "Deep Residual Learning for Image Recognition", 2016).

The CIFAR stem is a single 3×3 convolution with stride 1 and no max-pool, as in the paper's CIFAR-10
networks (section 4.2) and in SimCLR's CIFAR-10 experiments (Chen et al., ICML 2020, appendix B.9),
so a 32 px image keeps its resolution in the first stage.

- :func:`resnet_cifar` — the paper's small CIFAR family: three stages of ``width``, ``2·width``,
  ``4·width`` channels with ``depth`` BasicBlocks each (ResNet-20 is ``width=16, depth=3``).
- :func:`resnet18` / :func:`resnet50` — the ImageNet networks (BasicBlock [2,2,2,2] and Bottleneck
  [3,4,6,3], base width 64) with the CIFAR stem; 11,168,832 and 23,500,352 parameters for 3 input
  channels (no classifier).

Shortcuts are identity, or a strided 1×1 conv + BN when the shape changes (the paper's option B).
In the Bottleneck the stride sits on the 3×3 convolution (the "v1.5" placement used by
torchvision and most self-supervised code; the parameter count is the same as the paper's).

``zero_init_residual=True`` sets the last BN scale of every block to 0, so each block starts as the
identity (Goyal et al., "Accurate, Large Minibatch SGD", 2017). It is off by default, as in the
original networks.
"""

from __future__ import annotations

import torch
from torch import nn

from fewlabels.models.convnet import init_conv_weights


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity, or a projection (1×1 conv + BN) when the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection; ReLU after the sum."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = shortcut(in_channels, channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, each with BN; ReLU after the residual sum."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-stem ResNet: 3×3 stem conv (stride 1), stages of residual blocks, global avg pool.

    Stage ``i`` has ``width * 2**i`` base channels (times the block's expansion) and stride 1 for
    the first stage, 2 for the others. ``space_to_depth > 1`` puts a lossless pixel-unshuffle in
    front of the stem (see :mod:`fewlabels.models.convnet`); the published networks use 1.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        blocks_per_stage: number of blocks in each stage, e.g. ``[2, 2, 2, 2]``.
        in_channels: channels of the input images.
        width: channels of the stem and base channels of the first stage.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: list[int],
        in_channels: int,
        width: int = 64,
        zero_init_residual: bool = False,
        space_to_depth: int = 1,
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = []
        if space_to_depth > 1:
            stem.append(nn.PixelUnshuffle(space_to_depth))
        stem += [
            conv3x3(in_channels * space_to_depth**2, width),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        self.stem = nn.Sequential(*stem)
        channels = width
        stages = []
        for index, num_blocks in enumerate(blocks_per_stage):
            base = width * 2**index
            blocks = []
            for b in range(num_blocks):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(block(channels, base, stride))
                channels = base * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels
        init_conv_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # [N, width, H, W]
        x = self.stages(x)  # [N, feature_dim, H/2^(stages-1), W/2^(stages-1)]
        return x.mean(dim=(2, 3))  # [N, feature_dim]


def resnet_cifar(
    in_channels: int,
    width: int = 16,
    depth: int = 3,
    zero_init_residual: bool = False,
    space_to_depth: int = 1,
) -> ResNet:
    """Small CIFAR ResNet (section 4.2): 3 stages of ``depth`` BasicBlocks (6·depth+2 layers)."""
    return ResNet(BasicBlock, [depth] * 3, in_channels, width, zero_init_residual, space_to_depth)


def resnet18(in_channels: int, width: int = 64, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 with the CIFAR stem: BasicBlock [2, 2, 2, 2], feature_dim ``8·width`` (512)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, width, zero_init_residual)


def resnet50(in_channels: int, width: int = 64, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 with the CIFAR stem: Bottleneck [3, 4, 6, 3], feature_dim ``32·width`` (2048)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels, width, zero_init_residual)
