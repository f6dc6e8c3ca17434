"""Methods, one file each, registered by name in ``METHODS``."""

from fewlabels.methods import byol, dino, moco, mocov3, npid, simclr, simsiam, swav  # noqa: F401
from fewlabels.methods.base import Batch, DataInfo, Method, StepInfo, TrainingRecipe
from fewlabels.methods.registry import METHODS

__all__ = ["METHODS", "Batch", "DataInfo", "Method", "StepInfo", "TrainingRecipe"]
