"""Optimisers: parameter groups without weight decay on biases and norms, and LARS."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fewlabels.errors import UserError

OPTIMIZERS = ("lars", "sgd", "adamw")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and conv kernels get weight decay; biases and normalisation
    parameters (every tensor with fewer than 2 dimensions) get none and are excluded from
    LARS adaptation, as in SimCLR and nanoGPT."""
    decayed, plain = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decayed if parameter.ndim >= 2 else plain).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay, "lars": True},
        {"params": plain, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    r"""SGD with momentum and layer-wise adaptive rate scaling.

    You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017; the
    variant used by SimCLR: for each tensor in a group with ``lars=True``,
    :math:`g \leftarrow g + \lambda w`, then
    :math:`g \leftarrow \eta \frac{\lVert w\rVert}{\lVert g\rVert} g` (when both norms are
    positive), then momentum SGD with learning rate :math:`lr`.
    """

    def __init__(
        self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    weight_norm = torch.linalg.vector_norm(p)
                    grad_norm = torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (weight_norm > 0) & (grad_norm > 0),
                        group["trust_coefficient"] * weight_norm / grad_norm,
                        torch.ones_like(weight_norm),
                    )
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def build_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``model``'s parameter groups."""
    groups = parameter_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
