"""BEiT-style masked token prediction, with a vocabulary of k-means "visual words".

Bao, Dong, Piao, Wei, "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022. Every
patch has a discrete token; about 40 % of the patches of an image are replaced by a learned
mask token in the encoder's input (BEiT's block-wise masking, or random patches), and a
linear head on each output token predicts the token of its patch, by cross-entropy on the
masked positions only (:func:`~fewlabels.losses.masked.masked_token_loss`). The head is
thrown away after pretraining; the representation is the encoder's CLS token (``backbone``).
Its reconstructions draw each patch as the pixels of its most likely word.

The tokens. BEiT takes them from DALL-E's discrete VAE, trained on 250M images. Here the
vocabulary is learned from the training images themselves, without labels, as the "visual
words" of the bag-of-features literature (Csurka et al. 2004; Coates, Lee, Ng 2011): before
the first epoch, ``tokenizer_patches`` patches (50,000 by default: about 200 per word) of
the normalised training images are PCA-whitened (every direction scaled to unit variance,
with the eigenvalues floored at ``whitening_floor`` times the largest so that pixel noise is
not blown up) and clustered by k-means (k-means++ seeding, at most 20 Lloyd iterations;
:func:`~fewlabels.clustering.kmeans.kmeans`, seeded by the epoch's generator) into
``vocabulary_size`` words; a patch's token is its nearest centre in whitened space
(:class:`PatchTokenizer`). Whitening over the whole set, rather than normalising each patch
by its own mean and variance, keeps a patch's brightness in its token (a flat dark patch and
a flat bright one differ), while the structure (edges) is no longer drowned by brightness.
The tokenizer is a set of buffers, saved with the run; a resumed run keeps it and does not
refit. Tokens are computed on the augmented view the encoder sees, as BEiT does.

Differences from the paper (ViT-B at 224 px, a vocabulary of 8,192 from the dVAE, at least
16 patches per block on a 14 x 14 grid, AdamW at 1.5e-3 with batch 2,048, weight decay 0.05,
gradient clipping at 3, 800 epochs, crops, flips and colour jitter), for 28-32 px images and
runs of minutes on a CPU: k-means words instead of the dVAE; 256 words; blocks of at least 4
patches on the 7 x 7 grid (the same 8 % of the image); crops of 20-100 % and flips only, at
the stored image size; AdamW with betas (0.9, 0.999) and weight decay 0.05 at 1e-3 per 256
images with batches of 256 and 0.25 warm-up epochs (as this library's MAE); no gradient
clipping; no relative position bias or layer scale.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.clustering.kmeans import kmeans, nearest_centroids
from fewlabels.clustering.pca import fit_pca_whitening
from fewlabels.errors import UserError
from fewlabels.losses.masked import masked_token_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    EpochContext,
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
from fewlabels.models.patches import block_random_mask, blockwise_mask, patchify, unpatchify
from fewlabels.options import option

# BEiT's smallest block: 16 of 196 patches; the same fraction of other grids.
BEIT_MIN_BLOCK_FRACTION = 16 / 196


@dataclass
class BEiTConfig:
    vocabulary_size: int = option(256, "visual words: k of the k-means over patches")
    mask_ratio: float = option(0.4, "fraction of the patches masked in every image (BEiT: 0.4)")
    masking: Literal["block", "random"] = option(
        "block", "block: BEiT's block-wise masking (rectangles of random size and aspect); "
                 "random: single patches")
    tokenizer_patches: int = option(
        50_000, "patches of the training images the vocabulary is fitted on (from whole "
                 "images drawn at random)")
    tokenizer_iterations: int = option(20, "Lloyd iterations of the vocabulary's k-means")
    whitening_floor: float = option(
        0.01, "eigenvalue floor of the patches' PCA-whitening, as a fraction of the largest")
    view_size: int = option(0, "side of the training views in pixels; 0: the image size")
    crop_scale: tuple[float, float] = option(
        (0.2, 1.0), "area of the random resized crop, as a fraction of the image: min,max")


class PatchTokenizer(nn.Module):
    """Patches ``[M, P]`` -> visual words ``[M]`` (long): the nearest k-means centre of the
    PCA-whitened patch. Its state is buffers (``mean [P]``, ``projection [P, P]``,
    ``centres [K, P]``, ``fitted``), so a checkpoint holds it."""

    def __init__(self, patch_values: int, vocabulary_size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(patch_values))
        self.register_buffer("projection", torch.eye(patch_values))
        self.register_buffer("centres", torch.zeros(vocabulary_size, patch_values))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def whiten(self, patches: torch.Tensor) -> torch.Tensor:
        return (patches.float() - self.mean) @ self.projection  # [M, P]

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, generator: torch.Generator, iterations: int,
            whitening_floor: float) -> dict[str, float]:
        """Fit the whitening and the k-means centres to ``patches [M, P]``; returns numbers
        to log."""
        whitening = fit_pca_whitening(patches, eps=whitening_floor)
        self.mean.copy_(whitening.mean)
        self.projection.copy_(whitening.components * whitening.scales)
        result = kmeans(self.whiten(patches), self.centres.shape[0], generator=generator,
                        iterations=iterations)
        self.centres.copy_(result.centroids)
        self.fitted.fill_(True)
        return {"tokenizer_words_in_use": float((result.cluster_sizes > 0).sum()),
                "tokenizer_inertia_per_patch": result.inertia / len(patches),
                "tokenizer_iterations": float(result.iterations)}

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pixels of words ``[...]``: their centres mapped back from whitened space,
        ``[..., P]`` (the mean patch of each word, as the tokenizer sees it)."""
        return self.centres[tokens] @ torch.linalg.pinv(self.projection) + self.mean

    @torch.no_grad()
    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("the tokenizer is used before it was fitted (on_epoch_start)")
        return nearest_centroids(self.whiten(patches), self.centres)[0]


