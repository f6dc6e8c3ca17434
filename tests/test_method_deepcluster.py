"""DeepCluster: the cluster-balancing weights and the loss against hand-computed values; the
labels are k-means of the PCA-whitened features with the epoch's generator (the same seed
gives the same labels); the classifier is re-initialised and its momentum forgotten after
every clustering; a run stopped within an epoch resumes to the same weights and labels; each
clustering is logged; two processes hold the same labels as one."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from engine_harness import compare_one_and_two_processes
from fewlabels.cli import main
from fewlabels.clustering.kmeans import kmeans
from fewlabels.clustering.pca import pca_whiten_normalize
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.epoch_work import EpochContext, optimizer_state_resetter
from fewlabels.errors import UserError
from fewlabels.losses.pseudo_labels import cluster_balanced_cross_entropy, cluster_balancing_weights
from fewlabels.methods import Batch, DataInfo, StepInfo
from fewlabels.methods.deepcluster import DeepCluster, DeepClusterConfig
from fewlabels.models import build_backbone

COUNT = 40
DATA = DataInfo(channels=1, image_size=28, mean=(0.3,), std=(0.35,), num_images=COUNT)
CONVNET = {"name": "convnet", "width": 4, "depth": 2, "feature_dim": 8}


def _images(count=COUNT, seed=0):
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 1, 7, 7, generator=generator)
    return (F.interpolate(small, size=28, mode="bilinear") * 255).to(torch.uint8)


def _method(seed=0, **options):
    torch.manual_seed(seed)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2,
                              feature_dim=8)
    config = DeepClusterConfig(**{"clusters": 4, "pca_dim": 6, **options})
    return DeepCluster(backbone, config, DATA).train()


def _context(epoch=0, seed=7, optimizer=None, images=None):
    generator = torch.Generator().manual_seed(seed)
    reset = (optimizer_state_resetter(optimizer) if optimizer is not None
             else lambda parameters: None)
    return EpochContext(epoch=epoch, step=epoch * 5, steps_per_epoch=5,
                        images=_images() if images is None else images, mean=DATA.mean,
                        std=DATA.std, generator=generator, _reset_optimizer_state=reset)


def _step(method, optimizer, step=0, batch=8):
    indices = torch.arange(step * batch, (step + 1) * batch) % COUNT
    generator = torch.Generator().manual_seed(step)
    with torch.no_grad():
        inputs = method.make_views(Batch(unlabeled=_images()[indices], indices=indices),
                                   generator)
    loss = method(inputs, StepInfo(step, 0, 0.0, generator, 5))["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss


# -- the loss ----------------------------------------------------------------------------------


def test_balancing_weights_and_loss_by_hand():
    sizes = torch.tensor([3, 1, 0, 2])  # N = 6 images in 3 non-empty clusters
    weights = cluster_balancing_weights(sizes)
    torch.testing.assert_close(weights, torch.tensor([6 / 9, 2.0, 0.0, 1.0]))
    labels = torch.tensor([0, 0, 0, 1, 3, 3])
    assert float(weights[labels].sum()) == pytest.approx(6.0)  # the weights average to 1
    logits = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    batch_labels = torch.tensor([0, 1, 3])
    first = -math.log(math.exp(2) / (math.exp(2) + 3))
    second = math.log(4)
    third = -math.log(math.e / (math.e + 3))
    expected = (6 / 9 * first + 2 * second + 1 * third) / 3
    assert float(cluster_balanced_cross_entropy(logits, batch_labels, weights)) == \
        pytest.approx(expected, rel=1e-6)
    plain = (first + second + third) / 3
    assert float(cluster_balanced_cross_entropy(logits, batch_labels)) == \
        pytest.approx(plain, rel=1e-6)


def test_the_method_loss_weights_each_image_by_its_cluster():
    method = _method()
    method.labels.copy_(torch.arange(COUNT) % 4)
    method.labels[:10] = 0  # cluster 0 is the largest
    sizes = torch.bincount(method.labels, minlength=4)
    method.cluster_weights.copy_(cluster_balancing_weights(sizes))
    with torch.no_grad():  # a zero classifier: every image's cross-entropy is log 4
        method.classifier.weight.zero_()
        method.classifier.bias.zero_()
    indices = torch.tensor([0, 1, 2, 11, 13, 30])
    generator = torch.Generator().manual_seed(0)
    inputs = method.make_views(Batch(unlabeled=_images()[indices], indices=indices), generator)
    loss = method(inputs, StepInfo(0, 0, 0.0, generator, 5))["loss"]
    weights = COUNT / (4 * sizes.float())  # N / (K n_c)
    expected = float(weights[method.labels[indices]].mean()) * math.log(4)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(loss.detach()) < math.log(4)  # images of the large cluster count less


# -- clustering between epochs -----------------------------------------------------------------


def test_labels_are_kmeans_of_the_whitened_features_with_balancing_weights():
    method = _method()
    context = _context()
    numbers = method.on_epoch_start(context)
    features = _context().features(method.backbone)
    expected = kmeans(pca_whiten_normalize(features, 6), 4,
                      generator=torch.Generator().manual_seed(7), iterations=20, init="random")
    assert torch.equal(method.labels, expected.assignments)
    sizes = torch.bincount(method.labels, minlength=4)
    assert bool((sizes > 0).all())
    torch.testing.assert_close(method.cluster_weights, COUNT / (4 * sizes.float()))
    assert numbers["clusters_in_use"] == 4 and "nmi_previous" not in numbers
    again = method.on_epoch_start(_context(epoch=1, seed=8))
    assert 0.0 <= again["nmi_previous"] <= 1.0
    assert int(method.clusterings) == 2


def test_recluster_every_skips_epochs():
    method = _method(recluster_every=2)
    assert method.on_epoch_start(_context(epoch=0)) is not None
    labels = method.labels.clone()
    assert method.on_epoch_start(_context(epoch=1, seed=3)) is None
    assert torch.equal(method.labels, labels)


def test_same_seed_same_labels_and_classifier():
    first, second = _method(), _method()
    first.on_epoch_start(_context(seed=11))
    second.on_epoch_start(_context(seed=11))
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    third = _method()
    third.on_epoch_start(_context(seed=12))
    assert not torch.equal(first.classifier.weight, third.classifier.weight)


def test_classifier_is_reinitialised_and_its_momentum_forgotten():
    method = _method()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    method.on_epoch_start(_context(optimizer=optimizer))
    for step in range(2):
        _step(method, optimizer, step)
    classifier = list(method.classifier.parameters())
    assert all(p in optimizer.state and "momentum_buffer" in optimizer.state[p]
               for p in method.parameters())
    trained = method.classifier.weight.clone()
    method.on_epoch_start(_context(epoch=1, seed=8, optimizer=optimizer))
    assert all(p not in optimizer.state for p in classifier)  # momentum gone
    backbone = list(method.backbone.parameters())
    assert all("momentum_buffer" in optimizer.state[p] for p in backbone)  # kept
    weight = method.classifier.weight.detach()
    assert not torch.equal(weight, trained)
    assert torch.equal(method.classifier.bias, torch.zeros(4))
    assert 0.004 < float(weight.std()) < 0.016 and abs(float(weight.mean())) < 0.01
    _step(method, optimizer, 2)  # trains on from a fresh state
    assert all("momentum_buffer" in optimizer.state[p] for p in classifier)


def test_cluster_head_scores_images():
    method = _method()
    names = set(method.state_dict())
    head = method.cluster_heads()["classifier"]
    scores = head.eval()(torch.randn(5, 1, 28, 28))
    assert scores.shape == (5, 4)
    assert set(method.state_dict()) == names  # nothing new registered


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="--clusters"):
        _method(clusters=COUNT + 1)
    with pytest.raises(UserError, match="number"):
        DeepCluster(build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2),
                    DeepClusterConfig(), DataInfo(1, 28, (0.3,), (0.35,)))


# -- through the engine ------------------------------------------------------------------------

SMALL = ["--data", "fashion-mnist-sample", "--max-images", "48", "--batch-size", "16",
         "--width", "4", "--depth", "2", "--feature-dim", "8", "--no-progress",
         "--clusters", "4", "--pca-dim", "6"]


def pretrain(out, *extra):
    return main(["pretrain", "--method", "deepcluster", "--out", str(out), *SMALL, *extra])


def test_resume_within_an_epoch_gives_the_same_weights_and_labels(tmp_path):
    assert pretrain(tmp_path / "whole", "--epochs", "2") == 0
    # 3 steps an epoch: stopped after the second epoch's clustering and first step
    assert pretrain(tmp_path / "split", "--epochs", "2", "--stop-after-steps", "4") == 130
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume",
                 "--no-progress"]) == 0
    whole = load_checkpoint(tmp_path / "whole")["model"]
    resumed = load_checkpoint(tmp_path / "split")["model"]
    assert whole["labels"].shape == (48,) and int(whole["clusterings"]) == 2
    assert whole.keys() == resumed.keys()
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name
    records = [json.loads(line) for line in (tmp_path / "whole/metrics.jsonl").open()]
    work = [r for r in records if r.get("event") == "epoch_work"]
    assert [r["epoch"] for r in work] == [0, 1]
    assert all(r["clusters_in_use"] == 4 and r["epoch_work_seconds"] >= 0 for r in work)
    assert "nmi_previous" in work[1] and "nmi_previous" not in work[0]


@pytest.mark.slow
def test_two_processes_hold_the_same_labels_as_one(tmp_path):
    # 64 images, batches of 16: 4 steps an epoch, so 6 steps cluster twice
    single = compare_one_and_two_processes(
        tmp_path, "deepcluster", {"clusters": 4, "pca_dim": 6}, CONVNET, steps=6,
        batch_size=16)
    assert int(single["state"]["clusterings"]) == 2
    assert torch.bincount(single["state"]["labels"], minlength=4).min() > 0
