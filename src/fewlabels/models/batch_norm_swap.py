"""Replace the batch norms of a network by another kind that keeps their state.

Global batch norm (statistics over all devices) and split batch norm (MoCo's shuffled BN on
one device) are batch norms with another ``forward``; a network is converted by swapping each
batch norm for one of the new kind holding the same parameters, statistics, mode and
``requires_grad``, as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for GPUs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def replace_batch_norms(module: nn.Module, selects: Callable[[nn.Module], bool],
                        build: Callable[[_BatchNorm], _BatchNorm]) -> nn.Module:
    """``module`` with every submodule that ``selects`` replaced by ``build(it)`` loaded with
    its state (in place for children; returns the module, or its replacement when ``module``
    itself is selected)."""
    if selects(module):
        assert isinstance(module, _BatchNorm)
        replacement = build(module)
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        if module.affine:
            replacement.weight.requires_grad_(module.weight.requires_grad)
            replacement.bias.requires_grad_(module.bias.requires_grad)
        reference = next(iter(module.state_dict().values()), None)
        return replacement if reference is None else replacement.to(reference.device)
    for name, child in module.named_children():
        module.add_module(name, replace_batch_norms(child, selects, build))
    return module
