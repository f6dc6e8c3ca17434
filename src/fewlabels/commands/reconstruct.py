"""`fewlabels reconstruct`: what a run of a reconstructing method (masked image modelling,
inpainting, denoising) predicts for the images it is given.

A few images of the test part (the train part for data without one), chosen by ``--seed``,
are masked by the run's own masking with a generator of the same seed and passed through the
method's :meth:`~fewlabels.methods.base.Method.reconstruct`; the picture has a row of the
originals, one of the masked inputs (masked patches grey) and one of the reconstructions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewlabels.augment.convert import normalize, to_float
from fewlabels.commands.arguments import (
    DATA_HELP,
    add_accelerator_option,
    add_on_corrupt_option,
    number,
    positive_int,
)
from fewlabels.commands.evaluate import evaluation_device
from fewlabels.data import load_dataset
from fewlabels.errors import UserError
from fewlabels.methods import METHODS, Method
from fewlabels.report.reconstruction_grid import draw_reconstruction_grid
from fewlabels.runs import describe, load_method

DEFAULT_IMAGES = 8
MASK_GREY = 0.5  # masked pixels in the "masked" row, on the [0, 1] scale


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "reconstruct", help="a grid of original, masked and reconstructed test images",
        description="Mask (or corrupt) a few test images as the run's method was trained to "
                    "and draw the originals, the method's inputs and its reconstructions as a "
                    f"PNG. Methods that reconstruct: {', '.join(reconstructing_methods())} "
                    "(BEiT draws each patch as its predicted visual word).")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder (or checkpoint.pt) made by fewlabels pretrain")
    parser.add_argument("--data", default=None,
                        help=f"{DATA_HELP} (default: the data the run was pretrained on)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--images", type=positive_int, default=DEFAULT_IMAGES,
                        help=f"how many images (default {DEFAULT_IMAGES})")
    parser.add_argument("--seed", type=number(int, 0), default=0,
                        help="seed of the choice of images and of their masks (default 0)")
    add_accelerator_option(parser)
    add_on_corrupt_option(parser)


def reconstructing_methods() -> list[str]:
    """The registered methods that implement ``reconstruct``."""
    return [name for name in METHODS.names()
            if METHODS.get(name).reconstruct is not Method.reconstruct]


def run(args: Any) -> Path:
    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out {args.out} should be a .png file")
    method, checkpoint = load_method(args.checkpoint)
    method_name = checkpoint["run"]["method"]
    if type(method).reconstruct is Method.reconstruct:
        raise UserError(f"{method_name} runs make no reconstructions; give a run of "
                        f"{', '.join(reconstructing_methods())}")
    info = method.data
    spec = args.data or checkpoint["run"]["data"]["spec"]
    bundle = load_dataset(spec, image_size=info.image_size, on_corrupt=args.on_corrupt)
    part, images = ("test", bundle.test) if bundle.test is not None and len(bundle.test) \
        else ("train", bundle.train)
    if images is None or len(images) == 0:
        raise UserError(f"{spec} has no images to reconstruct")
    if images.channels != info.channels:
        raise UserError(f"{spec} has {images.channels}-channel images but the run was trained "
                        f"on {info.channels}-channel images; give data like it")
    count = min(args.images, len(images))
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    originals = images.images[chosen[:count]]  # uint8 [n, C, S, S]

    device = evaluation_device(args.accelerator)
    method = method.to(device).eval()
    inputs = normalize(to_float(originals.to(device)), info.mean, info.std)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    result = method.reconstruct(inputs, generator)

    def to_uint8(normalised: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
        pixels = (normalised.float() * std + mean).clamp(0, 1)
        return (pixels * 255).round().to(torch.uint8).cpu()

    mask = result["mask"].to(device)
    masked = to_uint8(result["masked"]).masked_fill(mask.cpu(), round(MASK_GREY * 255))
    shown = mask.float().mean().item()
    title = (f"{method_name}: {count} {part} images of {spec}, {100 * shown:.0f}% of the "
             f"pixels masked, seed {args.seed}")
    if getattr(method.config, "norm_pixel_loss", False):
        title += "\ntargets normalised per patch: shown at each patch's true mean and contrast"
    path = draw_reconstruction_grid(
        {"original": originals.cpu(), "masked": masked,
         "reconstruction": to_uint8(result["reconstruction"])}, args.out, title=title)
    print(f"reconstructions of {describe(checkpoint)}: {count} {part} images written to {path}")
    return path