@METHODS.register("beit", "BEiT-style: predict the visual words (k-means tokens) of masked "
                          "patches (Bao et al. 2022)")
class BEiT(Method):
    """BEiT-style: ViT with mask tokens + linear head over a k-means patch vocabulary."""

    name = "beit"
    Config = BEiTConfig
    paper = "Bao, Dong, Piao, Wei, ICLR 2022"
    collapse_hint = "lower --lr"
    recipe = TrainingRecipe(
        optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, batch_size=256,
        warmup_epochs=0.25, epochs=100, adamw_betas=(0.9, 0.999),
    )

    def __init__(self, backbone: nn.Module, config: BEiTConfig, data: DataInfo) -> None:
        vit = require_vit(backbone, "BEiT")
        check_mask_ratio(config.mask_ratio)
        check_options([
            (config.vocabulary_size >= 2, "--vocabulary-size must be at least 2"),
            (config.tokenizer_patches >= config.vocabulary_size,
             f"--tokenizer-patches must be at least --vocabulary-size "
             f"({config.vocabulary_size})"),
            (config.tokenizer_iterations >= 1, "--tokenizer-iterations must be at least 1"),
            (0 < config.whitening_floor <= 1, "--whitening-floor must be in (0, 1]"),
            (config.masking in ("block", "random"), "--masking must be block or random"),
        ])
        super().__init__(backbone, config, data)
        self.views, view_size = crop_flip_views(vit, data, config.view_size, config.crop_scale)
        self.config = dataclasses.replace(config, view_size=view_size)
        self.patch_size = vit.patch_size
        patch_values = vit.patch_size**2 * data.channels
        self.tokenizer = PatchTokenizer(patch_values, config.vocabulary_size)
        self.mask_token = nn.Parameter(torch.zeros(vit.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(vit.embed_dim, config.vocabulary_size)

    # -- the vocabulary, once --------------------------------------------------------------

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        if bool(self.tokenizer.fitted):
            return None
        images = context.images
        per_image = (images.shape[-1] // self.patch_size) * (images.shape[-2] // self.patch_size)
        count = min(len(images), math.ceil(self.config.tokenizer_patches / per_image))
        if count * per_image < self.config.vocabulary_size:
            raise UserError(f"{len(images)} images hold fewer patches than "
                            f"--vocabulary-size {self.config.vocabulary_size}; choose fewer")
        generator = context.generator
        chosen = torch.randperm(len(images), generator=generator,
                                device=generator.device)[:count].to(images.device)
        pixels = normalize(to_float(images[chosen]), context.mean, context.std)
        patches = patchify(pixels, self.patch_size).flatten(0, 1)  # [count * L, P]
        return self.tokenizer.fit(patches, generator, self.config.tokenizer_iterations,
                                  self.config.whitening_floor)

    # -- training ----------------------------------------------------------------------------

    def mask(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The mask ``[N, L]`` (True where masked) of the configured kind."""
        grid = images.shape[-1] // self.patch_size
        if self.config.masking == "random":
            return block_random_mask(len(images), grid, self.config.mask_ratio, 1, generator,
                                     images.device)
        patches = grid * grid
        return blockwise_mask(len(images), grid, round(self.config.mask_ratio * patches),
                              min_block=max(1, round(BEIT_MIN_BLOCK_FRACTION * patches)),
                              generator=generator, device=images.device)

    def tokens(self, views: torch.Tensor) -> torch.Tensor:
        """The visual word of every patch of normalised ``views``: ``[N, L]`` long."""
        patches = patchify(views, self.patch_size)  # [N, L, P]
        return self.tokenizer(patches.flatten(0, 1)).view(patches.shape[:2])

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        views = self.views.all_views(batch.unlabeled, generator)  # [N, C, S, S]
        return views, self.mask(views, generator), self.tokens(views)  # , [N, L], [N, L]

    def predict(self, views: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens ``[N, 1 + L, D]`` and the word logits of every patch ``[N, L, K]``."""
        encoded = self.backbone.forward_tokens(views, mask=mask, mask_token=self.mask_token)
        return encoded, self.head(encoded[:, 1:])

    def training_loss(self, inputs: tuple[torch.Tensor, ...], step: StepInfo
                      ) -> dict[str, torch.Tensor]:
        views, mask, tokens = inputs
        encoded, logits = self.predict(views, mask)  # [N, 1 + L, D], [N, L, K]
        loss = masked_token_loss(logits, tokens, mask)
        with torch.no_grad():
            correct = (logits.argmax(-1) == tokens) & mask
            accuracy = correct.sum() / mask.sum().clamp_min(1)
        return {"loss": loss, "masked_token_accuracy": accuracy,
                "embedding_spread": embedding_spread(encoded[:, 0])}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
        """See :meth:`Method.reconstruct`: every patch drawn as the pixels of its most likely
        word (:meth:`PatchTokenizer.decode`), so the picture shows what the words can say."""
        if images.shape[-1] % self.patch_size or images.shape[-1] != images.shape[-2]:
            raise UserError(f"images of {images.shape[-1]} px do not split into the run's "
                            f"{self.patch_size} px patches; give data of the run's size")
        mask = self.mask(images, generator)
        _, logits = self.predict(images, mask)
        pixels = self.tokenizer.decode(logits.argmax(-1))  # [N, L, P]
        reconstruction = unpatchify(pixels, self.patch_size, images.shape[1])
        return reconstruction_result(images, reconstruction, mask, self.patch_size)
