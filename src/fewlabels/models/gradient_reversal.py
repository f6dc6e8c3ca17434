r"""The gradient reversal layer of DANN (Ganin & Lempitsky, "Unsupervised Domain Adaptation
by Backpropagation", ICML 2015; Ganin et al., "Domain-Adversarial Training of Neural
Networks", JMLR 2016).

Forward it is the identity; backward it multiplies the gradient by :math:`-\lambda`, so the
feature extractor below it is trained to *increase* the domain classifier's loss above it:

.. math:: R_\lambda(x) = x, \qquad \frac{\partial R_\lambda}{\partial x} = -\lambda I

Usage::

    reversal = GradientReversal()
    reversal.coefficient = dann_lambda(step / total_steps)   # each step
    domain_logits = domain_classifier(reversal(features))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GradientReversal", "GradientReversalFunction", "dann_lambda", "reverse_gradient"]


class GradientReversalFunction(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-coefficient``."""

    @staticmethod
    def forward(ctx, inputs: Tensor, coefficient: float) -> Tensor:  # type: ignore[override]
        ctx.coefficient = float(coefficient)
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * -ctx.coefficient, None


def reverse_gradient(inputs: Tensor, coefficient: float = 1.0) -> Tensor:
    """``inputs`` unchanged, with the gradient flowing back multiplied by ``-coefficient``."""
    return GradientReversalFunction.apply(inputs, coefficient)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    r"""DANN's schedule of the reversal coefficient (Ganin et al. 2016, section 5.2.2):

    .. math:: \lambda_p = \frac{2}{1 + \exp(-\gamma p)} - 1

    for the training progress :math:`p \in [0, 1]` (0 at the start, 1 at the end):
    :math:`\lambda_0 = 0`, rising to :math:`\approx 1` (0.9999 at :math:`p = 1`,
    :math:`\gamma = 10`), which keeps the domain classifier's noisy early gradients out."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class GradientReversal(nn.Module):
    """The gradient reversal layer as a module; set ``coefficient`` (λ) each step."""

    def __init__(self, coefficient: float = 1.0) -> None:
        super().__init__()
        self.coefficient = float(coefficient)

    def forward(self, inputs: Tensor) -> Tensor:
        return reverse_gradient(inputs, self.coefficient)

    def extra_repr(self) -> str:
        return f"coefficient={self.coefficient}"
