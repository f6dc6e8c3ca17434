"""Active learning's numbers, against values derived by hand: acquisition scores, greedy
k-centre, the cold start, diverse batches, temperature scaling and the calibration error."""

import math

import pytest
import torch

from fewlabels.active import (
    STRATEGIES,
    QueryOptions,
    bald,
    cold_start,
    diverse_batch,
    entropy,
    expected_calibration_error,
    fit_round_classifier,
    fit_temperature,
    k_centre_greedy,
    least_confidence,
    margin,
    mean_kl_to_consensus,
    query,
    vote_entropy,
)
from fewlabels.active.scores import chunked_disagreement
from fewlabels.active.strategies import SWITCH_LABELS_PER_CLASS
from fewlabels.active.typiclust import typicality, typiclust
from fewlabels.evaluate.linear_probe import FeaturePreprocessing

TABLE = torch.tensor([[0.7, 0.2, 0.1],
                      [0.5, 0.5, 0.0]])


def _h(*probabilities):
    """Entropy in nats, written out: -sum p ln p."""
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def test_least_confidence_margin_and_entropy_by_hand():
    assert least_confidence(TABLE).tolist() == pytest.approx([0.3, 0.5])
    # -(best - second best): -(0.7 - 0.2) and -(0.5 - 0.5)
    assert margin(TABLE).tolist() == pytest.approx([-0.5, 0.0], abs=1e-7)
    # 0.7 ln(1/0.7) + 0.2 ln 5 + 0.1 ln 10 = 0.80182; ln 2 with 0 log 0 = 0
    assert entropy(TABLE).tolist() == pytest.approx([0.801819, math.log(2)], abs=1e-6)


def test_bald_is_entropy_of_the_mean_minus_mean_entropy():
    samples = torch.tensor([
        [[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]],  # sample 1 for images a, b, c
        [[0.0, 1.0], [0.5, 0.5], [0.4, 0.6]],  # sample 2
    ])
    # a: confident samples that disagree -> H[0.5, 0.5] - 0 = ln 2
    # b: the same uncertain sample twice -> ln 2 - ln 2 = 0 (noise, not disagreement)
    # c: H[0.6, 0.4] - (H[0.8, 0.2] + H[0.4, 0.6]) / 2 = 0.673012 - 0.586707 = 0.086305
    expected_c = _h(0.6, 0.4) - (_h(0.8, 0.2) + _h(0.4, 0.6)) / 2
    assert expected_c == pytest.approx(0.086305, abs=1e-6)
    assert bald(samples).tolist() == pytest.approx([math.log(2), 0.0, expected_c], abs=1e-6)


def test_vote_entropy_counts_votes():
    members = torch.tensor([
        [[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]],
        [[0.2, 0.7, 0.1], [0.2, 0.2, 0.6]],
        [[0.5, 0.4, 0.1], [0.3, 0.3, 0.4]],
    ])
    # image 1: votes 0, 1, 0 -> -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.636514; image 2: all class 2
    assert vote_entropy(members).tolist() == pytest.approx([0.636514, 0.0], abs=1e-6)


def test_mean_kl_to_the_consensus_by_hand():
    members = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])
    # consensus [0.75, 0.25]; KL([1, 0] || c) = ln(4/3); KL([.5, .5] || c) = .5 ln(2/3) + .5 ln 2
    expected = (math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2
    assert expected == pytest.approx(0.215762, abs=1e-6)
    assert mean_kl_to_consensus(members).item() == pytest.approx(expected, abs=1e-6)
    # the same quantity as BALD's, by expanding the logarithms
    assert mean_kl_to_consensus(members).item() == pytest.approx(bald(members).item(), abs=1e-6)


def test_bald_in_chunks_equals_bald_at_once():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 8, generator=generator)
    labels = torch.arange(60) % 3
    classifier = fit_round_classifier(features[:30], labels[:30], num_classes=3,
                                      preprocessing=FeaturePreprocessing.fit(features))
    weights = classifier.dropout_weights(7, 0.5, generator)
    pool = features[30:]
    at_once = bald(classifier.sampled_probabilities(pool, weights))
    calls = []

    def source(start, stop):
        calls.append(stop - start)
        return classifier.sampled_probabilities(pool[start:stop], weights)

    # 7 samples x 3 classes x 2 images = 42 values a chunk
    chunked = chunked_disagreement(bald, source, len(pool), samples=7, classes=3,
                                   chunk_elements=42)
    assert calls == [2] * 15
    assert torch.allclose(chunked, at_once, atol=1e-7) and at_once.max() > 0.01
    # without dropout every sample is the probe itself: nothing to disagree on
    still = classifier.dropout_weights(4, 0.0, generator)
    assert bald(classifier.sampled_probabilities(pool, still)).abs().max() < 1e-6


