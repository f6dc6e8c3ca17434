"""`fewlabels predict`: a class and its confidence for every image of a dataset, from a
classifier run (`fewlabels semi` or `fewlabels finetune`), as a CSV file to label with.

One row per image, parts in the order train, test, unlabeled and images in the dataset's
order. Columns:

- ``id``: the file path relative to the folder for ``folder:PATH`` data (``train/cat/1.png``),
  else the part and the image's index in it (``test/17``);
- ``part``: train, test or unlabeled;
- ``prediction``: the most probable class (the run's class names);
- ``confidence``: its softmax probability;
- with ``--top K``: ``prediction_2, probability_2, ..., prediction_K, probability_K``, the
  next most probable classes;
- ``label``: the true class, when the data has labels (empty for images without one).

The probabilities are the softmax of the network the run evaluates (the moving average of its
weights). A run trained with ``--calibration-per-class N`` held N labeled images per class out
of training and fitted a temperature ``T`` on them (Guo et al. 2017): its probabilities are
``softmax(logits / T)``, calibrated, so that among images given confidence 0.9 about 9 in 10
are right; the predicted class is the same either way. Without held-out labels they are the
plain softmax, over-confident as a rule, and the summary line says so.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewlabels.atomic import atomic_write_text
from fewlabels.calibration import confidence_calibration_error
from fewlabels.commands.arguments import (
    DATA_HELP,
    add_accelerator_option,
    add_on_corrupt_option,
    positive_int,
)
from fewlabels.commands.evaluate import evaluation_device
from fewlabels.data import load_dataset
from fewlabels.data.bundle import PART_NAMES
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError
from fewlabels.runs import describe, load_method
from fewlabels.semi import ClassifierMethod
from fewlabels.semi.classifier_run import predict_probabilities

ALL_PARTS = "all"
CONFIDENCE_DIGITS = 6


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "predict", help="a class and its confidence for every image, as a CSV file",
        description="Write one CSV row per image of a dataset with a classifier run's "
                    "prediction and confidence: id (a folder's file path, else PART/INDEX), "
                    "part, prediction, confidence, with --top K the next classes and their "
                    "probabilities, and label where the image has one. Confidences are the "
                    "softmax of the run's moving-average network, calibrated by the "
                    "temperature the run fitted on held-out labels when it was trained with "
                    "--calibration-per-class.")
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                        help="run folder (or checkpoint.pt) of fewlabels semi or finetune")
    parser.add_argument("--data", default=None,
                        help=f"{DATA_HELP} (default: the data the run was trained on)")
    parser.add_argument("--out", required=True, metavar="FILE.csv",
                        help="the CSV file to write (UTF-8, a header line)")
    parser.add_argument("--part", choices=[*PART_NAMES, ALL_PARTS], default=ALL_PARTS,
                        help="which part of the dataset to predict (default all: every part "
                             "it has)")
    parser.add_argument("--top", type=positive_int, default=1, metavar="K",
                        help="classes per image, most probable first (default 1)")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="write the plain softmax even when the run has a temperature")
    parser.add_argument("--batch-size", type=positive_int, default=512,
                        help="images per forward pass (default 512)")
    add_on_corrupt_option(parser, "skip it (it gets no row)")
    add_accelerator_option(parser, "to predict on")


@dataclass
class PartPredictions:
    """One part's image ids, the ``K`` most probable classes of every image with their
    probabilities (``[N, K]`` each, most probable first) and label names (or ``None``)."""

    part: str
    ids: list[str]
    probabilities: torch.Tensor
    classes: torch.Tensor
    labels: list[str] | None

    @classmethod
    def ranked(cls, part: str, ids: list[str], probabilities: torch.Tensor, top: int,
               labels: list[str] | None) -> PartPredictions:
        values, classes = probabilities.topk(top, dim=1)
        return cls(part, ids, values, classes, labels)


def load_classifier(run_dir: str | Path) -> tuple[ClassifierMethod, dict[str, Any]]:
    """A classifier run's method with its trained weights; any other run is refused."""
    method, checkpoint = load_method(run_dir)
    if not isinstance(method, ClassifierMethod):
        raise UserError(f"{run_dir} holds a {checkpoint['run']['method']} pretraining run, not "
                        "a classifier; train one from it with `fewlabels finetune --init "
                        f"{run_dir}` or `fewlabels semi` first")
    return method, checkpoint


def parts_to_predict(spec: str, part: str, image_size: int, channels: int,
                     on_corrupt: str) -> dict[str, ImageSet]:
    """The asked parts of the data, resized to ``image_size``, with ``channels`` checked."""
    bundle = load_dataset(spec, image_size=image_size, on_corrupt=on_corrupt)
    if part == ALL_PARTS:
        parts = bundle.parts()
    else:
        chosen = getattr(bundle, part)
        if chosen is None:
            available = ", ".join(bundle.parts()) or "none"
            raise UserError(f"{spec} has no {part} part; choose --part from: {available}, "
                            f"{ALL_PARTS}")
        parts = {part: chosen}
    for images in parts.values():
        if images.channels != channels:
            raise UserError(f"{spec} has {images.channels}-channel images but the run was "
                            f"trained on {channels}-channel images; predict data like it")
    return parts


