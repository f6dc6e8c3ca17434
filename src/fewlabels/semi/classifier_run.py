"""A classifier run's pieces outside the training loop: the labeled split it stores, the
streams it trains on, the pretrained backbone it may start from, its predictions and their
calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewlabels.atomic import atomic_torch_save, atomic_write_text
from fewlabels.augment.convert import normalize, to_float
from fewlabels.calibration import (
    calibrated_probabilities,
    fit_temperature,
    temperature_nll,
)
from fewlabels.data.imageset import ImageSet
from fewlabels.data.splits import make_split
from fewlabels.engine.checkpoint import checkpoint_path, load_checkpoint
from fewlabels.engine.streams import LabeledStream
from fewlabels.errors import UserError


def split_spec(labels: torch.Tensor, labels_per_class: int | None, seed: int,
               calibration_per_class: int = 0) -> dict[str, Any]:
    """The labeled split of a run, as stored in its run spec: ``labels_per_class`` images of
    every class chosen with ``seed`` (all labels when ``None``), by their indices in the
    train part. No validation part: a classifier run selects nothing, it reports its last
    weights' (moving average's) test accuracy.

    With ``calibration_per_class`` N > 0, N more labeled images of every class are held out
    (chosen first, from the seed alone: :func:`fewlabels.data.splits.make_split`'s validation
    part) to fit the run's temperature after training (:func:`fit_calibration`); they count
    in the label budget and are never trained on, not even as unlabeled images."""
    split = make_split(labels, labels_per_class, seed, calibration_per_class)
    spec: dict[str, Any] = {"labels_per_class": labels_per_class, "seed": seed,
                            "labeled_indices": split.labeled.tolist()}
    if calibration_per_class:
        spec |= {"calibration_per_class": calibration_per_class,
                 "calibration_indices": split.validation.tolist()}
    return spec


def streams(train: ImageSet, split: dict[str, Any], unlabeled_ratio: int,
            max_unlabeled: int | None = None) -> tuple[torch.Tensor, LabeledStream]:
    """The unlabeled stream's images (every training image, the labeled ones too, as in
    FixMatch; or the labeled ones and a seeded random choice of the others, ``max_unlabeled``
    in all; never the held-out calibration images) and the labeled stream of the stored split,
    with the train part's labels as the unlabeled images' hidden labels (logged, never trained
    on)."""
    if train.labels is None:
        raise UserError("a classifier run needs labeled training images")
    indices = torch.as_tensor(split["labeled_indices"], dtype=torch.long)
    held_out = torch.as_tensor(split.get("calibration_indices", []), dtype=torch.long)
    if len(indices) == 0 or int(torch.cat([indices, held_out]).max()) >= len(train):
        raise UserError("the run's stored split does not fit this data; train a new run")
    labeled = LabeledStream(train.images[indices], train.labels[indices], unlabeled_ratio,
                            hidden_labels=train.labels)
    if (max_unlabeled is None or max_unlabeled >= len(train)) and len(held_out) == 0:
        return train.images, labeled
    others = torch.ones(len(train), dtype=torch.bool)
    others[indices] = False
    others[held_out] = False
    rest = others.nonzero().squeeze(1)
    if max_unlabeled is not None:
        generator = torch.Generator().manual_seed(split["seed"])
        rest = rest[torch.randperm(len(rest), generator=generator)[
            :max(0, max_unlabeled - len(indices))]]
    pool = torch.cat([indices, rest]).sort().values
    labeled.hidden_labels = train.labels[pool]
    return train.images[pool], labeled


def backbone_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a pretrained run's evaluated network, to start a classifier from."""
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


@torch.no_grad()
def predict_logits(network: nn.Module, images: torch.Tensor, mean: Any, std: Any,
                   *, batch_size: int = 1024, device: torch.device | str = "cpu"
                   ) -> torch.Tensor:
    """Logits ``[N, classes]`` (float32, CPU) of ``network`` (eval mode) for uint8
    ``images``, normalised with the run's statistics."""
    was_training = network.training
    network.eval().to(device)
    try:
        parts = [
            network(normalize(to_float(images[start:start + batch_size].to(device)), mean, std,
                              inplace=True)).float().cpu()
            for start in range(0, len(images), batch_size)
        ]
    finally:
        network.train(was_training)
    if not parts:
        raise UserError("no images to predict")
    return torch.cat(parts)


def predict_probabilities(network: nn.Module, images: torch.Tensor, mean: Any, std: Any,
                          *, batch_size: int = 1024, device: torch.device | str = "cpu",
                          temperature: float = 1.0) -> torch.Tensor:
    """Probabilities ``softmax(logits / temperature)`` ``[N, classes]`` of
    :func:`predict_logits` (temperature 1: the plain softmax)."""
    logits = predict_logits(network, images, mean, std, batch_size=batch_size, device=device)
    return calibrated_probabilities(logits, temperature)


def fit_calibration(network: nn.Module, train: ImageSet, split: dict[str, Any], mean: Any,
                    std: Any, *, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """Temperature scaling (Guo et al. 2017) of ``network`` on the split's held-out
    calibration images: the temperature that minimises their negative log-likelihood, with
    that NLL before and after; ``None`` when the split holds none out."""
    held_out = split.get("calibration_indices")
    if not held_out or train.labels is None:
        return None
    indices = torch.as_tensor(held_out, dtype=torch.long)
    logits = predict_logits(network, train.images[indices], mean, std, device=device)
    labels = train.labels[indices]
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature, "images": len(indices),
            "nll_before": temperature_nll(logits, labels, 1.0),
            "nll_after": temperature_nll(logits, labels, temperature)}


def store_calibration(run_dir: Path, calibration: dict[str, Any]) -> None:
    """Keep a fitted calibration in the run: in its checkpoint's run spec (where `fewlabels
    predict` reads it, so a copied checkpoint keeps it) and in ``run.json``, both rewritten
    atomically."""
    path = checkpoint_path(run_dir)
    checkpoint = load_checkpoint(path)
    checkpoint["run"]["calibration"] = calibration
    atomic_torch_save(checkpoint, path)
    description = path.parent / "run.json"
    if description.exists():
        written = json.loads(description.read_text())
        written["run"]["calibration"] = calibration
        atomic_write_text(description, json.dumps(written, indent=2) + "\n")


def accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return (probabilities.argmax(dim=1) == labels).float().mean().item()


def pseudo_label_warning(run_dir: Path) -> str | None:
    """A line for the user when the run logged a pseudo-label rate that stayed at zero over
    the second half of training (the threshold was never reached); else ``None``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    rates = [record["pseudo_label_rate"] for record in map(json.loads, path.read_text()
                                                            .splitlines())
             if "pseudo_label_rate" in record]
    if not rates or any(rate > 0 for rate in rates[len(rates) // 2:]):
        return None
    return ("no unlabeled image passed the confidence threshold in the second half of "
            "training: the unlabeled loss did nothing; lower --threshold or train longer")
