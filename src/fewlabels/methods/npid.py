"""NPID: every image is its own class, scored against a memory bank of past features.

Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018. One augmented view per image goes through the backbone and a
linear embedding to 128 dimensions, L2-normalised (``f_i``). The memory bank holds one unit
row ``v_j`` per training image (:class:`~fewlabels.models.memory.MemoryBank`, row ``j`` = the
image of dataset index ``j``, as the batch's ``indices`` say). The loss is the
non-parametric softmax ``-log exp(v_i·f_i/tau) / sum_j exp(v_j·f_i/tau)`` over the whole bank
(``loss softmax``, eq. 2) or its noise-contrastive estimate against ``negatives`` rows drawn
uniformly from the bank (``loss nce``, eqs. 3-6), whose normaliser Z is estimated once, on
the first batch, and then kept as the paper does (eq. 8; a buffer, so a resumed run keeps
it). The proximal term ``lambda ||f_i - v_i||^2`` of Section 3.3 is ``proximal_weight``.
After the loss the bank rows of the global batch (features and indices gathered from every
device) become ``normalise(0.5 v_i + 0.5 f_i)``. The backbone is the representation.
The bank starts random, as in the paper, so during the first epoch an image's own row is
still noise when it is seen and the loss only spreads the features apart: NPID needs
several epochs (one epoch of Fashion-MNIST gave kNN 65.9 %, below a random network's).

Differences from the paper's ImageNet recipe (ResNet-50, 200 epochs, batch 256, learning rate
0.03 with steps at 120 and 160 epochs), for 28-32 px images and runs of minutes on a CPU:

- the exact softmax is the default: over 60,000 rows it costs one ``[n, 60000]`` product,
  affordable here (NCE computes the same product to pick its noise scores from, since that
  takes less memory than gathering 4,096 rows per image), and it learned where NCE did not
  in a short run: after 4 epochs on 10,000 Fashion-MNIST images (76 steps, same recipe),
  kNN accuracy 72.4 % with the softmax, 43.5 % with NCE, whose loss grew to ~2,600 as the
  features gathered while Z stayed the estimate from the random initial bank (the paper
  also has the softmax ahead of NCE on CIFAR-10, Table 1);
- views of 3/4 of the image side (20 px for Fashion-MNIST; ``view_size``), crops of 40-100 %
  of the image instead of 20-100 % (SimCLR's measured choice at this size), colour jitter
  0.4/0.4/0.4/0.1 with p 0.8 instead of 0.4 for all four with p 1;
- a batch of 512 at the paper's 0.03 per 256 images with weight decay 5e-4, a cosine decay
  after 1 warm-up epoch instead of steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fewlabels.errors import UserError
from fewlabels.losses.instance import estimate_nce_normalizer, npid_nce_loss, npid_softmax_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    EpochContext,
    Method,
    StepInfo,
    TrainingRecipe,
    check_num_images,
    check_options,
    embedding_spread,
    single_view_recipe,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.memory import MemoryBank
from fewlabels.options import option


@dataclass
class NPIDConfig:
    loss: Literal["softmax", "nce"] = option(
        "softmax", "softmax: the exact non-parametric softmax over the whole bank; nce: the "
                   "paper's noise-contrastive estimate against sampled rows")
    temperature: float = option(0.07, "temperature tau")
    embedding_dim: int = option(128, "size of the L2-normalised embedding (bank rows)")
    bank_momentum: float = option(0.5, "momentum of the memory-bank update")
    negatives: int = option(4096, "noise rows per image for --loss nce (m)")
    proximal_weight: float = option(
        0.0, "weight lambda of the proximal term ||f_i - v_i||^2 (the paper tries 10-50)")
    view_size: int = option(
        0, "side of the training views in pixels; 0: 3/4 of the image side rounded down to a "
           "multiple of 4 (20 for 28 px images)")
    crop_scale_min: float = option(0.4, "smallest crop area, as a fraction of the image")
    jitter_strength: float = option(
        0.5, "colour jitter strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s")
    grayscale_probability: float = option(0.2, "probability of converting a view to gray")


@METHODS.register("npid", "NPID: instance discrimination against a memory bank of features "
                          "(Wu et al. 2018)")
class NPID(Method):
    """NPID: backbone + linear embedding, a memory bank row per image, softmax or NCE."""

    name = "npid"
    Config = NPIDConfig
    paper = "Wu, Xiong, Yu, Lin, CVPR 2018"
    collapse_hint = "lower --lr, or try --loss softmax and --proximal-weight 10"
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.03, weight_decay=5e-4, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: NPIDConfig, data: DataInfo) -> None:
        check_num_images(data, "NPID sizes its memory bank from")
        checks = [
            (config.loss in ("softmax", "nce"), f"--loss must be softmax or nce, got "
                                                f"{config.loss!r}"),
            (config.temperature > 0, f"--temperature must be positive, got "
                                     f"{config.temperature}"),
            (0.0 <= config.bank_momentum <= 1.0, f"--bank-momentum must be in [0, 1], got "
                                                 f"{config.bank_momentum}"),
            (config.negatives >= 1, f"--negatives must be at least 1, got {config.negatives}"),
            (config.proximal_weight >= 0, "--proximal-weight must be at least 0"),
        ]
        check_options(checks)
        super().__init__(backbone, config, data)
        self.views, view_size = single_view_recipe(backbone, config, data)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = config = dataclasses.replace(config, view_size=view_size)
        self.embedding = nn.Linear(backbone.feature_dim, config.embedding_dim)
        self.memory = MemoryBank(data.num_images, config.embedding_dim)
        # NCE's normaliser Z, estimated on the first batch; 0 = not yet.
        self.register_buffer("normalizer", torch.zeros(()))

    def on_epoch_start(self, context: EpochContext) -> None:
        if context.num_images > self.memory.size:
            raise UserError(f"the NPID memory bank has {self.memory.size} rows but the run "
                            f"trains on {context.num_images} images; start a new run on this "
                            "data")

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        if batch.indices is None:
            raise ValueError("NPID needs the batch's dataset indices (its memory-bank rows)")
        return self.views.all_views(batch.unlabeled, generator), batch.indices  # [n, ...], [n]

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        views, indices = inputs
        config = self.config
        features = self.embedding(self.backbone(views))  # [n, embedding_dim]
        bank = self.memory.bank
        if config.loss == "softmax":
            loss = npid_softmax_loss(features, indices, bank, config.temperature,
                                     config.proximal_weight)
        else:
            if self.normalizer <= 0:  # the first step: estimated once and kept (eq. 8)
                self.normalizer.copy_(estimate_nce_normalizer(
                    features, bank, config.temperature, config.negatives, step.generator))
            loss = npid_nce_loss(features, indices, bank, config.temperature, config.negatives,
                                 self.normalizer, step.generator, config.proximal_weight)
        # After the loss (which copied what it read): the global batch's rows move.
        self.memory.update_(indices, features, config.bank_momentum)
        return {"loss": loss, "embedding_spread": embedding_spread(features)}