# --- core-set and cold start ------------------------------------------------------------

LINE = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])


def test_k_centre_picks_the_farthest_points():
    # from the labeled 0: 20 is farthest; then 10 (10 from both 0 and 20, 11 is 9 from 20);
    # then 2 (2 from 0, the rest are 1 away from a centre)
    assert k_centre_greedy(LINE, torch.tensor([0]), 3).tolist() == [5, 3, 2]
    # no label: the point nearest the mean (7.33) is 10, then 0 and 20 tie at 10 (lower
    # index first), then 20
    assert k_centre_greedy(LINE, torch.tensor([], dtype=torch.long), 3).tolist() == [3, 0, 5]
    # labeled points are never picked, candidates limit the picks, the budget is capped
    assert k_centre_greedy(LINE, torch.tensor([0, 5]), 10,
                           candidates=torch.tensor([1, 2, 5])).tolist() == [2, 1]


def _blobs(per_blob=25, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0], [30.0, 30.0]])
    points = torch.cat([centre + torch.randn(per_blob, 2, generator=generator)
                        for centre in centres])
    return points, torch.arange(4).repeat_interleave(per_blob)


def test_cold_start_picks_the_most_typical_image_of_every_blob():
    points, blob = _blobs()
    picks = cold_start(points, 4, generator=torch.Generator().manual_seed(1))
    assert sorted(blob[picks].tolist()) == [0, 1, 2, 3]
    for pick in picks.tolist():
        members = (blob == blob[pick]).nonzero().flatten()
        distances = (points[members] - points[members].mean(0)).norm(dim=1)
        assert pick == members[distances.argmin()].item()


def test_diverse_batch_spreads_over_the_candidates_and_never_repeats():
    points, blob = _blobs(per_blob=10)
    # blob 0 scores highest, then 1, 2, 3: the plain top 4 are all in blob 0
    scores = 1.0 - 0.2 * blob.float() + 0.001 * torch.arange(40).flip(0).float()
    plain = diverse_batch(scores, points, 4, generator=torch.Generator(), factor=1)
    assert blob[plain].tolist() == [0, 0, 0, 0]
    for method in ("k-means", "k-centre"):
        picks = diverse_batch(scores, points, 4, generator=torch.Generator().manual_seed(0),
                              factor=10, method=method)
        assert len(set(picks.tolist())) == 4
        assert sorted(blob[picks].tolist()) == [0, 1, 2, 3], method
        # highest score first, and each blob's best-scoring candidate under k-means
        assert scores[picks].tolist() == sorted(scores[picks].tolist(), reverse=True)
    picks = diverse_batch(scores, points, 4, generator=torch.Generator().manual_seed(0))
    assert picks.tolist() == [0, 10, 20, 30]


def test_every_strategy_asks_for_distinct_unlabeled_images():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(80, 6, generator=generator)
    labels = (features[:, 0] > 0).long() + (features[:, 1] > 0).long()
    labeled = torch.tensor([0, 5, 7, 9, 11, 13, 20, 30, 40, 50])
    preprocessing = FeaturePreprocessing.fit(features)
    classifier = fit_round_classifier(features[labeled], labels[labeled], num_classes=3,
                                      preprocessing=preprocessing)
    for strategy in STRATEGIES:
        picks = query(strategy, features=features, labeled=labeled, batch=12,
                      classifier=classifier, prepared=preprocessing(features),
                      generator=torch.Generator().manual_seed(0),
                      options=QueryOptions(diversity_factor=3, chunk_elements=50))
        assert len(picks) == 12 and len(set(picks.tolist())) == 12, strategy
        assert not set(picks.tolist()) & set(labeled.tolist()), strategy


