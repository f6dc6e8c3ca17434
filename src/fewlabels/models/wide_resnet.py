"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k has a 3×3 stem conv with 16 channels and three groups of ``n = (d - 4) / 6``
pre-activation blocks (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016) with
``16k``, ``32k`` and ``64k`` channels, strides 1, 2, 2; then BN-ReLU and a global average pool.
WRN-28-2 (1.47M parameters, feature_dim 128) is the backbone of MixMatch, UDA and FixMatch
(Sohn et al., NeurIPS 2020) on CIFAR-10.

Those semi-supervised codebases use a leaky ReLU (slope 0.1) and a BN momentum of 0.001; pass
``negative_slope=0.1, bn_momentum=0.001`` to match them. The defaults follow the WRN paper
(ReLU, PyTorch's BN momentum 0.1, no dropout).

The blocks end with a convolution, not a BN, so there is no zero-init-residual option here.
"""

from __future__ import annotations

import torch
from torch import nn

from fewlabels.models.convnet import init_conv_weights


class WideBlock(nn.Module):
    """Pre-activation block: BN-act-conv3×3(stride)-BN-act-dropout-conv3×3, plus the shortcut.

    When the shape changes the shortcut is a strided 1×1 conv applied to the pre-activated input,
    as in the reference implementation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        dropout: float,
        negative_slope: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.projection: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: x is still needed for the identity shortcut.
        pre = nn.functional.leaky_relu(self.bn1(x), self.act.negative_slope)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.act(self.bn2(out))))
        residual = x if self.projection is None else self.projection(pre)
        return out + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for small images; ``feature_dim = 64 * widen_factor``.

    Args:
        in_channels: channels of the input images.
        depth: total depth ``6n + 4`` (28 for WRN-28-2).
        widen_factor: the ``k`` of WRN-d-k.
        dropout: dropout between the two convolutions of a block.
        negative_slope: slope of the leaky ReLU (0 = ReLU).
        bn_momentum: PyTorch BN momentum (weight of the new batch statistics).
    """

    def __init__(
        self,
        in_channels: int,
        depth: int = 28,
        widen_factor: int = 2,
        dropout: float = 0.0,
        negative_slope: float = 0.0,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        blocks_per_group = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        channels = 16
        blocks: list[nn.Module] = []
        for group, stride in enumerate((1, 2, 2)):
            out_channels = 16 * widen_factor * 2**group
            for b in range(blocks_per_group):
                blocks.append(
                    WideBlock(
                        channels,
                        out_channels,
                        stride if b == 0 else 1,
                        dropout,
                        negative_slope,
                        bn_momentum,
                    )
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = nn.BatchNorm2d(channels, momentum=bn_momentum)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.feature_dim = channels
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # [N, 16, H, W]
        x = self.blocks(x)  # [N, 64k, H/4, W/4]
        x = self.act(self.final_norm(x))
        return x.mean(dim=(2, 3))  # [N, 64k]
