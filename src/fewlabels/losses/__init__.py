"""Training objectives, usable without the engine: plain functions and small modules."""

from fewlabels.losses.colorization import (
    colorization_loss,
    rebalancing_weights,
    smooth_distribution,
    soft_encode,
)
from fewlabels.losses.contrastive import moco_batch_loss, moco_queue_loss, nt_xent_loss
from fewlabels.losses.distillation import (
    TeacherEntropy,
    byol_loss,
    dino_kl_divergence,
    dino_loss,
    simsiam_loss,
    teacher_entropy,
    updated_center,
)
from fewlabels.losses.instance import (
    estimate_nce_normalizer,
    npid_nce_loss,
    npid_softmax_loss,
)
from fewlabels.losses.masked import mae_loss, masked_token_loss, simmim_loss
from fewlabels.losses.redundancy import (
    BarlowTwinsTerms,
    VICRegTerms,
    barlow_twins_cross_correlation,
    barlow_twins_loss,
    barlow_twins_terms,
    vicreg_loss,
    vicreg_terms,
)

__all__ = [
    "BarlowTwinsTerms",
    "TeacherEntropy",
    "VICRegTerms",
    "barlow_twins_cross_correlation",
    "barlow_twins_loss",
    "barlow_twins_terms",
    "byol_loss",
    "colorization_loss",
    "dino_kl_divergence",
    "dino_loss",
    "estimate_nce_normalizer",
    "mae_loss",
    "masked_token_loss",
    "moco_batch_loss",
    "moco_queue_loss",
    "npid_nce_loss",
    "npid_softmax_loss",
    "nt_xent_loss",
    "rebalancing_weights",
    "simmim_loss",
    "simsiam_loss",
    "smooth_distribution",
    "soft_encode",
    "teacher_entropy",
    "updated_center",
    "vicreg_loss",
    "vicreg_terms",
]