# --- calibration --------------------------------------------------------------------------

def test_expected_calibration_error_by_hand():
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.58, 0.42]])
    labels = torch.tensor([0, 0, 1, 0])
    # confidences 0.9 (right), 0.8 (wrong), 0.55 and 0.58 (both right, one bin of 15):
    # (1/4)|1 - 0.9| + (1/4)|0 - 0.8| + (2/4)|1 - 0.565| = 0.025 + 0.2 + 0.2175
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4425)
    # one bin: |accuracy - mean confidence| = |0.75 - 0.7075|
    assert expected_calibration_error(probabilities, labels, bins=1) == pytest.approx(0.0425)


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_error():
    generator = torch.Generator().manual_seed(0)
    logits = 1.5 * torch.randn(5000, 5, generator=generator)
    # labels drawn from softmax(logits): calibrated by construction
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).flatten()
    overconfident = 5.0 * logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(5.0, rel=0.08)
    before = expected_calibration_error(overconfident.softmax(1), labels)
    after = expected_calibration_error((overconfident / temperature).softmax(1), labels)
    assert before > 0.15 and after < 0.03


# --- TypiClust ----------------------------------------------------------------------------

def test_typicality_is_the_inverse_mean_distance_to_the_nearest_neighbours():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # 2 nearest others: 0 -> {1, 3}: mean 2; 1 -> {0, 3}... distances 1, 2: mean 1.5;
    # 3 -> {1, 0}: 2, 3: mean 2.5; 7 -> {3, 1}: 4, 6: mean 5
    expected = torch.tensor([1 / 2, 1 / 1.5, 1 / 2.5, 1 / 5])
    assert torch.allclose(typicality(points, neighbours=2), expected)


def test_typiclust_labels_the_dense_centre_of_each_uncovered_cluster_largest_first():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    sizes = [60, 40, 20]
    blobs = [centre + torch.randn(size, 2, generator=generator)
             for centre, size in zip(centres, sizes, strict=True)]
    points = torch.cat(blobs)
    owner = torch.cat([torch.full((size,), index) for index, size in enumerate(sizes)])
    picks = typiclust(points, torch.zeros(0, dtype=torch.long), 3,
                      generator=torch.Generator().manual_seed(1))
    assert owner[picks].tolist() == [0, 1, 2]  # one per blob, the largest blob first
    for pick, blob in zip(picks.tolist(), range(3), strict=True):
        members = (owner == blob).nonzero().flatten()
        assert pick == int(members[typicality(points[members]).argmax()])
    # with the first blob labeled, the next pick goes to the blobs no label covers
    more = typiclust(points, picks[:1], 2, generator=torch.Generator().manual_seed(1))
    assert sorted(owner[more].tolist()) == [1, 2]


def test_typiclust_then_margin_switches_at_the_labels_per_class_it_names():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(200, 6, generator=generator)
    labels = (features[:, 0] > 0).long() + (features[:, 1] > 0).long()
    preprocessing = FeaturePreprocessing.fit(features)
    prepared = preprocessing(features)
    switch = SWITCH_LABELS_PER_CLASS * 3
    for labeled_count, expected in ((switch - 1, "typiclust"), (switch, "margin")):
        labeled = torch.arange(labeled_count)
        classifier = fit_round_classifier(features[labeled], labels[labeled], num_classes=3,
                                          preprocessing=preprocessing)

        def picks(strategy, labeled=labeled, classifier=classifier):
            return query(strategy, features=features, labeled=labeled, batch=5,
                         classifier=classifier, prepared=prepared,
                         generator=torch.Generator().manual_seed(0))

        assert not torch.equal(picks("typiclust"), picks("margin"))  # the test can tell
        assert torch.equal(picks("typiclust-then-margin"), picks(expected)), labeled_count
