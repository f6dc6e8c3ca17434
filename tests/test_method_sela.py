"""SeLa: balanced labels have exactly N/K images per cluster and the arg-max variant does not
enforce it; the multi-head loss against a hand-computed cross-entropy; the labels are
recomputed at the progress points of the schedule, once per epoch at most; a resumed run
equals an uninterrupted one; two processes hold the same labels as one."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.epoch_work import EpochContext
from fewlabels.losses.pseudo_labels import multi_head_cross_entropy
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.sela import SeLa, SeLaConfig, self_labels, update_points
from fewlabels.models import build_backbone

COUNT = 48
DATA = DataInfo(channels=1, image_size=28, mean=(0.3,), std=(0.35,), num_images=COUNT)
CONVNET = {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8}


def _images(count=COUNT, seed=0):
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 1, 7, 7, generator=generator)
    return (F.interpolate(small, size=28, mode="bilinear") * 255).to(torch.uint8)


def _method(**options):
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2,
                              feature_dim=8)
    config = SeLaConfig(**{"clustering_heads": 2, "clusters": 6, **options})
    return SeLa(backbone, config, DATA).train()


def _context(epoch=0):
    return EpochContext(epoch=epoch, step=epoch * 4, steps_per_epoch=4, images=_images(),
                        mean=DATA.mean, std=DATA.std,
                        generator=torch.Generator().manual_seed(epoch),
                        _reset_optimizer_state=lambda parameters: None)


# -- labels --------------------------------------------------------------------------------------


def test_equipartition_gives_exactly_n_over_k_per_cluster_and_arg_max_does_not():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(600, 12, generator=generator) * 3
    logits[:, 0] += 6.0  # a network that prefers one cluster
    balanced = self_labels(logits, 10.0, equipartition=True)
    assert torch.bincount(balanced, minlength=12).tolist() == [50] * 12
    greedy = self_labels(logits, 10.0, equipartition=False)
    torch.testing.assert_close(greedy, logits.argmax(1))
    assert torch.bincount(greedy, minlength=12).max() > 200  # not balanced
    # the balanced labels follow the posteriors: far likelier than a random balanced labelling
    posteriors = logits.softmax(1)
    shuffled = balanced[torch.randperm(600, generator=generator)]
    chosen = float(posteriors.gather(1, balanced[:, None]).mean())
    assert chosen > 3 * float(posteriors.gather(1, shuffled[:, None]).mean())


def test_saturated_posteriors_still_give_balanced_labels():
    # posteriors of 0 and 1 (log P down to about -1000): the floored scores keep the plan
    # finite, and every cluster still gets N/K images
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(600, 12, generator=generator) * 300
    logits[:, 3] += 2000.0
    labels = self_labels(logits, 25.0, equipartition=True)
    assert torch.bincount(labels, minlength=12).tolist() == [50] * 12


def test_balanced_labels_of_well_separated_logits_are_their_arg_max():
    # 4 images per cluster, each confident about its own: the balanced labels are the arg-max
    logits = 5 * torch.eye(3).repeat(4, 1)
    assert torch.equal(self_labels(logits, 10.0, equipartition=True), logits.argmax(1))


def test_method_labels_every_head_with_balanced_clusters():
    method = _method()
    numbers = method.on_epoch_start(_context())
    assert method.labels.shape == (2, COUNT)
    for head in range(2):
        assert torch.bincount(method.labels[head], minlength=6).tolist() == [8] * 6
    assert numbers["clusters_in_use"] == 6 and numbers["clusters_in_use_head1"] == 6
    assert numbers["label_updates"] == 1 and "nmi_previous" not in numbers
    # the labels are those of each head's logits on the un-augmented images
    features = _context().features(method.backbone)
    with torch.no_grad():
        expected = self_labels(method.heads[1](features), 10.0, True)
    assert torch.equal(method.labels[1], expected)


def test_arg_max_variant_may_leave_clusters_empty():
    method = _method(equipartition=False)
    with torch.no_grad():
        method.heads[0].bias.copy_(torch.tensor([0.0, 0, 100, 0, 0, 0]))  # cluster 2 wins
    numbers = method.on_epoch_start(_context())
    assert method.labels[0].tolist() == [2] * COUNT
    assert numbers["clusters_in_use_head0"] == 1 and numbers["clusters_in_use"] == 1


def test_labels_are_recomputed_at_the_progress_points_once_an_epoch():
    torch.testing.assert_close(update_points(4),
                               torch.tensor([0, 1 / 16, 1 / 4, 9 / 16], dtype=torch.float64))
    method = _method(label_updates=4)
    assert method.on_epoch_start(_context(0))["label_updates"] == 1  # point 0
    assert method.on_epoch_start(_context(0)) is None  # nothing new is due
    method.after_optimizer_step(StepInfo(3, 0, 0.05, torch.Generator(), 4))
    assert method.on_epoch_start(_context(1)) is None  # 0.05 < 1/16
    method.after_optimizer_step(StepInfo(7, 1, 0.3, torch.Generator(), 4))
    # 1/16 and 1/4 are both passed: one update, counted as both
    assert method.on_epoch_start(_context(2))["label_updates"] == 3
    method.after_optimizer_step(StepInfo(11, 2, 1.0, torch.Generator(), 4))
    numbers = method.on_epoch_start(_context(3))
    assert numbers["label_updates"] == 4 and 0 <= numbers["nmi_previous"] <= 1


# -- the loss --------------------------------------------------------------------------------------


def test_multi_head_loss_by_hand():
    first = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    second = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    labels = torch.tensor([[0, 1], [1, 0]])
    head_one = (-math.log(math.e / (math.e + 1)) + math.log(2)) / 2
    head_two = (-math.log(math.exp(2) / (math.exp(2) + 2))
                - math.log(math.exp(3) / (math.exp(3) + 2))) / 2
    assert float(multi_head_cross_entropy([first, second], labels)) == \
        pytest.approx((head_one + head_two) / 2, rel=1e-6)


def test_the_method_loss_reads_each_heads_labels_at_the_batch_indices():
    method = _method()
    method.labels[0] = torch.arange(COUNT) % 6
    method.labels[1] = (torch.arange(COUNT) * 5) % 6
    indices = torch.tensor([3, 17, 40, 8])
    generator = torch.Generator().manual_seed(0)
    inputs = method.make_views(Batch(unlabeled=_images()[indices], indices=indices), generator)
    loss = method(inputs, StepInfo(0, 0, 0.0, generator, 4))["loss"]
    views, _ = inputs
    features = method.backbone(views)
    expected = sum(F.cross_entropy(head(features), method.labels[h, indices])
                   for h, head in enumerate(method.heads)) / 2
    torch.testing.assert_close(loss, expected)


def test_cluster_heads_score_images():
    heads = _method().cluster_heads()
    assert sorted(heads) == ["0", "1"]  # shown as "head 0", "head 1"
    assert heads["1"].eval()(torch.randn(3, 1, 28, 28)).shape == (3, 6)


# -- through the engine ----------------------------------------------------------------------------

SMALL = ["--data", "fashion-mnist-sample", "--max-images", "48", "--batch-size", "16",
         "--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress",
         "--clustering-heads", "2", "--clusters", "4"]


def pretrain(out, *extra):
    return main(["pretrain", "--method", "sela", "--out", str(out), *SMALL, *extra])


def test_resume_within_an_epoch_gives_the_same_weights_and_labels(tmp_path):
    assert pretrain(tmp_path / "whole", "--epochs", "2") == 0
    assert pretrain(tmp_path / "split", "--epochs", "2", "--stop-after-steps", "4") == 130
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume",
                 "--no-progress"]) == 0
    whole = load_checkpoint(tmp_path / "whole")["model"]
    resumed = load_checkpoint(tmp_path / "split")["model"]
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name
    assert int(whole["label_updates_done"]) >= 2  # relabelled at both epochs
    for head in range(2):
        assert torch.bincount(whole["labels"][head], minlength=4).tolist() == [12] * 4
    records = [json.loads(line) for line in (tmp_path / "whole/metrics.jsonl").open()]
    work = [r for r in records if r.get("event") == "epoch_work"]
    assert [r["epoch"] for r in work] == [0, 1]
    assert all(r["clusters_in_use"] == 4 for r in work)


def test_equipartition_flag_parses(tmp_path):
    assert pretrain(tmp_path / "run", "--epochs", "1", "--equipartition", "false",
                    "--lambda", "5", "--stop-after-steps", "1") == 130
    config = json.loads((tmp_path / "run/run.json").read_text())["run"]["method_config"]
    assert config["equipartition"] is False and config["inverse_entropy_weight"] == 5.0


@pytest.mark.slow
def test_two_processes_hold_the_same_labels_as_one(tmp_path):
    # the harness's schedules span 100 epochs: the second epoch starts at progress 3/399,
    # past (i/100)^2 for i <= 8, so it relabels
    options = {"clustering_heads": 2, "clusters": 4, "label_updates": 100}
    single = compare_one_and_two_processes(tmp_path, "sela", options, CONVNET, steps=6,
                                           batch_size=16)
    assert int(single["state"]["label_updates_done"]) == 9
