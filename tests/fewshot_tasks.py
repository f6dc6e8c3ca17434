"""A tiny few-shot task for the method tests: 6 classes of 8 random 8x8 images each (the
top half darkened by class, so classes differ), split 3 base / 3 novel, seeded episodes."""

import torch

from fewlabels.data.imageset import ImageSet
from fewlabels.fewshot import FewShotTask, sample_episodes, split_classes
from fewlabels.fewshot.task import base_part, novel_part
from fewlabels.runs import backbone_spec, data_info


def tiny_task(ways: int = 2, shots: int = 1, queries: int = 2, episodes: int = 5
              ) -> FewShotTask:
    generator = torch.Generator().manual_seed(0)
    names = [f"c{index}" for index in range(6)]
    labels = torch.arange(6).repeat(8)
    images = torch.randint(0, 256, (len(labels), 1, 8, 8), generator=generator,
                           dtype=torch.uint8)
    images[:, :, :4] //= (labels.view(-1, 1, 1, 1) + 1).to(torch.uint8)  # classes differ
    everything = ImageSet(images, labels, names)
    split = split_classes(names, seed=0)
    base, novel = base_part(everything, split, None, 0), novel_part(everything, split)
    drawn = sample_episodes(novel.labels, split.novel, ways=ways, shots=shots,
                            queries=queries, episodes=episodes, seed=0)
    return FewShotTask(split, base, novel, drawn, data_info(base, len(split.base)),
                       backbone_spec("convnet", 2, 1, 8, feature_dim=0), seed=0)
