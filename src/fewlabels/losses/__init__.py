"""Training objectives, usable without the engine: plain functions and small modules."""

from fewlabels.losses.contrastive import nt_xent_loss

__all__ = ["nt_xent_loss"]
