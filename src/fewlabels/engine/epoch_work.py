"""Work over the whole training set between epochs (DeepCluster's k-means, SeLa's labels).

The engine hands a method an :class:`EpochContext` before every epoch: the features of every
training image (eval mode, in batches, sharded across devices and gathered, so every device
holds the same rows), a generator seeded from the run's seed and the epoch (reproducible
clustering, identical on every device and on a resumed run) and a way to forget the optimiser
state of parameters a method re-initialises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels import distributed
from fewlabels.augment.convert import normalize, to_float


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's generator: the same on every device (no rank in it)."""
    return (seed * 1_000_003 + epoch * 524_287 + 17) % (2**63)


@dataclass
class EpochContext:
    """What a method gets before an epoch starts; see ``Method.on_epoch_start``."""

    epoch: int
    step: int
    steps_per_epoch: int
    images: torch.Tensor  # every training image, uint8 [N, C, H, W], on the device
    mean: Sequence[float]
    std: Sequence[float]
    generator: torch.Generator
    _reset_optimizer_state: Callable[[Iterable[nn.Parameter]], None]
    progress: float = 0.0  # the fraction of training done, by steps or by the time budget

    @property
    def num_images(self) -> int:
        return len(self.images)

    def features(self, network: nn.Module, batch_size: int = 1024) -> torch.Tensor:
        """``network``'s outputs for every training image, float32 ``[N, D]`` on the device in
        dataset order: the un-augmented images normalised with the data's mean and std,
        ``network`` in eval mode without gradients (its mode restored afterwards). Each device
        computes a contiguous shard and the shards are gathered, so every device returns the
        same ``N`` rows."""
        return sharded_features(network, self.images, self.mean, self.std, batch_size)

    def reset_optimizer_state(self, parameters: Iterable[nn.Parameter]) -> None:
        """Forget the optimiser's state (momentum buffers) of ``parameters``, e.g. of a head
        the method has just re-initialised."""
        self._reset_optimizer_state(parameters)


@torch.no_grad()
def sharded_features(network: nn.Module, images: torch.Tensor, mean: Sequence[float],
                     std: Sequence[float], batch_size: int = 1024) -> torch.Tensor:
    """See :meth:`EpochContext.features`. The shards have equal length (the last is padded
    with repeats of the final image), so the gather needs no sizes."""
    world, rank = distributed.world_size(), distributed.rank()
    count = len(images)
    shard = -(-count // world)
    indices = torch.arange(rank * shard, (rank + 1) * shard, device=images.device)
    indices = indices.clamp_(max=count - 1)
    was_training = network.training
    network.eval()
    try:
        outputs = []
        for start in range(0, shard, batch_size):
            batch = images[indices[start : start + batch_size]]
            batch = normalize(to_float(batch), mean, std, inplace=True)
            if batch.ndim == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(network(batch).float().flatten(1))
        mine = torch.cat(outputs)
    finally:
        network.train(was_training)
    return distributed.gather_no_gradient(mine)[:count]


def optimizer_state_resetter(optimizer: torch.optim.Optimizer
                             ) -> Callable[[Iterable[nn.Parameter]], None]:
    """A function that drops the state ``optimizer`` keeps for given parameters (works
    through Fabric's optimizer wrapper)."""
    inner = getattr(optimizer, "optimizer", optimizer)

    def reset(parameters: Iterable[nn.Parameter]) -> None:
        for parameter in parameters:
            inner.state.pop(parameter, None)

    return reset
