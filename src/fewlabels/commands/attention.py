"""`fewlabels attention`: DINO's pictures of where a ViT looks, for a few test images.

For each image, one PNG with the image, the mean of the heads and every head of the last
block's [CLS] attention laid over it (see :mod:`fewlabels.report.attention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewlabels.commands.arguments import (
    add_on_corrupt_option,
    positive_int,
)
from fewlabels.commands.export import load_network
from fewlabels.data import load_dataset
from fewlabels.errors import UserError
from fewlabels.report.attention import cls_attention, draw_attention


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "attention", help="pictures of a ViT's [CLS] attention over test images (DINO)",
        description="For the first N test images, write a PNG each: the image, then the "
                    "last block's [CLS] attention over the patches (the mean of the heads, "
                    "then every head) laid over it, as in the DINO paper's figures. Needs a "
                    "run pretrained with --backbone vit.")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder (or checkpoint.pt) of fewlabels pretrain, or a file "
                             "of fewlabels export")
    parser.add_argument("--data", default=None,
                        help="dataset whose test images to draw (default: the data the run "
                             "was pretrained on; the train part when it has no test part)")
    parser.add_argument("--out", required=True, help="folder to write the PNG files into")
    parser.add_argument("--images", type=positive_int, default=8,
                        help="how many images to draw (default 8)")
    parser.add_argument("--representation", default=None,
                        help="which network of the run, e.g. backbone or teacher (default: "
                             "the one the run declares)")
    add_on_corrupt_option(parser)


@dataclass
class AttentionPictures:
    """What was drawn: the PNG files, the index of each image in its part, which part, and
    the attention weights drawn, ``[N, heads, h, w]`` (each map sums to 1 over the patches)."""

    paths: list[Path]
    indices: list[int]
    part: str
    weights: torch.Tensor


def run(args: Any) -> AttentionPictures:
    loaded = load_network(args.checkpoint, args.representation)
    network = loaded.network
    if not callable(getattr(network, "attention_maps", None)):
        kind = type(network).__name__
        raise UserError(f"attention maps need a ViT, and this network is a {kind}; "
                        "pretrain with --backbone vit")
    spec = args.data or loaded.data_spec
    if not spec:
        raise UserError(f"{args.checkpoint} does not say what data it was pretrained on; "
                        "give --data")
    preprocessing = loaded.preprocessing
    bundle = load_dataset(spec, image_size=preprocessing.image_size, on_corrupt=args.on_corrupt)
    part, images = "test", bundle.test
    if images is None:
        part, images = "train", bundle.train
    if images is None or len(images) == 0:
        raise UserError(f"{spec} has no images to draw")
    if images.channels != preprocessing.channels:
        raise UserError(f"{spec} has {images.channels}-channel images but the network takes "
                        f"{preprocessing.channels}-channel images; give data like it")
    count = min(args.images, len(images))
    chosen = images.images[:count]  # [N, C, S, S] uint8
    weights = cls_attention(network.cpu(), preprocessing(chosen))  # [N, heads, h, w]

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the PNG files")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        label = ""
        if images.labels is not None and images.class_names:
            label = f", {images.class_names[int(images.labels[index])]}"
        title = f"{part} image {index}{label}: last-block [CLS] attention"
        paths.append(draw_attention(chosen[index], weights[index],
                                    out / f"attention_{part}_{index:04d}.png", title=title))
    heads = weights.shape[1]
    print(f"wrote {count} attention pictures ({heads} heads, {weights.shape[2]}x"
          f"{weights.shape[3]} patches, {part} part of {spec}) to {out}")
    return AttentionPictures(paths, list(range(count)), part, weights)
