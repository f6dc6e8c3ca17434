"""SimMIM: mask tokens in the encoder's input, a linear head predicts the masked pixels.

Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu, "SimMIM: a Simple Framework for Masked Image
Modeling", CVPR 2022. A random set of patches of every image is replaced by a learned mask
token before the position embeddings are added (the ViT's ``forward_tokens(mask=...,
mask_token=...)``); the encoder sees every position. A linear layer maps each output token
to the pixels of its patch (the paper's one-layer prediction head), and the loss is the L1
distance on the masked pixels only, divided by their number
(:func:`~fewlabels.losses.masked.simmim_loss`). The head is thrown away after pretraining;
the representation is the encoder's CLS token on the unmasked image (``backbone``).

Masking. The paper masks random 32 px blocks of 192 px images (each 1/36 of the image) at a
ratio of 0.6, and finds the best ratio rises as blocks shrink. On 28 px images with 4 px
patches one patch is 1/49 of the image, the nearest to the paper's relative block size, so
the default masks single patches (``mask_block`` 1: exactly 29 of 49 patches) at the paper's
0.6. Larger blocks (``mask_block`` 2: 8 px) are available; 28 px grids do not split into
them, so they are placed with a random offset (:func:`~fewlabels.models.patches.block_random_mask`).

Differences from the paper's ViT-B recipe (224 px images with 16 px patches, AdamW with
weight decay 0.05, gradient clipping at 5, 800 epochs with 10 warm-up, random resized crops
of 67-100 % and flips), for 28-32 px images and runs of minutes on a CPU: the same views at
the stored image size; AdamW with betas (0.9, 0.999) and weight decay 0.05 at 1e-3 per 256
images with batches of 256 and 0.25 warm-up epochs (as this library's MAE, for a run of
about an epoch); no gradient clipping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.errors import UserError
from fewlabels.losses.masked import simmim_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    embedding_spread,
)
from fewlabels.methods.masked_modelling import (
    check_mask_ratio,
    crop_flip_views,
    reconstruction_result,
    require_vit,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.patches import block_random_mask, patchify, unpatchify
from fewlabels.options import option


@dataclass
class SimMIMConfig:
    mask_ratio: float = option(0.6, "fraction of the patches (or blocks) masked in every image")
    mask_block: int = option(
        1, "side of a masked block in patches (1: single patches, 1/49 of a 28 px image, "
           "close to the paper's 32 px blocks on 192 px images)")
    view_size: int = option(0, "side of the training views in pixels; 0: the image size")
    crop_scale: tuple[float, float] = option(
        (0.67, 1.0), "area of the random resized crop, as a fraction of the image: min,max")


@METHODS.register("simmim", "SimMIM: mask tokens in the ViT's input, a linear head "
                            "predicts the masked pixels, L1 loss (Xie et al. 2022)")
class SimMIM(Method):
    """SimMIM: ViT with mask tokens + linear pixel head, L1 on masked pixels."""

    name = "simmim"
    Config = SimMIMConfig
    paper = "Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu, CVPR 2022"
    collapse_hint = "lower --lr"
    recipe = TrainingRecipe(
        optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, batch_size=256,
        warmup_epochs=0.25, epochs=100, adamw_betas=(0.9, 0.999),
    )

    def __init__(self, backbone: nn.Module, config: SimMIMConfig, data: DataInfo) -> None:
        vit = require_vit(backbone, "SimMIM")
        check_mask_ratio(config.mask_ratio)
        if config.mask_block < 1:
            raise UserError(f"--mask-block must be at least 1, got {config.mask_block}")
        super().__init__(backbone, config, data)
        self.views, view_size = crop_flip_views(vit, data, config.view_size, config.crop_scale)
        self.config = dataclasses.replace(config, view_size=view_size)
        self.patch_size = vit.patch_size
        self.mask_token = nn.Parameter(torch.zeros(vit.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(vit.embed_dim, vit.patch_size**2 * data.channels)

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        views = self.views.all_views(batch.unlabeled, generator)  # [N, C, S, S]
        return views, self._mask(views, generator)  # mask [N, L]

    def _mask(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        grid = images.shape[-1] // self.patch_size
        return block_random_mask(len(images), grid, self.config.mask_ratio,
                                 self.config.mask_block, generator, images.device)

    def predict(self, views: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens ``[N, 1 + L, D]`` and the predicted pixels ``[N, L, p*p*C]``."""
        tokens = self.backbone.forward_tokens(views, mask=mask, mask_token=self.mask_token)
        return tokens, self.head(tokens[:, 1:])

    def training_loss(self, inputs: tuple[torch.Tensor, ...], step: StepInfo
                      ) -> dict[str, torch.Tensor]:
        views, mask = inputs
        tokens, predictions = self.predict(views, mask)
        loss = simmim_loss(predictions, patchify(views, self.patch_size), mask)
        return {"loss": loss, "embedding_spread": embedding_spread(tokens[:, 0])}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
        """See :meth:`Method.reconstruct`: the head's pixels for every patch."""
        if images.shape[-1] % self.patch_size or images.shape[-1] != images.shape[-2]:
            raise UserError(f"images of {images.shape[-1]} px do not split into the run's "
                            f"{self.patch_size} px patches; give data of the run's size")
        mask = self._mask(images, generator)
        _, predictions = self.predict(images, mask)
        reconstruction = unpatchify(predictions, self.patch_size, images.shape[1])
        return reconstruction_result(images, reconstruction, mask, self.patch_size)
