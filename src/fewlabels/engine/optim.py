"""Optimisers: parameter groups (no weight decay on biases and norms, or on what a method
exempts), and LARS."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.errors import UserError

OPTIMIZERS = ("lars", "sgd", "adamw")


@dataclass(frozen=True)
class ParameterOptions:
    """How the optimiser treats one parameter tensor."""

    weight_decay: bool = True
    lars: bool = True  # layer-wise trust ratio (LARS only)
    scheduled_learning_rate: bool = True  # False: the peak learning rate throughout
    learning_rate_scale: float = 1.0  # times the scheduled rate (a slowly trained backbone)


def default_parameter_options(name: str, parameter: nn.Parameter) -> ParameterOptions:
    """Biases and normalisation parameters (fewer than 2 dimensions) get no weight decay and
    no LARS adaptation, as in SimCLR, BYOL and nanoGPT."""
    exempt = parameter.ndim < 2
    return ParameterOptions(weight_decay=not exempt, lars=not exempt)


def parameter_groups(
    model: nn.Module, weight_decay: float,
    options: Callable[[str, nn.Parameter], ParameterOptions] = default_parameter_options,
) -> list[dict]:
    """The trainable parameters of ``model`` in one group per distinct
    :class:`ParameterOptions`. Each group records its options (``"decayed"``, ``"lars"``,
    ``"scheduled"``, ``"lr_scale"``) so the engine can set its learning rate and weight decay
    every step."""
    groups: dict[ParameterOptions, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault(options(name, parameter), []).append(parameter)
    ordered = sorted(groups.items(), key=lambda item: (not item[0].weight_decay,
                                                       not item[0].lars,
                                                       not item[0].scheduled_learning_rate,
                                                       -item[0].learning_rate_scale))
    return [{"params": params, "weight_decay": weight_decay if key.weight_decay else 0.0,
             "decayed": key.weight_decay, "lars": key.lars,
             "scheduled": key.scheduled_learning_rate, "lr_scale": key.learning_rate_scale}
            for key, params in ordered]


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
    name: str, model_or_groups: nn.Module | list[dict], lr: float, weight_decay: float = 0.0,
    *, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999), nesterov: bool = False,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over a model's :func:`parameter_groups` (or groups given)."""
    groups = (parameter_groups(model_or_groups, weight_decay)
              if isinstance(model_or_groups, nn.Module) else model_or_groups)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
