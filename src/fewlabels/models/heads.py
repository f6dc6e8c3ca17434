"""Heads that methods put on top of a backbone's features.

- :class:`ProjectionHead` — the MLP projector of SimCLR (Chen et al., ICML 2020: Linear-BN-ReLU-
  Linear), and with more layers those of BYOL, SimSiam, Barlow Twins, VICReg and MoCo v3.
- :class:`PredictionHead` — the predictor of BYOL (Grill et al., NeurIPS 2020) and SimSiam
  (Chen & He, CVPR 2021): the same machinery, applied to the online projection.
- :class:`PrototypeHead` — L2-normalised prototypes of SwAV (Caron et al., NeurIPS 2020) and the
  weight-normalised last layer of DINO (Caron et al., ICCV 2021).

Typical sizes: SimCLR ``ProjectionHead(512, 2048, 128)``; BYOL ``ProjectionHead(512, 4096, 256)``
and ``PredictionHead(256, 4096, 256)``; Barlow Twins ``ProjectionHead(512, 8192, 8192,
num_layers=3)``; SimSiam ``ProjectionHead(512, 2048, 2048, num_layers=3, last_batch_norm=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden_dim -> ... -> out_dim`` with ``num_layers`` linear layers.

    Every hidden layer is Linear-BN-ReLU (Linear-ReLU with ``batch_norm=False``); the last layer
    is a plain Linear, followed by a BN without learnable scale and shift when
    ``last_batch_norm=True`` (SimSiam, MoCo v3). Linear layers followed by BN have no bias.
    ``num_layers=1`` is a single Linear ``in_dim -> out_dim``.

    Shapes: ``[N, in_dim] -> [N, out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # [N, out_dim]


class PredictionHead(ProjectionHead):
    """BYOL / SimSiam predictor: Linear-BN-ReLU-Linear on the projection, ``[N, in] -> [N, out]``.

    BYOL uses ``PredictionHead(256, 4096, 256)``; SimSiam a bottleneck,
    ``PredictionHead(2048, 512, 2048)``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers, batch_norm, last_batch_norm=False)


class PrototypeHead(nn.Module):
    """Scores against ``num_prototypes`` L2-normalised prototype vectors.

    ``forward(x)`` L2-normalises the features and returns ``x̂ · Cᵀ`` ``[N, num_prototypes]``,
    the cosine similarity to each prototype when the prototypes ``C`` have unit norm:

    - SwAV keeps them unit-norm by calling :meth:`normalize_` before each training step.
    - DINO's weight-normalised layer (norm fixed to 1) is ``weight_normalized=True``, which
      normalises the prototypes inside ``forward`` so gradients see the normalisation.
    """

    def __init__(self, in_dim: int, num_prototypes: int, weight_normalized: bool = False) -> None:
        super().__init__()
        self.prototypes = nn.Linear(in_dim, num_prototypes, bias=False)  # weight [K, in_dim]
        self.weight_normalized = weight_normalized
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Rescale every prototype to unit L2 norm, in place."""
        weight = self.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)  # [N, in_dim]
        weight = self.prototypes.weight
        if self.weight_normalized:
            weight = F.normalize(weight, dim=1)
        return x @ weight.t()  # [N, num_prototypes]


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al., ICCV 2021, §3.1 and Appendix): an MLP
    ``in_dim -> hidden_dim -> hidden_dim -> bottleneck_dim`` with GELU (and BN when
    ``batch_norm``), the L2-normalised bottleneck, then a weight-normalised linear layer to
    ``out_dim`` whose weight norm is fixed to 1 (the paper's ``norm_last_layer``; here the
    :class:`PrototypeHead` with ``weight_normalized=True``), or free with
    ``normalize_last_layer=False``. Linear weights start from a
    truncated normal of std 0.02, biases at 0, as in the paper's code.

    Shapes: ``[N, in_dim] -> [N, out_dim]`` logits (the loss divides by its temperatures).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, num_layers: int = 3,
                 batch_norm: bool = False, normalize_last_layer: bool = True) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # With normalize_last_layer=False the rows keep a learnable norm (the paper's weight
        # norm with a free g, which is the same function as a plain linear layer).
        self.last_layer = PrototypeHead(bottleneck_dim, out_dim,
                                        weight_normalized=normalize_last_layer)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.mlp(x))  # normalises the bottleneck: [N, out_dim]
