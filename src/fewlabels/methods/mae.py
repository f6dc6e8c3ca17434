"""MAE: a ViT encoder on the visible patches, a light decoder predicts the masked pixels.

He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022. Each image loses a random ``mask_ratio`` of its patches
(:func:`~fewlabels.models.patches.random_masking`: per-image noise from the step's generator,
sorted; no loops). The encoder (the backbone, which must be a ViT) sees only the visible
patches with their position embeddings and its CLS token. The decoder embeds the encoder's
tokens to its own width, appends one shared mask token per removed patch, puts the tokens
back in grid order by a gather with the inverse permutation, adds its own fixed sin-cos
position embeddings, runs a few transformer blocks and predicts every patch's pixels with a
linear layer. The loss is the mean squared error on the masked patches only
(:func:`~fewlabels.losses.masked.mae_loss`), by default against per-patch normalised pixels
(the paper's better target, Table 1d). The decoder is thrown away after pretraining; the
representation is the encoder's CLS token on the whole image (``backbone``, the token the
paper's linear probe uses).

Normalised targets on small patches. The paper divides each patch by ``sqrt(var + 1e-6)``;
its 16 x 16 patches of natural images are rarely flat. Fashion-MNIST's 4 x 4 patches often
are: in normalised units (one grey level is 0.011) 32 % have no variance at all (target 0)
and 7 % a variance below 1e-3, a few faint pixels that 1e-6 would blow up into
unit-variance targets nothing can predict. ``norm_pixel_eps`` 0.01 (a standard deviation of
about 9 grey levels) keeps such patches near 0.

Views: a random resized crop (area 20-100 %, the paper's) and a horizontal flip, nothing
else (the paper's Table 1e: colour jitter hurts), at the stored image size (28 px: 7 x 7
patches of 4 px, 12 visible at 75 %).

Differences from the paper's ImageNet recipe (ViT-B/L/H, decoder of 8 blocks of width 512,
batch 4,096, base learning rate 1.5e-4 per 256 images, 800-1,600 epochs with 40 warm-up
epochs), for 28-32 px images and runs of minutes on a CPU: a decoder of 2 blocks of width
128 (4 heads); AdamW with the paper's betas (0.9, 0.95) and weight decay 0.05 but a learning
rate of 1e-3 per 256 images with batches of 256 (a short run needs larger steps than 1.5e-4,
and small batches give more of them) and 0.25 warm-up epochs (a 10-minute run is about one
epoch); ``norm_pixel_eps`` 0.01 instead of 1e-6 (above); the mask token gets no weight
decay.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.errors import UserError
from fewlabels.losses.masked import mae_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    embedding_spread,
)
from fewlabels.methods.masked_modelling import (
    check_mask_ratio,
    crop_flip_views,
    reconstruction_result,
    require_vit,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.patches import patchify, random_masking, unpatchify
from fewlabels.models.vit import Block, sincos_position_embedding_2d
from fewlabels.options import option


@dataclass
class MAEConfig:
    mask_ratio: float = option(0.75, "fraction of the patches removed from every image")
    norm_pixel_loss: bool = option(
        True, "predict each patch's pixels normalised by its own mean and variance (the "
              "paper's better target); false: the normalised image's pixels")
    norm_pixel_eps: float = option(
        0.01, "added to each patch's variance before the normalisation (the paper: 1e-6, "
              "for 16 px patches; near-flat 4 px patches would become noise)")
    decoder_width: int = option(128, "token width of the decoder (a multiple of 4 and of "
                                     "--decoder-heads; the paper: 512)")
    decoder_depth: int = option(2, "transformer blocks of the decoder (the paper: 8)")
    decoder_heads: int = option(4, "attention heads of the decoder (the paper: 16)")
    view_size: int = option(0, "side of the training views in pixels; 0: the image size")
    crop_scale: tuple[float, float] = option(
        (0.2, 1.0), "area of the random resized crop, as a fraction of the image: min,max")


class MAEDecoder(nn.Module):
    """MAE's decoder: encoder tokens ``[N, 1 + L_keep, D]`` and the inverse permutation
    ``[N, L]`` -> predicted pixels of every patch ``[N, L, patch_values]``."""

    no_weight_decay = ("mask_token",)

    def __init__(self, encoder_dim: int, width: int, depth: int, heads: int,
                 patch_values: int) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Linear(encoder_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.prediction = nn.Linear(width, patch_values)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, restore_indices: torch.Tensor,
                grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(tokens)  # [N, 1 + K, W]
        n, length = restore_indices.shape
        kept = x.shape[1] - 1
        masks = self.mask_token.expand(n, length - kept, -1)  # [N, L - K, W]
        shuffled = torch.cat([x[:, 1:], masks], dim=1)  # [N, L, W]: kept first, noise order
        index = restore_indices[..., None].expand(-1, -1, self.width)  # [N, L, W]
        patches = torch.gather(shuffled, 1, index)  # [N, L, W]: grid order ("unshuffle")
        positions = sincos_position_embedding_2d(self.width, *grid).to(x.device, x.dtype)
        x = torch.cat([x[:, :1], patches + positions], dim=1)  # [N, 1 + L, W]
        for block in self.blocks:
            x, _ = block(x)
        return self.prediction(self.norm(x))[:, 1:]  # [N, L, patch_values]


@METHODS.register("mae", "MAE: a ViT encoder on the visible patches, a light decoder "
                         "reconstructs the masked ones (He et al. 2022)")
class MAE(Method):
    """MAE: ViT encoder on visible patches + a small transformer decoder, MSE on masked
    patches."""

    name = "mae"
    Config = MAEConfig
    paper = "He, Chen, Xie, Li, Dollar, Girshick, CVPR 2022"
    collapse_hint = "lower --lr"
    recipe = TrainingRecipe(
        optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, batch_size=256,
        warmup_epochs=0.25, epochs=100, adamw_betas=(0.9, 0.95),
    )

    def __init__(self, backbone: nn.Module, config: MAEConfig, data: DataInfo) -> None:
        vit = require_vit(backbone, "MAE")
        check_mask_ratio(config.mask_ratio)
        check_options([
            (config.decoder_depth >= 1, "--decoder-depth must be at least 1"),
            (config.norm_pixel_eps > 0, "--norm-pixel-eps must be positive"),
            (config.decoder_heads >= 1, "--decoder-heads must be at least 1"),
            (config.decoder_width >= 4 and config.decoder_width % 4 == 0
             and config.decoder_width % max(1, config.decoder_heads) == 0,
             f"--decoder-width must be a multiple of 4 and of --decoder-heads, got "
             f"{config.decoder_width}"),
        ])
        super().__init__(backbone, config, data)
        self.views, view_size = crop_flip_views(vit, data, config.view_size, config.crop_scale)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.patch_size = vit.patch_size
        self.decoder = MAEDecoder(vit.embed_dim, config.decoder_width, config.decoder_depth,
                                  config.decoder_heads, vit.patch_size**2 * data.channels)

    # -- training ----------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        views = self.views.all_views(batch.unlabeled, generator)  # [N, C, S, S]
        grid = views.shape[-1] // self.patch_size
        masking = random_masking(len(views), grid * grid, self.config.mask_ratio, generator,
                                 views.device)
        return (views, *masking.as_tuple())  # views, keep [N, K], restore [N, L], mask [N, L]

    def predict(self, views: torch.Tensor, keep_indices: torch.Tensor,
                restore_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens ``[N, 1 + K, D]`` of the kept patches and the decoder's pixels of
        every patch ``[N, L, p*p*C]``."""
        grid = (views.shape[-2] // self.patch_size, views.shape[-1] // self.patch_size)
        latent = self.backbone.forward_tokens(views, keep_indices=keep_indices)
        return latent, self.decoder(latent, restore_indices, grid)

    def training_loss(self, inputs: tuple[torch.Tensor, ...], step: StepInfo
                      ) -> dict[str, torch.Tensor]:
        views, keep_indices, restore_indices, mask = inputs
        latent, predictions = self.predict(views, keep_indices, restore_indices)
        loss = mae_loss(predictions, patchify(views, self.patch_size), mask,
                        self.config.norm_pixel_loss, self.config.norm_pixel_eps)
        return {"loss": loss, "embedding_spread": embedding_spread(latent[:, 0])}

    # -- reconstructions ---------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
        """See :meth:`Method.reconstruct`. The decoder's raw output on every patch, as the
        paper's figures show it (visible patches are not pasted back). With normalised pixel
        targets the prediction of each patch is mapped back with that patch's true mean and
        variance, so the picture shows the predicted structure at the true brightness and
        contrast."""
        if images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise UserError(f"images of {images.shape[-1]} px do not split into the run's "
                            f"{self.patch_size} px patches; give data of the run's size")
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        masking = random_masking(len(images), grid[0] * grid[1], self.config.mask_ratio,
                                 generator, images.device)
        _, predictions = self.predict(images, masking.keep_indices, masking.restore_indices)
        if self.config.norm_pixel_loss:
            patches = patchify(images, self.patch_size)
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + self.config.norm_pixel_eps).sqrt()
            predictions = predictions * std + mean
        reconstruction = unpatchify(predictions, self.patch_size, images.shape[1], grid)
        return reconstruction_result(images, reconstruction, masking.mask, self.patch_size)
