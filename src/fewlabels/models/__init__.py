"""Backbones, heads and momentum (EMA) helpers.

``build_backbone(name, in_channels=..., image_size=..., width=..., depth=..., **options)`` returns
an ``nn.Module`` mapping ``[N, C, H, W]`` images to ``[N, feature_dim]`` features; ``BACKBONES``
lists the names (``fewlabels list backbones``). ``save_backbone`` / ``load_backbone`` write and
read one backbone with its preprocessing as a safetensors file (``fewlabels export``).
"""

from fewlabels.models.backbones import BACKBONES, build_backbone
from fewlabels.models.convnet import ConvNet
from fewlabels.models.export import ExportedBackbone, Preprocessing, load_backbone, save_backbone
from fewlabels.models.heads import DINOHead, PredictionHead, ProjectionHead, PrototypeHead
from fewlabels.models.momentum import copy_as_teacher, cosine_momentum, ema_update_
from fewlabels.models.resnet import ResNet
from fewlabels.models.vit import VisionTransformer, sincos_position_embedding_2d
from fewlabels.models.wide_resnet import WideResNet

__all__ = [
    "BACKBONES",
    "ConvNet",
    "ExportedBackbone",
    "PredictionHead",
    "Preprocessing",
    "ProjectionHead",
    "PrototypeHead",
    "DINOHead",
    "ResNet",
    "VisionTransformer",
    "WideResNet",
    "build_backbone",
    "copy_as_teacher",
    "cosine_momentum",
    "ema_update_",
    "load_backbone",
    "save_backbone",
    "sincos_position_embedding_2d",
]