def image_ids(part: str, images: ImageSet) -> list[str]:
    """The id of every image: its file (image folders), else ``PART/INDEX``."""
    if images.ids is not None:
        return list(images.ids)
    return [f"{part}/{index}" for index in range(len(images))]


def label_names(images: ImageSet) -> list[str] | None:
    """The class name of every image's label, or ``None`` when the part has no labels."""
    if images.labels is None:
        return None
    names = images.class_names
    return [names[label] if label < len(names) else str(label)
            for label in images.labels.tolist()]


def csv_text(predictions: list[PartPredictions], class_names: list[str]) -> str:
    """The CSV file: a header line, then one row per image."""
    top = predictions[0].classes.shape[1]
    labeled = any(part.labels is not None for part in predictions)
    header = ["id", "part", "prediction", "confidence"]
    for rank in range(2, top + 1):
        header += [f"prediction_{rank}", f"probability_{rank}"]
    header += ["label"] if labeled else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for part in predictions:
        for row, image_id in enumerate(part.ids):
            cells = [image_id, part.part]
            for value, index in zip(part.probabilities[row].tolist(),
                                    part.classes[row].tolist(), strict=True):
                cells += [class_names[index], f"{value:.{CONFIDENCE_DIGITS}f}"]
            if labeled:
                cells.append("" if part.labels is None else part.labels[row])
            writer.writerow(cells)
    return buffer.getvalue()


def run(args: Any) -> dict[str, Any]:
    method, checkpoint = load_classifier(args.checkpoint)
    run_spec = checkpoint["run"]
    class_names = list(run_spec.get("class_names")
                       or [str(index) for index in range(method.data.num_classes)])
    if args.top > len(class_names):
        raise UserError(f"--top {args.top} is more than the run's {len(class_names)} classes; "
                        f"give at most {len(class_names)}")
    spec = args.data or run_spec["data"]["spec"]
    parts = parts_to_predict(spec, args.part, method.data.image_size, method.data.channels,
                             args.on_corrupt)
    network, device = method.classifier_network(), evaluation_device(args.accelerator)
    calibration = None if args.uncalibrated else run_spec.get("calibration")
    temperature = calibration["temperature"] if calibration else 1.0
    predictions = [
        PartPredictions.ranked(
            name, image_ids(name, images),
            predict_probabilities(network, images.images, method.data.mean, method.data.std,
                                  batch_size=args.batch_size, device=device,
                                  temperature=temperature),
            args.top, label_names(images))
        for name, images in parts.items()
    ]
    out = Path(args.out)
    atomic_write_text(out, csv_text(predictions, class_names))
    summary = _summary(predictions, class_names, spec) | {
        "temperature": temperature, "calibrated": calibration is not None}
    print(_summary_line(summary, describe(checkpoint), spec, out))
    print(_calibration_line(calibration, args.uncalibrated and "calibration" in run_spec))
    return summary


def _summary(predictions: list[PartPredictions], class_names: list[str], spec: str
             ) -> dict[str, Any]:
    """Images predicted (per part), the accuracy and the expected calibration error over the
    images with labels (``None`` without any) and the mean confidence."""
    confidences = torch.cat([part.probabilities[:, 0] for part in predictions])
    labeled_confidences, right = [], []
    unknown: set[str] = set()
    for part in predictions:
        if part.labels is None:
            continue
        predicted = part.classes[:, 0].tolist()
        right += [class_names[index] == label
                  for index, label in zip(predicted, part.labels, strict=True)]
        labeled_confidences.append(part.probabilities[:, 0])
        unknown |= set(part.labels) - set(class_names)
    if unknown:
        warnings.warn(f"the labels of {spec} include classes the run does not know "
                      f"({', '.join(sorted(unknown)[:5])}); they count as wrong", stacklevel=2)
    labeled = len(right)
    return {"images": len(confidences),
            "parts": {part.part: len(part.ids) for part in predictions},
            "labeled": labeled, "accuracy": sum(right) / labeled if labeled else None,
            "expected_calibration_error": confidence_calibration_error(
                torch.cat(labeled_confidences), torch.tensor(right)) if labeled else None,
            "mean_confidence": confidences.mean().item()}


def _calibration_line(calibration: dict[str, Any] | None, declined: bool) -> str:
    if calibration:
        return (f"confidences calibrated: temperature {calibration['temperature']:.3g} fitted "
                f"on {calibration['images']} held-out labels")
    if declined:
        return "confidences: the plain softmax (--uncalibrated), over-confident as a rule"
    return ("confidences: the plain softmax, not calibrated (over-confident as a rule); train "
            "with --calibration-per-class N to calibrate them")


def _summary_line(summary: dict[str, Any], run: str, spec: str, out: Path) -> str:
    parts = ", ".join(f"{name} {count}" for name, count in summary["parts"].items())
    line = f"predicted {summary['images']} images of {spec} ({parts}) with {run}: "
    if summary["accuracy"] is not None:
        line += (f"accuracy {100 * summary['accuracy']:.2f}% and expected calibration error "
                 f"{summary['expected_calibration_error']:.3f} on the {summary['labeled']} "
                 "with labels, ")
    return line + f"mean confidence {summary['mean_confidence']:.3f}; wrote {out}"
