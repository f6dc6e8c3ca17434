"""Methods, one file each, registered by name in ``METHODS``."""

from fewlabels.methods import (  # noqa: F401
    barlow_twins,
    beit,
    byol,
    colorization,
    context_encoder,
    deepcluster,
    denoising_autoencoder,
    dino,
    exemplar,
    jigsaw,
    mae,
    moco,
    mocov3,
    npid,
    relative_patch,
    rotation,
    sela,
    simclr,
    simmim,
    simsiam,
    swav,
    vicreg,
)
from fewlabels.methods.base import Batch, DataInfo, Method, StepInfo, TrainingRecipe
from fewlabels.methods.registry import METHODS

__all__ = ["METHODS", "Batch", "DataInfo", "Method", "StepInfo", "TrainingRecipe"]
