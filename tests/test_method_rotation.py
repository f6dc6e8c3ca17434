"""RotNet: the labels are the rotations (undoing a view's rotation by its label gives back the
batch, four quarter turns are the identity), the four rotations share one crop, the loss is
the cross-entropy of a 4-way head (log 4 for uniform logits), and the method trains from the
command line logging its pretext accuracy. (Two processes against one: the jigsaw test, whose
tile-major views and batch-normed head are the harder case of the same plain cross-entropy.)"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.rotation import Rotation, RotationConfig, all_rotations, rotation_labels
from fewlabels.models import build_backbone

DATA = DataInfo(channels=1, image_size=28, mean=(0.3,), std=(0.35,), num_images=16)


def _images(count: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    small = torch.rand(count, 1, 7, 7, generator=generator)
    return (F.interpolate(small, size=28, mode="bilinear") * 255).to(torch.uint8)


def _method(**options) -> Rotation:
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2,
                              feature_dim=8)
    return Rotation(backbone, RotationConfig(**options), DATA).train()


def _step() -> StepInfo:
    return StepInfo(0, 0, 0.0, torch.Generator().manual_seed(0))


def test_undoing_each_views_rotation_by_its_label_gives_back_the_batch():
    images = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    views, labels = all_rotations(images)
    assert views.shape == (20, 3, 6, 6)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for view, label, image in zip(views, labels, images.repeat(4, 1, 1, 1), strict=True):
        torch.testing.assert_close(torch.rot90(view, -int(label), dims=(1, 2)), image,
                                   rtol=0, atol=0)
    # the four rotations are distinct, and a quarter turn four times is the identity
    assert not torch.equal(views[:5], views[5:10])
    turned = images
    for _ in range(4):
        turned = torch.rot90(turned, 1, dims=(2, 3))
    torch.testing.assert_close(turned, images, rtol=0, atol=0)


def test_one_quarter_turn_on_a_hand_example():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    views, _ = all_rotations(image)
    # rot90 over (H, W) turns counter-clockwise: the top row becomes the left column
    assert views[1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert views[2, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]


def test_the_four_rotations_of_an_image_share_one_crop():
    method = _method()
    views = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(2))
    assert views.shape == (32, 1, 20, 20)  # 3/4 of 28 px, four rotations of 8 images
    first = views[:8]
    for turns in range(1, 4):
        torch.testing.assert_close(views[8 * turns:8 * (turns + 1)],
                                   torch.rot90(first, turns, dims=(2, 3)), rtol=0, atol=0)


def test_uniform_logits_give_log_4_and_the_loss_is_the_cross_entropy_of_the_head():
    method = _method()
    views = method.make_views(Batch(unlabeled=_images()), torch.Generator().manual_seed(3))
    with torch.no_grad():
        method.classifier.weight.zero_()
        method.classifier.bias.zero_()
    out = method(views, _step())
    torch.testing.assert_close(out["loss"], torch.tensor(math.log(4)))
    # a head that prefers rotation 2 everywhere: loss of the others, accuracy 1/4
    with torch.no_grad():
        method.classifier.bias.copy_(torch.tensor([0.0, 0.0, 2.0, 0.0]))
    out = method(views, _step())
    expected = -(3 * math.log(1 / (3 + math.e**2)) + math.log(math.e**2 / (3 + math.e**2))) / 4
    torch.testing.assert_close(out["loss"], torch.tensor(expected))
    assert float(out["pretext_accuracy"]) == 0.25
    assert rotation_labels(2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_the_view_size_is_stored_resolved_and_bad_options_are_user_errors():
    assert _method().config.view_size == 20
    assert _method(view_size=28).config.view_size == 28
    with pytest.raises(UserError, match="crop-scale-min"):
        _method(crop_scale_min=0.0)
    with pytest.raises(UserError, match="flip-probability"):
        _method(flip_probability=2.0)


TINY = ["--data", "fashion-mnist-sample", "--max-images", "64", "--batch-size", "32",
        "--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress"]


def test_pretrain_from_the_command_line_logs_the_pretext_accuracy(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "rotation", "--out", str(out), *TINY,
                 "--epochs", "2"]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint["finished"] and checkpoint["run"]["representation"] == "backbone"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert steps and 0.0 <= steps[-1]["pretext_accuracy"] <= 1.0
    assert "embedding_spread" in steps[-1]
